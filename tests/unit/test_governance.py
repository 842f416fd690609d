"""Governance trust chain (pure): who is trusted, and every way to fail, each with its reason."""

from __future__ import annotations

from chargemesh.processors.governance import TrustStore
from chargemesh.processors.ingress import Admitted, Refused
from chargemesh.streams.sdk.participant import Participant

from tests.support.world import T0_MS, make_world, verdict_of

CHANGE = "chargemesh.capacity.v1.CapacityChanged"


def capacity_changed(station: Participant, station_id: str | None = None,
                     at_ms: int = T0_MS + 1000) -> object:
    sid = station_id or station.subject_id
    payload = {"station_id": sid, "connector_id": "c1", "available": False, "power_w": 0,
               "from_at_ms": at_ms, "until_at_ms": at_ms + 60_000, "cause": "FAULT",
               "grid_event_id": ""}
    return station.sign(CHANGE, payload, subject_key=sid, occurred_at_ms=at_ms)


def reason(verdict: Admitted | Refused) -> str:
    assert isinstance(verdict, Refused), "expected a rejection"
    return verdict.rejection.reason


def test_a_credential_chained_to_the_anchor_is_admitted() -> None:
    world = make_world()
    station = world.credential("st-1", ["STATION"], subject_id="station-1")
    store = world.store()
    verdict = verdict_of(store, capacity_changed(station))
    assert isinstance(verdict, Admitted)
    assert verdict.author.chain == ("st-1", "issuer-1", "auth-root")


def test_forged_signature_is_rejected() -> None:
    world = make_world()
    station = world.credential("st-1", ["STATION"], subject_id="station-1")
    store = world.store()
    impostor = Participant.generate("st-1", "station-1")  # same id, different key
    assert reason(verdict_of(store, capacity_changed(impostor))) == "BAD_SIGNATURE"
    assert isinstance(verdict_of(store, capacity_changed(station)), Admitted)


def test_credential_from_an_unrecognised_authority_is_rejected() -> None:
    world = make_world()
    rogue = Participant.seeded("auth-rogue", secret="tests")
    rogue_issuer = Participant.seeded("issuer-rogue", secret="tests")
    store = world.store()
    declared = rogue.declare_authority("Rogue", "US-CA", ["AUTHORITY"], at_ms=T0_MS)
    assert reason(verdict_of(store, declared)) == "UNRECOGNISED_AUTHORITY"  # issue 15, hole 5
    assert "auth-rogue" not in store.principals
    delegation = rogue.delegate_issuer(rogue_issuer, ["STATION"], ["US-CA"], at_ms=T0_MS)
    assert reason(verdict_of(store, delegation)) == "UNKNOWN_CREDENTIAL"
    station = Participant.seeded("st-r", "station-r", secret="tests")
    issued = rogue_issuer.issue_credential(station, ["STATION"], "US-CA", at_ms=T0_MS)
    assert reason(verdict_of(store, issued)) == "UNKNOWN_CREDENTIAL"


def test_expired_and_not_yet_valid_credentials_are_rejected() -> None:
    world = make_world()
    old = world.credential("st-old", ["STATION"], subject_id="station-old",
                           valid_until_ms=T0_MS + 500)
    future = world.credential("st-new", ["STATION"], subject_id="station-new",
                              valid_from_ms=T0_MS + 10_000)
    store = world.store()
    assert reason(verdict_of(store, capacity_changed(old))) == "CREDENTIAL_EXPIRED"
    assert reason(verdict_of(store, capacity_changed(future))) == "CREDENTIAL_NOT_YET_VALID"


def test_role_not_permitted_for_the_event_type() -> None:
    world = make_world()
    vehicle = world.credential("veh-1", ["VEHICLE"], subject_id="station-1")
    store = world.store()
    assert reason(verdict_of(store, capacity_changed(vehicle))) == "ROLE_NOT_PERMITTED"


def test_station_cannot_speak_for_another_station() -> None:
    world = make_world()
    station = world.credential("st-1", ["STATION"], subject_id="station-1")
    store = world.store()
    verdict = verdict_of(store, capacity_changed(station, station_id="station-2"))
    assert reason(verdict) == "SUBJECT_MISMATCH"


