"""Settlement arithmetic (C4, M6, M8): filed tariff + meter evidence + re-prices -> line items.

Pure, and shared by the ledger (which admits settlements) and by anyone re-computing them from
the signed events alone (tests, the regulator's audit). Money is Decimal throughout; every line
is rounded once, to the currency's minor unit, by the rate authority's declared rule, and the
total is the sum of the rounded lines, so the lines always add up to the total exactly.

Energy attribution: the meter is read at instants; the energy between two consecutive readings
is priced at the rate in force at the later reading (interval metering). The session's base rate
is the rate its reservation was booked at; an accepted re-price applies from its effective time.
"""

from __future__ import annotations

import dataclasses
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_UP, Decimal
from typing import Any

from chargemesh.processors.statuses import LineKind

ROUNDING_MODES = {"HALF_UP": ROUND_HALF_UP, "HALF_EVEN": ROUND_HALF_EVEN, "DOWN": ROUND_DOWN,
                  "UP": ROUND_UP}
WH_PER_KWH = Decimal(1000)
HUNDRED = Decimal(100)
MINOR_UNITS_MAX = 4


@dataclasses.dataclass(frozen=True)
class Tariff:
    tariff_id: str
    currency: str
    minor_units: int
    rounding: str
    tax_percent: Decimal
    congestion_fee_per_kwh: Decimal
    renewable_adder_per_kwh: Decimal
    swap_fee: Decimal = Decimal(0)

    @classmethod
    def from_filing(cls, filed: dict[str, Any]) -> "Tariff":
        return cls(
            tariff_id=filed["tariff_id"], currency=filed["currency"],
            minor_units=int(filed["currency_minor_units"]), rounding=filed["rounding"],
            tax_percent=Decimal(filed["tax_percent"]),
            congestion_fee_per_kwh=Decimal(filed["congestion_fee_per_kwh"]),
            renewable_adder_per_kwh=Decimal(filed["renewable_adder_per_kwh"]),
            swap_fee=Decimal(filed.get("swap_fee", 0)),
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def round(self, amount: Decimal) -> Decimal:
        if not 0 <= self.minor_units <= MINOR_UNITS_MAX:
            raise ValueError(f"minor units {self.minor_units} out of range")
        quantum = Decimal(1).scaleb(-self.minor_units)
        return amount.quantize(quantum, rounding=ROUNDING_MODES[self.rounding])


@dataclasses.dataclass(frozen=True)
class Reading:
    at_ms: int
    import_wh: int


@dataclasses.dataclass(frozen=True)
class Reprice:
    effective_from_ms: int
    rate_per_kwh: Decimal
    grid_event_id: str


@dataclasses.dataclass(frozen=True)
class Segment:
    from_ms: int
    until_ms: int
    energy_wh: int
    rate_per_kwh: Decimal
    repriced: bool


def rate_at(base_rate: Decimal, reprices: list[Reprice], at_ms: int) -> tuple[Decimal, bool]:
    """The rate in force at ``at_ms``: the latest accepted re-price effective by then."""
    rate, repriced = base_rate, False
    for rp in sorted(reprices, key=lambda r: r.effective_from_ms):
        if rp.effective_from_ms <= at_ms:
            rate, repriced = rp.rate_per_kwh, True
    return rate, repriced


def segments(start: Reading, readings: list[Reading], final: Reading, base_rate: Decimal,
             reprices: list[Reprice]) -> list[Segment]:
    """Energy between consecutive readings, merged while the rate stays the same."""
    points = [start, *sorted(readings, key=lambda r: r.at_ms), final]
    out: list[Segment] = []
    for before, after in zip(points, points[1:]):
        energy = after.import_wh - before.import_wh
        if energy < 0:
            raise ValueError("meter went backwards")
        rate, repriced = rate_at(base_rate, reprices, after.at_ms)
        if out and out[-1].rate_per_kwh == rate and out[-1].repriced == repriced:
            last = out[-1]
            out[-1] = dataclasses.replace(last, until_ms=after.at_ms,
                                          energy_wh=last.energy_wh + energy)
        else:
            out.append(Segment(before.at_ms, after.at_ms, energy, rate, repriced))
    return [s for s in out if s.energy_wh > 0] or out[-1:]


def line(kind: LineKind, description: str, quantity_wh: int, unit_rate: Decimal, amount: Decimal,
         from_ms: int = 0, until_ms: int = 0) -> dict[str, Any]:
    return {"kind": kind, "description": description, "quantity_wh": quantity_wh,
            "unit_rate_per_kwh": unit_rate, "amount": amount, "from_at_ms": from_ms,
            "until_at_ms": until_ms}


def settle(tariff: Tariff, energy: list[Segment]) -> tuple[list[dict[str, Any]], Decimal]:
    """Line items and total for delivered energy under ``tariff``."""
    lines = []
    for seg in energy:
        amount = tariff.round(Decimal(seg.energy_wh) * seg.rate_per_kwh / WH_PER_KWH)
        kind = LineKind.ENERGY_REPRICED if seg.repriced else LineKind.ENERGY
        lines.append(line(kind, f"{seg.energy_wh} Wh at {seg.rate_per_kwh}/kWh", seg.energy_wh,
                          seg.rate_per_kwh, amount, seg.from_ms, seg.until_ms))
    lines += adder_lines(tariff, sum(s.energy_wh for s in energy))
    return with_tax(tariff, lines)


def adder_lines(tariff: Tariff, energy_wh: int) -> list[dict[str, Any]]:
    """The tariff's per-kWh adders (congestion fee, renewable content) on ``energy_wh``."""
    lines = []
    for kind, rate, label in (
            (LineKind.CONGESTION_FEE, tariff.congestion_fee_per_kwh, "congestion fee"),
            (LineKind.RENEWABLE_CONTENT, tariff.renewable_adder_per_kwh,
             "renewable-content adder")):
        if rate:
            amount = tariff.round(Decimal(energy_wh) * rate / WH_PER_KWH)
            lines.append(line(kind, f"{label} {rate}/kWh", energy_wh, rate, amount))
    return lines


def with_tax(tariff: Tariff, lines: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Decimal]:
    """Adds the tax line (on the sum of the other lines) and returns lines and their total."""
    if tariff.tax_percent:
        base = sum((ln["amount"] for ln in lines), Decimal(0))
        tax = tariff.round(base * tariff.tax_percent / HUNDRED)
        lines = lines + [line(LineKind.TAX, f"tax {tariff.tax_percent}% of {base}", 0,
                              Decimal(0), tax)]
    total = sum((ln["amount"] for ln in lines), Decimal(0))
    return lines, total
