"""``chargemesh bench``: the benchmark suite, every figure measured in one run on this machine.

1. single-core Ed25519 verify rate (the physical limit of the pipeline) against the sustained
   throughput of signed orders through ingress verification, the station ledger and ClickHouse,
   per worker; the same work done by a plain confluent-kafka loop (consume the market topic ->
   ``ingress.admit`` -> ``market.market_step`` on a ``LedgerState`` -> produce the outputs and
   the state, acknowledged), to show what the stream framework costs;
2. walk-up authorisation latency; 3. re-pricing latency after a grid event with N active sessions
   (until every session has its ``RepriceProposed``); 4. settlement finality latency;
5. audit replay rate against 80% of the verify limit times the cores used;
6. throughput with 1 and 2 workers and with 4 and 8 partitions;
and where the time goes (cProfile of the Faust worker and of the plain loop, per phase).

Programs that print figures; nothing here asserts on time. Everything runs on private embedded
stacks in a temporary directory. The plain loop runs as a child process of this module
(``python -m chargemesh.infra.bench.suite plain-loop``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import math
import os
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chargemesh.infra.bench.ledger import HOUR_MS, SLOT_MS, LedgerBench, bench_envelope, percentile
from chargemesh.infra.config import Settings, load_settings
from chargemesh.infra.stack.worker import Record, TopicReader, WorkerProcess, log_tail, publisher
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant
from chargemesh.streams.topics import ADMITTED

# ---- sizes, targets -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    orders: int = 4_000            # per throughput measurement
    walk_ups: int = 200
    finalities: int = 200
    reprice_sessions: int = 1_000
    reprice_rounds: int = 3        # grid events, each re-pricing every session
    profile_orders: int = 2_000    # per profiled run (Faust worker, plain loop)
    stations: int = 16             # per throughput measurement (fresh ledgers each time)
    vehicles: int = 64
    partitions: tuple[int, ...] = (4, 8)
    workers: tuple[int, ...] = (1, 2)
    audit_rounds: int = 3
    stats_wait_s: float = 5.5      # the workers log batch stats every 5 s; 0: do not wait


QUICK = Sizes(orders=1_200, walk_ups=40, finalities=40, reprice_sessions=1_000, reprice_rounds=1,
              profile_orders=600, audit_rounds=1)
DEFAULT = Sizes()

TARGETS = {
    "pipeline_per_worker_vs_verify": 0.70,   # of the single-core verify rate
    "walk_up_p99_ms": 100.0,
    "reprice_p99_ms": 1_000.0,
    "finality_p99_ms": 2_000.0,
    "audit_vs_verify_x_cores": 0.80,
}
RECONNECTORS = 32          # connectors per re-pricing station (<= CONNECTORS_PER_STATION_MAX)
WAIT_S_MAX = 180.0
CLICKHOUSE_POLL_S = 0.1
PROFILE_TOP = 12
AUDIT_CORES = 1            # measure_replay_rate replays in one process, one thread
FAUST_PHASES = {           # function name in the Faust worker -> phase
    "admit": "verify (ingress.admit)", "market_step": "ledger (market_step)",
    "seal_decision": "sign decisions (seal)", "_admitted": "admitted copies",
    "dump_state": "state encode (dump_state)", "load_state": "state decode (load_state)",
    "_publish": "publish outputs (CPU)", "_persist": "persist state (CPU)",
}


# ---- pure parts -----------------------------------------------------------------------------------


def latency_summary(latencies_ms: list[float]) -> dict[str, float]:
    return {"count": float(len(latencies_ms)), "p50_ms": percentile(latencies_ms, 0.5),
            "p99_ms": percentile(latencies_ms, 0.99), "max_ms": max(latencies_ms)}


def parse_worker_stats(log_text: str) -> dict[str, float]:
    """Sum the worker's periodic ``market: N events in B batches ... busy Xs phase=Ys`` lines."""
    totals: dict[str, float] = {"events": 0.0, "batches": 0.0, "busy_s": 0.0}
    pattern = re.compile(r"market: (\d+) events in (\d+) batches .*?busy ([\d.]+)s(.*?)offsets")
    for match in pattern.finditer(log_text):
        totals["events"] += int(match.group(1))
        totals["batches"] += int(match.group(2))
        totals["busy_s"] += float(match.group(3))
        for name, seconds in re.findall(r"(\w+)=([\d.]+)s", match.group(4)):
            totals[f"{name}_s"] = totals.get(f"{name}_s", 0.0) + float(seconds)
    if totals["batches"]:
        totals["events_per_batch"] = totals["events"] / totals["batches"]
    return totals


# Calls that block waiting for I/O (idle time, not work): reported apart from CPU time.
BLOCKING_CALLS = ("<method 'poll' of 'select.epoll'", "<method 'consume' of 'cimpl.Consumer'",
                  "<method 'poll' of 'cimpl.", "<method 'flush' of 'cimpl.",
                  "<built-in method time.sleep>", "<method 'acquire' of '_thread.lock'",
                  "<method 'select' of 'select.")


def is_blocking(func: tuple[str, int, str]) -> bool:
    return any(func[2].startswith(b) for b in BLOCKING_CALLS)


def _is_import_machinery(func: tuple[str, int, str]) -> bool:
    filename, _, name = func
    return filename.startswith("<frozen") or name == "<module>" or "importlib" in filename


_PROJECT_DIR = str(Path(__file__).resolve().parent.parent)  # the chargemesh package's folder


