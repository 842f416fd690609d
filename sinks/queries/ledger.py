"""The slot ledger read model: a station's admitted calendar and its bookings, from ClickHouse.

Functions take a ``clickhouse_driver.Client``; ``chargemesh ledger show`` builds its day view on
them.
"""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from typing import Any

from chargemesh.sinks.queries import ReadModelError
from clickhouse_driver import Client

CALENDAR_EVENT_TYPE = "chargemesh.capacity.v1.SlotCalendarPublished"
SLOT_RESERVED_EVENT_TYPE = "chargemesh.ledger.v1.SlotReserved"
RESERVED, REALLOCATED, RELEASED = "RESERVED", "REALLOCATED", "RELEASED"
CALENDARS_READ_MAX = 100
LEDGER_ROWS_MAX = 20_000
MONEY_QUANTUM = Decimal("0.000001")  # Decimal(18, 6) in slot_ledger and ledger_decisions


@dataclasses.dataclass(frozen=True)
class ConnectorInfo:
    connector_id: str
    power_w: int
    kind: str


@dataclasses.dataclass(frozen=True)
class Calendar:
    version: int
    slot_duration_ms: int
    horizon_start_at_ms: int
    horizon_end_at_ms: int
    posted_rate_per_kwh: str
    currency: str
    connectors: tuple[ConnectorInfo, ...]

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> Calendar:
        return cls(
            version=int(p["calendar_version"]),
            slot_duration_ms=int(p["slot_duration_ms"]),
            horizon_start_at_ms=int(p["horizon_start_at_ms"]),
            horizon_end_at_ms=int(p["horizon_end_at_ms"]),
            posted_rate_per_kwh=str(p["posted_rate_per_kwh"]),
            currency=str(p["currency"]),
            connectors=tuple(
                ConnectorInfo(str(c["connector_id"]), int(c["power_w"]), str(c["kind"]))
                for c in p["connectors"]
            ),
        )


@dataclasses.dataclass(frozen=True)
class Booking:
    """A reservation's latest state (``slot_ledger FINAL``) with its SlotReserved details."""

    reservation_id: str
    connector_id: str
    order_id: str
    vehicle_credential_id: str
    slot_start_at_ms: int
    slot_stop_at_ms: int
    rate_per_kwh: Decimal
    energy_wh: int
    walk_up: bool
    status: str
    reason_code: str

    @property
    def live(self) -> bool:
        return self.status != RELEASED

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "rate_per_kwh": str(self.rate_per_kwh)}


def read_calendar(client: Client, station_id: str) -> Calendar | None:
    """The station's latest admitted calendar, from the ``events`` table (payload_json)."""
    rows = client.execute(
        "SELECT payload_json FROM events WHERE event_type = %(type)s AND subject_key = %(station)s"
        " ORDER BY occurred_at_ms DESC LIMIT %(limit)s",
        {"type": CALENDAR_EVENT_TYPE, "station": station_id, "limit": CALENDARS_READ_MAX},
    )
    calendars = []
    for (payload_json,) in rows:
        payload = json.loads(payload_json)
        if payload.get("station_id") == station_id:
            calendars.append(Calendar.from_payload(payload))
    return max(calendars, key=lambda c: c.version, default=None)


def read_booking_span(client: Client, station_id: str) -> tuple[int, int] | None:
    rows = client.execute(
        "SELECT count(), min(slot_start_at_ms), max(slot_stop_at_ms) FROM slot_ledger"
        " WHERE station_id = %(station)s",
        {"station": station_id},
    )
    count, first_ms, last_ms = rows[0]
    return None if count == 0 else (int(first_ms), int(last_ms))


def read_bookings(client: Client, station_id: str, from_ms: int, until_ms: int) -> list[Booking]:
    """Latest state of every reservation that touched [from_ms, until_ms) in any version.

    The window filter picks reservation ids from every row version, and only then FINAL picks
    each one's latest row: a filter on slot times next to FINAL could keep an older version of a
    reservation that a reallocation moved out of the window. Order, vehicle, rate and energy
    come from the SlotReserved decision (RELEASED and REALLOCATED rows do not carry them).
    """
    params = {"station": station_id, "from": from_ms, "until": until_ms,
              "limit": LEDGER_ROWS_MAX + 1}
    state_rows = client.execute(
        "SELECT reservation_id, connector_id, order_id, vehicle_credential_id, slot_start_at_ms,"
        " slot_stop_at_ms, rate_per_kwh, energy_wh, walk_up, status, reason_code"
        " FROM slot_ledger FINAL WHERE station_id = %(station)s AND reservation_id IN ("
        "  SELECT reservation_id FROM slot_ledger WHERE station_id = %(station)s"
        "  AND slot_start_at_ms < %(until)s AND slot_stop_at_ms > %(from)s)"
        " ORDER BY slot_start_at_ms, connector_id, reservation_id LIMIT %(limit)s",
        params,
    )
    if len(state_rows) > LEDGER_ROWS_MAX:
        raise ReadModelError(
            f"more than {LEDGER_ROWS_MAX} reservations of {station_id} in one day")
    reserved = _reserved_details(client, station_id, [r[0] for r in state_rows])
    bookings = []
    for row in state_rows:
        rid, connector, order, vehicle, start_ms, stop_ms, rate, energy, walk_up, status = row[:10]
        details = reserved.get(rid)
        if details is not None and not order:
            order, vehicle, rate, energy, walk_up = details
        bookings.append(Booking(rid, connector, order, vehicle, int(start_ms), int(stop_ms),
                                _money(rate), int(energy), bool(walk_up), status, row[10]))
    return bookings


def _money(value: Any) -> Decimal:
    """A ``Decimal(18, 6)`` column value at its scale, as the events carry it (0.4 -> 0.400000)."""
    return Decimal(value).quantize(MONEY_QUANTUM)


def _reserved_details(
    client: Client, station_id: str, reservation_ids: list[str]
) -> dict[str, tuple[str, str, Decimal, int, bool]]:
    """reservation_id -> (order, vehicle, rate, energy, walk_up) of its SlotReserved decision."""
    if not reservation_ids:
        return {}
    rows = client.execute(
        "SELECT reservation_id, order_id, vehicle_credential_id, rate_per_kwh, energy_wh,"
        " event_id FROM ledger_decisions WHERE station_id = %(station)s"
        " AND decision_type = 'SlotReserved' AND reservation_id IN %(ids)s",
        {"station": station_id, "ids": tuple(reservation_ids)},
    )
    # ledger_decisions has no walk_up column: the SlotReserved event itself has it.
    walk_ups: dict[str, bool] = {}
    event_ids = tuple(row[5] for row in rows)
    if event_ids:
        for event_id, payload_json in client.execute(
            "SELECT event_id, payload_json FROM events WHERE event_type = %(type)s"
            " AND event_id IN %(ids)s",
            {"type": SLOT_RESERVED_EVENT_TYPE, "ids": event_ids},
        ):
            walk_ups[event_id] = bool(json.loads(payload_json).get("walk_up", False))
    return {
        rid: (order, vehicle, _money(rate), int(energy), walk_ups.get(event_id, False))
        for rid, order, vehicle, rate, energy, event_id in rows
    }
