"""``chargemesh ledger show STATION``: a station's calendar with its bookings, from ClickHouse."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from decimal import Decimal
from typing import Any

import click
from chargemesh.infra.cli.errors import ChargemeshGroup, OpsError
from chargemesh.infra.cli.events import iso_ms
from chargemesh.infra.cli.query import read_model
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.cli.tables import out, print_table
from chargemesh.infra.config import Settings
from chargemesh.sinks.queries.ledger import (
    REALLOCATED,
    Booking,
    Calendar,
    read_booking_span,
    read_bookings,
    read_calendar,
)
from chargemesh.units import DAY_MS, MINUTE_MS
from clickhouse_driver import Client
from rich.table import Table
from rich.text import Text

SLOTS_SHOWN_MAX = 1_440  # one day of 1-minute slots
FREE_RUN_COLLAPSE_MIN = 3  # this many free slots in a row show as one row (without --all-slots)
SHORT_ID_CHARS = 10
LEDGER_QUERY_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class LedgerDay:
    """One UTC day of a station: slot times, connectors, and which booking holds each cell."""

    station_id: str
    day: dt.date
    calendar: Calendar | None
    connectors: tuple[str, ...]
    slot_starts: tuple[int, ...]
    slot_ms: int
    cells: dict[tuple[int, str], Booking]
    bookings: tuple[Booking, ...]
    released: tuple[Booking, ...]

    @property
    def connector_slots(self) -> int:
        return len(self.slot_starts) * len(self.connectors)

    @property
    def utilisation_pct(self) -> float:
        return 100.0 * len(self.cells) / self.connector_slots if self.connector_slots else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "bookings": len(self.bookings),
            "walk_ups": sum(1 for b in self.bookings if b.walk_up),
            "reallocated": sum(1 for b in self.bookings if b.status == REALLOCATED),
            "released": len(self.released),
            "connector_slots": self.connector_slots,
            "booked_connector_slots": len(self.cells),
            "utilisation_pct": round(self.utilisation_pct, 2),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "station_id": self.station_id,
            "date": self.day.isoformat(),
            "calendar": None if self.calendar is None else dataclasses.asdict(self.calendar),
            "slot_duration_ms": self.slot_ms,
            "connectors": list(self.connectors),
            "slots": [
                {
                    "start_at_ms": start,
                    "start": iso_ms(start),
                    "cells": {
                        c: (self.cells[(start, c)].reservation_id
                            if (start, c) in self.cells else None)
                        for c in self.connectors
                    },
                }
                for start in self.slot_starts
            ],
            "bookings": [b.to_json() for b in self.bookings],
            "released": [b.to_json() for b in self.released],
            "summary": self.summary(),
        }


def _day_window(day: dt.date) -> tuple[int, int]:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    start_ms = int(start.timestamp() * 1000)
    return start_ms, start_ms + DAY_MS


def _utc_date(at_ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC).date()


def default_day(calendar: Calendar | None, span: tuple[int, int] | None, now_ms: int) -> dt.date:
    """Today (UTC), moved into the calendar's horizon (or the bookings' span) if outside it."""
    bounds = span if calendar is None else (calendar.horizon_start_at_ms,
                                            calendar.horizon_end_at_ms)
    if bounds is None:
        return _utc_date(now_ms)
    return _utc_date(min(max(now_ms, bounds[0]), bounds[1] - 1))


def _slot_starts(calendar: Calendar | None, live: list[Booking], day_from: int,
                 day_until: int) -> tuple[list[int], int]:
    """The slot grid of the day (calendar's, else the bookings'), plus any off-grid booking."""
    starts: set[int] = set()
    if calendar is not None:
        slot_ms = calendar.slot_duration_ms
        low = max(day_from, calendar.horizon_start_at_ms)
        high = min(day_until, calendar.horizon_end_at_ms)
        first = calendar.horizon_start_at_ms + max(
            0, -(-(low - calendar.horizon_start_at_ms) // slot_ms)) * slot_ms
        starts.update(range(first, high, slot_ms) if high > first else ())
    else:
        slot_ms = min((b.slot_stop_at_ms - b.slot_start_at_ms for b in live), default=0)
        if slot_ms > 0:
            low = max(day_from, min(b.slot_start_at_ms for b in live))
            high = min(day_until, max(b.slot_stop_at_ms for b in live))
            starts.update(range(low, high, slot_ms))
    starts.update(b.slot_start_at_ms for b in live if day_from <= b.slot_start_at_ms < day_until)
    if len(starts) > SLOTS_SHOWN_MAX:
        raise OpsError(f"{len(starts)} slots in one day (> {SLOTS_SHOWN_MAX}): not shown")
    return sorted(starts), slot_ms


def build_day(station_id: str, day: dt.date, calendar: Calendar | None,
              bookings: list[Booking]) -> LedgerDay:
    day_from, day_until = _day_window(day)
    touching = [b for b in bookings
                if b.slot_start_at_ms < day_until and b.slot_stop_at_ms > day_from]
    live = [b for b in touching if b.live]
    starts, slot_ms = _slot_starts(calendar, live, day_from, day_until)
    connectors = [c.connector_id for c in calendar.connectors] if calendar else []
    connectors += sorted({b.connector_id for b in live} - set(connectors))
    cells: dict[tuple[int, str], Booking] = {}
    for booking in live:
        for start in starts:
            if booking.slot_start_at_ms <= start < booking.slot_stop_at_ms:
                cells[(start, booking.connector_id)] = booking
    return LedgerDay(
        station_id=station_id, day=day, calendar=calendar, connectors=tuple(connectors),
        slot_starts=tuple(starts), slot_ms=slot_ms, cells=cells, bookings=tuple(live),
        released=tuple(b for b in touching if not b.live),
    )


def load_ledger_day(settings: Settings, station_id: str, day: dt.date | None,
                    now_ms: int) -> LedgerDay:
    def read(client: Client) -> LedgerDay:
        calendar = read_calendar(client, station_id)
        span = read_booking_span(client, station_id)
        if calendar is None and span is None:
            raise OpsError(
                f"no calendar and no bookings of station {station_id!r} in ClickHouse "
                "(is the sink running? `chargemesh start`, `chargemesh ps`)"
            )
        chosen = day or default_day(calendar, span, now_ms)
        day_from, day_until = _day_window(chosen)
        return build_day(station_id, chosen, calendar,
                         read_bookings(client, station_id, day_from, day_until))

    return read_model(settings, read, LEDGER_QUERY_TIMEOUT_S)


def short_id(text: str, width: int = SHORT_ID_CHARS) -> str:
    """The end of an id (where ids of one station differ), "…" marking what was cut."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def rate_text(rate: Decimal) -> str:
    """0.400000 -> "0.40", 0.412500 -> "0.4125": at least two decimals, no trailing zeros."""
    text = f"{rate:.6f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def _hhmm(at_ms: int, end: bool = False) -> str:
    """UTC hours and minutes; the end of a day (``end``) reads 24:00, not 00:00."""
    if end and at_ms % DAY_MS == 0:
        return "24:00"
    return dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC).strftime("%H:%M")