def category_of(func: tuple[str, int, str]) -> str:
    filename, _, name = func
    text = f"{filename}:{name}".lower()
    if filename.startswith(_PROJECT_DIR) and "/schemas/" not in filename:
        if "/processors/ledger" in filename or "/processors/sessions" in filename \
                or "/processors/market" in filename:
            return "chargemesh ledger logic"
        return "chargemesh other (envelope, policy, trust store, app)"
    if "ed25519" in text or "verify" in name and "cffi" in text or "cryptography" in text \
            or name in ("<method 'verify' of", "<method 'sign' of") or "nacl" in text:
        return "ed25519 (sign/verify)"
    if "fastavro" in text or "avro" in text or "/schemas/" in text:
        return "avro encode/decode"
    if "/json/" in text or name.startswith("<method 'dumps'") or "_json" in text:
        return "json (ledger state)"
    if "confluent_kafka" in text or "cimpl" in text or "aiokafka" in text or "kafka" in text:
        return "kafka client"
    if "faust" in text or "/mode/" in text or "asyncio" in text or "selectors" in text \
            or "<method 'poll' of" in text or "select" in name:
        return "framework + event loop"
    return "other (stdlib, decimal, hashing...)"


def summarise_profile(stats: pstats.Stats, events: int,
                      phases: dict[str, str] | None = None,
                      phase_files: tuple[str, ...] = ("processors", "chargemesh"),
                      ) -> dict[str, Any]:
    """Top functions by own time, time by category, and the cumulative time of named phase
    functions, each also per event (µs)."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    every = [(func, cc, nc, tt, ct) for func, (cc, nc, tt, ct, _) in raw.items()
             if not _is_import_machinery(func)]
    waiting = sum(r[3] for r in every if is_blocking(r[0]))
    rows = [r for r in every if not is_blocking(r[0])]
    total = sum(r[3] for r in rows) or 1e-9
    per = 1e6 / max(events, 1)
    top = sorted(rows, key=lambda r: r[3], reverse=True)[:PROFILE_TOP]
    categories: dict[str, float] = {}
    for func, _, _, tt, _ in rows:
        categories[category_of(func)] = categories.get(category_of(func), 0.0) + tt
    out: dict[str, Any] = {
        "profiled_s": total, "blocked_waiting_s": waiting, "events": float(events),
        "top_functions": [{"function": f"{Path(f[0]).name}:{f[1]}({f[2]})", "calls": float(nc),
                           "own_s": tt, "cum_s": ct, "own_us_per_event": tt * per}
                          for f, _, nc, tt, ct in top],
        "categories": {k: {"s": v, "share": v / total, "us_per_event": v * per}
                       for k, v in sorted(categories.items(), key=lambda kv: -kv[1])},
    }
    if phases:
        found: dict[str, float] = {}
        for func, _, _, _, ct in rows:
            if func[2] in phases and any(part in func[0] for part in phase_files):
                label = phases[func[2]]
                found[label] = found.get(label, 0.0) + ct
        out["phases"] = {k: {"s": v, "us_per_event": v * per} for k, v in found.items()}
    return out


def _met(value: float, target: float, higher_is_better: bool) -> bool:
    return value >= target if higher_is_better else value <= target


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure: what, value, target, met, limited by (figures from ``results``)."""
    env = results["envelope"]
    verify = env["ed25519_verify_per_s"]
    sign = env["sign_per_s"]
    rows: list[dict[str, Any]] = []

    def add(what: str, value: str, target: str, met: bool | None, limited: str) -> None:
        rows.append({"figure": what, "value": value, "target": target,
                     "met": None if met is None else bool(met), "limited_by": limited})

    crypto_us = 1e6 / verify + 1e6 / sign  # verify the order, sign its decision
    add("Ed25519 verify, one core", f"{verify:,.0f} /s", "physical limit", None,
        f"CPU: {1e6 / verify:.0f} µs per verify (sign {1e6 / sign:.0f} µs, full admit "
        f"{1e6 / env['admit_per_s']:.0f} µs)")
    pipe = results["pipeline"]
    for label, key in (("Faust worker", "faust"), ("plain confluent-kafka loop", "plain_loop")):
        run = pipe[key]
        ratio = run["to_clickhouse_per_s_per_worker"] / verify
        us = 1e6 / max(run["decided_per_s"], 1e-9)
        add(f"pipeline, {label} (1 worker, to ClickHouse)",
            f"{run['to_clickhouse_per_s_per_worker']:,.0f} /s = {ratio:.0%} of verify "
            f"(decided {run['decided_per_s']:,.0f} /s)",
            f">= {TARGETS['pipeline_per_worker_vs_verify']:.0%}",
            ratio >= TARGETS["pipeline_per_worker_vs_verify"],
            f"{us:.0f} µs/order wall; Ed25519 verify+sign alone {crypto_us:.0f} µs "
            f"(ceiling {1e6 / crypto_us:,.0f}/s); " + run.get("limited_by", ""))
    add("framework cost (Faust vs plain loop)",
        f"{pipe['framework_cost_us_per_event']:+.0f} µs/order "
        f"(plain loop x{pipe['plain_over_faust']:.2f})", "-", None,
        pipe.get("limited_by", ""))
    for key, what, target_key in (("walk_up", "walk-up authorisation", "walk_up_p99_ms"),
                                  ("reprice", "re-pricing, every session", "reprice_p99_ms"),
                                  ("settlement_finality", "settlement finality",
                                   "finality_p99_ms")):
        fig = results[key]
        target = TARGETS[target_key]
        extra = ""
        if key == "reprice":
            extra = f", all {fig['sessions']:.0f} in {fig['max_ms']:.0f} ms"
        add(what, f"p50 {fig['p50_ms']:.1f} ms, p99 {fig['p99_ms']:.1f} ms{extra}",
            f"p99 < {target:,.0f} ms", fig["p99_ms"] < target, fig.get("limited_by", ""))
    audit = results["audit"]
    limit = TARGETS["audit_vs_verify_x_cores"] * verify * audit["cores_used"]
    add("audit replay", f"{audit['events_per_s_best']:,.0f} records/s "
        f"({audit['events_per_s_best'] / (verify * audit['cores_used']):.0%} of verify x "
        f"{audit['cores_used']} core)", f">= {limit:,.0f} /s",
        audit["events_per_s_best"] >= limit, audit.get("limited_by", ""))
    for run in results["scaling"]:
        add(f"scaling: {run['partitions']} partitions, {run['workers']} worker(s)",
            f"{run['to_clickhouse_per_s']:,.0f} /s total, "
            f"{run['to_clickhouse_per_s'] / run['workers']:,.0f} /s per worker "
            f"(decided {run['decided_per_s']:,.0f} /s)", "-", None, run.get("limited_by", ""))
    return rows


