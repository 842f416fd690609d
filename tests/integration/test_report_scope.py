"""The report reads its own run: `chargemesh simulate` run twice with one seed in one state folder
(the second run's ids tagged ``r1``) gives two reports with the same settlements, revenue and
rejections, each equal to what ClickHouse holds for that run's id prefix, and neither the sum
of both; before any run the report is cumulative and says so."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from chargemesh.infra.stack.bootstrap import DEV_ROOT_ID
from chargemesh.infra.config import Settings
from chargemesh.sinks.migrate import clickhouse_client

from tests.integration.test_report import Page
from tests.integration.test_simulate import CHARGEMESH, RUN_TIMEOUT_S, SMALL

pytestmark = pytest.mark.integration
CLI_TIMEOUT_S = 120
# Sections of the figures that read ClickHouse's market tables (not the run's own records).
MARKET_SECTIONS = ("utilisation", "energy_revenue", "reprice", "rejections")


class Folder:
    """One state folder whose stack `chargemesh` commands share (left up until ``down``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.env = dict(os.environ, **settings.as_environ(), COLUMNS="160")

    def run(self, *argv: str, timeout_s: float = CLI_TIMEOUT_S) -> str:
        done = subprocess.run([CHARGEMESH, *argv], env=self.env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        return done.stdout

    def simulate(self) -> None:
        self.run("simulate", "--seed", str(SMALL.seed), "--stations", str(SMALL.stations),
                 "--vehicles", str(SMALL.vehicles), "--hours", str(SMALL.hours),
                 "--keep-running", timeout_s=RUN_TIMEOUT_S)

    def report(self, out: Path, *run_id: str) -> tuple[dict[str, Any], str]:
        """`chargemesh report [--run-id ID]`: its JSON figures and its HTML."""
        self.run("report", "--out", str(out), *(("--run-id", *run_id) if run_id else ()))
        (page,) = out.glob("report-*.html")
        figures: dict[str, Any] = json.loads(page.with_suffix(".json").read_text())
        return figures, page.read_text(encoding="utf-8")

    def query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        client = clickhouse_client(self.settings)
        try:
            return [tuple(r) for r in client.execute(sql, params)]
        finally:
            client.disconnect()

    def settled(self, prefix: str) -> dict[str, tuple[int, Decimal]]:
        """Per currency, (settlements, revenue) as ``revenue_daily`` counts them, of the
        settlements whose id names one of the run's sessions or trips (``…:<prefix>-…``)."""
        rows = self.query("SELECT currency, count(), sum(total_amount) FROM settlements FINAL "
                          "WHERE position(settlement_id, %(p)s) > 0 AND kind != "
                          "'INTERNAL_ACCOUNTING' AND settlement_id NOT IN (SELECT settlement_id "
                          "FROM settlement_expiries) GROUP BY currency", {"p": f":{prefix}-"})
        return {c: (n, total) for c, n, total in rows}

    def rejected(self, prefix: str) -> Counter[str]:
        """Reason codes of the rejected events signed with one of the run's credentials."""
        rows = self.query("SELECT reason_code, count() FROM rejections FINAL WHERE "
                          "position(author_credential_id, %(p)s) > 0 GROUP BY reason_code",
                          {"p": f":{prefix}-"})
        return Counter(dict(rows))


def shown_settled(figures: dict[str, Any]) -> dict[str, tuple[int, Decimal]]:
    revenue = figures["energy_revenue"]
    counts: Counter[str] = Counter()
    for row in revenue["by_jurisdiction"]:
        counts[row["currency"]] += row["settlements"]
    return {c: (counts[c], Decimal(v)) for c, v in revenue["revenue_by_currency"].items()}


def shown_rejected(figures: dict[str, Any]) -> Counter[str]:
    out: Counter[str] = Counter()
    for row in figures["rejections"]["by_reason_and_topic"]:
        out[row["reason_code"]] += row["count"]
    return out


def test_each_simulated_run_reports_its_own_figures(
        new_stack_settings: Callable[[], Settings], tmp_path: Path) -> None:
    folder = Folder(new_stack_settings())
    try:
        folder.run("up")
        # No run recorded yet: cumulative, and the header says so.
        empty, page = folder.report(tmp_path / "before")
        assert empty["meta"]["run_id"] is None and empty["meta"]["scope"] == "cumulative"
        assert "Scope: cumulative" in page and "no simulation run is recorded" in page
        assert {empty[s]["scope"] for s in (*MARKET_SECTIONS, "latencies")} == {"cumulative"}

        folder.simulate()
        folder.simulate()
        runs = folder.query("SELECT run_id, summary_json FROM simulation_runs FINAL "
                            "ORDER BY started_at_ms", {})
        prefixes = {run_id: json.loads(summary)["prefix"] for run_id, summary in runs}
        assert sorted(prefixes.values()) == [f"s{SMALL.seed}", f"s{SMALL.seed}r1"]

        reports = {run_id: folder.report(tmp_path / run_id, run_id) for run_id in prefixes}
        settled = {run_id: folder.settled(p) for run_id, p in prefixes.items()}
        for run_id, (figures, page) in reports.items():
            prefix = prefixes[run_id]
            assert figures["meta"]["scope"] == f"run {run_id}"
            assert figures["meta"]["id_prefix"] == prefix
            for section in (*MARKET_SECTIONS, "latencies"):
                assert figures[section]["scope"] == f"run {run_id}", section
            assert {t["scope"] for t in figures["tables"]} == {f"run {run_id}"}
            assert f"Scope: run {run_id}" in page and "Scope: cumulative" not in page
            # The run's settlements and revenue per currency, exactly as ClickHouse has them.
            assert shown_settled(figures) == settled[run_id]
            totals = {row[0]: row[1].split(" ") for row in Page.of(page).rows
                      if len(row) == 2 and row[0] in settled[run_id]}  # currency, total
            assert {c: (Decimal(amount), unit) for c, (amount, unit) in totals.items()} == {
                c: (total, c) for c, (_, total) in settled[run_id].items()}
            assert shown_rejected(figures) == folder.rejected(prefix)
            stations = figures["utilisation"]["stations"]
            assert stations and all(s.startswith(f"{prefix}-") for s in stations)

        first, second = (reports[run_id][0] for run_id in prefixes)
        # Same seed, same plan apart from ids: the same figures, not the first plus the second.
        assert shown_settled(first) == shown_settled(second)
        assert shown_rejected(first) == shown_rejected(second)
        assert sum(shown_rejected(first).values()) > 0
        everything = folder.query("SELECT currency, count() FROM settlements FINAL WHERE kind "
                                  "!= 'INTERNAL_ACCOUNTING' AND settlement_id NOT IN (SELECT "
                                  "settlement_id FROM settlement_expiries) GROUP BY currency",
                                  {})
        assert {c: 2 * n for c, (n, _) in shown_settled(first).items()} == dict(everything)
        # Every admitted event is one run's, or the dev governance root's (`up` published it).
        # (the dev root's own events, and its deployment issuer's: the processors' credentials)
        (dev,), = folder.query("SELECT count() FROM events FINAL WHERE author_credential_id = "
                               "%(root)s OR startsWith(author_credential_id, %(under)s)",
                               {"root": DEV_ROOT_ID, "under": DEV_ROOT_ID + ":"})
        assert first["meta"]["events"] == second["meta"]["events"] > 0
        assert first["meta"]["events"] + second["meta"]["events"] + dev == (
            first["meta"]["events_in_database"])
        # The first run's revenue, reported after the second run, reads as it did when the
        # first run was the only one (simulate wrote that report).
        first_id = next(iter(prefixes))
        (alone,) = (folder.settings.state_dir / "reports" / first_id).glob("report-*.json")
        assert json.loads(alone.read_text())["energy_revenue"] == first["energy_revenue"]
    finally:
        subprocess.run([CHARGEMESH, "down"], env=folder.env, capture_output=True,
                       timeout=CLI_TIMEOUT_S, check=False)
