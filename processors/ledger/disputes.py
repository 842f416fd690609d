"""Dispute resolution (P2) on the station's ledger: open, add evidence, resolve. Pure.

A dispute is about one session of one station, so the station's single-writer ledger decides
it: it knows the session's parties, its lineage and its settlement, and orders the dispute's
events with the session's own. The rules:

* only a party of the session (its vehicle or its station credential) opens a dispute
  (``NOT_A_SESSION_PARTY`` otherwise), of a known kind, citing event ids of the session's
  lineage; a meter dispute or a payment failure needs a settled session, an interrupted charge
  may be disputed before settlement; one open dispute per session at a time;
* a party, or an arbiter of the session's rate authority, adds evidence while it is open;
* only an arbiter resolves it, once: the station's rate authority itself (the authority whose
  filed tariff the session was settled under), or an ``ARBITER`` credential of an issuer that
  authority delegated (``NOT_THE_ARBITER`` otherwise);
* the outcome is recorded, and a correction is a *new* settlement naming the disputed one
  (``adjusts_settlement_id``), never an edit: ADJUSTED gives an ``ADJUSTMENT`` settlement (the
  arbiter's amount before tax, rounded by the authority's rule, plus the tariff's tax), VOIDED a
  ``CREDIT`` settlement negating every line issued so far (a full credit note). Both are final
  at once: the arbiter's signed resolution is the one signature they need.

Every accepted change emits a ``DisputeRecorded`` decision (disputes topic); state lives in
``state.extra`` so it is saved and restored with the ledger.

A dispute is opened within the rate authority's dispute window (``dispute_window_ms`` of its
rules, 90 days unless they say otherwise) after the settlement, ``DISPUTE_WINDOW_CLOSED`` after
it: once the session has left the live ledger (``ledger.FINISHED_KEPT_MS`` after its slot) a
compact summary of its settlement stands in for it (see "the dispute window" below; battery
swaps and wireless trips are summarised the same way, so they are disputable too). Once opened,
the dispute keeps what it needs of the session (parties, rate authority, settlement lines) and
is resolved whenever the arbiter decides.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from chargemesh.processors.decisions import Decision, DecisionType, decided
from chargemesh.processors.ledger import sessions
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.ledger.state import Command, GovernanceView, LedgerState, _emit
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.settlement import Tariff, line, with_tax
from chargemesh.processors.statuses import (
    DisputeChange,
    DisputeKind,
    DisputeOutcome,
    DisputeStatus,
    LineKind,
    SettlementKind,
)

# Plain strings (``str(member)``): details list them, and a member's repr is not its value.
KINDS = frozenset(str(kind) for kind in DisputeKind)
NEEDS_SETTLEMENT = frozenset({DisputeKind.METER_DISPUTE, DisputeKind.PAYMENT_FAILURE})
OUTCOMES = frozenset(str(outcome) for outcome in DisputeOutcome)
CORRECTIONS = {  # outcome -> the kind of settlement that corrects the disputed one
    DisputeOutcome.ADJUSTED: SettlementKind.ADJUSTMENT,
    DisputeOutcome.VOIDED: SettlementKind.CREDIT,
}
OPEN, RESOLVED = DisputeStatus.OPEN, DisputeStatus.RESOLVED
DISPUTE_ID_CHARS_MAX = 128
STATEMENT_CHARS_MAX = 4_000
EVIDENCE_IDS_PER_EVENT_MAX = 64
EVIDENCE_IDS_PER_DISPUTE_MAX = 256
DISPUTES_PER_SESSION_MAX = 4
DISPUTES_LIVE_MAX = 10_000
# A dispute's own time may differ from the signed event's by at most this much.
CLOCK_SKEW_MS_MAX = ledger.VEHICLE_CLOCK_LEAD_MS_MAX
ZERO = Decimal(0)


def disputes(state: LedgerState) -> dict[str, dict[str, Any]]:
    return state.extra.setdefault("disputes", {})  # type: ignore[no-any-return]


def disputed_settlements(state: LedgerState) -> dict[str, dict[str, Any]]:
    """Per disputed settlement: its lines as issued so far (original + corrections), the net
    total, whether it is voided. Copied from the session when first disputed."""
    return state.extra.setdefault("disputed_settlements", {})  # type: ignore[no-any-return]


# ---- open -------------------------------------------------------------------------------------


def open_dispute(state: LedgerState, cmd: Command, view: GovernanceView,
          out: list[Decision], agent_id: str = "") -> Rejection | None:
    """A party opens a dispute (``agent_id``: the vehicle's payment agent opened it on the
    vehicle's behalf, see payment_failed)."""
    p = cmd.payload
    _prune(state)
    closed = window_problem(state, p["session_id"])
    if closed is not None:
        return closed
    s = sessions.sessions(state).get(p["session_id"]) or _from_summary(state, p["session_id"])
    if s is None:
        return Rejection(Reason.UNKNOWN_SESSION,
                         f"{p['session_id']} is not a session of this station (or it settled "
                         f"more than the dispute window + {ledger.FINISHED_KEPT_MS} ms ago)")
    if cmd.author_id not in (s["vehicle_credential_id"], s["station_credential_id"]):
        return Rejection(Reason.NOT_A_SESSION_PARTY,
                         f"{cmd.author_id} is neither the vehicle nor the "
                         f"station of session {p['session_id']}")
    problem = _open_problem(state, cmd, s)
    if problem is not None:
        return problem
    settlement_id = s["settlement_id"] if s.get("close_out") else ""
    if settlement_id:
        _snapshot(state, s, settlement_id, cmd.occurred_at_ms)
    d = {
        "dispute_id": p["dispute_id"], "session_id": p["session_id"],
        "settlement_id": settlement_id, "kind": p["kind"], "status": OPEN, "seq": 0,
        "opened_by": agent_id or cmd.author_id, "opened_at_ms": p["opened_at_ms"],
        "parties": [s["vehicle_credential_id"], s["station_credential_id"]],
        "rate_authority_id": rate_authority_of(s, view),
        "evidence_event_ids": list(dict.fromkeys(p["evidence_event_ids"])),
        "event_ids": [cmd.event_id], "outcome": "", "adjustment_settlement_id": "",
        "resolved_at_ms": 0,
    }
    disputes(state)[d["dispute_id"]] = d
    _emit(state, out, _recorded(state, d, DisputeChange.OPENED, cmd, p["claim"]))
    return None


def _open_problem(state: LedgerState, cmd: Command, s: dict[str, Any]) -> Rejection | None:
    p = cmd.payload
    if not 0 < len(p["dispute_id"]) <= DISPUTE_ID_CHARS_MAX:
        return Rejection(Reason.INVALID_DISPUTE,
                         f"dispute_id must be 1..{DISPUTE_ID_CHARS_MAX} chars")
    if p["dispute_id"] in disputes(state):
        return Rejection(Reason.DUPLICATE_DISPUTE, f"{p['dispute_id']} exists already")
    if p["kind"] not in KINDS:
        return Rejection(Reason.INVALID_DISPUTE, f"kind {p['kind']} is not one of {sorted(KINDS)}")
    if abs(p["opened_at_ms"] - cmd.occurred_at_ms) > CLOCK_SKEW_MS_MAX:
        return Rejection(Reason.INVALID_TIME, "opened_at_ms is not the event's own time")
    settled = bool(s["settlement_id"]) and s.get("close_out") is not None
    if p["settlement_id"] and (not settled or p["settlement_id"] != s["settlement_id"]):
        return Rejection(Reason.UNKNOWN_SETTLEMENT,
                         f"{p['settlement_id']} is not the settlement of "
                         f"session {p['session_id']}")
    if p["kind"] in NEEDS_SETTLEMENT and not settled:
        return Rejection(Reason.NO_SETTLEMENT, f"a {p['kind']} needs a settled session")
    voided = disputed_settlements(state).get(s["settlement_id"], {}).get("voided")
    if settled and (voided or s.get("_summary", {}).get("x")):
        return Rejection(Reason.SETTLEMENT_VOIDED, f"{s['settlement_id']} is voided already")
    of_session = [d for d in disputes(state).values() if d["session_id"] == p["session_id"]]
    if any(d["status"] == OPEN for d in of_session):
        return Rejection(Reason.DISPUTE_ALREADY_OPEN,
                         "the session has an open dispute: add evidence")
    opened_before = settled_summaries(state).get(p["session_id"], {}).get("n", 0)
    if max(len(of_session), opened_before) >= DISPUTES_PER_SESSION_MAX:
        return Rejection(Reason.TOO_MANY_DISPUTES, f"{DISPUTES_PER_SESSION_MAX} per session")
    if len(disputes(state)) >= DISPUTES_LIVE_MAX:
        return Rejection(Reason.LEDGER_FULL, f"{DISPUTES_LIVE_MAX} disputes live")
    return _statement_problem(p["claim"]) or _evidence_problem(
        state, p["session_id"], [], p["evidence_event_ids"])


def rate_authority_of(s: dict[str, Any], view: GovernanceView) -> str:
    """The authority that filed the session's tariff (its filing is signed by it); the session's
    identity names the same authority for a tariff the ledger accepted."""
    filed = view.tariffs.get(s["tariff"]["tariff_id"])
    if filed is not None:
        return str(filed["rate_authority_id"])
    return str(s["identity"]["rate_authority_id"])


def _snapshot(state: LedgerState, s: dict[str, Any], settlement_id: str, at_ms: int) -> None:
    """Keep the disputed settlement's lines (recomputed from the session's evidence exactly as
    the ledger admitted them) so corrections never depend on the live session."""
    held = disputed_settlements(state)
    if settlement_id in held:
        return
    if "_summary" in s:  # the session has left the live ledger: its compact summary
        held[settlement_id] = dict(_held_from_summary(s["_summary"]), session_id=s["session_id"])
        return
    admitted = sessions.admitted_settlement(state, s, at_ms)
    held[settlement_id] = {
        "session_id": s["session_id"], "identity": dict(s["identity"]),
        "tariff": dict(s["tariff"]), "tariff_id": admitted["tariff_id"],
        "currency": admitted["currency"], "rounding": admitted["rounding"],
        "original_total": admitted["total_amount"], "net_total": admitted["total_amount"],
        "lines": [dict(ln) for ln in admitted["lines"]], "corrections": [], "voided": False,
    }


# The copy a P4 reversal (ledger.revocation) keeps too, so a dispute never corrects a reversed
# settlement again (issue 16).
snapshot = _snapshot


# ---- evidence ---------------------------------------------------------------------------------


def add_evidence(state: LedgerState, cmd: Command, view: GovernanceView,
                  out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    d = _dispute(state, p)
    if isinstance(d, Rejection):
        return d
    if d["status"] != OPEN:
        return Rejection(Reason.DISPUTE_CLOSED, f"{d['dispute_id']} is {d['status']}")
    if cmd.author_id not in d["parties"] and _arbiter_problem(d, cmd, view) is not None:
        return Rejection(Reason.NOT_A_SESSION_PARTY,
                         f"{cmd.author_id} is neither a party of session "
                         f"{d['session_id']} nor an arbiter of {d['rate_authority_id']}")
    problem = _statement_problem(p["statement"]) or _evidence_problem(
        state, d["session_id"], d["evidence_event_ids"] + d["event_ids"],
        p["evidence_event_ids"])
    if problem is not None:
        return problem
    merged = list(dict.fromkeys(d["evidence_event_ids"] + p["evidence_event_ids"]))
    if len(merged) > EVIDENCE_IDS_PER_DISPUTE_MAX:
        return Rejection(Reason.TOO_MUCH_EVIDENCE,
                         f"{EVIDENCE_IDS_PER_DISPUTE_MAX} ids per dispute")
    d["evidence_event_ids"] = merged
    d["event_ids"].append(cmd.event_id)
    d["seq"] += 1
    _emit(state, out, _recorded(state, d, DisputeChange.EVIDENCE_ADDED, cmd, p["statement"]))
    return None


def _dispute(state: LedgerState, p: dict[str, Any]) -> dict[str, Any] | Rejection:
    d = disputes(state).get(p["dispute_id"])
    if d is None or d["session_id"] != p["session_id"]:
        return Rejection(Reason.UNKNOWN_DISPUTE, f"{p['dispute_id']} is not a dispute of session "
                         f"{p['session_id']} at this station")
    return d


def _statement_problem(statement: str) -> Rejection | None:
    if len(statement) > STATEMENT_CHARS_MAX:
        return Rejection(Reason.STATEMENT_TOO_LONG, f"at most {STATEMENT_CHARS_MAX} characters")
    return None


def _evidence_problem(state: LedgerState, session_id: str, known: list[str],
                      cited: list[str]) -> Rejection | None:
    """Cited ids must be in the session's lineage (its admitted evidence events) or already on
    the dispute (ids it cited before, its own events)."""
    if len(cited) > EVIDENCE_IDS_PER_EVENT_MAX:
        return Rejection(Reason.TOO_MUCH_EVIDENCE, f"{EVIDENCE_IDS_PER_EVENT_MAX} ids per event")
    s = sessions.sessions(state).get(session_id)
    summarised = settled_summaries(state).get(session_id, {}).get("ev", [])
    lineage = set(known) | set(s["evidence_event_ids"] if s else summarised)
    unknown = [event_id for event_id in cited if event_id not in lineage]
    if unknown:
        return Rejection(Reason.UNKNOWN_EVIDENCE, f"not in the lineage of session {session_id}: "
                         f"{', '.join(unknown[:5])}")
    return None


# ---- resolve ----------------------------------------------------------------------------------


def resolve_dispute(state: LedgerState, cmd: Command, view: GovernanceView,
             out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    d = _dispute(state, p)
    if isinstance(d, Rejection):
        return d
    if d["status"] != OPEN:
        return Rejection(Reason.DISPUTE_ALREADY_RESOLVED, f"{d['dispute_id']} was resolved "
                         f"{d['outcome']}")
    arbiter = _arbiter_problem(d, cmd, view)
    if arbiter is not None:
        return arbiter
    if p["outcome"] not in OUTCOMES:
        return Rejection(Reason.INVALID_OUTCOME, f"{p['outcome']} is not one of {sorted(OUTCOMES)}")
    problem = _statement_problem(p["reasoning"])
    if problem is not None:
        return problem
    if not d["settlement_id"]:  # an interrupted charge disputed before it settled
        s = sessions.sessions(state).get(d["session_id"])
        if s is not None and s["settlement_id"] and s.get("close_out") is not None:
            d["settlement_id"] = s["settlement_id"]
            _snapshot(state, s, s["settlement_id"], cmd.occurred_at_ms)
    correction: dict[str, Any] | None = None
    if p["outcome"] in CORRECTIONS:
        made = _correction(state, d, cmd)
        if isinstance(made, Rejection):
            return made
        correction = made
    elif p["adjustment_amount"] != ZERO:
        return Rejection(Reason.INVALID_ADJUSTMENT, f"{p['outcome']} carries no adjustment amount")
    d.update(status=RESOLVED, outcome=p["outcome"], resolved_at_ms=cmd.occurred_at_ms)
    d["event_ids"].append(cmd.event_id)
    d["seq"] += 1
    if correction is not None:
        _apply_correction(state, d, correction)
    _emit(state, out, _recorded(state, d, DisputeChange.RESOLVED, cmd, p["reasoning"],
                                correction))
    if correction is not None:
        _emit(state, out, decided(DecisionType.SETTLEMENT_ADMITTED, correction))
        _emit(state, out, decided(DecisionType.SETTLEMENT_FINALISED, {
            "settlement_id": correction["settlement_id"], "session_id": d["session_id"],
            "signer_ids": [cmd.author_id], "finalised_at_ms": cmd.occurred_at_ms}))
    return None


def _arbiter_problem(d: dict[str, Any], cmd: Command, view: GovernanceView) -> Rejection | None:
    """The author is the dispute's rate authority, or holds an ARBITER credential issued by an
    issuer that authority delegated directly (chain: credential, issuer, authority, ...)."""
    authority = d["rate_authority_id"]
    if cmd.author_id == authority:
        return None
    resolve: Callable[[str, int], Any] | None = getattr(view, "resolve", None)
    verdict = resolve(cmd.author_id, cmd.occurred_at_ms) if resolve is not None else None
    chain: tuple[str, ...] = getattr(verdict, "chain", ())
    principal = getattr(verdict, "principal", None)
    roles: frozenset[str] = getattr(principal, "roles", frozenset())
    if "ARBITER" in roles and len(chain) >= 3 and chain[2] == authority:
        return None
    return Rejection(Reason.NOT_THE_ARBITER, f"{cmd.author_id} is not {authority} nor an ARBITER "
                     f"credential delegated by it")


def _correction(state: LedgerState, d: dict[str, Any],
                cmd: Command) -> dict[str, Any] | Rejection:
    """The new settlement an ADJUSTED or VOIDED outcome issues (not applied yet)."""
    p = cmd.payload
    held = disputed_settlements(state).get(d["settlement_id"]) if d["settlement_id"] else None
    if held is None:
        return Rejection(Reason.NO_SETTLEMENT, f"session {d['session_id']} has no settlement to "
                         "correct")
    if held["voided"]:
        return Rejection(Reason.SETTLEMENT_VOIDED, f"{d['settlement_id']} is voided already")
    if p["currency"] != held["currency"]:
        return Rejection(Reason.CURRENCY_MISMATCH, f"the settlement is in {held['currency']}")
    tariff = Tariff(**held["tariff"])
    if p["outcome"] == DisputeOutcome.VOIDED:
        if p["adjustment_amount"] != ZERO:
            return Rejection(Reason.INVALID_ADJUSTMENT,
                             "a void credits everything: amount must be 0")
        lines = [credited(ln) for ln in held["lines"]]
        total = sum((ln["amount"] for ln in lines), ZERO)
    else:
        amount = tariff.round(p["adjustment_amount"])
        if amount == ZERO:
            return Rejection(Reason.INVALID_ADJUSTMENT, "the adjustment rounds to zero")
        lines, total = with_tax(tariff, [line(
            LineKind.ADJUSTMENT, f"dispute {d['dispute_id']} ({d['kind']}) adjustment", 0, ZERO,
            amount)])
        if held["net_total"] + total < ZERO:
            return Rejection(Reason.ADJUSTMENT_EXCEEDS_SETTLEMENT, f"credit {total} exceeds the "
                             f"{held['net_total']} still charged: void it instead")
        if total > held["original_total"]:
            return Rejection(Reason.ADJUSTMENT_TOO_LARGE, f"{total} exceeds the original charge "
                             f"{held['original_total']}")
    return {
        "settlement_id": f"adj:{d['session_id']}:{d['dispute_id']}",
        "session_id": d["session_id"], "identity": held["identity"],
        "tariff_id": held["tariff_id"], "currency": held["currency"],
        "rounding": held["rounding"], "lines": lines, "total_amount": total,
        "energy_import_wh": 0, "energy_export_wh": 0,
        "evidence_event_ids": list(dict.fromkeys(d["evidence_event_ids"] + d["event_ids"]
                                                 + [cmd.event_id])),
        "required_signer_ids": [cmd.author_id], "kind": CORRECTIONS[p["outcome"]],
        "adjusts_settlement_id": d["settlement_id"], "admitted_at_ms": cmd.occurred_at_ms,
    }


def credited(ln: dict[str, Any]) -> dict[str, Any]:
    """A credit-note line: the same line with quantity and amount negated."""
    return dict(ln, description=f"credit: {ln['description']}"[:500],
                quantity_wh=-ln["quantity_wh"], amount=-ln["amount"])


def _apply_correction(state: LedgerState, d: dict[str, Any], correction: dict[str, Any]) -> None:
    held = disputed_settlements(state)[d["settlement_id"]]
    held["lines"].extend(dict(ln) for ln in correction["lines"])
    held["net_total"] += correction["total_amount"]
    held["corrections"].append(correction["settlement_id"])
    held["voided"] = correction["kind"] == SettlementKind.CREDIT
    d["adjustment_settlement_id"] = correction["settlement_id"]


# ---- records and housekeeping -----------------------------------------------------------------


def _recorded(state: LedgerState, d: dict[str, Any], change: DisputeChange, cmd: Command,
              statement: str, correction: dict[str, Any] | None = None) -> Decision:
    held = disputed_settlements(state).get(d["settlement_id"], {})
    return decided(DecisionType.DISPUTE_RECORDED, {
        "dispute_id": d["dispute_id"], "session_id": d["session_id"],
        "station_id": state.station_id, "settlement_id": d["settlement_id"], "kind": d["kind"],
        "change": change, "status": d["status"], "seq": d["seq"],
        "opened_by_credential_id": d["opened_by"],
        "actor_credential_id": d["opened_by"] if change == DisputeChange.OPENED else cmd.author_id,
        "cause_event_id": cmd.event_id, "rate_authority_id": d["rate_authority_id"],
        "evidence_event_ids": list(d["evidence_event_ids"]), "statement": statement,
        "outcome": d["outcome"],
        "adjustment_settlement_id": correction["settlement_id"] if correction else "",
        "adjustment_total": correction["total_amount"] if correction else ZERO,
        "currency": held.get("currency", ""), "opened_at_ms": d["opened_at_ms"],
        "recorded_at_ms": cmd.occurred_at_ms,
    })


def _prune(state: LedgerState) -> None:
    """Forget resolved disputes (and their settlements' copies) once the session has left the
    live ledger and the resolution is older than the ledger keeps finished bookings: no new
    dispute can name that session any more, so nothing can refer to them (they stay in the
    lineage and ClickHouse)."""
    live = sessions.sessions(state)
    horizon = state.clock_ms - ledger.FINISHED_KEPT_MS
    table = disputes(state)
    for dispute_id in [i for i, d in table.items() if d["status"] == RESOLVED
                       and d["session_id"] not in live and d["resolved_at_ms"] < horizon]:
        del table[dispute_id]
    referenced = {d["settlement_id"] for d in table.values()}
    held = disputed_settlements(state)
    for settlement_id in [i for i, h in held.items()
                          if i not in referenced and h["session_id"] not in live]:
        del held[settlement_id]


# ---- the dispute window (issue 16) ------------------------------------------------------------
# The rate authority's rules declare how long after a settlement a dispute may be opened
# (``AllocationRulesPublished.dispute_window_ms``, 90 days unless they say otherwise). The live
# ledger forgets a finished session FINISHED_KEPT_MS after its slot; what a dispute needs of a
# settled session (charging session, battery swap, wireless trip alike) is kept as a compact
# summary from its admission until the window has closed (plus FINISHED_KEPT_MS, so a late
# dispute is refused DISPUTE_WINDOW_CLOSED rather than UNKNOWN_SESSION): settlement id, the
# parties, the rate authority, currency and rounding, the tax, the lines issued so far
# (original and corrections) and the net total. At most SETTLED_KEPT_MAX summaries and an
# estimated SETTLED_BYTES_KEPT_MAX per station; past either the oldest is forgotten early and a
# dispute naming it is refused DISPUTE_WINDOW_CLOSED (``forgotten_through_ms`` says up to when).

DISPUTE_WINDOW_MS_DEFAULT = 90 * 24 * 3_600_000
# ~770 serialised bytes per summary of a two-line settlement, ~120 more per further line
# (tests/unit/test_market_rules_disputes.py measures it). The summaries are held to an estimate
# of SETTLED_BYTES_KEPT_MAX of the 900 kB STATION_STATE_BYTES_MAX (a road operator's own trips
# may use 600 kB of it: wireless.ROAD_STATE_BYTES_MAX), and to SETTLED_KEPT_MAX summaries.
SETTLED_KEPT_MAX = 500
SETTLED_BYTES_KEPT_MAX = 250_000
SUMMARY_BYTES_EST, SUMMARY_LINE_BYTES_EST = 560, 130  # >= measured (summaries_bytes_est)
EVIDENCE_IDS_SUMMARISED_MAX = 4  # more: the first and the last (the handshake, the close-out)
_LINE_FIELDS = ("kind", "description", "quantity_wh", "unit_rate_per_kwh", "amount",
                "from_at_ms", "until_at_ms")


def settled_summaries(state: LedgerState) -> dict[str, dict[str, Any]]:
    """session id -> the compact summary of its settlement (see above)."""
    return state.extra.setdefault("settled", {})  # type: ignore[no-any-return]


def dispute_window_ms(state: LedgerState) -> int:
    return int(state.rules.get("dispute_window_ms") or DISPUTE_WINDOW_MS_DEFAULT)


def window_problem(state: LedgerState, session_id: str) -> Rejection | None:
    """DISPUTE_WINDOW_CLOSED when the ledger's clock is past the session's settlement + the
    rules' dispute window (the ledger's clock: a vehicle cannot back-date its dispute)."""
    window = dispute_window_ms(state)
    summary = settled_summaries(state).get(session_id)
    if summary is not None and state.clock_ms > summary["at"] + window:
        return Rejection(Reason.DISPUTE_WINDOW_CLOSED, f"{summary['i']} settled at "
                         f"{summary['at']}: the {window} ms dispute window closed at "
                         f"{summary['at'] + window}")
    forgotten = int(state.extra.get("settled_forgotten_through_ms", 0))
    if summary is None and session_id not in sessions.sessions(state) and forgotten:
        return Rejection(Reason.DISPUTE_WINDOW_CLOSED, f"{session_id} is not disputable here: "
                         f"the station keeps {SETTLED_KEPT_MAX} settled sessions disputable and "
                         f"forgot those settled up to {forgotten} early")
    return None


def summarise(decision: Decision, view: GovernanceView) -> dict[str, Any]:
    """The compact summary of an admitted (original) settlement."""
    p = decision.payload
    filed = view.tariffs.get(p["tariff_id"]) or {}
    ev = list(p["evidence_event_ids"])
    return {
        "i": p["settlement_id"], "p": list(p["required_signer_ids"][:2]),
        "ra": str(filed.get("rate_authority_id") or p["identity"]["rate_authority_id"]),
        "id": dict(p["identity"]), "t": p["tariff_id"], "c": p["currency"], "r": p["rounding"],
        "mu": int(filed.get("currency_minor_units", 2)),
        "tx": Decimal(filed.get("tax_percent", 0)), "at": int(p["admitted_at_ms"]),
        "l": [[ln[f] for f in _LINE_FIELDS] for ln in p["lines"]], "o": p["total_amount"],
        "net": p["total_amount"], "x": 0, "n": 0,
        "ev": ev if len(ev) <= EVIDENCE_IDS_SUMMARISED_MAX else [ev[0], ev[-1]],
    }


def remember_settled(state: LedgerState, decisions: list[Decision], view: GovernanceView) -> None:
    """Fold one step's decisions into the settled-session summaries, then forget the ones past
    the window (and the oldest past SETTLED_KEPT_MAX)."""
    kept = settled_summaries(state)
    for decision in decisions:
        p, kind = decision.payload, decision.event_type
        if kind == DecisionType.SETTLEMENT_ADMITTED and not p["adjusts_settlement_id"]:
            kept[p["session_id"]] = summarise(decision, view)
        elif kind == DecisionType.SETTLEMENT_ADMITTED and p["session_id"] in kept:
            _corrected(kept[p["session_id"]], p, voids=p["kind"] == SettlementKind.CREDIT)
        elif kind == DecisionType.SETTLEMENT_REVERSED and p["session_id"] in kept:
            _corrected(kept[p["session_id"]], p, voids=True)
        elif kind == DecisionType.SETTLEMENT_EXPIRED:
            kept.pop(p["session_id"], None)  # never final: nothing to dispute
        elif (kind == DecisionType.DISPUTE_RECORDED and p["change"] == DisputeChange.OPENED
              and p["session_id"] in kept):
            kept[p["session_id"]]["n"] += 1
    if not kept:
        return
    horizon = state.clock_ms - dispute_window_ms(state) - ledger.FINISHED_KEPT_MS
    for session_id in [i for i, summary in kept.items() if summary["at"] < horizon]:
        del kept[session_id]
    held_bytes = summaries_bytes_est(kept)
    if len(kept) <= SETTLED_KEPT_MAX and held_bytes <= SETTLED_BYTES_KEPT_MAX:
        return
    live = sessions.sessions(state)
    for session_id in sorted(kept, key=lambda i: (kept[i]["at"], i)):
        if len(kept) <= SETTLED_KEPT_MAX and held_bytes <= SETTLED_BYTES_KEPT_MAX:
            return
        if session_id in live:
            continue
        held_bytes -= summaries_bytes_est({session_id: kept[session_id]})
        state.extra["settled_forgotten_through_ms"] = max(
            int(state.extra.get("settled_forgotten_through_ms", 0)), kept[session_id]["at"])
        del kept[session_id]


def summaries_bytes_est(kept: dict[str, dict[str, Any]]) -> int:
    """An upper estimate of the serialised bytes of ``kept``."""
    return sum(SUMMARY_BYTES_EST + SUMMARY_LINE_BYTES_EST * len(s["l"]) for s in kept.values())


def _corrected(summary: dict[str, Any], p: dict[str, Any], voids: bool) -> None:
    summary["l"].extend([ln[f] for f in _LINE_FIELDS] for ln in p["lines"])
    summary["net"] += p["total_amount"]
    summary["x"] = int(voids or summary["x"])


def _from_summary(state: LedgerState, session_id: str) -> dict[str, Any] | None:
    """A settled session that has left the live ledger, as much of it as a dispute reads."""
    summary = settled_summaries(state).get(session_id)
    if summary is None:
        return None
    vehicle, station = (summary["p"] + [""])[:2]
    return {
        "session_id": session_id, "settlement_id": summary["i"], "close_out": {"summarised": True},
        "vehicle_credential_id": vehicle, "station_credential_id": station,
        "tariff": {"tariff_id": summary["t"]}, "identity": summary["id"],
        "evidence_event_ids": list(summary["ev"]), "_summary": summary,
    }


def _held_from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The disputed-settlement copy ``_snapshot`` keeps, rebuilt from a summary."""
    tariff = {"tariff_id": summary["t"], "currency": summary["c"], "minor_units": summary["mu"],
              "rounding": summary["r"], "tax_percent": summary["tx"],
              "congestion_fee_per_kwh": ZERO, "renewable_adder_per_kwh": ZERO}
    return {
        "session_id": "", "identity": dict(summary["id"]), "tariff": tariff,
        "tariff_id": summary["t"], "currency": summary["c"], "rounding": summary["r"],
        "original_total": summary["o"], "net_total": summary["net"],
        "lines": [dict(zip(_LINE_FIELDS, ln, strict=True)) for ln in summary["l"]],
        "corrections": [], "voided": bool(summary["x"]),
    }


# ---- payment failures (issue 16) --------------------------------------------------------------
# The vehicle's payment agent reports a failed payment with a signed PaymentFailed (policy: a
# PAYMENT_AGENT credential); it must be the agent the vehicle credential names in its
# ``payment_agent`` attribute (NOT_THE_PAYMENT_AGENT otherwise), for the vehicle of a settled
# session of this station. It opens a PAYMENT_FAILURE dispute (id ``pay:<event id>``) by the
# same rules as a party's DisputeOpened (window, one open dispute per session, ...).

PAYMENT_AGENT_ATTRIBUTE = "payment_agent"


def payment_failed(state: LedgerState, cmd: Command, view: GovernanceView,
                   out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    vehicle = p["vehicle_credential_id"]
    resolve: Callable[[str, int], Any] | None = getattr(view, "resolve", None)
    verdict = resolve(vehicle, cmd.occurred_at_ms) if resolve is not None else None
    principal = getattr(verdict, "principal", None)
    named = principal.attribute(PAYMENT_AGENT_ATTRIBUTE) if principal is not None else ""
    if not named or named != cmd.author_id:
        return Rejection(Reason.NOT_THE_PAYMENT_AGENT, f"{cmd.author_id} is not the payment "
                         f"agent {vehicle} names ({named or 'none'})")
    s = sessions.sessions(state).get(p["session_id"]) or _from_summary(state, p["session_id"])
    if s is not None and s["vehicle_credential_id"] != vehicle:
        return Rejection(Reason.NOT_A_SESSION_PARTY, f"{vehicle} is not the vehicle of session "
                         f"{p['session_id']}")
    opened = {"dispute_id": f"pay:{cmd.event_id}", "session_id": p["session_id"],
              "settlement_id": p["settlement_id"], "kind": str(DisputeKind.PAYMENT_FAILURE),
              "claim": f"payment failed: {p['reason']}", "opened_at_ms": p["failed_at_ms"],
              "station_id": p["station_id"], "evidence_event_ids": []}
    as_vehicle = Command(cmd.event_type, opened, cmd.occurred_at_ms, vehicle, cmd.event_id,
                         cmd.event_hash)
    return open_dispute(state, as_vehicle, view, out, agent_id=cmd.author_id)
