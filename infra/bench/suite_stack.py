"""The benchmark suite's private stack: the ClickHouse sink, profiled and extra workers, station
sets and the measurements that drive them; the plain loop's child process handle. Every process
is started and stopped through :mod:`chargemesh.infra.stack.supervisor`."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chargemesh.infra.bench.figures import CLICKHOUSE_POLL_S, RECONNECTORS, Sizes, WAIT_S_MAX, latency_summary, parse_worker_stats
from chargemesh.infra.bench.ledger import SLOT_MS, LedgerBench
from chargemesh.infra.config import Settings
from chargemesh.infra.stack import supervisor
from chargemesh.infra.stack.worker import WORKER_MODULE, Record, TopicReader, WorkerProcess, log_tail, publisher
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant
from chargemesh.streams.topics import ADMITTED
from chargemesh.units import HOUR_MS, MINUTE_MS, SECOND_MS


# ---- the stack ----------------------------------------------------------------------------------


class SuiteStack(LedgerBench):
    """``LedgerBench`` plus the ClickHouse sink, fresh station sets and more workers."""

    def __init__(self, state_dir: Path, sizes: Sizes, partitions: int) -> None:
        super().__init__(state_dir, sizes.stations, sizes.vehicles, partitions)
        self.sizes = sizes
        self.workers: list[WorkerProcess] = [self.worker]
        self.sink = self._start_sink()
        self.sets = 0
        self.pub = publisher(self.settings)  # connected once: not timed in the measurements

    # -- processes
    def _start_sink(self) -> supervisor.ProcessRecord:
        env = dict(os.environ, **self.settings.as_environ())
        return supervisor.spawn("sink", [sys.executable, "-m", "chargemesh.infra.stack.sink_main"], {},
                                self.settings.state_dir / "sink.log", env=env)

    def start_workers(self, count: int, profile_path: Path | None = None) -> None:
        """Run exactly ``count`` workers (0..count-1); with ``profile_path`` one profiled."""
        for w in self.workers[count:]:
            w.stop()
        self.workers = self.workers[:count]
        added = []
        for index in range(len(self.workers), count):
            if index == 0 and profile_path is not None:
                worker: WorkerProcess = ProfiledWorker(self.settings, 0, profile_path)
            else:
                worker = WorkerProcess(self.settings, index, loglevel="info")
            added.append((worker, _log_size(worker.log_path)))
            self.workers.append(worker.start())
        if len(self.workers) > 1:
            for worker, mark in added:  # a joining member: wait out the rebalance it causes
                self._wait_log(worker, mark, "resynced ")
            time.sleep(REBALANCE_SETTLE_S)

    def _wait_log(self, worker: WorkerProcess, mark: int, text: str) -> None:
        deadline = time.monotonic() + WAIT_S_MAX
        while text not in _log_since(worker.log_path, mark):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {worker.index}: no {text!r} in its log")
            time.sleep(0.1)

    def stop_workers(self) -> None:
        for w in self.workers:
            w.stop()
        self.workers = []

    def check_alive(self) -> None:
        for w in self.workers:
            if not w.alive():
                raise RuntimeError(f"worker {w.index} died:\n" + log_tail(w.log_path))
        if not supervisor.pid_alive(self.sink):
            raise RuntimeError("sink died:\n" + log_tail(self.settings.state_dir / "sink.log"))

    # -- station sets
    def station_set(self, tag: str, count: int, connectors: int = 8,
                    zone: str = "") -> list[Participant]:
        """Fresh stations with credentials and calendars (so each measurement starts from
        small ledgers). Returns once published; :meth:`warm` waits until the workers hold them."""
        self.sets += 1
        stations = [self.dep.participant(f"st-{tag}-cred-{i}", f"station-{tag}-{i}")
                    for i in range(count)]
        self.dep.publish([self.dep.issuer.issue_credential(p, ["STATION"], "US-CA")
                          for p in stations])
        conns = [sdk.connector(f"c{i}", 150_000) for i in range(connectors)]
        self.dep.publish([sdk.calendar_published(
            st, rate_authority_id=self.dep.root.credential_id, jurisdiction="US-CA",
            tariff_id="t-bench", rules_version="r-bench", connectors=conns,
            slot_duration_ms=SLOT_MS, horizon_start_ms=self.start - 25 * HOUR_MS,
            horizon_end_ms=self.start + 72 * HOUR_MS, posted_rate_per_kwh="0.40",
            currency="USD", grid_zone_id=zone or f"zone-{tag}", at_ms=self.now)
            for st in stations])
        return stations

    def order_on(self, stations: list[Participant], tag: str, i: int, kind: str,
                 at_ms: int) -> SignedEvent:
        station = stations[i % len(stations)]
        vehicle = self.vehicles[i % len(self.vehicles)]
        slot = self.start + ((i // len(stations)) % 192) * SLOT_MS
        ident = sdk.identity(station_id=station.subject_id, vehicle=vehicle,
                             rate_authority_id=self.dep.root.credential_id, jurisdiction="US-CA")
        start = slot if kind == "posted" else at_ms
        terms = sdk.claim(energy_wh=20_000, start_ms=start, stop_ms=start + SLOT_MS,
                          ceiling_rate_per_kwh="0.80", currency="USD")
        return sdk.order(vehicle, kind, order_id=f"o-{tag}-{kind}-{i}", ident=ident,
                         terms=terms, rate_per_kwh="0.40", arrived_at_ms=at_ms, at_ms=at_ms)

    def warm(self, stations: list[Participant], tag: str) -> None:
        """One walk-up per station, waited for: calendars applied, partitions assigned."""
        events = [self.order_on(stations, f"{tag}-warm", i, "walk_up", self.now + i)
                  for i in range(len(stations))]
        for event in events:
            self.pub.publish(event)
        self.pub.flush()
        self.wait_decisions({f"o-{tag}-warm-walk_up-{i}" for i in range(len(stations))},
                            {s.subject_id.encode() for s in stations})

    def wait_decisions(self, order_ids: set[str], keys: set[bytes],
                       timeout_s: float = WAIT_S_MAX) -> float:
        """Poll decisions (decoding only those keyed by ``keys``) until every order id has
        one; returns the monotonic time it happened."""
        pending = set(order_ids)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                self.check_alive()
                raise TimeoutError(f"{len(pending)} of {len(order_ids)} orders undecided")
            before = len(self.decisions.records)
            self.decisions.poll(0.002)
            for r in self.decisions.records[before:]:
                if r.key in keys:
                    pending.discard(r.payload().get("order_id", ""))
            if len(self.decisions.records) - before == 0 and len(self.decisions.records) > 50_000:
                self.decisions.records.clear()  # bounded memory on big runs
        return time.monotonic()

    def clickhouse_count(self, prefix: str) -> int:
        from chargemesh.sinks.migrate import clickhouse_client

        client = clickhouse_client(self.settings)
        try:
            rows = client.execute("SELECT uniqExact(order_id) FROM ledger_decisions "
                                  "WHERE startsWith(order_id, %(p)s)", {"p": prefix})
        finally:
            client.disconnect()
        return int(rows[0][0])

    def wait_clickhouse(self, prefix: str, count: int, timeout_s: float = WAIT_S_MAX) -> float:
        deadline = time.monotonic() + timeout_s
        while self.clickhouse_count(prefix) < count:
            if time.monotonic() > deadline:
                self.check_alive()
                raise TimeoutError(f"ClickHouse has fewer than {count} decisions {prefix}*")
            time.sleep(CLICKHOUSE_POLL_S)
        return time.monotonic()

    def throughput(self, tag: str, count: int, stations: list[Participant] | None = None,
                   ready: Callable[[], None] | None = None,
                   done: Callable[[], None] | None = None) -> dict[str, Any]:
        """``count`` posted-price orders (pre-signed) on a fresh station set, published at
        once; timed until every decision is consumed and until ClickHouse holds them all."""
        if stations is None:
            stations = self.station_set(tag, self.sizes.stations)
            self.warm(stations, tag)
        if ready is not None:
            ready()
        events = [self.order_on(stations, tag, i, "posted", self.now + i) for i in range(count)]
        log_marks = {w.index: _log_size(w.log_path) for w in self.workers}
        pub = self.pub
        started = time.monotonic()
        for event in events:
            pub.publish(event)
        pub.flush()
        published = time.monotonic()
        decided = self.wait_decisions({f"o-{tag}-posted-{i}" for i in range(count)},
                                      {s.subject_id.encode() for s in stations})
        if done is not None:
            done()
        in_clickhouse = self.wait_clickhouse(f"o-{tag}-posted-", count)
        time.sleep(max(0.0, self.sizes.stats_wait_s - (time.monotonic() - decided)))
        stats = [parse_worker_stats(_log_since(w.log_path, log_marks.get(w.index, 0)))
                 for w in self.workers]
        return {"orders": float(count), "publish_s": published - started,
                "decided_s": decided - started, "to_clickhouse_s": in_clickhouse - started,
                "decided_per_s": count / (decided - started),
                "to_clickhouse_per_s": count / (in_clickhouse - started),
                "events_per_batch": _mean([s.get("events_per_batch", 0.0) for s in stats]),
                "worker_phases_s": _sum_dicts(stats)}

    # -- re-pricing
    def reprice_setup(self, sessions: int) -> dict[str, Any]:
        per = min(RECONNECTORS, sessions)
        count = math.ceil(sessions / per)
        zone = "zone-reprice"
        operator = self.dep.participant("op-bench", "op-bench")
        self.dep.publish([
            self.dep.issuer.issue_credential(operator, ["GRID_OPERATOR"], "US-CA"),
            sdk.grid_zone_registered(self.dep.root, grid_zone_id=zone, jurisdiction="US-CA",
                                     operator_ids=[operator.credential_id], at_ms=self.now),
            sdk.grid_program(operator, grid_zone_id=zone, program="DEMAND_RESPONSE",
                             operator_ids=[operator.credential_id], at_ms=self.now)])
        stations = self.station_set("rp", count, connectors=per, zone=zone)
        start = self.start + 60 * HOUR_MS
        bookings, handshakes = [], []
        for i in range(sessions):
            station, cid = stations[i // per], f"c{i % per}"
            vehicle = self.vehicles[i % per % len(self.vehicles)]
            ident = sdk.identity(station_id=station.subject_id, vehicle=vehicle,
                                 rate_authority_id=self.dep.root.credential_id,
                                 jurisdiction="US-CA", connector_id=cid)
            terms = sdk.claim(energy_wh=20_000, start_ms=start, stop_ms=start + 4 * SLOT_MS,
                              ceiling_rate_per_kwh="0.80", currency="USD")
            sid = f"rp-{i}"
            bookings.append(sdk.order(vehicle, "posted", order_id=sid, ident=ident, terms=terms,
                                      rate_per_kwh="0.40", at_ms=self.now))
            handshakes.append(sdk.handshake(station, vehicle, session_id=sid,
                                            reservation_id=f"res:{sid}", ident=ident,
                                            started_at_ms=start))
        admitted = TopicReader(self.settings, ADMITTED.name)
        try:
            from chargemesh.processors.grid.zone_router import ZONE_JOINED_INDEX
            from chargemesh.processors.records import decision_id

            zone_joined = {decision_id(c, ZONE_JOINED_INDEX)
                           for c in self._calendar_ids(stations)}
            self.dep.publish(bookings)
            self.dep.publish(handshakes)
            wanted = {h.event_id for h in handshakes} | zone_joined
            deadline = time.monotonic() + WAIT_S_MAX
            while wanted:
                if time.monotonic() > deadline:
                    self.check_alive()
                    raise TimeoutError(f"re-pricing setup: {len(wanted)} events not admitted")
                before = len(admitted.records)
                admitted.poll(0.2)
                for r in admitted.records[before:]:
                    wanted.discard(_event_id(r))
        finally:
            admitted.close()
        return {"operator": operator, "zone": zone, "start": start, "stations": stations,
                "sessions": sessions}

    def _calendar_ids(self, stations: list[Participant]) -> list[str]:
        keys = {s.subject_id.encode() for s in stations}
        reader = TopicReader(self.settings, "chargemesh.market.v1")
        try:
            found: dict[bytes, str] = {}
            deadline = time.monotonic() + WAIT_S_MAX
            while len(found) < len(keys) and time.monotonic() < deadline:
                before = len(reader.records)
                reader.poll(0.2)
                for r in reader.records[before:]:
                    if r.key in keys:
                        event = r.event()
                        if event.event_type.endswith("SlotCalendarPublished"):
                            found[r.key] = event.event_id
            return list(found.values())
        finally:
            reader.close()

    def reprice_latency(self, setup: dict[str, Any], rounds: int) -> dict[str, Any]:
        keys = {s.subject_id.encode() for s in setup["stations"]}
        latencies: list[float] = []
        last: list[float] = []
        pub = publisher(self.settings)
        for r in range(rounds):
            ge_id = f"ge-bench-{r}"
            from_ms = setup["start"] + (5 + r) * MINUTE_MS
            event = sdk.grid_event(setup["operator"], grid_event_id=ge_id,
                                   grid_zone_id=setup["zone"], kind="PRICE_SIGNAL",
                                   from_ms=from_ms, until_ms=from_ms + HOUR_MS,
                                   rate_per_kwh=f"0.{55 + r}")
            pending = {f"rp-{i}" for i in range(setup["sessions"])}
            sent = time.monotonic()
            pub.publish(event)
            pub.flush()
            deadline = sent + WAIT_S_MAX
            while pending:
                if time.monotonic() > deadline:
                    self.check_alive()
                    raise TimeoutError(f"{len(pending)} sessions without RepriceProposed")
                before = len(self.decisions.records)
                self.decisions.poll(0.002)
                now = time.monotonic()
                for rec in self.decisions.records[before:]:
                    if rec.key not in keys:
                        continue
                    p = rec.payload()
                    if p.get("grid_event_id") == ge_id and p.get("session_id") in pending:
                        pending.discard(p["session_id"])
                        latencies.append((now - sent) * SECOND_MS)
            last.append(latencies[-1])
        out: dict[str, Any] = {"sessions": float(setup["sessions"]), "rounds": float(rounds),
                               **latency_summary(latencies), "all_sessions_ms_worst": max(last)}
        return out

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        supervisor.stop(self.sink, SINK_STOP_GRACE_S)
        self.decisions.close()
        self.stack.down()


REBALANCE_SETTLE_S = 1.0
SINK_STOP_GRACE_S = 20.0
PROFILED_STOP_GRACE_S = 60.0  # a profiled process writes its profile after SIGTERM
PLAIN_READY_POLL_S = 0.05


class ProfiledWorker(WorkerProcess):
    """A worker under cProfile (``python -m cProfile -o``); SIGTERM dumps the profile."""

    def __init__(self, settings: Settings, index: int, path: Path) -> None:
        super().__init__(settings, index, loglevel="info")
        self.profile_path = path

    stop_grace_s = PROFILED_STOP_GRACE_S  # the profile is written on the way out

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "cProfile", "-o", str(self.profile_path),
                "-m", WORKER_MODULE, "--index", str(self.index), "--loglevel", self.loglevel]


def _event_id(record: Record) -> str:
    try:
        return record.event().event_id
    except Exception:  # noqa: BLE001 - rejections and foreign bytes have none
        return ""


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _log_since(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _mean(values: list[float]) -> float:
    values = [v for v in values if v]
    return sum(values) / len(values) if values else 0.0


def _sum_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            if k != "events_per_batch":
                out[k] = out.get(k, 0.0) + v
    return out


class PlainLoopProcess:
    def __init__(self, settings: Settings, name: str, profile: bool,
                 from_offsets: dict[str, int] | None = None) -> None:
        self.settings = settings
        folder = settings.state_dir
        self.ready, self.report = folder / f"{name}.ready", folder / f"{name}.json"
        self.log = folder / f"{name}.log"
        env = dict(os.environ, **settings.as_environ())
        cmd = [sys.executable, "-m", "chargemesh.infra.bench.suite", "plain-loop",
               "--ready", str(self.ready), "--report", str(self.report),
               "--from-offsets", json.dumps(from_offsets or {})]
        if profile:
            cmd.append("--profile")
        self.record = supervisor.spawn(name, cmd, {}, self.log, env=env)

    def wait_ready(self, timeout_s: float = WAIT_S_MAX) -> None:
        try:
            supervisor.wait_ready([self.record], supervisor.pid_alive,
                                  lambda _r, _waited_s: self.ready.exists(), timeout_s,
                                  supervisor.record_exited, poll_s=PLAIN_READY_POLL_S)
        except supervisor.SupervisorError as exc:
            raise RuntimeError("plain loop did not start:\n" + log_tail(self.log)) from exc

    def stop(self) -> dict[str, Any]:
        outcome = supervisor.stop(self.record, PROFILED_STOP_GRACE_S)
        if outcome != "stopped":
            raise RuntimeError(f"plain loop {outcome}:\n" + log_tail(self.log))
        loaded: dict[str, Any] = json.loads(self.report.read_text())
        return loaded
