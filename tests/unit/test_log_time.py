"""Issue 15, hole 3, pure: an event is judged at the time of the log that admits it.

A vehicle revoked for KEY_COMPROMISE signs an order dated before its revocation: once the
revocation reached the station's ledger it is refused CREDENTIAL_REVOKED and not admitted, while
an unrevoked vehicle's order at the same claimed time is booked. A station (or a vehicle)
claiming a time more than a week from the ledger's clock is refused CLOCK_SKEW, and a
vehicle whose credential expired by the ledger's clock gets nothing by backdating. On the
governance log a revoked or expired issuer gets nothing by backdating. Everything is decided
from the logs alone: the same records give the same refusals after a save and restore.
"""

from __future__ import annotations

from chargemesh.processors import pipeline
from chargemesh.processors.governance import TrustStore
from chargemesh.processors.ingress import Admitted, Refused, admit_governance
from chargemesh.processors.ledger import log_time
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.log_clock import (
    CLOCK_SKEW_MS_MAX,
    GOVERNANCE_CLOCK_SKEW_MS_MAX,
    skew_problem,
)
from chargemesh.processors.reasons import Reason
from chargemesh.streams import topics
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import Participant
from chargemesh.units import DAY_MS, HOUR_MS, MINUTE_MS

from tests.support.world import T0_MS, make_world
from tests.unit.test_pipeline import (
    AUTHORITY,
    SLOT_MS,
    START_MS,
    STATIONS,
    Mesh,
    calendar,
    make_mesh,
    of_type,
    rejections,
)

STATION = STATIONS[0]
SLOT_RESERVED = "chargemesh.ledger.v1.SlotReserved"
REVOKED_AT_MS = T0_MS + 10 * MINUTE_MS


def order_by(mesh: Mesh, vehicle: Participant, order_id: str, at_ms: int,
             slot: int = 0) -> SignedEvent:
    start_ms = START_MS + slot * SLOT_MS
    ident = sdk.identity(station_id=STATION, vehicle=vehicle, rate_authority_id=AUTHORITY,
                         jurisdiction="US-CA", connector_id="c1")
    terms = sdk.claim(energy_wh=10_000, start_ms=start_ms, stop_ms=start_ms + 2 * SLOT_MS,
                      ceiling_rate_per_kwh="0.90", currency="USD")
    return sdk.order(vehicle, "posted", order_id=order_id, ident=ident, terms=terms,
                     rate_per_kwh="0.40", at_ms=at_ms)


def admitted_values(result: pipeline.BatchResult) -> list[bytes]:
    return [o.value for o in result.outputs if o.topic == topics.ADMITTED.name]


def ledger_of(mesh: Mesh) -> ledger.LedgerState:
    return ledger.load_state(mesh.tables[topics.STATION_LEDGER_STATE.name][STATION.encode()])


def revoked_mesh() -> tuple[Mesh, Participant]:
    """A station with a calendar and a heartbeat; the mesh's vehicle revoked for
    KEY_COMPROMISE from REVOKED_AT_MS, the revocation routed to every market partition; and a
    second, unrevoked vehicle (the legitimate twin)."""
    mesh = make_mesh()
    twin = mesh.world.credential("pipe-twin-cred", ["VEHICLE"], subject_id="pipe-twin")
    mesh.governance([mesh.world.governance[-1]])
    station = mesh.stations[STATION]
    mesh.market([mesh.record(calendar(station)),
                 mesh.record(sdk.heartbeat(station, REVOKED_AT_MS + MINUTE_MS))])
    revoke = mesh.world.issuer.revoke(mesh.vehicle.credential_id, effective_at_ms=REVOKED_AT_MS,
                                      reason_code="KEY_COMPROMISE", at_ms=REVOKED_AT_MS)
    routed = [o for o in mesh.governance([revoke]).outputs if o.topic == topics.MARKET.name]
    mesh.market([mesh.record(o) for o in routed])
    return mesh, twin


