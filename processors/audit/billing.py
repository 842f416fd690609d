"""The audit's checks of issue 16's billing records (pure: payloads in, problems out).

A ``SettlementExpired`` is due only when the rate authority's finality window had passed since
the session's close-out and the signers it names were really missing; a ``SettlementReversed``
rests on a revocation of a credential the settlement rested on and negates exactly what it
voids; no settled line bills energy above the filed ceiling. The ledger's own functions
(``ledger/sessions.expire_settlements``, ``ledger/revocation._reverse``) decide them; these
recompute them from the admitted log alone.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from decimal import Decimal
from typing import Any

from chargemesh.processors.governance import Revocation
from chargemesh.processors.ledger import power
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.statuses import GridEventKind, LineKind

# The default finality window the ledger applies when the rules declare none
# (``ledger/sessions.FINALITY_WINDOW_MS_DEFAULT``, repeated here: the audit does not import
# the ledger).
FINALITY_WINDOW_MS_DEFAULT = 48 * 3_600_000
# Lines that bill energy at a rate: none may exceed the filed ceiling (M6, M3).
ENERGY_LINE_KINDS = (LineKind.ENERGY, LineKind.ENERGY_REPRICED)


def finality_window_ms(rules: dict[str, Any] | None) -> int:
    return int((rules or {}).get("finality_window_ms") or FINALITY_WINDOW_MS_DEFAULT)


def expiry_problems(expired: dict[str, Any], closed_at_ms: int | None, window_ms: int,
                    decided_at_ms: int, signed: Collection[str],
                    required: Sequence[str] | None, finalised: bool) -> list[Rejection]:
    """``expired`` (a SettlementExpired payload) against the session's close-out time, the
    rules' finality window, the ledger clock it was decided at (its causing event's time), the
    signers whose signatures the ledger had admitted by then, and the admitted settlement's
    required signers (None: no settlement was admitted, a V2G session waiting for its price)."""
    out: list[Rejection] = []
    sid = expired["session_id"]
    if closed_at_ms is None:
        out.append(Rejection(Reason.EXPIRY_NOT_DUE, f"{sid} expired but was never closed out"))
    elif int(expired["closed_at_ms"]) != closed_at_ms:
        out.append(Rejection(Reason.EXPIRY_NOT_DUE, f"{sid} expired naming close-out at "
                             f"{expired['closed_at_ms']}; it closed out at {closed_at_ms}"))
    if int(expired["finality_window_ms"]) != window_ms:
        out.append(Rejection(Reason.EXPIRY_NOT_DUE, f"{sid} expired under a window of "
                             f"{expired['finality_window_ms']} ms; the rules declare {window_ms}"))
    due_ms = (closed_at_ms if closed_at_ms is not None else int(expired["closed_at_ms"])) \
        + window_ms
    if int(expired["expired_at_ms"]) != due_ms or decided_at_ms < due_ms:
        out.append(Rejection(Reason.EXPIRY_NOT_DUE, f"{sid} expired at "
                             f"{expired['expired_at_ms']} (decided at {decided_at_ms}); "
                             f"its window closes at {due_ms}"))
    if required is not None and list(expired["required_signer_ids"]) != list(required):
        out.append(Rejection(Reason.EXPIRED_SIGNER_NOT_MISSING, f"{sid} expired requiring "
                             f"{list(expired['required_signer_ids'])}; the settlement "
                             f"requires {list(required)}"))
    missing = list(expired["missing_signer_ids"])
    present = [s for s in missing if s in signed]
    if present or not missing or finalised:
        out.append(Rejection(Reason.EXPIRED_SIGNER_NOT_MISSING, f"{sid} expired naming "
                             f"{missing} missing; signed before it: {present}"
                             + ("; the settlement was finalised" if finalised else "")))
    expected = [s for s in expired["required_signer_ids"] if s not in signed]
    if missing != expected:
        out.append(Rejection(Reason.EXPIRED_SIGNER_NOT_MISSING, f"{sid} names {missing} "
                             f"missing; the admitted log leaves {expected} missing"))
    return out


def negated(lines: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each line as numbers, quantity and amount negated (the description is free text)."""
    return [(str(ln["kind"]), -int(ln["quantity_wh"]), Decimal(ln["unit_rate_per_kwh"]),
             -Decimal(ln["amount"]), int(ln["from_at_ms"]), int(ln["until_at_ms"]))
            for ln in lines]


