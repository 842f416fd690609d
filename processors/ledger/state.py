"""The slot ledger (M4, M5): one station's calendar, reservations and the decisions they cause.

Pure and deterministic: ``apply(state, command, view, handler)`` returns the decisions an
admitted input causes and folds them into ``state`` through ``evolve`` (the handler of each
command is found in one table, ``ledger.commands.COMMANDS``). No Kafka, no clock: time is the
station's event time (the largest ``occurred_at_ms`` its admitted inputs carried, heartbeats
included), so replaying the same inputs in the same order always gives the same ledger.

Allocation rules come from the signed ``AllocationRulesPublished`` the station's calendar names
and are copied into the ledger when the calendar is published:

* posted-price acceptances are served first come, first served in ledger order;
* bids for a window are sealed until ``slot_start - bid_gate_closure_ms``; then, per
  ``bid_resolution``, the highest bid (ties: earliest) wins, demand-response priority first when
  ``demand_response_priority_wins``; the others are rejected ``OUTBID``;
* a reservation with no connector handshake by ``slot_start + no_show_grace_ms`` is released
  ``NO_SHOW`` (the grace runs from the booking instead when that came after the slot began);
* a capacity loss displaces reservations it makes infeasible; they get first pick in the order
  ``curtailment_order`` gives, are moved per ``reallocation`` (another connector in the same
  window, then the next windows) and otherwise cancelled with a reason.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol

from chargemesh.processors.decisions import Decision, DecisionType, decided
from chargemesh.processors.ledger import claims
from chargemesh.processors.reasons import Reason, Rejection, displaced
from chargemesh.processors.statuses import (
    BidResolution,
    CapacityCause,
    CurtailmentOrder,
    Reallocation,
    RepriceStatus,
    ReservationStatus,
    SessionStatus,
    StopReason,
)
from chargemesh.units import DAY_MS, HOUR_MS, MINUTE_MS

SLOTS_PER_ORDER_MAX = 96
CONNECTORS_PER_STATION_MAX = 64
RESERVATIONS_LIVE_MAX = 50_000
BIDS_PENDING_MAX = 10_000
OUTAGES_LIVE_MAX = 1_000
REALLOCATION_SHIFT_SLOTS_MAX = 8
# Bumps chain (a displaced booking bumps a curtailable one, which is displaced in turn).
DISPLACEMENT_STEPS_MAX = 1_000
# Finished reservations stay in the live ledger this long after their slot ends (then only in
# the lineage and ClickHouse): bounds the state of a station that runs for years.
FINISHED_KEPT_MS = 2 * DAY_MS
LIVE = (ReservationStatus.ACTIVE, ReservationStatus.ARRIVED)
# Bound once: on Python 3.11 reading an enum member off its class costs ~60 ns, and the scans
# below compare every reservation (or session) of the station on every event.
ACTIVE = ReservationStatus.ACTIVE
SESSIONS_FINISHED = (SessionStatus.FINAL, SessionStatus.VOID, SessionStatus.EXPIRED,
                     SessionStatus.INADMISSIBLE)
# M6: how long a vehicle has to answer a RepriceProposed when the rules declare nothing (rules
# published before AllocationRulesPublished.reprice_response_ms existed).
REPRICE_RESPONSE_MS_DEFAULT = 5 * MINUTE_MS
# A vehicle's timestamp may move a station's ledger clock this far past the station's own.
VEHICLE_CLOCK_LEAD_MS_MAX = 2 * MINUTE_MS
# The event types a station signs on its own clock (full event types: the version counts).
STATION_CLOCK_EVENTS = frozenset({
    "chargemesh.capacity.v1.SlotCalendarPublished", "chargemesh.capacity.v1.CapacityChanged",
    "chargemesh.capacity.v1.StationHeartbeat",
    "chargemesh.session.v1.ConnectorHandshakeCompleted",
    "chargemesh.session.v1.MeterReadingRecorded", "chargemesh.session.v1.MeterClosedOut",
})


class GovernanceView(Protocol):
    """What the ledger reads from the trust state (a TrustStore satisfies it)."""

    tariffs: dict[str, dict[str, Any]]
    rules: dict[str, dict[str, Any]]

    def is_rate_authority(self, authority_id: str, at_ms: int) -> bool: ...

    def tariff_schedule(self, tariff_id: str) -> list[dict[str, Any]]: ...

    def grid_program(self, grid_zone_id: str, at_ms: int) -> dict[str, Any] | None: ...

    def home_authority(self, credential_id: str, at_ms: int) -> str | None: ...

    def has_reciprocity(self, authority_a: str, authority_b: str, at_ms: int) -> bool: ...


@dataclasses.dataclass
class Reservation:
    reservation_id: str
    order_id: str
    vehicle_credential_id: str
    vehicle_id: str
    connector_id: str
    start_ms: int
    stop_ms: int
    rate_per_kwh: Decimal
    energy_wh: int
    dr_priority: int
    curtailable: bool
    walk_up: bool
    seq: int
    status: ReservationStatus = ReservationStatus.ACTIVE
    session_id: str = ""
    ceiling_rate_per_kwh: Decimal | None = None  # the vehicle's signed ceiling (re-price bound)
    booked_at_ms: int = 0  # ledger time of the booking; 0 in states saved before it existed
    overrun_allowed: bool = False  # C2: the claim lets energy beyond energy_wh be billed


@dataclasses.dataclass
class Bid:
    order_id: str
    vehicle_credential_id: str
    vehicle_id: str
    connector_id: str
    start_ms: int
    stop_ms: int
    bid_rate_per_kwh: Decimal
    energy_wh: int
    dr_priority: int
    curtailable: bool
    seq: int
    ceiling_rate_per_kwh: Decimal | None = None
    overrun_allowed: bool = False  # C2: the claim lets energy beyond energy_wh be billed


@dataclasses.dataclass
class Outage:
    connector_id: str
    from_ms: int
    until_ms: int
    power_w: int  # 0 = offline
    cause: str
    # The grid event (operator's or observer quorum's) that imposed it; "" for the station's own
    # capacity changes. A grid RESTORED lifts only the operator's (ledger/power.py).
    grid_event_id: str = ""


@dataclasses.dataclass
class LedgerState:
    station_id: str
    calendar: dict[str, Any] | None = None
    reservations: dict[str, Reservation] = dataclasses.field(default_factory=dict)
    bids: list[Bid] = dataclasses.field(default_factory=list)
    outages: list[Outage] = dataclasses.field(default_factory=list)
    clock_ms: int = 0
    station_clock_ms: int = 0  # the latest time the station itself signed
    seq: int = 0
    applied_through_offset: int = -1
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # sessions (M6) live here

    # ---- calendar geometry ------------------------------------------------------------------

    @property
    def rules(self) -> dict[str, Any]:
        return self.calendar["rules"] if self.calendar else {}

    def connector(self, connector_id: str) -> dict[str, Any] | None:
        return self.calendar["connectors"].get(connector_id) if self.calendar else None

    def window_problem(self, start_ms: int, stop_ms: int) -> Rejection | None:
        cal = self.calendar
        if cal is None:
            return Rejection(Reason.NO_CALENDAR,
                             f"station {self.station_id} has published no calendar")
        slot = cal["slot_duration_ms"]
        if not cal["horizon_start_at_ms"] <= start_ms < stop_ms <= cal["horizon_end_at_ms"]:
            return Rejection(Reason.SLOT_OUTSIDE_CALENDAR,
                             f"[{start_ms}, {stop_ms}) is outside the "
                             f"calendar [{cal['horizon_start_at_ms']}, {cal['horizon_end_at_ms']})")
        if (start_ms - cal["horizon_start_at_ms"]) % slot or (stop_ms - start_ms) % slot:
            return Rejection(Reason.SLOT_MISALIGNED, f"window is not on the {slot} ms slot grid")
        if (stop_ms - start_ms) // slot > SLOTS_PER_ORDER_MAX:
            return Rejection(Reason.WINDOW_TOO_LONG, f"more than {SLOTS_PER_ORDER_MAX} slots")
        return None

    def power_w(self, connector_id: str, start_ms: int, stop_ms: int) -> int:
        """The connector's power over the window, after outages and curtailments."""
        info = self.connector(connector_id)
        if info is None:
            return 0
        power = int(info["power_w"])
        for outage in self.outages:
            if outage.connector_id == connector_id and outage.from_ms < stop_ms and (
                start_ms < outage.until_ms
            ):
                power = min(power, outage.power_w)
        return power

    def holder(self, connector_id: str, start_ms: int, stop_ms: int,
               ignore: str = "") -> Reservation | None:
        for res in self.reservations.values():
            if (res.status in LIVE and res.connector_id == connector_id
                    and res.start_ms < stop_ms and start_ms < res.stop_ms
                    and res.reservation_id != ignore):
                return res
        return None

    def capable(self, connector_id: str, start_ms: int, stop_ms: int, energy_wh: int) -> bool:
        power = self.power_w(connector_id, start_ms, stop_ms)
        return power > 0 and energy_wh * HOUR_MS <= power * (stop_ms - start_ms)

    def connector_ids(self) -> list[str]:
        return sorted(self.calendar["connectors"]) if self.calendar else []


