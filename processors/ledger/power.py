"""Power limits on a station's ledger (M5, M7, P3, M8): what a connector may deliver. Pure.

* **Kind bounds.** A connector's declared power is bounded by its kind
  (:data:`CONNECTOR_POWER_W_MAX`), so meter plausibility has a sane ceiling: a calendar
  declaring more is refused ``CONNECTOR_POWER_ABOVE_KIND``.
* **The zone operator's limits bind.** Where no observer set governs the zone, the zone router
  routes a registered operator's ``CAPACITY_LIMIT`` or ``CURTAILMENT`` to every station of the
  zone (where one does, only the quorum's decision is routed: ``grid/observers.py``). It caps
  every connector of the station at ``capacity_limit_w`` over ``[from_at_ms, until_at_ms)``:
  bookings that no longer fit are displaced by the ledger's rules (``DISPLACED_CURTAILMENT``),
  and every active session on the connector gets a signed ``PowerLimitSet`` (the limit in W and
  its window). ``RESTORED`` lifts the operator's limits in its window (the station's own outages
  stand) and tells each active session so (a ``PowerLimitSet`` at the connector's power).
* **Readings are judged against the limits in force.** A session keeps its limits
  (``power_limits``: ``[from_ms, until_ms, limit_w, source]``); the energy between two readings
  may not exceed the connector's power, capped by each limit where it applies, integrated over
  the interval (:func:`energy_ceiling_wh`; ``sessions._reading_problem``: IMPLAUSIBLE_READING).
  A limit binds from when the ledger learns it (never retroactively) and from the session's start.
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

from chargemesh.processors.decisions import Decision, DecisionType, decided
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.ledger.state import Command, GovernanceView, Handler, LedgerState
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.statuses import (
    CapacityCause,
    ConnectorKind,
    GridEventKind,
    SessionStatus,
)
from chargemesh.units import HOUR_MS

# The most a connector of each kind can deliver (W): SAE J1772 Level 1 (16 A at 120 V), Level 2
# / IEC 61851 three-phase AC (32 A at 400 V), CCS DC (500 A at 1,000 V), MCS (3,000 A at
# 1,250 V); a wireless road segment and a charging truck at most a DC charger's; a swap bay, and
# a kind this version does not know, at most the megawatt ceiling.
MEGAWATT_CEILING_W = 3_750_000
CONNECTOR_POWER_W_MAX: dict[str, int] = {
    ConnectorKind.AC_L1: 1_920,
    ConnectorKind.AC_L2: 22_000,
    ConnectorKind.DC_FAST: 500_000,
    ConnectorKind.MCS: MEGAWATT_CEILING_W,
    ConnectorKind.WIRELESS_SEGMENT: 500_000,
    ConnectorKind.SWAP_BAY: MEGAWATT_CEILING_W,
    ConnectorKind.MOBILE: 500_000,
    ConnectorKind.UNKNOWN: MEGAWATT_CEILING_W,
}
# Limits one session keeps (those ended before its last reading are dropped first); a grid
# event that would need more at a session is refused LEDGER_FULL at that station.
POWER_LIMITS_PER_SESSION_MAX = 64
SOURCE_OPERATOR = "GRID_OPERATOR"
SOURCE_QUORUM = "OBSERVER_QUORUM"
LIMIT_KINDS = (GridEventKind.CAPACITY_LIMIT, GridEventKind.CURTAILMENT)


def kind_max_w(kind: str) -> int:
    return CONNECTOR_POWER_W_MAX.get(kind, MEGAWATT_CEILING_W)


def declared_power_problem(connectors: list[dict[str, Any]]) -> Rejection | None:
    """A connector declaring more power than its kind allows, or None."""
    for c in connectors:
        if c["power_w"] > kind_max_w(c["kind"]):
            return Rejection(Reason.CONNECTOR_POWER_ABOVE_KIND,
                             f"{c['connector_id']} declares {c['power_w']} W; a {c['kind']} "
                             f"connector delivers at most {kind_max_w(c['kind'])} W")
    return None


def bounded_calendar(handler: Handler) -> Handler:
    """The calendar handler, after the kind bounds of its connectors."""
    def bounded(state: LedgerState, cmd: Command, view: GovernanceView,
                out: list[Decision]) -> Rejection | None:
        problem = declared_power_problem(list(cmd.payload["connectors"]))
        return problem if problem is not None else handler(state, cmd, view, out)
    return bounded


def grid_routed(price_handler: Handler) -> Handler:
    """A routed grid event: limits and restorations here, price signals to ``price_handler``."""
    def routed(state: LedgerState, cmd: Command, view: GovernanceView,
               out: list[Decision]) -> Rejection | None:
        grid = cmd.payload.get("_grid_event")
        if grid is None or grid["kind"] not in (*LIMIT_KINDS, GridEventKind.RESTORED):
            return price_handler(state, cmd, view, out)
        return apply_grid_limit(state, grid, view, out)
    return routed


# ---- the operator's limits -------------------------------------------------------------------


def apply_grid_limit(state: LedgerState, grid: dict[str, Any], view: GovernanceView,
                     out: list[Decision]) -> Rejection | None:
    """The zone operator's CAPACITY_LIMIT, CURTAILMENT or RESTORED, on every connector."""
    from_ms, until_ms, limit_w = grid["from_at_ms"], grid["until_at_ms"], grid["capacity_limit_w"]
    if state.calendar is None or state.calendar["grid_zone_id"] != grid["grid_zone_id"]:
        return Rejection(Reason.WRONG_GRID_ZONE, f"this station is not in {grid['grid_zone_id']}")
    if until_ms <= from_ms:
        return Rejection(Reason.INVALID_WINDOW, "until_at_ms must be after from_at_ms")
    if limit_w < 0:
        return Rejection(Reason.INVALID_GRID_EVENT, f"capacity_limit_w {limit_w} < 0")
    full = _limits_full(state)
    if full is not None:
        return full
    gid = grid["grid_event_id"]
    for cid in state.connector_ids():
        if grid["kind"] == GridEventKind.RESTORED:
            _lift(state, cid, from_ms, until_ms, gid, out)
        else:
            problem = curtail(state, view, cid, (limit_w, from_ms, until_ms), gid,
                              grid["kind"], out)
            if problem is not None:
                return problem
    return None


