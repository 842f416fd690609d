"""Issue 9 on the real stack: valid traffic settles exactly the same under a hostile flood.

A station takes posted-price orders and runs a session to a final settlement, once without and
once during a flood of hostile records on the market, grid and governance topics at several
times the valid rate: forged signatures, replayed event ids, malformed Avro, oversized values (up
to the topic's max message bytes), events signed by a revoked credential, random bytes. Every
hostile record must come back on the rejections topic, by its source offset, with a reason; none
is admitted; the worker stays up; the flooded session settles to the same lines and total as the
quiet one. Latency (order published -> its decision consumed) and the worker's peak RSS are
printed, not asserted.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
from chargemesh.infra.stack.worker import TopicReader
from chargemesh.processors.log_clock import CLOCK_SKEW_MS_MAX
from chargemesh.processors.reasons import Reason
from chargemesh.schemas.codec import catalog
from chargemesh.streams import topics
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import (
    ENVELOPE_BYTES_MAX,
    SignedEvent,
    _encode_body,
    open_envelope,
)
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.units import DAY_MS, HOUR_MS
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, Market, open_market
from tests.integration.test_sessions_pipeline import Session, settlement_records

pytestmark = pytest.mark.integration
ORDERS_PER_PHASE = 25
HOSTILE_PER_VALID = 20
OVERSIZED_COUNT = 8
SENT_MAX = 20_000
WAIT_S = 45.0
DECISION_WAIT_S = 20.0
HOSTILE_TOPICS = (topics.MARKET.name, topics.GRID.name, topics.GOVERNANCE.name)
Position = tuple[str, int, int]


# ---- hostile records ---------------------------------------------------------------------------


class Hostile:
    """Pre-built hostile records (topic, key, value), so the flood costs no signing while it runs."""

    def __init__(self, mesh: Mesh, market: Market, revoked: Participant,
                 replayable: list[SignedEvent], seed: int = 9,
                 revoked_at_ms: int = 0, skewer: Participant | None = None,
                 squatter: Participant | None = None) -> None:
        self.rng = random.Random(seed)
        self.mesh, self.market, self.revoked = mesh, market, revoked
        self.revoked_at_ms, self.skewer, self.squatter = revoked_at_ms, skewer, squatter
        self.replayable = replayable
        self.forger = Participant.seeded(market.station.credential_id, market.station_id,
                                         secret="forger")
        self.forged_vehicle = Participant.seeded(f"{market.prefix}-ev-cred",
                                                 f"{market.prefix}-ev", secret="forger")
        self.scope_reasons: dict[bytes, str] = {}  # out-of-scope records: value -> reason

    def records(self, count: int) -> list[tuple[str, bytes, bytes]]:
        makers = [self.forged, self.replayed, self.malformed, self.from_revoked, self.random,
                  self.out_of_scope]
        if self.skewer is not None:  # issue 15, hole 3: claims the ledger's time refutes
            makers += [self.skewed, self.backdated]
        if self.squatter is not None:  # issue 15, hole 2: claims on a zone one does not operate
            makers += [self.zone_claim]
        out = [self.oversized(i) for i in range(OVERSIZED_COUNT)]
        while len(out) < count:
            out.append(makers[len(out) % len(makers)](len(out)))
        self.rng.shuffle(out)
        return out

    def _order(self, vehicle: Participant, n: int) -> SignedEvent:
        m = self.market
        return m.posted_order(vehicle, f"hostile-{n}", m.start_ms + (n % 40) * SLOT_MS,
                              at_ms=now_ms())

    def forged(self, n: int) -> tuple[str, bytes, bytes]:
        m, topic = self.market, HOSTILE_TOPICS[n % 3]
        if topic == topics.MARKET.name:
            event = self._order(self.forged_vehicle, n)
        elif topic == topics.GRID.name:
            event = sdk.grid_event(self.forger, grid_event_id=f"forged-{n}",
                                   grid_zone_id="zone-hostile", kind="PRICE_SIGNAL",
                                   from_ms=m.start_ms, until_ms=m.start_ms + 3_600_000,
                                   rate_per_kwh="9.99")
        else:
            fake_issuer = Participant.seeded(self.mesh.world.issuer.credential_id,
                                             secret="forger")
            event = fake_issuer.issue_credential(Participant.seeded(f"stolen-{n}"), ["VEHICLE"],
                                                 "US-CA", at_ms=now_ms())
        return topic, event.body.subject_key.encode(), event.encode()

    def replayed(self, n: int) -> tuple[str, bytes, bytes]:
        event = self.replayable[n % len(self.replayable)]
        return sdk.topic_for(event.event_type), event.body.subject_key.encode(), event.encode()

    def malformed(self, n: int) -> tuple[str, bytes, bytes]:
        valid = self.replayable[n % len(self.replayable)].encode()
        cut = self.rng.randrange(10, len(valid) - 1)
        kind = n % 3
        value = (valid[:cut] if kind == 0 else valid[:10] + self.rng.randbytes(cut) if kind == 1
                 else valid + self.rng.randbytes(7))
        return HOSTILE_TOPICS[n % 3], self.market.station_id.encode(), value

    def oversized(self, n: int) -> tuple[str, bytes, bytes]:
        """Up to the topic's max message bytes (past the envelope limit), or a valid-looking
        header over an Avro body past the payload limit."""
        topic = HOSTILE_TOPICS[n % 3]
        if n % 2 == 0:
            header = self.replayable[0].encode()[:10]
            value = header + bytes(ENVELOPE_BYTES_MAX + 40_000)
        elif n % 4 == 1:  # an event type of ~990 kB: its rejection record must still fit
            event = self.forger.sign("chargemesh.capacity.v1.StationHeartbeat",
                                     {"station_id": self.market.station_id, "at_ms": now_ms()},
                                     subject_key=self.market.station_id)
            body = dataclasses.replace(event.body, event_type="T" * 990_000)
            value = SignedEvent(body, _encode_body(body), ()).with_signature(
                self.forger.signer).encode()
        elif n % 4 == 3:  # a forged ~500 kB credential issuance: refused, not kept in memory
            fake_issuer = Participant.seeded(self.mesh.world.issuer.credential_id,
                                             secret="forger")
            event = fake_issuer.issue_credential(
                Participant.seeded(f"stolen-big-{n}"), ["VEHICLE"], "US-CA",
                attributes={"padding": "x" * 500_000}, at_ms=now_ms())
            return topics.GOVERNANCE.name, event.body.subject_key.encode(), event.encode()
        else:  # a well-formed, signed envelope whose payload is past PAYLOAD_BYTES_MAX
            value = self.forger.sign("chargemesh.capacity.v1.StationHeartbeat",
                                     {"station_id": "x" * 600_000, "at_ms": now_ms()},
                                     subject_key=self.market.station_id).encode()
        assert len(value) + 200 < topics.MESSAGE_BYTES_MAX
        return topic, self.market.station_id.encode(), value

    def from_revoked(self, n: int) -> tuple[str, bytes, bytes]:
        event = self._order(self.revoked, n)
        return topics.MARKET.name, event.body.subject_key.encode(), event.encode()

    def out_of_scope(self, n: int) -> tuple[str, bytes, bytes]:
        """Validly signed governance beyond its author's scope (issue 15, holes 1 and 5): the root
        delegating or recognising for a jurisdiction it does not hold, or delegating AUTHORITY;
        the issuer issuing there; a key chaining to no anchor declaring itself."""
        world, kind, at = self.mesh.world, n % 5, now_ms()
        other = Participant.seeded(f"flood-scope-{n}", secret="flood")
        if kind == 0:
            event = world.root.delegate_issuer(other, ["GRID_OPERATOR"], ["ZZ-NOWHERE"], at_ms=at)
        elif kind == 1:
            event = world.root.delegate_issuer(other, ["AUTHORITY"], ["US-CA"], at_ms=at)
        elif kind == 2:
            event = world.root.recognise_authority(other, "ZZ-NOWHERE", ["AUTHORITY"], at_ms=at)
        elif kind == 3:
            event = world.issuer.issue_credential(other, ["GRID_OPERATOR"], "ZZ-NOWHERE",
                                                  attributes={"grid_zones": "zone-flood"},
                                                  at_ms=at)
        else:
            event = other.declare_authority("self made", "US-CA", ["AUTHORITY"], at_ms=at)
        self.scope_reasons[event.encode()] = (
            "DELEGATION_EXCEEDS_AUTHORITY", "DELEGATION_EXCEEDS_AUTHORITY",
            "RECOGNITION_EXCEEDS_AUTHORITY", "JURISDICTION_NOT_DELEGATED",
            "UNRECOGNISED_AUTHORITY")[kind]
        return topics.GOVERNANCE.name, event.body.subject_key.encode(), event.encode()

    def zone_claim(self, n: int) -> tuple[str, bytes, bytes]:
        """A validly credentialed GRID_OPERATOR whose own attribute says ``grid_zones=zone-flood``
        but whom no authority registered for it: its program for the zone, its price signal
        there, and its program for a zone nobody registered (issue 15, hole 2)."""
        assert self.squatter is not None
        kind, at = n % 3, now_ms()
        if kind == 0:
            event = sdk.grid_program(self.squatter, grid_zone_id="zone-flood", program="V2G",
                                     operator_ids=[self.squatter.credential_id], at_ms=at)
            topic = topics.GOVERNANCE.name
        elif kind == 1:
            event = sdk.grid_event(self.squatter, grid_event_id=f"squat-{n}",
                                   grid_zone_id="zone-flood", kind="PRICE_SIGNAL",
                                   from_ms=at, until_ms=at + HOUR_MS, rate_per_kwh="9.99")
            topic = topics.GRID.name
        else:
            event = sdk.grid_program(self.squatter, grid_zone_id=f"zone-nobody-{n}",
                                     program="V2G", operator_ids=[self.squatter.credential_id],
                                     at_ms=at)
            topic = topics.GOVERNANCE.name
        self.scope_reasons[event.encode()] = ("NOT_THE_ZONES_OPERATOR", "NOT_THE_ZONES_OPERATOR",
                                              "ZONE_NOT_REGISTERED")[kind]
        return topic, event.body.subject_key.encode(), event.encode()

    def skewed(self, n: int) -> tuple[str, bytes, bytes]:
        """Validly signed, by the station itself or a valid vehicle, at a time weeks to years
        from the station's ledger clock: CLOCK_SKEW (admitted, it would jump the ledger's clock
        and release the valid traffic's bookings as no-shows)."""
        assert self.skewer is not None
        off_ms = self.rng.choice([1, -1]) * self.rng.randrange(CLOCK_SKEW_MS_MAX + DAY_MS,
                                                                400 * DAY_MS)
        if n % 2:
            event = sdk.heartbeat(self.market.station, now_ms() + off_ms)
        else:
            m = self.market
            event = m.posted_order(self.skewer, f"skewed-{n}", m.start_ms + (n % 40) * SLOT_MS,
                                   at_ms=now_ms() + off_ms)
        return topics.MARKET.name, event.body.subject_key.encode(), event.encode()

    def backdated(self, n: int) -> tuple[str, bytes, bytes]:
        """The revoked (KEY_COMPROMISE) vehicle's order dated before its revocation, which
        the station's ledger already knows: CREDENTIAL_REVOKED whatever it claims."""
        m = self.market
        event = m.posted_order(self.revoked, f"backdated-{n}", m.start_ms + (n % 40) * SLOT_MS,
                               at_ms=self.revoked_at_ms - self.rng.randrange(1, HOUR_MS))
        return topics.MARKET.name, event.body.subject_key.encode(), event.encode()

    def random(self, n: int) -> tuple[str, bytes, bytes]:
        key = self.rng.choice([self.market.station_id.encode(), self.rng.randbytes(8)])
        return HOSTILE_TOPICS[n % 3], key, self.rng.randbytes(self.rng.randrange(1, 2_000))


