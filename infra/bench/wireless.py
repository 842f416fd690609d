"""E1 benchmark: the wireless micro-transaction rate one worker sustains. Prints figures.

``python -m chargemesh.infra.bench.wireless [passes] [passes_per_batch]`` starts a private
embedded stack and one worker, credentials a road operator with ten 200 kW segments, and drives
vehicles down the road a few seconds apart: each vehicle authorises a trip, every segment signs
a batch of passes (``passes_per_batch`` vehicles per batch) and each vehicle closes its trip
after its last segment. Everything is published in road time order, as fast as the producer
goes; the figure is passes / (first publish -> last ``TripSettled`` consumed), so it covers
admission, the road's ledger, the per-batch and per-trip decisions and the billing records.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chargemesh.infra.stack.bootstrap import deploy, private_settings
from chargemesh.infra.stack.worker import TopicReader, WorkerProcess, publisher
from chargemesh.infra.stack.embedded import EmbeddedStack
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk import wireless
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant
from chargemesh.streams.topics import DECISIONS
from chargemesh.units import HOUR_MS, SECOND_MS

SEGMENTS = 10
SEGMENT_POWER_W = 200_000
PASS_MS = 18_000
VEHICLE_GAP_MS = 3_000  # ~60 trips open at once: well inside the road ledger's budget
DELIVERED_WH = 900
LAT0, LON0, LAT_STEP = 37_000_000, -122_000_000, 5_000
PASSES_DEFAULT = 5_000
PASSES_PER_BATCH_DEFAULT = 25
SETTLED_WAIT_S_MAX = 300.0
POLL_S = 0.01


class Road:
    """A road operator, its segments and tariff, and the vehicles that drive it."""

    def __init__(self, secret: str, vehicles: int) -> None:
        self.secret = secret
        self.operator = Participant.seeded("road-operator:bench", secret=secret)
        self.segments = [Participant.seeded(f"seg-cred-{i}", f"seg-{i}", secret=secret)
                         for i in range(SEGMENTS)]
        self.vehicles = [Participant.seeded(f"ev-cred-{v}", f"ev-{v}", secret=secret)
                         for v in range(vehicles)]

    def governance(self, root: Participant, issuer: Participant) -> list[SignedEvent]:
        events = [root.delegate_issuer(self.operator, ["STATION"], ["US-CA"]),
                  sdk.tariff_filed(root, tariff_id="t-road", jurisdiction="US-CA",
                                   currency="USD", ceiling_per_kwh="0.30", tax_percent="8.25")]
        for i, seg in enumerate(self.segments):
            box = (LAT0 + i * LAT_STEP, LON0 - 1_000, LAT0 + (i + 1) * LAT_STEP - 1, LON0 + 1_000)
            events.append(self.operator.issue_credential(
                seg, ["STATION"], "US-CA", attributes=wireless.segment_attributes(
                    geofence_id=f"gf-{i}", box=box, power_w=SEGMENT_POWER_W,
                    tariff_id="t-road")))
        events += [issuer.issue_credential(v, ["VEHICLE"], "US-CA") for v in self.vehicles]
        return events

    def drive(self, root_id: str, base_ms: int, per_batch: int) -> list[SignedEvent]:
        """Every trip's authorisation, the segments' pass batches and the closes, in road time."""
        road_id = self.operator.credential_id
        events: list[SignedEvent] = []
        for v, vehicle in enumerate(self.vehicles):
            start = base_ms + v * VEHICLE_GAP_MS
            events.append(wireless.trip_authorised(
                vehicle, trip_id=f"trip-{v}", road_operator_id=road_id,
                rate_authority_id=root_id, jurisdiction="US-CA", ceiling_rate_per_kwh="0.50",
                currency="USD", energy_wh_max=50_000, start_ms=start - 1_000,
                stop_ms=start + HOUR_MS, at_ms=start - 1_000))
            # after the last segment's batch that carries this vehicle's pass
            last_in_batch = min((v // per_batch + 1) * per_batch, len(self.vehicles)) - 1
            closed_at = base_ms + last_in_batch * VEHICLE_GAP_MS + SEGMENTS * PASS_MS + 1_000
            events.append(wireless.trip_closed(vehicle, trip_id=f"trip-{v}",
                                               road_operator_id=road_id, at_ms=closed_at))
        for i, seg in enumerate(self.segments):
            for first in range(0, len(self.vehicles), per_batch):
                passes = [self._pass(v, i, base_ms)
                          for v in range(first, min(first + per_batch, len(self.vehicles)))]
                events.append(wireless.segment_passes(
                    seg, road_operator_id=road_id, batch_id=f"seg-{i}/{first}", passes=passes,
                    at_ms=passes[-1].left_at_ms + 500))
        return sorted(events, key=lambda e: e.body.occurred_at_ms)

    def warm_up(self, root_id: str, at_ms: int) -> list[SignedEvent]:
        """One short trip before the measured window (group join, state restore, caches)."""
        road_id, vehicle = self.operator.credential_id, self.vehicles[0]
        ps = dataclasses.replace(self._pass(0, 0, at_ms), pass_id="warm", trip_id="warm")
        return [wireless.trip_authorised(
                    vehicle, trip_id="warm", road_operator_id=road_id, rate_authority_id=root_id,
                    jurisdiction="US-CA", ceiling_rate_per_kwh="0.50", currency="USD",
                    energy_wh_max=50_000, start_ms=at_ms - 1_000, stop_ms=at_ms + HOUR_MS,
                    at_ms=at_ms - 1_000),
                wireless.segment_passes(self.segments[0], road_operator_id=road_id,
                                        batch_id="warm", passes=[ps], at_ms=ps.left_at_ms + 500),
                wireless.trip_closed(vehicle, trip_id="warm", road_operator_id=road_id,
                                     at_ms=ps.left_at_ms + 1_000)]

    def _pass(self, v: int, i: int, base_ms: int) -> wireless.SegmentPass:
        entered = base_ms + v * VEHICLE_GAP_MS + i * PASS_MS
        return wireless.SegmentPass(
            pass_id=f"trip-{v}/seg-{i}", trip_id=f"trip-{v}",
            vehicle_credential_id=self.vehicles[v].credential_id, geofence_id=f"gf-{i}",
            latitude_microdeg=LAT0 + i * LAT_STEP + LAT_STEP // 2, longitude_microdeg=LON0,
            entered_at_ms=entered, left_at_ms=entered + PASS_MS,
            meter_seconds=PASS_MS // SECOND_MS, energy_wh=DELIVERED_WH)


def _wait_settled(reader: TopicReader, trips: int, skip: int = 0) -> dict[str, int]:
    """Poll the decisions topic until every trip's TripSettled is in; count pass verdicts
    (of records after the first ``skip``)."""
    settled: set[str] = set()
    counts = {"passes_accepted": 0, "passes_refused": 0}
    deadline = time.monotonic() + SETTLED_WAIT_S_MAX
    seen = skip
    while len(settled) < trips:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(settled)} of {trips} trips settled")
        reader.poll(POLL_S)
        for record in reader.records[seen:]:
            event_type = record.event().event_type
            if event_type.endswith("TripSettled"):
                settled.add(record.payload()["trip_id"])
            elif event_type.endswith("SegmentPassesApplied"):
                for outcome in record.payload()["outcomes"]:
                    counts["passes_accepted" if outcome["accepted"] else "passes_refused"] += 1
        seen = len(reader.records)
    return counts


def measure_wireless_rate(state_dir: Path, passes: int = PASSES_DEFAULT,
                          per_batch: int = PASSES_PER_BATCH_DEFAULT) -> dict[str, Any]:
    """Start a private stack and one worker, drive ``passes`` passes, return the figures."""
    settings = private_settings(state_dir)
    stack = EmbeddedStack(settings)
    stack.up()
    worker = None
    try:
        dep = deploy(settings, ["US-CA"], secret="bench-wireless")
        worker = WorkerProcess(settings, loglevel="warning").start()
        road = Road("bench-wireless", max(1, passes // SEGMENTS))
        dep.publish(road.governance(dep.root, dep.issuer))
        base_ms = int(time.time() * SECOND_MS) - HOUR_MS
        events = road.drive(dep.root.credential_id, base_ms, per_batch)
        reader = TopicReader(settings, DECISIONS.name)
        try:
            dep.publish(road.warm_up(dep.root.credential_id, base_ms - 600_000))
            _wait_settled(reader, 1)
            pub = publisher(settings)
            skip = len(reader.records)
            started = time.monotonic()
            for event in events:
                pub.publish(event)
            pub.flush()
            published = time.monotonic()
            counts = _wait_settled(reader, len(road.vehicles), skip)
            done = time.monotonic()
        finally:
            reader.close()
    finally:
        if worker is not None:
            worker.stop()
        stack.down()
    total = len(road.vehicles) * SEGMENTS
    seconds = done - started
    return {"passes": total, "passes_per_batch": per_batch, "trips": len(road.vehicles),
            "events": len(events), "publish_s": round(published - started, 3),
            "seconds": round(seconds, 3), "passes_per_s": round(total / seconds, 1),
            "events_per_s": round(len(events) / seconds, 1), **counts}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    passes = int(args[0]) if args else PASSES_DEFAULT
    per_batch = int(args[1]) if len(args) > 1 else PASSES_PER_BATCH_DEFAULT
    with tempfile.TemporaryDirectory(prefix="chargemesh-bench-wireless-") as tmp:
        print(json.dumps(measure_wireless_rate(Path(tmp), passes, per_batch), indent=2))


if __name__ == "__main__":
    main()