def test_revocation_applies_from_its_effective_time() -> None:
    world = make_world()
    station = world.credential("st-1", ["STATION"], subject_id="station-1")
    world.governance.append(world.issuer.revoke("st-1", T0_MS + 5_000, "SAFETY"))
    store = world.store()
    assert isinstance(verdict_of(store, capacity_changed(station, at_ms=T0_MS + 4_999)), Admitted)
    late = capacity_changed(station, at_ms=T0_MS + 5_000)
    assert reason(verdict_of(store, late)) == "CREDENTIAL_REVOKED"


def test_revoking_an_issuer_revokes_what_it_issued() -> None:
    world = make_world()
    station = world.credential("st-1", ["STATION"], subject_id="station-1")
    world.governance.append(world.root.revoke("issuer-1", T0_MS + 100, "KEY_COMPROMISE"))
    store = world.store()
    verdict = verdict_of(store, capacity_changed(station, at_ms=T0_MS + 200))
    assert reason(verdict) == "CREDENTIAL_REVOKED"
    assert "issuer-1" in verdict.rejection.detail  # type: ignore[union-attr]
    assert set(store.descendants("issuer-1")) >= {"issuer-1", "st-1"}


def test_only_the_chain_above_may_revoke() -> None:
    world = make_world()
    world.credential("st-1", ["STATION"], subject_id="station-1")
    other = world.credential("st-2", ["STATION"], subject_id="station-2")
    store = world.store()
    attack = other.revoke("st-1", T0_MS + 10)  # well signed, but not his to revoke
    assert reason(verdict_of(store, attack)) == "ROLE_NOT_PERMITTED"
    assert "st-1" not in store.revocations


def test_issuer_cannot_exceed_its_delegation() -> None:
    world = make_world(jurisdictions=("US-CA",))
    store = world.store()
    holder = Participant.seeded("auth-like", secret="tests")
    too_much = world.issuer.issue_credential(holder, ["AUTHORITY"], "US-CA", at_ms=T0_MS)
    assert reason(verdict_of(store, too_much)) == "ISSUANCE_EXCEEDS_DELEGATION"
    abroad = world.issuer.issue_credential(holder, ["STATION"], "DE-BY", at_ms=T0_MS)
    assert reason(verdict_of(store, abroad)) == "JURISDICTION_NOT_DELEGATED"


def test_replayed_governance_event_is_rejected() -> None:
    world = make_world()
    store: TrustStore = world.store()
    assert reason(verdict_of(store, world.governance[0])) == "REPLAYED_EVENT_ID"


def test_malformed_bytes_and_wrong_topic_and_key() -> None:
    world = make_world()
    station = world.credential("st-1", ["STATION"], subject_id="station-1")
    store = world.store()
    assert reason(verdict_of(store, b"not avro", topic="chargemesh.market.v1")) == (
        "MALFORMED_ENVELOPE")
    event = capacity_changed(station)
    assert reason(verdict_of(store, event, topic="chargemesh.grid.v1")) == "WRONG_TOPIC"
    assert reason(verdict_of(store, event, key="station-9")) == "KEY_MISMATCH"


def test_reciprocity_needs_both_authorities() -> None:
    world = make_world()
    other = Participant.seeded("auth-de", secret="tests")
    world.governance.append(world.root.sign(
        "chargemesh.governance.v1.AuthorityRecognised",
        {"authority_id": "auth-de", "recognised_by_authority_id": "auth-root",
         "public_key": other.public_key, "jurisdiction": "DE-BY",
         "roles": ["AUTHORITY", "RATE_AUTHORITY"], "valid_from_ms": 0, "valid_until_ms": 2**62},
        subject_key="auth-root", occurred_at_ms=T0_MS))
    store = world.store()
    payload = {"agreement_id": "recip-1", "authority_a_id": "auth-root",
               "authority_b_id": "auth-de", "valid_from_ms": 0, "valid_until_ms": 2**62}
    one_sided = world.root.sign("chargemesh.governance.v1.ReciprocityAgreed", payload,
                                subject_key="auth-root", occurred_at_ms=T0_MS)
    assert reason(verdict_of(store, one_sided)) == "MISSING_SIGNATURE"
    both = world.root.sign("chargemesh.governance.v1.ReciprocityAgreed", payload,
                           subject_key="auth-root", occurred_at_ms=T0_MS, co_signers=[other])
    assert isinstance(verdict_of(store, both), Admitted)
    assert store.has_reciprocity("auth-de", "auth-root", T0_MS)
    assert not store.has_reciprocity("auth-de", "auth-xx", T0_MS)
