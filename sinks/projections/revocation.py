"""P4 projections: credential re-evaluations (``credential_reevaluations``, migration 0007)."""

from __future__ import annotations

from chargemesh.sinks.projections.core import (
    ProjectionContext,
    Projector,
    Rows,
    seconds,
)

CREDENTIAL_REEVALUATIONS = "credential_reevaluations"

# Insert columns per table, in row-tuple order.
TABLES: dict[str, tuple[str, ...]] = {
    CREDENTIAL_REEVALUATIONS: (
        "event_id", "revoked_credential_id", "subject_kind", "subject_id", "station_id",
        "outcome", "revoked_at_ms", "reevaluated_at_ms", "reevaluated_at", "ingested_at",
    ),
}


def _credential_reevaluated(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {CREDENTIAL_REEVALUATIONS: [(
        ctx.event.event_id, p["revoked_credential_id"], p["subject_kind"], p["subject_id"],
        p["station_id"], p["outcome"], p["revoked_at_ms"], ctx.occurred_at_ms,
        seconds(ctx.occurred_at_ms), seconds(ctx.ingested_at_ms),
    )]}


PROJECTORS: dict[str, Projector] = {
    "chargemesh.ledger.v1.CredentialReevaluated": _credential_reevaluated,
}