def as_numbers(lines: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(str(ln["kind"]), int(ln["quantity_wh"]), Decimal(ln["unit_rate_per_kwh"]),
             Decimal(ln["amount"]), int(ln["from_at_ms"]), int(ln["until_at_ms"]))
            for ln in lines]


def reversal_problems(reversal: dict[str, Any], voided: Sequence[dict[str, Any]],
                      revocation: Revocation | None, rested_on: Collection[str]
                      ) -> list[Rejection]:
    """``reversal`` (a SettlementReversed payload) against what it voids (the admitted
    settlement first, then its corrections issued before the reversal, in order), the
    governance replay's revocation of ``revoked_credential_id`` and the credentials the
    settlement rested on (``rested_on``: the revoked one and everything chaining through it
    must include one of them)."""
    out: list[Rejection] = []
    sid = reversal["session_id"]
    if revocation is None:
        out.append(Rejection(Reason.REVERSAL_WITHOUT_REVOCATION, f"{sid}: "
                             f"{reversal['revoked_credential_id']} was never revoked"))
    elif (revocation.effective_at_ms != int(reversal["revoked_at_ms"])
          or revocation.event_id != reversal["cause_event_id"]):
        out.append(Rejection(Reason.REVERSAL_WITHOUT_REVOCATION, f"{sid}: the revocation of "
                             f"{reversal['revoked_credential_id']} is {revocation.event_id} "
                             f"from {revocation.effective_at_ms}; the reversal names "
                             f"{reversal['cause_event_id']} from {reversal['revoked_at_ms']}"))
    elif not rested_on:
        out.append(Rejection(Reason.REVERSAL_WITHOUT_REVOCATION, f"{sid}: the settlement rests "
                             f"on no credential chaining through "
                             f"{reversal['revoked_credential_id']}"))
    if not voided:
        out.append(Rejection(Reason.REVERSAL_MISMATCH, f"{sid}: reverses "
                             f"{reversal['reverses_settlement_id']}, which was never admitted"))
        return out
    original = voided[0]
    expected = [ln for v in voided for ln in negated(v["lines"])]
    total = -sum((Decimal(v["total_amount"]) for v in voided), Decimal(0))
    fields = ("identity", "tariff_id", "currency", "rounding")
    if (as_numbers(reversal["lines"]) != expected or Decimal(reversal["total_amount"]) != total
            or int(reversal["energy_import_wh"]) != -int(original["energy_import_wh"])
            or any(reversal[f] != original[f] for f in fields)):
        out.append(Rejection(Reason.REVERSAL_MISMATCH, f"{sid}: reverses {len(expected)} lines "
                             f"totalling {-total} {original['currency']} for "
                             f"{original['energy_import_wh']} Wh; the reversal has "
                             f"{len(reversal['lines'])} lines, {reversal['total_amount']} "
                             f"{reversal['currency']}, {reversal['energy_import_wh']} Wh"))
    return out




