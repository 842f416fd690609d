"""The benchmark suite's sizes, targets and pure figures: latency summaries, worker stats parsed
from logs, cProfile categories, the verdicts against the targets and the rendered table."""

from __future__ import annotations

import dataclasses
import pstats
import re
from pathlib import Path
from typing import Any


from chargemesh.infra.bench.ledger import percentile


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
    "seal_decision": "sign decisions (seal)", "admitted_output": "admitted copies",
    "dump_state": "state encode (dump_state)", "load_state": "state decode (load_state)",
    "market_batch": "pipeline (market_batch)",
    "publish": "publish outputs (CPU)", "persist": "persist state (CPU)",
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
