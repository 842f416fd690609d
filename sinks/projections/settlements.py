"""Projections of the settlements topic into ``settlements``, ``settlement_lines`` and
``settlement_finality`` (DDL in ``migrations/0003_sessions.sql``), and ``settlement_expiries``
(``migrations/0014_finality_and_reversals.sql``). A reversal (``SettlementReversed``, P4) is a
settlement row of its own, kind ``REVERSAL``, naming the one it voids in
``adjusts_settlement_id``, with its negated lines, so every view nets it out."""

from __future__ import annotations

import dataclasses
import datetime

from chargemesh.checks import ensure
from chargemesh.sinks.projections.core import (
    DETAIL_CHARS_MAX,
    ProjectionContext,
    Projector,
    Rows,
    money,
    seconds,
)

SETTLEMENT_NAMESPACE = "chargemesh.settlement.v1."
SETTLEMENTS = "settlements"
SETTLEMENT_LINES = "settlement_lines"
SETTLEMENT_FINALITY = "settlement_finality"
SETTLEMENT_EXPIRIES = "settlement_expiries"
# ``settlements.kind`` of a SettlementReversed row (the Avro SettlementKind has no such symbol:
# a reversal is its own record type).
REVERSAL = "REVERSAL"
# A settlement's line items; the ledger writes a handful (energy segments, fees, tax).
SETTLEMENT_LINES_MAX = 10_000

# Insert columns per table, in row-tuple order.
TABLES: dict[str, tuple[str, ...]] = {
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
    SETTLEMENT_EXPIRIES: (
        "settlement_id", "session_id", "station_id", "required_signers", "signer_ids",
        "missing_signer_ids", "closed_at_ms", "finality_window_ms", "expired_at_ms",
        "expired_at", "event_id",
    ),
}


def utc_day(at_ms: int) -> datetime.date:
    """The UTC day of ``at_ms`` for a ``Date`` column (clamped like :func:`seconds`)."""
    return datetime.datetime.fromtimestamp(seconds(at_ms), tz=datetime.UTC).date()


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


def _settlement_reversed(ctx: ProjectionContext) -> Rows:
    """A reversal: a settlement row (kind REVERSAL) and its lines, final at once (a finality
    row: the ledger's own re-evaluation is the one signature it needs)."""
    p = ctx.payload
    as_settlement = dict(p, kind=REVERSAL, adjusts_settlement_id=p["reverses_settlement_id"],
                         energy_export_wh=0, evidence_event_ids=[p["cause_event_id"]],
                         required_signer_ids=[], admitted_at_ms=p["reversed_at_ms"])
    rows = _settlement_admitted(dataclasses.replace(ctx, payload=as_settlement))
    rows[SETTLEMENT_FINALITY] = [(
        p["settlement_id"], p["session_id"], [], p["reversed_at_ms"],
        seconds(p["reversed_at_ms"]), ctx.event.event_id,
    )]
    return rows


def _settlement_expired(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {SETTLEMENT_EXPIRIES: [(
        p["settlement_id"], p["session_id"], p["station_id"], list(p["required_signer_ids"]),
        list(p["signer_ids"]), list(p["missing_signer_ids"]), p["closed_at_ms"],
        p["finality_window_ms"], p["expired_at_ms"], seconds(p["expired_at_ms"]),
        ctx.event.event_id,
    )]}


def _settlement_finalised(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    row = (
        p["settlement_id"], p["session_id"], list(p["signer_ids"]), p["finalised_at_ms"],
        seconds(p["finalised_at_ms"]), ctx.event.event_id,
    )
    return {SETTLEMENT_FINALITY: [row]}


PROJECTORS: dict[str, Projector] = {
    SETTLEMENT_NAMESPACE + "SettlementAdmitted": _settlement_admitted,
    SETTLEMENT_NAMESPACE + "SettlementFinalised": _settlement_finalised,
    SETTLEMENT_NAMESPACE + "SettlementReversed": _settlement_reversed,
    SETTLEMENT_NAMESPACE + "SettlementExpired": _settlement_expired,
}