def stop_problems(stop: dict[str, Any], billed_at_ms: Sequence[int],
                  proposals: Sequence[dict[str, Any]], answered: Collection[str]
                  ) -> list[Rejection]:
    """A ledger stop over the price (``stop``, a SessionStopped payload with a reason_code)
    against the times of the evidence its session's settlement billed (readings, close-out), the
    ledger's proposals to the session and the grid event ids of the re-prices its vehicle
    answered before the stop: nothing is billed after it, and an unanswered re-price stop is due
    (a proposal's ``respond_by_ms`` passed unanswered)."""
    out: list[Rejection] = []
    sid, stopped_ms = stop["session_id"], int(stop["stopped_at_ms"])
    late = [t for t in billed_at_ms if t > stopped_ms]
    if late:
        out.append(Rejection(Reason.BILLED_AFTER_STOP, f"{sid} stopped at {stopped_ms}; "
                             f"billed evidence at {late[:5]}"))
    if stop.get("reason_code") == Reason.REPRICE_UNANSWERED and not any(
            0 < int(rp.get("respond_by_ms", 0)) <= stopped_ms
            and rp["grid_event_id"] not in answered for rp in proposals):
        out.append(Rejection(Reason.REPRICE_STOP_NOT_DUE, f"{sid} stopped at {stopped_ms} as "
                             "unanswered; no proposal to it was unanswered past its deadline"))
    return out


# The ledger's plausibility margin (``ledger/sessions.PLAUSIBILITY_TOLERANCE``/``_SLACK_WH``).
PLAUSIBILITY_TOLERANCE = Decimal("0.05")
PLAUSIBILITY_SLACK_WH = 10


def session_limits(limits_set: Sequence[dict[str, Any]]) -> list[list[int]]:
    """A session's power limits ``[from_ms, until_ms, limit_w]`` from its ``PowerLimitSet``
    decisions in the ledger's order: a RESTORED one ends the limits in force at its start
    (``ledger/power._lift``)."""
    out: list[list[int]] = []
    for p in limits_set:
        from_ms, until_ms = int(p["effective_from_ms"]), int(p["until_at_ms"])
        if p["kind"] == GridEventKind.RESTORED:
            for lim in out:
                if lim[1] > from_ms and lim[0] < until_ms:
                    lim[1] = max(lim[0], from_ms)
        else:
            out.append([from_ms, until_ms, int(p["power_limit_w"])])
    return out


def readings_over_limits(power_w: int, limits_set: Sequence[dict[str, Any]],
                         start: tuple[int, int], readings: Sequence[tuple[int, int]]
                         ) -> list[tuple[int, Rejection]]:
    """Each settled reading (at ms, cumulative Wh; after the session's ``start``) whose energy
    since the previous one exceeds the connector's ``power_w`` capped by the limits in force,
    integrated over the interval (``ledger/power.energy_ceiling_wh``, the ledger's margin): its
    index and the finding (M5)."""
    s = {"power_w": power_w, "power_limits": [[*lim, ""] for lim in session_limits(limits_set)]}
    out: list[tuple[int, Rejection]] = []
    last_at, last_wh = start
    for i, (at_ms, wh) in enumerate(readings):
        ceiling_wh = power.energy_ceiling_wh(s, last_at, at_ms) * (1 + PLAUSIBILITY_TOLERANCE)
        if wh - last_wh > ceiling_wh + PLAUSIBILITY_SLACK_WH:
            out.append((i, Rejection(Reason.IMPLAUSIBLE_READING, f"{wh - last_wh} Wh in "
                                     f"{at_ms - last_at} ms exceeds {power_w} W under the power "
                                     "limits set (PowerLimitSet)")))
        last_at, last_wh = at_ms, wh
    return out


def lines_above_ceiling(lines: Sequence[dict[str, Any]], ceiling_per_kwh: Decimal
                        ) -> list[Rejection]:
    """Every settled energy line billed at a rate above the filed ceiling (M6, M3)."""
    return [Rejection(Reason.RATE_ABOVE_FILED_CEILING,
                      f"{ln['kind']} line {ln['from_at_ms']}..{ln['until_at_ms']} at "
                      f"{ln['unit_rate_per_kwh']} > filed {ceiling_per_kwh}")
            for ln in lines if str(ln["kind"]) in ENERGY_LINE_KINDS
            and Decimal(ln["unit_rate_per_kwh"]) > ceiling_per_kwh]
