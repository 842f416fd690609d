"""E1 on the real stack: a vehicle drives ten credentialed segments in one trip; every segment
signs a batch of passes; a repeated pass and a forged batch are refused with their reasons; the
trip settles at each segment's filed rate; an analyst reads it all back from ClickHouse."""

from __future__ import annotations

from decimal import Decimal

import pytest
from chargemesh.streams.sdk import wireless as sdk_wireless
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh
from tests.support.wireless_road import DELIVERED_WH, PASS_MS, RATES, Road, expected_total

pytestmark = pytest.mark.integration
SEGMENTS = 10


def test_a_trip_over_ten_segments_settles_and_lands_in_clickhouse(mesh: Mesh) -> None:
    prefix = f"e1-{now_ms() % 10**9}"
    road = Road(mesh.world, prefix, SEGMENTS)
    vehicle = road.vehicle("ev")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()

    t0 = now_ms() - 30 * MINUTE_MS
    trip_id = f"{prefix}-trip"
    events = [road.trip(vehicle, trip_id, t0, at_ms=t0)]
    passes = [road.pass_of(vehicle, trip_id, i, t0 + MINUTE_MS + i * PASS_MS)
              for i in range(SEGMENTS)]
    events += [road.batch(i, [p], p.left_at_ms + 500) for i, p in enumerate(passes)]
    repeated = road.batch(4, [passes[4]], passes[-1].left_at_ms + 1_000, batch_id="repeat")
    impostor = Participant.seeded(road.segments[5].credential_id, road.segment_ids[5],
                                  secret="forger")
    forged = sdk_wireless.segment_passes(
        impostor, road_operator_id=road.operator_id, batch_id="forged", at_ms=repeated_at(passes),
        passes=[road.pass_of(vehicle, trip_id, 5, passes[5].entered_at_ms, pass_id="forged")])
    close = road.close(vehicle, trip_id, passes[-1].left_at_ms + 2 * MINUTE_MS)
    mesh.publish(*events, repeated, forged, close)

    trips = mesh.wait_rows(
        "SELECT passes_accepted, passes_refused, segments, energy_wh, meter_seconds, "
        "total_amount, close_reason, settlement_id FROM wireless_trips FINAL "
        "WHERE trip_id = %(t)s", {"t": trip_id})
    total = expected_total([(DELIVERED_WH, RATES[i % 2]) for i in range(SEGMENTS)])
    assert trips == [(SEGMENTS, 1, SEGMENTS, SEGMENTS * DELIVERED_WH,
                      SEGMENTS * PASS_MS // 1000, total, "VEHICLE_CLOSED", f"stl:{trip_id}")]

    refused = mesh.wait_rows(
        "SELECT pass_id, reason_code FROM wireless_passes FINAL "
        "WHERE trip_id = %(t)s AND accepted = 0", {"t": trip_id})
    assert refused == [(passes[4].pass_id, "DUPLICATE_PASS")]
    in_rejections = mesh.wait_rows("SELECT reason_code FROM rejections WHERE event_id = %(e)s",
                                   {"e": forged.event_id})
    assert in_rejections[0][0] == "BAD_SIGNATURE"

    billed = mesh.wait_rows(
        "SELECT total_amount, station_id, currency FROM settlements FINAL "
        "WHERE settlement_id = %(s)s", {"s": f"stl:{trip_id}"})
    assert billed == [(total, road.operator_id, "USD")]

    # The analyst's question: energy and revenue per segment and hour on this road.
    hourly = mesh.wait_rows(
        "SELECT segment_id, sum(passes), sum(energy_wh), sum(revenue) "
        "FROM wireless_segment_hourly WHERE road_operator_id = %(r)s "
        "GROUP BY segment_id ORDER BY segment_id", {"r": road.operator_id}, count=SEGMENTS)
    assert hourly == [(sid, 1, DELIVERED_WH, Decimal(DELIVERED_WH) * Decimal(RATES[i % 2]) / 1000)
                      for i, sid in sorted(enumerate(road.segment_ids), key=lambda x: x[1])]


def repeated_at(passes: list[sdk_wireless.SegmentPass]) -> int:
    return passes[-1].left_at_ms + 1_500
