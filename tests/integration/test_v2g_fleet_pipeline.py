"""E3 V2G and E4 fleet depot on the real stack: signed events in, the ledger's settlements on
the billing feed, and rows in ClickHouse that an analyst's query reads back."""

from __future__ import annotations

from decimal import Decimal

import pytest
from chargemesh.infra.cli.fleet import load_report, report_table
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, Market, open_market
from tests.integration.test_sessions_pipeline import settlement_records

pytestmark = pytest.mark.integration
TARIFF = {"tax_percent": "10", "rounding": "HALF_UP", "minor_units": 2}


class Plug:
    """One vehicle's session on connector c1 of ``market``, with both meter registers."""

    def __init__(self, market: Market, vehicle: Participant, name: str) -> None:
        self.market, self.vehicle = market, vehicle
        self.session_id = f"{market.prefix}-{name}"
        self.start_ms = market.start_ms + SLOT_MS
        self.booking = market.posted_order(vehicle, f"{name}-order", self.start_ms, slots=4,
                                           connector_id="c1", energy_wh=20_000)
        self.reservation_id = f"res:{market.order_id(f'{name}-order')}"
        self.seq = 0

    def start(self, export_start_wh: int) -> SignedEvent:
        return sdk.handshake(self.market.station, self.vehicle, session_id=self.session_id,
                             reservation_id=self.reservation_id,
                             ident=self.market.ident(self.vehicle, "c1"),
                             started_at_ms=self.start_ms, meter_start_wh=1_000,
                             meter_start_export_wh=export_start_wh)

    def read(self, minutes: int, import_wh: int, export_wh: int) -> SignedEvent:
        self.seq += 1
        return sdk.meter_reading(self.market.meters["c1"], session_id=self.session_id,
                                 station_id=self.market.station_id, connector_id="c1",
                                 seq=self.seq, import_wh=import_wh, export_wh=export_wh,
                                 at_ms=self.start_ms + minutes * MINUTE_MS)

    def close(self, minutes: int, import_wh: int, export_wh: int) -> SignedEvent:
        return sdk.meter_closed_out(self.market.station, session_id=self.session_id,
                                    connector_id="c1",
                                    closed_at_ms=self.start_ms + minutes * MINUTE_MS,
                                    final_import_wh=import_wh, final_export_wh=export_wh,
                                    last_reading_seq=self.seq)


def v2g_operator(mesh: Mesh, credential_id: str, zone: str, at_ms: int) -> Participant:
    """A GRID_OPERATOR for ``zone`` and the V2G grid program it runs there (queued, unpublished)."""
    operator = mesh.world.grid_operator(credential_id, zone, subject_id=credential_id)
    mesh.world.governance.append(sdk.grid_program(
        operator, grid_zone_id=zone, program="V2G", operator_ids=[operator.credential_id],
        at_ms=at_ms))
    return operator


def test_v2g_session_is_pending_until_the_operator_prices_export_then_settles_two_sided(
        mesh: Mesh) -> None:
    t = now_ms()
    zone = f"zone-v2g-{t}"
    operator = v2g_operator(mesh, f"op-v2g-{t}", zone, t)
    market = open_market(mesh, f"v2g{t}", t, [sdk.connector("c1", 22_000, kind="AC_L2",
                                                            bidirectional=True)],
                         tariff=TARIFF, grid_zone_id=zone)
    vehicle = market.vehicle("ev")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    plug = Plug(market, vehicle, "s1")
    # 22 kW both ways: 5 kWh in, then 8 kWh back to the grid at the evening peak.
    mesh.publish(plug.booking, plug.start(export_start_wh=40_000), plug.read(15, 6_000, 40_000),
                 plug.read(40, 6_000, 48_000))
    close = plug.close(45, 6_000, 48_000)
    mesh.publish(close, sdk.close_out_countersigned(vehicle, close,
                                                    plug.start_ms + 46 * MINUTE_MS))

    # Closed out, countersigned, not priced: visible as waiting, no settlement admitted.
    waiting = mesh.wait_rows(
        "SELECT session_id, final_export_wh, waiting_for FROM sessions_awaiting_settlement "
        "WHERE station_id = %(st)s", {"st": market.station_id})
    assert waiting == [(plug.session_id, 48_000, "AWAITING_CLEARING_PRICE")]

    mesh.publish(sdk.settlement_co_signed(operator, close, grid_zone_id=zone,
                                          clearing_price_per_kwh="0.18",
                                          at_ms=plug.start_ms + 50 * MINUTE_MS))
    records = settlement_records(mesh, plug.session_id,
                                 {"SettlementAdmitted", "SettlementFinalised"})
    settlement = records["SettlementAdmitted"][1]
    # import 5,000 Wh x 0.40 = 2.00, tax 0.20; export 8,000 Wh x 0.18 = 1.44 credit
    assert [(ln["kind"], ln["amount"]) for ln in settlement["lines"]] == [
        ("ENERGY", Decimal("2.00")), ("TAX", Decimal("0.20")),
        ("V2G_EXPORT_CREDIT", Decimal("-1.44"))]
    assert settlement["total_amount"] == Decimal("0.76")
    assert records["SettlementAdmitted"][0].body.prev_hash != close.event_hash  # rests on the
    # co-signature, which itself links the close-out

    # The analyst's question: what did V2G sessions in this zone import, export and net?
    rows = mesh.wait_rows(
        "SELECT v.session_id, v.energy_import_wh, v.energy_export_wh, v.import_amount, "
        "v.export_credit, v.clearing_price_per_kwh, v.total_amount, s.status "
        "FROM v2g_settlements AS v ANY INNER JOIN (SELECT settlement_id, status "
        "FROM settlements_status) AS s USING (settlement_id) "
        "WHERE v.station_id = %(st)s AND s.status = 'FINAL'", {"st": market.station_id})
    assert rows == [(plug.session_id, 5_000, 8_000, Decimal("2.20"), Decimal("-1.44"),
                     Decimal("0.18"), Decimal("0.76"), "FINAL")]
    assert mesh.query("SELECT count() FROM sessions_awaiting_settlement WHERE station_id = "
                      "%(st)s", {"st": market.station_id}) == [(0,)]