def _limits_full(state: LedgerState) -> Rejection | None:
    for s in _sessions(state):
        _forget_ended(s)
        if len(s.get("power_limits", [])) >= POWER_LIMITS_PER_SESSION_MAX:
            return Rejection(Reason.LEDGER_FULL, f"session {s['session_id']} holds "
                             f"{POWER_LIMITS_PER_SESSION_MAX} power limits")
    return None


def curtail(state: LedgerState, view: GovernanceView, connector_id: str,
            limit: tuple[int, int, int], grid_event_id: str, kind: str,
            out: list[Decision]) -> Rejection | None:
    """Cap ``connector_id`` at ``limit`` (W, from, until) under the operator's grid event: an
    outage displacing the bookings that no longer fit (the ledger's own capacity handler,
    DISPLACED_CURTAILMENT), and a limit on its sessions."""
    limit_w, from_ms, until_ms = limit
    payload = {"station_id": state.station_id, "connector_id": connector_id,
               "available": limit_w > 0, "power_w": limit_w, "cause": CapacityCause.CURTAILMENT,
               "from_at_ms": from_ms, "until_at_ms": until_ms}
    before = len(state.outages)
    cmd = Command("chargemesh.capacity.v1.CapacityChanged", payload, state.clock_ms, "", "")
    problem = ledger.change_capacity(state, cmd, view, out)
    if problem is not None:
        return problem
    if len(state.outages) > before:
        state.outages[-1].grid_event_id = grid_event_id
    limit_sessions(state, connector_id, limit, grid_event_id, SOURCE_OPERATOR, kind, out)
    return None


def _lift(state: LedgerState, connector_id: str, from_ms: int, until_ms: int,
          grid_event_id: str, out: list[Decision]) -> None:
    """RESTORED: the operator's outages in force in the window end at its start."""
    for outage in state.outages:
        if (outage.connector_id == connector_id and outage.grid_event_id
                and outage.cause == CapacityCause.CURTAILMENT
                and outage.until_ms > from_ms and outage.from_ms < until_ms):
            outage.until_ms = max(outage.from_ms, from_ms)
    for s in _sessions(state, connector_id):
        start = max(from_ms, state.clock_ms, s["started_at_ms"])
        lifted = False
        for limit in s.get("power_limits", []):
            if limit[3] == SOURCE_OPERATOR and limit[1] > start and limit[0] < until_ms:
                limit[1] = max(limit[0], start)
                lifted = True
        if lifted:
            _emit_limit(state, s, s["power_w"], start, until_ms, grid_event_id,
                        GridEventKind.RESTORED, out)


