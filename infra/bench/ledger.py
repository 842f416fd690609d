"""Benchmarks: programs that print figures (never assertions on time).

``chargemesh bench`` measures, on this machine:

* the signed envelope: sign, Ed25519 verify and full ingress admission rates on one core;
* the slot ledger through the real broker and one Faust worker: walk-up authorisation latency
  (request published -> decision consumed) and order throughput per worker.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

from chargemesh.infra.stack.bootstrap import Deployment, deploy, private_settings
from chargemesh.infra.config import Settings
from chargemesh.infra.stack.worker import TopicReader, WorkerProcess, publisher
from chargemesh.infra.stack.embedded import EmbeddedStack
from chargemesh.processors.governance import TrustAnchor, TrustStore
from chargemesh.processors.ingress import admit, admit_governance
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import open_envelope
from chargemesh.streams.keys import verify_signature
from chargemesh.streams.topics import DECISIONS, MARKET, SETTLEMENTS
from chargemesh.units import HOUR_MS, MINUTE_MS, SECOND_MS

ENVELOPE_SAMPLES = 5_000
SLOT_MS = 15 * MINUTE_MS
DECISION_WAIT_S_MAX = 120.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bench_envelope(samples: int = ENVELOPE_SAMPLES) -> dict[str, float]:
    root = sdk.Participant.seeded("authority:bench", secret="bench")
    issuer = sdk.Participant.seeded("issuer:bench", secret="bench")
    station = sdk.Participant.seeded("st-bench", "station-bench", secret="bench")
    store = TrustStore([TrustAnchor(root.credential_id, root.public_key)])
    for event in (root.declare_authority("bench", "US-CA", ["AUTHORITY", "STATION"]),
                  root.delegate_issuer(issuer, ["STATION"], ["US-CA"]),
                  issuer.issue_credential(station, ["STATION"], "US-CA")):
        admit_governance(event.encode(), event.body.subject_key.encode(), store)
    make = lambda: sdk.heartbeat(station, 1_800_000_000_000).encode()  # noqa: E731
    raw = make()
    opened = open_envelope(raw)
    sig = opened.signatures[0].signature
    sign_s = timeit.timeit(make, number=samples)
    verify_s = timeit.timeit(
        lambda: verify_signature(station.public_key, sig, opened.signing_bytes), number=samples)
    admit_s = timeit.timeit(lambda: admit(raw, b"station-bench", MARKET.name, store),
                            number=samples)
    return {"sign_per_s": samples / sign_s, "ed25519_verify_per_s": samples / verify_s,
            "admit_per_s": samples / admit_s, "envelope_bytes": float(len(raw))}


class LedgerBench:
    """A private stack, one worker, stations with calendars and vehicles with credentials."""

    def __init__(self, state_dir: Path, stations: int, vehicles: int,
                 partitions: int = 4) -> None:
        self.settings: Settings = private_settings(state_dir, partitions=partitions)
        self.stack = EmbeddedStack(self.settings)
        self.stack.up()
        self.now = int(time.time() * SECOND_MS)
        self.start = (self.now // HOUR_MS + 24) * HOUR_MS
        self.dep: Deployment = deploy(self.settings, ["US-CA"], secret="bench")
        self.worker = WorkerProcess(self.settings, loglevel="info").start()
        self.stations = [self.dep.participant(f"st-cred-{i}", f"station-{i}")
                         for i in range(stations)]
        self.vehicles = [self.dep.participant(f"veh-cred-{i}", f"vehicle-{i}")
                         for i in range(vehicles)]
        self._publish_world()
        self.decisions = TopicReader(self.settings, DECISIONS.name)

    def _publish_world(self) -> None:
        root, gov = self.dep.root, []
        gov.append(sdk.tariff_filed(root, tariff_id="t-bench", jurisdiction="US-CA",
                                    currency="USD", ceiling_per_kwh="0.90"))
        gov.append(sdk.rules_published(root, rules_version="r-bench", jurisdiction="US-CA"))
        for p in self.stations:
            gov.append(self.dep.issuer.issue_credential(p, ["STATION"], "US-CA"))
        for p in self.vehicles:
            gov.append(self.dep.issuer.issue_credential(p, ["VEHICLE"], "US-CA"))
        self.dep.publish(gov)
        conns = [sdk.connector(f"c{i}", 150_000) for i in range(8)]
        self.dep.publish([sdk.calendar_published(
            st, rate_authority_id=root.credential_id, jurisdiction="US-CA", tariff_id="t-bench",
            rules_version="r-bench", connectors=conns, slot_duration_ms=SLOT_MS,
            horizon_start_ms=self.start - 25 * HOUR_MS, horizon_end_ms=self.start + 72 * HOUR_MS,
            posted_rate_per_kwh="0.40", currency="USD", at_ms=self.now) for st in self.stations])

    def _order(self, i: int, kind: str, at_ms: int) -> Any:
        station = self.stations[i % len(self.stations)]
        vehicle = self.vehicles[i % len(self.vehicles)]
        slot = self.start + ((i // len(self.stations)) % 192) * SLOT_MS
        ident = sdk.identity(station_id=station.subject_id, vehicle=vehicle,
                             rate_authority_id=self.dep.root.credential_id, jurisdiction="US-CA")
        start = slot if kind == "posted" else at_ms
        terms = sdk.claim(energy_wh=20_000, start_ms=start, stop_ms=start + SLOT_MS,
                          ceiling_rate_per_kwh="0.80", currency="USD")
        return sdk.order(vehicle, kind, order_id=f"o-{kind}-{i}", ident=ident, terms=terms,
                         rate_per_kwh="0.40", arrived_at_ms=at_ms, at_ms=at_ms)

    def _wait(self, order_ids: set[str]) -> float:
        deadline = time.monotonic() + DECISION_WAIT_S_MAX
        while order_ids and time.monotonic() < deadline:
            before = len(self.decisions.records)
            self.decisions.poll(0.002)
            for r in self.decisions.records[before:]:
                order_ids.discard(r.payload().get("order_id", ""))
        if order_ids:
            raise TimeoutError(f"{len(order_ids)} orders undecided")
        return time.monotonic()

    def walk_up_latency(self, count: int) -> dict[str, float]:
        pub, latencies = publisher(self.settings), []
        for i in range(count):
            event = self._order(10_000 + i, "walk_up", self.now + i)
            sent = time.monotonic()
            pub.publish(event)
            pub.flush()
            done = self._wait({f"o-walk_up-{10_000 + i}"})
            latencies.append((done - sent) * SECOND_MS)
        return {"walk_ups": float(count), "p50_ms": percentile(latencies, 0.5),
                "p99_ms": percentile(latencies, 0.99), "mean_ms": statistics.fmean(latencies)}

    def order_throughput(self, count: int) -> dict[str, float]:
        events = [self._order(i, "posted", self.now + i) for i in range(count)]
        pub = publisher(self.settings)
        started = time.monotonic()
        for event in events:
            pub.publish(event)
        pub.flush()
        done = self._wait({f"o-posted-{i}" for i in range(count)})
        return {"orders": float(count), "seconds": done - started,
                "orders_per_s": count / (done - started)}

    def finality_latency(self, count: int) -> dict[str, float]:
        """Last required signature (the vehicle's countersignature) published -> its
        SettlementFinalised consumed. Sessions are set up first, one per station connector."""
        settlements = TopicReader(self.settings, SETTLEMENTS.name)
        closes, vehicles = [], []
        setup: list[list[Any]] = [[], [], []]
        slot = self.start + 50 * HOUR_MS  # after the throughput orders
        for i in range(count):
            station = self.stations[i % len(self.stations)]
            cid = f"c{(i // len(self.stations)) % 8}"
            vehicle = self.vehicles[i % len(self.vehicles)]
            start = slot + (i // (8 * len(self.stations))) * HOUR_MS
            ident = sdk.identity(station_id=station.subject_id, vehicle=vehicle,
                                 rate_authority_id=self.dep.root.credential_id,
                                 jurisdiction="US-CA", connector_id=cid)
            terms = sdk.claim(energy_wh=20_000, start_ms=start, stop_ms=start + SLOT_MS,
                              ceiling_rate_per_kwh="0.80", currency="USD")
            sid = f"fin-{i}"
            close = sdk.meter_closed_out(station, session_id=sid, connector_id=cid,
                                         closed_at_ms=start + 10 * MINUTE_MS,
                                         final_import_wh=19_000,
                                         last_reading_seq=-1)
            # In station time: every booking, then every handshake, then the close-outs.
            setup[0].append(sdk.order(vehicle, "posted", order_id=sid, ident=ident, terms=terms,
                                      rate_per_kwh="0.40", at_ms=self.now))
            setup[1].append(sdk.handshake(station, vehicle, session_id=sid,
                                          reservation_id=f"res:{sid}", ident=ident,
                                          started_at_ms=start))
            setup[2].append(close)
            closes.append(close)
            vehicles.append(vehicle)
        self.dep.publish([e for phase in setup for e in phase])
        pub, latencies = publisher(self.settings), []
        for i, (close, vehicle) in enumerate(zip(closes, vehicles)):
            sent = time.monotonic()
            pub.publish(sdk.close_out_countersigned(vehicle, close, close.body.occurred_at_ms + 1))
            pub.flush()
            deadline = sent + DECISION_WAIT_S_MAX
            key = f"fin-{i}".encode()
            while time.monotonic() < deadline:
                before = len(settlements.records)
                settlements.poll(0.002)
                if any(r.key == key and r.event().event_type.endswith("SettlementFinalised")
                       for r in settlements.records[before:]):
                    break
            latencies.append((time.monotonic() - sent) * SECOND_MS)
        settlements.close()
        return {"settlements": float(count), "p50_ms": percentile(latencies, 0.5),
                "p99_ms": percentile(latencies, 0.99)}

    def close(self) -> None:
        self.decisions.close()
        self.worker.stop()
        self.stack.down()


def run(orders: int = 5_000, walk_ups: int = 200, stations: int = 16,
        vehicles: int = 64, finalities: int = 200) -> dict[str, Any]:
    results: dict[str, Any] = {"envelope": bench_envelope()}
    with tempfile.TemporaryDirectory(prefix="chargemesh-bench-") as tmp:
        bench = LedgerBench(Path(tmp), stations, vehicles)
        try:
            bench.walk_up_latency(20)  # warm-up: group join, table recovery, caches
            results["walk_up"] = bench.walk_up_latency(walk_ups)
            results["ledger_orders"] = bench.order_throughput(orders)
            results["settlement_finality"] = bench.finality_latency(finalities)
        finally:
            bench.close()
    return results


def main() -> None:
    print(json.dumps(run(), indent=2))


if __name__ == "__main__":
    main()