def render(results: dict[str, Any]) -> Any:
    """A rich renderable: the figures table and the where-the-time-goes tables."""
    from rich.console import Group
    from rich.table import Table

    table = Table(title=f"chargemesh bench ({results['machine']['cores']} cores, "
                  f"{results['sizes_name']} sizes, {results['elapsed_s']:.0f} s)")
    for column in ("figure", "value", "target", "met", "limited by"):
        table.add_column(column, overflow="fold")
    for row in results["rows"]:
        met = "-" if row["met"] is None else ("[green]met[/green]" if row["met"]
                                              else "[red]not met[/red]")
        table.add_row(row["figure"], row["value"], row["target"], met, row["limited_by"])
    parts: list[Any] = [table]
    where = results["where_the_time_goes"]
    phases = Table(title="where the time goes: µs per order (CPU, cProfile) and wall per order")
    phases.add_column("phase")
    phases.add_column("Faust worker", justify="right")
    phases.add_column("plain loop", justify="right")
    faust_p = where["faust"].get("phases", {})
    plain_p = where["plain_loop"].get("phases", {})
    for name in sorted(set(faust_p) | set(plain_p)):
        phases.add_row(name, _us(faust_p.get(name)), _us(plain_p.get(name)))
    phases.add_row("[b]all profiled CPU[/b]", f"{where['faust']['us_per_event_cpu']:.0f}",
                   f"{where['plain_loop']['us_per_event_cpu']:.0f}")
    phases.add_row("[b]wall per order (profiled run)[/b]",
                   f"{where['faust']['us_per_event_wall']:.0f}",
                   f"{where['plain_loop']['us_per_event_wall']:.0f}")
    parts.append(phases)
    wall = Table(title="where the time goes: wall µs per order by phase (timed runs, no "
                 "profiler; Faust from its worker log)")
    wall.add_column("Faust worker phase")
    wall.add_column("µs/order", justify="right")
    wall.add_column("plain loop phase")
    wall.add_column("µs/order", justify="right")
    f_rows = [(k, f"{v:.0f}") for k, v in where.get("faust_wall_us", {}).items()]
    p_rows = [(k, f"{v:.0f}") for k, v in where.get("plain_wall_us", {}).items()]
    for i in range(max(len(f_rows), len(p_rows))):
        left = f_rows[i] if i < len(f_rows) else ("", "")
        right = p_rows[i] if i < len(p_rows) else ("", "")
        wall.add_row(*left, *right)
    parts.append(wall)
    cats = Table(title="where the time goes: CPU by category (share of profiled time)")
    cats.add_column("category")
    cats.add_column("Faust worker", justify="right")
    cats.add_column("plain loop", justify="right")
    fc, pc = where["faust"]["categories"], where["plain_loop"]["categories"]
    for name in sorted(set(fc) | set(pc), key=lambda n: -fc.get(n, {"s": 0})["s"]):
        cats.add_row(name, _share(fc.get(name)), _share(pc.get(name)))
    parts.append(cats)
    for label, key in (("Faust worker", "faust"), ("plain loop", "plain_loop")):
        top = Table(title=f"top functions by own time: {label}")
        for column in ("function", "calls", "own s", "µs/order"):
            top.add_column(column, justify="left" if column == "function" else "right")
        for f in where[key]["top_functions"][:8]:
            top.add_row(f["function"], f"{f['calls']:,.0f}", f"{f['own_s']:.2f}",
                        f"{f['own_us_per_event']:.0f}")
        parts.append(top)
    if where.get("notes"):
        parts.append("\n".join(f"- {n}" for n in where["notes"]))
    return Group(*parts)


def _us(entry: dict[str, float] | None) -> str:
    return "-" if entry is None else f"{entry['us_per_event']:.0f}"


def _share(entry: dict[str, float] | None) -> str:
    return "-" if entry is None else f"{entry['share']:.0%} ({entry['us_per_event']:.0f} µs)"