# ---- the station's ledger -------------------------------------------------------------------------


def test_a_revoked_vehicle_backdating_an_order_is_refused_and_its_twin_is_booked() -> None:
    mesh, twin = revoked_mesh()
    backdated_ms = REVOKED_AT_MS - 5 * MINUTE_MS  # before the revocation, inside the skew bound
    attack = order_by(mesh, mesh.vehicle, "pipe-attack", backdated_ms)
    legit = order_by(mesh, twin, "pipe-legit", backdated_ms, slot=4)
    result = mesh.market([mesh.record(attack), mesh.record(legit)])
    refused = rejections(result.outputs)
    assert [(r["event_id"], r["reason_code"]) for r in refused] == [
        (attack.event_id, "CREDENTIAL_REVOKED")]
    assert admitted_values(result) == [legit.encode()]
    booked = [p["order_id"] for _, p in of_type(result.outputs, SLOT_RESERVED)]
    assert booked == ["pipe-legit"]
    # the ledger recorded when the revocation became known, at its own clock
    known = ledger_of(mesh).extra[log_time.KNOWN]
    assert known[mesh.vehicle.credential_id] == [REVOKED_AT_MS, REVOKED_AT_MS + MINUTE_MS, 0]


def test_before_the_revocation_reaches_the_ledger_the_same_order_is_booked() -> None:
    """What decides is the ledger's own order: the routed revocation, not a wall clock."""
    mesh = make_mesh()
    station = mesh.stations[STATION]
    mesh.market([mesh.record(calendar(station))])
    early = order_by(mesh, mesh.vehicle, "pipe-early", REVOKED_AT_MS - 5 * MINUTE_MS)
    result = mesh.market([mesh.record(early)])
    assert admitted_values(result) == [early.encode()] and rejections(result.outputs) == []


def test_a_revocation_scheduled_ahead_leaves_the_credential_acting_until_then() -> None:
    mesh = make_mesh()
    station = mesh.stations[STATION]
    mesh.market([mesh.record(calendar(station))])
    later_ms = T0_MS + 6 * HOUR_MS
    revoke = mesh.world.issuer.revoke(mesh.vehicle.credential_id, effective_at_ms=later_ms,
                                      at_ms=T0_MS + 2)
    routed = [o for o in mesh.governance([revoke]).outputs if o.topic == topics.MARKET.name]
    mesh.market([mesh.record(o) for o in routed])
    order = order_by(mesh, mesh.vehicle, "pipe-before", T0_MS + 3)
    assert admitted_values(mesh.market([mesh.record(order)])) == [order.encode()]


def test_an_expired_vehicle_backdating_an_order_is_refused_at_the_ledgers_clock() -> None:
    mesh = make_mesh()
    short = mesh.world.credential("pipe-short-cred", ["VEHICLE"], subject_id="pipe-short",
                                  valid_until_ms=T0_MS + 30 * MINUTE_MS)
    twin = mesh.world.credential("pipe-long-cred", ["VEHICLE"], subject_id="pipe-long")
    mesh.governance(mesh.world.governance[-2:])
    station = mesh.stations[STATION]
    mesh.market([mesh.record(calendar(station)),
                 mesh.record(sdk.heartbeat(station, T0_MS + HOUR_MS))])
    claimed_ms = T0_MS + 20 * MINUTE_MS  # inside its validity, and inside the skew bound
    attack = order_by(mesh, short, "pipe-expired", claimed_ms)
    legit = order_by(mesh, twin, "pipe-valid", claimed_ms, slot=4)
    result = mesh.market([mesh.record(attack), mesh.record(legit)])
    assert [(r["event_id"], r["reason_code"]) for r in rejections(result.outputs)] == [
        (attack.event_id, "CREDENTIAL_EXPIRED")]
    assert admitted_values(result) == [legit.encode()]


