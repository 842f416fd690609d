"""Fuzzing every decoder and verifier: hostile bytes are rejected with a reason, never a crash.

Each test feeds random bytes, mutated valid events (bit flips, truncation, extension, splices of
two events) or validly signed payloads full of random values (generated from the `.avsc` files)
to one of the entry points a Kafka message reaches, and checks that the outcome is the
documented one: a decoded value, a ``DecodeError`` carrying a reason code, a ``Refused`` with a
reason, a ledger ``Step`` (decisions, or a rejection with a reason, never ``INTERNAL_ERROR``)
whose state still serialises, or ClickHouse rows (a rejection row for what does not project).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import re
from importlib import resources
from typing import Any

import pytest
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.governance import GOVERNANCE_EVENT_TYPES, TrustStore
from chargemesh.processors.ingress import (
    Admitted,
    Refused,
    admit,
    admit_governance,
    rejection_record,
)
from chargemesh.processors.ledger import log_time
from chargemesh.processors.ledger.step import market_step
from chargemesh.processors.log_clock import CLOCK_SKEW_MS_MAX
from chargemesh.processors.policy import POLICIES
from chargemesh.processors.reasons import Reason
from chargemesh.schemas import framing
from chargemesh.schemas.codec import DecodeError, catalog
from chargemesh.sinks.projections import project
from chargemesh.sinks.projections.core import REJECTIONS, SourceMessage
from chargemesh.streams import topics
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import (
    ENVELOPE_BYTES_MAX,
    REJECTED_SCHEMA,
    SignedEvent,
    _encode_body,
    open_envelope,
    open_payload,
    seal,
)
from chargemesh.streams.keys import Signer
from chargemesh.units import HOUR_MS, MINUTE_MS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.avro_strategies import strategy_for
from tests.support.world import T0_MS, make_world

# CHARGEMESH_FUZZ_SCALE=20 runs twenty times the examples (a longer hunt than CI's < 60 s).
SCALE = int(os.environ.get("CHARGEMESH_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=150 * SCALE, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(max_examples=20 * SCALE, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DECODE_REASONS = {"MALFORMED_ENVELOPE", "MALFORMED_PAYLOAD", "UNKNOWN_SCHEMA", "OVERSIZED",
                  "MISSING_SIGNATURE", "BAD_SIGNATURE"}
ADMISSION_REASONS = {reason.value for reason in Reason} - {Reason.INTERNAL_ERROR.value}
REASON_CODE = re.compile(r"[A-Z][A-Z0-9_]{2,63}")
INPUT_TOPICS = [topics.GOVERNANCE.name, topics.MARKET.name, topics.GRID.name]
SINK_TOPICS = [topics.ADMITTED.name, topics.DECISIONS.name, topics.SETTLEMENTS.name,
               topics.DISPUTES.name, topics.REJECTIONS.name]
# Key, headers and record framing around a rejection's value.
REJECTION_OVERHEAD_BYTES_MAX = 4_096
SLOT_MS = 15 * MINUTE_MS


# ---- a small world whose credentials can sign anything a policy allows -------------------------


class Fixture:
    """One station with a calendar, a booked and started session, and every kind of signer."""

    def __init__(self) -> None:
        world = make_world()
        self.root, self.issuer = world.root, world.issuer
        self.station = world.credential("fz-st", ["STATION", "MOBILE_STATION"],
                                        subject_id="fz-station")
        self.vehicle = world.credential("fz-ev", ["VEHICLE"], subject_id="fz-vehicle")
        self.meter = world.credential("fz-meter-c1", ["METER"], subject_id="fz-meter-c1")
        self.operator = world.grid_operator("fz-op", "fz-zone", subject_id="fz-op")
        # issue 15, hole 2: an operator whose own attribute names the zone, registered by nobody
        self.squatter = world.credential("fz-squatter", ["GRID_OPERATOR"], subject_id="fz-sq",
                                         attributes={"grid_zones": "fz-zone"})
        self.observer = world.credential("fz-obs", ["OBSERVER"], subject_id="fz-obs")
        self.arbiter = world.credential("fz-arb", ["ARBITER"], subject_id="fz-arb")
        self.processor = world.processor_credential("mesh:processor").signer
        world.governance += [
            sdk.tariff_filed(self.root, tariff_id="fz-tariff", jurisdiction="US-CA",
                             currency="USD", ceiling_per_kwh="0.80", at_ms=T0_MS),
            sdk.rules_published(self.root, rules_version="fz-rules", jurisdiction="US-CA",
                                at_ms=T0_MS),
        ]
        self.governance = list(world.governance)
        store = world.store()
        self.store = TrustStore(world.anchors())
        for event in self.governance:
            verdict = admit_governance(event.encode(), event.body.subject_key.encode(), self.store)
            assert isinstance(verdict, Admitted), verdict
        assert store.principals.keys() <= self.store.principals.keys()
        self.start_ms = T0_MS + 24 * HOUR_MS
        self.valid = self._valid_events()
        self.base_state = self._base_state()

    def _valid_events(self) -> list[SignedEvent]:
        ident = sdk.identity(station_id="fz-station", vehicle=self.vehicle,
                             rate_authority_id=self.root.credential_id, jurisdiction="US-CA",
                             connector_id="c1")
        terms = sdk.claim(energy_wh=10_000, start_ms=self.start_ms,
                          stop_ms=self.start_ms + 4 * SLOT_MS, ceiling_rate_per_kwh="0.90",
                          currency="USD")
        calendar = sdk.calendar_published(
            self.station, rate_authority_id=self.root.credential_id, jurisdiction="US-CA",
            tariff_id="fz-tariff", rules_version="fz-rules",
            connectors=[dict(sdk.connector("c1", 150_000), meter_credential_id="fz-meter-c1")],
            slot_duration_ms=SLOT_MS, horizon_start_ms=self.start_ms,
            horizon_end_ms=self.start_ms + 24 * HOUR_MS, posted_rate_per_kwh="0.40",
            currency="USD", grid_zone_id="fz-zone", at_ms=T0_MS + 1)
        booking = sdk.order(self.vehicle, "posted", order_id="fz-order", ident=ident,
                            terms=terms, rate_per_kwh="0.40", at_ms=T0_MS + 2)
        start = sdk.handshake(self.station, self.vehicle, session_id="fz-session",
                              reservation_id="res:fz-order", ident=ident,
                              started_at_ms=self.start_ms, meter_start_wh=1_000)
        reading = sdk.meter_reading(self.meter, session_id="fz-session", station_id="fz-station",
                                    connector_id="c1", seq=1, import_wh=5_000,
                                    at_ms=self.start_ms + 10 * 60_000)
        close = sdk.meter_closed_out(self.station, session_id="fz-session", connector_id="c1",
                                     closed_at_ms=self.start_ms + 20 * 60_000,
                                     final_import_wh=8_000, last_reading_seq=1)
        grid = sdk.grid_event(self.operator, grid_event_id="fz-ge", grid_zone_id="fz-zone",
                              kind="PRICE_SIGNAL", from_ms=self.start_ms,
                              until_ms=self.start_ms + HOUR_MS, rate_per_kwh="0.55")
        return [calendar, booking, start, reading, close, grid]

    def _base_state(self) -> ledger.LedgerState:
        state = ledger.LedgerState("fz-station")
        for offset, event in enumerate(self.valid[:4]):
            step = market_step(state, Admitted(event, open_payload(event), None), 0, offset,
                               None, self.store)
            assert step.rejection is None, step.rejection
        assert b"fz-session" in ledger.dump_state(state)
        return state

    def author_for(self, event_type: str) -> tuple[Signer, tuple[Signer, ...]]:
        """A signer whose credential holds a role the event type's policy accepts."""
        policy = POLICIES.get(event_type)
        roles = policy.author_roles if policy else frozenset()
        by_role = [("PROCESSOR", self.processor), ("METER", self.meter.signer),
                   ("GRID_OPERATOR", self.operator.signer), ("OBSERVER", self.observer.signer),
                   ("ARBITER", self.arbiter.signer), ("STATION", self.station.signer),
                   ("VEHICLE", self.vehicle.signer), ("ISSUER", self.issuer.signer),
                   ("AUTHORITY", self.root.signer), ("RATE_AUTHORITY", self.root.signer)]
        author = next((signer for role, signer in by_role if role in roles), self.root.signer)
        return author, (self.vehicle.signer, self.operator.signer)