def plan(sizes: Sizes) -> list[str]:
    """The steps of a run, in order (the progress bar counts them)."""
    steps = ["envelope: sign/verify/admit on one core"]
    for i, partitions in enumerate(sizes.partitions):
        steps.append(f"stack: {partitions} partitions up, world published, worker started")
        if i == 0:
            steps += ["walk-up latency", "settlement finality latency",
                      f"re-pricing, {sizes.reprice_sessions} sessions: setup",
                      "re-pricing latency"]
        for workers in sizes.workers:
            steps.append(f"throughput: {partitions} partitions, {workers} worker(s)")
        if i == 0:
            steps += ["profile: Faust worker", "plain loop: throughput", "profile: plain loop",
                      "audit replay rate"]
        steps.append(f"stack: {partitions} partitions down")
    return steps


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
    def _start_sink(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, **self.settings.as_environ())
        log = open(self.settings.state_dir / "sink.log", "ab")  # noqa: SIM115 - the child keeps it
        return subprocess.Popen([sys.executable, "-m", "chargemesh.infra.sink_main"],
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

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
        if self.sink.poll() is not None:
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
            self.dep.issuer.issue_credential(operator, ["GRID_OPERATOR"], "US-CA",
                                             attributes={"grid_zones": zone}),
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
            from chargemesh.processors.runtime.app import decision_id

            zone_joined = {decision_id(c, 1_000) for c in self._calendar_ids(stations)}
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
            from_ms = setup["start"] + (5 + r) * 60_000
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
                        latencies.append((now - sent) * 1000)
            last.append(latencies[-1])
        out: dict[str, Any] = {"sessions": float(setup["sessions"]), "rounds": float(rounds),
                               **latency_summary(latencies), "all_sessions_ms_worst": max(last)}
        return out

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        if self.sink.poll() is None:
            self.sink.send_signal(signal.SIGTERM)
            try:
                self.sink.wait(20)
            except subprocess.TimeoutExpired:
                self.sink.kill()
        self.decisions.close()
        self.stack.down()


REBALANCE_SETTLE_S = 1.0


class ProfiledWorker(WorkerProcess):
    """A worker under cProfile (``python -m cProfile -o``); SIGTERM dumps the profile."""

    def __init__(self, settings: Settings, index: int, path: Path) -> None:
        super().__init__(settings, index, loglevel="info")
        self.profile_path = path

    def start(self) -> ProfiledWorker:
        env = dict(os.environ, **self.settings.as_environ())
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cProfile", "-o", str(self.profile_path),
             "-m", "chargemesh.infra.stack.worker_main", "--index", str(self.index),
             "--loglevel", self.loglevel],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()


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


# ---- the plain loop (child process) -------------------------------------------------------------

PLAIN_BATCH_MAX = 500
PLAIN_BATCH_WAIT_S = 0.005


