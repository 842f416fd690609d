"""The audit's checks of issue 16's billing records (processors/audit/billing.py): a tampered
expiry, reversal or over-ceiling line is found and named; the honest one passes."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from chargemesh.processors.audit import billing
from chargemesh.processors.governance import Revocation
from chargemesh.processors.reasons import Reason

HOUR_MS = 3_600_000
CLOSED_MS = 1_000_000
WINDOW_MS = 48 * HOUR_MS


def expired(**changes: Any) -> dict[str, Any]:
    p = {"settlement_id": "set:s1", "session_id": "s1", "station_id": "st1",
         "required_signer_ids": ["station", "vehicle"], "signer_ids": ["station"],
         "missing_signer_ids": ["vehicle"], "closed_at_ms": CLOSED_MS,
         "finality_window_ms": WINDOW_MS, "expired_at_ms": CLOSED_MS + WINDOW_MS}
    return {**p, **changes}


def expiry_codes(p: dict[str, Any], decided_at_ms: int = CLOSED_MS + WINDOW_MS + 1,
                 signed: tuple[str, ...] = ("station",), finalised: bool = False) -> set[str]:
    return {r.reason for r in billing.expiry_problems(
        p, CLOSED_MS, WINDOW_MS, decided_at_ms, set(signed), ["station", "vehicle"], finalised)}


def test_an_honest_expiry_passes() -> None:
    assert expiry_codes(expired()) == set()


def test_an_expiry_before_the_window_passed_is_found() -> None:
    assert expiry_codes(expired(), decided_at_ms=CLOSED_MS + HOUR_MS) == {Reason.EXPIRY_NOT_DUE}
    short = expired(finality_window_ms=HOUR_MS, expired_at_ms=CLOSED_MS + HOUR_MS)
    assert expiry_codes(short, decided_at_ms=CLOSED_MS + HOUR_MS) == {Reason.EXPIRY_NOT_DUE}
    assert expiry_codes(expired(closed_at_ms=CLOSED_MS - WINDOW_MS)) == {Reason.EXPIRY_NOT_DUE}


def test_an_expiry_naming_a_signer_who_signed_is_found() -> None:
    assert expiry_codes(expired(), signed=("station", "vehicle")) == {
        Reason.EXPIRED_SIGNER_NOT_MISSING}
    assert expiry_codes(expired(missing_signer_ids=["station"])) == {
        Reason.EXPIRED_SIGNER_NOT_MISSING}
    assert expiry_codes(expired(), finalised=True) == {Reason.EXPIRED_SIGNER_NOT_MISSING}


def test_the_default_window_applies_when_the_rules_declare_none() -> None:
    assert billing.finality_window_ms(None) == WINDOW_MS
    assert billing.finality_window_ms({"finality_window_ms": 0}) == WINDOW_MS
    assert billing.finality_window_ms({"finality_window_ms": HOUR_MS}) == HOUR_MS


def line(kind: str, wh: int, rate: str, amount: str) -> dict[str, Any]:
    return {"kind": kind, "description": kind, "quantity_wh": wh, "unit_rate_per_kwh": Decimal(rate),
            "amount": Decimal(amount), "from_at_ms": 0, "until_at_ms": 10}


SETTLEMENT = {"settlement_id": "set:s1", "session_id": "s1", "identity": {"vehicle_credential_id": "v"},
              "tariff_id": "t", "currency": "EUR", "rounding": "HALF_EVEN",
              "lines": [line("ENERGY", 10_000, "0.40", "4.00"), line("TAX", 0, "0", "0.76")],
              "total_amount": Decimal("4.76"), "energy_import_wh": 10_000}
REVOCATION = Revocation("v", 5_000, "KEY_COMPROMISE", "evt-rev")


def reversal() -> dict[str, Any]:
    return {"settlement_id": "rev:s1", "reverses_settlement_id": "set:s1", "session_id": "s1",
            "identity": SETTLEMENT["identity"], "tariff_id": "t", "currency": "EUR",
            "rounding": "HALF_EVEN",
            "lines": [dict(ln, description="reversal", quantity_wh=-ln["quantity_wh"],
                           amount=-ln["amount"]) for ln in SETTLEMENT["lines"]],
            "total_amount": Decimal("-4.76"), "energy_import_wh": -10_000,
            "reason_code": "CREDENTIAL_REVOKED", "revoked_credential_id": "v",
            "revoked_at_ms": 5_000, "cause_event_id": "evt-rev", "reversed_at_ms": 6_000}


def reversal_codes(p: dict[str, Any], revocation: Revocation | None = REVOCATION,
                   rested_on: tuple[str, ...] = ("v",),
                   voided: tuple[dict[str, Any], ...] = (SETTLEMENT,)) -> set[str]:
    return {r.reason for r in billing.reversal_problems(p, list(voided), revocation,
                                                         set(rested_on))}


def test_an_honest_reversal_passes() -> None:
    assert reversal_codes(reversal()) == set()


def test_a_reversal_of_a_settlement_and_its_correction_negates_both() -> None:
    correction = {**SETTLEMENT, "lines": [line("DISPUTE_CREDIT", 0, "0", "-1.00")],
                  "total_amount": Decimal("-1.00")}
    p = reversal()
    assert reversal_codes(p, voided=(SETTLEMENT, correction)) == {Reason.REVERSAL_MISMATCH}
    p["lines"].append(dict(correction["lines"][0], amount=Decimal("1.00")))
    p["total_amount"] = Decimal("-3.76")
    assert reversal_codes(p, voided=(SETTLEMENT, correction)) == set()


def test_a_tampered_reversal_line_is_found() -> None:
    p = reversal()
    p["lines"][0]["amount"] = Decimal("-3.00")
    assert reversal_codes(p) == {Reason.REVERSAL_MISMATCH}
    p = reversal()
    p["total_amount"] = Decimal("-5.00")
    assert reversal_codes(p) == {Reason.REVERSAL_MISMATCH}
    assert reversal_codes(reversal(), voided=()) == {Reason.REVERSAL_MISMATCH}


def test_a_reversal_without_its_revocation_is_found() -> None:
    assert reversal_codes(reversal(), revocation=None) == {Reason.REVERSAL_WITHOUT_REVOCATION}
    later = Revocation("v", 9_000, "KEY_COMPROMISE", "evt-rev")
    assert reversal_codes(reversal(), revocation=later) == {Reason.REVERSAL_WITHOUT_REVOCATION}
    assert reversal_codes(reversal(), rested_on=()) == {Reason.REVERSAL_WITHOUT_REVOCATION}


def test_an_energy_line_above_the_filed_ceiling_is_found() -> None:
    lines = copy.deepcopy(SETTLEMENT["lines"])
    assert billing.lines_above_ceiling(lines, Decimal("0.80")) == []
    lines.append(line("ENERGY_REPRICED", 2_000, "1.20", "2.40"))
    found = billing.lines_above_ceiling(lines, Decimal("0.80"))
    assert [r.reason for r in found] == [Reason.RATE_ABOVE_FILED_CEILING]
    assert "1.20" in found[0].detail


STOP = {"session_id": "s1", "station_id": "st1", "stopped_at_ms": 20_000,
        "reason": "REPRICE_REFUSED", "reason_code": "REPRICE_UNANSWERED"}
PROPOSAL = {"session_id": "s1", "grid_event_id": "g1", "respond_by_ms": 20_000}


def test_an_unanswered_reprice_stop_settled_to_the_stop_passes() -> None:
    assert billing.stop_problems(STOP, [10_000, 20_000], [PROPOSAL], set()) == []


def test_billing_after_a_reprice_stop_is_found() -> None:
    found = billing.stop_problems(STOP, [10_000, 25_000], [PROPOSAL], set())
    assert [r.reason for r in found] == [Reason.BILLED_AFTER_STOP]


def test_a_stop_over_an_answered_or_undue_reprice_is_found() -> None:
    assert [r.reason for r in billing.stop_problems(STOP, [10_000], [PROPOSAL], {"g1"})] == [
        Reason.REPRICE_STOP_NOT_DUE]
    early = dict(PROPOSAL, respond_by_ms=30_000)
    assert [r.reason for r in billing.stop_problems(STOP, [10_000], [early], set())] == [
        Reason.REPRICE_STOP_NOT_DUE]
    above = dict(STOP, reason_code="ABOVE_CEILING")  # a ceiling stop needs no deadline
    assert billing.stop_problems(above, [10_000], [], set()) == []


MINUTE_MS = 60_000
CURTAILED = {"kind": "CURTAILMENT", "effective_from_ms": 10 * MINUTE_MS,
             "until_at_ms": 60 * MINUTE_MS, "power_limit_w": 3_000}
RESTORED = {"kind": "RESTORED", "effective_from_ms": 30 * MINUTE_MS,
            "until_at_ms": 60 * MINUTE_MS, "power_limit_w": 50_000}


def test_readings_within_the_limits_set_pass_and_one_over_them_is_found() -> None:
    start = (0, 0)
    honest = [(10 * MINUTE_MS, 8_000), (20 * MINUTE_MS, 8_500)]  # 50 kW, then 3 kW
    assert billing.readings_over_limits(50_000, [CURTAILED], start, honest) == []
    over = [(10 * MINUTE_MS, 8_000), (20 * MINUTE_MS, 14_700)]  # 40 kW while curtailed
    found = billing.readings_over_limits(50_000, [CURTAILED], start, over)
    assert [(i, r.reason) for i, r in found] == [(1, Reason.IMPLAUSIBLE_READING)]


def test_a_restoration_lifts_the_limit_from_its_start() -> None:
    readings = [(30 * MINUTE_MS, 1_000), (40 * MINUTE_MS, 9_000)]  # 48 kW after the restore
    assert billing.readings_over_limits(50_000, [CURTAILED, RESTORED], (0, 0), readings) == []
    assert len(billing.readings_over_limits(50_000, [CURTAILED], (0, 0), readings)) == 1
