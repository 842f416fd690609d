"""ClickHouse projection of the power limits held on sessions (issue 16, M5/M7/P3; DDL:
migrations/0016_power_limits.sql): one row per ``PowerLimitSet`` decision. Pure."""

from __future__ import annotations

from chargemesh.sinks.projections.core import ProjectionContext, Projector, Rows, seconds

POWER_LIMITS = "power_limits"

# Insert columns per table, in row-tuple order.
TABLES: dict[str, tuple[str, ...]] = {
    POWER_LIMITS: (
        "session_id", "station_id", "connector_id", "grid_zone_id", "grid_event_id", "kind",
        "power_limit_w", "effective_from_ms", "until_at_ms", "decided_at_ms", "event_id",
        "effective_from",
    ),
}


def _power_limit_set(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {POWER_LIMITS: [(
        p["session_id"], p["station_id"], p["connector_id"], p["grid_zone_id"],
        p["grid_event_id"], p["kind"], p["power_limit_w"], p["effective_from_ms"],
        p["until_at_ms"], p["decided_at_ms"], ctx.event.event_id,
        seconds(p["effective_from_ms"]),
    )]}


PROJECTORS: dict[str, Projector] = {
    "chargemesh.session.v1.PowerLimitSet": _power_limit_set,
}
