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

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from chargemesh.infra.sim.chaos_check import (  # noqa: F401 - public names of the suite
    FAULT_KINDS,
    Fault,
    Observed,
    RunResult,
    SCALES,
    SESSION_TIMEOUT_MS,
    Say,
    compare,
    fault_schedule,
)
from chargemesh.infra.sim.chaos_run import (
    run_market,
)
from chargemesh.infra.stack.bootstrap import private_settings
from chargemesh.infra.sim.plan import SimConfig, plan_market
from chargemesh.streams.topics import (
    SETTLEMENTS,
)

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
