"""E1 wireless dynamic charging: the records a road operator, its segments and vehicles sign.

All three go on the market topic keyed by the road operator (``road_operator_id``), whose
single-writer ledger aggregates each trip (see ``chargemesh.processors.embodiments.wireless``). Publish them
with ``Publisher.publish(event, topic=WIRELESS_TOPIC)``.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

from chargemesh.streams import topics

from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant

WIRELESS_TOPIC = topics.MARKET.name
TRIP_AUTHORISED = "chargemesh.wireless.v1.TripAuthorised"
SEGMENT_PASSES_RECORDED = "chargemesh.wireless.v1.SegmentPassesRecorded"
TRIP_CLOSED = "chargemesh.wireless.v1.TripClosed"
EMBODIMENT = "WIRELESS_SEGMENT"


def segment_attributes(*, geofence_id: str, box: tuple[int, int, int, int], power_w: int,
                       tariff_id: str) -> dict[str, str]:
    """What a road operator binds into a segment's STATION credential (box: lat_min, lon_min,
    lat_max, lon_max in microdegrees)."""
    return {"embodiment": EMBODIMENT, "geofence_id": geofence_id,
            "geofence": ",".join(str(v) for v in box), "power_w": str(power_w),
            "tariff_id": tariff_id}


def trip_authorised(vehicle: Participant, *, trip_id: str, road_operator_id: str,
                    rate_authority_id: str, jurisdiction: str, ceiling_rate_per_kwh: str | Decimal,
                    currency: str, energy_wh_max: int, start_ms: int, stop_ms: int,
                    meter_seconds_max: int = 0, idle_close_ms: int = 0,
                    at_ms: int | None = None) -> SignedEvent:
    """A vehicle's continuous authorisation on a road operator's segments (C1 + C2 claim with
    the wireless extension)."""
    at = start_ms if at_ms is None else at_ms
    ident = sdk.identity(station_id=road_operator_id, vehicle=vehicle,
                         rate_authority_id=rate_authority_id, jurisdiction=jurisdiction)
    terms = sdk.claim(energy_wh=energy_wh_max, start_ms=start_ms, stop_ms=stop_ms,
                      ceiling_rate_per_kwh=ceiling_rate_per_kwh, currency=currency,
                      extension={"segment_id": "", "geofence_id": "",
                                 "meter_seconds": meter_seconds_max})
    payload = {"trip_id": trip_id, "road_operator_id": road_operator_id, "identity": ident,
               "claim": terms, "idle_close_ms": idle_close_ms, "authorised_at_ms": at}
    return vehicle.sign(TRIP_AUTHORISED, payload, subject_key=road_operator_id,
                        occurred_at_ms=at, chain_id=trip_id)


@dataclasses.dataclass(frozen=True)
class SegmentPass:
    """One pass of a vehicle over a segment (the micro-transaction)."""

    pass_id: str
    trip_id: str
    vehicle_credential_id: str
    geofence_id: str
    latitude_microdeg: int
    longitude_microdeg: int
    entered_at_ms: int
    left_at_ms: int
    meter_seconds: int
    energy_wh: int

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def segment_passes(segment: Participant, *, road_operator_id: str, batch_id: str,
                   passes: list[SegmentPass], at_ms: int) -> SignedEvent:
    """A segment's signed batch of passes: one signature over many micro-transactions."""
    payload = {"batch_id": batch_id, "road_operator_id": road_operator_id,
               "segment_id": segment.subject_id, "passes": [p.record() for p in passes],
               "recorded_at_ms": at_ms}
    return segment.sign(SEGMENT_PASSES_RECORDED, payload, subject_key=road_operator_id,
                        occurred_at_ms=at_ms, chain_id=batch_id)


def trip_closed(vehicle: Participant, *, trip_id: str, road_operator_id: str,
                at_ms: int) -> SignedEvent:
    payload = {"trip_id": trip_id, "road_operator_id": road_operator_id, "closed_at_ms": at_ms}
    return vehicle.sign(TRIP_CLOSED, payload, subject_key=road_operator_id, occurred_at_ms=at_ms,
                        chain_id=trip_id)