# ---- evolve: decisions folded into the state ------------------------------------------------


def evolve(state: LedgerState, decision: Decision) -> None:
    kind, p = decision.event_type, decision.payload
    if kind == DecisionType.SLOT_RESERVED:
        own = decision.private
        state.seq += 1
        state.reservations[p["reservation_id"]] = Reservation(
            reservation_id=p["reservation_id"], order_id=p["order_id"],
            vehicle_credential_id=p["vehicle_credential_id"], vehicle_id=own["vehicle_id"],
            connector_id=p["connector_id"], start_ms=p["slot_start_at_ms"],
            stop_ms=p["slot_stop_at_ms"], rate_per_kwh=p["rate_per_kwh"],
            energy_wh=p["energy_wh"], dr_priority=own["dr_priority"],
            curtailable=own["curtailable"], walk_up=p["walk_up"], seq=state.seq,
            ceiling_rate_per_kwh=own["ceiling"], booked_at_ms=own["booked_at_ms"],
            overrun_allowed=bool(p.get("overrun_allowed", False)),
        )
        state.bids = [b for b in state.bids if b.order_id != p["order_id"]]
    elif kind == DecisionType.SLOT_RELEASED:
        res = state.reservations.get(p["reservation_id"])
        if res is not None:
            res.status = ReservationStatus.RELEASED
    elif kind == DecisionType.SLOT_REALLOCATED:
        res = state.reservations[p["reservation_id"]]
        res.connector_id = p["to_connector_id"]
        duration = res.stop_ms - res.start_ms
        res.start_ms = p["to_slot_start_at_ms"]
        res.stop_ms = res.start_ms + duration
    elif kind == DecisionType.ORDER_REJECTED:
        state.bids = [b for b in state.bids if b.order_id != p["order_id"]]


