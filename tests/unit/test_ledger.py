"""The slot ledger (pure): calendars, posted prices, sealed bids, walk-ups, capacity, replay.

Every story feeds signed, decoded events through ``commands.handle`` exactly as the market agent
does, and asserts both the decisions the ledger emits and the reason of every rejection.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargemesh.processors.ledger import commands
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.governance import TrustStore
from chargemesh.streams.envelope import SignedEvent, open_payload
from chargemesh.streams.sdk.participant import (
    Participant,
    calendar_published,
    capacity_changed,
    claim,
    connector,
    heartbeat,
    identity,
    order,
    rules_published,
    tariff_filed,
)
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.support.world import T0_MS, World, make_world, pairs

STATION_ID = "station-1"
RATE_AUTHORITY = "auth-root"
TARIFF = "tariff-ca-1"
RULES = "r1"
SLOT_MS = 30 * MINUTE_MS
SLOTS = 8
HORIZON_START_MS = T0_MS + 2 * HOUR_MS
HORIZON_END_MS = HORIZON_START_MS + SLOTS * SLOT_MS
PUBLISHED_AT_MS = T0_MS  # two hours before the horizon opens: every bid gate is still open
POSTED = "0.450000"
FILED_CEILING = "0.80"
W_PER_KW = 1_000
GRACE_MS = 10 * MINUTE_MS  # the rules_published defaults
GATE_MS = 15 * MINUTE_MS
VEHICLES = ("v1", "v2", "v3", "v4")
POWER_W = 50 * W_PER_KW
CANCELLATION = "chargemesh.orders.v1.ReservationCancelled"  # no SDK helper for it yet


def slot(index: int, count: int = 1) -> tuple[int, int]:
    """The window of ``count`` slots starting at slot ``index`` of the horizon."""
    start = HORIZON_START_MS + index * SLOT_MS
    return start, start + count * SLOT_MS


# ---- the market: a world, a trust store and one station's ledger -----------------------------


@dataclasses.dataclass
class Market:
    world: World
    store: TrustStore
    station: Participant
    vehicles: dict[str, Participant]
    state: ledger.LedgerState

    def feed(self, event: SignedEvent) -> ledger.Outcome:
        return commands.handle(self.state, command_of(event), self.store)

    def publish(self, connectors: list[dict[str, Any]] | None = None,
                **overrides: Any) -> ledger.Outcome:
        return self.feed(calendar(self.station, connectors, **overrides))

    def now(self) -> int:
        return self.state.clock_ms

    def posted(self, vehicle: str, order_id: str, window: tuple[int, int], *,
               rate: str = POSTED, at_ms: int | None = None, connector_id: str = "",
               **terms: Any) -> ledger.Outcome:
        return self.feed(self.order(vehicle, "posted", order_id, window, rate=rate,
                                    at_ms=at_ms, connector_id=connector_id, **terms))

    def bid(self, vehicle: str, order_id: str, window: tuple[int, int], rate: str, *,
            at_ms: int | None = None, connector_id: str = "", **terms: Any) -> ledger.Outcome:
        return self.feed(self.order(vehicle, "bid", order_id, window, rate=rate, at_ms=at_ms,
                                    connector_id=connector_id, **terms))

    def walk_up(self, vehicle: str, order_id: str, arrived_ms: int, stop_ms: int, *,
                connector_id: str = "", **terms: Any) -> ledger.Outcome:
        return self.feed(self.order(vehicle, "walk_up", order_id, (arrived_ms, stop_ms),
                                    arrived_ms=arrived_ms, at_ms=arrived_ms,
                                    connector_id=connector_id, **terms))

    def order(self, vehicle: str, kind: str, order_id: str, window: tuple[int, int], *,
              rate: str = "0", at_ms: int | None = None, arrived_ms: int = 0,
              connector_id: str = "", rate_authority_id: str = RATE_AUTHORITY,
              energy_wh: int = 10_000, ceiling: str = FILED_CEILING, currency: str = "USD",
              **flags: Any) -> SignedEvent:
        who = self.vehicles[vehicle]
        ident = identity(station_id=STATION_ID, vehicle=who, rate_authority_id=rate_authority_id,
                         jurisdiction="US-CA", connector_id=connector_id)
        terms = claim(energy_wh=energy_wh, start_ms=window[0], stop_ms=window[1],
                      ceiling_rate_per_kwh=ceiling, currency=currency, **flags)
        return order(who, kind, order_id=order_id, ident=ident, terms=terms, rate_per_kwh=rate,
                     arrived_at_ms=arrived_ms, at_ms=self.now() if at_ms is None else at_ms)

    def capacity(self, connector_id: str, cause: str, window: tuple[int, int], *,
                 available: bool = False, power_w: int = 0,
                 at_ms: int | None = None) -> ledger.Outcome:
        return self.feed(capacity_changed(
            self.station, connector_id=connector_id, available=available, power_w=power_w,
            from_ms=window[0], until_ms=window[1], cause=cause,
            at_ms=self.now() if at_ms is None else at_ms))

    def heartbeat(self, at_ms: int) -> ledger.Outcome:
        return self.feed(heartbeat(self.station, at_ms))

    def cancel(self, vehicle: str, reservation_id: str, at_ms: int | None = None) -> ledger.Outcome:
        who = self.vehicles[vehicle]
        payload = {"reservation_id": reservation_id, "station_id": STATION_ID,
                   "reason": "plans changed"}
        event = who.sign(CANCELLATION, payload, subject_key=STATION_ID,
                         occurred_at_ms=self.now() if at_ms is None else at_ms)
        return self.feed(event)

    def live(self) -> list[ledger.Reservation]:
        return [r for r in self.state.reservations.values() if r.status in ledger.LIVE]


def command_of(event: SignedEvent) -> ledger.Command:
    return ledger.Command(event.event_type, open_payload(event), event.body.occurred_at_ms,
                          event.body.author_credential_id, event.event_id)


def calendar(station: Participant, connectors: list[dict[str, Any]] | None = None,
             **overrides: Any) -> SignedEvent:
    fields: dict[str, Any] = {
        "rate_authority_id": RATE_AUTHORITY, "jurisdiction": "US-CA", "tariff_id": TARIFF,
        "rules_version": RULES, "slot_duration_ms": SLOT_MS,
        "horizon_start_ms": HORIZON_START_MS, "horizon_end_ms": HORIZON_END_MS,
        "posted_rate_per_kwh": POSTED, "currency": "USD", "at_ms": PUBLISHED_AT_MS,
        "connectors": connectors or [connector("c1", POWER_W), connector("c2", POWER_W)],
    }
    fields.update(overrides)
    return calendar_published(station, **fields)


def market(connectors: list[dict[str, Any]] | None = None, publish: bool = True,
           **rules: Any) -> Market:
    """One station with a published calendar (two 50 kW connectors by default) and vehicles."""
    world = make_world()
    station = world.credential("st-1", ["STATION"], subject_id=STATION_ID)
    vehicles = {v: world.credential(f"cred-{v}", ["VEHICLE"], subject_id=v) for v in VEHICLES}
    world.governance.append(tariff_filed(world.root, tariff_id=TARIFF, jurisdiction="US-CA",
                                         currency="USD", ceiling_per_kwh=FILED_CEILING))
    world.governance.append(rules_published(world.root, rules_version=RULES,
                                            jurisdiction="US-CA", **rules))
    m = Market(world, world.store(), station, vehicles, ledger.LedgerState(STATION_ID))
    if publish:
        outcome = m.publish(connectors)
        assert outcome.rejection is None and outcome.decisions == []
    return m


def kinds(outcome: ledger.Outcome) -> list[str]:
    return [kind for kind, _ in pairs(outcome.decisions)]


def reason(outcome: ledger.Outcome) -> str:
    assert outcome.rejection is not None, f"expected a rejection, got {outcome.decisions}"
    return outcome.rejection.reason


def reserved(outcome: ledger.Outcome) -> dict[str, Any]:
    """The one SlotReserved the outcome holds (and nothing else, and no rejection)."""
    assert outcome.rejection is None, outcome.rejection
    assert kinds(outcome) == ["SlotReserved"], outcome.decisions
    return outcome.decisions[0].payload


def gate(index: int) -> int:
    """When bids for the window starting at slot ``index`` close."""
    return slot(index)[0] - GATE_MS


def rejected(outcome: ledger.Outcome) -> list[tuple[str, str]]:
    return [(p["order_id"], p["reason_code"]) for kind, p in pairs(outcome.decisions)
            if kind == "OrderRejected"]


def reserved_ids(outcome: ledger.Outcome) -> list[str]:
    return [p["order_id"] for kind, p in pairs(outcome.decisions) if kind == "SlotReserved"]


def moves(outcome: ledger.Outcome) -> list[tuple[str, str, int, str]]:
    """(reservation, connector, slot start, reason) of every SlotReallocated."""
    return [(p["reservation_id"], p["to_connector_id"], p["to_slot_start_at_ms"], p["reason_code"])
            for kind, p in pairs(outcome.decisions) if kind == "SlotReallocated"]


def releases(outcome: ledger.Outcome) -> list[tuple[str, str]]:
    return [(p["reservation_id"], p["reason_code"]) for kind, p in pairs(outcome.decisions)
            if kind == "SlotReleased"]


# ---- calendars ---------------------------------------------------------------------------------


def test_a_valid_calendar_is_adopted_with_the_filed_ceiling_and_rules_copied_in() -> None:
    m = market(publish=False)
    outcome = m.publish()
    assert outcome.rejection is None and outcome.decisions == []
    cal = m.state.calendar
    assert cal is not None
    assert cal["calendar_version"] == 1 and cal["rate_authority_id"] == RATE_AUTHORITY
    assert cal["posted_rate_per_kwh"] == Decimal(POSTED)
    assert cal["filed_ceiling_per_kwh"] == Decimal(FILED_CEILING)
    assert cal["rules"]["rules_version"] == RULES and cal["rules"]["no_show_grace_ms"] == GRACE_MS
    assert sorted(cal["connectors"]) == ["c1", "c2"]
    assert m.state.clock_ms == PUBLISHED_AT_MS


def with_second_rate_authority(m: Market) -> Participant:
    """A second recognised rate authority ``ra-2`` with its own tariffs (rebuilds the store)."""
    other = m.world.credential("ra-2", ["RATE_AUTHORITY"])
    m.world.governance.append(tariff_filed(other, tariff_id="tariff-ra2", jurisdiction="US-CA",
                                           currency="USD", ceiling_per_kwh="0.90"))
    m.world.governance.append(tariff_filed(m.world.root, tariff_id="tariff-elsewhere",
                                           jurisdiction="US-CA", currency="USD",
                                           ceiling_per_kwh="0.80", station_ids=["station-9"]))
    m.store = m.world.store()
    assert m.store.is_rate_authority("ra-2", PUBLISHED_AT_MS)
    return other


def test_a_calendar_naming_an_unknown_tariff_is_rejected_and_not_adopted() -> None:
    m = market(publish=False)
    assert reason(m.publish(tariff_id="tariff-nope")) == "UNKNOWN_TARIFF"
    assert m.state.calendar is None
    assert reason(m.posted("v1", "o1", slot(1))) == "NO_CALENDAR"


def test_a_calendar_may_not_borrow_the_tariff_of_another_rate_authority() -> None:
    m = market(publish=False)
    with_second_rate_authority(m)
    assert reason(m.publish(tariff_id="tariff-ra2")) == "UNKNOWN_TARIFF"
    assert reason(m.publish(tariff_id="tariff-elsewhere")) == "UNKNOWN_TARIFF"  # other stations
    assert m.state.calendar is None
    # filed under its own authority, the same tariff is fine
    outcome = m.publish(tariff_id="tariff-ra2", rate_authority_id="ra-2")
    assert outcome.rejection is None
    assert m.state.calendar is not None
    assert m.state.calendar["filed_ceiling_per_kwh"] == Decimal("0.90")


def test_a_calendar_under_an_unrecognised_rate_authority_is_rejected() -> None:
    m = market(publish=False)
    assert reason(m.publish(rate_authority_id="auth-nobody")) == "UNRECOGNISED_RATE_AUTHORITY"
    assert m.state.calendar is None


def test_a_posted_price_above_the_filed_ceiling_is_rejected_but_the_ceiling_is_fine() -> None:
    m = market(publish=False)
    assert reason(m.publish(posted_rate_per_kwh="0.800001")) == "ABOVE_FILED_CEILING"
    assert m.state.calendar is None
    assert m.publish(posted_rate_per_kwh=FILED_CEILING).rejection is None


def test_a_calendar_naming_unpublished_rules_or_another_currency_is_rejected() -> None:
    m = market(publish=False)
    assert reason(m.publish(rules_version="r9")) == "UNKNOWN_RULES"
    assert reason(m.publish(currency="EUR")) == "CURRENCY_MISMATCH"
    assert m.state.calendar is None


def test_a_calendar_with_an_empty_horizon_or_no_usable_connector_is_invalid() -> None:
    m = market(publish=False)
    assert reason(m.publish(horizon_end_ms=HORIZON_START_MS)) == "INVALID_CALENDAR"
    assert reason(m.publish(connectors=[connector("c1", 0)])) == "INVALID_CALENDAR"
    assert m.state.calendar is None


def test_a_stale_calendar_version_is_rejected_and_a_newer_one_replaces_the_calendar() -> None:
    m = market()
    assert reason(m.publish(calendar_version=1)) == "STALE_CALENDAR"
    assert m.publish(calendar_version=3, posted_rate_per_kwh="0.50").rejection is None
    assert reason(m.publish(calendar_version=2)) == "STALE_CALENDAR"
    assert m.state.calendar is not None
    assert m.state.calendar["calendar_version"] == 3
    assert m.state.calendar["posted_rate_per_kwh"] == Decimal("0.50")
    assert reason(m.posted("v1", "o1", slot(1))) == "PRICE_MISMATCH"  # the new price applies
    reserved(m.posted("v1", "o2", slot(1), rate="0.50"))


def test_a_new_calendar_that_withdraws_a_connector_moves_its_reservations() -> None:
    m = market()
    reserved(m.posted("v1", "o1", slot(2), connector_id="c2"))
    outcome = m.publish(calendar_version=2, connectors=[connector("c1", POWER_W)])
    assert outcome.rejection is None
    assert kinds(outcome) == ["SlotReallocated"]
    moved = outcome.decisions[0].payload
    assert (moved["from_connector_id"], moved["to_connector_id"]) == ("c2", "c1")
    assert moved["to_slot_start_at_ms"] == slot(2)[0]
    assert moved["reason_code"] == "CONNECTOR_WITHDRAWN"
    assert m.state.reservations["res:o1"].connector_id == "c1"


def test_a_new_calendar_that_lowers_a_connectors_power_moves_what_no_longer_fits() -> None:
    m = market()
    reserved(m.posted("v1", "big", slot(2), energy_wh=20_000, connector_id="c1"))  # 40 kW
    reserved(m.posted("v2", "small", slot(3), energy_wh=5_000, connector_id="c1"))  # 10 kW
    derated = [connector("c1", 22 * W_PER_KW), connector("c2", POWER_W)]
    outcome = m.publish(calendar_version=2, connectors=derated)
    assert outcome.rejection is None
    assert moves(outcome) == [("res:big", "c2", slot(2)[0], "CONNECTOR_DERATED")]
    assert {r.order_id: r.connector_id for r in m.live()} == {"big": "c2", "small": "c1"}


def test_an_event_the_ledger_does_not_own_is_refused() -> None:
    m = market()
    cmd = ledger.Command("chargemesh.governance.v1.TariffFiled", {}, PUBLISHED_AT_MS + 1,
                         "auth-root", "e-1")
    outcome = commands.handle(m.state, cmd, m.store)
    assert reason(outcome) == "UNSUPPORTED_EVENT" and outcome.decisions == []


# ---- posted-price acceptance -------------------------------------------------------------------


def test_a_posted_price_acceptance_reserves_the_slot_at_the_posted_price() -> None:
    m = market()
    p = reserved(m.posted("v1", "o1", slot(2, 2), energy_wh=30_000))
    assert p["reservation_id"] == "res:o1" and p["order_id"] == "o1"
    assert p["vehicle_credential_id"] == "cred-v1" and p["station_id"] == STATION_ID
    assert p["connector_id"] == "c1"  # auto-picked: the first free capable connector
    assert (p["slot_start_at_ms"], p["slot_stop_at_ms"]) == slot(2, 2)
    assert p["rate_per_kwh"] == Decimal(POSTED) and isinstance(p["rate_per_kwh"], Decimal)
    assert p["energy_wh"] == 30_000 and p["rules_version"] == RULES and p["walk_up"] is False
    res = m.state.reservations["res:o1"]
    assert (res.status, res.vehicle_id, res.connector_id) == ("ACTIVE", "v1", "c1")


def test_accepting_another_price_than_the_posted_one_is_a_price_mismatch() -> None:
    m = market()
    assert reason(m.posted("v1", "o1", slot(1), rate="0.40")) == "PRICE_MISMATCH"
    assert reason(m.posted("v1", "o2", slot(1), rate="0.50")) == "PRICE_MISMATCH"
    assert m.state.reservations == {}


def test_a_posted_price_above_the_vehicles_own_ceiling_is_rejected() -> None:
    m = market()
    assert reason(m.posted("v1", "o1", slot(1), ceiling="0.449999")) == "ABOVE_CEILING"
    reserved(m.posted("v1", "o2", slot(1), ceiling=POSTED))  # exactly at the ceiling is fine


def test_a_window_outside_the_calendar_is_rejected() -> None:
    m = market()
    before = (HORIZON_START_MS - SLOT_MS, HORIZON_START_MS)
    assert reason(m.posted("v1", "o1", before)) == "SLOT_OUTSIDE_CALENDAR"
    assert reason(m.posted("v1", "o2", slot(SLOTS - 1, 2))) == "SLOT_OUTSIDE_CALENDAR"
    assert reason(m.posted("v1", "o3", (slot(2)[0], slot(2)[0]))) == "SLOT_OUTSIDE_CALENDAR"
    reserved(m.posted("v1", "o4", slot(SLOTS - 1)))  # the last slot is inside


def test_a_window_off_the_slot_grid_is_rejected() -> None:
    m = market()
    start, stop = slot(2)
    assert reason(m.posted("v1", "o1", (start + MINUTE_MS, stop + MINUTE_MS))) == "SLOT_MISALIGNED"
    assert reason(m.posted("v1", "o2", (start, stop + MINUTE_MS))) == "SLOT_MISALIGNED"
    assert m.state.reservations == {}


def test_a_window_longer_than_the_order_limit_is_rejected() -> None:
    m = market(publish=False)
    assert m.publish(slot_duration_ms=MINUTE_MS).rejection is None  # 240 one-minute slots
    too_long = (HORIZON_START_MS, HORIZON_START_MS + (ledger.SLOTS_PER_ORDER_MAX + 1) * MINUTE_MS)
    assert reason(m.posted("v1", "o1", too_long, energy_wh=1_000)) == "WINDOW_TOO_LONG"


def test_an_order_in_another_currency_or_under_another_rate_authority_is_rejected() -> None:
    m = market()
    assert reason(m.posted("v1", "o1", slot(1), currency="EUR")) == "CURRENCY_MISMATCH"
    assert reason(m.posted("v1", "o2", slot(1), rate_authority_id="ra-2")) == (
        "RATE_AUTHORITY_MISMATCH")
    assert m.state.reservations == {}


def test_an_order_whose_identity_names_another_vehicle_credential_is_rejected() -> None:
    m = market()
    v1, v2 = m.vehicles["v1"], m.vehicles["v2"]
    ident = identity(station_id=STATION_ID, vehicle=v2, rate_authority_id=RATE_AUTHORITY,
                     jurisdiction="US-CA")
    terms = claim(energy_wh=10_000, start_ms=slot(1)[0], stop_ms=slot(1)[1],
                  ceiling_rate_per_kwh="0.60", currency="USD")
    forged = order(v1, "posted", order_id="o1", ident=ident, terms=terms, rate_per_kwh=POSTED,
                   at_ms=m.now())
    assert reason(m.feed(forged)) == "SUBJECT_MISMATCH"


def test_an_order_for_no_energy_is_rejected() -> None:
    m = market()
    assert reason(m.posted("v1", "o1", slot(1), energy_wh=0)) == "INVALID_ENERGY"


def test_an_order_id_already_on_the_ledger_is_a_duplicate() -> None:
    m = market()
    reserved(m.posted("v1", "o1", slot(1)))
    assert reason(m.posted("v1", "o1", slot(3))) == "DUPLICATE_ORDER"
    assert reason(m.posted("v2", "o1", slot(4))) == "DUPLICATE_ORDER"
    assert m.bid("v2", "o2", slot(5), "0.50").rejection is None  # a sealed bid is on it too
    assert reason(m.posted("v3", "o2", slot(6))) == "DUPLICATE_ORDER"
    assert [r.order_id for r in m.state.reservations.values()] == ["o1"]


def test_two_vehicles_race_for_the_last_free_slot_one_is_reserved_one_slot_taken() -> None:
    m = market()
    reserved(m.posted("v3", "o0", slot(3)))  # c1 is gone; c2 is the last free place
    first = m.posted("v1", "o1", slot(3))
    second = m.posted("v2", "o2", slot(3))
    assert reserved(first)["connector_id"] == "c2"
    assert reason(second) == "SLOT_TAKEN" and second.decisions == []
    assert second.rejected_order is not None and second.rejected_order["order_id"] == "o2"
    # a window that only overlaps the booked one is taken as well
    assert reason(m.posted("v2", "o3", slot(2, 2))) == "SLOT_TAKEN"
    assert reserved(m.posted("v2", "o4", slot(4)))["connector_id"] == "c1"


def test_a_named_connector_is_honoured_and_an_empty_one_is_picked_for_the_vehicle() -> None:
    m = market()
    assert reserved(m.posted("v1", "o1", slot(1), connector_id="c2"))["connector_id"] == "c2"
    assert reserved(m.posted("v2", "o2", slot(1)))["connector_id"] == "c1"
    assert reason(m.posted("v3", "o3", slot(2), connector_id="c9")) == "UNKNOWN_CONNECTOR"
    reserved(m.posted("v3", "o4", slot(2), connector_id="c1"))
    # the named connector is taken: the free c2 is not offered instead
    assert reason(m.posted("v4", "o5", slot(2), connector_id="c1")) == "SLOT_TAKEN"


def test_energy_a_connector_cannot_deliver_in_the_window_is_unavailable() -> None:
    m = market(connectors=[connector("c1", 7 * W_PER_KW, kind="AC_L2"), connector("c2", POWER_W)])
    # 50 kW for half an hour is 25 kWh at most: exactly that fits, one Wh more does not
    assert reserved(m.posted("v1", "o1", slot(1), energy_wh=25_000))["connector_id"] == "c2"
    assert reason(m.posted("v2", "o2", slot(2), energy_wh=25_001)) == "CONNECTOR_UNAVAILABLE"
    # 10 kWh is too much for the 7 kW connector, so the auto-pick skips it
    assert reserved(m.posted("v2", "o3", slot(3), energy_wh=10_000))["connector_id"] == "c2"
    assert reason(m.posted("v3", "o4", slot(4), energy_wh=10_000, connector_id="c1")) == (
        "CONNECTOR_UNAVAILABLE")
    # the only capable connector is booked: that is SLOT_TAKEN, not unavailable
    assert reason(m.posted("v3", "o5", slot(3), energy_wh=10_000)) == "SLOT_TAKEN"
    assert reserved(m.posted("v3", "o6", slot(3), energy_wh=3_500))["connector_id"] == "c1"


# ---- sealed bids -------------------------------------------------------------------------------


def test_a_bid_above_the_vehicles_own_ceiling_or_the_filed_ceiling_is_rejected() -> None:
    m = market()
    assert reason(m.bid("v1", "o1", slot(2), "0.61", ceiling="0.60")) == "BID_ABOVE_OWN_CEILING"
    assert reason(m.bid("v1", "o2", slot(2), "0.85", ceiling="0.90")) == "ABOVE_FILED_CEILING"
    assert reason(m.bid("v1", "o3", slot(2), "0")) == "INVALID_RATE"
    assert m.bid("v1", "o4", slot(2), FILED_CEILING, ceiling="0.90").rejection is None
    assert [b.order_id for b in m.state.bids] == ["o4"]


def test_bidding_closes_at_the_gate_before_the_slot_starts() -> None:
    m = market()
    assert m.bid("v1", "o1", slot(2), "0.50", at_ms=gate(2) - 1).rejection is None
    assert reason(m.bid("v2", "o2", slot(2), "0.55", at_ms=gate(2))) == "BIDDING_CLOSED"
    m.heartbeat(gate(2) - 1)  # the station's clock passes the first gate
    assert reason(m.bid("v3", "o3", slot(1), "0.55")) == "BIDDING_CLOSED"  # the clock is past it


def test_a_bid_for_a_window_no_connector_can_serve_is_rejected_when_placed() -> None:
    m = market()
    assert reason(m.bid("v1", "o1", slot(2), "0.50", energy_wh=30_000)) == (
        "CONNECTOR_UNAVAILABLE")


def test_bids_are_sealed_until_gate_closure_then_the_highest_wins_and_the_rest_are_outbid() -> None:
    m = market(connectors=[connector("c1", POWER_W)])
    for vehicle, order_id, rate in [("v1", "low", "0.50"), ("v2", "high", "0.55"),
                                    ("v3", "high-late", "0.55")]:
        placed = m.bid(vehicle, order_id, slot(2), rate)
        assert placed.rejection is None and placed.decisions == []  # nothing is revealed
    assert m.heartbeat(gate(2) - 1).decisions == []  # still sealed
    assert m.state.reservations == {} and len(m.state.bids) == 3
    closed = m.heartbeat(gate(2))
    assert closed.rejection is None
    assert kinds(closed) == ["SlotReserved", "OrderRejected", "OrderRejected"]
    won = closed.decisions[0].payload
    assert won["order_id"] == "high" and won["rate_per_kwh"] == Decimal("0.55")  # pays its bid
    assert won["vehicle_credential_id"] == "cred-v2" and won["walk_up"] is False
    assert rejected(closed) == [("high-late", "OUTBID"), ("low", "OUTBID")]  # tie: earliest
    assert m.state.bids == []
    assert m.heartbeat(gate(2) + MINUTE_MS).decisions == []  # resolved once only


def test_every_free_connector_goes_to_the_next_best_bid() -> None:
    m = market()  # two connectors: two winners
    for vehicle, rate in [("v1", "0.50"), ("v2", "0.70"), ("v3", "0.60")]:
        assert m.bid(vehicle, f"bid-{vehicle}", slot(3), rate).rejection is None
    closed = m.heartbeat(gate(3))
    wins = [(p["order_id"], p["connector_id"]) for k, p in pairs(closed.decisions) if k == "SlotReserved"]
    assert wins == [("bid-v2", "c1"), ("bid-v3", "c2")]
    assert rejected(closed) == [("bid-v1", "OUTBID")]


def test_bids_for_different_windows_are_resolved_each_at_their_own_gate() -> None:
    m = market(connectors=[connector("c1", POWER_W)])
    assert m.bid("v1", "early", slot(2), "0.50").rejection is None
    assert m.bid("v2", "late", slot(4), "0.50").rejection is None
    first = m.heartbeat(gate(2))
    assert [p["order_id"] for _, p in pairs(first.decisions)] == ["early"]
    assert [b.order_id for b in m.state.bids] == ["late"]
    second = m.heartbeat(gate(4))
    assert reserved_ids(second) == ["late"]
    # meanwhile the early winner never plugged in: time passing released it as a no-show
    assert [(k, p["reason_code"]) for k, p in pairs(second.decisions) if k == "SlotReleased"] == [
        ("SlotReleased", "NO_SHOW")]


def test_with_earliest_resolution_the_first_bid_wins_whatever_its_rate() -> None:
    m = market(connectors=[connector("c1", POWER_W)], bid_resolution="EARLIEST")
    assert m.bid("v1", "first", slot(2), "0.40").rejection is None
    assert m.bid("v2", "richer", slot(2), "0.70").rejection is None
    closed = m.heartbeat(gate(2))
    assert reserved_ids(closed) == ["first"]
    assert rejected(closed) == [("richer", "OUTBID")]


def test_demand_response_priority_wins_the_auction_when_the_rules_say_so() -> None:
    m = market(connectors=[connector("c1", POWER_W)], demand_response_priority_wins=True)
    assert m.bid("v1", "rich", slot(2), "0.70").rejection is None
    assert m.bid("v2", "priority", slot(2), "0.50", demand_response_priority=3).rejection is None
    closed = m.heartbeat(gate(2))
    assert reserved_ids(closed) == ["priority"]
    assert rejected(closed) == [("rich", "OUTBID")]


def test_demand_response_priority_is_ignored_when_the_rules_do_not_give_it_precedence() -> None:
    m = market(connectors=[connector("c1", POWER_W)], demand_response_priority_wins=False)
    assert m.bid("v1", "rich", slot(2), "0.70").rejection is None
    assert m.bid("v2", "priority", slot(2), "0.50", demand_response_priority=3).rejection is None
    closed = m.heartbeat(gate(2))
    assert reserved_ids(closed) == ["rich"]
    assert rejected(closed) == [("priority", "OUTBID")]


def test_a_posted_acceptance_before_the_gate_takes_the_slot_from_the_sealed_bids() -> None:
    m = market(connectors=[connector("c1", POWER_W)])
    assert m.bid("v1", "bid", slot(2), "0.70").rejection is None
    reserved(m.posted("v2", "posted", slot(2)))  # first come, first served
    closed = m.heartbeat(gate(2))
    assert reserved_ids(closed) == []
    assert rejected(closed) == [("bid", "SLOT_TAKEN")]  # nobody outbid it: the slot was taken


def test_a_bid_resolved_at_the_gate_of_a_faulted_connector_is_unavailable() -> None:
    m = market(connectors=[connector("c1", POWER_W)])
    assert m.bid("v1", "bid", slot(2), "0.70").rejection is None
    assert m.capacity("c1", "FAULT", (slot(0)[0], HORIZON_END_MS)).decisions == []
    closed = m.heartbeat(gate(2))
    assert rejected(closed) == [("bid", "CONNECTOR_UNAVAILABLE")]


# ---- walk-ups ----------------------------------------------------------------------------------


def test_a_walk_up_on_a_free_connector_is_authorised_on_the_slots_around_its_arrival() -> None:
    m = market()
    reserved(m.posted("v1", "o1", slot(2, 2)))  # c1 is booked, c2 is free
    arrived = slot(2)[0] + 5 * MINUTE_MS
    p = reserved(m.walk_up("v2", "w1", arrived, slot(3)[0] + 20 * MINUTE_MS))
    assert p["walk_up"] is True and p["connector_id"] == "c2"
    assert (p["slot_start_at_ms"], p["slot_stop_at_ms"]) == slot(2, 2)  # widened onto the grid
    assert p["rate_per_kwh"] == Decimal(POSTED)


def test_a_walk_up_for_no_time_at_all_gets_at_least_its_current_slot() -> None:
    m = market()
    arrived = slot(4)[0] + MINUTE_MS
    p = reserved(m.walk_up("v1", "w1", arrived, arrived))
    assert (p["slot_start_at_ms"], p["slot_stop_at_ms"]) == slot(4)


def test_a_walk_up_is_refused_when_everything_is_booked() -> None:
    m = market()
    reserved(m.posted("v1", "o1", slot(2)))
    reserved(m.posted("v2", "o2", slot(2)))
    assert reason(m.walk_up("v3", "w1", slot(2)[0] + MINUTE_MS, slot(2)[1])) == "SLOT_TAKEN"


def test_a_walk_up_beyond_the_walk_up_horizon_or_above_its_ceiling_is_refused() -> None:
    m = market()
    arrived = slot(0)[0] + MINUTE_MS
    too_far = arrived + 4 * 3_600_000  # stop rounds up past the 4 h the rules allow
    assert reason(m.walk_up("v1", "w1", arrived, too_far)) == "WINDOW_TOO_LONG"
    assert reason(m.walk_up("v1", "w2", arrived, slot(0)[1], ceiling="0.40")) == "ABOVE_CEILING"
    assert reason(m.walk_up("v1", "w3", HORIZON_START_MS - MINUTE_MS, HORIZON_START_MS)) == (
        "SLOT_OUTSIDE_CALENDAR")


def test_a_no_show_is_released_after_the_grace_and_the_slot_goes_to_a_walk_up() -> None:
    m = market(connectors=[connector("c1", POWER_W)])
    reserved(m.posted("v1", "booked", slot(1)))
    start = slot(1)[0]
    assert reason(m.walk_up("v2", "w1", start + 5 * MINUTE_MS, slot(1)[1])) == "SLOT_TAKEN"
    assert m.heartbeat(start + GRACE_MS - 1).decisions == []  # still within the grace
    released = m.heartbeat(start + GRACE_MS)
    assert kinds(released) == ["SlotReleased"]
    assert released.decisions[0].payload["reservation_id"] == "res:booked"
    assert released.decisions[0].payload["reason_code"] == "NO_SHOW"
    assert m.state.reservations["res:booked"].status == "RELEASED"
    p = reserved(m.walk_up("v2", "w2", start + GRACE_MS + MINUTE_MS, slot(1)[1]))
    assert p["walk_up"] is True and (p["slot_start_at_ms"], p["slot_stop_at_ms"]) == slot(1)


def test_the_stations_clock_frees_the_no_show_and_the_walk_up_then_gets_the_slot() -> None:
    m = market(connectors=[connector("c1", POWER_W)])
    reserved(m.posted("v1", "booked", slot(1)))
    arrived = slot(1)[0] + GRACE_MS + MINUTE_MS
    freed = m.heartbeat(arrived)
    assert [(k, p["reason_code"]) for k, p in pairs(freed.decisions)] == [("SlotReleased", "NO_SHOW")]
    outcome = m.walk_up("v2", "w1", arrived, slot(1)[1])
    assert outcome.rejection is None
    assert kinds(outcome) == ["SlotReserved"]
    assert outcome.decisions[0].payload["walk_up"] is True


def test_a_future_dated_order_cannot_move_the_stations_clock() -> None:
    """Only the station's own signed time may run its clock; a vehicle's may lead by 2 min."""
    m = market(connectors=[connector("c1", POWER_W)])
    reserved(m.posted("v1", "booked", slot(1)))
    far_future = slot(1)[0] + 10 * GRACE_MS
    m.bid("v2", "sneaky", slot(3), "0.50", at_ms=far_future)
    assert m.state.reservations["res:booked"].status == "ACTIVE"  # not released as a no-show
    assert m.state.clock_ms <= m.state.station_clock_ms + ledger.VEHICLE_CLOCK_LEAD_MS_MAX


def test_orders_for_windows_already_past_are_refused() -> None:
    m = market(connectors=[connector("c1", POWER_W)])
    m.heartbeat(slot(2)[0])
    assert reason(m.posted("v1", "late", slot(1))) == "SLOT_IN_PAST"


def test_a_walk_up_arriving_late_in_its_slot_keeps_its_authorisation_through_the_grace() -> None:
    m = market(connectors=[connector("c1", POWER_W)])
    arrived = slot(1)[0] + 20 * MINUTE_MS  # already past slot start + grace
    m.heartbeat(arrived)
    reserved(m.walk_up("v1", "w1", arrived, slot(1)[1]))
    # the vehicle is at the connector: the next event a minute later must not release it
    assert m.heartbeat(arrived + MINUTE_MS).decisions == []
    assert m.state.reservations["res:w1"].status == "ACTIVE"
    released = m.heartbeat(arrived + GRACE_MS)
    assert [(k, p["reason_code"]) for k, p in pairs(released.decisions)] == [("SlotReleased", "NO_SHOW")]


# ---- capacity: faults, curtailments, restoration -----------------------------------------------


def test_a_fault_moves_a_reservation_to_another_free_connector_in_the_same_slot() -> None:
    m = market()
    reserved(m.posted("v1", "o1", slot(2), connector_id="c1"))
    outcome = m.capacity("c1", "FAULT", slot(2))
    assert outcome.rejection is None
    assert moves(outcome) == [("res:o1", "c2", slot(2)[0], "DISPLACED_FAULT")]
    p = outcome.decisions[0].payload
    assert (p["from_connector_id"], p["from_slot_start_at_ms"]) == ("c1", slot(2)[0])
    assert p["to_slot_stop_at_ms"] == slot(2)[1] and p["rules_version"] == RULES
    res = m.state.reservations["res:o1"]
    assert (res.connector_id, res.start_ms, res.stop_ms, res.status) == (
        "c2", *slot(2), "ACTIVE")


def test_a_fault_with_no_other_connector_free_moves_the_reservation_to_the_next_slot() -> None:
    m = market()
    reserved(m.posted("v1", "o1", slot(2), connector_id="c1"))
    reserved(m.posted("v2", "o2", slot(2), connector_id="c2"))
    outcome = m.capacity("c1", "FAULT", slot(2))
    assert moves(outcome) == [("res:o1", "c1", slot(3)[0], "DISPLACED_FAULT")]  # c1 is back then
    assert m.state.reservations["res:o2"].connector_id == "c2"  # untouched


def test_a_fault_with_nowhere_to_go_releases_the_reservation() -> None:
    m = market(connectors=[connector("c1", POWER_W)])
    reserved(m.posted("v1", "o1", slot(2)))
    outcome = m.capacity("c1", "FAULT", (slot(0)[0], HORIZON_END_MS))
    assert moves(outcome) == [] and releases(outcome) == [("res:o1", "DISPLACED_FAULT")]
    assert m.live() == []


def test_a_fault_near_the_horizon_end_releases_rather_than_moving_out_of_the_calendar() -> None:
    m = market(connectors=[connector("c1", POWER_W)])
    reserved(m.posted("v1", "o1", slot(SLOTS - 1)))
    assert releases(m.capacity("c1", "MAINTENANCE", slot(SLOTS - 1))) == [
        ("res:o1", "DISPLACED_MAINTENANCE")]


def test_same_slot_reallocation_does_not_shift_a_reservation_in_time() -> None:
    m = market(reallocation="SAME_SLOT_OTHER_CONNECTOR")
    reserved(m.posted("v1", "o1", slot(2), connector_id="c1"))
    reserved(m.posted("v2", "o2", slot(2), connector_id="c2"))
    outcome = m.capacity("c1", "FAULT", slot(2))
    assert moves(outcome) == [] and releases(outcome) == [("res:o1", "DISPLACED_FAULT")]


def test_with_reallocation_cancel_everything_a_fault_touches_is_released() -> None:
    m = market(reallocation="CANCEL")
    reserved(m.posted("v1", "o1", slot(1), connector_id="c1"))
    reserved(m.posted("v2", "o2", slot(3), connector_id="c1"))
    reserved(m.posted("v3", "o3", slot(5), connector_id="c1"))  # after the fault
    outcome = m.capacity("c1", "FAULT", slot(1, 3))  # c2 is free all along; CANCEL ignores it
    assert moves(outcome) == []
    assert releases(outcome) == [("res:o1", "DISPLACED_FAULT"), ("res:o2", "DISPLACED_FAULT")]
    assert [r.order_id for r in m.live()] == ["o3"]


def test_a_curtailment_displaces_only_the_reservations_that_no_longer_fit() -> None:
    m = market()
    reserved(m.posted("v1", "small", slot(1), energy_wh=5_000, connector_id="c1"))  # 10 kW
    reserved(m.posted("v2", "big", slot(2), energy_wh=20_000, connector_id="c1"))  # 40 kW
    reserved(m.posted("v3", "exact", slot(3), energy_wh=10_000, connector_id="c1"))  # 20 kW
    outcome = m.capacity("c1", "CURTAILMENT", slot(1, 3), available=True, power_w=20 * W_PER_KW)
    assert moves(outcome) == [("res:big", "c2", slot(2)[0], "DISPLACED_CURTAILMENT")]
    assert releases(outcome) == []
    assert {r.order_id: r.connector_id for r in m.live()} == {
        "small": "c1", "big": "c2", "exact": "c1"}
    # new bookings see the curtailed power too
    assert reason(m.posted("v4", "o4", slot(1), energy_wh=20_000, connector_id="c1")) == (
        "CONNECTOR_UNAVAILABLE")


CURTAILMENT_CASES = [
    # (rules, first booked, second booked, the one that keeps a place)
    ({}, {"curtailable": True}, {"curtailable": False}, "second"),
    ({}, {"curtailable": False}, {"curtailable": True}, "first"),
    ({}, {"demand_response_priority": 0}, {"demand_response_priority": 5}, "second"),
    ({"curtailment_order": "LATEST_BOOKED_FIRST"}, {"curtailable": True},
     {"curtailable": False}, "first"),
]


@pytest.mark.parametrize("rules,first,second,survivor", CURTAILMENT_CASES)
def test_displaced_reservations_pick_the_remaining_capacity_in_curtailment_order(
        rules: dict[str, Any], first: dict[str, Any], second: dict[str, Any],
        survivor: str) -> None:
    # Three slots, c2 booked in the first two: only c2 in the last slot is left for two evictees.
    m = market(**rules)
    assert m.publish(calendar_version=2, horizon_end_ms=slot(3)[0]).rejection is None
    reserved(m.posted("v1", "first", slot(0), connector_id="c1", **first))
    reserved(m.posted("v2", "second", slot(1), connector_id="c1", **second))
    reserved(m.posted("v3", "other-0", slot(0), connector_id="c2"))
    reserved(m.posted("v4", "other-1", slot(1), connector_id="c2"))
    outcome = m.capacity("c1", "FAULT", slot(0, 3))
    loser = "first" if survivor == "second" else "second"
    assert moves(outcome) == [(f"res:{survivor}", "c2", slot(2)[0], "DISPLACED_FAULT")]
    assert releases(outcome) == [(f"res:{loser}", "DISPLACED_FAULT")]
    assert kinds(outcome) == ["SlotReallocated", "SlotReleased"]  # the first pick goes first


def test_a_displaced_firm_booking_bumps_a_curtailable_one_of_the_same_window() -> None:
    m = market(reallocation="SAME_SLOT_OTHER_CONNECTOR")
    reserved(m.posted("v1", "flex", slot(2), connector_id="c1", curtailable=True))
    reserved(m.posted("v2", "firm", slot(2), connector_id="c2", demand_response_priority=5))
    outcome = m.capacity("c2", "CURTAILMENT", slot(2), available=True, power_w=5 * W_PER_KW)
    assert moves(outcome) == [("res:firm", "c1", slot(2)[0], "DISPLACED_CURTAILMENT")]
    assert releases(outcome) == [("res:flex", "DISPLACED_CURTAILMENT")]  # nowhere left for it
    assert [r.order_id for r in m.live()] == ["firm"]


def test_a_bumped_booking_is_itself_moved_on_when_the_rules_allow_the_next_slot() -> None:
    m = market()
    reserved(m.posted("v1", "flex", slot(2), connector_id="c1", curtailable=True))
    reserved(m.posted("v2", "firm", slot(2), connector_id="c2"))
    outcome = m.capacity("c2", "FAULT", slot(2))
    assert moves(outcome) == [("res:firm", "c1", slot(2)[0], "DISPLACED_FAULT"),
                              ("res:flex", "c1", slot(3)[0], "DISPLACED_FAULT")]
    assert releases(outcome) == []


def test_nobody_bumps_a_firm_booking_or_one_of_another_window() -> None:
    m = market(reallocation="SAME_SLOT_OTHER_CONNECTOR")
    reserved(m.posted("v1", "firm-a", slot(2), connector_id="c1"))
    reserved(m.posted("v2", "firm-b", slot(2), connector_id="c2"))
    reserved(m.posted("v3", "flex-long", slot(4, 2), connector_id="c1", curtailable=True))
    reserved(m.posted("v4", "firm-c", slot(4), connector_id="c2"))
    assert releases(m.capacity("c2", "FAULT", slot(2))) == [("res:firm-b", "DISPLACED_FAULT")]
    assert releases(m.capacity("c2", "FAULT", slot(4))) == [("res:firm-c", "DISPLACED_FAULT")]
    assert sorted(r.order_id for r in m.live()) == ["firm-a", "flex-long"]


def test_when_the_earliest_booked_picks_first_an_older_curtailable_booking_is_not_bumped() -> None:
    m = market(reallocation="SAME_SLOT_OTHER_CONNECTOR", curtailment_order="LATEST_BOOKED_FIRST")
    reserved(m.posted("v1", "flex-old", slot(2), connector_id="c1", curtailable=True))
    reserved(m.posted("v2", "firm-new", slot(2), connector_id="c2"))
    assert releases(m.capacity("c2", "FAULT", slot(2))) == [("res:firm-new", "DISPLACED_FAULT")]
    assert [r.order_id for r in m.live()] == ["flex-old"]


def test_restored_ends_an_outage_so_new_bookings_succeed_again() -> None:
    m = market(connectors=[connector("c1", POWER_W)])
    assert m.capacity("c1", "FAULT", (slot(0)[0], HORIZON_END_MS)).decisions == []
    assert reason(m.posted("v1", "o1", slot(3))) == "CONNECTOR_UNAVAILABLE"
    assert m.capacity("c1", "RESTORED", (slot(2)[0], HORIZON_END_MS), available=True,
                      power_w=POWER_W).rejection is None
    reserved(m.posted("v1", "o2", slot(3)))
    reserved(m.posted("v2", "o3", slot(2)))
    assert reason(m.posted("v3", "o4", slot(1))) == "CONNECTOR_UNAVAILABLE"  # still out then


def test_restoring_a_fault_leaves_a_maintenance_announced_for_later_in_place() -> None:
    m = market(connectors=[connector("c1", POWER_W)])
    assert m.capacity("c1", "FAULT", slot(0, 2)).rejection is None
    assert m.capacity("c1", "MAINTENANCE", slot(6, 2)).rejection is None
    fixed_at = slot(0)[0] + 20 * MINUTE_MS
    assert m.capacity("c1", "RESTORED", (fixed_at, slot(2)[0]), available=True,
                      power_w=POWER_W).rejection is None
    reserved(m.posted("v1", "o1", slot(1)))
    assert reason(m.posted("v2", "o2", slot(6))) == "CONNECTOR_UNAVAILABLE"


def test_booking_a_faulted_connector_is_unavailable_but_the_auto_pick_avoids_it() -> None:
    m = market()
    assert m.capacity("c1", "FAULT", slot(2, 2)).decisions == []
    assert reason(m.posted("v1", "o1", slot(3), connector_id="c1")) == "CONNECTOR_UNAVAILABLE"
    assert reason(m.posted("v1", "o2", slot(1, 2), connector_id="c1")) == "CONNECTOR_UNAVAILABLE"
    assert reserved(m.posted("v1", "o3", slot(3)))["connector_id"] == "c2"
    assert reserved(m.posted("v2", "o4", slot(4), connector_id="c1"))["connector_id"] == "c1"


def test_a_capacity_change_for_an_unknown_connector_or_an_empty_window_is_rejected() -> None:
    m = market()
    assert reason(m.capacity("c9", "FAULT", slot(1))) == "UNKNOWN_CONNECTOR"
    assert reason(m.capacity("c1", "FAULT", (slot(2)[0], slot(2)[0]))) == "INVALID_WINDOW"
    assert m.state.outages == []


# ---- cancellation ------------------------------------------------------------------------------


def test_the_owner_cancels_its_reservation_and_the_slot_is_free_again() -> None:
    m = market(connectors=[connector("c1", POWER_W)])
    reserved(m.posted("v1", "o1", slot(2)))
    outcome = m.cancel("v1", "res:o1")
    assert outcome.rejection is None
    assert releases(outcome) == [("res:o1", "CANCELLED_BY_VEHICLE")]
    assert outcome.decisions[0].payload["detail"] == "plans changed"
    assert reason(m.cancel("v1", "res:o1")) == "UNKNOWN_RESERVATION"  # released already
    reserved(m.posted("v2", "o2", slot(2)))


def test_another_vehicle_may_not_cancel_a_reservation() -> None:
    m = market()
    reserved(m.posted("v1", "o1", slot(2)))
    assert reason(m.cancel("v2", "res:o1")) == "NOT_YOUR_RESERVATION"
    assert m.state.reservations["res:o1"].status == "ACTIVE"
    assert reason(m.cancel("v2", "res:nothing")) == "UNKNOWN_RESERVATION"


# ---- determinism and state round-trips ---------------------------------------------------------


def story(m: Market) -> list[SignedEvent]:
    """A day at the station touching every rule; every event carries its own time."""
    t = PUBLISHED_AT_MS
    return [
        calendar(m.station),
        m.order("v1", "posted", "o1", slot(2), rate=POSTED, at_ms=t + 1_000, connector_id="c1"),
        m.order("v2", "posted", "o2", slot(2), rate=POSTED, at_ms=t + 2_000),
        m.order("v3", "bid", "b1", slot(4), rate="0.55", at_ms=t + 3_000),
        m.order("v4", "bid", "b2", slot(4), rate="0.60", at_ms=t + 4_000,
                demand_response_priority=2),
        m.order("v1", "bid", "b3", slot(4), rate="0.70", at_ms=t + 5_000),
        capacity_changed(m.station, connector_id="c1", available=False, from_ms=slot(2)[0],
                         until_ms=slot(2)[1], cause="FAULT", at_ms=t + 6_000),
        m.vehicles["v2"].sign(CANCELLATION, {"reservation_id": "res:o2",
                                             "station_id": STATION_ID, "reason": ""},
                              subject_key=STATION_ID, occurred_at_ms=t + 7_000),
        heartbeat(m.station, gate(4)),
        capacity_changed(m.station, connector_id="c2", available=True, power_w=10 * W_PER_KW,
                         from_ms=slot(4)[0], until_ms=slot(6)[0], cause="CURTAILMENT",
                         at_ms=gate(4) + 1_000),
        heartbeat(m.station, slot(3)[0] + GRACE_MS),
        heartbeat(m.station, slot(5)[0] + 20 * MINUTE_MS),
        m.order("v2", "walk_up", "w1", (0, slot(5)[1]), arrived_ms=slot(5)[0] + 20 * MINUTE_MS,
                at_ms=slot(5)[0] + 20 * MINUTE_MS),
        heartbeat(m.station, HORIZON_END_MS + ledger.FINISHED_KEPT_MS + 1),
    ]


def run(m: Market, state: ledger.LedgerState, events: list[SignedEvent]) -> list[str]:
    """Feed ``events`` into ``state``; the outcomes, printed exactly (Decimal digits included)."""
    return [repr(commands.handle(state, command_of(e), m.store)) for e in events]


def test_the_same_inputs_always_give_the_same_decisions_and_the_same_state_bytes() -> None:
    m = market(publish=False)
    events = story(m)
    first, second = ledger.LedgerState(STATION_ID), ledger.LedgerState(STATION_ID)
    outcomes = run(m, first, events)
    assert outcomes == run(m, second, events)
    assert ledger.dump_state(first) == ledger.dump_state(second)
    # and the story did exercise the rules it is meant to
    text = "\n".join(outcomes)
    for expected in ["SlotReserved", "SlotReallocated", "CANCELLED_BY_VEHICLE", "OUTBID",
                     "DISPLACED_CURTAILMENT", "NO_SHOW", "'walk_up': True"]:
        assert expected in text, expected
    assert first.reservations == {} and first.outages == []  # all pruned after two idle days


def test_a_dumped_state_loads_back_to_the_same_bytes_with_its_decimals() -> None:
    m = market(publish=False)
    events = story(m)
    state = ledger.LedgerState(STATION_ID)
    run(m, state, events[:9])  # mid-story: just after the auction for slot 4
    pending = m.order("v3", "bid", "b9", slot(7), rate="0.612345", at_ms=gate(4))
    run(m, state, [pending])  # and one bid still sealed
    raw = ledger.dump_state(state)
    loaded = ledger.load_state(raw)
    assert ledger.dump_state(loaded) == raw
    assert loaded == state
    assert loaded.bids[0].bid_rate_per_kwh == Decimal("0.612345")
    assert isinstance(loaded.bids[0].bid_rate_per_kwh, Decimal)
    rates = [r.rate_per_kwh for r in loaded.reservations.values()]
    assert rates and all(isinstance(r, Decimal) for r in rates)
    assert loaded.calendar is not None
    assert isinstance(loaded.calendar["posted_rate_per_kwh"], Decimal)
    assert loaded.calendar["filed_ceiling_per_kwh"] == Decimal(FILED_CEILING)
    # a worker that restarts from the stored bytes decides exactly as one that never stopped
    rest = events[9:]
    assert run(m, loaded, rest) == run(m, state, rest)
    assert ledger.dump_state(loaded) == ledger.dump_state(state)


def test_a_state_saved_before_bookings_recorded_their_time_still_loads() -> None:
    m = market()
    reserved(m.posted("v1", "o1", slot(2)))
    raw = ledger.dump_state(m.state).replace(b',"booked_at_ms":%d' % PUBLISHED_AT_MS, b"")
    assert b"booked_at_ms" not in raw
    old = ledger.load_state(raw)
    assert old.reservations["res:o1"].booked_at_ms == 0
    m.state = old  # the grace then runs from the slot start, as it always did
    assert m.heartbeat(slot(2)[0] + GRACE_MS - 1).decisions == []
    assert releases(m.heartbeat(slot(2)[0] + GRACE_MS)) == [("res:o1", "NO_SHOW")]


# ---- property: the ledger never double-books a connector ---------------------------------------

PROPERTY_CONNECTORS = [connector("c1", POWER_W), connector("c2", 22 * W_PER_KW, kind="AC_L2"),
                       connector("c3", 7 * W_PER_KW, kind="AC_L2")]
CONNECTOR_CHOICES = st.sampled_from(["", "c1", "c2", "c3"])
ENERGIES_WH = st.sampled_from([1_000, 3_000, 8_000, 20_000, 40_000])
VEHICLE_CHOICES = st.sampled_from(VEHICLES)
POSTED_OPS = st.tuples(st.just("posted"), VEHICLE_CHOICES, st.integers(0, SLOTS - 1),
                      st.integers(1, 3), ENERGIES_WH, CONNECTOR_CHOICES, st.booleans(),
                      st.integers(0, 3))
CAPACITY_OPS = st.tuples(st.just("capacity"), st.sampled_from(["c1", "c2", "c3"]),
                        st.sampled_from(["FAULT", "CURTAILMENT", "MAINTENANCE", "RESTORED"]),
                        st.integers(-30, SLOTS * 30), st.integers(1, 150),
                        st.sampled_from([0, 3_500, 11_000, 30_000]),
                        st.one_of(st.none(), st.integers(0, 30)))  # aim at a live booking
OPS = st.one_of(
    POSTED_OPS, POSTED_OPS,  # bookings twice as often, so capacity changes have work to do
    st.tuples(st.just("bid"), VEHICLE_CHOICES, st.integers(0, SLOTS - 1), st.integers(1, 2),
              ENERGIES_WH, CONNECTOR_CHOICES, st.sampled_from(["0.40", "0.55", "0.70"])),
    st.tuples(st.just("walk_up"), VEHICLE_CHOICES, st.integers(0, 120), ENERGIES_WH,
              CONNECTOR_CHOICES),
    CAPACITY_OPS, CAPACITY_OPS,
    st.tuples(st.just("cancel"), VEHICLE_CHOICES, st.integers(0, 30), st.booleans()),
    st.tuples(st.just("wait"), st.integers(0, 45)),
)


@functools.cache
def property_market(reallocation: str, curtailment_order: str) -> Market:
    """Built once per rule set (signing a world is the slow part); callers copy the state."""
    return market(connectors=PROPERTY_CONNECTORS, reallocation=reallocation,
                  curtailment_order=curtailment_order)


def op_event(m: Market, op: tuple[Any, ...], now: int, n: int) -> SignedEvent | None:
    kind = op[0]
    if kind == "posted":
        _, vehicle, first, count, energy, cid, curtailable, priority = op
        window = slot(first, min(count, SLOTS - first))
        return m.order(vehicle, "posted", f"o{n}", window, rate=POSTED, at_ms=now,
                       energy_wh=energy, connector_id=cid, curtailable=curtailable,
                       demand_response_priority=priority)
    if kind == "bid":
        _, vehicle, first, count, energy, cid, rate = op
        return m.order(vehicle, "bid", f"o{n}", slot(first, count), rate=rate, at_ms=now,
                       energy_wh=energy, connector_id=cid)
    if kind == "walk_up":
        _, vehicle, minutes, energy, cid = op
        return m.order(vehicle, "walk_up", f"o{n}", (now, now + minutes * MINUTE_MS), at_ms=now,
                       arrived_ms=now, energy_wh=energy, connector_id=cid)
    if kind == "capacity":
        _, cid, cause, from_min, length_min, power_w, aim = op
        start = HORIZON_START_MS + from_min * MINUTE_MS
        live = sorted(m.live(), key=lambda r: r.reservation_id)
        if aim is not None and live:
            target = live[aim % len(live)]
            cid, start = target.connector_id, target.start_ms + (from_min % 60 - 30) * MINUTE_MS
        return capacity_changed(m.station, connector_id=cid, available=cause != "FAULT",
                                power_w=power_w, from_ms=start,
                                until_ms=start + length_min * MINUTE_MS, cause=cause, at_ms=now)
    if kind == "cancel":
        _, vehicle, pick, own = op
        ids = sorted(m.state.reservations)
        if not ids:
            return None
        target = m.state.reservations[ids[pick % len(ids)]]
        author = m.vehicles[target.vehicle_id if own else vehicle]
        return author.sign(CANCELLATION, {"reservation_id": target.reservation_id,
                                          "station_id": STATION_ID, "reason": ""},
                           subject_key=STATION_ID, occurred_at_ms=now)
    return heartbeat(m.station, now)  # "wait": time passes


def check_invariants(state: ledger.LedgerState) -> None:
    cal = state.calendar
    assert cal is not None
    live = [r for r in state.reservations.values() if r.status in ledger.LIVE]
    for i, a in enumerate(live):
        for b in live[i + 1:]:
            assert not (a.connector_id == b.connector_id and a.start_ms < b.stop_ms
                        and b.start_ms < a.stop_ms), f"double booking: {a} and {b}"
    for r in state.reservations.values():
        assert cal["horizon_start_at_ms"] <= r.start_ms < r.stop_ms <= cal["horizon_end_at_ms"]
        assert (r.start_ms - HORIZON_START_MS) % SLOT_MS == 0, r
        assert (r.stop_ms - r.start_ms) % SLOT_MS == 0, r
        assert r.connector_id in cal["connectors"], r
    for r in live:  # a capacity loss never leaves an active booking it made infeasible
        assert state.capable(r.connector_id, r.start_ms, r.stop_ms, r.energy_wh), r


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=6, max_size=30),
       reallocation=st.sampled_from(["SAME_SLOT_OTHER_CONNECTOR_THEN_NEXT_SLOT",
                                     "SAME_SLOT_OTHER_CONNECTOR", "CANCEL"]),
       curtailment_order=st.sampled_from(["CURTAILABLE_FIRST_LOWEST_PRIORITY_FIRST",
                                          "LATEST_BOOKED_FIRST"]))
def test_no_connector_is_ever_double_booked_and_every_booking_is_on_the_grid(
        ops: list[tuple[Any, ...]], reallocation: str, curtailment_order: str) -> None:
    base = property_market(reallocation, curtailment_order)
    m = dataclasses.replace(base, state=ledger.load_state(ledger.dump_state(base.state)))
    now = HORIZON_START_MS - 20 * MINUTE_MS  # bids for all but the first slot are still open
    for n, op in enumerate(ops):
        if op[0] == "wait":
            now += op[1] * MINUTE_MS
        event = op_event(m, op, now, n)
        if event is None:
            continue
        outcome = m.feed(event)
        assert outcome.rejection is None or outcome.rejection.reason != "UNSUPPORTED_EVENT"
        check_invariants(m.state)


def test_state_encoding_is_the_dataclass_encoding_and_round_trips() -> None:
    """``dump_state`` encodes reservations, bids and outages from their ``__dict__`` (fast); the
    bytes are those of the ``dataclasses.asdict`` encoding states were written with before."""
    m = market()
    assert m.posted("v1", "o1", slot(1)).rejection is None
    assert m.bid("v2", "o2", slot(5), "0.50").rejection is None
    m.capacity("c1", "MAINTENANCE", slot(6))
    state = m.state
    assert state.reservations and state.bids and state.outages
    data = {
        "station_id": state.station_id, "calendar": state.calendar,
        "reservations": [dataclasses.asdict(r) for r in state.reservations.values()],
        "bids": [dataclasses.asdict(b) for b in state.bids],
        "outages": [dataclasses.asdict(o) for o in state.outages],
        "clock_ms": state.clock_ms, "station_clock_ms": state.station_clock_ms, "seq": state.seq,
        "applied_through_offset": state.applied_through_offset, "extra": state.extra,
    }
    expected = json.dumps(data, default=ledger._json_default, separators=(",", ":")).encode()
    assert ledger.dump_state(state) == expected
    assert ledger.load_state(expected) == state
