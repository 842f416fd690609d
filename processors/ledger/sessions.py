"""Charging sessions on the station's ledger (M6, C3, C4): handshake, metered delivery,
mid-session re-pricing, close-out, counter-signatures and settlement finality. Pure.

The commands here extend the slot ledger (same single writer per station, same event time), so
a session's evidence is ordered with the reservations it rests on.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors.decisions import Decision, DecisionType, decided
from chargemesh.processors.embodiments import fleet, v2g
from chargemesh.processors.ledger import power
from chargemesh.processors.ledger.state import (
    Command,
    GovernanceView,
    LedgerState,
    _emit,
    note_reprice_deadline,
    reprice_response_ms,
    stop_by_ledger,
)
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.settlement import (
    Reading,
    Reprice,
    Tariff,
    schedule_between,
    segments,
    settle,
    within_claim,
)
from chargemesh.processors.statuses import (
    AboveCeiling,
    GridEventKind,
    RepriceStatus,
    ReservationStatus,
    SessionStatus,
)
from chargemesh.units import HOUR_MS, MINUTE_MS

READINGS_PER_SESSION_MAX = 20_000
# A meter may read this much above what the connector's power allows (clock skew, rounding).
PLAUSIBILITY_TOLERANCE = Decimal("0.05")
PLAUSIBILITY_SLACK_WH = 10
# A session may run this long past its reserved window before its readings are refused.
OVERRUN_MS_MAX = 30 * MINUTE_MS
EARLY_START_MS_MAX = 15 * MINUTE_MS
OPEN = (SessionStatus.ACTIVE, SessionStatus.STOPPED)
# Price signals a station's ledger remembers (so a session starting inside one's window is priced
# at it from its start); a signal is forgotten an hour after its window ends.
PRICE_SIGNALS_LIVE_MAX = 1_000
PRICE_SIGNAL_KEPT_MS = HOUR_MS
# M6: the finality window when the rate authority's rules declare none (rules published before
# AllocationRulesPublished.finality_window_ms existed): 48 h after the close-out.
FINALITY_WINDOW_MS_DEFAULT = 48 * HOUR_MS


def sessions(state: LedgerState) -> dict[str, dict[str, Any]]:
    return state.extra.setdefault("sessions", {})  # type: ignore[no-any-return]


def _session(state: LedgerState, session_id: str) -> dict[str, Any] | Rejection:
    found = sessions(state).get(session_id)
    if found is None:
        return Rejection(Reason.UNKNOWN_SESSION, f"{session_id} is not a session of this station")
    return found


def _party_session(state: LedgerState, cmd: Command, parties: tuple[str, ...],
                   who: str) -> dict[str, Any] | Rejection:
    """The command's session, if its author is one of ``parties`` (session fields)."""
    s = _session(state, cmd.payload["session_id"])
    if isinstance(s, Rejection):
        return s
    if cmd.author_id not in [s[party] for party in parties]:
        return Rejection(Reason.NOT_YOUR_SESSION, f"only {who} may do this")
    return s


