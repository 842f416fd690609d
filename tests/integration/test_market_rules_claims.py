"""Issue 16, tariffs and claims (C2, M3, E3), on the real stack.

* The energy billed never exceeds the claimed energy unless the claim allows an overrun: a
  session claiming 10 kWh that meters 14 kWh bills 10 kWh (its line says the 4 kWh beyond the
  claim are not billed); its twin whose claim allows an overrun bills all 14 kWh; the
  regulator's audit recomputes both exactly.
* A battery swap bills under the version of the station's tariff in force at the swap, at its
  time-of-use band's rate: a swap before the authority's new version settles under the old
  version (its swap fee, the booked rate, its tax), one after under the new one (its fee, its
  band's rate, its tax); the audit recomputes both exactly.
* A wireless trip bills each pass under the version of its segment's tariff in force at entry:
  passes before the new version at the old rate with the old tax, a pass after at the new
  version's rate with its own tax.
* The V2G clearing-price cap is the tariff's, in its currency: an operator's co-signature stating
  a clearing price above the tariff's declared cap is refused ``INVALID_CLEARING_PRICE`` on
  ``chargemesh.rejections.v1`` and in ClickHouse ``rejections``, though below the mesh's default
  cap; its twin under the cap settles the session two-sided.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk import swap_mobile
from chargemesh.streams.sdk.participant import now_ms
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh
from tests.integration.test_audit_embodiments import audited, rate_authority
from tests.integration.test_market_rules_tariffs import rejected
from tests.integration.test_sessions_pipeline import Session, settlement_records
from tests.integration.test_swap_mobile_pipeline import _swap, _swap_order
from tests.integration.test_v2g_fleet_pipeline import Plug, v2g_operator
from tests.support.market import SLOT_MS, open_market
from tests.support.wireless_road import DELIVERED_WH, TAX, Road

pytestmark = pytest.mark.integration


def test_energy_beyond_the_claim_is_billed_only_when_the_claim_allows_an_overrun(
        mesh: Mesh) -> None:
    t = now_ms()
    authority = rate_authority(mesh, f"mr3-claim-{t}", t)
    market = open_market(mesh, "mr3-claim", t, [sdk.connector("c1", 150_000)],
                         tariff={"tax_percent": "10"}, posted="0.40", authority=authority)
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
    assert audited(mesh, authority.credential_id).settlements_checked == 2  # the same cap


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


def test_a_swap_bills_under_the_tariff_version_in_force_and_its_band(mesh: Mesh) -> None:
    t = now_ms()
    authority = rate_authority(mesh, f"mr3-swap-{t}", t)
    market = open_market(mesh, "mr3-swap", t, [sdk.connector("bay1", 1_000_000,
                                                             kind="SWAP_BAY")],
                         tariff={"swap_fee": "5.00", "tax_percent": "10"},
                         grid_zone_id="zone-mr3-swap", authority=authority)
    new_version = sdk.tariff_filed(  # from slot 2: fee 4.00, 5 % tax, 0.20/kWh all day
        authority, tariff_id=market.tariff_id, jurisdiction="US-CA", currency="USD",
        ceiling_per_kwh="0.80", swap_fee="4.00", tax_percent="5",
        time_of_use=[(0, 24 * 60, "0.20")], effective_from_ms=market.start_ms + 2 * SLOT_MS,
        at_ms=t)
    vehicle = market.vehicle("ev")
    mesh.publish(*mesh.world.governance, new_version)
    mesh.world.governance.clear()
    p1, p2 = "mr3-swap-P1", "mr3-swap-P2"
    mesh.publish(*[swap_mobile.pack_registered(market.station, pack_id=pid, chemistry="NMC",
                                               state_of_health_permille=950, capacity_wh=60_000,
                                               charge_wh=57_000, at_ms=market.start_ms - 60_000)
                   for pid in (p1, p2)],
                 _swap_order(market, vehicle, "o1", 0, pack_id=p1),
                 _swap(market, vehicle, "o1", 0, (p1, 57_000), ("mr3-swap-PA", 7_000)),
                 _swap_order(market, vehicle, "o2", 2, pack_id=p2, returned=p1),
                 _swap(market, vehicle, "o2", 2, (p2, 57_000), (p1, 7_000)))
    got = {}
    for order in ("o1", "o2"):
        _, settled = settlement_records(mesh, market.order_id(f"swap-{order}"),
                                        {"SettlementAdmitted"})["SettlementAdmitted"]
        got[order] = settled
    # before the new version: 5.00 fee + 50 kWh x 0.40 (booked) = 25.00, 10 % tax
    assert [(ln["kind"], ln["amount"]) for ln in got["o1"]["lines"]] == [
        ("SWAP_FEE", Decimal("5.00")), ("ENERGY", Decimal("20.00")), ("TAX", Decimal("2.50"))]
    # after: 4.00 fee + 50 kWh x 0.20 (the new version's band) = 14.00, 5 % tax
    assert [(ln["kind"], ln["unit_rate_per_kwh"], ln["amount"])
            for ln in got["o2"]["lines"]] == [
        ("SWAP_FEE", Decimal(0), Decimal("4.00")), ("ENERGY", Decimal("0.20"), Decimal("10.00")),
        ("TAX", Decimal(0), Decimal("0.70"))]
    rows = mesh.wait_rows("SELECT settlement_id, total_amount FROM settlements FINAL "
                          "WHERE station_id = %(s)s ORDER BY settlement_id",
                          {"s": market.station_id}, count=2)
    assert [total for _, total in rows] == [Decimal("27.50"), Decimal("14.70")]
    assert audited(mesh, authority.credential_id).settlements_checked == 2  # recomputed alike


def test_a_wireless_trip_bills_each_pass_under_the_tariff_version_in_force(mesh: Mesh) -> None:
    prefix = f"mr3-e1-{now_ms() % 10**9}"
    road = Road(mesh.world, prefix, 2)
    vehicle = road.vehicle("ev")
    t0 = now_ms() - 30 * MINUTE_MS
    new_version = sdk.tariff_filed(  # segment 0's tariff from t0 + 10 min: 0.24/kWh, 5 % tax
        mesh.world.root, tariff_id=road.tariff_ids[0], jurisdiction="US-CA", currency="USD",
        ceiling_per_kwh="0.24", station_ids=[road.segment_ids[0]],
        effective_from_ms=t0 + 10 * MINUTE_MS, at_ms=t0, **dict(TAX, tax_percent="5"))
    mesh.publish(*mesh.world.governance, new_version)
    mesh.world.governance.clear()
    trip_id = f"{prefix}-trip"
    passes = [road.pass_of(vehicle, trip_id, i, t0 + minutes * MINUTE_MS)
              for i, minutes in ((0, 1), (1, 2), (0, 11))]  # within the 10 min idle close
    mesh.publish(road.trip(vehicle, trip_id, t0, at_ms=t0),
                 *[road.batch(i, [p], p.left_at_ms + 500)
                   for i, p in zip((0, 1, 0), passes, strict=True)],
                 road.close(vehicle, trip_id, passes[-1].left_at_ms + 2 * MINUTE_MS))
    _, settled = settlement_records(mesh, trip_id, {"SettlementAdmitted"})["SettlementAdmitted"]
    assert [(ln["kind"], ln["quantity_wh"], ln["unit_rate_per_kwh"], ln["amount"])
            for ln in settled["lines"]] == [
        # the first version: 900 Wh x 0.30 and 900 Wh x 0.36 (tariff B), 8.25 % of 0.59
        ("ENERGY", DELIVERED_WH, Decimal("0.30"), Decimal("0.27")),
        ("ENERGY", DELIVERED_WH, Decimal("0.36"), Decimal("0.32")),
        ("TAX", 0, Decimal(0), Decimal("0.05")),
        # segment 0 again after the new version: 900 Wh x 0.24, 5 % of 0.22
        ("ENERGY", DELIVERED_WH, Decimal("0.24"), Decimal("0.22")),
        ("TAX", 0, Decimal(0), Decimal("0.01"))]
    assert settled["total_amount"] == Decimal("0.87")
    rows = mesh.wait_rows("SELECT total_amount, passes_accepted FROM wireless_trips FINAL "
                          "WHERE trip_id = %(t)s", {"t": trip_id})
    assert rows == [(Decimal("0.87"), 3)]
