"""ClickHouse projection of grid-zone governance (issue 15, hole 2; DDL:
migrations/0013_grid_zones.sql): each admitted zone registration and grid program. Pure."""

from __future__ import annotations

from chargemesh.sinks.projections.core import ProjectionContext, Projector, Rows, seconds

GRID_ZONES = "grid_zones"

# Insert columns per table, in row-tuple order.
TABLES: dict[str, tuple[str, ...]] = {
    GRID_ZONES: (
        "grid_zone_id", "change", "jurisdiction", "registered_by_authority_id",
        "operator_credential_ids", "program", "declared_by_credential_id", "effective_from_ms",
        "event_id", "occurred_at_ms", "occurred_at",
    ),
}


def _registered(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {GRID_ZONES: [(
        p["grid_zone_id"], "REGISTERED", p["jurisdiction"], p["registered_by_authority_id"],
        list(p["operator_credential_ids"]), "", "", p["effective_from_ms"], ctx.event.event_id,
        ctx.occurred_at_ms, seconds(ctx.occurred_at_ms),
    )]}


def _program(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {GRID_ZONES: [(
        p["grid_zone_id"], "PROGRAM_DECLARED", "", "", list(p["grid_operator_credential_ids"]),
        str(p["program"]), ctx.event.body.author_credential_id, p["effective_from_ms"],
        ctx.event.event_id, ctx.occurred_at_ms, seconds(ctx.occurred_at_ms),
    )]}


PROJECTORS: dict[str, Projector] = {
    "chargemesh.governance.v1.GridZoneRegistered": _registered,
    "chargemesh.grid.v1.GridProgramDeclared": _program,
}
