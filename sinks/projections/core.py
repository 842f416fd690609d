"""Projections: one Kafka message in, the ClickHouse rows it stands for out. Pure, no I/O.

:func:`project` turns a message into ``{table: [row, ...]}``:

* a signed event (admitted, decisions, settlements topics) gives one ``events`` row, plus the
  rows of the projector registered for its event type in :data:`PROJECTORS` (none for types
  nobody registered yet);
* an ``EventRejected`` record (rejections topic) gives one ``rejections`` row;
* bytes that do not decode give a ``rejections`` row with reason ``SINK_UNDECODABLE``, and a
  projector that fails on a decodable event gives ``SINK_PROJECTION_FAILED`` (next to the
  event's ``events`` row): a bad message never stops the sink.

Every row is a function of the message alone (the ingestion time only fills ``ingested_at``),
and every table is a ``ReplacingMergeTree`` keyed by an id taken from the event, so a
redelivered message collapses into the row it already wrote.

Adding a projector for a new event type::

    @projects("chargemesh.session.v1.SessionStopped")
    def _session_stopped(ctx: ProjectionContext) -> Rows:
        return {"sessions": [(...)]}

and declare the table's insert columns in :data:`TABLE_COLUMNS` (and its DDL in a migration).
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from chargemesh.checks import InvariantError, ensure
from chargemesh.schemas import registry
from chargemesh.schemas.codec import DecodeError, catalog, render_json
from chargemesh.streams.envelope import REJECTED_SCHEMA, SignedEvent, open_envelope, open_payload

Row = tuple[Any, ...]
Rows = dict[str, list[Row]]

SINK_UNDECODABLE = "SINK_UNDECODABLE"
SINK_PROJECTION_FAILED = "SINK_PROJECTION_FAILED"
# Own namespace: a sink rejection id never equals a processor's rejection id for the same spot.
SINK_REJECTION_NAMESPACE = uuid.UUID("0b7c3e52-9d4f-4a61-8f2e-5c1d7a9e3b40")
RAW_BYTES_KEPT_MAX = 64 * 1024
DETAIL_CHARS_MAX = 1_000
MS_PER_S = 1_000
DATETIME_S_MAX = 2**32 - 1
# Decimal(18, 6): at most 12 digits before the point.
MONEY_ABS_LIMIT = Decimal(10) ** 12
# slot_ledger.version = occurred_at_ms * VERSION_SLOTS_PER_MS + lifecycle rank (see 0002).
VERSION_SLOTS_PER_MS = 1_000
LEDGER_NAMESPACE = "chargemesh.ledger.v1."
RESERVED = "RESERVED"
REALLOCATED = "REALLOCATED"
RELEASED = "RELEASED"
LIFECYCLE_RANK = {RESERVED: 0, REALLOCATED: 1, RELEASED: 2}

EVENTS = "events"
REJECTIONS = "rejections"
SLOT_LEDGER = "slot_ledger"
LEDGER_DECISIONS = "ledger_decisions"

# Insert columns per table, in row-tuple order (DDL in sinks/migrations/).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    EVENTS: (
        "event_id", "event_type", "topic", "kafka_partition", "kafka_offset", "subject_key",
        "author_credential_id", "occurred_at_ms", "occurred_at", "schema_fingerprint",
        "prev_hash", "event_hash", "payload_json", "envelope_bytes", "ingested_at",
    ),
    REJECTIONS: (
        "rejection_id", "source_topic", "source_partition", "source_offset", "reason_code",
        "detail", "event_id", "event_type", "author_credential_id", "rejected_at_ms",
        "rejected_at", "raw_bytes",
    ),
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


@dataclasses.dataclass(frozen=True)
class SourceMessage:
    """One Kafka message as the sink read it. ``timestamp_ms``: the broker's record time."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    timestamp_ms: int


@dataclasses.dataclass(frozen=True)
class ProjectionContext:
    """What a projector sees: the message, its decoded event and payload, the ingestion time."""

    message: SourceMessage
    event: SignedEvent
    payload: dict[str, Any]
    ingested_at_ms: int

    @property
    def occurred_at_ms(self) -> int:
        return self.event.body.occurred_at_ms

    @property
    def record_name(self) -> str:
        """The event type without its namespace, e.g. ``SlotReserved``."""
        return self.event.event_type.rsplit(".", 1)[-1]


Projector = Callable[[ProjectionContext], Rows]
# What a projector may raise on a payload it cannot project (anything else is a bug and stops
# the sink before it commits). DecodeError: signed bytes embedded in the payload (an
# equivocation's attestations) that do not decode.
PROJECTOR_ERRORS = (KeyError, TypeError, ValueError, ArithmeticError, InvariantError,
                    DecodeError)
