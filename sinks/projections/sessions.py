"""Projections of session evidence and re-prices (admitted and decisions topics) into
``session_lifecycle``, ``meter_readings`` and ``reprices`` (DDL in ``migrations/0003_sessions.sql``).

Participants' events here may still be refused by the ledger after admission; the tables keep them
all and the ``*_valid`` / ``*_current`` views leave refused ones out.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.sinks.projections.core import (
    VERSION_SLOTS_PER_MS,
    ProjectionContext,
    Projector,
    Row,
    Rows,
    money,
    seconds,
)

SESSION_NAMESPACE = "chargemesh.session.v1."
SESSION_LIFECYCLE = "session_lifecycle"
METER_READINGS = "meter_readings"
REPRICES = "reprices"
STARTED = "STARTED"
STOPPED = "STOPPED"
CLOSED_OUT = "CLOSED_OUT"
# session_lifecycle.version = occurred_at_ms * VERSION_SLOTS_PER_MS + stage rank.
STAGE_RANK = {STARTED: 0, STOPPED: 1, CLOSED_OUT: 2}
PROPOSED = "PROPOSED"
ACCEPTED = "ACCEPTED"

# Insert columns per table, in row-tuple order.
TABLES: dict[str, tuple[str, ...]] = {
    SESSION_LIFECYCLE: (
        "event_id", "station_id", "session_id", "stage", "reservation_id", "connector_id",
        "connector_hardware_id", "vehicle_id", "vehicle_id_kind", "vehicle_credential_id",
        "rate_authority_id", "jurisdiction", "started_at_ms", "started_at", "meter_start_wh",
        "stopped_at_ms", "stop_reason", "closed_at_ms", "final_import_wh", "final_export_wh",
        "last_reading_seq", "author_credential_id", "occurred_at_ms", "version",
    ),
    METER_READINGS: (
        "event_id", "session_id", "station_id", "connector_id", "reading_seq",
        "cumulative_import_wh", "cumulative_export_wh", "read_at_ms", "read_at",
    ),
    REPRICES: (
        "event_id", "stage", "station_id", "session_id", "grid_event_id", "effective_from_ms",
        "rate_per_kwh", "power_limit_w", "author_credential_id", "occurred_at_ms",
        "occurred_at",
    ),
}


def _lifecycle_row(ctx: ProjectionContext, stage: str, fields: dict[str, Any]) -> Row:
    """A ``session_lifecycle`` row: ``fields`` holds what the event carries; the rest empty/0."""
    f, ident = fields, fields.get("identity", {})
    started_at_ms = int(f.get("started_at_ms", 0))
    return (
        ctx.event.event_id, f["station_id"], f["session_id"], stage,
        f.get("reservation_id", ""), f.get("connector_id", ""),
        ident.get("connector_hardware_id", ""), ident.get("vehicle_id", ""),
        ident.get("vehicle_id_kind", ""), ident.get("vehicle_credential_id", ""),
        ident.get("rate_authority_id", ""), ident.get("jurisdiction", ""),
        started_at_ms, seconds(started_at_ms), int(f.get("meter_start_wh", 0)),
        int(f.get("stopped_at_ms", 0)), f.get("reason", ""), int(f.get("closed_at_ms", 0)),
        int(f.get("final_import_wh", 0)), int(f.get("final_export_wh", 0)),
        int(f.get("last_reading_seq", 0)), ctx.event.body.author_credential_id,
        ctx.occurred_at_ms, ctx.occurred_at_ms * VERSION_SLOTS_PER_MS + STAGE_RANK[stage],
    )


def _handshake_completed(ctx: ProjectionContext) -> Rows:
    ident = ctx.payload["identity"]
    fields = {**ctx.payload, "station_id": ident["station_id"],
              "connector_id": ident["connector_id"]}
    return {SESSION_LIFECYCLE: [_lifecycle_row(ctx, STARTED, fields)]}


def _session_stopped(ctx: ProjectionContext) -> Rows:
    return {SESSION_LIFECYCLE: [_lifecycle_row(ctx, STOPPED, ctx.payload)]}


def _meter_closed_out(ctx: ProjectionContext) -> Rows:
    return {SESSION_LIFECYCLE: [_lifecycle_row(ctx, CLOSED_OUT, ctx.payload)]}


def _meter_reading_recorded(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    row = (
        ctx.event.event_id, p["session_id"], p["station_id"], p["connector_id"],
        p["reading_seq"], p["cumulative_import_wh"], p["cumulative_export_wh"],
        p["read_at_ms"], seconds(p["read_at_ms"]),
    )
    return {METER_READINGS: [row]}


def _reprice_row(
    ctx: ProjectionContext, stage: str, rate: Decimal, fields: dict[str, Any]
) -> Row:
    f = fields
    return (
        ctx.event.event_id, stage, f["station_id"], f["session_id"], f["grid_event_id"],
        int(f.get("effective_from_ms", 0)), money(rate), int(f.get("power_limit_w", 0)),
        ctx.event.body.author_credential_id, ctx.occurred_at_ms, seconds(ctx.occurred_at_ms),
    )


def _reprice_proposed(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {REPRICES: [_reprice_row(ctx, PROPOSED, p["new_rate_per_kwh"], p)]}


def _reprice_accepted(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {REPRICES: [_reprice_row(ctx, ACCEPTED, p["accepted_rate_per_kwh"], p)]}


PROJECTORS: dict[str, Projector] = {
    SESSION_NAMESPACE + "ConnectorHandshakeCompleted": _handshake_completed,
    SESSION_NAMESPACE + "SessionStopped": _session_stopped,
    SESSION_NAMESPACE + "MeterClosedOut": _meter_closed_out,
    SESSION_NAMESPACE + "MeterReadingRecorded": _meter_reading_recorded,
    SESSION_NAMESPACE + "RepriceProposed": _reprice_proposed,
    SESSION_NAMESPACE + "RepriceAccepted": _reprice_accepted,
}
