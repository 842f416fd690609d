"""``chargemesh chaos``: the fault-injection suite (issue 9).

Each run brings up a private stack of its own (broker and ClickHouse on free ports), plans the
seeded market of ``infra/sim/plan.py`` and publishes it phase by phase (``simulate.Run``) while a
seeded fault schedule, driven by how far the processors got, injects:

* ``worker_kill``: SIGKILL of a processor worker, then a restart once its group session expired;
* ``clickhouse_outage``: the ClickHouse server stopped (SIGTERM or SIGKILL) for a few seconds and
  started again; while it is down the sink's committed offsets must not move (it may commit only
  what ClickHouse acknowledged) and afterwards it must resume by itself;
* ``rebalance_kill``: a second worker joins, later one of the two is SIGKILLed and the survivor
  takes over its partitions (no restart).

Once the market is complete and everything is quiet (the sink has committed every record of its
topics), the run is compared with a fault-free run of the same seed (run once per seed and process,
on its own stack, and cached; the faulted runs reuse its processor key, so their records can be
compared byte for byte):

* settlements, decisions and admitted topics: the same event ids, every copy byte-identical to
  the fault-free record (redelivered copies are allowed: processors are at-least-once);
* rejections: the same (event id, reason) pairs, nothing rejected that the fault-free run admitted;
* ClickHouse: settlements, their lines and finality, the slot ledger, decisions, events and valid
  meter readings hold the same rows, and after ``OPTIMIZE ... FINAL`` every table holds one row per
  key (none doubled);
* hostile events: every one is rejected with its reason; a forged one is never admitted, a
  double booking never reserves a slot, a backwards reading is never valid, a replay is admitted
  only from its original offset.

Nothing is mocked: real worker processes, the real embedded broker and the real ClickHouse server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import queue
import random
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chargemesh.infra.stack import supervisor as processes
from chargemesh.infra.stack.bootstrap import private_settings
from chargemesh.infra.config import Settings
from chargemesh.infra.stack.worker import Record, TopicReader, WorkerProcess, log_tail, publisher
from chargemesh.infra.sim.plan import MarketPlan, SimConfig, plan_market
from chargemesh.infra.sim.run import Run
from chargemesh.infra.stack.embedded import CLICKHOUSE, STATE_FILE, EmbeddedStack
from chargemesh.sinks.clickhouse_sink import GROUP_ID_DEFAULT, SINK_TOPICS, ClickHouseSink
from chargemesh.sinks.migrate import clickhouse_client
from chargemesh.streams.envelope import SignedEvent, open_payload
from chargemesh.streams.topics import (
    ADMITTED,
    DECISIONS,
    GOVERNANCE,
    GRID,
    MARKET,
    REJECTIONS,
    SETTLEMENTS,
)
from confluent_kafka import Consumer, TopicPartition

SCALES: dict[str, dict[str, int]] = {
    "small": {"stations": 10, "vehicles": 20, "hours": 4},
    "default": {"stations": SimConfig.stations, "vehicles": SimConfig.vehicles,
                "hours": SimConfig.hours},
}
FAULT_KINDS = ("worker_kill", "clickhouse_outage", "rebalance_kill")
# Where in the run (fraction of the market's events published) faults land.
FAULT_AT_MIN, FAULT_AT_MAX = 0.03, 0.9
OUTAGE_HOLD_S = (3.0, 8.0)  # how long ClickHouse stays down (seeded within)
SINK_FAILURE_WAIT_S_MAX = 30.0  # for the sink to notice the outage (if it has work pending)
CLICKHOUSE_GONE_WAIT_S_MAX = 20.0
QUIET_WAIT_S_MAX = 240.0
QUIET_POLL_S = 1.0
READ_WAIT_S_MAX = 60.0
SINK_STOP_S_MAX = 30.0
# A killed worker's partitions wait this long (plus 2 s) before anyone rejoins.
SESSION_TIMEOUT_MS = 6000
HOSTILE_REASON = {"FORGED_SIGNATURE": "BAD_SIGNATURE", "REPLAYED_EVENT_ID": "REPLAYED_EVENT_ID",
                  "DOUBLE_BOOKING": "SLOT_TAKEN", "METER_WENT_BACKWARDS": "METER_WENT_BACKWARDS"}
# ClickHouse content compared with the fault-free run: only columns that are a function of the
# events (no ingestion times, Kafka offsets or row versions).
TABLE_QUERIES = {
    "settlements": "SELECT settlement_id, session_id, kind, currency, adjusts_settlement_id, "
                   "toString(total_amount), energy_import_wh, energy_export_wh, line_count, "
                   "event_id FROM settlements FINAL",
    "settlement_lines": "SELECT settlement_id, line_no, kind, quantity_wh, "
                        "toString(unit_rate_per_kwh), toString(amount) FROM settlement_lines FINAL",
    "settlement_finality": "SELECT settlement_id, event_id FROM settlement_finality FINAL",
    "slot_ledger": "SELECT station_id, reservation_id, connector_id, order_id, slot_start_at_ms, "
                   "slot_stop_at_ms, status, reason_code, decided_by_event_id "
                   "FROM slot_ledger FINAL",
    "ledger_decisions": "SELECT event_id, decision_type FROM ledger_decisions FINAL",
    "events": "SELECT event_id, event_type, event_hash FROM events FINAL",
    "rejections": "SELECT DISTINCT event_id, reason_code FROM rejections FINAL",
    "meter_readings_valid": "SELECT event_id FROM meter_readings_valid",
}
# Each table's ReplacingMergeTree key: after OPTIMIZE FINAL, count() must equal its uniqExact.
TABLE_KEYS = {
    "settlements": "settlement_id", "settlement_lines": "settlement_id, line_no",
    "settlement_finality": "settlement_id", "slot_ledger": "station_id, reservation_id",
    "ledger_decisions": "station_id, occurred_at_ms, event_id", "events": "event_type, event_id",
    "rejections": "reason_code, rejection_id",
}
COMPARED_TOPICS = (SETTLEMENTS.name, DECISIONS.name, ADMITTED.name)
INPUT_TOPICS = (GOVERNANCE.name, MARKET.name, GRID.name)

Say = Callable[[str], None]


# ---- the fault schedule (pure, seeded) -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str  # worker_kill | clickhouse_outage | second_worker | rebalance_kill
    at: float  # fraction of the market's events published when it fires
    hold_s: float = 0.0  # clickhouse_outage: how long the server stays down
    signal: str = "SIGKILL"  # clickhouse_outage: how the server is stopped
    target: int = 0  # rebalance_kill: which of the two workers dies


def fault_schedule(seed: int, run: int, kills: int, outages: int = 1,
                   rebalances: int = 1) -> tuple[Fault, ...]:
    """The faults of run ``run`` of ``seed``, in firing order; pure in its arguments."""
    rng = random.Random(f"chaos-{seed}-{run}")

    def point() -> float:
        return round(rng.uniform(FAULT_AT_MIN, FAULT_AT_MAX), 3)

    faults = [Fault("worker_kill", point()) for _ in range(kills)]
    faults += [Fault("clickhouse_outage", point(), round(rng.uniform(*OUTAGE_HOLD_S), 1),
                     rng.choice(("SIGTERM", "SIGKILL"))) for _ in range(outages)]
    for _ in range(rebalances):
        start, kill = sorted((point(), point()))
        faults += [Fault("second_worker", start),
                   Fault("rebalance_kill", max(kill, start + 0.01), target=rng.randrange(2))]
    return tuple(sorted(faults, key=lambda f: (f.at, f.kind)))


# ---- what a run leaves behind ----------------------------------------------------------------


@dataclasses.dataclass
class Observed:
    """The outcome of one run, as its topics and ClickHouse hold it."""

    topics: dict[str, dict[str, list[bytes]]]  # topic -> event id -> every copy's bytes
    admitted_sources: dict[str, set[bytes]]  # event id -> source offsets it was admitted from
    rejected: set[tuple[str, str]]  # (event id, reason) on the rejections topic
    tables: dict[str, set[tuple[Any, ...]]]
    doubled: dict[str, int]  # table -> rows beyond one per key after OPTIMIZE FINAL
    outcomes: int  # what the watcher saw (decisions, finals, rejections, ...)
    events_published: int


@dataclasses.dataclass
class FaultRecord:
    kind: str
    planned_at: float
    fired_at: float  # fraction of the fault-free run's outcomes seen when it fired
    detail: str = ""
    violations: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RunResult:
    run: int
    seed: int
    faults: list[FaultRecord]
    events_checked: int
    records_checked: int
    lost: int
    extra: int
    differing: int
    duplicated: int
    redelivered: int
    forged_admitted: int
    hostile: int
    hostile_unrejected: int
    commits_during_outage: int
    wall_s: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["problems"] = self.problems[:50]
        return out


# ---- workers ---------------------------------------------------------------------------------


class Workers:
    """The run's worker processes; ``alive`` is False only if one we did not kill has died."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: dict[int, WorkerProcess] = {}
        self.running: set[int] = set()
        self.lock = threading.Lock()

    def start(self, index: int) -> None:
        with self.lock:
            proc = self.procs.setdefault(index, WorkerProcess(self.settings, index))
            proc.start()
            self.running.add(index)

    def kill(self, index: int) -> None:
        with self.lock:
            self.running.discard(index)
            self.procs[index].kill()

    def alive(self) -> bool:
        with self.lock:
            return all(self.procs[i].alive() for i in self.running)

    @property
    def log_path(self) -> Path:
        dead = [i for i in self.running if not self.procs[i].alive()]
        return Path(self.procs[dead[0] if dead else min(self.procs)].log_path)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


