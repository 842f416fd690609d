"""P2 projections: every accepted dispute change (``disputes``, migration 0004).

Correcting settlements need no projector of their own: they are ``SettlementAdmitted`` records
(kind ADJUSTMENT or CREDIT) and land in ``settlements`` / ``settlement_lines``; the views of
0004 (``settlement_adjustments``, ``settlements_net``) join them to their disputes.
"""

from __future__ import annotations

from chargemesh.sinks.projections.core import (
    DETAIL_CHARS_MAX,
    ProjectionContext,
    Projector,
    Rows,
    money,
    seconds,
)

DISPUTES = "disputes"
STATEMENT_CHARS_MAX = 4 * DETAIL_CHARS_MAX

# Insert columns per table, in row-tuple order.
TABLES: dict[str, tuple[str, ...]] = {
    DISPUTES: (
        "event_id", "dispute_id", "session_id", "station_id", "settlement_id", "kind", "change",
        "status", "seq", "opened_by_credential_id", "actor_credential_id", "cause_event_id",
        "rate_authority_id", "evidence_event_ids", "statement", "outcome",
        "adjustment_settlement_id", "adjustment_total", "currency", "opened_at_ms", "opened_at",
        "recorded_at_ms", "recorded_at",
    ),
}


def _dispute_recorded(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {DISPUTES: [(
        ctx.event.event_id, p["dispute_id"], p["session_id"], p["station_id"],
        p["settlement_id"], p["kind"], p["change"], p["status"], p["seq"],
        p["opened_by_credential_id"], p["actor_credential_id"], p["cause_event_id"],
        p["rate_authority_id"], list(p["evidence_event_ids"]),
        p["statement"][:STATEMENT_CHARS_MAX], p["outcome"], p["adjustment_settlement_id"],
        money(p["adjustment_total"]), p["currency"], p["opened_at_ms"],
        seconds(p["opened_at_ms"]), p["recorded_at_ms"], seconds(p["recorded_at_ms"]),
    )]}


PROJECTORS: dict[str, Projector] = {
    "chargemesh.dispute.v1.DisputeRecorded": _dispute_recorded,
}
