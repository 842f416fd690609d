"""ClickHouse projections of P3 grid observers (DDL: migrations/0006_observers.sql). Pure."""

from __future__ import annotations

from chargemesh.sinks.projections.core import (
    ProjectionContext,
    Projector,
    Rows,
    money,
    seconds,
)
from chargemesh.streams.envelope import open_envelope

GRID = "chargemesh.grid.v1."
OBSERVER_SETS = "observer_sets"
OBSERVER_ATTESTATIONS = "observer_attestations"
GRID_QUORUM_DECISIONS = "grid_quorum_decisions"
OBSERVER_EQUIVOCATIONS = "observer_equivocations"

# Insert columns per table, in row-tuple order.
TABLES: dict[str, tuple[str, ...]] = {
    OBSERVER_SETS: (
        "grid_zone_id", "observer_set_version", "observer_credential_ids", "threshold_k",
        "faults_tolerated_f", "interval_ms", "effective_from_ms", "declared_by_authority_id",
        "grid_operator_credential_id", "event_id", "declared_at_ms", "declared_at",
    ),
    OBSERVER_ATTESTATIONS: (
        "event_id", "grid_zone_id", "observer_credential_id", "observer_set_version",
        "interval_start_at_ms", "interval_end_at_ms", "decision_digest", "curtailment_order",
        "rate_per_kwh", "attested_at_ms", "attested_at",
    ),
    GRID_QUORUM_DECISIONS: (
        "event_id", "grid_zone_id", "interval_start_at_ms", "interval_end_at_ms",
        "observer_set_version", "threshold_k", "decision_digest", "grid_event_id",
        "zone_capacity_limit_w", "rate_per_kwh", "curtailment_order", "signer_credential_ids",
        "station_ids", "decided_at_ms", "decided_at",
    ),
    OBSERVER_EQUIVOCATIONS: (
        "event_id", "grid_zone_id", "observer_credential_id", "observer_set_version",
        "interval_start_at_ms", "first_decision_digest", "second_decision_digest",
        "first_attestation_event_id", "second_attestation_event_id", "interval_decided",
        "detected_at_ms", "detected_at",
    ),
}


def _set_declared(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {OBSERVER_SETS: [(
        p["grid_zone_id"], p["observer_set_version"], list(p["observer_credential_ids"]),
        p["threshold_k"], p["faults_tolerated_f"], p["interval_ms"], p["effective_from_ms"],
        p["declared_by_authority_id"], p["grid_operator_credential_id"], ctx.event.event_id,
        ctx.occurred_at_ms, seconds(ctx.occurred_at_ms),
    )]}


def _attestation(ctx: ProjectionContext) -> Rows:
    d = ctx.payload["decision"]
    order = [f"{s['station_id']}/{s['connector_id']}" for s in d["curtailments"]]
    return {OBSERVER_ATTESTATIONS: [(
        ctx.event.event_id, d["grid_zone_id"], ctx.event.body.author_credential_id,
        d["observer_set_version"], d["interval_start_at_ms"], d["interval_end_at_ms"],
        ctx.payload["decision_digest"].hex(), order, money(d["rate_per_kwh"]),
        ctx.occurred_at_ms, seconds(ctx.occurred_at_ms),
    )]}


def _quorum(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {GRID_QUORUM_DECISIONS: [(
        ctx.event.event_id, p["grid_zone_id"], p["interval_start_at_ms"], p["interval_end_at_ms"],
        p["observer_set_version"], p["threshold_k"], p["decision_digest"].hex(),
        p["grid_event_id"], p["zone_capacity_limit_w"], money(p["rate_per_kwh"]),
        list(p["curtailment_order"]), list(p["signer_credential_ids"]), list(p["station_ids"]),
        ctx.occurred_at_ms, seconds(ctx.occurred_at_ms),
    )]}


def _equivocation(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    first = open_envelope(p["first_attestation"]).event_id
    second = open_envelope(p["second_attestation"]).event_id
    return {OBSERVER_EQUIVOCATIONS: [(
        ctx.event.event_id, p["grid_zone_id"], p["observer_credential_id"],
        p["observer_set_version"], p["interval_start_at_ms"], p["first_decision_digest"].hex(),
        p["second_decision_digest"].hex(), first, second, int(p["interval_decided"]),
        ctx.occurred_at_ms, seconds(ctx.occurred_at_ms),
    )]}


PROJECTORS: dict[str, Projector] = {
    GRID + "ObserverSetDeclared": _set_declared,
    GRID + "ObserverAttestation": _attestation,
    GRID + "ObserverQuorumReached": _quorum,
    GRID + "ObserverEquivocation": _equivocation,
}
