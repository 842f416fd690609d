"""``chargemesh simulate``: a seeded synthetic market day on the embedded stack, measured from
the participants' side, summarised from ClickHouse, with an HTML report.

``plan_market`` (``infra/sim/plan.py``) is the pure part: config -> phases of signed events.
``run_simulation`` publishes them phase by phase on a virtual clock (station time; ``compress``
sets how fast wall time follows it, 0 = as fast as possible), waits at each phase's barrier
(re-price proposals after the grid event, re-evaluations after the revocation), watches the
decisions, settlements and rejections topics to time walk-up authorisation, re-pricing and
settlement finality, and writes ``simulation_latencies`` and ``simulation_runs``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chargemesh.infra.config import Settings
from chargemesh.infra.sim.plan import MarketPlan, SimConfig, plan_market
from chargemesh.infra.stack.bootstrap import deployment_identity
from chargemesh.infra.stack.embedded import EmbeddedStack
from chargemesh.infra.stack.worker import WorkerProcess, log_tail, publisher
from chargemesh.schemas.codec import catalog
from chargemesh.sinks.clickhouse_sink import ClickHouseSink
from chargemesh.sinks.migrate import clickhouse_client
from chargemesh.streams.envelope import SignedEvent, open_envelope, open_payload
from chargemesh.streams.topics import DECISIONS, REJECTIONS, SETTLEMENTS
from chargemesh.units import SECOND_MS
from confluent_kafka import OFFSET_END, Consumer, TopicPartition

BARRIER_WAIT_S_MAX = 60.0
SETTLE_WAIT_S_MAX = 180.0
SINK_WAIT_S_MAX = 90.0
SINK_STOP_S_MAX = 30.0
COMPRESS_SLEEP_S_MAX = 3_600.0
POLL_S = 0.2
CONSUME_BATCH_MAX = 1_000
RUNS_FILE = "simulations.json"
Progress = Callable[[str, int, int], None]  # (description, done, total)


@dataclasses.dataclass
class SimSummary:
    run_id: str
    seed: int
    events_published: int
    wall_s: float
    expected_settlements: int
    final_settlements: int
    hostile: int
    hostile_rejected: int
    refused_expected: int
    refused_seen: int
    latencies_ms: dict[str, list[float]]
    missing: list[str]
    started_at_ms: int
    finished_at_ms: int
    prefix: str = ""  # ids of this run's settlements carry ":<prefix>-"

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["latencies_ms"] = {k: percentiles(v) for k, v in self.latencies_ms.items()}
        out["missing"] = self.missing[:20]
        return out


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"count": len(ordered), "p50": at(0.50), "p99": at(0.99), "max": ordered[-1]}


class Watcher:
    """Consumes decisions, settlements and rejections from their current end, noting when each
    outcome this run waits for was first consumed (wall clock, perf counter)."""

    def __init__(self, settings: Settings) -> None:
        conf = dict(settings.kafka_client_config(), **{
            "group.id": "chargemesh-simulate-watcher", "enable.auto.commit": False,
            "fetch.wait.max.ms": 10})
        self.consumer = Consumer(conf)
        parts = []
        for topic in (DECISIONS.name, SETTLEMENTS.name, REJECTIONS.name):
            meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
            for p in meta.partitions:
                _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), 10)
                parts.append(TopicPartition(topic, p, high if high >= 0 else OFFSET_END))
        self.consumer.assign(parts)
        self.lock = threading.Lock()
        self.decided: dict[str, float] = {}  # order id -> first decision
        self.reserved: dict[str, float] = {}  # order id -> SlotReserved
        self.reprices: dict[str, float] = {}  # session id -> RepriceProposed
        self.reevaluated: dict[str, float] = {}  # subject id -> CredentialReevaluated
        self.final: dict[str, float] = {}  # settlement id -> SettlementFinalised
        # issue 16: a settlement left unsigned past the finality window, a reversal's own id
        self.expired: dict[str, float] = {}  # settlement id -> SettlementExpired
        self.reversed: dict[str, float] = {}  # reversal id -> SettlementReversed
        self.settlements: dict[str, dict[str, Any]] = {}  # settlement id -> admitted payload
        self.rejected: dict[str, str] = {}  # event id -> first reason
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Watcher:
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            for msg in self.consumer.consume(CONSUME_BATCH_MAX, timeout=0.05):
                if msg.error():
                    continue
                try:
                    self._note(msg.topic() or "", msg.value() or b"", time.perf_counter())
                except Exception:  # noqa: BLE001, S112 - a record we cannot read is not ours to time
                    continue

    def _note(self, topic: str, value: bytes, at: float) -> None:
        if topic == REJECTIONS.name:
            rejection = catalog().single_object_decode(value)[1]
            with self.lock:
                self.rejected.setdefault(rejection["event_id"], rejection["reason_code"])
            return
        event = open_envelope(value)
        kind, p = event.event_type.rsplit(".", 1)[1], open_payload(event)
        with self.lock:
            if kind in ("SlotReserved", "OrderRejected") and p.get("order_id"):
                self.decided.setdefault(p["order_id"], at)
                if kind == "SlotReserved":
                    self.reserved.setdefault(p["order_id"], at)
            elif kind == "RepriceProposed":
                self.reprices.setdefault(p["session_id"], at)
            elif kind == "CredentialReevaluated":
                self.reevaluated.setdefault(p["subject_id"], at)
            elif kind == "SettlementFinalised":
                self.final.setdefault(p["settlement_id"], at)
            elif kind == "SettlementExpired":
                self.expired.setdefault(p["settlement_id"], at)
            elif kind == "SettlementReversed":
                self.reversed.setdefault(p["settlement_id"], at)
            elif kind == "SettlementAdmitted":
                self.settlements.setdefault(p["settlement_id"], p)

    def seen(self, kind: str, key: str) -> bool:
        tables: dict[str, dict[str, Any]] = {
            "decided": self.decided, "reserved": self.reserved, "reprice": self.reprices,
            "reevaluated": self.reevaluated,
            "final": self.final, "rejected": self.rejected}
        table = tables[kind]
        with self.lock:
            if kind == "final":  # its final state: FINAL, or EXPIRED / a reversal as planned
                return key in table or key in self.expired or key in self.reversed
            return key in table

    def settled_ids(self) -> set[str]:
        """Every settlement id in its final state (FINAL, EXPIRED, a REVERSAL)."""
        with self.lock:
            return set(self.final) | set(self.expired) | set(self.reversed)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.consumer.close()


def wait_until(done: Callable[[], int], total: int, timeout_s: float, what: str,
               progress: Progress) -> int:
    deadline = time.monotonic() + timeout_s
    count = done()
    while count < total and time.monotonic() < deadline:
        progress(what, count, total)
        time.sleep(POLL_S)
        count = done()
    progress(what, count, total)
    return count


def next_tag(settings: Settings, seed: int) -> str:
    """"" for the first run of a seed on this stack, r1, r2, ... after (ids must not repeat)."""
    path = settings.state_dir / RUNS_FILE
    runs = json.loads(path.read_text()) if path.exists() else []
    used = sum(1 for r in runs if r.get("seed") == seed)
    return "" if used == 0 else f"r{used}"


def remember_run(settings: Settings, run_id: str, seed: int, tag: str) -> None:
    path = settings.state_dir / RUNS_FILE
    runs = json.loads(path.read_text()) if path.exists() else []
    runs.append({"run_id": run_id, "seed": seed, "tag": tag})
    path.write_text(json.dumps(runs, indent=1))


@contextlib.contextmanager
def worker_and_sink(settings: Settings) -> Iterator[WorkerProcess]:
    """A processor worker and the ClickHouse sink (a thread) for one run, stopped after it."""
    worker = WorkerProcess(settings, loglevel="warning").start()
    stop = threading.Event()
    sink_thread: threading.Thread | None = None
    sink: ClickHouseSink | None = None
    try:
        sink = ClickHouseSink(settings)
        sink_thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
        sink_thread.start()
        yield worker
    finally:
        stop.set()
        if sink_thread is not None:
            sink_thread.join(SINK_STOP_S_MAX)
        if sink is not None:
            sink.close()
        worker.stop()


class Run:
    """One run of a plan on a running stack (worker and sink started by the caller).

    ``say`` hears each phase's narration once its barrier is met; ``strict`` makes a barrier
    not met within ``barrier_wait_s`` an error instead of a note in ``missing``."""

    def __init__(self, settings: Settings, plan: MarketPlan, run_id: str, compress: float,
                 progress: Progress, worker: WorkerProcess,
                 say: Callable[[str], None] | None = None, strict: bool = False,
                 barrier_wait_s: float = BARRIER_WAIT_S_MAX,
                 deployment: tuple[SignedEvent, ...] = ()) -> None:
        self.settings, self.plan, self.run_id = settings, plan, run_id
        # The deployment's own credentials (deployment_events): after the first phase, which
        # declares the root that issues them; not the plan's, so not counted as published.
        self.deployment = deployment
        self.compress, self.progress, self.worker = compress, progress, worker
        self.say, self.strict, self.barrier_wait_s = say, strict, barrier_wait_s
        self.tracked = set(plan.walk_ups) | set(plan.final_signatures) | set(plan.grid_events)
        self.published_at: dict[str, float] = {}
        self.published = 0
        self.missing: list[str] = []
        self.watcher = Watcher(settings).start()

    def publish_phases(self) -> None:
        pub = publisher(self.settings)
        total = sum(len(p.events) for p in self.plan.phases)
        wall0, day0 = time.monotonic(), self.plan.config.day_start_ms
        for phase in self.plan.phases:
            self._keep_pace(wall0, phase.until_ms - day0)
            for event in phase.events:
                pub.publish(event)
                if event.event_id in self.tracked:
                    self.published_at.setdefault(event.event_id, time.perf_counter())
                self.published += 1
                if self.published % 200 == 0:
                    self.progress(f"simulated {phase.label}", self.published, total)
            self.publish_deployment(pub, phase)
            pub.flush()
            self.progress(f"simulated {phase.label}", self.published, total)
            self._barrier(phase.label, phase.barrier)
            if self.strict and self.missing:
                raise RuntimeError(f"not observed within {self.barrier_wait_s:.0f}s at "
                                   f"{phase.label}: " + ", ".join(self.missing[:10]))
            if phase.narration and self.say is not None:
                self.say(phase.narration)

    def publish_deployment(self, pub: Any, phase: Any) -> None:
        if phase is self.plan.phases[0]:
            for event in self.deployment:
                pub.publish(event)

    def _keep_pace(self, wall0: float, virtual_ms: int) -> None:
        if self.compress <= 0 or virtual_ms <= 0:
            return
        due = wall0 + virtual_ms / SECOND_MS / self.compress - time.monotonic()
        time.sleep(min(max(0.0, due), COMPRESS_SLEEP_S_MAX))

    def _barrier(self, label: str, barrier: tuple[tuple[str, str], ...]) -> None:
        if not barrier:
            return
        if not self.worker.alive():
            raise RuntimeError("worker died:\n" + log_tail(self.worker.log_path))
        seen = wait_until(lambda: sum(self.watcher.seen(k, s) for k, s in barrier),
                          len(barrier), self.barrier_wait_s, f"waiting at {label}", self.progress)
        if seen < len(barrier):
            self.missing += [f"{k}:{s}" for k, s in barrier if not self.watcher.seen(k, s)]

    def await_outcomes(self) -> None:
        expected = sorted(self.plan.expected_settlements)
        refused = sorted(set(self.plan.hostile) | set(self.plan.refused))
        wait_until(lambda: sum(self.watcher.seen("final", s) for s in expected), len(expected),
                   SETTLE_WAIT_S_MAX, "settlements final", self.progress)
        wait_until(lambda: sum(self.watcher.seen("rejected", e) for e in refused), len(refused),
                   BARRIER_WAIT_S_MAX, "hostile and refused events rejected", self.progress)
        self.missing += [f"final:{s}" for s in expected if not self.watcher.seen("final", s)]
        self.missing += [f"rejected:{e}" for e in refused if not self.watcher.seen("rejected", e)]

    def latencies(self) -> dict[str, list[tuple[str, float]]]:
        """Per kind: (subject, ms) from the participant's publish to the outcome consumed."""
        w, at = self.watcher, self.published_at
        out: dict[str, list[tuple[str, float]]] = {
            "walk_up_authorisation": [], "settlement_finality": [], "reprice": []}
        with w.lock:
            for eid, order_id in self.plan.walk_ups.items():
                if eid in at and order_id in w.decided:
                    out["walk_up_authorisation"].append((order_id, w.decided[order_id] - at[eid]))
            for eid, sid in self.plan.final_signatures.items():
                if eid in at and sid in w.final:
                    out["settlement_finality"].append((sid, w.final[sid] - at[eid]))
            for eid, sessions in self.plan.grid_events.items():
                for session in sessions:
                    if eid in at and session in w.reprices:
                        out["reprice"].append((session, w.reprices[session] - at[eid]))
        return {k: [(s, round(v * SECOND_MS, 3)) for s, v in rows] for k, rows in out.items()}

    def close(self) -> None:
        self.watcher.close()


