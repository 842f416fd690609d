"""E4 projections: each fleet's internal accounting entry (``fleet_accounting``, migration
0008), from which ``fleet_esg_monthly`` (the tax/ESG report) is read.

E3 needs no projector of its own: a V2G settlement is a ``SettlementAdmitted`` with a
``V2G_EXPORT_CREDIT`` line and ``energy_export_wh``, landing in ``settlements`` /
``settlement_lines``; the views of 0008 (``v2g_settlements``, ``sessions_awaiting_settlement``)
read them.
"""

from __future__ import annotations

import datetime

from chargemesh.sinks.projections.core import (
    ProjectionContext,
    Projector,
    Rows,
    money,
    seconds,
)

FLEET_ACCOUNTING = "fleet_accounting"

# Insert columns per table, in row-tuple order.
TABLES: dict[str, tuple[str, ...]] = {
    FLEET_ACCOUNTING: (
        "settlement_id", "session_id", "fleet_id", "site_id", "station_id", "connector_id",
        "station_credential_id", "vehicle_credential_id", "rate_authority_id", "jurisdiction",
        "currency", "energy_import_wh", "energy_export_wh", "renewable_wh", "internal_amount",
        "delivered_from_ms", "delivered_until_ms", "delivered_at", "month", "recorded_at_ms",
        "event_id",
    ),
}


def utc_month(at_ms: int) -> str:
    """'YYYY-MM' of ``at_ms`` in UTC (clamped like :func:`seconds`)."""
    return datetime.datetime.fromtimestamp(seconds(at_ms), tz=datetime.UTC).strftime("%Y-%m")


def _fleet_accounting_recorded(ctx: ProjectionContext) -> Rows:
    p = ctx.payload
    until_ms = int(p["delivered_until_ms"])
    return {FLEET_ACCOUNTING: [(
        p["settlement_id"], p["session_id"], p["fleet_id"], p["site_id"], p["station_id"],
        p["connector_id"], p["station_credential_id"], p["vehicle_credential_id"],
        p["rate_authority_id"], p["jurisdiction"], p["currency"], p["energy_import_wh"],
        p["energy_export_wh"], p["renewable_wh"], money(p["internal_amount"]),
        p["delivered_from_ms"], until_ms, seconds(until_ms), utc_month(until_ms),
        p["recorded_at_ms"], ctx.event.event_id,
    )]}


PROJECTORS: dict[str, Projector] = {
    "chargemesh.settlement.v1.FleetAccountingRecorded": _fleet_accounting_recorded,
}
