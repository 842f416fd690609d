"""One faulted chaos run: its workers (through the process supervisor), the fault lanes that
inject worker kills, ClickHouse outages and rebalances, and the market published meanwhile."""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from chargemesh.infra.stack import supervisor as processes
from chargemesh.infra.sim.chaos_check import (
    CLICKHOUSE_GONE_WAIT_S_MAX,
    COMPARED_TOPICS,
    Fault,
    FaultRecord,
    Observed,
    SINK_FAILURE_WAIT_S_MAX,
    SINK_STOP_S_MAX,
    Say,
    TABLE_KEYS,
    TABLE_QUERIES,
    clickhouse_record,
    offsets,
    read_topic,
    wait_quiet,
)
from chargemesh.infra.config import Settings
from chargemesh.infra.stack.worker import WorkerProcess, log_tail, publisher
from chargemesh.infra.sim.plan import MarketPlan
from chargemesh.infra.sim.run import Run, deployment_events
from chargemesh.infra.stack.embedded import EmbeddedStack
from chargemesh.sinks.clickhouse_sink import GROUP_ID_DEFAULT, SINK_TOPICS, ClickHouseSink
from chargemesh.sinks.migrate import clickhouse_client
from chargemesh.streams.topics import (
    ADMITTED,
    REJECTIONS,
)
from chargemesh.units import SECOND_MS

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
        time.sleep(self.settings.session_timeout_ms / SECOND_MS + 2)

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
        if fault.signal == "SIGKILL":
            processes.kill(server)
        else:  # SIGTERM, SIGKILL only if it is not gone within CLICKHOUSE_GONE_WAIT_S_MAX
            processes.stop(server, CLICKHOUSE_GONE_WAIT_S_MAX)
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
            self.publish_deployment(pub, phase)
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
        if processor_key is not None:  # the baseline's credential key: the same signed bytes
            settings.processor_key_path.write_bytes(processor_key)
        deployment = deployment_events(settings, plan)
        workers.start(0)
        sink = ClickHouseSink(settings)
        sink_thread = threading.Thread(target=sink.run, args=(stop,), name="sink", daemon=True)
        sink_thread.start()
        run = ChaosRun(settings, plan, f"chaos-{plan.config.seed}", 0.0,
                       lambda _d, _n, _t: None, workers, deployment=deployment)
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