def write_latencies(settings: Settings, run_id: str,
                    latencies: dict[str, list[tuple[str, float]]]) -> None:
    now_ms = int(time.time() * SECOND_MS)
    at = dt.datetime.fromtimestamp(now_ms // SECOND_MS, tz=dt.UTC).replace(tzinfo=None)
    rows = [(run_id, kind, subject, ms, now_ms, at)
            for kind, pairs in latencies.items() for subject, ms in pairs]
    client = clickhouse_client(settings)
    try:
        if rows:
            client.execute("INSERT INTO simulation_latencies (run_id, kind, subject_id, "
                           "latency_ms, measured_at_ms, measured_at) VALUES", rows)
    finally:
        client.disconnect()


def write_run(settings: Settings, summary: SimSummary, params: dict[str, Any]) -> None:
    started = dt.datetime.fromtimestamp(summary.started_at_ms // SECOND_MS,
                                        tz=dt.UTC).replace(tzinfo=None)
    client = clickhouse_client(settings)
    try:
        client.execute("INSERT INTO simulation_runs (run_id, seed, started_at_ms, "
                       "finished_at_ms, started_at, params_json, summary_json) VALUES",
                       [(summary.run_id, summary.seed, summary.started_at_ms,
                         summary.finished_at_ms, started, json.dumps(params, sort_keys=True),
                         json.dumps(summary.as_json(), sort_keys=True, default=str))])
    finally:
        client.disconnect()


def collect_settlements(settings: Settings, prefix: str,
                        timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """Every ``SettlementAdmitted`` of a run (settlement ids carry ``:<prefix>-``) read from the
    settlements topic from its beginning: for comparing a faulted run with a fault-free one."""
    from chargemesh.infra.stack.worker import TopicReader

    reader = TopicReader(settings, SETTLEMENTS.name)
    try:
        reader.poll(min(timeout_s, 5.0))
        out: dict[str, dict[str, Any]] = {}
        for record in reader.records:
            try:
                event = record.event()
                if not event.event_type.endswith("SettlementAdmitted"):
                    continue
                payload = record.payload()
            except Exception:  # noqa: BLE001, S112 - not a settlement of ours
                continue
            if f":{prefix}-" in payload["settlement_id"]:
                out.setdefault(payload["settlement_id"], payload)
        return out
    finally:
        reader.close()


def wait_for_sink(settings: Settings, run: Run, progress: Progress) -> None:
    """Until ClickHouse holds this run's final settlements and hostile rejections."""
    prefix = run.plan.config.prefix
    hostile = tuple(run.plan.hostile) or ("-",)
    final = len([s for s in run.watcher.settled_ids() if f":{prefix}-" in s])
    client = clickhouse_client(settings)

    def rows() -> int:
        finals = client.execute(
            "SELECT count() FROM settlements_status WHERE status IN ('FINAL', 'EXPIRED', "
            "'REVERSED') AND "
            "settlement_id LIKE %(p)s", {"p": f"%:{prefix}-%"})[0][0]
        rejected = client.execute("SELECT uniqExact(event_id) FROM rejections WHERE event_id "
                                  "IN %(e)s", {"e": hostile})[0][0]
        return int(min(finals, final) + rejected)

    try:
        wait_until(rows, final + len(run.plan.hostile), SINK_WAIT_S_MAX,
                   "ClickHouse sink catching up", progress)
    finally:
        client.disconnect()


def deployment_events(settings: Settings, plan: MarketPlan) -> tuple[SignedEvent, ...]:
    """The deployment's PROCESSOR and CHECKPOINT credentials under the plan's root, in its
    declared jurisdiction and at its declaration's time, their key files written (before any
    worker starts: every worker loads the shared processor key)."""
    declared = next(e for e in plan.phases[0].events
                    if e.event_type == "chargemesh.governance.v1.AuthorityDeclared"
                    and e.body.author_credential_id == plan.root.credential_id)
    identity = deployment_identity(settings, plan.root, open_payload(declared)["jurisdiction"],
                                   declared.body.occurred_at_ms,
                                   seed_secret=f"chargemesh-sim:{plan.root.credential_id}")
    return tuple(identity.events)


def run_simulation(settings: Settings, config: SimConfig, compress: float = 0.0,
                   progress: Progress | None = None,
                   say: Callable[[str], None] | None = None) -> SimSummary:
    """Plan, publish, measure and record one run on a stack that is up (the caller's)."""
    from chargemesh.infra.cli.anchors import add_anchor

    progress = progress or (lambda _d, _n, _t: None)
    say = say or (lambda _m: None)
    started_ms = int(time.time() * SECOND_MS)
    wall0 = time.monotonic()
    tag = config.tag or next_tag(settings, config.seed)
    config = dataclasses.replace(config, tag=tag)
    run_id = f"sim-{config.seed}{('-' + tag) if tag else ''}-{started_ms}"
    plan = plan_market(config)
    say(f"planned {len(plan.events()):,} signed events in {len(plan.phases)} phases "
        f"(seed {config.seed}, run {run_id})")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    add_anchor(settings.trust_anchors_path, plan.root.credential_id, plan.root.public_key,
               replace=True)
    remember_run(settings, run_id, config.seed, tag)
    deployment = deployment_events(settings, plan)
    with worker_and_sink(settings) as worker:
        run = Run(settings, plan, run_id, compress, progress, worker, deployment=deployment)
        try:
            run.publish_phases()
            run.await_outcomes()
            latencies = run.latencies()
            write_latencies(settings, run_id, latencies)
            wait_for_sink(settings, run, progress)
            settled = run.watcher.settled_ids()
            with run.watcher.lock:
                final = sum(1 for s in plan.expected_settlements if s in settled)
                hostile_rejected = sum(1 for e in plan.hostile if e in run.watcher.rejected)
                refused_seen = sum(1 for e in plan.refused if e in run.watcher.rejected)
            summary = SimSummary(
                run_id, config.seed, run.published, round(time.monotonic() - wall0, 1),
                len(plan.expected_settlements), final, len(plan.hostile), hostile_rejected,
                len(plan.refused), refused_seen,
                {k: [ms for _, ms in v] for k, v in latencies.items()}, run.missing,
                started_ms, int(time.time() * SECOND_MS), config.prefix)
            params = dict(dataclasses.asdict(config), compress=compress,
                          capabilities=plan.capabilities)
            write_run(settings, summary, params)
            return summary
        finally:
            run.close()


def summary_tables(settings: Settings, run_id: str, prefix: str,
                   started_at_ms: int) -> dict[str, list[tuple[Any, ...]]]:
    """What an analyst reads back from ClickHouse about one run."""
    like = {"p": f"%:{prefix}-%", "t": started_at_ms, "r": run_id}
    queries = {
        "settlements": "SELECT jurisdiction, currency, kind, count(), sum(energy_import_wh), "
                       "sum(energy_export_wh), sum(total_amount) FROM settlements FINAL "
                       "WHERE settlement_id LIKE %(p)s GROUP BY jurisdiction, currency, kind "
                       "ORDER BY jurisdiction, kind",
        "finality": "SELECT status, count() FROM settlements_status WHERE settlement_id LIKE "
                    "%(p)s GROUP BY status ORDER BY status",
        "rejections": "SELECT reason_code, count() FROM rejections FINAL WHERE rejected_at_ms "
                      ">= %(t)s GROUP BY reason_code ORDER BY count() DESC, reason_code",
        "latencies": "SELECT kind, count(), quantileExact(0.5)(latency_ms), "
                     "quantileExact(0.99)(latency_ms), max(latency_ms) FROM "
                     "simulation_latencies FINAL WHERE run_id = %(r)s GROUP BY kind "
                     "ORDER BY kind",
    }
    client = clickhouse_client(settings)
    try:
        return {name: list(client.execute(sql, like)) for name, sql in queries.items()}
    finally:
        client.disconnect()


def write_report(settings: Settings, run_id: str, out_dir: Path) -> Path | None:
    """The HTML report (infra/report/html.py, written alongside); None if it is not available."""
    try:
        from chargemesh.infra.report.html import build_report
    except ImportError:
        return None
    return Path(build_report(settings, out_dir, run_id))


# ---- the `chargemesh simulate` command --------------------------------------------------------

import click
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.cli.tables import print_table
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table


@click.command()
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--stations", type=int, default=SimConfig.stations, show_default=True,
              help="Sites: one each of MCS, depot, destination, swap, mobile, V2G and wireless "
                   "road, the rest public AC/DC in US-CA, DE-BY and GB-LDN.")
@click.option("--vehicles", type=int, default=SimConfig.vehicles, show_default=True)
@click.option("--hours", type=int, default=SimConfig.hours, show_default=True,
              help="Simulated station time.")
@click.option("--compress", type=float, default=0.0, show_default=True,
              help="Simulated seconds per wall second (0: as fast as possible).")
@click.option("--hostile-fraction", type=float, default=SimConfig.hostile_fraction,
              show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Report folder (default <state_dir>/reports/<run_id>).")
@click.option("--keep-running", is_flag=True, help="Leave the embedded stack up afterwards.")
@click.pass_context
def simulate(ctx: click.Context, seed: int, stations: int, vehicles: int, hours: int,
             compress: float, hostile_fraction: float, out_dir: Path | None,
             keep_running: bool) -> None:
    """Simulate a seeded market day on the embedded stack and report it from ClickHouse."""
    console, started = Console(), time.monotonic()
    settings = settings_of(ctx)
    try:
        config = SimConfig(seed=seed, stations=stations, vehicles=vehicles, hours=hours,
                           hostile_fraction=hostile_fraction).checked()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    def say(message: str) -> None:
        console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim]  {message}")

    stack = EmbeddedStack(settings)
    up = stack.up()
    say(f"stack up: {', '.join(up.started) or 'already running'}")
    try:
        columns = (SpinnerColumn(), TextColumn("{task.description:<44}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn())
        with RichProgress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("planning", total=None)

            def progress(what: str, done: int, total: int) -> None:
                bar.update(task, description=what, completed=done, total=total)

            summary = run_simulation(settings, config, compress, progress, say)
        print_summary(console, settings, summary)
        folder = out_dir or settings.state_dir / "reports" / summary.run_id
        report = write_report(settings, summary.run_id, folder)
        console.print(f"HTML report: {report}" if report else
                      "HTML report: chargemesh.infra.report.html is not installed; skipped")
        console.print(f"Query ClickHouse yourself: clickhouse-client --port "
                      f"{settings.clickhouse_port} -d {settings.clickhouse_database} --query "
                      f"\"SELECT * FROM simulation_runs FINAL WHERE run_id = "
                      f"'{summary.run_id}'\"" + ("" if keep_running else
                                                 " (after `chargemesh up`)"))
    finally:
        if not keep_running:
            stack.down()
            say("stack down")
    say(f"done: {summary.events_published:,} events, {summary.final_settlements}/"
        f"{summary.expected_settlements} settlements final, {summary.hostile_rejected}/"
        f"{summary.hostile} hostile events rejected")
    if summary.missing:
        console.print(f"[yellow]not observed ({len(summary.missing)}):[/yellow] "
                      + ", ".join(summary.missing[:10]))
        ctx.exit(1)


def _table(title: str, headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Table:
    table = Table(title=title)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 or header in (
            "currency", "kind") else "right")
    for row in rows:
        table.add_row(*[f"{v:,.2f}" if isinstance(v, float) else
                        (f"{v:,}" if isinstance(v, int) else str(v)) for v in row])
    return table


def print_summary(console: Console, settings: Settings, summary: SimSummary) -> None:
    result = summary_tables(settings, summary.run_id, summary.prefix, summary.started_at_ms)
    print_table(console, _table("Settlements by jurisdiction and currency (ClickHouse)",
                         ("jurisdiction", "currency", "kind", "settlements", "import Wh",
                          "export Wh", "total"), result["settlements"]))
    print_table(console, _table("Settlement finality", ("status", "settlements"),
                                result["finality"]))
    print_table(console, _table("Rejections by reason (this run)", ("reason", "events"),
                         result["rejections"]))
    print_table(console, _table("Latency, participant's side (ms)",
                         ("kind", "samples", "p50", "p99", "max"), result["latencies"]))
