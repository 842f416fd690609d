"""P4 projections: credential re-evaluations (``credential_reevaluations``, migration 0007)."""

from __future__ import annotations

from chargemesh.sinks.projections.core import (
    TABLE_COLUMNS,
    ProjectionContext,
    Rows,
    projects,
    seconds,
)

CREDENTIAL_REEVALUATIONS = "credential_reevaluations"

TABLE_COLUMNS.update({
    CREDENTIAL_REEVALUATIONS: (
        "event_id", "revoked_credential_id", "subject_kind", "subject_id", "station_id",
        "outcome", "revoked_at_ms", "reevaluated_at_ms", "reevaluated_at", "ingested_at",
    ),
})


@projects("chargemesh.ledger.v1.CredentialReevaluated")
def _credential_reevaluated(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {CREDENTIAL_REEVALUATIONS: [(
        ctx.event.event_id, p["revoked_credential_id"], p["subject_kind"], p["subject_id"],
        p["station_id"], p["outcome"], p["revoked_at_ms"], ctx.occurred_at_ms,
        seconds(ctx.occurred_at_ms), seconds(ctx.ingested_at_ms),
    )]}