def _emit(state: LedgerState, out: list[Decision], decision: Decision) -> None:
    evolve(state, decision)
    out.append(decision)


# ---- decide ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Command:
    event_type: str
    payload: dict[str, Any]
    occurred_at_ms: int
    author_id: str
    event_id: str
    event_hash: bytes = b""


@dataclasses.dataclass
class Outcome:
    decisions: list[Decision]
    rejection: Rejection | None = None
    # Order the rejection concerns (for an OrderRejected decision on the feed), if any.
    rejected_order: dict[str, Any] | None = None


# A command's handler: checks the command, appends what it decides to ``out`` (each decision
# folded into the state through ``evolve`` as it is made) and returns why it refused, or None.
Handler = Callable[[LedgerState, Command, GovernanceView, list[Decision]], "Rejection | None"]


def apply(state: LedgerState, cmd: Command, view: GovernanceView,
          handler: Handler | None) -> Outcome:
    """Decide what an admitted input does to the ledger with its command's ``handler`` (None:
    the ledger has none for its event type), and apply it. The ledger's commands are looked up
    in one table, ``ledger.commands.COMMANDS``; ``commands.handle`` is the entry point."""
    out: list[Decision] = []
    _advance_clock(state, _clock_target(state, cmd), out)
    if handler is None:
        return Outcome(out, Rejection(Reason.UNSUPPORTED_EVENT, f"{cmd.event_type} is not for the "
                                      "slot ledger"))
    rejection = handler(state, cmd, view, out)
    outcome = Outcome(out, rejection)
    if rejection is not None and "order_id" in cmd.payload:
        outcome.rejected_order = cmd.payload
    _prune(state)
    return outcome


def _clock_target(state: LedgerState, cmd: Command) -> int:
    """How far this input may move the station's clock.

    The station's own signed events (heartbeats, calendar, capacity, session evidence) carry its
    clock. Anyone else's timestamp may lead it by at most VEHICLE_CLOCK_LEAD_MS_MAX, so a
    future-dated order cannot close auctions or release bookings as no-shows.
    """
    if cmd.event_type in STATION_CLOCK_EVENTS:
        state.station_clock_ms = max(state.station_clock_ms, cmd.occurred_at_ms)
        return cmd.occurred_at_ms
    return min(cmd.occurred_at_ms, state.station_clock_ms + VEHICLE_CLOCK_LEAD_MS_MAX)


def _advance_clock(state: LedgerState, at_ms: int, out: list[Decision]) -> None:
    if at_ms <= state.clock_ms:
        return
    state.clock_ms = at_ms
    if state.calendar is None:
        return
    gate = state.rules["bid_gate_closure_ms"]
    due = sorted({(b.start_ms, b.stop_ms) for b in state.bids if b.start_ms - gate <= at_ms})
    for start_ms, stop_ms in due:
        _resolve_auction(state, start_ms, stop_ms, out)
    grace = state.rules["no_show_grace_ms"]
    # Filter before sorting (this runs for every event, over every reservation): releasing one
    # changes only its own status, so the due set cannot change inside the loop.
    due_res = [res for res in state.reservations.values()
               if res.status == ACTIVE and _no_show_at_ms(res, grace) <= at_ms]
    for res in sorted(due_res, key=lambda r: r.seq):
        deadline_ms = _no_show_at_ms(res, grace)
        _emit(state, out, released(state, res, Reason.NO_SHOW, f"no handshake by {deadline_ms}"))
    _stop_unanswered_reprices(state, at_ms, out)


# ---- re-price deadlines (M6, issue 16) --------------------------------------------------------
# A RepriceProposed carries its respond_by_ms (the ledger's clock when it proposed + the rules'
# reprice_response_ms). Once the clock passes it with the proposal unanswered, the ledger stops
# the session itself at the deadline: a signed SessionStopped (REPRICE_REFUSED, reason_code
# REPRICE_UNANSWERED), and the session settles up to that moment (nothing metered after it).


def reprice_response_ms(state: LedgerState) -> int:
    return int(state.rules.get("reprice_response_ms") or REPRICE_RESPONSE_MS_DEFAULT)


def note_reprice_deadline(state: LedgerState, respond_by_ms: int) -> None:
    """Remember the earliest open deadline, so the clock's advance scans sessions only when one
    is due (this runs for every event)."""
    due = state.extra.get("reprice_due_ms")
    state.extra["reprice_due_ms"] = respond_by_ms if due is None else min(due, respond_by_ms)


def _stop_unanswered_reprices(state: LedgerState, at_ms: int, out: list[Decision]) -> None:
    due_ms = state.extra.get("reprice_due_ms")
    if due_ms is None or at_ms < due_ms:
        return
    due, later = [], []
    for s in state.extra.get("sessions", {}).values():
        if s["status"] != SessionStatus.ACTIVE:
            continue
        open_by = [rp["respond_by_ms"] for rp in s["reprices"]
                   if rp["status"] == RepriceStatus.PROPOSED and rp.get("respond_by_ms")]
        if open_by and min(open_by) <= at_ms:
            due.append((min(open_by), s["session_id"], s))
        elif open_by:
            later.append(min(open_by))
    state.extra.pop("reprice_due_ms")
    if later:
        state.extra["reprice_due_ms"] = min(later)
    for deadline_ms, _, s in sorted(due, key=lambda d: (d[0], d[1])):
        stop_by_ledger(state, s, deadline_ms, Reason.REPRICE_UNANSWERED, out)


