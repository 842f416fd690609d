"""P4: a revoked credential propagates into every station ledger that rested on it. Pure.

The governance processor fans each admitted ``CredentialRevoked`` out to every partition of the
market topic as a ``RevocationRouted`` record (:func:`fan_out`); each station ledger on that
partition then re-evaluates, in its own single-writer order, everything whose admissibility rested
on one of the revoked credentials (the revoked one and everything that chained through it):

- the station's own credential: no new orders; every future reservation cancelled; every active
  session stopped by a signed order; every settlement closed out from the effective time on
  inadmissible;
- a vehicle: its future reservations cancelled; its active sessions stopped;
- a meter: its connector is taken out of service from the effective time (an outage), so the
  reservations on it are re-allocated to another connector or slot under the published rules, or
  cancelled; active sessions on it stopped;
- any party of a settlement: a settlement whose close-out is at or after the effective time is
  inadmissible; one closed out before it is upheld.

Every item looked at gets a ``CredentialReevaluated`` decision naming the outcome, so the lineage
and ClickHouse (``credential_reevaluations``) show what the revocation did and did not touch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chargemesh.processors.decisions import Decision, DecisionType, decided
from chargemesh.processors.governance import TrustStore
from chargemesh.processors.ledger import disputes
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.ledger.sessions import sessions
from chargemesh.processors.ledger.state import (
    Command,
    GovernanceView,
    LedgerState,
    Outage,
    _displace,
    _emit,
    released,
)
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.records import Output, decision_id, routing_key
from chargemesh.processors.statuses import (
    CapacityCause,
    ReevaluationOutcome,
    ReevaluationSubject,
    RepriceStatus,
    ReservationStatus,
    SessionStatus,
    StopReason,
)
from chargemesh.streams import topics
from chargemesh.streams.envelope import SignedEvent, seal
from chargemesh.streams.keys import Signer

CREDENTIAL_REVOKED = "chargemesh.governance.v1.CredentialRevoked"
REVOCATION_ROUTED = "chargemesh.ledger.v1.RevocationRouted"
# A revocation names at most this many cascaded credentials (the rest still fail their chain
# at ingress; the record says it was truncated).
REVOCATION_CASCADE_MAX = 10_000
REVOKED = Reason.CREDENTIAL_REVOKED
OUTAGE_FOREVER_MS = 2**62


def _reevaluated(state: LedgerState, out: list[Decision], p: dict[str, Any],
                 kind: ReevaluationSubject, subject_id: str,
                 outcome: ReevaluationOutcome) -> None:
    _emit(state, out, decided(DecisionType.CREDENTIAL_REEVALUATED, {
        "revoked_credential_id": p["revoked_credential_id"], "subject_kind": kind,
        "subject_id": subject_id, "station_id": state.station_id, "outcome": outcome,
        "revoked_at_ms": p["effective_at_ms"]}))


def apply_revocation(state: LedgerState, cmd: Command, view: GovernanceView,
                     out: list[Decision]) -> Rejection | None:
    p = cmd.payload
    revoked = frozenset(p["revoked_credential_ids"]) | {p["revoked_credential_id"]}
    effective = p["effective_at_ms"]
    cal = state.calendar
    if cal is None:
        return None  # nothing booked here yet: nothing rested on anything
    station_cred = cal.get("station_credential_id", "")
    station_hit = station_cred in revoked
    if station_hit:
        known = state.extra.get("station_revoked_at_ms")
        state.extra["station_revoked_at_ms"] = effective if known is None else min(known, effective)
    meters_hit = sorted(cid for cid, c in cal["connectors"].items()
                        if c.get("meter_credential_id") in revoked)
    for cid in meters_hit:
        state.outages.append(Outage(cid, effective, OUTAGE_FOREVER_MS, 0,
                                     CapacityCause.METER_REVOKED))
    first = len(out)
    _reservations(state, p, revoked, station_hit, meters_hit, out)
    _sessions(state, p, revoked, out, cmd.occurred_at_ms)
    # Decided at the routed revocation's time, not the ledger's clock when it arrived: where the
    # routed record lands among the station's own events depends on timing (a worker restart),
    # what it decides must not.
    out[first:] = [dataclasses.replace(d, at_ms=cmd.occurred_at_ms) for d in out[first:]]
    return None


def _reservations(state: LedgerState, p: dict[str, Any], revoked: frozenset[str],
                  station_hit: bool, meters_hit: list[str], out: list[Decision]) -> None:
    effective = p["effective_at_ms"]
    future = [r for r in sorted(state.reservations.values(), key=lambda r: r.seq)
              if r.status == ReservationStatus.ACTIVE and r.stop_ms > effective]
    moved: list[ledger.Reservation] = []
    for res in future:
        if station_hit or res.vehicle_credential_id in revoked:
            _emit(state, out, released(state, res, REVOKED, p["revoked_credential_id"]))
            _reevaluated(state, out, p, ReevaluationSubject.RESERVATION, res.reservation_id,
                         ReevaluationOutcome.CANCELLED)
        elif res.connector_id in meters_hit:
            moved.append(res)
    if moved:
        before = len(out)
        _displace(state, moved, Reason.METER_REVOKED, out)
        outcome_of = {d.payload["reservation_id"]: (
            ReevaluationOutcome.REALLOCATED if d.event_type == DecisionType.SLOT_REALLOCATED
            else ReevaluationOutcome.CANCELLED)
            for d in out[before:] if "reservation_id" in d.payload}
        for res in moved:
            _reevaluated(state, out, p, ReevaluationSubject.RESERVATION, res.reservation_id,
                         outcome_of.get(res.reservation_id, ReevaluationOutcome.UPHELD))


def _sessions(state: LedgerState, p: dict[str, Any], revoked: frozenset[str],
              out: list[Decision], routed_at_ms: int) -> None:
    effective = p["effective_at_ms"]
    for s in sorted(sessions(state).values(), key=lambda x: x["session_id"]):
        parties = {s["station_credential_id"], s["vehicle_credential_id"],
                   s["meter_credential_id"], *s["grid_operator_ids"]}
        if not parties & revoked:
            continue
        s.setdefault("revoked_party_ids", [])
        s["revoked_party_ids"] = sorted(set(s["revoked_party_ids"]) | (parties & revoked))
        s["revoked_from_ms"] = min(s.get("revoked_from_ms") or effective, effective)
        if s["status"] == SessionStatus.ACTIVE:
            _stop(state, s, max(effective, s["started_at_ms"]), out)
            _reevaluated(state, out, p, ReevaluationSubject.SESSION, s["session_id"],
                         ReevaluationOutcome.STOPPED)
        elif s["status"] == SessionStatus.STOPPED:
            _reevaluated(state, out, p, ReevaluationSubject.SESSION, s["session_id"],
                         ReevaluationOutcome.CLOSE_OUT_INADMISSIBLE)
        elif s["status"] in (SessionStatus.CLOSED_OUT, SessionStatus.FINAL):
            closed_at = s["close_out"]["closed_at_ms"]
            if closed_at >= effective:
                s["status"] = SessionStatus.INADMISSIBLE
                _reevaluated(state, out, p, ReevaluationSubject.SETTLEMENT, s["settlement_id"],
                             ReevaluationOutcome.INADMISSIBLE)
                _reverse(state, s, p, out, routed_at_ms)
            else:
                _reevaluated(state, out, p, ReevaluationSubject.SETTLEMENT, s["settlement_id"],
                             ReevaluationOutcome.UPHELD)


def _reverse(state: LedgerState, s: dict[str, Any], p: dict[str, Any],
             out: list[Decision], routed_at_ms: int) -> None:
    """An admitted settlement judged inadmissible is reversed on the billing feed by a record of
    its own (``SettlementReversed``, final at once): every line issued for it so far (the charge
    and any dispute corrections) negated, so the net is 0. Nothing is issued when no settlement
    was admitted (a V2G session still waiting for its clearing price) or a dispute voided it."""
    if not s["settlement_id"]:
        return
    # The time of the routed revocation, not the ledger's clock when it arrived: where the routed
    # record lands among the station's own events depends on timing, the reversal must not.
    disputes.snapshot(state, s, s["settlement_id"], routed_at_ms)
    held = disputes.disputed_settlements(state)[s["settlement_id"]]
    if held["voided"]:
        return
    lines = [dict(ln, description=f"reversal: {ln['description']}"[:500],
                  quantity_wh=-ln["quantity_wh"], amount=-ln["amount"]) for ln in held["lines"]]
    total = -held["net_total"]
    reversal_id = f"rev:{s['session_id']}"
    held["lines"].extend(dict(ln) for ln in lines)
    held["net_total"] += total
    held["corrections"].append(reversal_id)
    held["voided"] = True
    _emit(state, out, decided(DecisionType.SETTLEMENT_REVERSED, {
        "settlement_id": reversal_id, "reverses_settlement_id": s["settlement_id"],
        "session_id": s["session_id"], "identity": held["identity"],
        "tariff_id": held["tariff_id"], "currency": held["currency"],
        "rounding": held["rounding"], "lines": lines, "total_amount": total,
        "energy_import_wh": -(s["close_out"]["final_import_wh"] - s["meter_start_wh"]),
        "reason_code": REVOKED, "revoked_credential_id": p["revoked_credential_id"],
        "revoked_at_ms": p["effective_at_ms"], "cause_event_id": p["revocation_event_id"],
        "reversed_at_ms": routed_at_ms}))


def _stop(state: LedgerState, s: dict[str, Any], stopped_at: int, out: list[Decision]) -> None:
    """An active session of a revoked party stopped by the ledger's own signed order."""
    s.update(status=SessionStatus.STOPPED, stopped_at_ms=stopped_at,
             stop_reason=StopReason.REVOCATION)
    for rp in s["reprices"]:
        if rp["status"] == RepriceStatus.PROPOSED:
            rp["status"] = RepriceStatus.REFUSED
    _emit(state, out, decided(DecisionType.SESSION_STOPPED, {
        "session_id": s["session_id"], "station_id": state.station_id,
        "stopped_at_ms": stopped_at, "reason": StopReason.REVOCATION}))


