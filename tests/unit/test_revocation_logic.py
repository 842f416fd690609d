"""P4 revocation re-evaluation in a station's ledger, pure (no broker): what rested on a revoked
credential is cancelled, re-allocated or stopped; what did not is left alone."""

from __future__ import annotations

from typing import Any

from chargemesh.processors.ledger import commands
from chargemesh.processors.ledger import state as ledger
from chargemesh.streams.sdk.participant import connector

from tests.unit.test_ledger import POWER_W, Market, kinds, market, reason, slot
from tests.support.world import pairs

ROUTED = "chargemesh.ledger.v1.RevocationRouted"


def revoke(m: Market, *credential_ids: str, effective_at_ms: int) -> ledger.Outcome:
    payload: dict[str, Any] = {
        "routing_key": "revocation:x:0", "market_partition": 0, "revocation_event_id": "rev-1",
        "revoked_credential_id": credential_ids[0], "effective_at_ms": effective_at_ms,
        "revoked_credential_ids": list(credential_ids), "cascade_truncated": False,
        "revocation_event": b""}
    cmd = ledger.Command(ROUTED, payload, m.now(), "processor", "routed-1")
    return commands.handle(m.state, cmd, m.store)


def reevaluations(outcome: ledger.Outcome) -> list[tuple[str, str, str]]:
    return [(d["subject_kind"], d["subject_id"], d["outcome"])
            for kind, d in pairs(outcome.decisions) if kind == "CredentialReevaluated"]


def test_a_revoked_vehicle_loses_its_future_bookings_and_no_one_else_does() -> None:
    m = market()
    assert kinds(m.posted("v1", "o-early", slot(0), connector_id="c1")) == ["SlotReserved"]
    assert kinds(m.posted("v1", "o-late", slot(4), connector_id="c1")) == ["SlotReserved"]
    assert kinds(m.posted("v2", "o-other", slot(4), connector_id="c2")) == ["SlotReserved"]
    effective = slot(2)[0]
    outcome = revoke(m, m.vehicles["v1"].credential_id, effective_at_ms=effective)
    assert reevaluations(outcome) == [("RESERVATION", "res:o-late", "CANCELLED")]
    released = [d for kind, d in pairs(outcome.decisions) if kind == "SlotReleased"]
    assert [(d["reservation_id"], d["reason_code"]) for d in released] == [
        ("res:o-late", "CREDENTIAL_REVOKED")]
    status = {r.reservation_id: r.status for r in m.state.reservations.values()}
    assert status == {"res:o-early": "ACTIVE", "res:o-late": "RELEASED", "res:o-other": "ACTIVE"}


def test_a_revoked_meter_moves_bookings_off_its_connector_under_the_rules() -> None:
    m = market([connector("c1", POWER_W, meter_credential_id="meter-c1"),
                connector("c2", POWER_W, meter_credential_id="meter-c2")])
    assert kinds(m.posted("v1", "o1", slot(3), connector_id="c1")) == ["SlotReserved"]
    outcome = revoke(m, "meter-c1", effective_at_ms=slot(1)[0])
    assert reevaluations(outcome) == [("RESERVATION", "res:o1", "REALLOCATED")]
    moved = [d for kind, d in pairs(outcome.decisions) if kind == "SlotReallocated"]
    assert moved[0]["to_connector_id"] == "c2" and moved[0]["reason_code"] == "METER_REVOKED"
    # The connector is out of service from the effective time on: it takes no new booking.
    refused = m.posted("v2", "o2", slot(5), connector_id="c1")
    assert reason(refused) != "" and kinds(refused) == []


def test_a_revoked_station_cancels_everything_ahead_and_takes_no_new_orders() -> None:
    m = market()
    m.posted("v1", "o1", slot(2), connector_id="c1")
    m.posted("v2", "o2", slot(5), connector_id="c2")
    outcome = revoke(m, m.station.credential_id, effective_at_ms=slot(1)[0])
    assert sorted(reevaluations(outcome)) == [("RESERVATION", "res:o1", "CANCELLED"),
                                              ("RESERVATION", "res:o2", "CANCELLED")]
    assert reason(m.posted("v3", "o3", slot(6))) == "STATION_REVOKED"


def test_an_unrelated_revocation_changes_nothing() -> None:
    m = market()
    m.posted("v1", "o1", slot(2), connector_id="c1")
    before = ledger.dump_state(m.state)
    outcome = revoke(m, "someone-else", effective_at_ms=slot(0)[0])
    assert outcome.decisions == [] and outcome.rejection is None
    after = ledger.load_state(ledger.dump_state(m.state))
    assert {r.reservation_id: r.status for r in after.reservations.values()} == {
        r.reservation_id: r.status for r in ledger.load_state(before).reservations.values()}