def test_a_station_claiming_a_time_far_from_its_ledger_clock_is_refused_clock_skew() -> None:
    mesh = make_mesh()
    station = mesh.stations[STATION]
    mesh.market([mesh.record(calendar(station))])  # a fresh ledger takes its first time
    clock_ms = ledger_of(mesh).station_clock_ms
    ahead = sdk.heartbeat(station, clock_ms + CLOCK_SKEW_MS_MAX + 1)
    behind = sdk.heartbeat(station, clock_ms - CLOCK_SKEW_MS_MAX - 1)
    within = sdk.heartbeat(station, clock_ms + CLOCK_SKEW_MS_MAX)
    result = mesh.market([mesh.record(ahead), mesh.record(behind), mesh.record(within)])
    assert [(r["event_id"], r["reason_code"]) for r in rejections(result.outputs)] == [
        (ahead.event_id, "CLOCK_SKEW"), (behind.event_id, "CLOCK_SKEW")]
    assert admitted_values(result) == [within.encode()]
    assert ledger_of(mesh).station_clock_ms == clock_ms + CLOCK_SKEW_MS_MAX


def test_a_vehicle_order_dated_a_year_ahead_is_refused_clock_skew() -> None:
    mesh = make_mesh()
    mesh.market([mesh.record(calendar(mesh.stations[STATION]))])
    future = order_by(mesh, mesh.vehicle, "pipe-future", T0_MS + 365 * DAY_MS)
    result = mesh.market([mesh.record(future)])
    assert [r["reason_code"] for r in rejections(result.outputs)] == ["CLOCK_SKEW"]
    assert admitted_values(result) == [] and of_type(result.outputs, SLOT_RESERVED) == []


def test_the_log_time_survives_a_save_and_restore_and_decides_the_same() -> None:
    mesh, _ = revoked_mesh()
    raw = mesh.tables[topics.STATION_LEDGER_STATE.name][STATION.encode()]
    restored = ledger.load_state(raw)
    assert ledger.dump_state(restored) == raw
    attack = order_by(mesh, mesh.vehicle, "pipe-attack", REVOKED_AT_MS - MINUTE_MS)
    verdict = pipeline.verify(mesh.record(attack), mesh.store)
    assert isinstance(verdict, Admitted)  # ingress, at the claimed time, cannot tell
    problem = log_time.judge(restored, verdict, mesh.store)
    assert problem is not None and problem.reason == Reason.CREDENTIAL_REVOKED


def test_a_remembered_revocation_is_forgotten_a_skew_bound_after_it_took_effect() -> None:
    mesh, _ = revoked_mesh()
    station = mesh.stations[STATION]
    late_ms = REVOKED_AT_MS + CLOCK_SKEW_MS_MAX + HOUR_MS
    mesh.market([mesh.record(sdk.heartbeat(station, REVOKED_AT_MS + HOUR_MS + step))
                 for step in range(0, late_ms - REVOKED_AT_MS, 12 * HOUR_MS)])
    mesh.market([mesh.record(sdk.heartbeat(station, late_ms)),
                 mesh.record(order_by(mesh, mesh.vehicle, "pipe-x", late_ms - HOUR_MS))])
    assert ledger_of(mesh).extra[log_time.KNOWN] == {}
    # and what the ledger forgot, ingress refuses on the claimed time alone
    late = order_by(mesh, mesh.vehicle, "pipe-late", late_ms)
    assert isinstance(pipeline.verify(mesh.record(late), mesh.store), Refused)


# ---- the governance log ---------------------------------------------------------------------------


def governance_store() -> tuple[TrustStore, Participant, Participant]:
    world = make_world()
    issuer2 = Participant.seeded("issuer-late", secret="tests")
    world.governance.append(world.root.delegate_issuer(
        issuer2, ["VEHICLE"], ["US-CA"], valid_until_ms=T0_MS + HOUR_MS, at_ms=T0_MS))
    return world.store(), world.root, issuer2