def limit_sessions(state: LedgerState, connector_id: str, limit: tuple[int, int, int],
                   grid_event_id: str, source: str, kind: str, out: list[Decision]) -> None:
    """Every active session on ``connector_id`` is held to ``limit`` (W, from, until), from
    when the ledger learns it (``clock_ms``) and its own start; each gets a PowerLimitSet."""
    limit_w, from_ms, until_ms = limit
    for s in _sessions(state, connector_id):
        start = max(from_ms, state.clock_ms, s["started_at_ms"])
        if start >= until_ms:
            continue
        _forget_ended(s)
        s.setdefault("power_limits", []).append([start, until_ms, limit_w, source])
        del s["power_limits"][:-POWER_LIMITS_PER_SESSION_MAX]
        _emit_limit(state, s, min(limit_w, s["power_w"]), start, until_ms, grid_event_id, kind,
                    out)


def session_started(state: LedgerState, s: dict[str, Any], out: list[Decision]) -> None:
    """A session starting on a connector under a grid limit is held to it from its start."""
    for outage in sorted(state.outages, key=lambda o: (o.from_ms, o.until_ms)):
        if outage.connector_id != s["connector_id"] or not outage.grid_event_id:
            continue
        start = max(outage.from_ms, s["started_at_ms"])
        if start < outage.until_ms and len(s.setdefault("power_limits", [])) < (
                POWER_LIMITS_PER_SESSION_MAX):
            source = SOURCE_OPERATOR if outage.cause == CapacityCause.CURTAILMENT else (
                SOURCE_QUORUM)
            s["power_limits"].append([start, outage.until_ms, outage.power_w, source])
            _emit_limit(state, s, min(outage.power_w, s["power_w"]), start, outage.until_ms,
                        outage.grid_event_id, GridEventKind.CURTAILMENT
                        if source == SOURCE_OPERATOR else SOURCE_QUORUM, out)


def _emit_limit(state: LedgerState, s: dict[str, Any], limit_w: int, from_ms: int,
                until_ms: int, grid_event_id: str, kind: str, out: list[Decision]) -> None:
    ledger._emit(state, out, decided(DecisionType.POWER_LIMIT_SET, {
        "session_id": s["session_id"], "station_id": state.station_id,
        "connector_id": s["connector_id"], "grid_zone_id": s.get("grid_zone_id", ""),
        "grid_event_id": grid_event_id, "kind": str(kind), "power_limit_w": limit_w,
        "effective_from_ms": from_ms, "until_at_ms": until_ms, "decided_at_ms": state.clock_ms}))


def _sessions(state: LedgerState, connector_id: str | None = None) -> list[dict[str, Any]]:
    found = state.extra.get("sessions", {}).values()
    return sorted((s for s in found if s["status"] == SessionStatus.ACTIVE
                   and connector_id in (None, s["connector_id"])),
                  key=lambda s: s["session_id"])


def _forget_ended(s: dict[str, Any]) -> None:
    """Limits that ended before the session's last reading can judge nothing any more."""
    if "power_limits" not in s:
        return
    last_at = s["readings"][-1][1] if s["readings"] else s["started_at_ms"]
    s["power_limits"] = [lim for lim in s.get("power_limits", []) if lim[1] > last_at]


# ---- plausibility ----------------------------------------------------------------------------


def energy_ceiling_wh(s: dict[str, Any], from_ms: int, to_ms: int) -> Decimal:
    """The most the session's connector may deliver in ``[from_ms, to_ms)``: its power, capped by
    each limit where it applies, integrated over the interval."""
    base = int(s["power_w"])
    limits = [lim for lim in s.get("power_limits", []) if lim[0] < to_ms and from_ms < lim[1]]
    if not limits:
        unlimited: Decimal = Decimal(base) * (to_ms - from_ms) / HOUR_MS
        return unlimited
    points = sorted({from_ms, to_ms, *(min(max(t, from_ms), to_ms)
                                       for lim in limits for t in lim[:2])})
    w_ms = 0
    for a, b in itertools.pairwise(points):
        w_ms += min([base] + [lim[2] for lim in limits if lim[0] <= a and b <= lim[1]]) * (b - a)
    limited_wh: Decimal = Decimal(w_ms) / HOUR_MS
    return limited_wh


def limited(s: dict[str, Any], from_ms: int, to_ms: int) -> bool:
    """Whether a limit applies anywhere in ``[from_ms, to_ms)``."""
    return any(lim[0] < to_ms and from_ms < lim[1] for lim in s.get("power_limits", []))
