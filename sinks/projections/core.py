"""The projection machinery: one Kafka message in, the ClickHouse rows it stands for out. Pure.

:func:`project_message` turns a message into ``{table: [row, ...]}``, given the projectors and
tables :mod:`chargemesh.sinks.projections` composes from the domain modules:

* a signed event (admitted, decisions, settlements topics) gives one ``events`` row, plus the
  rows of the projector of its event type (none for types nobody projects yet);
* an ``EventRejected`` record (rejections topic) gives one ``rejections`` row;
* bytes that do not decode give a ``rejections`` row with reason ``SINK_UNDECODABLE``, and a
  projector that fails on a decodable event gives ``SINK_PROJECTION_FAILED`` (next to the
  event's ``events`` row): a bad message never stops the sink.

Every row is a function of the message alone (the ingestion time only fills ``ingested_at``),
and every table is a ``ReplacingMergeTree`` keyed by an id taken from the event, so a
redelivered message collapses into the row it already wrote.

Adding a projector for a new event type: write the function in its domain's module, e.g.::

    def _session_stopped(ctx: ProjectionContext) -> Rows:
        return {"sessions": [(...)]}

add it to that module's ``PROJECTORS`` (``{"chargemesh.session.v1.SessionStopped":
_session_stopped}``), its table's insert columns to the module's ``TABLES`` (and the DDL to a
migration); a new module is added to the lists in ``projections/__init__.py``.

This module imports no domain module: they import it.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from chargemesh.checks import InvariantError, ensure
from chargemesh.processors.reasons import Reason
from chargemesh.schemas import framing
from chargemesh.schemas.codec import DecodeError, catalog, render_json
from chargemesh.streams.envelope import REJECTED_SCHEMA, SignedEvent, open_envelope, open_payload
from chargemesh.units import SECOND_MS

Row = tuple[Any, ...]
Rows = dict[str, list[Row]]

SINK_UNDECODABLE = Reason.SINK_UNDECODABLE
SINK_PROJECTION_FAILED = Reason.SINK_PROJECTION_FAILED
# Own namespace: a sink rejection id never equals a processor's rejection id for the same spot.
SINK_REJECTION_NAMESPACE = uuid.UUID("0b7c3e52-9d4f-4a61-8f2e-5c1d7a9e3b40")
RAW_BYTES_KEPT_MAX = 64 * 1024
DETAIL_CHARS_MAX = 1_000
DATETIME_S_MAX = 2**32 - 1
# Decimal(18, 6): at most 12 digits before the point.
MONEY_ABS_LIMIT = Decimal(10) ** 12
# A ledger or lifecycle row's version = occurred_at_ms * VERSION_SLOTS_PER_MS + its rank, so
# later rows win and rows of the same millisecond by rank (ledger.py, sessions.py).
VERSION_SLOTS_PER_MS = 1_000

EVENTS = "events"
REJECTIONS = "rejections"

# Insert columns per table, in row-tuple order (DDL in sinks/migrations/): the two tables every
# message may write to. Each domain module declares its own; the package composes them.
TABLES: dict[str, tuple[str, ...]] = {
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


# ---- the dispatcher --------------------------------------------------------------------------


def project_message(
    message: SourceMessage,
    rejections_topic: str,
    ingested_at_ms: int,
    projectors: Mapping[str, Projector],
    tables: Mapping[str, tuple[str, ...]],
) -> Rows:
    """The rows ``message`` stands for; never raises on bad input (it becomes a rejection).

    ``projectors``: by full event type; ``tables``: every table's insert columns (a projector
    writing to a table not declared there is a bug).
    """
    try:
        # The archive keeps single-object bytes: readable with the .avsc files alone.
        message = dataclasses.replace(message, value=framing.normalise(message.value or b""))
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
    projector = projectors.get(event.event_type)
    if projector is None:
        return rows
    try:
        projected = projector(ctx)
    except PROJECTOR_ERRORS as exc:
        detail = f"{type(exc).__name__}: {exc}"
        rows[REJECTIONS] = [_sink_rejection_row(message, SINK_PROJECTION_FAILED, detail, event)]
        return rows
    for table, table_rows in projected.items():
        ensure(table in tables, f"projector wrote to undeclared table {table}")
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
        error = DecodeError(Reason.WRONG_SCHEMA, f"{name} on the rejections topic")
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
    return min(max(at_ms // SECOND_MS, 0), DATETIME_S_MAX)


def money(value: Decimal) -> Decimal:
    """A payload amount checked to fit ``Decimal(18, 6)`` (else the whole insert would fail)."""
    ensure(isinstance(value, Decimal), f"money is not a Decimal: {type(value).__name__}")
    ensure(abs(value) < MONEY_ABS_LIMIT, f"amount {value} does not fit Decimal(18, 6)")
    return value