def stop_by_ledger(state: LedgerState, s: dict[str, Any], stopped_at_ms: int, reason: Reason,
                   out: list[Decision]) -> None:
    """The ledger stops an active session over its price (an unanswered re-price, or a price in
    force above the vehicle's ceiling): a signed ``SessionStopped`` naming ``reason``; nothing
    metered after the stop is billed (its readings and close-out must be at or before it).
    Never before the session's last reading, which the ledger has already admitted."""
    last_at = s["readings"][-1][1] if s["readings"] else s["started_at_ms"]
    at_ms = max(stopped_at_ms, last_at)
    s.update(status=SessionStatus.STOPPED, stopped_at_ms=at_ms,
             stop_reason=StopReason.REPRICE_REFUSED, billed_until_ms=at_ms, stop_code=reason)
    for rp in s["reprices"]:
        if rp["status"] == RepriceStatus.PROPOSED:
            rp["status"] = RepriceStatus.REFUSED
    _emit(state, out, decided(DecisionType.SESSION_STOPPED, {
        "session_id": s["session_id"], "station_id": state.station_id, "stopped_at_ms": at_ms,
        "reason": StopReason.REPRICE_REFUSED, "reason_code": reason}))


def _no_show_at_ms(res: Reservation, grace_ms: int) -> int:
    """The grace runs from the slot's start, or from the booking when that came later: a walk-up
    arriving late in its slot must still get the time to plug in."""
    return max(res.start_ms, res.booked_at_ms) + grace_ms


def _prune(state: LedgerState) -> None:
    horizon = state.clock_ms - FINISHED_KEPT_MS
    for rid in [r.reservation_id for r in state.reservations.values()
                if r.stop_ms < horizon and r.status not in LIVE]:
        del state.reservations[rid]
    live_sessions = state.extra.get("sessions", {})
    for sid in [sid for sid, s in live_sessions.items()
                if s["status"] in SESSIONS_FINISHED and s["booked_stop_ms"] < horizon]:
        del live_sessions[sid]
    state.outages = [o for o in state.outages if o.until_ms >= horizon]


def released(state: LedgerState, res: Reservation, reason: Reason,
             detail: str = "") -> Decision:
    """The ``SlotReleased`` decision for ``res``, released for ``reason``."""
    return decided(DecisionType.SLOT_RELEASED, {
        "reservation_id": res.reservation_id, "station_id": state.station_id,
        "connector_id": res.connector_id, "slot_start_at_ms": res.start_ms,
        "slot_stop_at_ms": res.stop_ms, "reason_code": reason, "detail": detail})


def _reserved(state: LedgerState, order: Bid, connector_id: str, rate: Decimal,
              walk_up: bool) -> Decision:
    return decided(DecisionType.SLOT_RESERVED, {
        "reservation_id": f"res:{order.order_id}", "order_id": order.order_id,
        "vehicle_credential_id": order.vehicle_credential_id, "station_id": state.station_id,
        "connector_id": connector_id, "slot_start_at_ms": order.start_ms,
        "slot_stop_at_ms": order.stop_ms, "rate_per_kwh": rate, "energy_wh": order.energy_wh,
        "rules_version": state.rules["rules_version"], "walk_up": walk_up,
        "overrun_allowed": order.overrun_allowed,
    }, private={  # what evolve() needs to hold the booking; not on the wire
        "vehicle_id": order.vehicle_id, "dr_priority": order.dr_priority,
        "curtailable": order.curtailable, "booked_at_ms": state.clock_ms,
        "ceiling": order.ceiling_rate_per_kwh,
    })


def _pick_connector(state: LedgerState, order: Bid) -> str | Rejection:
    wanted = [order.connector_id] if order.connector_id else state.connector_ids()
    if order.connector_id and state.connector(order.connector_id) is None:
        return Rejection(Reason.UNKNOWN_CONNECTOR, f"{order.connector_id} is not in the calendar")
    unavailable = True
    for cid in wanted:
        if not state.capable(cid, order.start_ms, order.stop_ms, order.energy_wh):
            continue
        unavailable = False
        if state.holder(cid, order.start_ms, order.stop_ms) is None:
            return cid
    if unavailable:
        return Rejection(Reason.CONNECTOR_UNAVAILABLE, "no connector can deliver "
                         f"{order.energy_wh} Wh in [{order.start_ms}, {order.stop_ms}) "
                         "(faulted, curtailed or too little power)")
    return Rejection(Reason.SLOT_TAKEN, f"every capable connector is booked in "
                     f"[{order.start_ms}, {order.stop_ms})")


