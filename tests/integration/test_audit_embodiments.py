"""P5 over the embodiments (issue 7) on the real stack: each embodiment's sessions settle under a
rate authority of their own, and that authority's lineage audit replays the topics and passes:
no findings, every settlement checked, and recomputed exactly from the signed events with the
processors' own pure functions where the audit can (E3 V2G two-sided, E4 fleet internal entry,
E2 swap, E5 mobile at the place of delivery), else verified and reported not recomputed (E1
wireless trips)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from chargemesh.infra.cli import audit as cli_audit
from chargemesh.processors.audit.replay import ALL_TIME_MS, AuditReport
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk import swap_mobile
from chargemesh.streams.sdk.participant import Participant, now_ms

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, open_market
from tests.integration.test_audit import _explain
from tests.integration.test_sessions_pipeline import Session, settlement_records
from tests.integration.test_swap_mobile_pipeline import _open_truck, _swap, _swap_order
from .test_v2g_fleet_pipeline import MINUTE_MS, TARIFF, Plug, v2g_operator
from tests.support.wireless_road import PASS_MS, Road

pytestmark = pytest.mark.integration


def rate_authority(mesh: Mesh, name: str, at_ms: int,
                   jurisdiction: str = "US-CA") -> Participant:
    """A rate authority recognised by the root, with reciprocity for the root's vehicles (P1)."""
    authority = Participant.seeded(f"{name}-ra", secret="tests")
    mesh.world.governance += [
        mesh.world.root.recognise_authority(authority, jurisdiction, ["RATE_AUTHORITY"],
                                            at_ms=at_ms),
        sdk.reciprocity_agreed(mesh.world.root, authority, agreement_id=f"{name}-recip",
                               at_ms=at_ms)]
    return authority


def audited(mesh: Mesh, authority_id: str) -> AuditReport:
    report = cli_audit.run_audit(mesh.settings, authority_id, ALL_TIME_MS, "kafka")
    assert report.ok, [f.as_json() for f in report.findings]
    print(f"audit of {authority_id}: {report.events_replayed} records at "
          f"{report.events_per_s:.0f}/s, {report.settlements_checked} settlements, "
          f"shapes {report.settlements_by_shape}")
    return report


def test_audit_recomputes_v2g_two_sided_and_fleet_internal_settlements(mesh: Mesh) -> None:
    t = now_ms()
    name = f"p5e34-{t}"
    authority = rate_authority(mesh, name, t)
    zone = f"zone-{name}"
    operator = v2g_operator(mesh, f"op-{name}", zone, t)
    v2g_market = open_market(mesh, f"{name}-v2g", t, [sdk.connector(
        "c1", 22_000, kind="AC_L2", bidirectional=True)], tariff=TARIFF, grid_zone_id=zone,
        authority=authority)
    fleet_id = f"fleet-{name}"
    depot = open_market(mesh, f"{name}-depot", t, [sdk.connector("c1", 50_000)],
                        tariff=dict(TARIFF, renewable_adder_per_kwh="0.01"),
                        grid_zone_id=f"zone-{name}-depot", authority=authority,
                        station_attributes={"fleet_id": fleet_id, "site_id": "depot-north"})
    van = mesh.world.credential(f"{name}-van-cred", ["VEHICLE"], subject_id=f"{name}-van",
                                attributes={"fleet_id": fleet_id})
    ev = v2g_market.vehicle("ev")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()

    v2g_plug, depot_plug = Plug(v2g_market, ev, "s1"), Plug(depot, van, "s1")
    v2g_events = [v2g_plug.booking, v2g_plug.start(export_start_wh=40_000),
                  v2g_plug.read(15, 6_000, 40_000), v2g_plug.read(40, 6_000, 48_000)]
    v2g_close = v2g_plug.close(45, 6_000, 48_000)  # after the readings: it names the last seq
    depot_events = [depot_plug.booking, depot_plug.start(export_start_wh=0),
                    depot_plug.read(20, 11_000, 0)]
    depot_close = depot_plug.close(30, 16_000, 0)
    mesh.publish(*v2g_events, v2g_close,
                 sdk.close_out_countersigned(ev, v2g_close, v2g_plug.start_ms + 46 * MINUTE_MS),
                 *depot_events, depot_close,
                 sdk.close_out_countersigned(van, depot_close,
                                             depot_plug.start_ms + 31 * MINUTE_MS))
    mesh.publish(sdk.settlement_co_signed(operator, v2g_close, grid_zone_id=zone,
                                          clearing_price_per_kwh="0.18",
                                          at_ms=v2g_plug.start_ms + 50 * MINUTE_MS))
    try:
        v2g = settlement_records(mesh, v2g_plug.session_id, {"SettlementFinalised"})
    except TimeoutError:
        _explain(mesh, name)
        raise
    depot_final = settlement_records(mesh, depot_plug.session_id,
                                     {"SettlementAdmitted", "SettlementFinalised"})
    assert depot_final["SettlementAdmitted"][1]["kind"] == "INTERNAL_ACCOUNTING"
    assert v2g["SettlementAdmitted"][1]["total_amount"] == Decimal("0.76")

    report = audited(mesh, authority.credential_id)
    assert report.settlements_checked == 2 and report.settlements_recomputed == 2
    assert report.settlements_final == 2 and report.settlements_not_recomputed == {}
    assert report.settlements_by_shape == {"V2G": 1, "SESSION": 1, "INTERNAL_ACCOUNTING": 1}
    # The V2G payout nets to 0.76; the internal entry to 0.
    assert report.totals_by_currency == {"USD": Decimal("0.76")}