def test_fleet_depot_session_is_an_internal_entry_in_the_fleets_esg_report(mesh: Mesh) -> None:
    t = now_ms()
    fleet_id = f"fleet-{t}"
    market = open_market(mesh, f"depot{t}", t, [sdk.connector("c1", 50_000)],
                         tariff=dict(TARIFF, renewable_adder_per_kwh="0.01"),
                         grid_zone_id=f"zone-depot-{t}",
                         station_attributes={"fleet_id": fleet_id, "site_id": "depot-north",
                                             "renewable_share_permille": "800"})
    vehicle = mesh.world.credential(f"depot{t}-van-cred", ["VEHICLE"],
                                    subject_id=f"depot{t}-van", attributes={"fleet_id": fleet_id})
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    plug = Plug(market, vehicle, "s1")
    start, reading = plug.start(export_start_wh=0), plug.read(20, 11_000, 0)
    mesh.publish(plug.booking, start, reading)
    close = plug.close(30, 16_000, 0)
    mesh.publish(close, sdk.close_out_countersigned(vehicle, close,
                                                    plug.start_ms + 31 * MINUTE_MS))
    records = settlement_records(mesh, plug.session_id,
                                 {"SettlementAdmitted", "FleetAccountingRecorded",
                                  "SettlementFinalised"})
    settlement = records["SettlementAdmitted"][1]
    assert settlement["kind"] == "INTERNAL_ACCOUNTING" and settlement["total_amount"] == 0
    # 15 kWh x 0.40 = 6.00, renewable 0.15, tax 0.62 -> 6.77 allocated, eliminated
    assert [ln["amount"] for ln in settlement["lines"]] == [
        Decimal("6.00"), Decimal("0.15"), Decimal("0.62"), Decimal("-6.77")]

    rows = mesh.wait_rows(
        "SELECT site_id, sessions, final_sessions, energy_import_wh, renewable_wh, "
        "internal_amount FROM fleet_esg_monthly WHERE fleet_id = %(f)s AND final_sessions = 1",
        {"f": fleet_id})
    assert rows == [("depot-north", 1, 1, 15_000, 12_000, Decimal("6.77"))]
    # No revenue: the internal entry is left out of revenue_daily, its lineage is not.
    assert mesh.query("SELECT count() FROM revenue_daily WHERE station_id = %(st)s",
                      {"st": market.station_id}) == [(0,)]
    assert mesh.query("SELECT kind, total_amount, evidence_event_ids FROM settlements "
                      "FINAL WHERE session_id = %(s)s", {"s": plug.session_id}) == [
        ("INTERNAL_ACCOUNTING", Decimal(0), [start.event_id, reading.event_id, close.event_id])]

    report = load_report(mesh.settings, fleet_id, None)
    assert [(r["site_id"], r["energy_import_wh"], r["renewable_share"]) for r in report] == [
        ("depot-north", 15_000, pytest.approx(0.8))]
    month = report[0]["month"]
    assert load_report(mesh.settings, fleet_id, month) == report
    assert report_table(fleet_id, report).row_count == 1
