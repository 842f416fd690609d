"""Projections of the station ledger's slot decisions (decisions topic) into ``slot_ledger`` and
``ledger_decisions`` (DDL in ``migrations/0002_*.sql``)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.sinks.projections.core import (
    DETAIL_CHARS_MAX,
    VERSION_SLOTS_PER_MS,
    ProjectionContext,
    Projector,
    Row,
    Rows,
    money,
    seconds,
)

LEDGER_NAMESPACE = "chargemesh.ledger.v1."
RESERVED = "RESERVED"
REALLOCATED = "REALLOCATED"
RELEASED = "RELEASED"
# slot_ledger.version = occurred_at_ms * VERSION_SLOTS_PER_MS + lifecycle rank (see 0002).
LIFECYCLE_RANK = {RESERVED: 0, REALLOCATED: 1, RELEASED: 2}

SLOT_LEDGER = "slot_ledger"
LEDGER_DECISIONS = "ledger_decisions"

# Insert columns per table, in row-tuple order.
TABLES: dict[str, tuple[str, ...]] = {
    SLOT_LEDGER: (
        "reservation_id", "station_id", "connector_id", "order_id", "vehicle_credential_id",
        "slot_start_at_ms", "slot_stop_at_ms", "slot_start", "rate_per_kwh", "energy_wh",
        "walk_up", "status", "reason_code", "rules_version", "decided_at_ms",
        "decided_by_event_id", "version",
    ),
    LEDGER_DECISIONS: (
        "event_id", "decision_type", "station_id", "reservation_id", "order_id", "connector_id",
        "vehicle_credential_id", "from_connector_id", "from_slot_start_at_ms",
        "slot_start_at_ms", "slot_stop_at_ms", "rate_per_kwh", "energy_wh", "reason_code",
        "detail", "rules_version", "occurred_at_ms", "occurred_at",
    ),
}


def ledger_version(occurred_at_ms: int, status: str) -> int:
    """``slot_ledger.version``: later decisions win, same-millisecond ones by lifecycle rank."""
    return occurred_at_ms * VERSION_SLOTS_PER_MS + LIFECYCLE_RANK[status]


def _slot_row(ctx: ProjectionContext, status: str, fields: dict[str, Any]) -> Row:
    """A ``slot_ledger`` row: ``fields`` holds what the decision carries; the rest is empty/0."""
    p = ctx.payload
    start_ms = int(fields["slot_start_at_ms"])
    return (
        p["reservation_id"], p["station_id"], fields["connector_id"],
        fields.get("order_id", ""), fields.get("vehicle_credential_id", ""),
        start_ms, int(fields["slot_stop_at_ms"]), seconds(start_ms),
        money(fields.get("rate_per_kwh", Decimal(0))), int(fields.get("energy_wh", 0)),
        1 if fields.get("walk_up", False) else 0, status, p.get("reason_code", ""),
        p.get("rules_version", ""), ctx.occurred_at_ms, ctx.event.event_id,
        ledger_version(ctx.occurred_at_ms, status),
    )


def _decision_row(ctx: ProjectionContext, fields: dict[str, Any]) -> Row:
    """A ``ledger_decisions`` row: the payload's fields, empty/0 where it has none."""
    f = fields
    return (
        ctx.event.event_id, ctx.record_name, f["station_id"], f.get("reservation_id", ""),
        f.get("order_id", ""), f.get("connector_id", ""), f.get("vehicle_credential_id", ""),
        f.get("from_connector_id", ""), int(f.get("from_slot_start_at_ms", 0)),
        int(f.get("slot_start_at_ms", 0)), int(f.get("slot_stop_at_ms", 0)),
        money(f.get("rate_per_kwh", Decimal(0))), int(f.get("energy_wh", 0)),
        f.get("reason_code", ""), str(f.get("detail", ""))[:DETAIL_CHARS_MAX],
        f.get("rules_version", ""), ctx.occurred_at_ms, seconds(ctx.occurred_at_ms),
    )


def _slot_reserved(ctx: ProjectionContext) -> Rows:
    return {
        SLOT_LEDGER: [_slot_row(ctx, RESERVED, ctx.payload)],
        LEDGER_DECISIONS: [_decision_row(ctx, ctx.payload)],
    }


def _slot_released(ctx: ProjectionContext) -> Rows:
    return {
        SLOT_LEDGER: [_slot_row(ctx, RELEASED, ctx.payload)],
        LEDGER_DECISIONS: [_decision_row(ctx, ctx.payload)],
    }


def _slot_reallocated(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    moved = {
        **p,
        "connector_id": p["to_connector_id"],
        "slot_start_at_ms": p["to_slot_start_at_ms"],
        "slot_stop_at_ms": p["to_slot_stop_at_ms"],
    }
    return {
        SLOT_LEDGER: [_slot_row(ctx, REALLOCATED, moved)],
        LEDGER_DECISIONS: [_decision_row(ctx, moved)],
    }


def _order_rejected(ctx: ProjectionContext) -> Rows:
    return {LEDGER_DECISIONS: [_decision_row(ctx, ctx.payload)]}


PROJECTORS: dict[str, Projector] = {
    LEDGER_NAMESPACE + "SlotReserved": _slot_reserved,
    LEDGER_NAMESPACE + "SlotReleased": _slot_released,
    LEDGER_NAMESPACE + "SlotReallocated": _slot_reallocated,
    LEDGER_NAMESPACE + "OrderRejected": _order_rejected,
}
