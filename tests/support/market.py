"""A station with a published calendar on the real stack, for market tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.conftest import Mesh

SLOT_MS = 15 * MINUTE_MS


def future_hour(now_ms: int, hours_ahead: int = 24) -> int:
    return (now_ms // HOUR_MS + hours_ahead) * HOUR_MS


@dataclasses.dataclass
class Market:
    mesh: Mesh
    prefix: str
    station: Participant
    station_id: str
    start_ms: int
    tariff_id: str
    rules_version: str
    authority_id: str
    jurisdiction: str = "US-CA"
    currency: str = "USD"
    posted: str = "0.400000"
    meters: dict[str, Participant] = dataclasses.field(default_factory=dict)

    def vehicle(self, name: str) -> Participant:
        vid = f"{self.prefix}-{name}"
        holder = self.mesh.world.credential(f"{vid}-cred", ["VEHICLE"], subject_id=vid)
        return holder

    def ident(self, vehicle: Participant, connector_id: str = "") -> dict[str, Any]:
        return sdk.identity(station_id=self.station_id, vehicle=vehicle,
                            rate_authority_id=self.authority_id, jurisdiction=self.jurisdiction,
                            connector_id=connector_id)

    def posted_order(self, vehicle: Participant, order_id: str, start_ms: int, slots: int = 1,
                     connector_id: str = "", energy_wh: int = 10_000, ceiling: str = "0.90",
                     rate: str | None = None, at_ms: int | None = None,
                     **flags: Any) -> SignedEvent:
        terms = sdk.claim(energy_wh=energy_wh, start_ms=start_ms,
                          stop_ms=start_ms + slots * SLOT_MS, ceiling_rate_per_kwh=ceiling,
                          currency=self.currency, **flags)
        return sdk.order(vehicle, "posted", order_id=f"{self.prefix}-{order_id}",
                         ident=self.ident(vehicle, connector_id), terms=terms,
                         rate_per_kwh=rate or self.posted,
                         at_ms=at_ms if at_ms is not None else self.start_ms - 2 * HOUR_MS)

    def bid(self, vehicle: Participant, order_id: str, start_ms: int, rate: str,
            ceiling: str = "0.90", energy_wh: int = 10_000, connector_id: str = "",
            at_ms: int | None = None) -> SignedEvent:
        terms = sdk.claim(energy_wh=energy_wh, start_ms=start_ms, stop_ms=start_ms + SLOT_MS,
                          ceiling_rate_per_kwh=ceiling, currency=self.currency)
        return sdk.order(vehicle, "bid", order_id=f"{self.prefix}-{order_id}",
                         ident=self.ident(vehicle, connector_id), terms=terms, rate_per_kwh=rate,
                         at_ms=at_ms if at_ms is not None else self.start_ms - 2 * HOUR_MS)

    def walk_up(self, vehicle: Participant, order_id: str, arrived_ms: int, connector_id: str,
                energy_wh: int = 10_000, ceiling: str = "0.90") -> SignedEvent:
        terms = sdk.claim(energy_wh=energy_wh, start_ms=arrived_ms, stop_ms=arrived_ms + SLOT_MS,
                          ceiling_rate_per_kwh=ceiling, currency=self.currency)
        return sdk.order(vehicle, "walk_up", order_id=f"{self.prefix}-{order_id}",
                         ident=self.ident(vehicle, connector_id), terms=terms,
                         arrived_at_ms=arrived_ms, at_ms=arrived_ms)

    def order_id(self, short: str) -> str:
        return f"{self.prefix}-{short}"


def open_market(mesh: Mesh, prefix: str, now_ms: int, connectors: list[dict[str, Any]],
                hours: int = 24, posted: str = "0.400000", ceiling: str = "0.80",
                tariff: dict[str, Any] | None = None, grid_zone_id: str = "zone-1",
                authority: Participant | None = None, jurisdiction: str = "US-CA",
                currency: str = "USD", station_attributes: dict[str, str] | None = None,
                **rules: Any) -> Market:
    """Files a tariff and rules under ``authority`` (default: the root authority), credentials a
    station (and a meter per connector), publishes its calendar (starting a day ahead), and
    returns once published."""
    world = mesh.world
    authority = authority or world.root
    start = future_hour(now_ms)
    tariff_id, rules_version = f"{prefix}-tariff", f"{prefix}-rules"
    station_id = f"{prefix}-station"
    station = world.credential(f"{prefix}-st-cred", ["STATION"], jurisdiction=jurisdiction,
                               subject_id=station_id, attributes=station_attributes)
    meters = {}
    for conn in connectors:
        meter_id = f"{prefix}-meter-{conn['connector_id']}"
        meters[conn["connector_id"]] = world.credential(meter_id, ["METER"], subject_id=meter_id)
        conn["meter_credential_id"] = meter_id
    world.governance += [
        sdk.tariff_filed(authority, tariff_id=tariff_id, jurisdiction=jurisdiction,
                         currency=currency, ceiling_per_kwh=ceiling, at_ms=now_ms,
                         **(tariff or {})),
        sdk.rules_published(authority, rules_version=rules_version, jurisdiction=jurisdiction,
                            at_ms=now_ms, **rules),
    ]
    mesh.publish(*world.governance)
    world.governance.clear()
    calendar = sdk.calendar_published(
        station, rate_authority_id=authority.credential_id, jurisdiction=jurisdiction,
        tariff_id=tariff_id, rules_version=rules_version, connectors=connectors,
        slot_duration_ms=SLOT_MS, horizon_start_ms=start, horizon_end_ms=start + hours * HOUR_MS,
        posted_rate_per_kwh=posted, currency=currency, grid_zone_id=grid_zone_id, at_ms=now_ms)
    mesh.publish(calendar)
    market = Market(mesh, prefix, station, station_id, start, tariff_id, rules_version,
                    authority.credential_id, jurisdiction=jurisdiction, currency=currency,
                    posted=posted)
    market.meters = meters
    return market
