"""Issue 16, finality and the billing feed (M6, P4) on the real stack.

- A settlement whose vehicle never countersigns expires when the rate authority's finality window
  closes: a SettlementExpired on chargemesh.settlements.v1 names the missing signer, the late
  countersignature is refused SETTLEMENT_EXPIRED (rejections topic and ClickHouse), and
  settlements_status / revenue_daily / settlements_net follow it; its twin, countersigned in
  time, settles FINAL as before.
- A FINAL settlement judged INADMISSIBLE after a revocation is reversed on the billing feed by a
  SettlementReversed naming it (every line negated); settlements_status shows it REVERSED,
  revenue_daily nets it to nothing and settlements_net marks it voided; the twin closed out
  before the revocation is upheld and still counted.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from chargemesh.infra.stack.worker import TopicReader
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.streams.topics import REJECTIONS
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh
from tests.integration.test_sessions_pipeline import Session, settlement_records
from tests.support.market import HOUR_MS, open_market
from tests.support.world import T0_MS

pytestmark = pytest.mark.integration


def _settle(mesh: Mesh, *sessions: tuple[Session, int | None]) -> list[object]:
    """Start, read, close out each session (and countersign at the minute given), in time order
    across the sessions: returns the close-outs."""
    starts, readings, closes, signatures = [], [], [], []
    for session, countersign_at_min in sessions:
        starts.append(session.start())
        readings.append(session.read(10, 9_000))
        closes.append(session.close(25, 18_000))
        if countersign_at_min is not None:
            signatures.append(sdk.close_out_countersigned(
                session.vehicle, closes[-1], session.start_ms + countersign_at_min * MINUTE_MS))
    mesh.publish(*starts, *readings, *closes, *signatures)
    return closes


def test_a_settlement_missing_its_vehicles_signature_expires_and_its_twin_settles(
        mesh: Mesh) -> None:
    market = open_market(mesh, "fin", now_ms(), [sdk.connector("c1", 50_000),
                                                 sdk.connector("c2", 50_000)],
                         hours=6, grid_zone_id="zone-fin", finality_window_ms=HOUR_MS)
    start = market.start_ms
    unsigned = Session(market, market.vehicle("unsigned"), "unsigned", start, connector_id="c1")
    twin = Session(market, market.vehicle("twin"), "twin", start, connector_id="c2")
    mesh.publish(*mesh.world.governance)  # the vehicles' credentials
    mesh.world.governance.clear()
    mesh.publish(unsigned.booking, twin.booking)  # booked ahead of the station's clock
    close, _ = _settle(mesh, (unsigned, None), (twin, 26))
    admitted = settlement_records(mesh, unsigned.session_id, {"SettlementAdmitted"})
    settlement_id = admitted["SettlementAdmitted"][1]["settlement_id"]
    settlement_records(mesh, twin.session_id, {"SettlementFinalised"})

    closed_at = start + 25 * MINUTE_MS
    mesh.publish(sdk.heartbeat(market.station, closed_at + HOUR_MS))  # the window closes
    expired = settlement_records(mesh, unsigned.session_id, {"SettlementExpired"})
    p = expired["SettlementExpired"][1]
    assert (p["settlement_id"], p["missing_signer_ids"], p["signer_ids"]) == (
        settlement_id, [unsigned.vehicle.credential_id], [market.station.credential_id])
    assert (p["closed_at_ms"], p["finality_window_ms"], p["expired_at_ms"]) == (
        closed_at, HOUR_MS, closed_at + HOUR_MS)

    late = sdk.close_out_countersigned(unsigned.vehicle, close, closed_at + HOUR_MS + MINUTE_MS)
    rejections = TopicReader(mesh.settings, REJECTIONS.name)
    mesh.publish(late)
    rejections.wait_for(lambda rs: any(r.rejection()["event_id"] == late.event_id for r in rs),
                        timeout_s=45, workers=(mesh.worker,))
    rejections.close()
    refused = [r.rejection() for r in rejections.records
               if r.rejection()["event_id"] == late.event_id]
    assert refused[0]["reason_code"] == "SETTLEMENT_EXPIRED"
    assert mesh.wait_rows("SELECT reason_code FROM rejections WHERE event_id = %(e)s",
                          {"e": late.event_id}) == [("SETTLEMENT_EXPIRED",)]
    assert "SettlementFinalised" not in settlement_records(
        mesh, unsigned.session_id, {"SettlementExpired"})

    statuses = mesh.wait_rows(
        "SELECT session_id, status, missing_signer_ids FROM settlements_status "
        "WHERE station_id = %(s)s AND status IN ('EXPIRED', 'FINAL') ORDER BY session_id",
        {"s": market.station_id}, count=2)
    assert statuses == [(twin.session_id, "FINAL", []),
                        (unsigned.session_id, "EXPIRED", [unsigned.vehicle.credential_id])]
    assert mesh.wait_rows("SELECT settlement_id, missing_signer_ids FROM settlement_expiries "
                          "FINAL WHERE station_id = %(s)s", {"s": market.station_id}) == [
        (settlement_id, [unsigned.vehicle.credential_id])]
    twin_total = mesh.wait_rows("SELECT total_amount FROM settlements FINAL WHERE session_id = "
                                "%(s)s", {"s": twin.session_id})[0][0]
    revenue = mesh.wait_rows("SELECT sum(settlements), sum(total_amount) FROM revenue_daily "
                             "WHERE station_id = %(s)s", {"s": market.station_id})
    assert revenue == [(1, twin_total)]  # the expired one is owed by nobody
    net = mesh.wait_rows("SELECT session_id, expired FROM settlements_net WHERE station_id = "
                         "%(s)s ORDER BY session_id", {"s": market.station_id}, count=2)
    assert net == [(twin.session_id, 0), (unsigned.session_id, 1)]


def test_a_final_settlement_judged_inadmissible_is_reversed_and_every_view_nets_it(
        mesh: Mesh) -> None:
    world = mesh.world
    issuer = Participant.seeded("issuer-fin-rev", secret="tests")
    reversed_vehicle = Participant.seeded("finrev-v1-cred", "finrev-v1", secret="tests")
    mesh.publish(world.root.delegate_issuer(issuer, ["VEHICLE"], ["US-CA"], at_ms=T0_MS),
                 issuer.issue_credential(reversed_vehicle, ["VEHICLE"], "US-CA", at_ms=T0_MS))
    market = open_market(mesh, "finrev", now_ms(), [sdk.connector("c1", 50_000),
                                                    sdk.connector("c2", 50_000)],
                         hours=6, grid_zone_id="zone-finrev")
    start = market.start_ms
    hit = Session(market, reversed_vehicle, "hit", start + 30 * MINUTE_MS, connector_id="c1")
    upheld = Session(market, market.vehicle("upheld"), "upheld", start, connector_id="c2")
    mesh.publish(*world.governance)
    world.governance.clear()
    mesh.publish(upheld.booking, hit.booking)
    _settle(mesh, (upheld, 26))
    _settle(mesh, (hit, 56))
    charged = settlement_records(mesh, hit.session_id, {"SettlementAdmitted",
                                                        "SettlementFinalised"})
    charge = charged["SettlementAdmitted"][1]
    settlement_records(mesh, upheld.session_id, {"SettlementFinalised"})

    # Revoked from before the hit session's close-out (start + 55 min), after the twin's (+25).
    mesh.publish(world.root.revoke(issuer.credential_id, effective_at_ms=start + 40 * MINUTE_MS,
                                   reason_code="KEY_COMPROMISE"))
    reversal = settlement_records(mesh, hit.session_id, {"SettlementReversed"})
    p = reversal["SettlementReversed"][1]
    assert (p["settlement_id"], p["reverses_settlement_id"], p["reason_code"]) == (
        f"rev:{hit.session_id}", charge["settlement_id"], "CREDENTIAL_REVOKED")
    assert p["total_amount"] == -charge["total_amount"] != Decimal(0)
    assert [(ln["kind"], ln["amount"]) for ln in p["lines"]] == [
        (ln["kind"], -ln["amount"]) for ln in charge["lines"]]

    statuses = mesh.wait_rows(
        "SELECT settlement_id, kind, status, reversed_by_settlement_id FROM settlements_status "
        "WHERE station_id = %(s)s AND status != 'PENDING' ORDER BY settlement_id",
        {"s": market.station_id}, count=3)
    assert statuses == [
        (f"rev:{hit.session_id}", "REVERSAL", "FINAL", ""),
        (charge["settlement_id"], "CHARGE", "REVERSED", f"rev:{hit.session_id}"),
        (f"stl:{upheld.session_id}", "CHARGE", "FINAL", "")]
    upheld_total = mesh.wait_rows("SELECT total_amount FROM settlements FINAL WHERE "
                                  "settlement_id = %(s)s", {"s": f"stl:{upheld.session_id}"})[0][0]
    revenue = mesh.wait_rows("SELECT sum(settlements), sum(total_amount) FROM revenue_daily "
                             "WHERE station_id = %(s)s", {"s": market.station_id})
    assert revenue == [(3, upheld_total)]  # the charge and its reversal net to nothing
    net = mesh.wait_rows("SELECT settlement_id, net_amount, voided FROM settlements_net "
                         "WHERE station_id = %(s)s ORDER BY settlement_id",
                         {"s": market.station_id}, count=2)
    assert net == [(charge["settlement_id"], Decimal(0), 1),
                   (f"stl:{upheld.session_id}", upheld_total, 0)]
    lines = mesh.wait_rows("SELECT sum(amount) FROM settlement_lines WHERE settlement_id = "
                           "%(s)s", {"s": f"rev:{hit.session_id}"})
    assert lines == [(-charge["total_amount"],)]