def test_audit_verifies_a_wireless_trip_settlement_and_reports_it_not_recomputed(
        mesh: Mesh) -> None:
    t = now_ms()
    name = f"p5e1-{t % 10**9}"
    authority = rate_authority(mesh, name, t)
    road = Road(mesh.world, name, 4, authority=authority)
    vehicle = road.vehicle("ev")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    t0 = t - 30 * MINUTE_MS
    trip_id = f"{name}-trip"
    passes = [road.pass_of(vehicle, trip_id, i, t0 + MINUTE_MS + i * PASS_MS) for i in range(4)]
    mesh.publish(road.trip(vehicle, trip_id, t0, at_ms=t0),
                 *[road.batch(i, [p], p.left_at_ms + 500) for i, p in enumerate(passes)],
                 road.close(vehicle, trip_id, passes[-1].left_at_ms + 2 * MINUTE_MS))
    settlement_records(mesh, trip_id, {"SettlementAdmitted", "SettlementFinalised"})

    report = audited(mesh, authority.credential_id)
    assert report.settlements_checked == 1 and report.settlements_final == 1
    assert report.settlements_not_recomputed == {"WIRELESS_TRIP": 1}
    assert report.events_verified >= 1 + 4 + 1 + 2, "trip, batches, close and decisions"


def test_audit_recomputes_a_swap_under_the_filed_swap_tariff(mesh: Mesh) -> None:
    t = now_ms()
    name = f"p5e2-{t}"
    authority = rate_authority(mesh, name, t)
    market = open_market(mesh, name, t, [sdk.connector("bay1", 1_000_000, kind="SWAP_BAY")],
                         tariff={"swap_fee": "5.00", "tax_percent": "10"},
                         grid_zone_id=f"zone-{name}", authority=authority)
    vehicle = market.vehicle("ev1")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    pack = f"{name}-P1"
    mesh.publish(swap_mobile.pack_registered(market.station, pack_id=pack, chemistry="NMC",
                                             state_of_health_permille=950, capacity_wh=60_000,
                                             charge_wh=57_000, at_ms=market.start_ms - 60_000),
                 _swap_order(market, vehicle, "o1", 0),
                 _swap(market, vehicle, "o1", 0, (pack, 57_000), (f"{name}-PA", 6_000)))
    settled = settlement_records(mesh, market.order_id("swap-o1"),
                                 {"SettlementAdmitted", "SettlementFinalised"})
    admitted = settled["SettlementAdmitted"][1]["total_amount"]
    assert admitted == Decimal("27.94")  # 51,000 Wh at 0.40 + 5.00 fee, 10 % tax

    report = audited(mesh, authority.credential_id)
    assert report.settlements_checked == 1 and report.settlements_recomputed == 1
    assert report.settlements_final == 1 and report.settlements_by_shape == {"SWAP": 1}
    assert report.totals_by_currency == {"USD": admitted}


def test_audit_recomputes_a_mobile_delivery_under_the_place_of_deliverys_tariff(
        mesh: Mesh) -> None:
    t = now_ms()
    name = f"p5e5-{t}"
    authority = rate_authority(mesh, name, t, jurisdiction="DE-BY")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    here = _open_truck(mesh, name, t, authority)
    there = dataclasses.replace(here, authority_id=authority.credential_id,
                                jurisdiction="DE-BY", currency="EUR", posted="0.600000")
    vehicle = here.vehicle("ev-b")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    session = Session(there, vehicle, "b", here.start_ms + 6 * SLOT_MS, connector_id="m1",
                      slots=2, energy_wh=12_000)
    reading = session.read(10, 6_000)
    close = session.close(20, 12_005)
    mesh.publish(swap_mobile.mobile_relocated(
        here.station, jurisdiction="DE-BY", rate_authority_id=authority.credential_id,
        tariff_id=f"{name}-by", posted_rate_per_kwh="0.60", latitude_microdeg=48_137_000,
        longitude_microdeg=11_575_000, at_ms=t + 1_000, dispatch_id="d1"),
        session.booking, session.start(), reading, close,
        sdk.close_out_countersigned(vehicle, close, session.start_ms + 21 * MINUTE_MS))
    settled = settlement_records(mesh, session.session_id,
                                 {"SettlementAdmitted", "SettlementFinalised"})
    admitted = settled["SettlementAdmitted"][1]
    assert (admitted["currency"], admitted["tariff_id"]) == ("EUR", f"{name}-by")

    report = audited(mesh, authority.credential_id)
    assert report.settlements_checked == 1 and report.settlements_recomputed == 1
    assert report.settlements_final == 1 and report.settlements_by_shape == {"SESSION": 1}
    assert report.totals_by_currency == {"EUR": admitted["total_amount"]}