PROJECTORS: dict[str, Projector] = {}


def projects(*event_types: str) -> Callable[[Projector], Projector]:
    """Register the decorated function as the projector of ``event_types`` (one each)."""

    def register(projector: Projector) -> Projector:
        for event_type in event_types:
            ensure(event_type not in PROJECTORS, f"two projectors for {event_type}")
            catalog().current(event_type)  # a typo fails at import, not on the first event
            PROJECTORS[event_type] = projector
        return projector

    return register


# ---- the dispatcher --------------------------------------------------------------------------


def project(message: SourceMessage, rejections_topic: str, ingested_at_ms: int) -> Rows:
    """The rows ``message`` stands for; never raises on bad input (it becomes a rejection)."""
    try:
        # The archive keeps single-object bytes: readable with the .avsc files alone.
        message = dataclasses.replace(message, value=registry.normalise(message.value or b""))
    except DecodeError as exc:
        return _undecodable(message, exc, None)
    if message.topic == rejections_topic:
        return _project_rejection_record(message)
    try:
        event = open_envelope(message.value or b"")
    except DecodeError as exc:
        return _undecodable(message, exc, None)
    try:
        payload = open_payload(event)
    except DecodeError as exc:
        return _undecodable(message, exc, event)
    ctx = ProjectionContext(message, event, payload, ingested_at_ms)
    try:
        rows: Rows = {EVENTS: [_events_row(ctx)]}
    except DecodeError as exc:  # render_json refuses a payload too large to render
        return _undecodable(message, exc, event)
    projector = PROJECTORS.get(event.event_type)
    if projector is None:
        return rows
    try:
        projected = projector(ctx)
    except PROJECTOR_ERRORS as exc:
        detail = f"{type(exc).__name__}: {exc}"
        rows[REJECTIONS] = [_sink_rejection_row(message, SINK_PROJECTION_FAILED, detail, event)]
        return rows
    for table, table_rows in projected.items():
        ensure(table in TABLE_COLUMNS, f"projector wrote to undeclared table {table}")
        rows.setdefault(table, []).extend(table_rows)
    return rows


def _events_row(ctx: ProjectionContext) -> Row:
    body, message = ctx.event.body, ctx.message
    return (
        body.event_id, body.event_type, message.topic, message.partition, message.offset,
        body.subject_key, body.author_credential_id, body.occurred_at_ms,
        seconds(body.occurred_at_ms), body.schema_fingerprint.hex(), body.prev_hash.hex(),
        ctx.event.event_hash.hex(), render_json(ctx.payload), message.value or b"",
        seconds(ctx.ingested_at_ms),
    )


def _project_rejection_record(message: SourceMessage) -> Rows:
    try:
        name, record = catalog().single_object_decode(message.value or b"")
    except DecodeError as exc:
        return _undecodable(message, exc, None)
    if name != REJECTED_SCHEMA:
        error = DecodeError("WRONG_SCHEMA", f"{name} on the rejections topic")
        return _undecodable(message, error, None)
    row = (
        record["rejection_id"], record["source_topic"], record["source_partition"],
        record["source_offset"], record["reason_code"], record["detail"][:DETAIL_CHARS_MAX],
        record["event_id"], record["event_type"], record["author_credential_id"],
        record["rejected_at_ms"], seconds(record["rejected_at_ms"]),
        bytes(record["raw_bytes"][:RAW_BYTES_KEPT_MAX]),
    )
    return {REJECTIONS: [row]}


def sink_rejection_id(topic: str, partition: int, offset: int) -> str:
    """Deterministic from the message's place: a redelivery gives the same id, so one row."""
    return str(uuid.uuid5(SINK_REJECTION_NAMESPACE, f"{topic}/{partition}/{offset}"))


def _undecodable(message: SourceMessage, exc: DecodeError, event: SignedEvent | None) -> Rows:
    detail = f"{exc.reason_code}: {exc.detail}"
    return {REJECTIONS: [_sink_rejection_row(message, SINK_UNDECODABLE, detail, event)]}


def _sink_rejection_row(
    message: SourceMessage, reason_code: str, detail: str, event: SignedEvent | None
) -> Row:
    # rejected_at is the broker's record time, not the clock: a redelivered message must land
    # in the same monthly partition as its first row, or the two would never collapse.
    return (
        sink_rejection_id(message.topic, message.partition, message.offset), message.topic,
        message.partition, message.offset, reason_code, detail[:DETAIL_CHARS_MAX],
        event.event_id if event else "", event.event_type if event else "",
        event.body.author_credential_id if event else "", message.timestamp_ms,
        seconds(message.timestamp_ms), (message.value or b"")[:RAW_BYTES_KEPT_MAX],
    )


