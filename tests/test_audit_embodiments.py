"""P5 over the embodiments (issue 7) on the real stack: each embodiment's sessions settle under a
rate authority of their own, and that authority's lineage audit replays the topics and passes:
no findings, every settlement checked, and recomputed exactly from the signed events with the
processors' own pure functions where the audit can (E3 V2G two-sided, E4 fleet internal entry,
E2 swap, E5 mobile at the place of delivery), else verified and reported not recomputed (E1
wireless trips)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from chargemesh.infra import cli_audit
from chargemesh.processors.audit import ALL_TIME_MS, AuditReport
from chargemesh.streams import sdk
from chargemesh.streams.sdk import Participant, now_ms

from .conftest import Mesh
from .market import open_market
from .test_audit import _explain
from .test_sessions_pipeline import settlement_records
from .test_v2g_fleet_pipeline import MINUTE_MS, TARIFF, Plug
from .wireless_road import PASS_MS, Road

pytestmark = pytest.mark.integration


def rate_authority(mesh: Mesh, name: str, at_ms: int) -> Participant:
    """A rate authority recognised by the root, with reciprocity for the root's vehicles (P1)."""
    authority = Participant.seeded(f"{name}-ra", secret="tests")
    mesh.world.governance += [
        mesh.world.root.recognise_authority(authority, "US-CA", ["RATE_AUTHORITY"], at_ms=at_ms),
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
    operator = mesh.world.credential(f"op-{name}", ["GRID_OPERATOR"], subject_id=f"op-{name}",
                                     attributes={"grid_zones": zone})
    mesh.world.governance.append(sdk.grid_program(
        operator, grid_zone_id=zone, program="V2G", operator_ids=[operator.credential_id],
        at_ms=t))
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
