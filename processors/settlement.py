"""Settlement arithmetic (C4, M6, M8): filed tariff + meter evidence + re-prices -> line items.

Pure, and shared by the ledger (which admits settlements) and by anyone re-computing them from
the signed events alone (tests, the regulator's audit). Money is Decimal throughout; every line
is rounded once, to the currency's minor unit, by the rate authority's declared rule, and the
total is the sum of the rounded lines, so the lines always add up to the total exactly.

Energy attribution: the meter is read at instants; the energy between two consecutive readings
is priced at the rate in force at the later reading (interval metering). The session's base rate
is the rate its reservation was booked at; an accepted re-price applies to the energy metered in
its window ``(effective_from_ms, effective_until_ms]`` (a price signal's window: the re-priced
rate from its start to its end, the booked rate after), so with readings on the window's edges
the ``ENERGY_REPRICED`` line runs exactly from the window's start to its end.

The tariff in force (M3): a tariff id may be filed again as a new version from a later time
(``TrustStore.tariff_schedule``). Each interval is billed under the version in force just before
its later reading, and at the rate of that version's time-of-use band (UTC minute of day) when
that instant falls in one (an accepted re-price still wins); lines split wherever the version or the
band changes, and each version's adders and tax apply to the energy billed under it.
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
MINUTES_PER_DAY = 24 * 60
MS_PER_MINUTE = 60_000
FOREVER_MS = 2**62


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
    # (start_minute_of_day, end_minute_of_day, rate_per_kwh), UTC; lists after a JSON round trip
    time_of_use: tuple[Any, ...] = ()
    effective_from_ms: int = 0
    effective_until_ms: int = FOREVER_MS
    # E3: the most a grid operator may state as the clearing price (0: the mesh's default)
    clearing_price_cap_per_kwh: Decimal = Decimal(0)

    @classmethod
    def from_filing(cls, filed: dict[str, Any]) -> "Tariff":
        return cls(
            tariff_id=filed["tariff_id"], currency=filed["currency"],
            minor_units=int(filed["currency_minor_units"]), rounding=filed["rounding"],
            tax_percent=Decimal(filed["tax_percent"]),
            congestion_fee_per_kwh=Decimal(filed["congestion_fee_per_kwh"]),
            renewable_adder_per_kwh=Decimal(filed["renewable_adder_per_kwh"]),
            swap_fee=Decimal(filed.get("swap_fee", 0)),
            time_of_use=tuple((int(b["start_minute_of_day"]), int(b["end_minute_of_day"]),
                               Decimal(b["rate_per_kwh"])) for b in filed.get("time_of_use") or ()),
            effective_from_ms=int(filed.get("effective_from_ms", 0)),
            effective_until_ms=int(filed.get("effective_until_ms", FOREVER_MS)),
            clearing_price_cap_per_kwh=Decimal(filed.get("clearing_price_cap_per_kwh", 0)),
        )

    def band_at(self, at_ms: int) -> int:
        """Index of the time-of-use band ``at_ms`` falls in (UTC minute of day), else -1."""
        minute = (at_ms // MS_PER_MINUTE) % MINUTES_PER_DAY
        for i, (start, end, _) in enumerate(self.time_of_use):
            if int(start) <= minute < int(end):
                return i
        return -1

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
    effective_until_ms: int = 0  # 0: no end (proposals written before windows were honoured)

    def in_force(self, at_ms: int) -> bool:
        """Whether energy metered up to ``at_ms`` (since the previous reading) is priced at it."""
        return self.effective_from_ms < at_ms and (
            not self.effective_until_ms or at_ms <= self.effective_until_ms)


@dataclasses.dataclass(frozen=True)
class Segment:
    from_ms: int
    until_ms: int
    energy_wh: int
    rate_per_kwh: Decimal
    repriced: bool
    version: int = 0  # index into the tariff schedule of the version billed
    band: int = -1  # that version's time-of-use band, -1: none
    note: str = ""  # appended to the line's description (C2: metered beyond the claim)


def version_at(schedule: list[Tariff], at_ms: int) -> int:
    """Index of the version in force at ``at_ms``: the latest one effective by then (the first
    one before any is)."""
    index = 0
    for i, version in enumerate(schedule):
        if version.effective_from_ms <= at_ms:
            index = i
    return index


def schedule_between(schedule: list[Tariff], from_ms: int, until_ms: int) -> list[Tariff]:
    """The versions in force at some time of ``[from_ms, until_ms]`` (the one in force at
    ``from_ms`` first): what a session's settlement needs of a tariff's history."""
    if not schedule:
        return []
    first = version_at(schedule, from_ms)
    return [schedule[first], *[v for v in schedule[first + 1:]
                               if v.effective_from_ms <= until_ms]]


def uncovered_at(schedule: list[Tariff], from_ms: int, until_ms: int) -> int | None:
    """The first instant of ``[from_ms, until_ms)`` no filed version is in force at, or None."""
    at = from_ms
    for i, version in enumerate(schedule):
        nxt = schedule[i + 1].effective_from_ms if i + 1 < len(schedule) else FOREVER_MS
        end = min(version.effective_until_ms, nxt)
        if version.effective_from_ms <= at < end:
            at = end
        if at >= until_ms:
            return None
    return at


def rate_at(base_rate: Decimal, reprices: list[Reprice], at_ms: int) -> tuple[Decimal, bool]:
    """The rate for energy metered up to ``at_ms``: of the accepted re-prices whose window holds
    it, the latest to take effect; the booked rate outside every window."""
    rate, repriced = base_rate, False
    for rp in sorted(reprices, key=lambda r: r.effective_from_ms):
        if rp.in_force(at_ms):
            rate, repriced = rp.rate_per_kwh, True
    return rate, repriced


def segments(start: Reading, readings: list[Reading], final: Reading, base_rate: Decimal,
             reprices: list[Reprice], schedule: list[Tariff] | None = None) -> list[Segment]:
    """Energy between consecutive readings, merged while the rate, the tariff version and its
    time-of-use band stay the same (``schedule``: the tariff's versions; none: one version)."""
    points = [start, *sorted(readings, key=lambda r: r.at_ms), final]
    out: list[Segment] = []
    for before, after in zip(points, points[1:]):
        energy = after.import_wh - before.import_wh
        if energy < 0:
            raise ValueError("meter went backwards")
        rate, repriced = rate_at(base_rate, reprices, after.at_ms)
        # the version and band in force over the interval's last instant: an interval that
        # ends on a boundary (midnight, a band's end) lies wholly before it
        version = version_at(schedule, after.at_ms - 1) if schedule else 0
        band = schedule[version].band_at(after.at_ms - 1) if schedule else -1
        if band >= 0 and not repriced:
            rate = Decimal(schedule[version].time_of_use[band][2])  # type: ignore[index]
        if out and out[-1].rate_per_kwh == rate and out[-1].repriced == repriced and (
                out[-1].version, out[-1].band) == (version, band):
            last = out[-1]
            out[-1] = dataclasses.replace(last, until_ms=after.at_ms,
                                          energy_wh=last.energy_wh + energy)
        else:
            out.append(Segment(before.at_ms, after.at_ms, energy, rate, repriced, version,
                               band))
    return [s for s in out if s.energy_wh > 0] or out[-1:]


def within_claim(energy: list[Segment], claimed_wh: int,
                 overrun_allowed: bool = False) -> list[Segment]:
    """C2: the energy billed never exceeds the claimed energy unless the claim allows an
    overrun. Segments in time order up to ``claimed_wh``; the one crossing it is cut there (its
    line says how much metered energy beyond the claim is not billed), later ones are dropped.
    ``claimed_wh`` <= 0 (a booking written before claims were kept): no cap."""
    metered = sum(s.energy_wh for s in energy)
    if overrun_allowed or claimed_wh <= 0 or metered <= claimed_wh:
        return energy
    out: list[Segment] = []
    left = claimed_wh
    for seg in energy:
        if seg.energy_wh < left:
            out.append(seg)
            left -= seg.energy_wh
            continue
        out.append(dataclasses.replace(
            seg, energy_wh=left, note=f"(claimed {claimed_wh} Wh: {metered - claimed_wh} Wh "
                                      "metered beyond the claim not billed)"))
        break
    return out


def line(kind: LineKind, description: str, quantity_wh: int, unit_rate: Decimal, amount: Decimal,
         from_ms: int = 0, until_ms: int = 0) -> dict[str, Any]:
    return {"kind": kind, "description": description, "quantity_wh": quantity_wh,
            "unit_rate_per_kwh": unit_rate, "amount": amount, "from_at_ms": from_ms,
            "until_at_ms": until_ms}


def settle(tariff: Tariff, energy: list[Segment],
           schedule: list[Tariff] | None = None) -> tuple[list[dict[str, Any]], Decimal]:
    """Line items and total for delivered energy under ``tariff`` (or, with ``schedule``, under
    the version each segment was billed under: its energy, adders and tax lines in turn)."""
    versions = sorted({seg.version for seg in energy})
    if schedule and versions != [0]:
        lines: list[dict[str, Any]] = []
        for v in versions:
            lines += settle(schedule[v], [s for s in energy if s.version == v])[0]
        return lines, sum((ln["amount"] for ln in lines), Decimal(0))
    if schedule:
        tariff = schedule[0]
    lines = []
    for seg in energy:
        amount = tariff.round(Decimal(seg.energy_wh) * seg.rate_per_kwh / WH_PER_KWH)
        kind = LineKind.ENERGY_REPRICED if seg.repriced else LineKind.ENERGY
        lines.append(line(kind, " ".join(filter(None, (
            f"{seg.energy_wh} Wh at {seg.rate_per_kwh}/kWh", seg.note))), seg.energy_wh,
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