def _order_from(cmd: Command, state: LedgerState, rate_field: str,
                view: GovernanceView) -> Bid | Rejection:
    """Common checks of an order's identity and claim; returns it as a Bid."""
    p = cmd.payload
    ident, claim = p["identity"], p["claim"]
    cal = state.calendar
    if cal is None:
        return Rejection(Reason.NO_CALENDAR,
                         f"station {state.station_id} has published no calendar")
    if ident["vehicle_credential_id"] != cmd.author_id:
        return Rejection(Reason.SUBJECT_MISMATCH,
                         "identity.vehicle_credential_id is not the author")
    if ident["rate_authority_id"] != cal["rate_authority_id"]:
        return Rejection(Reason.RATE_AUTHORITY_MISMATCH, f"station files under "
                         f"{cal['rate_authority_id']}, order names {ident['rate_authority_id']}")
    revoked_at = state.extra.get("station_revoked_at_ms")
    if revoked_at is not None and max(cmd.occurred_at_ms, claim["slot_stop_at_ms"]) > revoked_at:
        return Rejection(Reason.STATION_REVOKED,
                         f"the station's credential is revoked from {revoked_at}")
    roaming = roaming_problem(view, cmd.author_id, cal["rate_authority_id"], cmd.occurred_at_ms)
    if roaming is not None:
        return roaming
    if claim["currency"] != cal["currency"]:
        return Rejection(Reason.CURRENCY_MISMATCH, f"station settles in {cal['currency']}")
    if claim["energy_wh"] <= 0:
        return Rejection(Reason.INVALID_ENERGY, "energy_wh must be positive")
    terms = _claim_terms_problem(view, cal["tariff_id"], claim)
    if terms is not None:
        return terms
    if any(r.order_id == p["order_id"] for r in state.reservations.values()) or any(
            b.order_id == p["order_id"] for b in state.bids):
        return Rejection(Reason.DUPLICATE_ORDER, f"order {p['order_id']} is already on the ledger")
    rate = p.get(rate_field, Decimal(0))
    flags = claim["grid_flags"]
    return Bid(order_id=p["order_id"], vehicle_credential_id=cmd.author_id,
               vehicle_id=ident["vehicle_id"], connector_id=ident["connector_id"],
               start_ms=claim["slot_start_at_ms"], stop_ms=claim["slot_stop_at_ms"],
               bid_rate_per_kwh=rate, energy_wh=claim["energy_wh"],
               dr_priority=flags["demand_response_priority"], curtailable=flags["curtailable"],
               seq=state.seq, ceiling_rate_per_kwh=claim["ceiling_rate_per_kwh"],
               overrun_allowed=bool(claim.get("overrun_allowed", False)))


def _claim_terms_problem(view: GovernanceView, tariff_id: str,
                         claim: dict[str, Any]) -> Rejection | None:
    """C2 against M3: the claim's adders are the filed tariff's, which is in force over the
    claimed window (``ledger.claims``)."""
    filed = view.tariffs.get(tariff_id)
    if filed is None:
        return Rejection(Reason.UNKNOWN_TARIFF, f"{tariff_id} is not filed")
    schedule = view.tariff_schedule(tariff_id) or [filed]
    in_force = claims.filing_in_force(schedule, claim["slot_start_at_ms"])
    return claims.adders_problem(in_force, claim.get("adders") or []) or (
        claims.in_force_problem(schedule, claim["slot_start_at_ms"], claim["slot_stop_at_ms"]))


def roaming_problem(view: GovernanceView, vehicle_credential_id: str, rate_authority_id: str,
                    at_ms: int) -> Rejection | None:
    """P1: a vehicle credentialed under another authority than the one the station files under
    may charge only while a reciprocity agreement between the two authorities is in force."""
    home = view.home_authority(vehicle_credential_id, at_ms)
    station_home = view.home_authority(rate_authority_id, at_ms)
    if home is None or station_home is None or home == station_home:
        return None
    if view.has_reciprocity(home, station_home, at_ms):
        return None
    return Rejection(Reason.NO_RECIPROCITY,
                     f"vehicle credentialed under {home}, station files under "
                     f"{station_home}: no reciprocity agreement in force at {at_ms}")


def _past_problem(state: LedgerState, order: Bid) -> Rejection | None:
    if order.start_ms < state.clock_ms:
        return Rejection(Reason.SLOT_IN_PAST, f"window starts {order.start_ms}, station time is "
                         f"{state.clock_ms}")
    return None


def accept_posted_price(state: LedgerState, cmd: Command, view: GovernanceView,
                   out: list[Decision]) -> Rejection | None:
    order = _order_from(cmd, state, "accepted_rate_per_kwh", view)
    if isinstance(order, Rejection):
        return order
    problem = state.window_problem(order.start_ms, order.stop_ms) or _past_problem(state, order)
    if problem is not None:
        return problem
    posted = Decimal(state.calendar["posted_rate_per_kwh"])  # type: ignore[index]
    if order.bid_rate_per_kwh != posted:
        return Rejection(Reason.PRICE_MISMATCH, f"posted price is {posted}, accepted "
                         f"{order.bid_rate_per_kwh}")
    return _reserve_at_posted(state, cmd, order, posted, False, out)


def place_bid(state: LedgerState, cmd: Command, view: GovernanceView,
               out: list[Decision]) -> Rejection | None:
    order = _order_from(cmd, state, "bid_rate_per_kwh", view)
    if isinstance(order, Rejection):
        return order
    problem = state.window_problem(order.start_ms, order.stop_ms)  # past => BIDDING_CLOSED below
    if problem is not None:
        return problem
    ceiling = cmd.payload["claim"]["ceiling_rate_per_kwh"]
    filed = Decimal(state.calendar["filed_ceiling_per_kwh"])  # type: ignore[index]
    if order.bid_rate_per_kwh > ceiling:
        return Rejection(Reason.BID_ABOVE_OWN_CEILING,
                         f"bid {order.bid_rate_per_kwh} > ceiling {ceiling}")
    if order.bid_rate_per_kwh > filed:
        return Rejection(Reason.ABOVE_FILED_CEILING,
                         f"bid {order.bid_rate_per_kwh} exceeds the rate "
                         f"authority's filed ceiling {filed}")
    if order.bid_rate_per_kwh <= 0:
        return Rejection(Reason.INVALID_RATE, "bid must be positive")
    # Late by its own signed time, or by the station's: either way the auction is closed.
    if order.start_ms - state.rules["bid_gate_closure_ms"] <= max(state.clock_ms,
                                                                   cmd.occurred_at_ms):
        return Rejection(Reason.BIDDING_CLOSED, f"bids for {order.start_ms} closed")
    if len(state.bids) >= BIDS_PENDING_MAX:
        return Rejection(Reason.LEDGER_FULL, f"{BIDS_PENDING_MAX} bids pending")
    candidates = [order.connector_id] if order.connector_id else state.connector_ids()
    if not any(state.capable(c, order.start_ms, order.stop_ms, order.energy_wh)
               for c in candidates):
        return Rejection(Reason.CONNECTOR_UNAVAILABLE, "no connector can serve this window")
    state.seq += 1
    state.bids.append(dataclasses.replace(order, seq=state.seq))
    return None