class PlainLoop:
    """The market processor's work without Faust: one confluent-kafka consumer assigned every
    market partition (from the Faust group's committed offsets), the same pure steps, outputs
    produced and acknowledged, then the station state written and acknowledged, per batch."""

    def __init__(self, settings: Settings, profile: bool,
                 from_offsets: dict[int, int] | None = None) -> None:
        from chargemesh.processors.runtime.app import (
            APP_ID,
            ChangelogTable,
            load_anchors,
            load_processor_signer,
        )
        from chargemesh.processors.governance import TrustAnchor
        from chargemesh.streams import topics
        from confluent_kafka import Consumer, Producer, TopicPartition

        self.settings = settings
        self.signer = load_processor_signer(settings)
        self.store, self.ledgers, self.positions = asyncio.run(self._restore(
            load_anchors(settings), [TrustAnchor(self.signer.credential_id,
                                                 self.signer.public_key)],
            ChangelogTable(topics.STATION_LEDGER_STATE.name),
            ChangelogTable(topics.EVENT_POSITION_STATE.name)))
        self.partitions = topics.partitions_for(topics.MARKET, settings.partitions)
        self.consumer = Consumer(dict(settings.kafka_client_config(), **{
            "group.id": APP_ID, "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": settings.consumer_fetch_wait_ms}))
        wanted = [TopicPartition(topics.MARKET.name, p) for p in range(self.partitions)]
        committed = self.consumer.committed(wanted, timeout=10)
        # From the Faust group's committed offsets, or past what an earlier plain loop did.
        self.next_offsets = {tp.partition: max(tp.offset, (from_offsets or {}).get(
            tp.partition, 0), 0) for tp in committed}
        self.consumer.assign([TopicPartition(topics.MARKET.name, p, o)
                              for p, o in self.next_offsets.items()])
        self.producer = Producer(dict(settings.kafka_client_config(), **{
            "acks": "all", "linger.ms": 2, "enable.idempotence": False,
            "message.max.bytes": topics.MESSAGE_BYTES_MAX}))
        self.phases: dict[str, float] = {}
        self.profiles: dict[str, cProfile.Profile] = {}
        self.profile = profile
        self.events = self.batches = 0
        self.first_s = self.last_s = 0.0

    async def _restore(self, anchors: list[Any], processors: list[Any], *tables: Any) -> Any:
        from aiokafka import AIOKafkaProducer
        from chargemesh.processors.runtime.app import read_changelog
        from chargemesh.processors.runtime.follower import GovernanceFollower
        from chargemesh.streams import topics

        follower = GovernanceFollower(self.settings.kafka_client_config(), anchors, processors)
        await follower.start()
        await follower.catch_up()
        await follower.stop()
        producer = AIOKafkaProducer(bootstrap_servers=self.settings.bootstrap_servers.split(","),
                                    acks="all", enable_idempotence=False)
        await producer.start()
        try:
            parts = list(range(topics.partitions_for(topics.MARKET, self.settings.partitions)))
            for table in tables:
                await read_changelog(self.settings, table, parts, producer)
        finally:
            await producer.stop()
        return (follower.store, *tables)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        prof = None
        if self.profile:
            prof = self.profiles.setdefault(name, cProfile.Profile())
            prof.enable()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - started
            if prof is not None:
                prof.disable()

    def run(self, stop: Callable[[], bool]) -> None:
        while not stop():
            with self.phase("consume"):
                msgs = [m for m in self.consumer.consume(PLAIN_BATCH_MAX, PLAIN_BATCH_WAIT_S)
                        if not m.error()]
            if msgs:
                if not self.first_s:
                    self.first_s = time.perf_counter()
                self.batch(msgs)
                self.last_s = time.perf_counter()

    def batch(self, msgs: list[Any]) -> None:
        from chargemesh.processors.ledger import state as ledger
        from chargemesh.processors.runtime.app import DECISION_ROUTES, expected_partition, seal_decision
        from chargemesh.processors.ingress import Admitted, Refused, admit, rejection_record
        from chargemesh.processors.ledger.step import market_step
        from chargemesh.processors.reasons import Reason, Rejection
        from chargemesh.schemas.codec import catalog
        from chargemesh.streams import topics
        from chargemesh.streams.envelope import REJECTED_SCHEMA

        outputs: list[tuple[str, bytes, bytes, list[tuple[str, bytes]] | None]] = []
        touched: dict[str, ledger.LedgerState] = {}
        partition_of: dict[str, int] = {}
        first_seen: dict[str, str] = {}
        for msg in msgs:
            key, value, partition, offset = msg.key(), msg.value(), msg.partition(), msg.offset()
            self.next_offsets[partition] = offset + 1
            with self.phase("verify (ingress.admit)"):
                verdict = admit(value, key, msg.topic(), self.store)
            if isinstance(verdict, Admitted) and partition != expected_partition(
                    key or b"", self.settings.partitions):
                verdict = Refused(Rejection.of(Reason.KEY_MISMATCH, "not on the key's partition"),
                                  verdict.event)
            if isinstance(verdict, Refused):
                record = rejection_record(value, msg.topic(), partition, offset, verdict,
                                          int(time.time() * 1000))
                outputs.append((topics.REJECTIONS.name, msg.topic().encode(),
                                catalog().single_object_encode(REJECTED_SCHEMA, record), None))
                continue
            station = verdict.event.body.subject_key
            state = touched.get(station)
            if state is None:
                with self.phase("state decode (load_state)"):
                    raw = self.ledgers.get(station.encode())
                    state = ledger.load_state(raw) if raw else ledger.LedgerState(station)
                touched[station], partition_of[station] = state, partition
            event_id = verdict.event.event_id
            seen = first_seen.get(event_id)
            if seen is None:
                raw_pos = self.positions.get(event_id.encode())
                seen = raw_pos.decode() if raw_pos else None
            with self.phase("ledger (market_step)"):
                step = market_step(state, verdict, partition, offset, seen, self.store)
            if not step.applied:
                continue
            if not step.replay and event_id not in first_seen:
                first_seen[event_id] = f"{partition}:{offset}"
                outputs.append((topics.ADMITTED.name, key or b"", value, [
                    ("source_topic", msg.topic().encode()),
                    ("source_partition", str(partition).encode()),
                    ("source_offset", str(offset).encode())]))
            with self.phase("sign decisions (seal)"):
                for i, d in enumerate(step.decisions):
                    sealed = seal_decision(self.signer, state, verdict.event, i, d)
                    _, topic, key_field = DECISION_ROUTES[d[0]]
                    outputs.append((topic, str(d[1][key_field]).encode(), sealed.encode(),
                                    None))
            if step.rejection is not None:
                record = rejection_record(value, msg.topic(), partition, offset,
                                          Refused(step.rejection, verdict.event),
                                          int(time.time() * 1000))
                outputs.append((topics.REJECTIONS.name, msg.topic().encode(),
                                catalog().single_object_encode(REJECTED_SCHEMA, record), None))
        with self.phase("publish outputs (produce + ack)"):
            for topic, key, value, headers in outputs:
                self._produce(topic, key, value, headers=headers)
            self._flush()
        with self.phase("state encode (dump_state)"):
            writes = [(self.ledgers, station.encode(), partition_of[station],
                       ledger.dump_state(state)) for station, state in touched.items()]
            writes += [(self.positions, eid.encode(), int(pos.split(":")[0]), pos.encode())
                       for eid, pos in first_seen.items()]
        with self.phase("persist state (produce + ack)"):
            for table, key, part, value in writes:
                self._produce(table.topic, key, value, partition=part)
            self._flush()
            for table, key, _, value in writes:
                table.data[key] = value
        self.events += len(msgs)
        self.batches += 1

    def _produce(self, topic: str, key: bytes, value: bytes, **kwargs: Any) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, **kwargs)
                return
            except BufferError:
                self.producer.poll(0.01)

    def _flush(self) -> None:
        if self.producer.flush(60):
            raise RuntimeError("plain loop: outputs not acknowledged in 60 s")

    def report(self) -> dict[str, Any]:
        wall = (self.last_s - self.first_s) if self.first_s else 0.0
        out: dict[str, Any] = {"events": float(self.events), "batches": float(self.batches),
                               "wall_s": wall, "phases_s": self.phases,
                               "next_offsets": self.next_offsets}
        if self.profile:
            out["profiles"] = {}
            combined: pstats.Stats | None = None
            for name, prof in self.profiles.items():
                stats = pstats.Stats(prof)
                summary = summarise_profile(stats, self.events)
                out["profiles"][name] = summary["top_functions"][:5]
                if combined is None:
                    combined = stats
                else:
                    combined.add(prof)
            if combined is not None:
                summary = summarise_profile(combined, self.events)
                summary["phases"] = {name: {"s": s, "us_per_event": s * 1e6 / max(
                    self.events, 1)} for name, s in self.phases.items() if name != "consume"}
                out["summary"] = summary
        return out


