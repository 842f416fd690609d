"""The benchmark suite's run: one private stack per partition count, measurements in order, the
profiles and the derived figures (``run_suite``)."""

from __future__ import annotations

import dataclasses
import os
import pstats
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chargemesh.infra.bench.figures import AUDIT_CORES, FAUST_PHASES, Sizes, TARGETS, evaluate, plan, summarise_profile
from chargemesh.infra.bench.suite_stack import PlainLoopProcess, SuiteStack
from chargemesh.infra.bench.ledger import bench_envelope


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