class Flood(threading.Thread):
    """Sends hostile records at ``rate_per_s``, collecting each one's topic/partition/offset."""

    def __init__(self, mesh: Mesh, records: list[tuple[str, bytes, bytes]],
                 rate_per_s: float) -> None:
        super().__init__(daemon=True)
        self.records, self.rate_per_s = records, rate_per_s
        self.producer = Producer(dict(mesh.settings.kafka_client_config(), **{
            "acks": "all", "linger.ms": 2, "message.max.bytes": topics.MESSAGE_BYTES_MAX}))
        self.positions: list[Position] = []
        self.values: list[bytes] = []
        self.errors: list[str] = []
        self.elapsed_s = 0.0
        self.sent = 0
        self.stopping = threading.Event()

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
        else:
            self.positions.append((msg.topic(), msg.partition(), msg.offset()))
            self.values.append(msg.value())

    def run(self) -> None:
        """Until stopped (and at least once through the records), at the rate, in a cycle."""
        started = time.monotonic()
        for sent in range(SENT_MAX):
            if sent >= len(self.records) and self.stopping.is_set():
                break
            topic, key, value = self.records[sent % len(self.records)]
            due = started + sent / self.rate_per_s
            while time.monotonic() < due:
                self.producer.poll(0.002)
            self.producer.produce(topic, value=value, key=key, on_delivery=self._delivered)
            self.sent = sent + 1
        self.producer.flush(30)
        self.elapsed_s = time.monotonic() - started


