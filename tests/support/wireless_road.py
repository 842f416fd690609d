"""An electrified road for E1 tests: a road operator (an issuer under the root authority), its
credentialed segments along a line of latitude, two filed tariffs and vehicles that drive it."""

from __future__ import annotations

from decimal import Decimal

from chargemesh.streams.sdk import participant as sdk

from chargemesh.streams.sdk import wireless
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant
from chargemesh.streams.sdk.wireless import SegmentPass

from tests.support.world import T0_MS, World

SEGMENT_POWER_W = 200_000
PASS_MS = 18_000  # 500 m at 100 km/h
LAT0, LON0, LAT_STEP = 37_000_000, -122_000_000, 5_000
DELIVERED_WH = 900  # of at most 200 kW x 18 s = 1000 Wh
RATES = ("0.300000", "0.360000")  # tariff A (even segments), tariff B (odd segments)
TAX = {"tax_percent": "8.25", "rounding": "HALF_UP", "minor_units": 2}


class Road:
    def __init__(self, world: World, name: str, segments: int = 10,
                 authority: Participant | None = None) -> None:
        """``authority``: the rate authority filing the road's tariffs (default: the root)."""
        self.world, self.name = world, name
        self.operator = Participant.seeded(f"{name}-operator", secret="tests")
        self.operator_id = self.operator.credential_id
        rate_authority = authority or world.root
        self.authority_id = rate_authority.credential_id
        self.segment_ids = [f"{name}-seg-{i}" for i in range(segments)]
        self.tariff_ids = (f"{name}-tariff-a", f"{name}-tariff-b")
        world.governance.append(world.root.delegate_issuer(
            self.operator, ["STATION"], ["US-CA"], at_ms=T0_MS))
        for tid, rate, covered in zip(self.tariff_ids, RATES,
                                      (self.segment_ids[0::2], self.segment_ids[1::2])):
            world.governance.append(sdk.tariff_filed(
                rate_authority, tariff_id=tid, jurisdiction="US-CA", currency="USD",
                ceiling_per_kwh=rate, station_ids=list(covered), at_ms=T0_MS, **TAX))
        self.segments = [self._segment(i) for i in range(segments)]

    def _segment(self, i: int) -> Participant:
        sid = self.segment_ids[i]
        holder = Participant.seeded(f"{sid}-cred", sid, secret="tests")
        self.world.governance.append(self.operator.issue_credential(
            holder, ["STATION"], "US-CA", attributes=wireless.segment_attributes(
                geofence_id=f"gf-{sid}", box=self.box(i), power_w=SEGMENT_POWER_W,
                tariff_id=self.tariff_ids[i % 2]), at_ms=T0_MS))
        return holder

    @staticmethod
    def box(i: int) -> tuple[int, int, int, int]:
        return (LAT0 + i * LAT_STEP, LON0 - 1_000, LAT0 + (i + 1) * LAT_STEP - 1, LON0 + 1_000)

    def vehicle(self, short: str) -> Participant:
        vid = f"{self.name}-{short}"
        return self.world.credential(f"{vid}-cred", ["VEHICLE"], subject_id=vid)

    def trip(self, vehicle: Participant, trip_id: str, start_ms: int, ceiling: str = "0.50",
             energy_wh_max: int = 100_000, hours: int = 2, idle_close_ms: int = 0,
             at_ms: int | None = None) -> SignedEvent:
        return wireless.trip_authorised(
            vehicle, trip_id=trip_id, road_operator_id=self.operator_id,
            rate_authority_id=self.authority_id, jurisdiction="US-CA",
            ceiling_rate_per_kwh=ceiling, currency="USD", energy_wh_max=energy_wh_max,
            start_ms=start_ms, stop_ms=start_ms + hours * 3_600_000,
            idle_close_ms=idle_close_ms, at_ms=at_ms)

    def pass_of(self, vehicle: Participant, trip_id: str, i: int, entered_ms: int,
                energy_wh: int = DELIVERED_WH, geofence_id: str | None = None,
                pass_id: str | None = None, lat: int | None = None) -> SegmentPass:
        sid = self.segment_ids[i]
        return SegmentPass(
            pass_id=pass_id or f"{trip_id}/{sid}/{entered_ms}", trip_id=trip_id,
            vehicle_credential_id=vehicle.credential_id,
            geofence_id=f"gf-{sid}" if geofence_id is None else geofence_id,
            latitude_microdeg=LAT0 + i * LAT_STEP + LAT_STEP // 2 if lat is None else lat,
            longitude_microdeg=LON0, entered_at_ms=entered_ms, left_at_ms=entered_ms + PASS_MS,
            meter_seconds=PASS_MS // 1000, energy_wh=energy_wh)

    def batch(self, i: int, passes: list[SegmentPass], at_ms: int,
              batch_id: str | None = None) -> SignedEvent:
        return wireless.segment_passes(
            self.segments[i], road_operator_id=self.operator_id,
            batch_id=batch_id or f"{self.segment_ids[i]}@{at_ms}", passes=passes, at_ms=at_ms)

    def close(self, vehicle: Participant, trip_id: str, at_ms: int) -> SignedEvent:
        return wireless.trip_closed(vehicle, trip_id=trip_id, road_operator_id=self.operator_id,
                                    at_ms=at_ms)


def expected_total(lines_wh_rate: list[tuple[int, str]]) -> Decimal:
    """Each (segment) line rounded half-up to cents, plus 8.25 % tax on their sum."""
    cent = Decimal("0.01")
    lines = sum(((Decimal(wh) * Decimal(rate) / 1000).quantize(cent)
                 for wh, rate in lines_wh_rate), Decimal(0))
    return lines + (lines * Decimal("8.25") / 100).quantize(cent)
