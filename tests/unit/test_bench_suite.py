"""``chargemesh bench``: its pure parts, and one tiny real run of the whole suite.

No assertion here is about time: only that every section is there, with numbers in it.
"""

from __future__ import annotations

import cProfile
import json
import math
import pstats

import pytest
from chargemesh.infra.bench import suite
from chargemesh.infra.cli.main import cli
from click.testing import CliRunner

WORKER_LOG = """\
INFO market: 120 events in 4 batches (30.0 per batch), busy 0.40s decide=0.10s publish=0.05s \
tables=0.07s verify=0.12s offsets {0: (1, 9)}
noise
INFO market: 80 events in 4 batches (20.0 per batch), busy 0.20s publish=0.02s offsets {}
"""

TINY = suite.Sizes(orders=60, walk_ups=3, finalities=3, reprice_sessions=12, reprice_rounds=1,
                   profile_orders=40, stations=3, vehicles=16, partitions=(4,), workers=(1,),
                   audit_rounds=1, stats_wait_s=0.0)


def test_worker_stats_are_summed_over_the_logged_lines() -> None:
    stats = suite.parse_worker_stats(WORKER_LOG)
    assert stats["events"] == 200 and stats["batches"] == 8
    assert math.isclose(stats["busy_s"], 0.6) and math.isclose(stats["publish_s"], 0.07)
    assert stats["events_per_batch"] == 25
    assert suite.parse_worker_stats("nothing logged") == {"events": 0.0, "batches": 0.0,
                                                          "busy_s": 0.0}


def test_latency_summary_and_profile_categories() -> None:
    summary = suite.latency_summary([float(v) for v in range(1, 101)])
    assert (summary["p50_ms"], summary["p99_ms"], summary["max_ms"]) == (51.0, 99.0, 100.0)
    verify = ("~", 0, ("<method 'verify' of 'cryptography.hazmat.bindings._rust.openssl."
                       "ed25519.Ed25519PublicKey' objects>"))
    assert suite.category_of(verify) == "ed25519 (sign/verify)"
    assert suite.category_of(("/x/asyncio/base_events.py", 1, "_run_once")) == (
        "framework + event loop")
    assert suite.is_blocking(("~", 0, "<method 'poll' of 'select.epoll' objects>"))
    assert not suite.is_blocking(verify)


def test_profile_summary_has_phases_per_event() -> None:
    prof = cProfile.Profile()
    prof.enable()
    json.dumps([{"k": i} for i in range(2_000)])
    prof.disable()
    summary = suite.summarise_profile(pstats.Stats(prof), events=10, phases={"dumps": "encode"},
                                      phase_files=("json",))
    assert summary["events"] == 10 and summary["top_functions"]
    assert summary["phases"]["encode"]["us_per_event"] > 0
    assert math.isclose(sum(c["share"] for c in summary["categories"].values()), 1.0)


def test_plan_counts_every_step_and_sizes_adjust() -> None:
    steps = suite.plan(suite.Sizes(partitions=(4, 8), workers=(1, 2)))
    assert len(steps) == 1 + (1 + 4 + 2 + 4 + 1) + (1 + 2 + 1)
    sizes, name = suite._sizes_from(True, {"orders": 10, "partitions": ()})
    assert (sizes.orders, sizes.partitions, name) == (10, suite.QUICK.partitions,
                                                       "quick (adjusted)")


def test_bench_is_a_command_of_its_own() -> None:
    assert cli.get_command(None, "bench") is not None  # type: ignore[arg-type]
    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0 and "--quick" in result.output


def _numbers(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        float(value))


@pytest.fixture(scope="module")
def tiny_results() -> dict[str, object]:
    return suite.run_suite(TINY, "tiny", progress=False)


def test_tiny_real_run_has_every_section_with_numbers(tiny_results: dict[str, object]) -> None:
    r = json.loads(json.dumps(tiny_results, default=str))
    assert all(_numbers(r["envelope"][k]) for k in ("sign_per_s", "ed25519_verify_per_s",
                                                    "admit_per_s"))
    pipe = r["pipeline"]
    for key in ("faust", "plain_loop"):
        assert all(_numbers(pipe[key][k]) for k in ("decided_per_s", "to_clickhouse_per_s",
                                                    "to_clickhouse_per_s_per_worker"))
    assert _numbers(pipe["faust_vs_verify"]) and _numbers(pipe["framework_cost_us_per_event"])
    for key in ("walk_up", "settlement_finality", "reprice"):
        assert _numbers(r[key]["p50_ms"]) and _numbers(r[key]["p99_ms"])
    assert r["reprice"]["sessions"] == TINY.reprice_sessions
    assert _numbers(r["audit"]["events_per_s_best"]) and r["audit"]["events"] > 0
    assert [(s["partitions"], s["workers"]) for s in r["scaling"]] == [(4, 1)]
    assert all(_numbers(s["to_clickhouse_per_s"]) for s in r["scaling"])
    where = r["where_the_time_goes"]
    for key in ("faust", "plain_loop"):
        assert _numbers(where[key]["us_per_event_cpu"]) and where[key]["categories"]
    assert where["plain_loop"]["phases"]
    rows = r["rows"]
    assert {row["figure"].split(",")[0].split(":")[0] for row in rows} >= {
        "Ed25519 verify", "pipeline", "framework cost (Faust vs plain loop)",
        "walk-up authorisation", "re-pricing", "settlement finality", "audit replay",
        "scaling"}
    assert all(row["limited_by"] for row in rows)
    assert all(row["met"] in (True, False) for row in rows if row["target"] != "-"
               and row["target"] != "physical limit")


def test_tiny_run_renders(tiny_results: dict[str, object]) -> None:
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(suite.render(tiny_results))  # type: ignore[arg-type]
    text = console.export_text()
    assert "limited by" in text and "where the time goes" in text
