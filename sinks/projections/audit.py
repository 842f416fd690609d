"""Projections of the P5 audit: signed log checkpoints into ``log_checkpoints`` (DDL in
``migrations/0005_audit.sql``)."""

from __future__ import annotations

from chargemesh.sinks.projections.core import (
    ProjectionContext,
    Projector,
    Rows,
    seconds,
)

LOG_CHECKPOINTS = "log_checkpoints"
AUDIT_FINDINGS = "audit_findings"

# Insert columns per table, in row-tuple order.
TABLES: dict[str, tuple[str, ...]] = {
    LOG_CHECKPOINTS: (
        "event_id", "log_id", "log_topic", "log_partition", "tree_size", "root_hash",
        "first_offset", "last_offset", "previous_tree_size", "previous_root_hash",
        "consistency_proof_hashes", "checkpointed_at_ms", "checkpointed_at",
        "author_credential_id",
    ),
    AUDIT_FINDINGS: (
        "audit_id", "authority_id", "audited_at_ms", "audited_at", "source", "code", "event_id",
        "event_type", "location", "session_id", "detail",
    ),
}


def _log_checkpoint(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    row = (
        ctx.event.event_id, p["log_id"], p["log_topic"], p["log_partition"], p["tree_size"],
        bytes(p["root_hash"]).hex(), p["first_offset"], p["last_offset"],
        p["previous_tree_size"], bytes(p["previous_root_hash"]).hex(),
        len(p["consistency_proof"]), p["checkpointed_at_ms"], seconds(p["checkpointed_at_ms"]),
        ctx.event.body.author_credential_id,
    )
    return {LOG_CHECKPOINTS: [row]}


PROJECTORS: dict[str, Projector] = {
    "chargemesh.audit.v1.LogCheckpoint": _log_checkpoint,
}