# ---- valid traffic and its latency -------------------------------------------------------------


class DecisionWatch:
    """Decisions of one station, read from the topic's end: when each order's decision lands."""

    def __init__(self, mesh: Mesh, station_id: str) -> None:
        self.station_id = station_id.encode()
        self.consumer = Consumer(dict(mesh.settings.kafka_client_config(), **{
            "group.id": "unused-watch", "enable.auto.commit": False, "fetch.wait.max.ms": 5}))
        meta = self.consumer.list_topics(topics.DECISIONS.name, timeout=10)
        ends = [TopicPartition(topics.DECISIONS.name, p, self.consumer.get_watermark_offsets(
            TopicPartition(topics.DECISIONS.name, p), timeout=10)[1])
            for p in meta.topics[topics.DECISIONS.name].partitions]
        self.consumer.assign(ends)
        self.seen: dict[str, str] = {}

    def wait(self, order_id: str) -> str:
        deadline = time.monotonic() + DECISION_WAIT_S
        while order_id not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no decision for {order_id}")
            for msg in self.consumer.consume(100, timeout=0.01):
                if msg.error() or msg.key() != self.station_id:
                    continue
                record = Recorded(msg.value())
                if record.order_id:
                    self.seen[record.order_id] = record.kind
        return self.seen[order_id]

    def close(self) -> None:
        self.consumer.close()


