"""Curtailment and capacity limits bind in flight (issue 16: M5, M7, P3, M8), pure: the zone
operator's CAPACITY_LIMIT / CURTAILMENT holds active sessions to a signed PowerLimitSet and
readings to the limit in force, RESTORED lifts it, and a connector's declared power is bounded
by its kind."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from chargemesh.processors.grid import zone_router
from chargemesh.processors.ingress import Admitted, admit
from chargemesh.processors.ledger import power
from chargemesh.processors.ledger.step import Step, market_step
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.topics import GRID, MARKET
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.support.session_world import PureStation
from tests.support.world import T0_MS, World, make_world, pairs

ZONE = "zone-curtail"
POWER_W = 50_000


class Station(PureStation):
    def __init__(self, world: World, name: str, kind: str = "DC_FAST",
                 power_w: int = POWER_W) -> None:
        self.world, self.name = world, name
        self.operator = world.grid_operator(f"{name}-gridop", ZONE)
        self.processor = world.processor_credential()
        self.station = world.credential(f"{name}-cred", ["STATION"], subject_id=name)
        self.meter = world.credential(f"{name}-meter", ["METER"], subject_id=f"{name}-meter")
        self.vehicle = world.credential(f"{name}-ev", ["VEHICLE"], subject_id=f"{name}-ev")
        self.open_ledger({"currency": "USD", "ceiling_per_kwh": "0.80"})
        self.zone = zone_router.new_zone()
        self.zone["stations"] = [name]
        self.seq = 0
        self.calendar = self.feed(sdk.calendar_published(
            self.station, rate_authority_id="auth-root", jurisdiction="US-CA",
            tariff_id=f"{name}-tariff", rules_version=f"{name}-rules",
            connectors=[sdk.connector("c1", power_w, kind=kind,
                                      meter_credential_id=self.meter.credential_id)],
            slot_duration_ms=HOUR_MS, horizon_start_ms=self.start_ms,
            horizon_end_ms=self.start_ms + 24 * HOUR_MS, posted_rate_per_kwh="0.30",
            currency="USD", grid_zone_id=ZONE, at_ms=T0_MS))

    def feed(self, event: SignedEvent) -> Step:
        verdict = admit(event.encode(), event.body.subject_key.encode(), MARKET.name, self.store)
        assert isinstance(verdict, Admitted), verdict
        self.offset += 1
        return market_step(self.state, verdict, 0, self.offset, None, self.store)

    def book(self, order_id: str = "o1", hours: int = 2, energy_wh: int = 10_000) -> None:
        ident = sdk.identity(station_id=self.name, vehicle=self.vehicle,
                             rate_authority_id="auth-root", jurisdiction="US-CA",
                             connector_id="c1")
        terms = sdk.claim(energy_wh=energy_wh, start_ms=self.start_ms,
                          stop_ms=self.start_ms + hours * HOUR_MS, ceiling_rate_per_kwh="0.50",
                          currency="USD")
        booked = self.feed(sdk.order(self.vehicle, "posted", order_id=order_id, ident=ident,
                                     terms=terms, rate_per_kwh="0.30", at_ms=T0_MS + 1))
        assert booked.rejection is None, booked.rejection

    def start(self, order_id: str = "o1", booked: bool = False) -> Step:
        if not booked:
            self.book(order_id)
        ident = sdk.identity(station_id=self.name, vehicle=self.vehicle,
                             rate_authority_id="auth-root", jurisdiction="US-CA",
                             connector_id="c1")
        return self.feed(sdk.handshake(self.station, self.vehicle, session_id="s1",
                                       reservation_id=f"res:{order_id}", ident=ident,
                                       started_at_ms=self.start_ms))

    def grid(self, kind: str, from_min: int, until_min: int, limit_w: int = 0,
             grid_event_id: str = "ge-1") -> Step:
        event = sdk.grid_event(self.operator, grid_event_id=grid_event_id, grid_zone_id=ZONE,
                               kind=kind, from_ms=self.start_ms + from_min * MINUTE_MS,
                               until_ms=self.start_ms + until_min * MINUTE_MS,
                               capacity_limit_w=limit_w)
        verdict = admit(event.encode(), ZONE.encode(), GRID.name, self.store)
        assert isinstance(verdict, Admitted), verdict
        routed_verdict, outputs = zone_router.route(self.zone, verdict, self.store,
                                                    self.processor.signer)
        assert isinstance(routed_verdict, Admitted) and len(outputs) == 1
        routed = admit(outputs[0].value, outputs[0].key, MARKET.name, self.store)
        assert isinstance(routed, Admitted), routed
        self.offset += 1
        return market_step(self.state, routed, 0, self.offset, None, self.store)

    def reading(self, minutes: int, import_wh: int) -> Step:
        self.seq += 1
        return self.feed(sdk.meter_reading(
            self.meter, session_id="s1", station_id=self.name, connector_id="c1", seq=self.seq,
            import_wh=import_wh, at_ms=self.start_ms + minutes * MINUTE_MS))


def limits(step: Step) -> list[dict[str, Any]]:
    return [dict(p) for kind, p in pairs(step.decisions) if kind == "PowerLimitSet"]


def test_a_curtailment_holds_the_active_session_and_refuses_40_kw_on_3_kw() -> None:
    st = Station(make_world(), "cur")
    assert st.start().rejection is None
    assert st.reading(10, 6_000).rejection is None  # 36 kW before the curtailment: fine
    step = st.grid("CURTAILMENT", 20, 80, limit_w=3_000)
    assert step.rejection is None
    [decision] = limits(step)
    assert decision == {
        "session_id": "s1", "station_id": "cur", "connector_id": "c1", "grid_zone_id": ZONE,
        "grid_event_id": "ge-1", "kind": "CURTAILMENT", "power_limit_w": 3_000,
        "effective_from_ms": st.start_ms + 20 * MINUTE_MS,
        "until_at_ms": st.start_ms + 80 * MINUTE_MS, "decided_at_ms": st.state.clock_ms}
    # 10..20 at up to 50 kW, then 3 kW: 40 kW from 20 to 40 is refused
    refused = st.reading(40, 6_000 + 8_300 + 13_300)
    assert refused.rejection is not None and refused.rejection.reason == "IMPLAUSIBLE_READING"
    assert "power limits in force" in refused.rejection.detail
    # the legitimate meter: 48 kW to minute 20, 3 kW after
    assert st.reading(40, 6_000 + 8_000 + 1_000).rejection is None


def test_restored_lifts_the_operators_limit_and_the_session_is_told() -> None:
    st = Station(make_world(), "res")
    st.start()
    st.grid("CAPACITY_LIMIT", 0, 120, limit_w=11_000)
    assert st.reading(30, 5_500).rejection is None  # 11 kW for 30 min
    restored = st.grid("RESTORED", 30, 120, grid_event_id="ge-2")
    assert [(d["kind"], d["power_limit_w"], d["effective_from_ms"]) for d in limits(restored)] == [
        ("RESTORED", POWER_W, st.start_ms + 30 * MINUTE_MS)]
    assert st.reading(45, 5_500 + 12_000).rejection is None  # 48 kW again
    assert st.state.power_w("c1", st.start_ms + 40 * MINUTE_MS, st.start_ms + 50 * MINUTE_MS) == (
        POWER_W)


def test_a_session_starting_under_a_limit_is_held_to_it_from_its_start() -> None:
    st = Station(make_world(), "late")
    st.book()
    st.grid("CURTAILMENT", 0, 60, limit_w=7_000)  # 7 kW x 2 h still holds the 10 kWh booking
    started = st.start(booked=True)
    assert [(d["power_limit_w"], d["effective_from_ms"]) for d in limits(started)] == [
        (7_000, st.start_ms)]
    assert st.reading(30, 12_000).rejection is not None  # 24 kW under a 7 kW limit
    assert st.reading(30, 3_500).rejection is None


def test_a_curtailment_displaces_a_booking_that_no_longer_fits() -> None:
    st = Station(make_world(), "disp")
    ident = sdk.identity(station_id="disp", vehicle=st.vehicle, rate_authority_id="auth-root",
                         jurisdiction="US-CA", connector_id="c1")
    terms = sdk.claim(energy_wh=40_000, start_ms=st.start_ms + 2 * HOUR_MS,
                      stop_ms=st.start_ms + 3 * HOUR_MS, ceiling_rate_per_kwh="0.50",
                      currency="USD")
    assert st.feed(sdk.order(st.vehicle, "posted", order_id="o9", ident=ident, terms=terms,
                             rate_per_kwh="0.30", at_ms=T0_MS + 1)).rejection is None
    step = st.grid("CURTAILMENT", 100, 240, limit_w=3_000)
    [(kind, moved)] = pairs(step.decisions)  # moved past the curtailment by the rules
    assert (kind, moved["reason_code"]) == ("SlotReallocated", "DISPLACED_CURTAILMENT")
    assert moved["to_slot_start_at_ms"] >= st.start_ms + 4 * HOUR_MS


def test_a_negative_limit_is_refused() -> None:
    st = Station(make_world(), "neg")
    step = st.grid("CURTAILMENT", 0, 60, limit_w=-1)
    assert step.rejection is not None and step.rejection.reason == "INVALID_GRID_EVENT"


@pytest.mark.parametrize(("kind", "power_w", "ok"), [
    ("AC_L1", 1_920, True), ("AC_L1", 7_400, False), ("AC_L2", 22_000, True),
    ("AC_L2", 5_000_000, False), ("DC_FAST", 350_000, True), ("DC_FAST", 1_000_000, False),
    ("MCS", 1_000_000, True), ("MCS", 5_000_000, False), ("UNKNOWN", 5_000_000, False),
])
def test_a_connectors_declared_power_is_bounded_by_its_kind(kind: str, power_w: int,
                                                           ok: bool) -> None:
    st = Station(make_world(), f"k-{kind}-{power_w}", kind=kind, power_w=power_w)
    if ok:
        assert st.calendar.rejection is None and st.state.calendar is not None
    else:
        assert st.calendar.rejection is not None
        assert st.calendar.rejection.reason == "CONNECTOR_POWER_ABOVE_KIND"
        assert st.state.calendar is None


def test_the_energy_ceiling_integrates_the_limits_in_force() -> None:
    s = {"power_w": 50_000, "power_limits": [[HOUR_MS // 2, HOUR_MS, 10_000, "GRID_OPERATOR"],
                                             [0, HOUR_MS // 4, 0, "OBSERVER_QUORUM"]]}
    # 15 min at 0, 15 min at 50 kW, 30 min at 10 kW
    assert power.energy_ceiling_wh(s, 0, HOUR_MS) == Decimal(12_500 + 5_000)
    assert power.energy_ceiling_wh({"power_w": 50_000}, 0, HOUR_MS) == Decimal(50_000)
    assert power.energy_ceiling_wh(s, HOUR_MS, 2 * HOUR_MS) == Decimal(50_000)