def record_handshake(state: LedgerState, cmd: Command, view: GovernanceView,
               out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    ident = p["identity"]
    res = state.reservations.get(p["reservation_id"])
    if res is None or res.status != ReservationStatus.ACTIVE:
        return Rejection(Reason.UNKNOWN_RESERVATION,
                         f"{p['reservation_id']} is not an active booking")
    if res.vehicle_credential_id != ident["vehicle_credential_id"]:
        return Rejection(Reason.NOT_YOUR_RESERVATION, "the booking belongs to another vehicle")
    if res.connector_id != ident["connector_id"]:
        return Rejection(Reason.WRONG_CONNECTOR, f"booked on {res.connector_id}")
    if not res.start_ms - EARLY_START_MS_MAX <= p["started_at_ms"] < res.stop_ms:
        return Rejection(Reason.OUTSIDE_RESERVATION, "the handshake is outside the booked window")
    if p["session_id"] in sessions(state):
        return Rejection(Reason.DUPLICATE_SESSION, f"{p['session_id']} already exists")
    export_start_problem = v2g.start_problem(p)
    if export_start_problem is not None:
        return export_start_problem
    cal = state.calendar
    assert cal is not None  # a live reservation implies a calendar
    tariff = view.tariffs.get(cal["tariff_id"])
    if tariff is None:
        return Rejection(Reason.UNKNOWN_TARIFF, f"{cal['tariff_id']} is not filed")
    program = view.grid_program(cal["grid_zone_id"], p["started_at_ms"])
    connector = state.connector(res.connector_id) or {}
    res.status = ReservationStatus.ARRIVED
    res.session_id = p["session_id"]
    sessions(state)[p["session_id"]] = {
        "session_id": p["session_id"], "reservation_id": res.reservation_id,
        "connector_id": res.connector_id, "identity": ident,
        "vehicle_credential_id": res.vehicle_credential_id,
        "station_credential_id": cmd.author_id,
        "meter_credential_id": connector.get("meter_credential_id", ""),
        "power_w": int(connector.get("power_w", 0)),
        "started_at_ms": p["started_at_ms"], "meter_start_wh": p["meter_start_wh"],
        "rate_per_kwh": res.rate_per_kwh, "ceiling_per_kwh": res.ceiling_rate_per_kwh,
        "booked_stop_ms": res.stop_ms, "tariff": Tariff.from_filing(tariff).as_dict(),
        "claimed_energy_wh": res.energy_wh, "overrun_allowed": res.overrun_allowed,  # C2
        "filed_ceiling_per_kwh": Decimal(tariff["energy_rate_ceiling_per_kwh"]),
        "grid_zone_id": cal["grid_zone_id"],
        "grid_operator_ids": sorted(program["grid_operator_credential_ids"]) if program else [],
        "readings": [], "reprices": [], "status": SessionStatus.ACTIVE, "stopped_at_ms": 0,
        "stop_reason": "", "close_out": None, "settlement_id": "", "signed_by": [],
        "evidence_event_ids": [cmd.event_id],
    }
    v2g.start(sessions(state)[p["session_id"]], connector, p)  # E3: the export register
    fleet.start(sessions(state)[p["session_id"]], state.station_id, view)  # E4: one fleet?
    power.session_started(state, sessions(state)[p["session_id"]], out)  # M5: grid limits
    for signal in _price_signals(state):  # M6: a price signal in force (or ahead) binds it too
        _propose(state, sessions(state)[p["session_id"]], signal, view, out)
    return None


def record_reading(state: LedgerState, cmd: Command, view: GovernanceView,
             out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    s = _session(state, p["session_id"])
    if isinstance(s, Rejection):
        return s
    if s["status"] not in OPEN:
        return Rejection(Reason.SESSION_CLOSED, f"session is {s['status']}")
    if cmd.author_id != s["meter_credential_id"]:
        return Rejection(Reason.NOT_THE_CONNECTORS_METER, f"the connector's meter is "
                         f"{s['meter_credential_id']!r}")
    if p["connector_id"] != s["connector_id"]:
        return Rejection(Reason.WRONG_CONNECTOR, f"session is on {s['connector_id']}")
    if len(s["readings"]) >= READINGS_PER_SESSION_MAX:
        return Rejection(Reason.SESSION_FULL, f"{READINGS_PER_SESSION_MAX} readings")
    last_seq, last_at, last_wh = (s["readings"][-1] if s["readings"]
                                  else (-1, s["started_at_ms"], s["meter_start_wh"]))
    problem = _reading_problem(s, p, last_seq, last_at, last_wh)
    if problem is not None:
        return problem
    s["readings"].append((p["reading_seq"], p["read_at_ms"], p["cumulative_import_wh"]))
    v2g.record(s, p.get("cumulative_export_wh", 0))
    s["evidence_event_ids"].append(cmd.event_id)
    return None


def _reading_problem(s: dict[str, Any], p: dict[str, Any], last_seq: int, last_at: int,
                     last_wh: int) -> Rejection | None:
    if p["reading_seq"] <= last_seq:
        return Rejection(Reason.READING_OUT_OF_ORDER, f"seq {p['reading_seq']} after {last_seq}")
    if p["cumulative_import_wh"] < last_wh:
        return Rejection(Reason.METER_WENT_BACKWARDS,
                         f"{p['cumulative_import_wh']} Wh < {last_wh} Wh")
    billed_until = s.get("billed_until_ms")
    if billed_until is not None and p["read_at_ms"] > billed_until:
        return Rejection(Reason.READING_OUTSIDE_SESSION, f"the ledger stopped the session at "
                         f"{billed_until} ({s.get('stop_code', '')}): it settles up to then")
    if not last_at <= p["read_at_ms"] <= s["booked_stop_ms"] + OVERRUN_MS_MAX:
        return Rejection(Reason.READING_OUTSIDE_SESSION, f"read at {p['read_at_ms']}")
    elapsed_ms = p["read_at_ms"] - last_at
    # M5: the connector's power, capped by the power limits in force (ledger/power.py)
    ceiling_wh = power.energy_ceiling_wh(s, last_at, p["read_at_ms"]) * (
        1 + PLAUSIBILITY_TOLERANCE)
    if p["cumulative_import_wh"] - last_wh > ceiling_wh + PLAUSIBILITY_SLACK_WH:
        limit = (" under the power limits in force (PowerLimitSet)"
                 if power.limited(s, last_at, p["read_at_ms"]) else "")
        return Rejection(Reason.IMPLAUSIBLE_READING, f"{p['cumulative_import_wh'] - last_wh} Wh in "
                         f"{elapsed_ms} ms exceeds {s['power_w']} W{limit}")
    return v2g.export_problem(s, p.get("cumulative_export_wh", 0),
                              p["cumulative_import_wh"] - last_wh,
                              ceiling_wh + PLAUSIBILITY_SLACK_WH)


def reprice_sessions(state: LedgerState, cmd: Command, view: GovernanceView,
                out: list[Decision]) -> Rejection | None:
    """A zone's grid event, routed to this station: re-price every active session for the
    signal's window (and remember the signal, so sessions starting inside it are priced at it).
    A price above the filed ceiling is proposed at the ceiling, or refused ABOVE_FILED_CEILING
    when the station's tariff declares ``above_ceiling`` REFUSE."""
    grid = cmd.payload.get("_grid_event")
    if grid is None:
        return Rejection(Reason.MALFORMED_PAYLOAD, "routed grid event did not verify")
    if grid["kind"] != GridEventKind.PRICE_SIGNAL:
        return None  # capacity limits reach the ledger as the station's CapacityChanged
    return _price_signal(state, grid, view, out)


def _price_signal(state: LedgerState, grid: dict[str, Any], view: GovernanceView,
                  out: list[Decision]) -> Rejection | None:
    if grid["until_at_ms"] <= grid["from_at_ms"]:
        return Rejection(Reason.INVALID_WINDOW, "a price signal's until_at_ms must be after "
                         "its from_at_ms")
    filed = view.tariffs.get(state.calendar["tariff_id"]) if state.calendar else None
    if filed is not None and filed.get("above_ceiling") == AboveCeiling.REFUSE and (
            grid["rate_per_kwh"] > filed["energy_rate_ceiling_per_kwh"]):
        return Rejection(Reason.ABOVE_FILED_CEILING, f"{grid['rate_per_kwh']}/kWh exceeds the "
                         f"filed ceiling {filed['energy_rate_ceiling_per_kwh']} of "
                         f"{filed['tariff_id']}, which refuses prices above it")
    signals = state.extra.setdefault("price_signals", [])
    signals[:] = [x for x in signals if x["until_at_ms"] + PRICE_SIGNAL_KEPT_MS > state.clock_ms]
    if len(signals) >= PRICE_SIGNALS_LIVE_MAX:
        return Rejection(Reason.LEDGER_FULL, f"{PRICE_SIGNALS_LIVE_MAX} price signals live")
    signal = {"grid_event_id": grid["grid_event_id"], "from_at_ms": grid["from_at_ms"],
              "until_at_ms": grid["until_at_ms"], "rate_per_kwh": grid["rate_per_kwh"]}
    signals.append(signal)
    for s in sorted(sessions(state).values(), key=lambda x: x["session_id"]):
        if s["status"] == SessionStatus.ACTIVE:
            _propose(state, s, signal, view, out)
    return None


def _price_signals(state: LedgerState) -> list[dict[str, Any]]:
    return sorted(state.extra.get("price_signals", []),
                  key=lambda x: (x["from_at_ms"], x["grid_event_id"]))


def _filed_ceiling(s: dict[str, Any], view: GovernanceView) -> Decimal | None:
    """The filed ceiling of the session's tariff (looked up for sessions started before the
    session kept it)."""
    if "filed_ceiling_per_kwh" in s:
        return Decimal(s["filed_ceiling_per_kwh"])
    filed = view.tariffs.get(s["tariff"]["tariff_id"])
    return Decimal(filed["energy_rate_ceiling_per_kwh"]) if filed else None


def _propose(state: LedgerState, s: dict[str, Any], signal: dict[str, Any], view: GovernanceView,
             out: list[Decision]) -> None:
    """Offer ``signal``'s price to session ``s`` for the part of its window the session runs in,
    capped at the filed ceiling; a price above the vehicle's own ceiling stops the session when
    it takes effect (the vehicle never agreed to pay it; the station need not sell below it)."""
    effective = max(signal["from_at_ms"], s["started_at_ms"])
    until = signal["until_at_ms"]
    if until <= effective:
        return  # the window ended before the session began
    if effective >= s["booked_stop_ms"] + OVERRUN_MS_MAX:
        # The window starts after the session can meter anything (its booking plus the overrun
        # its readings may reach): it prices nothing here, and proposing it would stop a session
        # that never reaches it as REPRICE_UNANSWERED (a signal remembered for later slots).
        return
    rate = Decimal(signal["rate_per_kwh"])
    ceiling = _filed_ceiling(s, view)
    if ceiling is not None:
        rate = min(rate, ceiling)
    if s["ceiling_per_kwh"] is not None and rate > s["ceiling_per_kwh"]:
        stop_by_ledger(state, s, effective, Reason.ABOVE_CEILING, out)
        return
    respond_by = state.clock_ms + reprice_response_ms(state)
    s["reprices"].append({"grid_event_id": signal["grid_event_id"], "effective_from_ms":
                          effective, "effective_until_ms": until, "rate_per_kwh": rate,
                          "status": RepriceStatus.PROPOSED, "respond_by_ms": respond_by})
    note_reprice_deadline(state, respond_by)
    _emit(state, out, decided(DecisionType.REPRICE_PROPOSED, {
        "session_id": s["session_id"], "station_id": state.station_id,
        "grid_event_id": signal["grid_event_id"], "effective_from_ms": effective,
        "new_rate_per_kwh": rate, "power_limit_w": 0, "effective_until_ms": until,
        "respond_by_ms": respond_by}))


def accept_reprice(state: LedgerState, cmd: Command, view: GovernanceView,
                      out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    s = _party_session(state, cmd, ("vehicle_credential_id",), "the session's vehicle")
    if isinstance(s, Rejection):
        return s
    if s["status"] != SessionStatus.ACTIVE:  # a settled price never changes after the fact
        return Rejection(Reason.SESSION_CLOSED, f"session is {s['status']}")
    for rp in s["reprices"]:
        if rp["grid_event_id"] == p["grid_event_id"] and rp["status"] == RepriceStatus.PROPOSED:
            if p["accepted_rate_per_kwh"] != rp["rate_per_kwh"]:
                return Rejection(Reason.PRICE_MISMATCH, f"proposed {rp['rate_per_kwh']}")
            ceiling = _filed_ceiling(s, view)
            if ceiling is not None and rp["rate_per_kwh"] > ceiling:  # proposed before the cap
                return Rejection(Reason.ABOVE_FILED_CEILING, f"the re-price exceeds the filed "
                                 f"ceiling {ceiling}")
            if s["ceiling_per_kwh"] is not None and rp["rate_per_kwh"] > s["ceiling_per_kwh"]:
                return Rejection(Reason.ABOVE_CEILING, "the re-price exceeds the vehicle's ceiling")
            rp["status"] = RepriceStatus.ACCEPTED
            s["evidence_event_ids"].append(cmd.event_id)
            return None
    return Rejection(Reason.NO_SUCH_REPRICE, f"no open re-price for {p['grid_event_id']}")


def stop_session(state: LedgerState, cmd: Command, view: GovernanceView,
             out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    s = _party_session(state, cmd, ("vehicle_credential_id", "station_credential_id"),
                       "the session's parties")
    if isinstance(s, Rejection):
        return s
    if s["status"] != SessionStatus.ACTIVE:
        return Rejection(Reason.SESSION_CLOSED, f"session is {s['status']}")
    s.update(status=SessionStatus.STOPPED, stopped_at_ms=p["stopped_at_ms"],
             stop_reason=p["reason"])
    for rp in s["reprices"]:
        if rp["status"] == RepriceStatus.PROPOSED:
            rp["status"] = RepriceStatus.REFUSED  # stopping instead of accepting
    s["evidence_event_ids"].append(cmd.event_id)
    return None


def close_out(state: LedgerState, cmd: Command, view: GovernanceView,
                out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    s = _party_session(state, cmd, ("station_credential_id",), "the session's station")
    if isinstance(s, Rejection):
        return s
    if s["status"] not in OPEN:
        return Rejection(Reason.SESSION_CLOSED, f"session is {s['status']}")
    last_seq, last_at, last_wh = (s["readings"][-1] if s["readings"]
                                  else (-1, s["started_at_ms"], s["meter_start_wh"]))
    revoked_from = s.get("revoked_from_ms")
    if revoked_from is not None and p["closed_at_ms"] >= revoked_from:
        return Rejection(Reason.CREDENTIAL_REVOKED, f"a party of this session "
                         f"({', '.join(s['revoked_party_ids'])}) is revoked from {revoked_from}: "
                         "no settlement after that time is admissible")
    if p["last_reading_seq"] != last_seq:
        return Rejection(Reason.MISSING_READINGS, f"close-out names seq {p['last_reading_seq']}, "
                         f"ledger has {last_seq}")
    problem = _reading_problem(s, {"reading_seq": last_seq + 1, "read_at_ms": p["closed_at_ms"],
                                   "cumulative_import_wh": p["final_import_wh"],
                                   "cumulative_export_wh": p.get("final_export_wh", 0)},
                               last_seq, last_at, last_wh)
    if problem is not None:
        return problem
    s["tariff_schedule"] = tariff_schedule(view, s, p["closed_at_ms"])  # M3: in force when
    s["close_out"] = {"closed_at_ms": p["closed_at_ms"], "final_import_wh": p["final_import_wh"],
                      "final_export_wh": p.get("final_export_wh", 0),
                      "event_hash": cmd.event_hash.hex()}
    s["status"] = SessionStatus.CLOSED_OUT
    s["evidence_event_ids"].append(cmd.event_id)
    s["signed_by"] = [cmd.author_id]
    if v2g.awaits_clearing_price(s):
        return None  # E3: settled when the zone's operator co-signs with the clearing price
    _admit(state, s, cmd.occurred_at_ms, out)
    return None


def _admit(state: LedgerState, s: dict[str, Any], at_ms: int, out: list[Decision]) -> None:
    settlement = admitted_settlement(state, s, at_ms)
    _emit(state, out, decided(DecisionType.SETTLEMENT_ADMITTED, settlement))
    entry = fleet.accounting_entry(s, settlement)  # E4: the fleet's internal accounting
    if entry is not None:
        _emit(state, out, decided(DecisionType.FLEET_ACCOUNTING_RECORDED, entry))


def settlement_id_for(session_id: str) -> str:
    return f"stl:{session_id}"


def tariff_schedule(view: GovernanceView, s: dict[str, Any],
                    closed_at_ms: int) -> list[dict[str, Any]]:
    """The versions of the session's tariff in force between its start and its close-out (M3);
    a settlement bills each interval under the version in force then."""
    filed = [Tariff.from_filing(v) for v in view.tariff_schedule(s["tariff"]["tariff_id"])]
    return [v.as_dict() for v in schedule_between(filed, s["started_at_ms"], closed_at_ms)]


def admitted_settlement(state: LedgerState, s: dict[str, Any], at_ms: int) -> dict[str, Any]:
    tariff = Tariff(**s["tariff"])
    schedule = [Tariff(**v) for v in s.get("tariff_schedule") or ()] or None
    reprices = [Reprice(rp["effective_from_ms"], rp["rate_per_kwh"], rp["grid_event_id"],
                        rp.get("effective_until_ms", 0))
                for rp in s["reprices"] if rp["status"] == RepriceStatus.ACCEPTED]
    energy = segments(Reading(s["started_at_ms"], s["meter_start_wh"]),
                      [Reading(at, wh) for _, at, wh in s["readings"]],
                      Reading(s["close_out"]["closed_at_ms"], s["close_out"]["final_import_wh"]),
                      s["rate_per_kwh"], reprices, schedule)
    energy = within_claim(energy, int(s.get("claimed_energy_wh", 0)),  # C2: no overrun billed
                          bool(s.get("overrun_allowed", False)))
    lines, total = settle(tariff, energy, schedule)
    lines, total = v2g.with_export_credit(tariff, s, lines, total)  # E3: two-sided
    kind, lines, total = fleet.internal_entry(s, lines, total)  # E4: no payment due
    s["settlement_id"] = settlement_id_for(s["session_id"])
    return {
        "settlement_id": s["settlement_id"], "session_id": s["session_id"],
        "identity": s["identity"], "tariff_id": tariff.tariff_id, "currency": tariff.currency,
        "rounding": tariff.rounding, "lines": lines, "total_amount": total,
        "energy_import_wh": s["close_out"]["final_import_wh"] - s["meter_start_wh"],
        "energy_export_wh": v2g.exported_wh(s),
        "evidence_event_ids": list(s["evidence_event_ids"]),
        "required_signer_ids": required_signers(s), "kind": kind,
        "adjusts_settlement_id": "", "admitted_at_ms": at_ms,
    }


def required_signers(s: dict[str, Any]) -> list[str]:
    """Station and vehicle always; the zone's grid operator where a grid program runs (M7)."""
    return [s["station_credential_id"], s["vehicle_credential_id"], *s["grid_operator_ids"][:1]]


def countersign(state: LedgerState, cmd: Command, view: GovernanceView,
                   out: list[Decision]) -> Rejection | None:
    s = _party_session(state, cmd, ("vehicle_credential_id",), "the session's vehicle")
    if isinstance(s, Rejection):
        return s
    if s["status"] == SessionStatus.EXPIRED:
        return _expired(s)
    return _add_signature(state, s, cmd, cmd.payload["close_out_event_hash"], out)


def co_sign(state: LedgerState, cmd: Command, view: GovernanceView,
               out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    s = _session(state, p["session_id"])
    if isinstance(s, Rejection):
        return s
    if cmd.author_id not in s["grid_operator_ids"]:
        return Rejection(Reason.NOT_THE_ZONES_OPERATOR, "no grid program names this operator here")
    if s["status"] == SessionStatus.EXPIRED:
        return _expired(s)
    if s["status"] == SessionStatus.CLOSED_OUT and v2g.awaits_clearing_price(s):
        problem = v2g.clearing_price_problem(s, p, settlement_id_for(s["session_id"]))
        if problem is not None:
            return problem
        v2g.price(s, p["clearing_price_per_kwh"])  # E3: the export is priced: settle it now
        _admit(state, s, cmd.occurred_at_ms, out)
    if p["settlement_id"] != s["settlement_id"]:
        return Rejection(Reason.UNKNOWN_SETTLEMENT, f"{p['settlement_id']} is not this session's")
    return _add_signature(state, s, cmd, p["close_out_event_hash"], out)


def _add_signature(state: LedgerState, s: dict[str, Any], cmd: Command, close_out_hash: bytes,
                   out: list[Decision]) -> Rejection | None:
    if s["status"] != SessionStatus.CLOSED_OUT or s["close_out"] is None:
        return Rejection(Reason.NOT_CLOSED_OUT, f"session is {s['status']}")
    if close_out_hash.hex() != s["close_out"]["event_hash"]:
        return Rejection(Reason.CLOSE_OUT_MISMATCH, "signature is over another close-out")
    if cmd.author_id in s["signed_by"]:
        return Rejection(Reason.ALREADY_SIGNED, f"{cmd.author_id} has signed already")
    s["signed_by"].append(cmd.author_id)
    s["evidence_event_ids"].append(cmd.event_id)
    required = required_signers(s)
    if all(signer in s["signed_by"] for signer in required):
        s["status"] = SessionStatus.FINAL
        res = state.reservations.get(s["reservation_id"])
        if res is not None:
            res.status = ReservationStatus.COMPLETED
        _emit(state, out, decided(DecisionType.SETTLEMENT_FINALISED, {
            "settlement_id": s["settlement_id"], "session_id": s["session_id"],
            "signer_ids": [x for x in s["signed_by"] if x in required],
            "finalised_at_ms": cmd.occurred_at_ms}))
    return None


# ---- finality window (M6, issue 16) ---------------------------------------------------------


def finality_window_ms(state: LedgerState) -> int:
    """How long after its close-out a settlement may wait for its signatures: the rate
    authority's rules the station's calendar names declare it."""
    return int(state.rules.get("finality_window_ms") or FINALITY_WINDOW_MS_DEFAULT)


def expire_settlements(state: LedgerState, out: list[Decision]) -> None:
    """Every closed-out session still missing a required signature when the ledger's clock
    passes its close-out plus the finality window expires: a ``SettlementExpired`` on the
    billing feed names the missing signers; the settlement never becomes final, and a later
    signature is refused ``SETTLEMENT_EXPIRED``. (An exporting V2G session waiting for the grid
    operator's clearing price expires the same way, with no settlement admitted.)"""
    window = finality_window_ms(state)
    due = [s for s in sessions(state).values() if s["status"] == SessionStatus.CLOSED_OUT
           and s["close_out"] is not None
           and s["close_out"]["closed_at_ms"] + window <= state.clock_ms]
    for s in sorted(due, key=lambda x: x["session_id"]):
        required = required_signers(s)
        s["status"] = SessionStatus.EXPIRED
        closed_at = s["close_out"]["closed_at_ms"]
        _emit(state, out, decided(DecisionType.SETTLEMENT_EXPIRED, {
            "settlement_id": s["settlement_id"] or settlement_id_for(s["session_id"]),
            "session_id": s["session_id"], "station_id": state.station_id,
            "required_signer_ids": required,
            "signer_ids": [x for x in s["signed_by"] if x in required],
            "missing_signer_ids": [x for x in required if x not in s["signed_by"]],
            "closed_at_ms": closed_at, "finality_window_ms": window,
            "expired_at_ms": closed_at + window}))


def _expired(s: dict[str, Any]) -> Rejection:
    return Rejection(Reason.SETTLEMENT_EXPIRED, f"{s['settlement_id'] or s['session_id']} "
                     "expired: its finality window closed before every signature was in")