class Recorded:
    def __init__(self, value: bytes) -> None:
        from chargemesh.streams.envelope import open_payload

        event = open_envelope(value)
        self.kind = event.event_type.rsplit(".", 1)[1]
        self.order_id = str(open_payload(event).get("order_id", ""))


def orders_with_latency(mesh: Mesh, market: Market, vehicle: Participant, phase: str,
                        first_slot: int) -> tuple[list[float], dict[str, str]]:
    """Publish orders one at a time; the time from publish to the decision, per order."""
    watch = DecisionWatch(mesh, market.station_id)
    pub = sdk.Publisher(mesh.settings.kafka_client_config(), extra={"linger.ms": 0})
    latencies, kinds = [], {}
    try:
        for i in range(-1, ORDERS_PER_PHASE):  # -1: a warm-up order, not measured
            slot = first_slot + (i if i >= 0 else ORDERS_PER_PHASE)
            order = market.posted_order(vehicle, f"{phase}-{i}",
                                        market.start_ms + slot * SLOT_MS,
                                        connector_id="c2", at_ms=now_ms())
            order_id = market.order_id(f"{phase}-{i}")
            sent = time.perf_counter()
            pub.publish(order)
            pub.flush()
            kind = watch.wait(order_id)
            if i >= 0:
                latencies.append((time.perf_counter() - sent) * 1000)
                kinds[order_id] = kind
    finally:
        watch.close()
    return latencies, kinds


def settle_session(mesh: Mesh, market: Market, vehicle: Participant, name: str,
                   slot: int) -> dict[str, Any]:
    """Booking, handshake, three readings, stop, close-out, countersignature: the settlement."""
    session = Session(market, vehicle, name, market.start_ms + slot * SLOT_MS)
    mesh.publish(session.booking, session.start(), session.read(10, 9_337),
                 session.read(20, 17_901), session.read(30, 26_555))
    close = session.close(35, 30_123)
    mesh.publish(sdk.session_stopped(vehicle, session_id=session.session_id,
                                     station_id=market.station_id,
                                     at_ms=session.start_ms + 35 * 60_000), close,
                 sdk.close_out_countersigned(vehicle, close, session.start_ms + 36 * 60_000))
    records = settlement_records(mesh, session.session_id,
                                 {"SettlementAdmitted", "SettlementFinalised"})
    return records["SettlementAdmitted"][1]