def plain_loop_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_suite plain-loop")
    parser.add_argument("--ready", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--from-offsets", default="{}", help="JSON {partition: offset}")
    args = parser.parse_args(argv)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda s, f: stopping.append(s))
    loop = PlainLoop(load_settings(), args.profile,
                     {int(k): int(v) for k, v in json.loads(args.from_offsets).items()})
    Path(args.ready).write_text("ready")
    try:
        loop.run(lambda: bool(stopping))
    finally:
        loop.consumer.close()
        Path(args.report).write_text(json.dumps(loop.report()))


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
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(self.log, "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = WAIT_S_MAX) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("plain loop did not start:\n" + log_tail(self.log))
            time.sleep(0.05)

    def stop(self) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        loaded: dict[str, Any] = json.loads(self.report.read_text())
        return loaded


# ---- the run ------------------------------------------------------------------------------------


class Progress:
    """A rich progress bar over the plan's steps (on stderr), or nothing."""

    def __init__(self, steps: list[str], enabled: bool) -> None:
        self.steps, self.done = steps, 0
        self.seconds: dict[str, float] = {}
        self._since = time.monotonic()
        self.bar: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                    MofNCompleteColumn(), TimeElapsedColumn(),
                                    console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task(steps[0], total=len(steps))
            self.bar.start()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self.bar is not None:
            self.bar.update(self.task, description=name)
        yield
        self._tick(name)
        if self.bar is not None:
            self.bar.update(self.task, advance=1)

    def _tick(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._since
        self._since = now
        self.done += 1

    def describe(self, name: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=name)

    def advance(self) -> None:
        self._tick(self.steps[min(self.done, len(self.steps) - 1)])
        if self.bar is not None:
            index = min(self.done, len(self.steps) - 1)
            self.bar.update(self.task, advance=1, description=self.steps[index])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_suite(sizes: Sizes, sizes_name: str = "custom", progress: bool = True,
              work_dir: Path | None = None) -> dict[str, Any]:
    started = time.monotonic()
    steps = plan(sizes)
    bar = Progress(steps, progress)
    results: dict[str, Any] = {"sizes_name": sizes_name, "sizes": dataclasses.asdict(sizes),
                               "machine": {"cores": os.cpu_count() or 1,
                                           "load_avg_at_start": list(os.getloadavg())},
                               "targets": TARGETS, "scaling": []}
    try:
        with tempfile.TemporaryDirectory(prefix="chargemesh-bench-suite-",
                                         dir=work_dir) as tmp:
            with bar.step(steps[0]):
                results["envelope"] = bench_envelope()
            for index, partitions in enumerate(sizes.partitions):
                _run_stack(Path(tmp) / f"p{partitions}", sizes, partitions, index == 0,
                           results, bar)
    finally:
        bar.close()
        results["step_seconds"] = bar.seconds
    results["machine"]["load_avg_at_end"] = list(os.getloadavg())
    _derive(results)
    results["elapsed_s"] = time.monotonic() - started
    results["rows"] = evaluate(results)
    return results


def _run_stack(folder: Path, sizes: Sizes, partitions: int, first: bool,
               results: dict[str, Any], bar: Progress) -> None:
    with bar.step(f"stack: {partitions} partitions up, world published, worker started"):
        stack = SuiteStack(folder, sizes, partitions)
    try:
        if first:
            with bar.step("walk-up latency"):
                stack.walk_up_latency(10)  # warm-up: group join, restore, caches
                results["walk_up"] = stack.walk_up_latency(sizes.walk_ups)
            with bar.step("settlement finality latency"):
                results["settlement_finality"] = stack.finality_latency(sizes.finalities)
            with bar.step(f"re-pricing, {sizes.reprice_sessions} sessions: setup"):
                setup = stack.reprice_setup(sizes.reprice_sessions)
            with bar.step("re-pricing latency"):
                results["reprice"] = stack.reprice_latency(setup, sizes.reprice_rounds)
        for workers in sizes.workers:
            with bar.step(f"throughput: {partitions} partitions, {workers} worker(s)"):
                stack.start_workers(workers)
                run = stack.throughput(f"p{partitions}w{workers}", sizes.orders)
                results["scaling"].append({"partitions": partitions, "workers": workers, **run})
        if first:
            bar.describe("profile: Faust worker")
            _profile_faust_and_plain(stack, sizes, results, bar.advance)
            bar.advance()
            with bar.step("audit replay rate"):
                results["audit"] = _audit(stack, sizes)
    finally:
        with bar.step(f"stack: {partitions} partitions down"):
            stack.close()


def _profile_faust_and_plain(stack: SuiteStack, sizes: Sizes, results: dict[str, Any],
                             bar_step: Callable[[], None]) -> None:
    """Faust worker profiled on its own station set; then the plain loop (timed, then
    profiled) on station sets whose calendars the Faust worker applied."""
    stack.stop_workers()
    profile_path = stack.settings.state_dir / "faust-worker.prof"
    stack.start_workers(1, profile_path=profile_path)
    faust_prof = stack.throughput("fprof", sizes.profile_orders)
    plain_sets = {}
    for tag in ("plain", "pprof"):
        plain_sets[tag] = stack.station_set(tag, sizes.stations)
        stack.warm(plain_sets[tag], tag)
    stack.stop_workers()
    faust_events = int(faust_prof["orders"])
    if profile_path.exists():
        faust_summary = summarise_profile(pstats.Stats(str(profile_path)), faust_events,
                                          FAUST_PHASES)
    else:  # the worker did not exit through cProfile's handler
        faust_summary = {"profiled_s": 0.0, "events": float(faust_events), "top_functions": [],
                         "categories": {}, "phases": {}, "missing": True}
    bar_step()
    faust_summary["us_per_event_cpu"] = faust_summary["profiled_s"] * 1e6 / faust_events
    faust_summary["us_per_event_wall"] = 1e6 / faust_prof["decided_per_s"]
    faust_summary["worker_log_phases_s"] = faust_prof["worker_phases_s"]

    plain = PlainLoopProcess(stack.settings, "plain-loop", profile=False)
    plain_run = stack.throughput("plain", sizes.orders, plain_sets["plain"],
                                 ready=plain.wait_ready)
    plain_run["loop"] = plain.stop()
    results["plain_loop_run"] = plain_run
    bar_step()
    plain_profiled = PlainLoopProcess(stack.settings, "plain-loop-profiled", profile=True,
                                      from_offsets=plain_run["loop"]["next_offsets"])
    pprof_run = stack.throughput("pprof", sizes.profile_orders, plain_sets["pprof"],
                                 ready=plain_profiled.wait_ready)
    report = plain_profiled.stop()
    plain_summary = report["summary"]
    plain_summary["us_per_event_cpu"] = plain_summary["profiled_s"] * 1e6 / max(
        report["events"], 1)
    plain_summary["us_per_event_wall"] = 1e6 / pprof_run["decided_per_s"]
    plain_summary["phase_top_functions"] = report["profiles"]
    faust_note = ("Faust profile: the whole profiled worker process (start-up, restore and "
                  "its warm-up included, imports excluded)")
    results["where_the_time_goes"] = {
        "faust": faust_summary, "plain_loop": plain_summary,
        "notes": [
            faust_note + "; µs per order divide by the profiled orders; blocking waits "
            "(epoll, consume, flush) are left out of CPU.",
            "plain-loop profile: per phase, only inside the loop's own phases.",
            "cProfile slows both sides; the throughput rows are measured without it.",
        ]}


def _audit(stack: SuiteStack, sizes: Sizes) -> dict[str, Any]:
    from chargemesh.infra.bench.audit import bench_audit

    figures = bench_audit(stack.settings, stack.dep.root.credential_id, "kafka",
                          sizes.audit_rounds)
    figures["cores_used"] = AUDIT_CORES
    return figures


def _derive(results: dict[str, Any]) -> None:
    """Ratios and 'limited by' texts from what was measured."""
    env = results["envelope"]
    verify_us, sign_us = 1e6 / env["ed25519_verify_per_s"], 1e6 / env["sign_per_s"]
    first = results["scaling"][0]
    faust = {**first, "to_clickhouse_per_s_per_worker": first["to_clickhouse_per_s"]}
    ph = faust.get("worker_phases_s", {})
    if ph.get("busy_s"):
        ev = max(ph.get("events", 0.0), 1.0)
        parts = ", ".join(f"{k[:-2]} {v * 1e6 / ev:.0f}" for k, v in sorted(ph.items())
                          if k.endswith("_s") and k != "busy_s" and v)
        faust["limited_by"] = (f"{faust['events_per_batch']:.0f} orders/batch; worker µs/order: "
                               f"busy {ph['busy_s'] * 1e6 / ev:.0f} ({parts})")
    plain = results["plain_loop_run"]
    loop = plain["loop"]
    plain_entry = {**plain, "to_clickhouse_per_s_per_worker": plain["to_clickhouse_per_s"]}
    if loop.get("events"):
        ev = loop["events"]
        top = sorted(((k, v) for k, v in loop["phases_s"].items() if k != "consume"),
                     key=lambda kv: -kv[1])[:3]
        plain_entry["limited_by"] = (f"{ev / max(loop['batches'], 1):.0f} orders/batch; µs/order "
                                     + ", ".join(f"{k} {v * 1e6 / ev:.0f}" for k, v in top))
    pipe = {"faust": faust, "plain_loop": plain_entry,
            "verify_per_s": env["ed25519_verify_per_s"],
            "faust_vs_verify": faust["to_clickhouse_per_s"] / env["ed25519_verify_per_s"],
            "plain_vs_verify": plain["to_clickhouse_per_s"] / env["ed25519_verify_per_s"],
            "framework_cost_us_per_event": 1e6 / faust["decided_per_s"]
            - 1e6 / plain["decided_per_s"],
            "plain_over_faust": plain["decided_per_s"] / faust["decided_per_s"]}
    where = results.get("where_the_time_goes", {})
    if where:
        ph_events = max(ph.get("events", 0.0), 1.0)
        where["faust_wall_us"] = {
            (k[:-2] + (" (between batches: fetch, batching)" if k == "gap_s" else "")):
            v * 1e6 / ph_events for k, v in ph.items() if k.endswith("_s")}
        loop_events = max(loop.get("events", 0.0), 1.0)
        where["plain_wall_us"] = {
            (k + (" (incl. idle before the orders came)" if k == "consume" else "")):
            v * 1e6 / loop_events for k, v in loop.get("phases_s", {}).items()}
        where["plain_wall_us"]["all (first to last batch)"] = loop.get(
            "wall_s", 0.0) * 1e6 / loop_events
        f_cpu = where["faust"]["us_per_event_cpu"]
        p_cpu = where["plain_loop"]["us_per_event_cpu"]
        fw = where["faust"]["categories"].get("framework + event loop", {}).get(
            "us_per_event", 0.0)
        pipe["limited_by"] = (f"profiled CPU/order: Faust {f_cpu:.0f} µs vs plain {p_cpu:.0f} "
                              f"µs; Faust+asyncio own time {fw:.0f} µs/order")
    results["pipeline"] = pipe
    results["walk_up"]["limited_by"] = (
        "one order per batch: fetch wait + batch window + 2 acked produce round trips "
        "(outputs, then state) + reader poll")
    results["settlement_finality"]["limited_by"] = (
        "same path as walk-up: one countersignature per batch, outputs then state acked")
    rp = results["reprice"]
    rp["limited_by"] = (
        f"grid router -> {rp['sessions']:.0f} sessions: 1 routed event per station, then one "
        f"signed RepriceProposed per session ({sign_us:.0f} µs each, "
        f"{rp['sessions'] * sign_us / 1000:.0f} ms of signing) + 2 hops through the broker")
    audit = results["audit"]
    audit["limited_by"] = (f"one core: an Ed25519 verify per record ({verify_us:.0f} µs) plus "
                           "decode, chain checks and settlement recomputation")
    for run in results["scaling"]:
        run["per_worker_per_s"] = run["to_clickhouse_per_s"] / run["workers"]
        run["limited_by"] = (
            f"{results['machine']['cores']} cores shared by workers, broker, ClickHouse, sink "
            f"and this driver; {run['events_per_batch']:.0f} orders/batch")


# ---- the command ----------------------------------------------------------------------------------

import click


def _sizes_from(quick: bool, overrides: dict[str, Any]) -> tuple[Sizes, str]:
    base, name = (QUICK, "quick") if quick else (DEFAULT, "default")
    changes = {k: v for k, v in overrides.items() if v not in (None, ())}
    if changes:
        name += " (adjusted)"
    return dataclasses.replace(base, **changes), name


@click.command(name="bench")
@click.option("--quick", is_flag=True,
              help="Smaller sizes: a run of about 2-3 minutes on 2 shared cores.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the JSON report on stdout (the table goes to stderr).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the JSON report here (default: bench-<time>.json in the state dir).")
@click.option("--orders", type=int, default=None, help="Orders per throughput measurement.")
@click.option("--walk-ups", type=int, default=None)
@click.option("--finalities", type=int, default=None)
@click.option("--reprice-sessions", type=int, default=None)
@click.option("--reprice-rounds", type=int, default=None)
@click.option("--profile-orders", type=int, default=None)
@click.option("--stations", type=int, default=None, help="Stations per throughput measurement.")
@click.option("--partitions", type=int, multiple=True, help="Partition counts (repeat).")
@click.option("--workers", type=int, multiple=True, help="Worker counts (repeat).")
@click.option("--no-progress", is_flag=True)
@click.pass_context
def bench(ctx: click.Context, quick: bool, as_json: bool, out: Path | None, orders: int | None,
          walk_ups: int | None, finalities: int | None, reprice_sessions: int | None,
          reprice_rounds: int | None, profile_orders: int | None, stations: int | None,
          partitions: tuple[int, ...], workers: tuple[int, ...], no_progress: bool) -> None:
    """Measure the pipeline against the Ed25519 verify limit, latencies, audit, scaling and
    where the time goes, on private embedded stacks; print a table and a JSON report."""
    from chargemesh.infra.cli.root import settings_of
    from rich.console import Console

    sizes, name = _sizes_from(quick, dict(  # noqa: C408
        orders=orders, walk_ups=walk_ups, finalities=finalities,
        reprice_sessions=reprice_sessions, reprice_rounds=reprice_rounds,
        profile_orders=profile_orders, stations=stations,
        partitions=tuple(sorted(set(partitions))), workers=tuple(sorted(set(workers)))))
    settings = settings_of(ctx)
    results = run_suite(sizes, name, progress=not no_progress)
    text = json.dumps(results, indent=2, default=str)
    if out is None:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        out = settings.state_dir / time.strftime("bench-%Y%m%d-%H%M%S.json")
    out.write_text(text)
    console = Console(stderr=as_json)
    console.print(render(results))
    console.print(f"JSON report: {out}")
    if as_json:
        click.echo(text)


if __name__ == "__main__":
    if sys.argv[1:2] == ["plain-loop"]:
        plain_loop_main(sys.argv[2:])
    else:
        print(json.dumps(run_suite(QUICK, "quick"), indent=2, default=str))
