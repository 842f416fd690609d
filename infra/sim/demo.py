"""The main job: ``chargemesh demo``, a small scripted marketplace day on the embedded stack.

The day is the simulator planner's demo scenario (``infra/sim/plan_demo.py``: two jurisdictions,
three stations, six vehicles, five sessions with one walk-up, a grid price spike re-priced and
accepted, settlements countersigned and co-signed). The simulator's run machinery
(``infra/sim/run.py``) publishes its phases and waits at each one's barrier, saying what was
observed; then what ClickHouse holds about this run is printed and the stack shut down.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from chargemesh.infra.config import Settings
from chargemesh.infra.sim.plan_demo import DemoConfig, plan_demo
from chargemesh.infra.sim.run import Run, deployment_events, worker_and_sink
from chargemesh.infra.stack.embedded import EmbeddedStack
from chargemesh.sinks.migrate import clickhouse_client
from chargemesh.units import HOUR_MS, SECOND_MS

BARRIER_WAIT_S = 90.0  # the first barrier also waits for the worker to start
SUMMARY_WAIT_S_MAX = 90.0
DEMO_RUNS_FILE = "demo-runs.json"
Say = Callable[[str], None]


def next_demo_tag(settings: Settings) -> str:
    """"" for the first demo in this state folder, then "-r1", "-r2", ... (recorded there): every
    id of a run carries its tag, so a demo after a demo or a simulation on the same broker never
    collides with earlier ids and waits only for its own decisions."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    path = settings.state_dir / DEMO_RUNS_FILE
    runs = json.loads(path.read_text()) if path.exists() else []
    tag = "" if not runs else f"-r{len(runs)}"
    path.write_text(json.dumps(runs + [{"tag": tag, "at_ms": int(time.time() * SECOND_MS)}]))
    return tag


@dataclasses.dataclass(frozen=True)
class DemoScope:
    """What one demo run wrote: its stations (their ids carry its tag), rejections since its wall
    start."""

    station_ids: tuple[str, ...]
    wall_since_ms: int


def summary(settings: Settings, scope: DemoScope) -> dict[str, list[tuple[Any, ...]]]:
    """What an analyst sees in ClickHouse afterwards about this demo run (earlier runs in the
    same state folder are left out; the `events` count alone is cumulative and says so)."""
    client = clickhouse_client(settings)
    params = {"s": scope.station_ids, "w": scope.wall_since_ms}
    queries = {
        "revenue": "SELECT jurisdiction, currency, count(), sum(energy_import_wh), "
                   "sum(total_amount) FROM settlements FINAL WHERE station_id IN %(s)s "
                   "GROUP BY jurisdiction, currency ORDER BY jurisdiction",
        "lines": "SELECT kind, count(), sum(amount) FROM settlement_lines FINAL WHERE "
                 "settlement_id IN (SELECT settlement_id FROM settlements FINAL WHERE "
                 "station_id IN %(s)s) GROUP BY kind ORDER BY kind",
        "decisions": "SELECT decision_type, count() FROM ledger_decisions FINAL WHERE "
                     "station_id IN %(s)s GROUP BY decision_type ORDER BY decision_type",
        "reprices": "SELECT stage, count() FROM reprices FINAL WHERE station_id IN %(s)s "
                    "GROUP BY stage ORDER BY stage",
        "finality": "SELECT status, count() FROM settlements_status WHERE station_id IN %(s)s "
                    "GROUP BY status ORDER BY status",
        "rejections": "SELECT reason_code, count() FROM rejections FINAL WHERE rejected_at_ms "
                      ">= %(w)s GROUP BY reason_code ORDER BY reason_code",
        "events": "SELECT count() FROM events FINAL",
    }
    try:
        return {name: list(client.execute(sql, params)) for name, sql in queries.items()}
    finally:
        client.disconnect()


