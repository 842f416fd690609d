"""Re-pricing binds in flight (issue 16: M6, M3), pure: a proposal, an acceptance and every
settlement line stay within the filed ceiling (capped or refused as the tariff declares) and the
vehicle's own; lines follow the price signal's window; a session starting inside a signal is
priced at it from its start; an unanswered re-price stops the session at the rules' deadline and
it settles up to that moment."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors.grid import zone_router
from chargemesh.processors.ingress import Admitted, admit
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.ledger.step import Step, market_step
from chargemesh.processors.settlement import Reading, Reprice, rate_at, segments
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.topics import GRID, MARKET
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.support.world import T0_MS, World, make_world, pairs

ZONE = "zone-reprice"


class Station:
    """One station's ledger under its own filed tariff and rules, fed through the same admission,
    zone routing and step as the processors."""

    def __init__(self, world: World, name: str, *, ceiling: str = "0.80",
                 above_ceiling: str = "CAP", vehicle_ceiling: str = "1.50",
                 reprice_response_ms: int = 5 * MINUTE_MS) -> None:
        self.world, self.name = world, name
        self.operator = world.grid_operator(f"{name}-gridop", ZONE)
        self.processor = world.processor_credential()
        self.station = world.credential(f"{name}-cred", ["STATION"], subject_id=name)
        self.meter = world.credential(f"{name}-meter", ["METER"], subject_id=f"{name}-meter")
        self.vehicle = world.credential(f"{name}-ev", ["VEHICLE"], subject_id=f"{name}-ev")
        self.vehicle_ceiling = vehicle_ceiling
        world.governance += [
            sdk.tariff_filed(world.root, tariff_id=f"{name}-tariff", jurisdiction="US-CA",
                             currency="USD", ceiling_per_kwh=ceiling,
                             above_ceiling=above_ceiling, at_ms=T0_MS),
            sdk.rules_published(world.root, rules_version=f"{name}-rules", jurisdiction="US-CA",
                                reprice_response_ms=reprice_response_ms, at_ms=T0_MS)]
        self.store = world.store()
        self.state = ledger.LedgerState(name)
        self.offset, self.seq = 0, 0
        self.start_ms = T0_MS + HOUR_MS
        self.zone = zone_router.new_zone()
        self.zone["stations"] = [name]
        self.ident = sdk.identity(station_id=name, vehicle=self.vehicle,
                                  rate_authority_id="auth-root", jurisdiction="US-CA",
                                  connector_id="c1")
        step = self.feed(sdk.calendar_published(
            self.station, rate_authority_id="auth-root", jurisdiction="US-CA",
            tariff_id=f"{name}-tariff", rules_version=f"{name}-rules",
            connectors=[sdk.connector("c1", 50_000,
                                      meter_credential_id=self.meter.credential_id)],
            slot_duration_ms=HOUR_MS, horizon_start_ms=self.start_ms,
            horizon_end_ms=self.start_ms + 24 * HOUR_MS, posted_rate_per_kwh="0.30",
            currency="USD", grid_zone_id=ZONE, at_ms=T0_MS))
        assert step.rejection is None, step.rejection
        booked = self.feed(sdk.order(
            self.vehicle, "posted", order_id="o1", ident=self.ident, rate_per_kwh="0.30",
            terms=sdk.claim(energy_wh=30_000, start_ms=self.start_ms,
                            stop_ms=self.start_ms + 2 * HOUR_MS,
                            ceiling_rate_per_kwh=vehicle_ceiling, currency="USD"),
            at_ms=T0_MS + 1))
        assert booked.rejection is None, booked.rejection

    def at(self, minutes: int) -> int:
        return self.start_ms + minutes * MINUTE_MS

    def feed(self, event: SignedEvent) -> Step:
        verdict = admit(event.encode(), event.body.subject_key.encode(), MARKET.name, self.store)
        assert isinstance(verdict, Admitted), verdict
        self.offset += 1
        return market_step(self.state, verdict, 0, self.offset, None, self.store)

    def start(self) -> Step:
        return self.feed(sdk.handshake(self.station, self.vehicle, session_id="s1",
                                       reservation_id="res:o1", ident=self.ident,
                                       started_at_ms=self.start_ms))

    def price(self, rate: str, from_min: int, until_min: int, grid_event_id: str = "ge-1",
              at_min: int | None = None) -> Step:
        event = sdk.grid_event(self.operator, grid_event_id=grid_event_id, grid_zone_id=ZONE,
                               kind="PRICE_SIGNAL", from_ms=self.at(from_min),
                               until_ms=self.at(until_min), rate_per_kwh=rate,
                               at_ms=None if at_min is None else self.at(at_min))
        verdict = admit(event.encode(), ZONE.encode(), GRID.name, self.store)
        assert isinstance(verdict, Admitted), verdict
        routed_verdict, outputs = zone_router.route(self.zone, verdict, self.store,
                                                    self.processor.signer)
        assert isinstance(routed_verdict, Admitted) and len(outputs) == 1
        routed = admit(outputs[0].value, outputs[0].key, MARKET.name, self.store)
        assert isinstance(routed, Admitted), routed
        self.offset += 1
        return market_step(self.state, routed, 0, self.offset, None, self.store)

    def accept(self, rate: str, at_min: int, grid_event_id: str = "ge-1") -> Step:
        return self.feed(sdk.reprice_accepted(self.vehicle, session_id="s1", station_id=self.name,
                                              grid_event_id=grid_event_id, rate_per_kwh=rate,
                                              at_ms=self.at(at_min)))

    def reading(self, minutes: int, import_wh: int) -> Step:
        self.seq += 1
        step = self.feed(sdk.meter_reading(
            self.meter, session_id="s1", station_id=self.name, connector_id="c1", seq=self.seq,
            import_wh=import_wh, at_ms=self.at(minutes)))
        if step.rejection is not None:
            self.seq -= 1
        return step

    def close(self, minutes: int, final_wh: int) -> Step:
        return self.feed(sdk.meter_closed_out(self.station, session_id="s1", connector_id="c1",
                                              closed_at_ms=self.at(minutes),
                                              final_import_wh=final_wh,
                                              last_reading_seq=self.seq))


def only(step: Step, kind: str) -> dict[str, Any]:
    found = [dict(p) for k, p in pairs(step.decisions) if k == kind]
    assert len(found) == 1, (pairs(step.decisions), step.rejection)
    return found[0]


def energy_lines(step: Step) -> list[tuple[str, int, Decimal, int, int]]:
    settlement = only(step, "SettlementAdmitted")
    return [(ln["kind"], ln["quantity_wh"], ln["unit_rate_per_kwh"], ln["from_at_ms"],
             ln["until_at_ms"]) for ln in settlement["lines"] if ln["kind"].startswith("ENERGY")]


# ---- the ceiling --------------------------------------------------------------------------------


def test_a_grid_price_above_the_filed_ceiling_is_proposed_and_settled_at_the_ceiling() -> None:
    st = Station(make_world(), "cap")
    assert st.start().rejection is None
    proposal = only(st.price("1.20", 10, 60), "RepriceProposed")
    assert proposal["new_rate_per_kwh"] == Decimal("0.80")  # capped: the tariff declares CAP
    assert (proposal["effective_from_ms"], proposal["effective_until_ms"]) == (st.at(10),
                                                                               st.at(60))
    above = st.accept("1.20", 1)
    assert above.rejection is not None and above.rejection.reason == "PRICE_MISMATCH"
    assert st.accept("0.80", 1).rejection is None
    assert st.reading(10, 5_000).rejection is None
    assert st.reading(20, 10_000).rejection is None
    lines = energy_lines(st.close(30, 15_000))
    assert lines == [("ENERGY", 5_000, Decimal("0.30"), st.at(0), st.at(10)),
                     ("ENERGY_REPRICED", 10_000, Decimal("0.80"), st.at(10), st.at(30))]
    assert max(rate for _, _, rate, _, _ in lines) <= Decimal("0.80")


def test_a_tariff_that_refuses_prices_above_its_ceiling_refuses_the_signal() -> None:
    st = Station(make_world(), "refuse", above_ceiling="REFUSE")
    st.start()
    refused = st.price("1.20", 10, 60)
    assert refused.rejection is not None and refused.rejection.reason == "ABOVE_FILED_CEILING"
    assert pairs(refused.decisions) == []
    assert st.state.extra["sessions"]["s1"]["reprices"] == []
    # the legitimate case: a price within the ceiling is proposed as before
    assert only(st.price("0.61", 10, 60, "ge-2"), "RepriceProposed")["new_rate_per_kwh"] == (
        Decimal("0.61"))


def test_an_acceptance_of_a_proposal_above_the_filed_ceiling_is_refused() -> None:
    """A proposal recorded before the cap existed (state written by an older worker)."""
    st = Station(make_world(), "old")
    st.start()
    st.price("0.61", 10, 60)
    rp = st.state.extra["sessions"]["s1"]["reprices"][0]
    rp["rate_per_kwh"] = Decimal("1.20")
    refused = st.accept("1.20", 1)
    assert refused.rejection is not None and refused.rejection.reason == "ABOVE_FILED_CEILING"


def test_a_price_above_the_vehicles_own_ceiling_stops_the_session_when_it_takes_effect() -> None:
    st = Station(make_world(), "vceil", vehicle_ceiling="0.50")
    st.start()
    assert st.reading(8, 4_000).rejection is None
    step = st.price("0.61", 10, 60)  # within the filed 0.80, above the vehicle's 0.50
    assert [k for k, _ in pairs(step.decisions)] == ["SessionStopped"]
    stop = only(step, "SessionStopped")
    assert (stop["stopped_at_ms"], stop["reason"], stop["reason_code"]) == (
        st.at(10), "REPRICE_REFUSED", "ABOVE_CEILING")
    late = st.reading(12, 6_000)
    assert late.rejection is not None and late.rejection.reason == "READING_OUTSIDE_SESSION"
    lines = energy_lines(st.close(10, 5_000))
    assert lines == [("ENERGY", 5_000, Decimal("0.30"), st.at(0), st.at(10))]


# ---- the window -----------------------------------------------------------------------------------


def test_lines_follow_the_signals_window_then_the_booked_rate() -> None:
    st = Station(make_world(), "window")
    st.start()
    st.reading(4, 2_000)
    st.reading(8, 4_000)
    st.price("0.61", 12, 20, at_min=9)  # a spike for minutes 12-20
    assert st.accept("0.61", 10).rejection is None
    for minutes in (12, 16, 20, 24):
        assert st.reading(minutes, minutes * 500).rejection is None
    lines = energy_lines(st.close(28, 14_000))
    assert lines == [("ENERGY", 6_000, Decimal("0.30"), st.at(0), st.at(12)),
                     ("ENERGY_REPRICED", 4_000, Decimal("0.61"), st.at(12), st.at(20)),
                     ("ENERGY", 4_000, Decimal("0.30"), st.at(20), st.at(28))]


def test_rate_at_honours_the_window_and_the_latest_signal_in_force() -> None:
    base = Decimal("0.30")
    spike = Reprice(12, Decimal("0.61"), "a", 20)
    later = Reprice(15, Decimal("0.70"), "b", 0)  # no end: written before windows
    assert rate_at(base, [spike], 12) == (base, False)  # energy up to 12 was metered before it
    assert rate_at(base, [spike], 13) == (Decimal("0.61"), True)
    assert rate_at(base, [spike], 20) == (Decimal("0.61"), True)
    assert rate_at(base, [spike], 21) == (base, False)
    assert rate_at(base, [spike, later], 16) == (Decimal("0.70"), True)
    assert rate_at(base, [spike, later], 10_000) == (Decimal("0.70"), True)
    energy = segments(Reading(0, 0), [Reading(12, 12), Reading(20, 20)], Reading(30, 30), base,
                      [spike])
    assert [(s.from_ms, s.until_ms, s.energy_wh, s.repriced) for s in energy] == [
        (0, 12, 12, False), (12, 20, 8, True), (20, 30, 10, False)]


# ---- a session that starts inside a signal ---------------------------------------------------------


def test_a_session_starting_while_a_signal_is_in_force_is_priced_at_it_from_its_start() -> None:
    st = Station(make_world(), "instart")
    routed = st.price("0.61", -10, 60, at_min=-10)  # before anyone charges: nothing to propose
    assert routed.rejection is None and pairs(routed.decisions) == []
    started = st.start()
    proposal = only(started, "RepriceProposed")
    assert (proposal["effective_from_ms"], proposal["new_rate_per_kwh"]) == (st.at(0),
                                                                             Decimal("0.61"))
    assert st.accept("0.61", 1).rejection is None
    st.reading(10, 5_000)
    lines = energy_lines(st.close(20, 10_000))
    assert lines == [("ENERGY_REPRICED", 10_000, Decimal("0.61"), st.at(0), st.at(20))]


def test_a_signal_that_ended_before_the_session_started_does_not_touch_it() -> None:
    st = Station(make_world(), "ended")
    st.price("0.61", -30, -5, at_min=-30)
    assert pairs(st.start().decisions) == []


def test_a_signal_for_a_window_after_the_session_can_meter_is_not_proposed_to_it() -> None:
    """A signal remembered for later slots (here announced before the session, for hours after
    its booking plus overrun ends) prices nothing of this session: no proposal, so nothing goes
    unanswered and the session runs and settles at its booked rate (the hostile flood's notice)."""
    st = Station(make_world(), "later", reprice_response_ms=3 * MINUTE_MS)
    assert st.price("0.61", 300, 315, grid_event_id="ge-later", at_min=-5).rejection is None
    assert pairs(st.start().decisions) == []
    assert st.price("0.62", 400, 415, grid_event_id="ge-later-2", at_min=1).decisions == []
    assert st.reading(10, 5_000).rejection is None
    assert st.reading(30, 12_000).rejection is None  # past any 3-minute deadline: still running
    lines = energy_lines(st.close(40, 15_000))
    assert lines == [("ENERGY", 15_000, Decimal("0.30"), st.at(0), st.at(40))]


# ---- the response deadline --------------------------------------------------------------------------


def test_an_unanswered_reprice_stops_the_session_at_the_deadline_and_it_settles_to_then() -> None:
    st = Station(make_world(), "ignore", reprice_response_ms=3 * MINUTE_MS)
    st.start()
    st.reading(8, 4_000)
    proposal = only(st.price("0.61", 10, 60, at_min=8), "RepriceProposed")
    assert proposal["respond_by_ms"] == st.at(11)  # the ledger's clock (8) + 3 min
    assert st.reading(10, 5_000).rejection is None
    late_reading = st.reading(14, 7_000)  # moves the clock past the deadline
    stop = only(late_reading, "SessionStopped")
    assert (stop["stopped_at_ms"], stop["reason"], stop["reason_code"]) == (
        st.at(11), "REPRICE_REFUSED", "REPRICE_UNANSWERED")
    assert late_reading.rejection is not None
    assert late_reading.rejection.reason == "READING_OUTSIDE_SESSION"
    too_late = st.accept("0.61", 14)
    assert too_late.rejection is not None and too_late.rejection.reason == "SESSION_CLOSED"
    after = st.close(14, 7_000)
    assert after.rejection is not None and after.rejection.reason == "READING_OUTSIDE_SESSION"
    lines = energy_lines(st.close(11, 5_500))
    assert lines == [("ENERGY", 5_500, Decimal("0.30"), st.at(0), st.at(11))]


def test_an_answered_reprice_keeps_the_session_running() -> None:
    st = Station(make_world(), "answer", reprice_response_ms=3 * MINUTE_MS)
    st.start()
    st.reading(8, 4_000)
    st.price("0.61", 10, 60, at_min=8)
    assert st.accept("0.61", 9).rejection is None
    running = st.reading(30, 15_000)
    assert running.rejection is None and pairs(running.decisions) == []
    lines = energy_lines(st.close(40, 20_000))
    assert lines == [("ENERGY", 4_000, Decimal("0.30"), st.at(0), st.at(8)),
                     ("ENERGY_REPRICED", 16_000, Decimal("0.61"), st.at(8), st.at(40))]


def test_the_deadline_survives_a_save_and_restore_of_the_ledger() -> None:
    st = Station(make_world(), "saved", reprice_response_ms=3 * MINUTE_MS)
    st.start()
    st.reading(8, 4_000)
    st.price("0.61", 10, 60, at_min=8)
    st.state = ledger.load_state(ledger.dump_state(st.state))
    stop = only(st.feed(sdk.heartbeat(st.station, st.at(12))), "SessionStopped")
    assert stop["reason_code"] == "REPRICE_UNANSWERED"
