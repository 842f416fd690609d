"""Issue 5 on the real stack: from credential issuance to an admitted, final settlement."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from chargemesh.infra.stack.worker import Record, TopicReader
from chargemesh.processors.settlement import Reading, Reprice, Tariff, segments, settle
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.streams.topics import DECISIONS, REJECTIONS, SETTLEMENTS
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, Market, open_market

pytestmark = pytest.mark.integration
TARIFF = {"tax_percent": "8.25", "congestion_fee_per_kwh": "0.02",
          "renewable_adder_per_kwh": "0.015", "rounding": "HALF_UP", "minor_units": 2}


def settlement_records(mesh: Mesh, session_id: str, kinds: set[str],
                       timeout_s: float = 45) -> dict[str, tuple[SignedEvent, dict[str, Any]]]:
    reader = TopicReader(mesh.settings, SETTLEMENTS.name)

    def found(rs: list[Record]) -> dict[str, tuple[SignedEvent, dict[str, Any]]]:
        out = {}
        for r in rs:
            if r.key == session_id.encode():
                event = r.event()
                out[event.event_type.rsplit(".", 1)[1]] = (event, r.payload())
        return out

    try:
        reader.wait_for(lambda rs: kinds <= set(found(rs)), timeout_s=timeout_s,
                        workers=(mesh.worker,))
        return found(reader.records)
    finally:
        reader.close()


class Session:
    """A vehicle's booked session at a station, driven event by event."""

    def __init__(self, market: Market, vehicle: Participant, name: str, start_ms: int,
                 connector_id: str = "c1", slots: int = 4, energy_wh: int = 40_000) -> None:
        self.market, self.vehicle, self.connector_id = market, vehicle, connector_id
        self.session_id = f"{market.prefix}-{name}"
        self.order_id = f"{name}-order"
        self.start_ms = start_ms
        self.ident = market.ident(vehicle, connector_id)
        self.readings: list[tuple[int, int]] = []
        self.booking = market.posted_order(vehicle, self.order_id, start_ms, slots=slots,
                                           connector_id=connector_id, energy_wh=energy_wh)
        self.meter = market.meters[connector_id]

    def start(self) -> SignedEvent:
        return sdk.handshake(self.market.station, self.vehicle, session_id=self.session_id,
                             reservation_id=f"res:{self.market.order_id(self.order_id)}",
                             ident=self.ident, started_at_ms=self.start_ms, meter_start_wh=1_000)

    def read(self, minutes: int, import_wh: int) -> SignedEvent:
        self.readings.append((self.start_ms + minutes * MINUTE_MS, import_wh))
        return sdk.meter_reading(self.meter, session_id=self.session_id,
                                 station_id=self.market.station_id,
                                 connector_id=self.connector_id, seq=len(self.readings),
                                 import_wh=import_wh, at_ms=self.readings[-1][0])

    def close(self, minutes: int, final_wh: int) -> SignedEvent:
        return sdk.meter_closed_out(self.market.station, session_id=self.session_id,
                                    connector_id=self.connector_id,
                                    closed_at_ms=self.start_ms + minutes * MINUTE_MS,
                                    final_import_wh=final_wh, last_reading_seq=len(self.readings))


def recompute(session: Session, close: SignedEvent, filed: dict[str, Any], base_rate: str,
              reprices: list[Reprice]) -> tuple[list[dict[str, Any]], Decimal]:
    """From the signed events alone: the filed tariff, the meter evidence, the re-prices."""
    tariff = Tariff(filed["tariff_id"], "USD", filed["minor_units"], filed["rounding"],
                    Decimal(filed["tax_percent"]), Decimal(filed["congestion_fee_per_kwh"]),
                    Decimal(filed["renewable_adder_per_kwh"]))
    from chargemesh.streams.envelope import open_payload

    final = open_payload(close)
    energy = segments(Reading(session.start_ms, 1_000),
                      [Reading(at, wh) for at, wh in session.readings],
                      Reading(final["closed_at_ms"], final["final_import_wh"]),
                      Decimal(base_rate), reprices)
    return settle(tariff, energy)