def _bid_rank(state: LedgerState) -> Callable[[Bid], tuple[Any, ...]]:
    rules = state.rules
    dr = rules["demand_response_priority_wins"]
    if rules["bid_resolution"] == BidResolution.EARLIEST:
        return lambda b: ((-b.dr_priority if dr else 0), b.seq)
    return lambda b: ((-b.dr_priority if dr else 0), -b.bid_rate_per_kwh, b.seq)


def _resolve_auction(state: LedgerState, start_ms: int, stop_ms: int,
                     out: list[Decision]) -> None:
    bids = sorted((b for b in state.bids if (b.start_ms, b.stop_ms) == (start_ms, stop_ms)),
                  key=_bid_rank(state))
    won_any = False
    for bid in bids:
        connector = _pick_connector(state, bid)
        if isinstance(connector, Rejection):
            reason = (Reason.OUTBID if won_any and connector.reason == Reason.SLOT_TAKEN
                      else connector.reason)
            _emit(state, out, decided(DecisionType.ORDER_REJECTED, {
                "order_id": bid.order_id, "station_id": state.station_id,
                "vehicle_credential_id": bid.vehicle_credential_id, "reason_code": reason,
                "detail": connector.detail}))
            continue
        won_any = True
        _emit(state, out, _reserved(state, bid, connector, bid.bid_rate_per_kwh, walk_up=False))