# ---- helpers for projectors ------------------------------------------------------------------


def seconds(at_ms: int) -> int:
    """Epoch seconds for a ``DateTime`` column (the driver takes them as they are: UTC).

    Clamped to what ``DateTime`` holds (1970 to 2106); the ``*_at_ms`` column next to it keeps
    the exact value, so a hostile timestamp cannot fail a whole insert.
    """
    return min(max(at_ms // MS_PER_S, 0), DATETIME_S_MAX)


def money(value: Decimal) -> Decimal:
    """A payload amount checked to fit ``Decimal(18, 6)`` (else the whole insert would fail)."""
    ensure(isinstance(value, Decimal), f"money is not a Decimal: {type(value).__name__}")
    ensure(abs(value) < MONEY_ABS_LIMIT, f"amount {value} does not fit Decimal(18, 6)")
    return value


def ledger_version(occurred_at_ms: int, status: str) -> int:
    """``slot_ledger.version``: later decisions win, same-millisecond ones by lifecycle rank."""
    return occurred_at_ms * VERSION_SLOTS_PER_MS + LIFECYCLE_RANK[status]


# ---- ledger decisions (decisions topic) ------------------------------------------------------


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


@projects(LEDGER_NAMESPACE + "SlotReserved")
def _slot_reserved(ctx: ProjectionContext) -> Rows:
    return {
        SLOT_LEDGER: [_slot_row(ctx, RESERVED, ctx.payload)],
        LEDGER_DECISIONS: [_decision_row(ctx, ctx.payload)],
    }


@projects(LEDGER_NAMESPACE + "SlotReleased")
def _slot_released(ctx: ProjectionContext) -> Rows:
    return {
        SLOT_LEDGER: [_slot_row(ctx, RELEASED, ctx.payload)],
        LEDGER_DECISIONS: [_decision_row(ctx, ctx.payload)],
    }


@projects(LEDGER_NAMESPACE + "SlotReallocated")
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


@projects(LEDGER_NAMESPACE + "OrderRejected")
def _order_rejected(ctx: ProjectionContext) -> Rows:
    return {LEDGER_DECISIONS: [_decision_row(ctx, ctx.payload)]}


# ---- sessions, meter evidence and re-prices (admitted and decisions topics) ------------------
# DDL in 0003_sessions.sql. Participants' events here may still be refused by the ledger after
# admission; the tables keep them all and the *_valid / *_current views leave refused ones out.

SESSION_NAMESPACE = "chargemesh.session.v1."
SETTLEMENT_NAMESPACE = "chargemesh.settlement.v1."
SESSION_LIFECYCLE = "session_lifecycle"
METER_READINGS = "meter_readings"
REPRICES = "reprices"
SETTLEMENTS = "settlements"
SETTLEMENT_LINES = "settlement_lines"
SETTLEMENT_FINALITY = "settlement_finality"
STARTED = "STARTED"
STOPPED = "STOPPED"
CLOSED_OUT = "CLOSED_OUT"
# session_lifecycle.version = occurred_at_ms * VERSION_SLOTS_PER_MS + stage rank.
STAGE_RANK = {STARTED: 0, STOPPED: 1, CLOSED_OUT: 2}
PROPOSED = "PROPOSED"
ACCEPTED = "ACCEPTED"
# A settlement's line items; the ledger writes a handful (energy segments, fees, tax).
SETTLEMENT_LINES_MAX = 10_000

TABLE_COLUMNS.update({
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
    SETTLEMENTS: (
        "settlement_id", "session_id", "station_id", "connector_id", "vehicle_id",
        "vehicle_credential_id", "rate_authority_id", "jurisdiction", "tariff_id", "currency",
        "rounding", "kind", "adjusts_settlement_id", "total_amount", "energy_import_wh",
        "energy_export_wh", "line_count", "admitted_at_ms", "admitted_at", "day",
        "required_signers", "evidence_event_ids", "event_id",
    ),
    SETTLEMENT_LINES: (
        "settlement_id", "line_no", "kind", "description", "quantity_wh", "unit_rate_per_kwh",
        "amount", "from_at_ms", "until_at_ms", "currency", "jurisdiction", "station_id", "day",
    ),
    SETTLEMENT_FINALITY: (
        "settlement_id", "session_id", "signer_ids", "finalised_at_ms", "finalised_at",
        "event_id",
    ),
})


def utc_day(at_ms: int) -> datetime.date:
    """The UTC day of ``at_ms`` for a ``Date`` column (clamped like :func:`seconds`)."""
    return datetime.datetime.fromtimestamp(seconds(at_ms), tz=datetime.UTC).date()


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


@projects(SESSION_NAMESPACE + "ConnectorHandshakeCompleted")
def _handshake_completed(ctx: ProjectionContext) -> Rows:
    ident = ctx.payload["identity"]
    fields = {**ctx.payload, "station_id": ident["station_id"],
              "connector_id": ident["connector_id"]}
    return {SESSION_LIFECYCLE: [_lifecycle_row(ctx, STARTED, fields)]}


@projects(SESSION_NAMESPACE + "SessionStopped")
def _session_stopped(ctx: ProjectionContext) -> Rows:
    return {SESSION_LIFECYCLE: [_lifecycle_row(ctx, STOPPED, ctx.payload)]}


@projects(SESSION_NAMESPACE + "MeterClosedOut")
def _meter_closed_out(ctx: ProjectionContext) -> Rows:
    return {SESSION_LIFECYCLE: [_lifecycle_row(ctx, CLOSED_OUT, ctx.payload)]}


@projects(SESSION_NAMESPACE + "MeterReadingRecorded")
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


@projects(SESSION_NAMESPACE + "RepriceProposed")
def _reprice_proposed(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {REPRICES: [_reprice_row(ctx, PROPOSED, p["new_rate_per_kwh"], p)]}


@projects(SESSION_NAMESPACE + "RepriceAccepted")
def _reprice_accepted(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {REPRICES: [_reprice_row(ctx, ACCEPTED, p["accepted_rate_per_kwh"], p)]}


# ---- settlements (settlements topic) ---------------------------------------------------------


@projects(SETTLEMENT_NAMESPACE + "SettlementAdmitted")
def _settlement_admitted(ctx: ProjectionContext) -> Rows:
    p, ident = ctx.payload, ctx.payload["identity"]
    lines = p["lines"]
    ensure(len(lines) <= SETTLEMENT_LINES_MAX, f"{len(lines)} settlement lines")
    admitted_at_ms = int(p["admitted_at_ms"])
    day = utc_day(admitted_at_ms)
    settlement = (
        p["settlement_id"], p["session_id"], ident["station_id"], ident["connector_id"],
        ident["vehicle_id"], ident["vehicle_credential_id"], ident["rate_authority_id"],
        ident["jurisdiction"], p["tariff_id"], p["currency"], p["rounding"], p["kind"],
        p["adjusts_settlement_id"], money(p["total_amount"]), p["energy_import_wh"],
        p["energy_export_wh"], len(lines), admitted_at_ms, seconds(admitted_at_ms), day,
        list(p["required_signer_ids"]), list(p["evidence_event_ids"]), ctx.event.event_id,
    )
    line_rows = [
        (
            p["settlement_id"], line_no, ln["kind"], ln["description"][:DETAIL_CHARS_MAX],
            ln["quantity_wh"], money(ln["unit_rate_per_kwh"]), money(ln["amount"]),
            ln["from_at_ms"], ln["until_at_ms"], p["currency"], ident["jurisdiction"],
            ident["station_id"], day,
        )
        for line_no, ln in enumerate(lines)
    ]
    return {SETTLEMENTS: [settlement], SETTLEMENT_LINES: line_rows}


@projects(SETTLEMENT_NAMESPACE + "SettlementFinalised")
def _settlement_finalised(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    row = (
        p["settlement_id"], p["session_id"], list(p["signer_ids"]), p["finalised_at_ms"],
        seconds(p["finalised_at_ms"]), ctx.event.event_id,
    )
    return {SETTLEMENT_FINALITY: [row]}


# Projections of later capabilities register themselves on import (keep these last).
from chargemesh.sinks.projections import revocation as projections_revocation  # noqa: E402, F401
from chargemesh.sinks.projections import observers as projections_observers  # noqa: E402, F401
from chargemesh.sinks.projections import audit as projections_audit  # noqa: E402, F401
from chargemesh.sinks.projections import disputes as projections_disputes  # noqa: E402, F401
from chargemesh.sinks.projections import wireless as projections_wireless  # noqa: E402, F401
from chargemesh.sinks.projections import v2g_fleet as projections_v2g_fleet  # noqa: E402, F401
from chargemesh.sinks.projections import swap_mobile as projections_swap_mobile  # noqa: E402, F401