def comparable(lines: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Lines as numbers (Decimal equality is numeric: 11.650000 == 11.65), not descriptions."""
    return [(ln["kind"], ln["quantity_wh"], ln["unit_rate_per_kwh"], ln["amount"],
             ln["from_at_ms"], ln["until_at_ms"]) for ln in lines]


def test_bilateral_session_from_credentials_to_final_settlement(mesh: Mesh) -> None:
    t = now_ms()
    market = open_market(mesh, "bilat", t, [sdk.connector("c1", 150_000)], tariff=dict(
        TARIFF, minor_units=2), grid_zone_id="zone-bilateral")
    vehicle = market.vehicle("ev")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    session = Session(market, vehicle, "s1", market.start_ms + SLOT_MS)
    mesh.publish(session.booking, session.start(), session.read(10, 9_337),
                 session.read(20, 17_901),
                 session.read(30, 26_555))
    close = session.close(35, 30_123)
    mesh.publish(sdk.session_stopped(vehicle, session_id=session.session_id,
                                     station_id=market.station_id,
                                     at_ms=session.start_ms + 35 * MINUTE_MS), close)
    admitted = settlement_records(mesh, session.session_id, {"SettlementAdmitted"})
    _, settlement = admitted["SettlementAdmitted"]
    assert settlement["required_signer_ids"] == [market.station.credential_id,
                                                 vehicle.credential_id]  # no grid program here
    lines, total = recompute(session, close, dict(TARIFF, tariff_id=market.tariff_id), "0.40", [])
    assert comparable(settlement["lines"]) == comparable(lines)
    assert settlement["total_amount"] == total
    assert sum(ln["amount"] for ln in settlement["lines"]) == settlement["total_amount"]
    assert [ln["kind"] for ln in lines] == ["ENERGY", "CONGESTION_FEE", "RENEWABLE_CONTENT", "TAX"]
    assert settlement["energy_import_wh"] == 29_123
    assert "SettlementFinalised" not in admitted  # the vehicle has not countersigned yet

    mesh.publish(sdk.close_out_countersigned(vehicle, close, session.start_ms + 36 * MINUTE_MS))
    final = settlement_records(mesh, session.session_id, {"SettlementFinalised"})
    assert final["SettlementFinalised"][1]["signer_ids"] == [market.station.credential_id,
                                                            vehicle.credential_id]


def test_grid_coupled_session_is_repriced_and_needs_the_operators_cosignature(
        mesh: Mesh) -> None:
    t = now_ms()
    zone = "zone-dr-1"
    operator = mesh.world.grid_operator("op-dr-1", zone, subject_id="op-dr-1")
    mesh.world.governance.append(sdk.grid_program(
        operator, grid_zone_id=zone, program="DEMAND_RESPONSE",
        operator_ids=[operator.credential_id], at_ms=t))
    market = open_market(mesh, "gridc", t, [sdk.connector("c1", 150_000)], tariff=TARIFF,
                         grid_zone_id=zone)
    vehicle = market.vehicle("ev")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    session = Session(market, vehicle, "s1", market.start_ms + SLOT_MS)
    mesh.publish(session.booking, session.start(), session.read(10, 8_000))
    spike_at = session.start_ms + 12 * MINUTE_MS
    mesh.publish(sdk.grid_event(operator, grid_event_id="ge-spike", grid_zone_id=zone,
                                kind="PRICE_SIGNAL", from_ms=spike_at,
                                until_ms=spike_at + 3_600_000, rate_per_kwh="0.55"))
    proposed = wait_for_decision(mesh, market, "RepriceProposed")
    assert (proposed["session_id"], proposed["new_rate_per_kwh"]) == (session.session_id,
                                                                      Decimal("0.550000"))
    mesh.publish(sdk.reprice_accepted(vehicle, session_id=session.session_id,
                                      station_id=market.station_id, grid_event_id="ge-spike",
                                      rate_per_kwh="0.55", at_ms=spike_at + 1_000),
                 session.read(20, 16_500), session.read(30, 25_000))
    close = session.close(32, 26_800)
    mesh.publish(close, sdk.close_out_countersigned(vehicle, close,
                                                    session.start_ms + 33 * MINUTE_MS))
    admitted = settlement_records(mesh, session.session_id, {"SettlementAdmitted"})
    _, settlement = admitted["SettlementAdmitted"]
    assert operator.credential_id in settlement["required_signer_ids"]
    lines, total = recompute(session, close, dict(TARIFF, tariff_id=market.tariff_id), "0.40",
                             [Reprice(spike_at, Decimal("0.55"), "ge-spike")])
    assert comparable(settlement["lines"]) == comparable(lines)
    assert settlement["total_amount"] == total
    assert [ln["kind"] for ln in lines][:2] == ["ENERGY", "ENERGY_REPRICED"]
    assert "SettlementFinalised" not in admitted  # the operator has not co-signed

    mesh.publish(sdk.settlement_co_signed(operator, close, grid_zone_id=zone,
                                          clearing_price_per_kwh="0.21",
                                          at_ms=session.start_ms + 34 * MINUTE_MS))
    final = settlement_records(mesh, session.session_id, {"SettlementFinalised"})
    assert set(final["SettlementFinalised"][1]["signer_ids"]) == {
        market.station.credential_id, vehicle.credential_id, operator.credential_id}


def test_bad_meter_evidence_is_rejected_with_its_reason(mesh: Mesh) -> None:
    t = now_ms()
    market = open_market(mesh, "badmeter", t, [sdk.connector("c1", 7_400, kind="AC_L2")])
    vehicle = market.vehicle("ev")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    session = Session(market, vehicle, "s1", market.start_ms + SLOT_MS, energy_wh=5_000)
    ok = session.read(10, 2_000)  # 1,000 Wh in 10 min on 7.4 kW: plausible
    backwards = session.read(15, 1_500)
    too_fast = session.read(20, 9_000)  # 7 kWh in 5 min would need 84 kW
    forged = sdk.meter_reading(vehicle, session_id=session.session_id,
                               station_id=market.station_id, connector_id="c1", seq=9,
                               import_wh=2_100, at_ms=session.start_ms + 21 * MINUTE_MS)
    mesh.publish(session.booking, session.start(), ok, backwards, too_fast, forged)
    wanted = {backwards.event_id: "METER_WENT_BACKWARDS", too_fast.event_id: "IMPLAUSIBLE_READING",
              forged.event_id: "ROLE_NOT_PERMITTED"}
    reader = TopicReader(mesh.settings, REJECTIONS.name)
    reader.wait_for(lambda rs: set(wanted) <= {r.rejection()["event_id"] for r in rs},
                    timeout_s=45, workers=(mesh.worker,))
    got = {r.rejection()["event_id"]: r.rejection()["reason_code"] for r in reader.records}
    reader.close()
    assert {k: got[k] for k in wanted} == wanted
    assert ok.event_id not in got


def wait_for_decision(mesh: Mesh, market: Market, kind: str) -> dict[str, Any]:
    reader = TopicReader(mesh.settings, DECISIONS.name)
    try:
        records = reader.wait_for(
            lambda rs: any(r.key == market.station_id.encode() and r.event().event_type.endswith(
                kind) for r in rs), timeout_s=45, workers=(mesh.worker,))
        return next(r.payload() for r in records if r.key == market.station_id.encode()
                    and r.event().event_type.endswith(kind))
    finally:
        reader.close()
