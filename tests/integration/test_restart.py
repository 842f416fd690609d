"""What survives a restart: every table, view and CLI read after `chargemesh down` and `up`, and
`chargemesh simulate` run again (and after `demo`) in the same state folder.

Every other test starts a fresh ClickHouse, so none saw that 18.16 had stored the view
`reprices_current` in a form it could not load again (tests/unit/test_views_sql.py names the SQL).
Here a day of data is simulated, the real server is stopped and started on the same data folder,
and every table and view is queried, every CLI read run (same output as before the restart)
and the report built.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chargemesh.infra.config import Settings
from chargemesh.infra.sim.plan import SimConfig, plan_market
from chargemesh.sinks.migrate import clickhouse_client

from tests.conftest import private_settings

pytestmark = pytest.mark.integration
CHARGEMESH = str(Path(sys.executable).parent / "chargemesh")
SMALL = SimConfig(seed=11, stations=10, vehicles=20, hours=4)
RUN_TIMEOUT_S = 300
READ_TIMEOUT_S = 120
# Figures of a read that measure the run, not the data (they differ between two runs).
VOLATILE_KEYS = frozenset({"elapsed_s", "events_per_s", "generated_at_ms"})


def run(env: dict[str, str], *argv: str, timeout_s: float = READ_TIMEOUT_S
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHARGEMESH, *argv], env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)


def simulate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run(env, "simulate", "--seed", str(SMALL.seed), "--stations", str(SMALL.stations),
               "--vehicles", str(SMALL.vehicles), "--hours", str(SMALL.hours),
               "--keep-running", timeout_s=RUN_TIMEOUT_S)


def without_volatile(value: Any) -> Any:
    """A JSON value with the run's own timings dropped, at every depth (bounded by the data)."""
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


def section(stdout: str, title: str) -> list[str]:
    """One table of a command's summary as printed when piped (infra/cli/tables.py: the title,
    the header and one whitespace-separated row a line, then a blank line)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(title))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return [line.rstrip() for line in lines[start:end]]


class Folder:
    """One state folder with a simulated day in it and the stack left running."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = dict(os.environ, **settings.as_environ(), COLUMNS="200")
        self.first: subprocess.CompletedProcess[str] | None = None

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        client = clickhouse_client(self.settings)
        try:
            return list(client.execute(sql, params or {}))
        finally:
            client.disconnect()

    def tables(self) -> list[tuple[str, str]]:
        rows = self.query("SELECT name, engine FROM system.tables WHERE database = "
                          "currentDatabase() ORDER BY name")
        return [(str(name), str(engine)) for name, engine in rows]

    def counts(self) -> dict[str, int]:
        return {name: int(self.query(f"SELECT count() FROM {name}")[0][0])
                for name, _ in self.tables()}

    def reads(self) -> dict[str, list[str]]:
        """Every CLI read of ClickHouse, with arguments taken from the simulated day."""
        prefix = SMALL.prefix
        station = self.query("SELECT station_id FROM slot_ledger WHERE station_id LIKE %(p)s "
                             "ORDER BY station_id LIMIT 1", {"p": f"{prefix}-%"})[0][0]
        dispute = self.query("SELECT dispute_id FROM disputes ORDER BY dispute_id LIMIT 1")[0][0]
        pack = self.query("SELECT pack_id FROM pack_history ORDER BY pack_id LIMIT 1")[0][0]
        fleet = self.query("SELECT fleet_id FROM fleet_accounting LIMIT 1")[0][0]
        authority = self.query("SELECT rate_authority_id FROM settlements WHERE jurisdiction = "
                               "'DE-BY' LIMIT 1")[0][0]
        zone = _a_grid_zone()
        return {
            "ledger show": ["ledger", "show", station, "--json"],
            "disputes list": ["disputes", "list", "--json"],
            "disputes show": ["disputes", "show", dispute, "--json"],
            "fleet report": ["fleet", "report", fleet, "--json"],
            "pack history": ["pack", "history", pack, "--json"],
            "grid observers": ["grid", "observers", zone, "--json"],
            "audit --source clickhouse": ["audit", "--source", "clickhouse", "--authority",
                                          authority, "--json"],
        }


def _a_grid_zone() -> str:
    """A grid zone of the simulated day (its V2G and demand-response sites)."""
    plan = plan_market(SMALL)
    zones = sorted({e.body.subject_key for e in plan.events()
                    if e.event_type.endswith("GridProgramDeclared")})
    assert zones, "the simulated day declares a grid program"
    return zones[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Folder]:
    state = Folder(private_settings(tmp_path_factory.mktemp("restart")))
    state.first = simulate(state.env)
    try:
        assert state.first.returncode == 0, state.first.stdout[-3000:] + state.first.stderr[-3000:]
        yield state
    finally:
        run(state.env, "down")


def test_every_table_view_and_read_survives_a_clickhouse_restart(folder: Folder) -> None:
    tables = folder.tables()
    views = [name for name, engine in tables if engine == "View"]
    assert len(tables) >= 40 and "reprices_current" in views and len(views) >= 15
    counts = folder.counts()
    assert counts["settlements"] > 0 and counts["reprices_current"] > 0
    reads = folder.reads()
    before = {}
    for name, argv in reads.items():
        done = run(folder.env, *argv)
        assert done.returncode in (0, 1), f"{name}: {done.stderr[-2000:]}"
        before[name] = (done.returncode, without_volatile(json.loads(done.stdout)))

    assert run(folder.env, "down").returncode == 0
    up = run(folder.env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "clickhouse" in up.stdout  # the server really started again on the same data

    assert folder.tables() == tables
    assert folder.counts() == counts  # every table and view resolves and holds what it held
    for name, argv in reads.items():
        done = run(folder.env, *argv)
        assert "Traceback" not in done.stderr, f"{name}: {done.stderr[-2000:]}"
        after = (done.returncode, without_volatile(json.loads(done.stdout)))
        assert after == before[name], name
    out = folder.settings.state_dir / "restart-report"
    report = run(folder.env, "report", "--out", str(out))
    assert report.returncode == 0, report.stdout + report.stderr
    pages = list(out.glob("*.html"))
    assert len(pages) == 1 and "Re-pricing timeline" in pages[0].read_text()


def test_simulate_runs_again_in_the_same_folder_and_reports_its_own_run(folder: Folder) -> None:
    assert folder.first is not None
    again = simulate(folder.env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    # Run-scoped figures: the second run of the same seed settles what the first did (its own
    # ids carry the tag r1), and its tables do not add the first run's rows to its own.
    for title in ("Settlements by jurisdiction", "Settlement finality",
                  "Rejections by reason (this run)"):
        assert section(again.stdout, title) == section(folder.first.stdout, title), title
    runs = folder.query("SELECT run_id FROM simulation_runs FINAL ORDER BY started_at_ms")
    assert len(runs) == 2 and "-r1-" in runs[1][0]


def test_demo_after_simulate_summarises_only_the_demo(folder: Folder) -> None:
    done = run(folder.env, "demo", "--keep-running", timeout_s=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finality = section(done.stdout, "Settlement finality")
    assert any(line.split()[0] == "FINAL" for line in finality[2:])
    assert not any("PENDING" in line for line in finality)
    revenue = section(done.stdout, "Settlements by jurisdiction")
    counts = [int(line.split()[2]) for line in revenue[2:]]
    assert sum(counts) == 5  # the demo's five sessions, not the simulated days before it
    assert "cumulative" in done.stdout
