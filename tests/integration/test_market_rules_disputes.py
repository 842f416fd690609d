"""Issue 16, disputes (P2) on the real stack: the rate authority's dispute window, not ledger
pruning, bounds when a dispute may be opened.

- The rules declare a 3-day dispute window. Two sessions settle FINAL. Two and a half days
  later the station's ledger has forgotten both sessions (FINISHED_KEPT_MS), yet a dispute on
  the first is accepted from its settlement's compact summary and voided by the rate authority:
  a CREDIT settlement naming it, on the billing feed and in ClickHouse.
- Past the window (three and a half days), a dispute on the second is refused
  DISPUTE_WINDOW_CLOSED, on chargemesh.rejections.v1 and in ClickHouse ``rejections``.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk import swap_mobile
from chargemesh.streams.sdk.participant import now_ms
from chargemesh.units import DAY_MS, HOUR_MS, MINUTE_MS

from tests.conftest import Mesh
from tests.integration.test_disputes import rejection_reasons
from tests.integration.test_market_rules_finality import _settle
from tests.integration.test_sessions_pipeline import Session, settlement_records
from tests.support.market import open_market

pytestmark = pytest.mark.integration


def test_a_dispute_is_accepted_after_pruning_within_the_window_and_refused_after_it(
        mesh: Mesh) -> None:
    market = open_market(mesh, "dsw", now_ms(), [sdk.connector("c1", 50_000),
                                                 sdk.connector("c2", 50_000)],
                         hours=6, grid_zone_id="zone-dsw", dispute_window_ms=3 * DAY_MS)
    start = market.start_ms
    early = Session(market, market.vehicle("early"), "early", start, connector_id="c1")
    late = Session(market, market.vehicle("late"), "late", start, connector_id="c2")
    mesh.publish(*mesh.world.governance)  # the vehicles' credentials
    mesh.world.governance.clear()
    mesh.publish(early.booking, late.booking)
    early_close, _ = _settle(mesh, (early, 26), (late, 26))
    for session in (early, late):
        settlement_records(mesh, session.session_id, {"SettlementFinalised"})
    original = settlement_records(mesh, early.session_id, {"SettlementAdmitted"})[
        "SettlementAdmitted"][1]

    # 2.5 days on: both sessions have left the live ledger; the dispute window is still open.
    within = start + 60 * HOUR_MS
    where = {"station_id": market.station_id}
    opened = sdk.dispute_opened(
        early.vehicle, dispute_id="dsw-d1", session_id=early.session_id, kind="METER_DISPUTE",
        claim="the meter over-read", settlement_id=f"stl:{early.session_id}",
        evidence_event_ids=[early_close.event_id], at_ms=within + MINUTE_MS,
        **where)
    voided = sdk.dispute_resolved(
        mesh.world.root, dispute_id="dsw-d1", session_id=early.session_id, outcome="VOIDED",
        currency="USD", reasoning="meter out of calibration", at_ms=within + 2 * MINUTE_MS,
        **where)
    mesh.publish(sdk.heartbeat(market.station, within), opened, voided)
    credit = mesh.wait_rows(
        "SELECT settlement_id, kind, adjusts_settlement_id, total_amount FROM settlements FINAL "
        "WHERE session_id = %(s)s AND kind = 'CREDIT'", {"s": early.session_id})
    assert credit == [(f"adj:{early.session_id}:dsw-d1", "CREDIT", original["settlement_id"],
                       -original["total_amount"])]

    # 3.5 days on: the window has closed for the second session.
    after = start + 84 * HOUR_MS
    too_late = sdk.dispute_opened(
        late.vehicle, dispute_id="dsw-d2", session_id=late.session_id, kind="METER_DISPUTE",
        claim="the meter over-read", settlement_id=f"stl:{late.session_id}",
        evidence_event_ids=[], at_ms=after + MINUTE_MS, **where)
    mesh.publish(sdk.heartbeat(market.station, after), too_late)
    assert rejection_reasons(mesh, {too_late.event_id}) == {
        too_late.event_id: "DISPUTE_WINDOW_CLOSED"}
    assert mesh.wait_rows("SELECT reason_code FROM rejections WHERE event_id = %(e)s",
                          {"e": too_late.event_id}) == [("DISPUTE_WINDOW_CLOSED",)]
    assert original["total_amount"] > Decimal(0)


def test_a_payment_failure_from_the_vehicles_agent_opens_a_dispute_another_agent_is_refused(
        mesh: Mesh) -> None:
    market = open_market(mesh, "dpf", now_ms(), [sdk.connector("c1", 50_000)], hours=6,
                         grid_zone_id="zone-dpf")
    world = mesh.world
    agent = world.credential("dpf-agent", ["PAYMENT_AGENT"], subject_id="dpf-agent")
    impostor = world.credential("dpf-impostor", ["PAYMENT_AGENT"], subject_id="dpf-impostor")
    vehicle = world.credential("dpf-paid-cred", ["VEHICLE"], subject_id="dpf-paid",
                               attributes={"payment_agent": agent.credential_id})
    session = Session(market, vehicle, "paid", market.start_ms, connector_id="c1")
    mesh.publish(*world.governance)
    world.governance.clear()
    mesh.publish(session.booking)
    _settle(mesh, (session, 26))
    settlement_records(mesh, session.session_id, {"SettlementFinalised"})

    at = market.start_ms + 30 * MINUTE_MS
    where = {"settlement_id": f"stl:{session.session_id}", "session_id": session.session_id,
             "station_id": market.station_id, "vehicle_credential_id": vehicle.credential_id,
             "reason": "card declined"}
    forged = sdk.payment_failed(impostor, at_ms=at, **where)
    failed = sdk.payment_failed(agent, at_ms=at + 1_000, **where)
    mesh.publish(forged, failed)
    assert rejection_reasons(mesh, {forged.event_id}) == {
        forged.event_id: "NOT_THE_PAYMENT_AGENT"}
    assert mesh.wait_rows("SELECT reason_code FROM rejections WHERE event_id = %(e)s",
                          {"e": forged.event_id}) == [("NOT_THE_PAYMENT_AGENT",)]
    opened = mesh.wait_rows(
        "SELECT dispute_id, kind, change, settlement_id, opened_by_credential_id FROM disputes "
        "WHERE session_id = %(s)s", {"s": session.session_id})
    assert opened == [(f"pay:{failed.event_id}", "PAYMENT_FAILURE", "OPENED",
                       f"stl:{session.session_id}", agent.credential_id)]


def test_a_battery_swap_is_disputed_and_voided_like_a_charging_session(mesh: Mesh) -> None:
    from tests.integration.test_swap_mobile_pipeline import _swap, _swap_order

    market = open_market(mesh, "dsws", now_ms(), [sdk.connector("bay1", 1_000_000,
                                                                kind="SWAP_BAY")],
                         tariff={"swap_fee": "5.00", "tax_percent": "10"},
                         grid_zone_id="zone-dsws")
    vehicle = market.vehicle("ev1")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    swapped = _swap(market, vehicle, "o1", 0, ("dsws-P1", 57_000), ("dsws-PA", 6_000))
    mesh.publish(swap_mobile.pack_registered(
        market.station, pack_id="dsws-P1", chemistry="NMC", state_of_health_permille=950,
        capacity_wh=60_000, charge_wh=57_000, at_ms=market.start_ms - 60_000),
        _swap_order(market, vehicle, "o1", 0), swapped)
    session_id = market.order_id("swap-o1")
    original = settlement_records(mesh, session_id, {"SettlementFinalised", "SettlementAdmitted"})[
        "SettlementAdmitted"][1]
    at = market.start_ms + 10 * MINUTE_MS
    where = {"session_id": session_id, "station_id": market.station_id}
    opened = sdk.dispute_opened(vehicle, dispute_id="dsws-d1", kind="METER_DISPUTE",
                                claim="the pack came out short",
                                settlement_id=original["settlement_id"],
                                evidence_event_ids=[swapped.event_id], at_ms=at, **where)
    voided = sdk.dispute_resolved(mesh.world.root, dispute_id="dsws-d1", outcome="VOIDED",
                                  currency="USD", reasoning="pack gauge faulty",
                                  at_ms=at + MINUTE_MS, **where)
    mesh.publish(opened, voided)
    credit = mesh.wait_rows(
        "SELECT kind, adjusts_settlement_id, total_amount FROM settlements FINAL "
        "WHERE session_id = %(s)s AND kind = 'CREDIT'", {"s": session_id})
    assert credit == [("CREDIT", original["settlement_id"], -original["total_amount"])]
