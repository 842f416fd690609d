"""E2 battery swap and E5 mobile charger on the real stack: signed events in, the processors'
decisions and settlements out, ClickHouse rows an analyst reads back."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from typing import Any

import pytest
from chargemesh.infra.cli.main import cli
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk import swap_mobile
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.units import MINUTE_MS
from click.testing import CliRunner

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, Market, future_hour, open_market
from tests.integration.test_sessions_pipeline import Session, settlement_records
from tests.support.world import T0_MS

pytestmark = pytest.mark.integration


# ---- E2 ----------------------------------------------------------------------------------------


def _swap_order(market: Market, vehicle: Participant, order: str, slot: int, *,
                chemistry: str = "NMC", pack_id: str = "", returned: str = "") -> Any:
    start = market.start_ms + slot * SLOT_MS
    terms = sdk.claim(energy_wh=50_000, start_ms=start, stop_ms=start + SLOT_MS,
                      ceiling_rate_per_kwh="0.90", currency="USD",
                      extension=swap_mobile.swap_extension(
                          chemistry=chemistry, min_state_of_health_permille=850,
                          pack_id=pack_id, returned_pack_id=returned))
    return sdk.order(vehicle, "posted", order_id=market.order_id(order),
                     ident=market.ident(vehicle, "bay1"), terms=terms, rate_per_kwh=market.posted,
                     at_ms=market.start_ms - 2 * 3_600_000)


def _swap(market: Market, vehicle: Participant, order: str, slot: int, out: tuple[str, int],
          back: tuple[str, int]) -> Any:
    return swap_mobile.pack_swapped(
        market.station, vehicle, session_id=market.order_id(f"swap-{order}"),
        reservation_id=f"res:{market.order_id(order)}", ident=market.ident(vehicle, "bay1"),
        pack_out_id=out[0], pack_out_charge_wh=out[1], pack_in_id=back[0],
        pack_in_charge_wh=back[1], pack_in_chemistry="NMC", pack_in_state_of_health_permille=900,
        swapped_at_ms=market.start_ms + slot * SLOT_MS + MINUTE_MS)


def test_a_pack_through_two_swap_cycles_on_two_vehicles_and_its_history(mesh: Mesh) -> None:
    market = open_market(mesh, "swapit", now_ms(), [sdk.connector("bay1", 1_000_000,
                                                                  kind="SWAP_BAY")],
                         tariff={"swap_fee": "5.00", "tax_percent": "10"},
                         grid_zone_id="zone-swap")
    v1, v2, v3 = (market.vehicle(n) for n in ("ev1", "ev2", "ev-lfp"))
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    p1, p2 = "swapit-P1", "swapit-P2"
    register = [swap_mobile.pack_registered(market.station, pack_id=pid, chemistry="NMC",
                                            state_of_health_permille=soh, capacity_wh=60_000,
                                            charge_wh=57_000, at_ms=market.start_ms - 60_000)
                for pid, soh in ((p1, 950), (p2, 900))]
    recharged = swap_mobile.pack_registered(market.station, pack_id=p1, chemistry="NMC",
                                            state_of_health_permille=940, capacity_wh=60_000,
                                            charge_wh=58_000,
                                            at_ms=market.start_ms + 3 * SLOT_MS)
    refused = _swap_order(market, v3, "lfp", 5, chemistry="LFP", pack_id=p1)
    mesh.publish(*register,
                 _swap_order(market, v1, "o1", 0),  # any NMC >= 850: the best is P1
                 _swap(market, v1, "o1", 0, (p1, 57_000), ("swapit-PA", 6_000)),
                 _swap_order(market, v1, "o2", 2, pack_id=p2, returned=p1),
                 _swap(market, v1, "o2", 2, (p2, 57_000), (p1, 4_000)),
                 recharged, refused,
                 _swap_order(market, v2, "o3", 4, pack_id=p1),
                 _swap(market, v2, "o3", 4, (p1, 58_000), ("swapit-PB", 3_000)))
    found = settlement_records(mesh, market.order_id("swap-o3"),
                               {"SettlementAdmitted", "SettlementFinalised"})
    _, third = found["SettlementAdmitted"]
    # 55,000 Wh at 0.40 = 22.00, plus the 5.00 swap fee, plus 10 % tax on 27.00
    assert [(ln["kind"], ln["amount"]) for ln in third["lines"]] == [
        ("SWAP_FEE", Decimal("5.00")), ("ENERGY", Decimal("22.00")), ("TAX", Decimal("2.70"))]
    assert third["total_amount"] == Decimal("29.70")
    assert found["SettlementFinalised"][1]["signer_ids"] == [market.station.credential_id,
                                                            v2.credential_id]

    steps = mesh.wait_rows("SELECT action, vehicle_credential_id, state_of_health_permille, "
                           "charge_wh FROM pack_history_valid WHERE pack_id = %(p)s "
                           "ORDER BY at_ms, action", {"p": p1}, count=5)
    assert [(a, v) for a, v, _, _ in steps] == [
        ("REGISTERED", ""), ("SWAPPED_OUT", v1.credential_id), ("RETURNED", v1.credential_id),
        ("REGISTERED", ""), ("SWAPPED_OUT", v2.credential_id)]
    revenue = mesh.wait_rows("SELECT count(), sum(total_amount), any(currency) FROM settlements "
                             "FINAL WHERE station_id = %(s)s HAVING count() = 3",
                             {"s": market.station_id})
    # 51,000 Wh and 53,000 Wh in the first two swaps: 27.94 and 28.82 with fee and tax
    assert revenue[0][1] == Decimal("27.94") + Decimal("28.82") + Decimal("29.70")
    why = mesh.wait_rows("SELECT reason_code FROM ledger_decisions FINAL WHERE order_id = %(o)s",
                         {"o": market.order_id("lfp")})
    assert why == [("PACK_CHEMISTRY_INCOMPATIBLE",)]

    env: dict[str, str | None] = {**mesh.settings.as_environ(), "CHARGEMESH_CONFIG": None,
                                  "COLUMNS": "160"}
    as_json = CliRunner().invoke(cli, ["pack", "history", p1, "--json"], env=env,
                                 catch_exceptions=False)
    assert as_json.exit_code == 0, as_json.output
    history = json.loads(as_json.output)
    assert history["cycles"] == 2
    assert history["vehicles"] == [v1.credential_id, v2.credential_id]
    settled = [s for s in history["steps"] if s["settlement_id"]]
    assert [Decimal(s["total_amount"]) for s in settled] == [
        Decimal("27.94"), Decimal("28.82"), Decimal("29.70")]
    table = CliRunner().invoke(cli, ["pack", "history", p1], env=env, catch_exceptions=False)
    assert "SWAPPED_OUT" in table.output and "2 swap cycle(s)" in table.output


# ---- E5 ----------------------------------------------------------------------------------------


def _open_truck(mesh: Mesh, prefix: str, t: int, eu: Participant) -> Market:
    """A mobile charger: MOBILE_STATION credential, one MOBILE connector with its meter, filed
    tariffs in two jurisdictions (US-CA by the root, DE-BY by a foreign authority)."""
    world = mesh.world
    station_id = f"{prefix}-truck"
    truck = world.credential(f"{prefix}-truck-cred", ["MOBILE_STATION"], subject_id=station_id,
                             attributes={"operating_jurisdictions": "US-CA,DE-BY"})
    meter = world.credential(f"{prefix}-meter-m1", ["METER"], subject_id=f"{prefix}-meter-m1")
    world.governance += [
        sdk.tariff_filed(world.root, tariff_id=f"{prefix}-ca", jurisdiction="US-CA",
                         currency="USD", ceiling_per_kwh="0.80", tax_percent="8.25", at_ms=t),
        sdk.tariff_filed(eu, tariff_id=f"{prefix}-by", jurisdiction="DE-BY", currency="EUR",
                         ceiling_per_kwh="0.90", tax_percent="19", rounding="HALF_EVEN", at_ms=t),
        sdk.rules_published(world.root, rules_version=f"{prefix}-rules", jurisdiction="US-CA",
                            at_ms=t)]
    mesh.publish(*world.governance)
    world.governance.clear()
    start = future_hour(t)
    mesh.publish(sdk.calendar_published(
        truck, rate_authority_id=world.root.credential_id, jurisdiction="US-CA",
        tariff_id=f"{prefix}-ca", rules_version=f"{prefix}-rules",
        connectors=[sdk.connector("m1", 50_000, kind="MOBILE",
                                  meter_credential_id=meter.credential_id)],
        slot_duration_ms=SLOT_MS, horizon_start_ms=start, horizon_end_ms=start + 12 * 3_600_000,
        posted_rate_per_kwh="0.40", currency="USD", grid_zone_id="zone-mobile", at_ms=t))
    market = Market(mesh, prefix, truck, station_id, start, f"{prefix}-ca", f"{prefix}-rules",
                    world.root.credential_id)
    market.meters = {"m1": meter}
    return market


def test_a_truck_delivers_in_two_jurisdictions_under_each_places_tariff(mesh: Mesh) -> None:
    world, t = mesh.world, now_ms()
    eu = Participant.seeded("auth-eu-mobile-rs", secret="tests")
    mesh.publish(world.root.recognise_authority(eu, "DE-BY", ["AUTHORITY", "RATE_AUTHORITY"],
                                                at_ms=T0_MS),
                 eu.declare_authority("EU rate authority", "DE-BY",
                                      ["AUTHORITY", "RATE_AUTHORITY"], "EUR", at_ms=T0_MS),
                 sdk.reciprocity_agreed(world.root, eu, agreement_id="root-eu-mobile", at_ms=t))
    here = _open_truck(mesh, "mob", t, eu)
    there = dataclasses.replace(here, authority_id=eu.credential_id, jurisdiction="DE-BY",
                                currency="EUR", posted="0.600000")
    fixed = world.credential("mob-fixed-cred", ["STATION"], subject_id=here.station_id)
    va, vb = here.vehicle("ev-a"), here.vehicle("ev-b")
    mesh.publish(*world.governance)
    world.governance.clear()

    def move(jurisdiction: str, authority: str, tariff: str, posted: str, at_ms: int,
             by: Participant = here.station, dispatch: str = "d1") -> Any:
        return swap_mobile.mobile_relocated(
            by, jurisdiction=jurisdiction, rate_authority_id=authority, tariff_id=tariff,
            posted_rate_per_kwh=posted, latitude_microdeg=37_774_000,
            longitude_microdeg=-122_419_000, at_ms=at_ms, dispatch_id=dispatch)

    a = Session(here, va, "a", here.start_ms + SLOT_MS, connector_id="m1", slots=2,
                energy_wh=12_000)
    read_a = a.read(10, 7_000)
    close_a = a.close(20, 13_000)
    moved_at = a.start_ms + 25 * MINUTE_MS
    no_tariff = move("DE-BY", eu.credential_id, "mob-ca", "0.60", moved_at)
    not_mobile = move("DE-BY", eu.credential_id, "mob-by", "0.60", moved_at + 1, by=fixed)
    b = Session(there, vb, "b", here.start_ms + 6 * SLOT_MS, connector_id="m1", slots=2,
                energy_wh=12_000)
    read_b = b.read(10, 6_000)
    close_b = b.close(20, 12_005)
    mesh.publish(move("US-CA", world.root.credential_id, "mob-ca", "0.40", t + 1_000),
                 a.booking, a.start(), read_a, close_a,
                 sdk.close_out_countersigned(va, close_a, a.start_ms + 21 * MINUTE_MS),
                 no_tariff, not_mobile,
                 move("DE-BY", eu.credential_id, "mob-by", "0.60", moved_at + 2, dispatch="d2"),
                 b.booking, b.start(), read_b, close_b,
                 sdk.close_out_countersigned(vb, close_b, b.start_ms + 21 * MINUTE_MS))
    settled = {s.session_id: settlement_records(mesh, s.session_id, {"SettlementFinalised",
                                                                      "SettlementAdmitted"})
               for s in (a, b)}
    first = settled[a.session_id]["SettlementAdmitted"][1]
    second = settled[b.session_id]["SettlementAdmitted"][1]
    assert (first["currency"], first["tariff_id"]) == ("USD", "mob-ca")
    assert (second["currency"], second["tariff_id"]) == ("EUR", "mob-by")
    assert [ln["amount"] for ln in first["lines"]] == [Decimal("4.80"), Decimal("0.40")]
    assert [ln["amount"] for ln in second["lines"]] == [Decimal("6.60"), Decimal("1.25")]

    rows = mesh.wait_rows(
        "SELECT s.jurisdiction, s.currency, s.total_amount, t.tax FROM settlements AS s FINAL "
        "ANY LEFT JOIN (SELECT settlement_id, sum(amount) AS tax FROM settlement_lines FINAL "
        "WHERE kind = 'TAX' GROUP BY settlement_id) AS t USING (settlement_id) "
        "WHERE s.station_id = %(s)s ORDER BY s.admitted_at_ms", {"s": here.station_id},
        count=2)
    assert rows == [("US-CA", "USD", Decimal("5.2"), Decimal("0.4")),
                    ("DE-BY", "EUR", Decimal("7.85"), Decimal("1.25"))]
    refused = mesh.wait_rows("SELECT event_id, reason_code FROM rejections FINAL "
                             "WHERE event_id IN %(e)s ORDER BY reason_code",
                             {"e": (no_tariff.event_id, not_mobile.event_id)}, count=2)
    assert [r for _, r in refused] == ["NO_TARIFF_IN_JURISDICTION", "ROLE_NOT_PERMITTED"]
    places = mesh.query("SELECT jurisdiction, rate_authority_id, tariff_id FROM "
                        "mobile_station_locations_valid WHERE station_id = %(s)s "
                        "ORDER BY relocated_at_ms", {"s": here.station_id})
    assert places == [("US-CA", world.root.credential_id, "mob-ca"),
                      ("DE-BY", eu.credential_id, "mob-by")]

    # P5: the foreign authority replays the settlement filed under it, alone, and finds it exact.
    env: dict[str, str | None] = {**mesh.settings.as_environ(), "CHARGEMESH_CONFIG": None}
    done = CliRunner().invoke(cli, ["audit", "--authority", eu.credential_id, "--json"],
                              env=env, catch_exceptions=False)
    report = json.loads(done.output)
    assert report["ok"] and report["findings"] == [], report["findings"]
    assert report["settlements_checked"] == report["settlements_recomputed"] == 1
    assert Decimal(report["totals_by_currency"]["EUR"]) == Decimal("7.85")