@functools.lru_cache(maxsize=1)
def fixture() -> Fixture:
    return Fixture()


@functools.cache
def payload_strategy(event_type: str) -> st.SearchStrategy[Any]:
    root = resources.files("chargemesh.schemas").joinpath("avro")
    return strategy_for(json.loads(root.joinpath(f"{event_type}.avsc").read_text()))


# Known ids steer random payloads into the deeper branches (the station's ledger, its session).
STEERED: dict[str, list[str]] = {
    "station_id": ["fz-station"], "connector_id": ["c1", "c2"],
    "session_id": ["fz-session", "fz-other"], "reservation_id": ["res:fz-order"],
    "order_id": ["fz-order", "fz-order-2"], "vehicle_credential_id": ["fz-ev"],
    "vehicle_id": ["fz-vehicle"], "grid_zone_id": ["fz-zone"], "tariff_id": ["fz-tariff"],
    "rate_authority_id": ["auth-root"], "jurisdiction": ["US-CA"], "currency": ["USD"],
    "grid_event_id": ["fz-ge"], "rules_version": ["fz-rules"], "routing_key": ["fz-station"],
}
STEER_DEPTH_MAX = 8


def steer(payload: Any, choose: Any) -> Any:
    """Replace some known-name string fields with ids the fixture's ledger holds (no recursion)."""
    stack = [(payload, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > STEER_DEPTH_MAX:
            continue
        if isinstance(node, dict):
            for key, value in node.items():
                if key in STEERED and isinstance(value, str) and choose(True):
                    node[key] = choose(STEERED[key])
                else:
                    stack.append((value, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
    return payload


def times_near(payload: Any, start_ms: int, draw: Any) -> Any:
    """Pull ``*_ms`` fields near the fixture's session so time checks pass sometimes."""
    stack = [payload]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_ms") and isinstance(value, int) and draw(st.booleans()):
                    node[key] = start_ms + draw(st.integers(-HOUR_MS, 2 * HOUR_MS))
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return payload


def signed_random(data: st.DataObject, event_type: str) -> SignedEvent:
    """A validly signed event of ``event_type`` with a random (steered) payload."""
    fx = fixture()
    payload = data.draw(payload_strategy(event_type), label="payload")

    def choose(options: Any) -> Any:
        if options is True:
            return data.draw(st.booleans())
        return data.draw(st.sampled_from(options))

    payload = times_near(steer(payload, choose), fx.start_ms, data.draw)
    author, co = fx.author_for(event_type)
    policy = POLICIES.get(event_type)
    key = "fz-station"
    if policy and policy.key_path:
        node: Any = payload
        for part in policy.key_path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        key = node if isinstance(node, str) else key
    return seal(event_type, payload, author=author, subject_key=key,
                occurred_at_ms=fx.start_ms + data.draw(st.integers(-HOUR_MS, HOUR_MS)),
                co_signers=co if data.draw(st.booleans()) else ())


# ---- mutations -------------------------------------------------------------------------------


def mutated(data: st.DataObject, wire: bytes, other: bytes) -> bytes:
    """``wire`` with bits flipped, cut short, extended, or spliced with ``other``."""
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice", "varint"]))
    buf = bytearray(wire)
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, len(buf) - 1))
            buf[at] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(buf)
    if kind == "truncate":
        return bytes(buf[:data.draw(st.integers(0, len(buf) - 1))])
    if kind == "extend":
        return bytes(buf) + data.draw(st.binary(min_size=1, max_size=64))
    if kind == "splice":
        return bytes(buf[:data.draw(st.integers(0, len(buf)))]) + other[
            data.draw(st.integers(0, len(other))):]
    # A huge or negative zig-zag varint (a length or count) written over the middle.
    at = data.draw(st.integers(10, max(10, len(buf) - 1)))
    varint = data.draw(st.sampled_from([b"\xff\xff\xff\xff\x0f", b"\x01", b"\xfe\xff\xff\xff\x1f",
                                        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"]))
    return bytes(buf[:at]) + varint + bytes(buf[at + len(varint):])


def hostile_bytes(data: st.DataObject) -> bytes:
    """Random bytes, often behind a real header so the parser goes past the magic."""
    fx = fixture()
    body = data.draw(st.binary(max_size=600), label="bytes")
    prefix = data.draw(st.sampled_from([
        b"", b"\xc3\x01", fx.valid[0].encode()[:10], b"\x00\x00\x00\x00\x01",
        fx.valid[1].encode()[:data.draw(st.integers(10, 80))]]))
    return prefix + body


# ---- checks ------------------------------------------------------------------------------------


def check_decode_error(exc: DecodeError) -> None:
    assert exc.reason_code in DECODE_REASONS | {"WRONG_SCHEMA"}, exc.reason_code
    assert exc.detail


def check_refused_or_admitted(verdict: Admitted | Refused) -> None:
    if isinstance(verdict, Refused):
        assert verdict.rejection.reason in ADMISSION_REASONS, verdict.rejection
        assert verdict.rejection.detail
    else:
        assert isinstance(verdict, Admitted) and verdict.event.signatures


def through_decoders(raw: bytes) -> None:
    """single_object_decode, normalise, open_envelope and open_payload on ``raw``."""
    for decode in (catalog().single_object_decode, framing.normalise):
        try:
            decode(raw)
        except DecodeError as exc:
            check_decode_error(exc)
    try:
        event = open_envelope(raw)
    except DecodeError as exc:
        check_decode_error(exc)
        return
    try:
        open_payload(event)
    except DecodeError as exc:
        check_decode_error(exc)


def through_admission(raw: bytes, key: bytes | None) -> None:
    """Every input topic's verifier on ``raw``: admitted (by a signer we hold) or refused, and
    a refusal's rejection record fits the rejections topic (else the worker could not publish
    it and would stop)."""
    fx = fixture()
    for topic in INPUT_TOPICS:
        if topic == topics.GOVERNANCE.name:
            verdict = admit_governance(raw, key, copy.deepcopy(fx.store))
        else:
            verdict = admit(raw, key, topic, fx.store)
        check_refused_or_admitted(verdict)
        if isinstance(verdict, Refused):
            record = rejection_record(raw, topic, 0, 1, verdict, T0_MS)
            value = catalog().single_object_encode(REJECTED_SCHEMA, record)
            assert len(value) + REJECTION_OVERHEAD_BYTES_MAX < topics.MESSAGE_BYTES_MAX


def through_sink(raw: bytes | None) -> None:
    """Every topic the ClickHouse sink reads: rows, and a reasoned rejection row if any."""
    for offset, topic in enumerate(SINK_TOPICS):
        rows = project(SourceMessage(topic, 0, offset, raw, T0_MS), topics.REJECTIONS.name,
                       T0_MS)
        assert rows, topic
        for row in rows.get(REJECTIONS, []):
            assert REASON_CODE.fullmatch(row[4]), row[4]
            if topic != topics.REJECTIONS.name:  # a rejection record names its own source
                assert (row[1], row[2], row[3]) == (topic, 0, offset), row[:4]


# ---- the tests -------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_random_bytes_are_rejected_with_a_reason_by_every_decoder(data: st.DataObject) -> None:
    raw = hostile_bytes(data)
    through_decoders(raw)
    fingerprint = data.draw(st.sampled_from([catalog().current(n).fingerprint
                                             for n in catalog().names()]))
    try:
        catalog().decode(fingerprint, raw)
    except DecodeError as exc:
        check_decode_error(exc)


@FUZZ
@given(data=st.data())
def test_random_bytes_are_refused_on_every_topic_and_by_the_sink(data: st.DataObject) -> None:
    raw = hostile_bytes(data)
    key = data.draw(st.one_of(st.none(), st.binary(max_size=40)))
    through_admission(raw, key)
    through_sink(raw)
    verdict = admit(raw, key, topics.MARKET.name, fixture().store)
    assert isinstance(verdict, Refused)  # nothing random is ever admitted


@FUZZ
@given(data=st.data())
def test_mutated_valid_events_are_refused_with_a_reason(data: st.DataObject) -> None:
    fx = fixture()
    pool = fx.valid + fx.governance
    wire = data.draw(st.sampled_from(pool)).encode()
    other = data.draw(st.sampled_from(pool)).encode()
    raw = mutated(data, wire, other)
    through_decoders(raw)
    key = data.draw(st.sampled_from([None, b"fz-station", b"auth-root", b"fz-zone"]))
    through_admission(raw, key)
    through_sink(raw)
    if raw not in {e.encode() for e in pool}:
        # A changed byte never yields an admitted event: signatures cover every body byte.
        for topic in (topics.MARKET.name, topics.GRID.name):
            verdict = admit(raw, key, topic, fx.store)
            if isinstance(verdict, Admitted):
                assert verdict.event.encode() in {e.encode() for e in pool}


NON_GOVERNANCE = sorted(t for t, p in POLICIES.items() if p.topic != topics.GOVERNANCE.name)
MARKET_TYPES = sorted(t for t, p in POLICIES.items() if p.topic == topics.MARKET.name)


@pytest.mark.parametrize("event_type", sorted(POLICIES))
@FEW
@given(data=st.data())
def test_signed_random_payloads_are_admitted_or_refused_with_a_reason(
        event_type: str, data: st.DataObject) -> None:
    fx = fixture()
    event = signed_random(data, event_type)
    topic = POLICIES[event_type].topic
    key = event.body.subject_key.encode()
    if event_type in GOVERNANCE_EVENT_TYPES:
        verdict = admit_governance(event.encode(), key, copy.deepcopy(fx.store))
    else:
        verdict = admit(event.encode(), key, topic, fx.store)
    check_refused_or_admitted(verdict)


@pytest.mark.parametrize("event_type", MARKET_TYPES)
@FEW
@given(data=st.data())
def test_market_step_on_a_random_admitted_command_decides_or_rejects(
        event_type: str, data: st.DataObject) -> None:
    """The ledger's pure step never raises (the worker would turn that into INTERNAL_ERROR) and
    leaves a state that still serialises into one state record."""
    fx = fixture()
    state = ledger.load_state(ledger.dump_state(fx.base_state))
    event = signed_random(data, event_type)
    step = market_step(state, Admitted(event, open_payload(event), None), 0, 100, None,
                       fx.store)
    assert step.applied
    if step.rejection is not None:
        assert REASON_CODE.fullmatch(step.rejection.reason), step.rejection
        assert step.rejection.reason != Reason.INTERNAL_ERROR.value
    dumped = ledger.dump_state(state)
    assert ledger.dump_state(ledger.load_state(dumped)) == dumped
    assert len(dumped) < topics.MESSAGE_BYTES_MAX


# Issue 15, hole 3: claims far from the ledger's clock, and backdated claims of a revoked signer.
PARTICIPANT_MARKET_TYPES = [t for t in MARKET_TYPES
                            if "PROCESSOR" not in POLICIES[t].author_roles]


def _state_without_offset(state: ledger.LedgerState) -> bytes:
    copied = ledger.load_state(ledger.dump_state(state))
    copied.applied_through_offset = -1
    return ledger.dump_state(copied)


@pytest.mark.parametrize("event_type", PARTICIPANT_MARKET_TYPES)
@FEW
@given(data=st.data())
def test_a_market_event_skewed_past_the_bound_is_refused_clock_skew_and_changes_nothing(
        event_type: str, data: st.DataObject) -> None:
    fx = fixture()
    state = ledger.load_state(ledger.dump_state(fx.base_state))
    before = _state_without_offset(state)
    skew_ms = data.draw(st.integers(CLOCK_SKEW_MS_MAX + 1, 400 * CLOCK_SKEW_MS_MAX))
    claimed = state.station_clock_ms + skew_ms * data.draw(st.sampled_from([1, -1]))
    event = signed_random(data, event_type)
    author, co = fx.author_for(event_type)
    event = seal(event_type, open_payload(event), author=author,
                 subject_key=event.body.subject_key, occurred_at_ms=claimed, co_signers=co)
    step = market_step(state, Admitted(event, open_payload(event), None), 0, 100, None,
                       fx.store)
    assert step.rejection is not None and step.rejection.reason == Reason.CLOCK_SKEW
    assert not step.admitted and step.decisions == []
    assert _state_without_offset(state) == before


@pytest.mark.parametrize("event_type", PARTICIPANT_MARKET_TYPES)
@FEW
@given(data=st.data())
def test_a_revoked_signers_backdated_market_event_is_refused_and_changes_nothing(
        event_type: str, data: st.DataObject) -> None:
    fx = fixture()
    state = ledger.load_state(ledger.dump_state(fx.base_state))
    revoked_at = state.station_clock_ms
    author, co = fx.author_for(event_type)
    log_time.remember(state, {"revoked_credential_id": author.credential_id,
                              "revoked_credential_ids": [], "effective_at_ms": revoked_at},
                      revoked_at)
    before = _state_without_offset(state)
    claimed = revoked_at - data.draw(st.integers(1, CLOCK_SKEW_MS_MAX))
    event = seal(event_type, open_payload(signed_random(data, event_type)), author=author,
                 subject_key="fz-station", occurred_at_ms=claimed,
                 co_signers=co if data.draw(st.booleans()) else ())
    step = market_step(state, Admitted(event, open_payload(event), None), 0, 100, None,
                       fx.store)
    assert step.rejection is not None and step.rejection.reason == Reason.CREDENTIAL_REVOKED
    assert not step.admitted and step.decisions == []
    assert _state_without_offset(state) == before


# Issue 15, holes 1 and 5: delegations, recognitions and issuances with random scopes signed by
# the real root and issuer, and self-declarations by keys that chain to no anchor.
SCOPE_ROLES = ["AUTHORITY", "ISSUER", "RATE_AUTHORITY", "STATION", "VEHICLE", "GRID_OPERATOR",
               "OBSERVER", "ARBITER", "METER"]
SCOPE_JURISDICTIONS = ["US-CA", "DE-BY", "GB-LDN", "ZZ-NOWHERE"]
AUTHORITY_ONLY = {"AUTHORITY", "ISSUER"}


@FUZZ
@given(data=st.data())
def test_out_of_scope_governance_is_refused_and_changes_nothing(data: st.DataObject) -> None:
    fx = fixture()
    store = copy.deepcopy(fx.store)
    kind = data.draw(st.sampled_from(["delegate", "recognise", "issue", "declare"]))
    roles = data.draw(st.lists(st.sampled_from(SCOPE_ROLES), max_size=4, unique=True))
    places = data.draw(st.lists(st.sampled_from(SCOPE_JURISDICTIONS), min_size=1, max_size=3,
                                unique=True))
    other = sdk.Participant.seeded(f"fz-scope-{data.draw(st.integers(0, 10**6))}", secret="fuzz")
    root = store.principals[fx.root.credential_id]
    issuer = store.principals[fx.issuer.credential_id]
    if kind == "delegate":
        event = fx.root.delegate_issuer(other, roles, places, at_ms=T0_MS)
        within = (set(roles) - {"ISSUER"} <= root.roles - AUTHORITY_ONLY
                  and set(places) <= root.jurisdictions)
        codes = {"DELEGATION_EXCEEDS_AUTHORITY"}
    elif kind == "recognise":
        event = fx.root.recognise_authority(other, places[0], roles, at_ms=T0_MS,
                                            jurisdictions=places[1:])
        within = set(roles) <= root.roles and set(places) <= root.jurisdictions
        codes = {"RECOGNITION_EXCEEDS_AUTHORITY"}
    elif kind == "issue":
        event = fx.issuer.issue_credential(other, roles, places[0], at_ms=T0_MS)
        within = (not set(roles) & AUTHORITY_ONLY and set(roles) <= issuer.roles
                  and places[0] in issuer.jurisdictions)
        codes = {"ISSUANCE_EXCEEDS_DELEGATION", "JURISDICTION_NOT_DELEGATED"}
    else:  # a key no anchor recognised declares itself, whatever it claims
        event = other.declare_authority("fz", places[0], roles, at_ms=T0_MS,
                                        jurisdictions=places[1:])
        within, codes = False, {"UNRECOGNISED_AUTHORITY"}
    before = (dict(store.principals), set(store.applied_event_ids))
    verdict = admit_governance(event.encode(), event.body.subject_key.encode(), store)
    if within:
        assert isinstance(verdict, Admitted), verdict
        return
    assert isinstance(verdict, Refused) and verdict.rejection.reason in codes, verdict
    assert (store.principals, store.applied_event_ids) == before


# Issue 15, hole 2: zone claims. A program (and the right to sign the zone's grid events) for a
# registered zone by its registered operator is admitted; by a GRID_OPERATOR whose attribute
# names the zone, by another participant, or for a zone nobody registered, it is refused and the
# store's programs do not change.
@FUZZ
@given(data=st.data())
def test_zone_claims_by_anyone_but_the_registered_operator_are_refused(
        data: st.DataObject) -> None:
    fx = fixture()
    store = copy.deepcopy(fx.store)
    author = data.draw(st.sampled_from([fx.operator, fx.squatter, fx.station, fx.vehicle]))
    zone = data.draw(st.sampled_from(["fz-zone", f"fz-nobody-{data.draw(st.integers(0, 99))}"]))
    program = data.draw(st.sampled_from(["V2G", "DEMAND_RESPONSE", "NONE"]))
    event = sdk.grid_program(author, grid_zone_id=zone, program=program,
                             operator_ids=[author.credential_id], at_ms=T0_MS + 1)
    legitimate = author is fx.operator and zone == "fz-zone"
    assert (store.zone_problem(author.credential_id, zone, T0_MS + 1) is None) == legitimate
    before = copy.deepcopy(store.grid_programs)
    verdict = admit_governance(event.encode(), event.body.subject_key.encode(), store)
    if legitimate:
        assert isinstance(verdict, Admitted), verdict
        return
    assert isinstance(verdict, Refused), verdict
    assert verdict.rejection.reason in {"NOT_THE_ZONES_OPERATOR", "ZONE_NOT_REGISTERED",
                                        "ROLE_NOT_PERMITTED"}, verdict
    assert store.grid_programs == before


DECISION_TYPES = sorted(n for n in catalog().names()
                        if n.split(".")[1] in {"ledger", "settlement", "dispute", "session",
                                               "wireless", "grid"})


@pytest.mark.parametrize("event_type", DECISION_TYPES)
@FEW
@given(data=st.data())
def test_projecting_random_processor_records_never_raises(event_type: str,
                                                          data: st.DataObject) -> None:
    fx = fixture()
    payload = data.draw(payload_strategy(event_type))
    event = seal(event_type, payload, author=fx.processor, subject_key="k",
                 occurred_at_ms=data.draw(st.integers(-(2**62), 2**62)))
    through_sink(event.encode())


@FUZZ
@given(data=st.data())
def test_random_rejection_records_project_to_a_row(data: st.DataObject) -> None:
    record = data.draw(payload_strategy("chargemesh.envelope.v1.EventRejected"))
    raw = catalog().single_object_encode("chargemesh.envelope.v1.EventRejected", record)
    rows = project(SourceMessage(topics.REJECTIONS.name, 0, 1, raw, T0_MS),
                   topics.REJECTIONS.name, T0_MS)
    assert len(rows[REJECTIONS]) == 1
    mutant = mutated(data, raw, raw)
    rows = project(SourceMessage(topics.REJECTIONS.name, 0, 2, mutant, T0_MS),
                   topics.REJECTIONS.name, T0_MS)
    assert len(rows[REJECTIONS]) == 1


@pytest.mark.parametrize("field", ["event_id", "event_type", "author_credential_id",
                                   "subject_key", "chain_id"])
def test_an_envelope_field_as_long_as_the_envelope_allows_is_refused_and_its_rejection_fits(
        field: str) -> None:
    """Found by the hostile flood: a ~990 kB event type made a rejection record larger than
    the topic's max message bytes, the worker could not publish it and stopped (every restart
    stopped again on the same record)."""
    fx = fixture()
    valid = fx.valid[1]
    body = dataclasses.replace(valid.body, **{field: "T" * (ENVELOPE_BYTES_MAX - 10_000)})
    raw = SignedEvent(body, _encode_body(body), ()).with_signature(fx.vehicle.signer).encode()
    assert len(raw) <= ENVELOPE_BYTES_MAX
    with pytest.raises(DecodeError) as refused:
        open_envelope(raw)
    assert refused.value.reason_code == "MALFORMED_ENVELOPE"
    through_admission(raw, b"fz-station")
    through_sink(raw)


def test_the_fuzz_fixture_admits_its_own_valid_events() -> None:
    """The seeds the mutations start from are themselves admitted: the fuzz starts deep."""
    fx = fixture()
    for event in fx.valid:
        verdict = admit(event.encode(), event.body.subject_key.encode(),
                        sdk.topic_for(event.event_type), fx.store)
        assert isinstance(verdict, Admitted), (event.event_type, verdict)
