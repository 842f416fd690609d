"""Sessions and settlement, pure: the operating envelope (M8) from a Level 1 trickle to a
megawatt truck charge, evidence checks, and finality rules (M7)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors.ingress import Admitted, admit
from chargemesh.processors.ledger.step import Step, market_step
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant
from chargemesh.streams.topics import MARKET
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.support.session_world import PureStation
from tests.support.world import T0_MS, World, make_world, pairs


class Station(PureStation):
    """One station's ledger fed through the same admission and step as the processors."""

    def __init__(self, world: World, name: str, connector: dict[str, Any], tariff: dict[str, Any],
                 slot_ms: int, zone: str = "zone-pure") -> None:
        self.world, self.name = world, name
        self.station = world.credential(f"{name}-cred", ["STATION"], subject_id=name)
        self.meter = world.credential(f"{name}-meter", ["METER"], subject_id=f"{name}-meter")
        connector["meter_credential_id"] = self.meter.credential_id
        self.vehicle = world.credential(f"{name}-ev", ["VEHICLE"], subject_id=f"{name}-ev")
        self.open_ledger(tariff)
        self.currency = tariff["currency"]
        self.feed(sdk.calendar_published(
            self.station, rate_authority_id="auth-root", jurisdiction="US-CA",
            tariff_id=f"{name}-tariff", rules_version=f"{name}-rules", connectors=[connector],
            slot_duration_ms=slot_ms, horizon_start_ms=self.start_ms,
            horizon_end_ms=self.start_ms + 24 * HOUR_MS, posted_rate_per_kwh="0.30",
            currency=self.currency, grid_zone_id=zone, at_ms=T0_MS))

    def feed(self, event: SignedEvent) -> Step:
        verdict = admit(event.encode(), event.body.subject_key.encode(), MARKET.name, self.store)
        assert isinstance(verdict, Admitted), verdict
        self.offset += 1
        return market_step(self.state, verdict, 0, self.offset, None, self.store)

    def session(self, energy_wh: int, hours: int, readings: list[tuple[int, int]],
                final: tuple[int, int]) -> tuple[list[Step], SignedEvent]:
        ident = sdk.identity(station_id=self.name, vehicle=self.vehicle,
                             rate_authority_id="auth-root", jurisdiction="US-CA",
                             connector_id="c1")
        terms = sdk.claim(energy_wh=energy_wh, start_ms=self.start_ms,
                          stop_ms=self.start_ms + hours * HOUR_MS, ceiling_rate_per_kwh="0.50",
                          currency=self.currency)
        steps = [self.feed(sdk.order(self.vehicle, "posted", order_id="o1", ident=ident,
                                     terms=terms, rate_per_kwh="0.30", at_ms=T0_MS + 1))]
        steps.append(self.feed(sdk.handshake(self.station, self.vehicle, session_id="s1",
                                             reservation_id="res:o1", ident=ident,
                                             started_at_ms=self.start_ms)))
        for seq, (minutes, wh) in enumerate(readings, start=1):
            steps.append(self.feed(sdk.meter_reading(
                self.meter, session_id="s1", station_id=self.name, connector_id="c1", seq=seq,
                import_wh=wh, at_ms=self.start_ms + minutes * MINUTE_MS)))
        close = sdk.meter_closed_out(self.station, session_id="s1", connector_id="c1",
                                     closed_at_ms=self.start_ms + final[0] * MINUTE_MS,
                                     final_import_wh=final[1], last_reading_seq=len(readings))
        steps.append(self.feed(close))
        return steps, close


def settlement_of(step: Step) -> dict[str, Any]:
    kinds = [k for k, _ in pairs(step.decisions)]
    assert kinds == ["SettlementAdmitted"], (kinds, step.rejection)
    return step.decisions[0].payload