def run_demo(settings: Settings, say: Say, keep_running: bool = False) -> dict[str, Any]:
    """Plan the demo's day (this run's tag, the current hour as its start), publish and await
    it on the embedded stack, and read its summary back from ClickHouse."""
    from chargemesh.infra.cli.anchors import add_anchor

    wall_started_ms = int(time.time() * SECOND_MS)
    stack = EmbeddedStack(settings)
    started = stack.up()
    say(f"stack up: {', '.join(started.started) or 'already running'}")
    try:
        config = DemoConfig(tag=next_demo_tag(settings),
                            day_start_ms=wall_started_ms // HOUR_MS * HOUR_MS)
        plan = plan_demo(config)
        add_anchor(settings.trust_anchors_path, plan.root.credential_id, plan.root.public_key,
                   replace=True)
        deployment = deployment_events(settings, plan)
        with worker_and_sink(settings) as worker:
            run = Run(settings, plan, f"{config.prefix}-{wall_started_ms}", 0.0,
                      lambda _d, _n, _t: None, worker, say=say, strict=True,
                      barrier_wait_s=BARRIER_WAIT_S, deployment=deployment)
            try:
                run.publish_phases()
            finally:
                run.close()
            return _wait_summary(settings, DemoScope(config.station_ids, wall_started_ms),
                                 len(plan.expected_settlements))
    finally:
        if not keep_running:
            stack.down()
            say("stack down")


def _wait_summary(settings: Settings, scope: DemoScope, settlements: int) -> dict[str, Any]:
    """The summary once ClickHouse holds every settlement of the run, final."""
    deadline = time.monotonic() + SUMMARY_WAIT_S_MAX
    result = summary(settings, scope)
    while time.monotonic() < deadline:
        final = sum(n for status, n in result["finality"] if status == "FINAL")
        if sum(row[2] for row in result["revenue"]) >= settlements and final >= settlements:
            break
        time.sleep(0.5)
        result = summary(settings, scope)
    return result


def money_text(value: Decimal) -> str:
    return f"{value:,.2f}"


# ---- the `chargemesh demo` command ------------------------------------------------------------

import click
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.cli.tables import print_table
from rich.console import Console
from rich.table import Table


@click.command()
@click.option("--keep-running", is_flag=True, help="Leave the embedded stack up afterwards.")
@click.pass_context
def demo(ctx: click.Context, keep_running: bool) -> None:
    """Run a scripted marketplace day end to end and summarise it from ClickHouse."""
    console = Console()
    started = time.monotonic()
    settings = settings_of(ctx)

    def say(message: str) -> None:
        console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim]  {message}")

    result = run_demo(settings, say, keep_running=keep_running)
    print_table(console, _revenue_table(result))
    for title, key, headers in (("Settlement lines", "lines", ("kind", "lines", "amount")),
                                ("Ledger decisions", "decisions", ("decision", "count")),
                                ("Re-pricing", "reprices", ("stage", "count")),
                                ("Settlement finality", "finality", ("status", "count")),
                                ("Rejections", "rejections", ("reason", "count"))):
        table = Table(title=title, min_width=len(title) + 4)  # a title never wraps
        for header in headers:
            table.add_column(header, justify="left" if header in ("kind", "decision", "reason",
                                                                  "stage", "status")
                             else "right")
        for row in result[key]:
            table.add_row(*[money_text(v) if isinstance(v, Decimal) else str(v) for v in row])
        print_table(console, table)
    console.print(f"{result['events'][0][0]} signed events in ClickHouse table `events` "
                  "(cumulative: every run in this state folder; the tables above are this "
                  "demo's own). "
                  f"Query it yourself: clickhouse-client --port {settings.clickhouse_port} "
                  f"-d {settings.clickhouse_database}" + ("" if keep_running else
                                                          " (after `chargemesh up`)"))
    console.print(f"done in {time.monotonic() - started:.1f}s")


def _revenue_table(result: dict[str, Any]) -> Table:
    table = Table(title="Settlements by jurisdiction (read back from ClickHouse)")
    for header in ("jurisdiction", "currency", "settlements", "energy kWh", "total"):
        table.add_column(header, justify="left" if header in ("jurisdiction", "currency")
                         else "right")
    for jurisdiction, currency, count, energy_wh, total in result["revenue"]:
        table.add_row(jurisdiction, currency, str(count), f"{energy_wh / 1000:,.3f}",
                      money_text(total))
    return table