def same_lines(lines: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Lines as numbers and spans (the two sessions start at different slots)."""
    return [(ln["kind"], ln["quantity_wh"], ln["unit_rate_per_kwh"], ln["amount"],
             ln["until_at_ms"] - ln["from_at_ms"]) for ln in lines]


def peak_rss_kib(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---- the test ----------------------------------------------------------------------------------


def test_valid_traffic_settles_the_same_under_a_hostile_flood(mesh: Mesh) -> None:
    t = now_ms()
    market = open_market(mesh, "flood", t, [sdk.connector("c1", 150_000),
                                            sdk.connector("c2", 150_000)],
                         tariff={"tax_percent": "8.25", "rounding": "HALF_UP", "minor_units": 2},
                         grid_zone_id="zone-flood", hours=48)
    vehicle = market.vehicle("ev")
    revoked = market.vehicle("ev-revoked")
    skewer = market.vehicle("ev-skewer")
    operator = mesh.world.grid_operator("flood-op", "zone-flood", subject_id="flood-op")
    squatter = mesh.world.credential("flood-squatter", ["GRID_OPERATOR"],
                                     attributes={"grid_zones": "zone-flood"})
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    revocation = mesh.world.issuer.revoke(revoked.credential_id, effective_at_ms=t,
                                          reason_code="KEY_COMPROMISE")
    mesh.publish(revocation)
    assert mesh.worker.pid is not None
    pid = mesh.worker.pid

    # Quiet: orders and a session, no flood.
    quiet_latency, quiet_kinds = orders_with_latency(mesh, market, vehicle, "quiet", 0)
    quiet_started = time.monotonic()
    quiet = settle_session(mesh, market, vehicle, "quiet-s", 30)
    quiet_s = time.monotonic() - quiet_started
    notice = sdk.grid_event(operator, grid_event_id="flood-notice", grid_zone_id="zone-flood",
                            kind="PRICE_SIGNAL", from_ms=market.start_ms + 95 * SLOT_MS,
                            until_ms=market.start_ms + 96 * SLOT_MS, rate_per_kwh="0.41")
    mesh.publish(notice)
    replayable = _admitted_copies(mesh, market) + [revocation, notice]
    assert len(replayable) > 10
    rss_before = peak_rss_kib(pid)

    # Flooded: the same traffic while hostile records arrive at several times its rate.
    valid_rate = (ORDERS_PER_PHASE + 8) / (sum(quiet_latency) / 1000 + quiet_s)
    maker = Hostile(mesh, market, revoked, replayable, revoked_at_ms=t, skewer=skewer,
                    squatter=squatter)
    hostile = maker.records(int(HOSTILE_PER_VALID * (ORDERS_PER_PHASE + 8)))
    flood = Flood(mesh, hostile, HOSTILE_PER_VALID * valid_rate)
    flood.start()
    # (Later slots: the quiet session moved the station's clock past its own.)
    loud_latency, loud_kinds = orders_with_latency(mesh, market, vehicle, "loud", 40)
    loud = settle_session(mesh, market, vehicle, "loud-s", 70)
    flood.stopping.set()
    flood.join(60)
    assert not flood.is_alive() and not flood.errors, flood.errors[:3]
    assert len(flood.positions) == flood.sent >= len(hostile)

    # Every hostile record rejected, by its source position, with a reason; none admitted.
    sent = dict(zip(flood.positions, flood.values))
    admitted = admitted_positions(mesh) & set(flood.positions)
    assert not admitted, f"{len(admitted)} hostile records admitted, e.g. " + ", ".join(
        _describe(sent[p]) for p in sorted(admitted)[:5])
    rejected = rejections_of(mesh, set(flood.positions))
    assert set(rejected) == set(flood.positions)
    assert all(reason for reason in rejected.values())
    assert Reason.INTERNAL_ERROR.value not in set(rejected.values())
    scoped = {p: maker.scope_reasons[v] for p, v in sent.items() if v in maker.scope_reasons}
    assert scoped and {p: rejected[p] for p in scoped} == scoped  # each with its own reason
    assert mesh.worker.alive()

    # The valid traffic: decided and settled exactly as without the flood.
    assert list(loud_kinds.values()) == list(quiet_kinds.values())
    assert set(quiet_kinds.values()) == {"SlotReserved"}
    assert same_lines(loud["lines"]) == same_lines(quiet["lines"])
    assert loud["total_amount"] == quiet["total_amount"] > Decimal(0)
    rows = mesh.wait_rows(
        "SELECT count() FROM rejections FINAL WHERE source_topic IN %(topics)s "
        "AND rejection_id IN %(ids)s HAVING count() = %(n)s",
        {"topics": HOSTILE_TOPICS, "ids": tuple(_rejection_id(p) for p in flood.positions),
         "n": len(flood.positions)})
    assert rows[0][0] == len(flood.positions)

    rss_after = peak_rss_kib(pid)
    by_reason: dict[str, int] = {}
    for reason in rejected.values():
        by_reason[reason] = by_reason.get(reason, 0) + 1
    print(f"\nhostile flood: {flood.sent} records in {flood.elapsed_s:.1f}s "
          f"({flood.sent / flood.elapsed_s:.0f}/s; valid ~{valid_rate:.0f}/s), "
          f"by reason {dict(sorted(by_reason.items()))}")
    print(f"order -> decision without flood: p50 {statistics.median(quiet_latency):.1f} ms, "
          f"p99 {pct(quiet_latency, 0.99):.1f} ms; with flood: p50 "
          f"{statistics.median(loud_latency):.1f} ms, p99 {pct(loud_latency, 0.99):.1f} ms")
    print(f"worker VmHWM before flood {rss_before[0] / 1024:.1f} MiB, after "
          f"{rss_after[0] / 1024:.1f} MiB (VmRSS now {rss_after[1] / 1024:.1f} MiB)")


def _describe(value: bytes) -> str:
    try:
        event = open_envelope(value)
    except Exception as exc:  # noqa: BLE001 - a description for a failure message
        return f"undecodable {type(exc).__name__}"
    return f"{event.event_type} {event.event_id}"


def _admitted_copies(mesh: Mesh, market: Market) -> list[SignedEvent]:
    """Events of this station already admitted (their replays must be refused)."""
    reader = TopicReader(mesh.settings, topics.ADMITTED.name)
    try:
        reader.poll(1.0)
        return [open_envelope(r.value) for r in reader.records
                if r.key == market.station_id.encode()][:20]
    finally:
        reader.close()


def _rejection_id(position: Position) -> str:
    from chargemesh.processors.ingress import rejection_id

    return rejection_id(*position)


def rejections_of(mesh: Mesh, wanted: set[Position]) -> dict[Position, str]:
    """Reason code per source position, for the wanted positions, read off the rejections topic."""
    reader = TopicReader(mesh.settings, topics.REJECTIONS.name)
    found: dict[Position, str] = {}
    read = [0]

    def complete(records: list[Any]) -> bool:
        for r in records[read[0]:]:
            rec = catalog().single_object_decode(r.value)[1]
            position = (rec["source_topic"], rec["source_partition"], rec["source_offset"])
            if position in wanted:
                found[position] = rec["reason_code"]
        read[0] = len(records)
        return set(found) == wanted

    try:
        reader.wait_for(complete, timeout_s=WAIT_S, workers=(mesh.worker,))
    except TimeoutError:
        missing = sorted(wanted - set(found))[:10]
        raise AssertionError(f"{len(wanted - set(found))} hostile records without a rejection, "
                             f"e.g. {missing}") from None
    finally:
        reader.close()
    return found


def admitted_positions(mesh: Mesh) -> set[Position]:
    reader = TopicReader(mesh.settings, topics.ADMITTED.name)
    try:
        reader.poll(1.5)
        return {(r.headers["source_topic"].decode(), int(r.headers["source_partition"]),
                 int(r.headers["source_offset"])) for r in reader.records
                if "source_topic" in r.headers}
    finally:
        reader.close()