class SinkFailures(logging.Handler):
    """Counts the sink's "ClickHouse unavailable" warnings (the sink's own log, observed)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("ClickHouse unavailable"):
            self.count += 1


# ---- Kafka helpers ---------------------------------------------------------------------------


def _partitions(consumer: Consumer, topic: str) -> list[TopicPartition]:
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    return [TopicPartition(topic, p) for p in sorted(meta.partitions)]


def offsets(settings: Settings, group: str,
            topics: tuple[str, ...]) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    """(high watermarks, the group's committed offsets; -1 for none) of every partition."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group,
                         "enable.auto.commit": False})
    try:
        parts = [tp for t in topics for tp in _partitions(consumer, t)]
        highs = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, 10)[1]
                 for tp in parts}
        done = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(parts, 10)}
        return highs, done
    finally:
        consumer.close()


def read_topic(settings: Settings, topic: str) -> list[Record]:
    """Every record of ``topic`` up to its current end."""
    reader = TopicReader(settings, topic)
    try:
        highs = {(tp.partition): reader.consumer.get_watermark_offsets(tp, 10)[1]
                 for tp in _partitions(reader.consumer, topic)}
        deadline = time.monotonic() + READ_WAIT_S_MAX
        while time.monotonic() < deadline:
            reached: dict[int, int] = {}
            for r in reader.records:
                reached[r.partition] = max(reached.get(r.partition, -1), r.offset + 1)
            if all(reached.get(p, 0) >= h for p, h in highs.items()):
                break
            reader.poll(0.3)
        return list(reader.records)
    finally:
        reader.close()