def test_level_1_trickle_of_three_kwh_settles_in_yen_rounded_half_even() -> None:
    world = make_world()
    st = Station(world, "l1", sdk.connector("c1", 1_400, kind="AC_L1"),
                 {"currency": "JPY", "ceiling_per_kwh": "0.80", "minor_units": 0,
                  "rounding": "HALF_EVEN", "tax_percent": "10"}, slot_ms=HOUR_MS)
    steps, _ = st.session(3_000, 3, [(60, 1_300), (120, 2_600)], (140, 3_000))
    assert all(s.rejection is None for s in steps), [s.rejection for s in steps]
    settlement = settlement_of(steps[-1])
    assert settlement["energy_import_wh"] == 3_000
    energy, tax = settlement["lines"]
    assert energy["amount"] == Decimal("1")  # 3 kWh x 0.30 = 0.90 -> 1 yen (half-even)
    assert tax["amount"] == Decimal("0")  # 10% of 1 yen = 0.1 -> 0
    assert settlement["total_amount"] == Decimal("1")


def test_megawatt_truck_charge_of_350_kwh_settles_exactly() -> None:
    world = make_world()
    st = Station(world, "mcs", sdk.connector("c1", 1_200_000, kind="MCS"),
                 {"currency": "USD", "ceiling_per_kwh": "0.80", "tax_percent": "7.25",
                  "congestion_fee_per_kwh": "0.03"}, slot_ms=15 * MINUTE_MS)
    readings = [(5 * i, 95_000 * i) for i in range(1, 4)]  # 95 kWh every 5 min: 1.14 MW
    steps, _ = st.session(350_000, 1, readings, (19, 350_000))
    assert all(s.rejection is None for s in steps), [s.rejection for s in steps]
    settlement = settlement_of(steps[-1])
    assert settlement["energy_import_wh"] == 350_000
    amounts = {ln["kind"]: ln["amount"] for ln in settlement["lines"]}
    assert amounts == {"ENERGY": Decimal("105.00"), "CONGESTION_FEE": Decimal("10.50"),
                       "TAX": Decimal("8.37")}  # 7.25% of 115.50 = 8.37375 -> 8.37
    assert settlement["total_amount"] == Decimal("123.87") == sum(amounts.values())


def test_a_level_1_meter_cannot_report_fast_charging() -> None:
    world = make_world()
    st = Station(world, "l1b", sdk.connector("c1", 1_400, kind="AC_L1"),
                 {"currency": "USD", "ceiling_per_kwh": "0.80"}, slot_ms=HOUR_MS)
    steps, _ = st.session(3_000, 3, [(30, 2_000)], (60, 2_100))
    assert steps[2].rejection is not None and steps[2].rejection.reason == "IMPLAUSIBLE_READING"


def test_without_the_vehicles_countersignature_the_settlement_stays_pending_and_visible() -> None:
    world = make_world()
    st = Station(world, "pend", sdk.connector("c1", 50_000),
                 {"currency": "USD", "ceiling_per_kwh": "0.80"}, slot_ms=HOUR_MS)
    steps, close = st.session(20_000, 1, [(20, 10_000)], (40, 20_000))
    settlement_of(steps[-1])
    # Within the rate authority's finality window (48 h by default, from the close-out).
    later = st.feed(sdk.heartbeat(st.station, st.start_ms + 47 * HOUR_MS))
    assert later.decisions == []  # no silent finality, no silent loss
    session = st.state.extra["sessions"]["s1"]
    assert session["status"] == "CLOSED_OUT" and session["signed_by"] == [st.station.credential_id]
    wrong = Participant.seeded("pend-ev-other", "pend-ev-other", secret="x")
    final = st.feed(sdk.close_out_countersigned(st.vehicle, close, st.start_ms + 50 * MINUTE_MS))
    assert [k for k, _ in pairs(final.decisions)] == ["SettlementFinalised"]
    assert wrong.credential_id not in session["signed_by"]


def test_a_countersignature_over_another_close_out_does_not_finalise() -> None:
    world = make_world()
    st = Station(world, "mism", sdk.connector("c1", 50_000),
                 {"currency": "USD", "ceiling_per_kwh": "0.80"}, slot_ms=HOUR_MS)
    steps, close = st.session(20_000, 1, [(20, 10_000)], (40, 20_000))
    forged_close = sdk.meter_closed_out(st.station, session_id="s1", connector_id="c1",
                                        closed_at_ms=close.body.occurred_at_ms,
                                        final_import_wh=15_000, last_reading_seq=1)
    step = st.feed(sdk.close_out_countersigned(st.vehicle, forged_close,
                                               st.start_ms + 50 * MINUTE_MS))
    assert step.rejection is not None and step.rejection.reason == "CLOSE_OUT_MISMATCH"