def _cell(day: LedgerDay, start: int, connector: str) -> Text:
    booking = day.cells.get((start, connector))
    if booking is None:
        return Text("free", style="dim")
    first = booking.slot_start_at_ms == start or start == day.slot_starts[0]
    if not first:
        return Text(f"┆ {short_id(booking.order_id or booking.reservation_id)}", style="dim")
    style = "yellow" if booking.status == REALLOCATED else "green"
    text = Text(short_id(booking.order_id or booking.reservation_id), style=f"bold {style}")
    if booking.status == REALLOCATED:
        text.append(" ↻", style="yellow")
    if booking.walk_up:
        text.append(" W", style="magenta")
    text.append(f"\n{short_id(booking.vehicle_credential_id or '?')} "
                f"{rate_text(booking.rate_per_kwh)}", style="default")
    return text


def _row_groups(day: LedgerDay, all_slots: bool) -> list[list[int]]:
    """Slot starts grouped into table rows: runs of free slots share one row."""
    groups: list[list[int]] = []
    run: list[int] = []
    for start in day.slot_starts:
        if any((start, c) in day.cells for c in day.connectors) or all_slots:
            if run:
                groups.extend([run] if len(run) >= FREE_RUN_COLLAPSE_MIN else [[s] for s in run])
                run = []
            groups.append([start])
        else:
            run.append(start)
    if run:
        groups.extend([run] if len(run) >= FREE_RUN_COLLAPSE_MIN else [[s] for s in run])
    return groups


