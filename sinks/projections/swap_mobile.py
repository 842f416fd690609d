"""E2 and E5 projections (migration 0009): each pack's lineage (``pack_history``) and the mobile
chargers' signed locations (``mobile_station_locations``).

Their settlements need no projector of their own: they are ``SettlementAdmitted`` records and
land in ``settlements`` / ``settlement_lines`` (a swap's ``session_id`` is its swap's).
"""

from __future__ import annotations

from chargemesh.sinks.projections.core import (
    ProjectionContext,
    Projector,
    Row,
    Rows,
    money,
    seconds,
)

PACK_HISTORY = "pack_history"
MOBILE_STATION_LOCATIONS = "mobile_station_locations"
REGISTERED = "REGISTERED"
SWAPPED_OUT = "SWAPPED_OUT"
RETURNED = "RETURNED"

# Insert columns per table, in row-tuple order.
TABLES: dict[str, tuple[str, ...]] = {
    PACK_HISTORY: (
        "pack_id", "event_id", "action", "station_id", "session_id", "reservation_id",
        "vehicle_credential_id", "vehicle_id", "chemistry", "state_of_health_permille",
        "capacity_wh", "charge_wh", "counterpart_pack_id", "author_credential_id", "at_ms", "at",
    ),
    MOBILE_STATION_LOCATIONS: (
        "event_id", "station_id", "dispatch_id", "latitude_microdeg", "longitude_microdeg",
        "jurisdiction", "rate_authority_id", "tariff_id", "posted_rate_per_kwh",
        "author_credential_id", "relocated_at_ms", "relocated_at",
    ),
}


def _pack_row(ctx: ProjectionContext, pack_id: str, action: str, at_ms: int, **f: object) -> Row:
    return (
        pack_id, ctx.event.event_id, action, f.get("station_id", ""), f.get("session_id", ""),
        f.get("reservation_id", ""), f.get("vehicle_credential_id", ""), f.get("vehicle_id", ""),
        str(f.get("chemistry", "")).strip().upper(), f.get("soh", 0), f.get("capacity_wh", 0),
        f.get("charge_wh", 0), f.get("counterpart", ""), ctx.event.body.author_credential_id,
        at_ms, seconds(at_ms),
    )


def _pack_registered(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {PACK_HISTORY: [_pack_row(
        ctx, p["pack_id"], REGISTERED, p["registered_at_ms"], station_id=p["station_id"],
        chemistry=p["chemistry"], soh=p["state_of_health_permille"],
        capacity_wh=p["capacity_wh"], charge_wh=p["charge_wh"])]}


def _pack_swapped(ctx: ProjectionContext) -> Rows:
    p, ident = ctx.payload, ctx.payload["identity"]
    common = {"station_id": ident["station_id"], "session_id": p["session_id"],
              "reservation_id": p["reservation_id"],
              "vehicle_credential_id": ident["vehicle_credential_id"],
              "vehicle_id": ident["vehicle_id"]}
    rows = [_pack_row(ctx, p["pack_out_id"], SWAPPED_OUT, p["swapped_at_ms"],
                      charge_wh=p["pack_out_charge_wh"], counterpart=p["pack_in_id"], **common)]
    if p["pack_in_id"]:
        rows.append(_pack_row(ctx, p["pack_in_id"], RETURNED, p["swapped_at_ms"],
                              chemistry=p["pack_in_chemistry"],
                              soh=p["pack_in_state_of_health_permille"],
                              charge_wh=p["pack_in_charge_wh"], counterpart=p["pack_out_id"],
                              **common))
    return {PACK_HISTORY: rows}


def _mobile_relocated(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    return {MOBILE_STATION_LOCATIONS: [(
        ctx.event.event_id, p["station_id"], p["dispatch_id"], p["latitude_microdeg"],
        p["longitude_microdeg"], p["jurisdiction"], p["rate_authority_id"], p["tariff_id"],
        money(p["posted_rate_per_kwh"]), ctx.event.body.author_credential_id,
        p["relocated_at_ms"], seconds(p["relocated_at_ms"]),
    )]}


PROJECTORS: dict[str, Projector] = {
    "chargemesh.capacity.v1.PackRegistered": _pack_registered,
    "chargemesh.session.v1.PackSwapCompleted": _pack_swapped,
    "chargemesh.capacity.v1.MobileStationRelocated": _mobile_relocated,
}
