"""E1 projections: segment passes and settled trips (``wireless_passes``, ``wireless_trips``,
migration 0010). The trip's billing record needs no projector of its own: it is a
``SettlementAdmitted`` and lands in ``settlements`` / ``settlement_lines``."""

from __future__ import annotations

from chargemesh.sinks.projections.core import (
    DETAIL_CHARS_MAX,
    ProjectionContext,
    Projector,
    Rows,
    money,
    seconds,
)

WIRELESS_PASSES = "wireless_passes"
WIRELESS_TRIPS = "wireless_trips"

# Insert columns per table, in row-tuple order.
TABLES: dict[str, tuple[str, ...]] = {
    WIRELESS_PASSES: (
        "batch_event_id", "pass_index", "pass_id", "trip_id", "road_operator_id", "segment_id",
        "segment_credential_id", "vehicle_credential_id", "geofence_id", "entered_at_ms",
        "entered_at", "left_at_ms", "meter_seconds", "energy_wh", "rate_per_kwh", "amount",
        "currency", "tariff_id", "accepted", "reason_code", "detail", "applied_at_ms",
    ),
    WIRELESS_TRIPS: (
        "trip_id", "road_operator_id", "vehicle_credential_id", "settlement_id",
        "rate_authority_id", "jurisdiction", "tariff_id", "currency", "opened_at_ms",
        "closed_at_ms", "closed_at", "close_reason", "passes_accepted", "passes_refused",
        "segments", "meter_seconds", "energy_wh", "total_amount", "event_id",
    ),
}


def _passes_applied(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {WIRELESS_PASSES: [(
        p["batch_event_id"], index, o["pass_id"], o["trip_id"], p["road_operator_id"],
        p["segment_id"], p["segment_credential_id"], o["vehicle_credential_id"],
        o["geofence_id"], o["entered_at_ms"], seconds(o["entered_at_ms"]), o["left_at_ms"],
        o["meter_seconds"], o["energy_wh"], money(o["rate_per_kwh"]), money(o["amount"]),
        o["currency"], o["tariff_id"], int(o["accepted"]), o["reason_code"],
        o["detail"][:DETAIL_CHARS_MAX], p["applied_at_ms"],
    ) for index, o in enumerate(p["outcomes"])]}


def _trip_settled(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {WIRELESS_TRIPS: [(
        p["trip_id"], p["road_operator_id"], p["vehicle_credential_id"], p["settlement_id"],
        p["rate_authority_id"], p["jurisdiction"], p["tariff_id"], p["currency"],
        p["opened_at_ms"], p["closed_at_ms"], seconds(p["closed_at_ms"]), p["close_reason"],
        p["passes_accepted"], p["passes_refused"], p["segments"], p["meter_seconds"],
        p["energy_wh"], money(p["total_amount"]), ctx.event.event_id,
    )]}


PROJECTORS: dict[str, Projector] = {
    "chargemesh.wireless.v1.SegmentPassesApplied": _passes_applied,
    "chargemesh.wireless.v1.TripSettled": _trip_settled,
}