def apply(store: TrustStore, event: SignedEvent) -> Admitted | Refused:
    return admit_governance(event.encode(), event.body.subject_key.encode(), store)


def test_a_revoked_issuer_backdating_an_issuance_is_refused() -> None:
    store, root, issuer2 = governance_store()
    assert isinstance(apply(store, root.revoke(issuer2.credential_id, T0_MS + 30 * MINUTE_MS,
                                               "KEY_COMPROMISE", at_ms=T0_MS + 30 * MINUTE_MS)),
                      Admitted)
    holder = Participant.seeded("v-backdated", secret="tests")
    backdated = issuer2.issue_credential(holder, ["VEHICLE"], "US-CA", at_ms=T0_MS + MINUTE_MS)
    verdict = apply(store, backdated)
    assert isinstance(verdict, Refused) and verdict.rejection.reason == Reason.CREDENTIAL_REVOKED
    assert "v-backdated" not in store.principals


def test_an_expired_issuer_backdating_an_issuance_is_refused_and_a_valid_one_is_not() -> None:
    store, _, issuer2 = governance_store()
    issuer1 = make_world().issuer
    # the log's clock passes issuer2's expiry (T0 + 1 h) ...
    later = Participant.seeded("v-later", secret="tests")
    assert isinstance(apply(store, issuer1.issue_credential(later, ["VEHICLE"], "US-CA",
                                                            at_ms=T0_MS + 2 * HOUR_MS)), Admitted)
    assert store.log_clock_ms == T0_MS + 2 * HOUR_MS
    # ... so issuer2 signing "at T0 + 1 min" is judged at the log's time: expired
    holder = Participant.seeded("v-old", secret="tests")
    verdict = apply(store, issuer2.issue_credential(holder, ["VEHICLE"], "US-CA",
                                                    at_ms=T0_MS + MINUTE_MS))
    assert isinstance(verdict, Refused) and verdict.rejection.reason == Reason.CREDENTIAL_EXPIRED
    assert "v-old" not in store.principals
    # the twin: a valid issuer's act at the same claimed time
    twin = Participant.seeded("v-twin", secret="tests")
    assert isinstance(apply(store, issuer1.issue_credential(twin, ["VEHICLE"], "US-CA",
                                                            at_ms=T0_MS + MINUTE_MS)), Admitted)


def test_a_governance_event_claiming_more_than_its_bound_ahead_is_refused() -> None:
    store, _, _ = governance_store()
    holder = Participant.seeded("v-far", secret="tests")
    issuer1 = make_world().issuer
    far = issuer1.issue_credential(holder, ["VEHICLE"], "US-CA",
                                   at_ms=store.log_clock_ms + GOVERNANCE_CLOCK_SKEW_MS_MAX + 1)
    verdict = apply(store, far)
    assert isinstance(verdict, Refused) and verdict.rejection.reason == Reason.CLOCK_SKEW
    assert "v-far" not in store.principals and store.log_clock_ms == T0_MS


# ---- the bound --------------------------------------------------------------------------------------


def test_the_skew_bound_is_inclusive_and_a_log_without_a_clock_takes_any_time() -> None:
    assert skew_problem(0, 123, CLOCK_SKEW_MS_MAX, "x") is None
    assert skew_problem(T0_MS, T0_MS + CLOCK_SKEW_MS_MAX, CLOCK_SKEW_MS_MAX, "x") is None
    assert skew_problem(T0_MS, T0_MS - CLOCK_SKEW_MS_MAX, CLOCK_SKEW_MS_MAX, "x") is None
    for claimed in (T0_MS + CLOCK_SKEW_MS_MAX + 1, T0_MS - CLOCK_SKEW_MS_MAX - 1, 0):
        problem = skew_problem(T0_MS, claimed, CLOCK_SKEW_MS_MAX, "x")
        assert problem is not None and problem.reason == Reason.CLOCK_SKEW
