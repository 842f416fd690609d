"""The claim against the filed tariff (C2, M3): what an order must agree with before the ledger
books it. Pure.

* The claim's adders are the filed tariff's: a claim that declares adders (tax, congestion fee,
  renewable-content adder) declares exactly the non-zero ones the tariff files, at its rates;
  anything else is refused ``ADDERS_MISMATCH``. A claim that declares none accepts the filed
  ones (the SDK's default, and every claim written before this rule).
* A version of the station's tariff is in force over the whole claimed window (each filing's
  ``effective_from_ms``/``effective_until_ms``): else ``TARIFF_NOT_IN_FORCE``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.processors.settlement import Tariff, uncovered_at, version_at
from chargemesh.processors.statuses import LineKind

ADDERS_PER_CLAIM_MAX = 8
_PER_KWH = {LineKind.CONGESTION_FEE: "congestion_fee_per_kwh",
            LineKind.RENEWABLE_CONTENT: "renewable_adder_per_kwh"}


def filed_adders(filed: dict[str, Any]) -> dict[str, tuple[Decimal, Decimal]]:
    """The tariff's non-zero adders by kind: (rate per kWh, percent)."""
    out = {kind: (Decimal(filed[field]), Decimal(0)) for kind, field in _PER_KWH.items()
           if Decimal(filed[field])}
    if Decimal(filed["tax_percent"]):
        out[LineKind.TAX] = (Decimal(0), Decimal(filed["tax_percent"]))
    return out


def adders_problem(filed: dict[str, Any], adders: list[dict[str, Any]]) -> Rejection | None:
    """Why the claim's declared adders are not the filed tariff's, or None."""
    if not adders:
        return None
    if len(adders) > ADDERS_PER_CLAIM_MAX:
        return Rejection(Reason.ADDERS_MISMATCH, f"more than {ADDERS_PER_CLAIM_MAX} adders")
    claimed: dict[str, tuple[Decimal, Decimal]] = {}
    for adder in adders:
        if adder["kind"] in claimed:
            return Rejection(Reason.ADDERS_MISMATCH, f"{adder['kind']} declared twice")
        claimed[adder["kind"]] = (Decimal(adder["rate_per_kwh"]), Decimal(adder["percent"]))
    expected = filed_adders(filed)
    if claimed != expected:
        show = {k: f"{r}/kWh" if r else f"{p}%" for k, (r, p) in sorted(expected.items())}
        return Rejection(Reason.ADDERS_MISMATCH, f"the claim's adders are not tariff "
                         f"{filed['tariff_id']}'s: {show or 'none'}")
    return None


def in_force_problem(schedule: list[dict[str, Any]], from_ms: int,
                     until_ms: int) -> Rejection | None:
    """Why no version of the tariff is in force somewhere in ``[from_ms, until_ms)``, or None."""
    versions = [Tariff.from_filing(v) for v in schedule]
    gap = uncovered_at(versions, from_ms, until_ms)
    if gap is None:
        return None
    name = schedule[0]["tariff_id"] if schedule else "the tariff"
    return Rejection(Reason.TARIFF_NOT_IN_FORCE, f"no version of {name} is in force at {gap}")


def filing_in_force(schedule: list[dict[str, Any]], at_ms: int) -> dict[str, Any]:
    """The filed version of a tariff in force at ``at_ms`` (the first before any is)."""
    in_force: dict[str, Any] = schedule[version_at([Tariff.from_filing(v) for v in schedule],
                                                    at_ms)]
    return in_force