def wait_quiet(settings: Settings, say: Say) -> None:
    """Until the workers consumed every input and the sink committed every record of its topics,
    with nothing new appearing between two looks."""
    deadline = time.monotonic() + QUIET_WAIT_S_MAX
    from chargemesh.processors.runtime.app import APP_ID

    previous: dict[tuple[str, int], int] | None = None
    while time.monotonic() < deadline:
        highs, sunk = offsets(settings, GROUP_ID_DEFAULT, SINK_TOPICS)
        in_highs, consumed = offsets(settings, APP_ID, INPUT_TOPICS)
        caught_up = all(sunk.get(k, -1) >= h for k, h in highs.items() if h > 0) and all(
            consumed.get(k, -1) >= h for k, h in in_highs.items() if h > 0)
        if caught_up and previous == highs:
            return
        previous = highs if caught_up else None
        time.sleep(QUIET_POLL_S)
    say("warning: the stack did not go quiet in time; comparing what is there")


def clickhouse_record(settings: Settings) -> processes.ProcessRecord:
    raw = json.loads((settings.state_dir / STATE_FILE).read_text())
    return processes.ProcessRecord.from_json(raw["components"][CLICKHOUSE])


# ---- one run -------------------------------------------------------------------------------------


class Lane:
    """One resource's faults (the workers', ClickHouse's), one after the other in a thread of
    its own: ``submit`` returns once the fault's disruptive step (the kill) has happened; its
    slow part (session expiry and restart, the outage's hold and restart) runs on meanwhile."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.jobs: queue.Queue[tuple[Callable[[threading.Event], None], threading.Event] | None]
        self.jobs = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"chaos-{name}", daemon=True)
        self.thread.start()

    def submit(self, job: Callable[[threading.Event], None]) -> None:
        started = threading.Event()
        self.jobs.put((job, started))
        while not started.wait(0.1):
            if self.error is not None or not self.thread.is_alive():
                break
        if self.error is not None:
            raise RuntimeError(f"chaos lane {self.name} failed") from self.error

    def _run(self) -> None:
        while (item := self.jobs.get()) is not None:
            job, started = item
            try:
                job(started)
            except BaseException as exc:  # noqa: BLE001 - re-raised by submit() and close()
                self.error = exc
                started.set()
                return
            started.set()

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"chaos lane {self.name} failed") from self.error


class Chaos:
    """Fires the schedule's faults when the market's publisher reaches their points."""

    def __init__(self, settings: Settings, stack: EmbeddedStack, workers: Workers,
                 schedule: tuple[Fault, ...], processed: Callable[[], float],
                 failures: SinkFailures, say: Say) -> None:
        self.settings, self.stack, self.workers = settings, stack, workers
        self.schedule, self.processed, self.failures, self.say = (
            list(schedule), processed, failures, say)
        self.records: list[FaultRecord] = []
        self.lanes = {"workers": Lane("workers"), "clickhouse": Lane("clickhouse")}

    def at(self, fraction: float, flush: Callable[[], None]) -> None:
        """The publisher reached ``fraction`` of the market: fire every fault due by now."""
        while self.schedule and self.schedule[0].at <= fraction:
            fault = self.schedule.pop(0)
            flush()  # what was published before the point is on the broker
            record = FaultRecord(fault.kind, fault.at, round(self.processed(), 3))
            self.records.append(record)
            lane = "clickhouse" if fault.kind == "clickhouse_outage" else "workers"
            self.lanes[lane].submit(functools.partial(self._fire, fault, record))

    def _fire(self, fault: Fault, record: FaultRecord, started: threading.Event) -> None:
        getattr(self, "_" + fault.kind)(fault, record, started)

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.close()

    def _expire(self) -> None:
        """Let the dead member's group session expire before anyone joins (runtime.py)."""
        time.sleep(self.settings.session_timeout_ms / 1000 + 2)

    def _note(self, record: FaultRecord) -> None:
        self.say(f"  {record.kind} at {record.planned_at:.0%} of the events published, "
                 f"{record.fired_at:.0%} of the outcomes seen: {record.detail}")

    def _worker_kill(self, fault: Fault, record: FaultRecord, started: threading.Event) -> None:
        index = min(self.workers.running)
        self.workers.kill(index)
        started.set()
        self._expire()
        self.workers.start(index)
        record.detail = f"worker {index} SIGKILLed, restarted"
        self._note(record)

    def _second_worker(self, fault: Fault, record: FaultRecord,
                       started: threading.Event) -> None:
        index = max(self.workers.procs) + 1
        self.workers.start(index)
        started.set()
        record.detail = f"worker {index} joined"
        self._note(record)

    def _rebalance_kill(self, fault: Fault, record: FaultRecord,
                        started: threading.Event) -> None:
        running = sorted(self.workers.running)
        if len(running) < 2:
            record.detail = "only one worker running: nothing to rebalance"
            return
        victim = running[fault.target % len(running)]
        self.workers.kill(victim)
        started.set()
        # The survivor takes the dead member's partitions once its session expires.
        self._expire()
        record.detail = f"worker {victim} of {running} SIGKILLed, the survivor took over"
        self._note(record)

    def _clickhouse_outage(self, fault: Fault, record: FaultRecord,
                           started: threading.Event) -> None:
        server = clickhouse_record(self.settings)
        failed_before = self.failures.count
        os.kill(server.pid, signal.SIGKILL if fault.signal == "SIGKILL" else signal.SIGTERM)
        deadline = time.monotonic() + CLICKHOUSE_GONE_WAIT_S_MAX
        while processes.pid_alive(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        if processes.pid_alive(server):
            processes.stop(server)
        started.set()
        down_at = time.monotonic()
        # Once the sink has failed a batch, any earlier (acknowledged) batch is committed: from
        # then on its committed offsets must stand still until ClickHouse is back.
        deadline = down_at + SINK_FAILURE_WAIT_S_MAX
        while self.failures.count == failed_before and time.monotonic() < deadline:
            time.sleep(0.1)
        noticed = self.failures.count > failed_before
        _, before = offsets(self.settings, GROUP_ID_DEFAULT, SINK_TOPICS)
        time.sleep(max(0.0, fault.hold_s - (time.monotonic() - down_at)))
        highs, after = offsets(self.settings, GROUP_ID_DEFAULT, SINK_TOPICS)
        pending = sum(max(0, h - max(after.get(k, 0), 0)) for k, h in highs.items())
        if noticed and after != before:
            moved = {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
            record.violations.append(f"sink committed while ClickHouse was down: {moved}")
        self.stack.up()  # starts only what is not running: ClickHouse
        record.detail = (f"ClickHouse {fault.signal}, down {time.monotonic() - down_at:.1f} s, "
                         f"sink failed {self.failures.count - failed_before} cycle(s) with "
                         f"{pending} record(s) uncommitted, then resumed")
        self._note(record)


class ChaosRun(Run):
    """``simulate.Run`` whose publisher stops at each fault's point until the fault fired."""

    chaos: Chaos | None = None

    def publish_phases(self) -> None:
        pub = publisher(self.settings)
        total = sum(len(p.events) for p in self.plan.phases)
        for phase in self.plan.phases:
            for event in phase.events:
                if self.chaos is not None:
                    self.chaos.at(self.published / total, pub.flush)
                pub.publish(event)
                if event.event_id in self.tracked:
                    self.published_at.setdefault(event.event_id, time.perf_counter())
                self.published += 1
            pub.flush()
            self._barrier(phase.label, phase.barrier)
        if self.chaos is not None:
            self.chaos.at(1.0, pub.flush)


def _progress_of(run: Run, total: int) -> Callable[[], float]:
    def fraction() -> float:
        w = run.watcher
        with w.lock:
            seen = (len(w.decided) + len(w.final) + len(w.rejected) + len(w.reprices)
                    + len(w.reevaluated))
        return seen / max(1, total)

    return fraction


def _outcomes(run: Run) -> int:
    return _progress_of(run, 1)().__int__()


def run_market(settings: Settings, plan: MarketPlan, schedule: tuple[Fault, ...],
               say: Say, outcomes_total: int = 0,
               processor_key: bytes | None = None) -> tuple[Observed, list[FaultRecord], bytes]:
    """One run on a fresh private stack: the market, the faults, then what it left behind."""
    from chargemesh.infra.cli.anchors import add_anchor

    stack = EmbeddedStack(settings)
    stack.up()
    workers = Workers(settings)
    stop = threading.Event()
    failures = SinkFailures()
    sink_log = logging.getLogger("chargemesh.sinks.clickhouse_sink")
    sink_log.addHandler(failures)
    sink: ClickHouseSink | None = None
    sink_thread: threading.Thread | None = None
    run: Run | None = None
    chaos: Chaos | None = None
    try:
        add_anchor(settings.trust_anchors_path, plan.root.credential_id, plan.root.public_key,
                   replace=True)
        if processor_key is not None:
            settings.processor_key_path.write_bytes(processor_key)
        workers.start(0)
        sink = ClickHouseSink(settings)
        sink_thread = threading.Thread(target=sink.run, args=(stop,), name="sink", daemon=True)
        sink_thread.start()
        run = ChaosRun(settings, plan, f"chaos-{plan.config.seed}", 0.0,
                       lambda _d, _n, _t: None, workers)
        chaos = Chaos(settings, stack, workers, schedule,
                      _progress_of(run, outcomes_total), failures, say)
        run.chaos = chaos
        run.publish_phases()
        chaos.close()
        records, chaos = chaos.records, None
        run.await_outcomes()
        if not workers.alive():
            raise RuntimeError("a worker died by itself:\n" + log_tail(workers.log_path))
        wait_quiet(settings, say)
        observed = observe(settings, _outcomes(run), run.published)
        return observed, records, settings.processor_key_path.read_bytes()
    finally:
        if chaos is not None:
            with contextlib.suppress(RuntimeError):
                chaos.close()
        if run is not None:
            run.close()
        stop.set()
        if sink_thread is not None:
            sink_thread.join(SINK_STOP_S_MAX)
        if sink is not None:
            sink.close()
        sink_log.removeHandler(failures)
        workers.stop()
        stack.down()


def observe(settings: Settings, outcomes: int, published: int) -> Observed:
    by_topic: dict[str, dict[str, list[bytes]]] = {}
    sources: dict[str, set[bytes]] = {}
    for topic in COMPARED_TOPICS:
        copies: dict[str, list[bytes]] = {}
        for r in read_topic(settings, topic):
            try:
                event_id = r.event().event_id
            except Exception:  # noqa: BLE001, S112 - counted nowhere: not an event
                continue
            copies.setdefault(event_id, []).append(r.value)
            if topic == ADMITTED.name:
                sources.setdefault(event_id, set()).add(
                    r.headers.get("source_topic", b"") + b"/"
                    + r.headers.get("source_partition", b"") + b"/"
                    + r.headers.get("source_offset", b""))
        by_topic[topic] = copies
    rejected = set()
    for r in read_topic(settings, REJECTIONS.name):
        try:
            rej = r.rejection()
        except Exception:  # noqa: BLE001, S112
            continue
        rejected.add((rej["event_id"], rej["reason_code"]))
    client = clickhouse_client(settings)
    try:
        doubled = {}
        for table, key in TABLE_KEYS.items():
            client.execute(f"OPTIMIZE TABLE {table} FINAL")
            count, unique = client.execute(f"SELECT count(), uniqExact({key}) FROM {table}")[0]
            doubled[table] = int(count) - int(unique)
        tables = {name: {tuple(row) for row in client.execute(sql)}
                  for name, sql in TABLE_QUERIES.items()}
    finally:
        client.disconnect()
    return Observed(by_topic, sources, rejected, tables, doubled, outcomes, published)


# ---- comparing a run with the fault-free one -----------------------------------------------------


def compare(plan: MarketPlan, base: Observed, got: Observed) -> dict[str, Any]:
    """Counts and the first problems: lost, invented, differing, doubled, hostile admitted."""
    problems: list[str] = []
    lost = extra = differing = redelivered = records = 0
    for topic in COMPARED_TOPICS:
        want, have = base.topics[topic], got.topics[topic]
        missing, invented = set(want) - set(have), set(have) - set(want)
        lost += len(missing)
        extra += len(invented)
        problems += [f"{topic}: lost {e}" for e in sorted(missing)[:5]]
        problems += [f"{topic}: not in the fault-free run {e}" for e in sorted(invented)[:5]]
        for event_id, copies in have.items():
            records += len(copies)
            redelivered += len(copies) - 1
            if event_id in want and any(c != want[event_id][0] for c in copies):
                differing += 1
                problems.append(f"{topic}: {event_id} differs from the fault-free record")
    lost_rej, extra_rej = base.rejected - got.rejected, got.rejected - base.rejected
    lost += len(lost_rej)
    extra += len(extra_rej)
    problems += [f"rejection lost {r}" for r in sorted(lost_rej)[:5]]
    problems += [f"rejection not in the fault-free run {r}" for r in sorted(extra_rej)[:5]]
    for table, rows in base.tables.items():
        gone, new = rows - got.tables[table], got.tables[table] - rows
        lost += len(gone)
        extra += len(new)
        problems += [f"ClickHouse {table}: missing {r}" for r in sorted(gone, key=str)[:3]]
        problems += [f"ClickHouse {table}: unexpected {r}" for r in sorted(new, key=str)[:3]]
        records += len(got.tables[table])
    duplicated = sum(got.doubled.values())
    problems += [f"ClickHouse {t}: {n} row(s) doubled" for t, n in got.doubled.items() if n]
    for event_id, copies in got.topics[SETTLEMENTS.name].items():
        if len(set(copies)) > 1:
            duplicated += 1
            problems.append(f"settlement record {event_id} exists with different bytes")
    forged, unrejected = hostile_check(plan, got)
    problems += forged + unrejected
    return {"lost": lost, "extra": extra, "differing": differing, "duplicated": duplicated,
            "redelivered": redelivered, "records": records, "forged_admitted": len(forged),
            "hostile_unrejected": len(unrejected), "problems": problems}


def hostile_check(plan: MarketPlan, got: Observed) -> tuple[list[str], list[str]]:
    """(hostile events admitted or with an effect, hostile/refused events not rejected)."""
    events = {e.event_id: e for e in plan.events()}
    admitted = got.topics[ADMITTED.name]
    ch_events = {row[0] for row in got.tables["events"]}
    ch_rejected = got.tables["rejections"]
    valid_readings = {row[0] for row in got.tables["meter_readings_valid"]}
    reserved_orders = {row[3] for row in got.tables["slot_ledger"]}
    forged: list[str] = []
    unrejected: list[str] = []
    for event_id, kind in sorted(plan.hostile.items()):
        reason = HOSTILE_REASON[kind]
        if (event_id, reason) not in got.rejected or (event_id, reason) not in ch_rejected:
            unrejected.append(f"hostile {kind} {event_id} not rejected with {reason}")
        if kind == "FORGED_SIGNATURE" and (event_id in admitted or event_id in ch_events):
            forged.append(f"forged {event_id} admitted")
        elif kind == "METER_WENT_BACKWARDS" and event_id in valid_readings:
            forged.append(f"backwards reading {event_id} counted as valid")
        elif kind == "DOUBLE_BOOKING":
            order_id = _order_id(events[event_id])
            if order_id in reserved_orders:
                forged.append(f"double booking {order_id} reserved a slot")
        elif kind == "REPLAYED_EVENT_ID" and len(got.admitted_sources.get(event_id, ())) > 1:
            forged.append(f"replayed {event_id} admitted from "
                          f"{sorted(got.admitted_sources[event_id])}")
    for event_id, reason in sorted(plan.refused.items()):
        if (event_id, reason) not in got.rejected:
            unrejected.append(f"refused {event_id} not rejected with {reason}")
    return forged, unrejected


def _order_id(event: SignedEvent) -> str:
    return str(open_payload(event).get("order_id", ""))


# ---- the suite -------------------------------------------------------------------------------------


_BASELINES: dict[tuple[SimConfig, int], tuple[Observed, bytes]] = {}


def baseline(config: SimConfig, partitions: int, workdir: Path, say: Say,
             session_timeout_ms: int = SESSION_TIMEOUT_MS) -> tuple[Observed, bytes]:
    """The fault-free run of ``config`` (once per process, then cached)."""
    key = (config, partitions)
    if key not in _BASELINES:
        started = time.monotonic()
        settings = private_settings(workdir / f"baseline-{config.seed}", session_timeout_ms,
                                    partitions=partitions)
        observed, _, processor_key = run_market(settings, plan_market(config), (), say)
        say(f"fault-free run of seed {config.seed}: {observed.events_published:,} events, "
            f"{len(observed.topics[SETTLEMENTS.name]):,} settlement records, "
            f"{observed.outcomes:,} outcomes ({time.monotonic() - started:.1f} s)")
        _BASELINES[key] = (observed, processor_key)
    return _BASELINES[key]


@dataclasses.dataclass
class ChaosSummary:
    seed: int
    scale: str
    runs: list[RunResult]
    wall_s: float
    baseline_s: float

    @property
    def faults(self) -> dict[str, int]:
        out = {k: 0 for k in FAULT_KINDS}
        for run in self.runs:
            for f in run.faults:
                if f.kind in out:
                    out[f.kind] += 1
        return out

    def total(self, name: str) -> int:
        return sum(int(getattr(r, name)) for r in self.runs)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)

    def as_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "scale": self.scale, "runs": len(self.runs),
                "faults": self.faults, "events_checked": self.total("events_checked"),
                "records_checked": self.total("records_checked"), "lost": self.total("lost"),
                "extra": self.total("extra"), "differing": self.total("differing"),
                "duplicated": self.total("duplicated"),
                "redelivered_copies": self.total("redelivered"),
                "forged_admitted": self.total("forged_admitted"),
                "hostile": self.total("hostile"),
                "hostile_unrejected": self.total("hostile_unrejected"),
                "commits_during_outage": self.total("commits_during_outage"),
                "wall_s": round(self.wall_s, 1), "baseline_s": round(self.baseline_s, 1),
                "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                "ok": self.ok, "per_run": [r.as_json() for r in self.runs]}


def run_chaos(seed: int = 7, runs: int = 1, kills: int = 3, scale: str = "small",
              outages: int = 1, rebalances: int = 1, partitions: int = 4,
              workdir: Path | None = None, say: Say | None = None,
              session_timeout_ms: int = SESSION_TIMEOUT_MS) -> ChaosSummary:
    """``runs`` faulted runs of the seed's market, each compared with its fault-free run."""
    say = say or (lambda _m: None)
    config = SimConfig(seed=seed, **SCALES[scale]).checked()
    plan = plan_market(config)
    started = time.monotonic()
    own = workdir is None
    base_dir = Path(tempfile.mkdtemp(prefix="chargemesh-chaos-")) if own else workdir
    assert base_dir is not None
    results: list[RunResult] = []
    try:
        b0 = time.monotonic()
        base, processor_key = baseline(config, partitions, base_dir, say, session_timeout_ms)
        baseline_s = time.monotonic() - b0
        for index in range(runs):
            schedule = fault_schedule(seed, index, kills, outages, rebalances)
            say(f"run {index + 1}/{runs}: " + ", ".join(f"{f.kind}@{f.at:.0%}" for f in schedule))
            t0 = time.monotonic()
            settings = private_settings(base_dir / f"run-{seed}-{index}", session_timeout_ms,
                                        partitions=partitions)
            got, records, _ = run_market(settings, plan, schedule, say, base.outcomes,
                                         processor_key)
            diff = compare(plan, base, got)
            violations = [v for r in records for v in r.violations]
            result = RunResult(
                run=index, seed=seed, faults=records, events_checked=got.events_published,
                records_checked=diff["records"], lost=diff["lost"], extra=diff["extra"],
                differing=diff["differing"], duplicated=diff["duplicated"],
                redelivered=diff["redelivered"], forged_admitted=diff["forged_admitted"],
                hostile=len(plan.hostile), hostile_unrejected=diff["hostile_unrejected"],
                commits_during_outage=len(violations), wall_s=round(time.monotonic() - t0, 1),
                problems=diff["problems"] + violations)
            results.append(result)
            say(f"run {index + 1}/{runs}: lost {result.lost}, duplicated {result.duplicated}, "
                f"forged admitted {result.forged_admitted}, redelivered copies "
                f"{result.redelivered} ({result.wall_s:.1f} s)"
                + ("" if result.ok else f"; problems: {result.problems[:5]}"))
        return ChaosSummary(seed, scale, results, time.monotonic() - started, baseline_s)
    finally:
        if own:
            shutil.rmtree(base_dir, ignore_errors=True)


# ---- the `chargemesh chaos` command ----------------------------------------------------------------

import click
from rich.console import Console
from rich.table import Table


def summary_table(summary: ChaosSummary) -> Table:
    data = summary.as_json()
    table = Table(title=f"chargemesh chaos: seed {summary.seed}, scale {summary.scale}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [("runs", str(data["runs"]))]
    rows += [(f"faults injected: {k}", str(v)) for k, v in data["faults"].items()]
    rows += [("events checked (published, all runs)", f"{data['events_checked']:,}"),
             ("records compared (topics + ClickHouse rows)", f"{data['records_checked']:,}"),
             ("hostile events (all runs)", f"{data['hostile']:,}"),
             ("lost", str(data["lost"])), ("not in the fault-free run", str(data["extra"])),
             ("differing bytes", str(data["differing"])),
             ("duplicated (ClickHouse after OPTIMIZE FINAL)", str(data["duplicated"])),
             ("forged or inadmissible admitted", str(data["forged_admitted"])),
             ("hostile not rejected with its reason", str(data["hostile_unrejected"])),
             ("sink commits while ClickHouse was down", str(data["commits_during_outage"])),
             ("redelivered byte-identical copies (allowed)", f"{data['redelivered_copies']:,}"),
             ("wall time (s), of which fault-free run", f"{data['wall_s']} / {data['baseline_s']}"),
             ("cpus / load average (1 min)", f"{data['cpus']} / {data['load_avg_1m']}")]
    for name, value in rows:
        table.add_row(name, value)
    return table


@click.command()
@click.option("--seed", type=int, default=7, show_default=True, help="The market's seed.")
@click.option("--runs", type=int, default=1, show_default=True,
              help="Faulted runs (each on a fresh stack, with its own seeded fault schedule).")
@click.option("--kills", type=int, default=3, show_default=True,
              help="Worker SIGKILL + restart per run (plus one ClickHouse outage and one "
                   "two-worker rebalance kill).")
@click.option("--scale", type=click.Choice(sorted(SCALES)), default="small", show_default=True,
              help="small: 10 sites, 20 vehicles, 4 h; default: the simulator's default day.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def chaos(ctx: click.Context, seed: int, runs: int, kills: int, scale: str,
          as_json: bool) -> None:
    """Fault injection: kill workers, stop ClickHouse, rebalance, during a seeded market; then
    compare with a fault-free run of the same seed (exit 1 on any difference)."""
    if runs < 1 or kills < 0:
        raise click.UsageError("--runs must be at least 1 and --kills at least 0")
    console = Console(stderr=as_json)
    started = time.monotonic()

    def say(message: str) -> None:
        console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim]  {message}")

    summary = run_chaos(seed=seed, runs=runs, kills=kills, scale=scale, say=say)
    if as_json:
        click.echo(json.dumps(summary.as_json(), indent=1, default=str))
    else:
        console.print(summary_table(summary))
        for run in summary.runs:
            for problem in run.problems[:10]:
                console.print(f"[red]run {run.run + 1}:[/red] {problem}")
    if not summary.ok:
        ctx.exit(1)
