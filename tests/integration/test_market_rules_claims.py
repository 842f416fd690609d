"""Issue 16, tariffs and claims (C2, M3, E3), on the real stack.

* The energy billed never exceeds the claimed energy unless the claim allows an overrun: a
  session claiming 10 kWh that meters 14 kWh bills 10 kWh (its line says the 4 kWh beyond the
  claim are not billed); its twin whose claim allows an overrun bills all 14 kWh.
* The V2G clearing-price cap is the tariff's, in its currency: an operator's co-signature stating
  a clearing price above the tariff's declared cap is refused ``INVALID_CLEARING_PRICE`` on
  ``chargemesh.rejections.v1`` and in ClickHouse ``rejections``, though below the mesh's default
  cap; its twin under the cap settles the session two-sided.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import now_ms
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh
from tests.integration.test_market_rules_tariffs import rejected
from tests.integration.test_sessions_pipeline import Session, settlement_records
from tests.integration.test_v2g_fleet_pipeline import Plug, v2g_operator
from tests.support.market import SLOT_MS, open_market

pytestmark = pytest.mark.integration


def test_energy_beyond_the_claim_is_billed_only_when_the_claim_allows_an_overrun(
        mesh: Mesh) -> None:
    t = now_ms()
    market = open_market(mesh, "mr3-claim", t, [sdk.connector("c1", 150_000)],
                         tariff={"tax_percent": "10"}, posted="0.40")
    vehicle = market.vehicle("ev")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    capped = Session(market, vehicle, "s1", market.start_ms, slots=2, energy_wh=10_000)
    allowed = Session(market, vehicle, "s2", market.start_ms + 2 * SLOT_MS, slots=2,
                      energy_wh=10_000)
    allowed.booking = market.posted_order(vehicle, allowed.order_id, allowed.start_ms, slots=2,
                                          connector_id="c1", energy_wh=10_000,
                                          overrun_allowed=True)
    totals = {}
    for session in (capped, allowed):  # each meters 14 kWh (from 1,000 Wh to 15,000 Wh)
        mesh.publish(session.booking, session.start(), session.read(10, 8_000))
        mesh.publish(session.close(20, 15_000))
        _, settlement = settlement_records(mesh, session.session_id,
                                           {"SettlementAdmitted"})["SettlementAdmitted"]
        assert settlement["energy_import_wh"] == 14_000  # what was metered
        totals[session.session_id] = settlement
    lines = totals[capped.session_id]["lines"]
    assert [(ln["kind"], ln["quantity_wh"], ln["amount"]) for ln in lines] == [
        ("ENERGY", 10_000, Decimal("4.00")), ("TAX", 0, Decimal("0.40"))]
    assert "4000 Wh metered beyond the claim not billed" in lines[0]["description"]
    assert totals[capped.session_id]["total_amount"] == Decimal("4.40")
    assert [(ln["kind"], ln["quantity_wh"], ln["amount"])
            for ln in totals[allowed.session_id]["lines"]] == [
        ("ENERGY", 14_000, Decimal("5.60")), ("TAX", 0, Decimal("0.56"))]
    assert totals[allowed.session_id]["total_amount"] == Decimal("6.16")
    rows = mesh.wait_rows(
        "SELECT settlement_id, sum(quantity_wh) FROM settlement_lines FINAL "
        "WHERE settlement_id IN %(s)s AND kind = 'ENERGY' GROUP BY settlement_id "
        "ORDER BY settlement_id",
        {"s": tuple(s["settlement_id"] for s in totals.values())}, count=2)
    assert rows == [(f"stl:{capped.session_id}", 10_000), (f"stl:{allowed.session_id}", 14_000)]


def test_a_clearing_price_above_the_tariffs_cap_is_refused_and_one_under_it_settles(
        mesh: Mesh) -> None:
    t = now_ms()
    zone = f"zone-mr3-v2g-{t}"
    operator = v2g_operator(mesh, f"op-mr3-v2g-{t}", zone, t)
    market = open_market(mesh, f"mr3v2g{t}", t, [sdk.connector("c1", 22_000, kind="AC_L2",
                                                               bidirectional=True)],
                         tariff={"tax_percent": "10", "clearing_price_cap_per_kwh": "0.50"},
                         grid_zone_id=zone)
    vehicle = market.vehicle("ev")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    plug = Plug(market, vehicle, "s1")
    mesh.publish(plug.booking, plug.start(export_start_wh=40_000), plug.read(15, 6_000, 40_000),
                 plug.read(40, 6_000, 48_000))
    close = plug.close(45, 6_000, 48_000)
    mesh.publish(close, sdk.close_out_countersigned(vehicle, close,
                                                    plug.start_ms + 46 * MINUTE_MS))
    above = sdk.settlement_co_signed(operator, close, grid_zone_id=zone,
                                     clearing_price_per_kwh="0.60",  # < the default cap of 100
                                     at_ms=plug.start_ms + 50 * MINUTE_MS)
    mesh.publish(above)
    assert rejected(mesh, [above]) == {above.event_id: "INVALID_CLEARING_PRICE"}
    mesh.publish(sdk.settlement_co_signed(operator, close, grid_zone_id=zone,
                                          clearing_price_per_kwh="0.50",
                                          at_ms=plug.start_ms + 51 * MINUTE_MS))
    _, settlement = settlement_records(mesh, plug.session_id,
                                       {"SettlementAdmitted"})["SettlementAdmitted"]
    # import 5,000 Wh x 0.40 = 2.00, tax 0.20; export 8,000 Wh x 0.50 (the cap) = 4.00 credit
    assert [(ln["kind"], ln["amount"]) for ln in settlement["lines"]] == [
        ("ENERGY", Decimal("2.00")), ("TAX", Decimal("0.20")),
        ("V2G_EXPORT_CREDIT", Decimal("-4.00"))]
    assert settlement["total_amount"] == Decimal("-1.80")