def request_walk_up(state: LedgerState, cmd: Command, view: GovernanceView,
             out: list[Decision]) -> Rejection | None:
    order = _order_from(cmd, state, "_none", view)
    if isinstance(order, Rejection):
        return order
    cal = state.calendar
    if cal is None:  # _order_from has refused it already; this narrows the type
        return Rejection(Reason.NO_CALENDAR,
                         f"station {state.station_id} has published no calendar")
    slot, base = cal["slot_duration_ms"], cal["horizon_start_at_ms"]
    arrived = cmd.payload["arrived_at_ms"]
    if abs(arrived - cmd.occurred_at_ms) > VEHICLE_CLOCK_LEAD_MS_MAX:
        return Rejection(Reason.INVALID_ARRIVAL, "arrived_at_ms is not the request's own time")
    start = base + ((arrived - base) // slot) * slot
    wanted_stop = max(cmd.payload["claim"]["slot_stop_at_ms"], start + slot)
    stop = base + -(-(wanted_stop - base) // slot) * slot
    if stop - arrived > state.rules["walk_up_horizon_ms"]:
        return Rejection(Reason.WINDOW_TOO_LONG, f"walk-ups are authorised for at most "
                         f"{state.rules['walk_up_horizon_ms']} ms")
    order = dataclasses.replace(order, start_ms=start, stop_ms=stop)
    problem = state.window_problem(start, stop)
    if problem is not None:
        return problem
    return _reserve_at_posted(state, cmd, order, Decimal(cal["posted_rate_per_kwh"]), True, out)


def _reserve_at_posted(state: LedgerState, cmd: Command, order: Bid, posted: Decimal,
                       walk_up: bool, out: list[Decision]) -> Rejection | None:
    """Posted-price booking (acceptance or walk-up): within the ceiling, on a free connector."""
    ceiling = cmd.payload["claim"]["ceiling_rate_per_kwh"]
    if posted > ceiling:
        return Rejection(Reason.ABOVE_CEILING, f"posted {posted} exceeds the vehicle's ceiling "
                         f"{ceiling}")
    connector = _pick_connector(state, order)
    if isinstance(connector, Rejection):
        return connector
    _emit(state, out, _reserved(state, order, connector, posted, walk_up=walk_up))
    return None


def cancel_reservation(state: LedgerState, cmd: Command, view: GovernanceView,
            out: list[Decision]) -> Rejection | None:
    res = state.reservations.get(cmd.payload["reservation_id"])
    if res is None or res.status not in LIVE:
        return Rejection(Reason.UNKNOWN_RESERVATION, f"{cmd.payload['reservation_id']} is not live")
    if res.vehicle_credential_id != cmd.author_id:
        return Rejection(Reason.NOT_YOUR_RESERVATION, "only the reserving vehicle may cancel")
    if res.status == ReservationStatus.ARRIVED:
        return Rejection(Reason.SESSION_IN_PROGRESS, "stop the session instead")
    _emit(state, out, released(state, res, Reason.CANCELLED_BY_VEHICLE,
                               cmd.payload.get("reason", "")))
    return None


def heartbeat(state: LedgerState, cmd: Command, view: GovernanceView,
               out: list[Decision]) -> Rejection | None:
    return None  # its only effect is the clock advance every command gets


def publish_calendar(state: LedgerState, cmd: Command, view: GovernanceView,
                      out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    problem = _calendar_problem(state, p, cmd.occurred_at_ms, view)
    if problem is not None:
        return problem
    tariff = view.tariffs[p["tariff_id"]]
    state.calendar = {
        "calendar_version": p["calendar_version"], "rate_authority_id": p["rate_authority_id"],
        "station_credential_id": cmd.author_id,
        "jurisdiction": p["jurisdiction"], "tariff_id": p["tariff_id"],
        "grid_zone_id": p["grid_zone_id"], "slot_duration_ms": p["slot_duration_ms"],
        "horizon_start_at_ms": p["horizon_start_at_ms"],
        "horizon_end_at_ms": p["horizon_end_at_ms"],
        "posted_rate_per_kwh": p["posted_rate_per_kwh"], "currency": p["currency"],
        "filed_ceiling_per_kwh": tariff["energy_rate_ceiling_per_kwh"],
        "rules": dict(view.rules[p["rules_version"]]),
        "connectors": {c["connector_id"]: dict(c) for c in p["connectors"]},
    }
    for res in sorted(state.reservations.values(), key=lambda r: r.seq):
        if res.status != ACTIVE:
            continue
        if state.connector(res.connector_id) is None:
            _displace(state, [res], Reason.CONNECTOR_WITHDRAWN, out)
        elif not state.capable(res.connector_id, res.start_ms, res.stop_ms, res.energy_wh):
            # less power than it was booked on
            _displace(state, [res], Reason.CONNECTOR_DERATED, out)
    return None


def _calendar_problem(state: LedgerState, p: dict[str, Any], at_ms: int,
                      view: GovernanceView) -> Rejection | None:
    if state.calendar and p["calendar_version"] <= state.calendar["calendar_version"]:
        return Rejection(Reason.STALE_CALENDAR, f"version {p['calendar_version']} is not newer")
    if not view.is_rate_authority(p["rate_authority_id"], at_ms):
        return Rejection(Reason.UNRECOGNISED_RATE_AUTHORITY,
                         f"{p['rate_authority_id']} is not a recognised rate authority")
    tariff = view.tariffs.get(p["tariff_id"])
    if tariff is None or tariff["rate_authority_id"] != p["rate_authority_id"]:
        return Rejection(Reason.UNKNOWN_TARIFF, f"{p['tariff_id']} is not filed by "
                         f"{p['rate_authority_id']}")
    if tariff["station_ids"] and state.station_id not in tariff["station_ids"]:
        return Rejection(Reason.UNKNOWN_TARIFF, f"{p['tariff_id']} does not cover this station")
    if tariff["currency"] != p["currency"]:
        return Rejection(Reason.CURRENCY_MISMATCH, f"tariff is in {tariff['currency']}")
    if p["posted_rate_per_kwh"] > tariff["energy_rate_ceiling_per_kwh"]:
        return Rejection(Reason.ABOVE_FILED_CEILING, "posted price exceeds the filed ceiling")
    if p["rules_version"] not in view.rules:
        return Rejection(Reason.UNKNOWN_RULES,
                         f"allocation rules {p['rules_version']} not published")
    if p["slot_duration_ms"] <= 0 or p["horizon_end_at_ms"] <= p["horizon_start_at_ms"]:
        return Rejection(Reason.INVALID_CALENDAR, "slot duration and horizon must be positive")
    if not 0 < len(p["connectors"]) <= CONNECTORS_PER_STATION_MAX:
        return Rejection(Reason.INVALID_CALENDAR, f"1..{CONNECTORS_PER_STATION_MAX} connectors")
    if any(c["power_w"] <= 0 for c in p["connectors"]):
        return Rejection(Reason.INVALID_CALENDAR, "connector power must be positive")
    return None


def change_capacity(state: LedgerState, cmd: Command, view: GovernanceView,
                     out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    if state.connector(p["connector_id"]) is None:
        return Rejection(Reason.UNKNOWN_CONNECTOR, f"{p['connector_id']} is not in the calendar")
    if p["until_at_ms"] <= p["from_at_ms"]:
        return Rejection(Reason.INVALID_WINDOW, "until_at_ms must be after from_at_ms")
    if p["available"] and p["cause"] == CapacityCause.RESTORED:
        # ends the outages in force in [from, until); one announced to begin later stands
        for outage in state.outages:
            if outage.connector_id == p["connector_id"] and outage.until_ms > p["from_at_ms"] and (
                    outage.from_ms < p["until_at_ms"]):
                outage.until_ms = max(outage.from_ms, p["from_at_ms"])
        return None
    if len(state.outages) >= OUTAGES_LIVE_MAX:
        return Rejection(Reason.LEDGER_FULL, f"{OUTAGES_LIVE_MAX} outages live")
    power = 0 if not p["available"] else p["power_w"]
    state.outages.append(Outage(p["connector_id"], p["from_at_ms"], p["until_at_ms"], power,
                                p["cause"]))
    hit = [r for r in state.reservations.values()
           if r.status == ACTIVE and r.connector_id == p["connector_id"]
           and r.start_ms < p["until_at_ms"] and p["from_at_ms"] < r.stop_ms
           and not state.capable(r.connector_id, r.start_ms, r.stop_ms, r.energy_wh)]
    _displace(state, hit, displaced(p["cause"]), out)
    return None


def _displacement_order(state: LedgerState) -> Callable[[Reservation], tuple[Any, ...]]:
    """Who picks first among displaced reservations (and who is bumped last)."""
    if state.rules["curtailment_order"] == CurtailmentOrder.LATEST_BOOKED_FIRST:
        return lambda r: (r.seq,)  # earliest booked keeps first pick
    return lambda r: (r.curtailable, -r.dr_priority, r.seq)


def _displace(state: LedgerState, hit: list[Reservation], reason: Reason,
              out: list[Decision]) -> None:
    """Move each displaced reservation per the rules, or cancel it with ``reason``.

    A displaced reservation that finds no free place may bump a *curtailable* reservation of the
    same window that ranks below it (``curtailment_order``); the bumped one is displaced in turn.
    """
    rank = _displacement_order(state)
    for res in hit:  # free their places first, so they can trade among themselves
        res.status = ReservationStatus.DISPLACED
    queue = sorted(hit, key=rank)
    for _ in range(DISPLACEMENT_STEPS_MAX):
        if not queue:
            return
        res = queue.pop(0)
        target = _alternative(state, res, state.rules["reallocation"])
        if target is None:
            res.status = ReservationStatus.ACTIVE
            _emit(state, out, released(state, res, reason))
            continue
        connector_id, start_ms, victim = target
        if victim is not None:
            victim.status = ReservationStatus.DISPLACED
            queue = sorted(queue + [victim], key=rank)
        res.status = ReservationStatus.ACTIVE
        _emit(state, out, decided(DecisionType.SLOT_REALLOCATED, {
            "reservation_id": res.reservation_id, "station_id": state.station_id,
            "from_connector_id": res.connector_id, "from_slot_start_at_ms": res.start_ms,
            "to_connector_id": connector_id, "to_slot_start_at_ms": start_ms,
            "to_slot_stop_at_ms": start_ms + (res.stop_ms - res.start_ms),
            "reason_code": reason, "rules_version": state.rules["rules_version"]}))
    for res in queue:  # step limit reached: cancel the rest rather than loop on
        res.status = ReservationStatus.ACTIVE
        _emit(state, out, released(state, res, reason, "displacement limit"))


def _alternative(state: LedgerState, res: Reservation,
                 policy: str) -> tuple[str, int, Reservation | None] | None:
    """A free (connector, start) for ``res``, or one it may take by bumping a lower rank."""
    if policy == Reallocation.CANCEL:
        return None
    slot = state.calendar["slot_duration_ms"]  # type: ignore[index]
    next_slots = policy == Reallocation.SAME_SLOT_OTHER_CONNECTOR_THEN_NEXT_SLOT
    shifts = REALLOCATION_SHIFT_SLOTS_MAX if next_slots else 0
    duration = res.stop_ms - res.start_ms
    for shift in range(shifts + 1):
        start = res.start_ms + shift * slot
        if state.window_problem(start, start + duration) is not None:
            break
        for cid in state.connector_ids():
            if shift == 0 and cid == res.connector_id:
                continue
            if state.capable(cid, start, start + duration, res.energy_wh) and state.holder(
                    cid, start, start + duration, ignore=res.reservation_id) is None:
                return cid, start, None
        if shift == 0:
            bump = _bump_target(state, res)
            if bump is not None:
                return bump[0], res.start_ms, bump[1]
    return None


def _bump_target(state: LedgerState, res: Reservation) -> tuple[str, Reservation] | None:
    """The lowest-ranked curtailable reservation whose place in the same window ``res`` fits."""
    rank = _displacement_order(state)
    candidates = []
    for cid in state.connector_ids():
        if cid == res.connector_id or not state.capable(cid, res.start_ms, res.stop_ms,
                                                        res.energy_wh):
            continue
        holder = state.holder(cid, res.start_ms, res.stop_ms, ignore=res.reservation_id)
        if (holder is not None and holder.status == ReservationStatus.ACTIVE and holder.curtailable
                and holder.start_ms == res.start_ms and holder.stop_ms == res.stop_ms
                and rank(holder) > rank(res)):
            candidates.append((rank(holder), cid, holder))
    if not candidates:
        return None
    _, cid, victim = max(candidates, key=lambda c: c[0])
    return cid, victim


# ---- state serialisation (Faust table values) -----------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _json_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$decimal" in obj:
        return Decimal(obj["$decimal"])
    return obj


def dump_state(state: LedgerState) -> bytes:
    # Reservation, Bid and Outage hold only scalars (str, int, bool, Decimal, None), so an
    # instance's ``__dict__`` (fields in declaration order, set by __init__) encodes to the same
    # bytes as ``dataclasses.asdict`` did; asdict's recursive deep copy was most of the worker's
    # time with a few hundred reservations per station (tests/unit/test_ledger.py checks the bytes).
    data = {
        "station_id": state.station_id, "calendar": state.calendar,
        "reservations": [r.__dict__ for r in state.reservations.values()],
        "bids": [b.__dict__ for b in state.bids],
        "outages": [o.__dict__ for o in state.outages],
        "clock_ms": state.clock_ms, "station_clock_ms": state.station_clock_ms, "seq": state.seq,
        "applied_through_offset": state.applied_through_offset, "extra": state.extra,
    }
    return json.dumps(data, default=_json_default, separators=(",", ":")).encode()


def load_state(raw: bytes) -> LedgerState:
    data = json.loads(raw, object_hook=_json_hook)
    reservations = [Reservation(**r) for r in data["reservations"]]
    for res in reservations:  # the persisted string, as its member
        res.status = ReservationStatus(res.status)
    state = LedgerState(
        station_id=data["station_id"], calendar=data["calendar"],
        reservations={r.reservation_id: r for r in reservations},
        bids=[Bid(**b) for b in data["bids"]],
        outages=[Outage(**o) for o in data["outages"]],
        clock_ms=data["clock_ms"], station_clock_ms=data.get("station_clock_ms", 0),
        seq=data["seq"],
        applied_through_offset=data["applied_through_offset"], extra=data["extra"],
    )
    vars(state)["_bytes_bound"] = len(raw)  # its serialised size (market.py's state budget)
    return state