def ledger_table(day: LedgerDay, all_slots: bool) -> Table:
    cal = day.calendar
    title = f"{day.station_id} · {day.day.isoformat()} (UTC)"
    table = Table(title=title)
    table.add_column("UTC", no_wrap=True)
    powers = {c.connector_id: c for c in cal.connectors} if cal else {}
    for connector in day.connectors:
        info = powers.get(connector)
        header = connector if info is None else (
            f"{connector}\n{info.power_w / 1000:g} kW {info.kind}")
        table.add_column(header, overflow="ellipsis", max_width=24)
    for group in _row_groups(day, all_slots):
        if len(group) == 1:
            label = _hhmm(group[0])
            cells = [_cell(day, group[0], c) for c in day.connectors]
        else:
            label = f"{_hhmm(group[0])}–{_hhmm(group[-1] + day.slot_ms, end=True)}"
            cells = [Text(f"free ×{len(group)}", style="dim") for _ in day.connectors]
        table.add_row(label, *cells)
    return table


def summary_lines(day: LedgerDay) -> list[str]:
    s = day.summary()
    lines = [
        f"bookings: {s['bookings']} ({s['walk_ups']} walk-up, {s['reallocated']} moved here) · "
        + f"released: {s['released']} · utilisation: {day.utilisation_pct:.1f}% "
        + f"({s['booked_connector_slots']}/{s['connector_slots']} connector-slots)"
    ]
    cal = day.calendar
    if cal is None:
        lines.append("no calendar of this station in ClickHouse: booked slots only")
    else:
        lines.append(f"calendar v{cal.version}: {cal.slot_duration_ms // MINUTE_MS} min "
                     f"slots, posted {rate_text(Decimal(cal.posted_rate_per_kwh))} "
                     f"{cal.currency}/kWh")
    markers = [("W", "walk-up", any(b.walk_up for b in day.bookings)),
               ("↻", "moved here by a reallocation",
                any(b.status == REALLOCATED for b in day.bookings)),
               ("┆", "booking continues",
                any(b.slot_stop_at_ms - b.slot_start_at_ms > day.slot_ms for b in day.bookings))]
    legend = [f"{mark} {meaning}" for mark, meaning, shown in markers if shown]
    if legend:
        lines.append(" · ".join(legend))
    if day.released:
        lines.append("released: " + ", ".join(
            f"{short_id(b.order_id or b.reservation_id)} ({_hhmm(b.slot_start_at_ms)} "
            f"{b.connector_id}, {b.reason_code or 'released'})" for b in day.released))
    return lines


@click.group(cls=ChargemeshGroup)
def ledger() -> None:
    """The slot ledger, as the ClickHouse sink recorded it."""


@ledger.command("show")
@click.argument("station")
@click.option("--date", "day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="UTC day (YYYY-MM-DD); default today, or the calendar's nearest day.")
@click.option("--all-slots", is_flag=True, help="One row per slot, free runs not collapsed.")
@click.option("--json", "as_json", is_flag=True, help="Print the day as JSON.")
@click.pass_context
def ledger_show(ctx: click.Context, station: str, day: dt.datetime | None, all_slots: bool,
                as_json: bool) -> None:
    """A station's calendar for one day: a row per slot, a column per connector, who booked."""
    settings = settings_of(ctx)
    try:
        view = load_ledger_day(settings, station, day.date() if day else None,
                               time.time_ns() // 1_000_000)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(view.to_json(), indent=2, sort_keys=True))
        return
    print_table(out(), ledger_table(view, all_slots))
    for line in summary_lines(view):
        out().print(Text(line))