def fan_out(event: SignedEvent, payload: dict[str, Any], store: TrustStore, signer: Signer,
            partitions: int) -> list[Output]:
    """One ``RevocationRouted`` per market partition for an admitted ``CredentialRevoked``, so
    every station ledger re-evaluates in its own order what rested on the revoked credentials
    (the revoked one and everything ``store`` knows to chain through it)."""
    cascade = store.descendants(payload["credential_id"])
    truncated = len(cascade) > REVOCATION_CASCADE_MAX
    outputs = []
    for partition in range(partitions):
        key = routing_key(f"revocation:{event.event_id}", partition, partitions)
        routed = seal(REVOCATION_ROUTED, {
            "routing_key": key, "market_partition": partition,
            "revocation_event_id": event.event_id,
            "revoked_credential_id": payload["credential_id"],
            "effective_at_ms": payload["effective_at_ms"],
            "revoked_credential_ids": cascade[:REVOCATION_CASCADE_MAX],
            "cascade_truncated": truncated, "revocation_event": event.encode(),
        }, author=signer, subject_key=key, occurred_at_ms=event.body.occurred_at_ms,
            prev_hash=event.event_hash, event_id=decision_id(event.event_id, partition))
        outputs.append(Output(topics.MARKET.name, key.encode(), routed.encode()))
    return outputs
