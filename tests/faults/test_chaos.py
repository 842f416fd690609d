"""The fault-injection suite (issue 9, ``infra/sim/chaos.py``).

The CI slice: one faulted run of a small seeded market (a worker SIGKILLed and restarted, the
ClickHouse server killed and restarted, a second worker joining and one of the two killed),
compared with the fault-free run of the same seed. ``pytest -m chaos`` runs the long suite: three
runs of five kills each, for two seeds. Every run uses stacks of its own (never the session's).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chargemesh.infra.sim.chaos import FAULT_KINDS, ChaosSummary, fault_schedule, run_chaos

from tests.conftest import external_stack

SLICE_SESSION_TIMEOUT_MS = 4000  # shorter expiries keep the slice within CI's budget


def test_the_fault_schedule_is_a_function_of_seed_and_run() -> None:
    first = fault_schedule(7, 0, kills=5)
    assert first == fault_schedule(7, 0, kills=5)
    assert first != fault_schedule(7, 1, kills=5) and first != fault_schedule(8, 0, kills=5)
    kinds = [f.kind for f in first]
    assert kinds.count("worker_kill") == 5 and kinds.count("clickhouse_outage") == 1
    assert kinds.index("second_worker") < kinds.index("rebalance_kill")
    assert [f.at for f in first] == sorted(f.at for f in first)
    assert all(0 < f.at < 1 for f in first)


def assert_nothing_lost_doubled_or_forged(summary: ChaosSummary, kills: int) -> None:
    data = summary.as_json()
    problems = [p for run in summary.runs for p in run.problems]
    assert problems == []
    assert data["faults"] == {"worker_kill": kills * data["runs"],
                              "clickhouse_outage": data["runs"],
                              "rebalance_kill": data["runs"]}
    assert set(data["faults"]) == set(FAULT_KINDS)
    for name in ("lost", "extra", "differing", "duplicated", "forged_admitted",
                 "hostile_unrejected", "commits_during_outage"):
        assert data[name] == 0, name
    assert data["hostile"] > 0 and data["events_checked"] > 0
    for run in summary.runs:
        # The faults landed while the market was still being decided, not after it.
        assert any(f.fired_at < 1.0 for f in run.faults if f.kind == "worker_kill")
        outage = next(f for f in run.faults if f.kind == "clickhouse_outage")
        assert "resumed" in outage.detail


@pytest.mark.integration
def test_chaos_slice_loses_doubles_and_forges_nothing(tmp_path: Path) -> None:
    if external_stack():
        pytest.skip("starts and kills stacks of its own")
    summary = run_chaos(seed=7, runs=1, kills=1, scale="small", workdir=tmp_path, say=print,
                        session_timeout_ms=SLICE_SESSION_TIMEOUT_MS)
    print(summary.as_json())
    assert_nothing_lost_doubled_or_forged(summary, kills=1)


@pytest.mark.chaos
@pytest.mark.parametrize("seed", [7, 23])
def test_chaos_long(seed: int, tmp_path: Path) -> None:
    if external_stack():
        pytest.skip("starts and kills stacks of its own")
    summary = run_chaos(seed=seed, runs=3, kills=5, scale="small", workdir=tmp_path, say=print)
    print(summary.as_json())
    assert_nothing_lost_doubled_or_forged(summary, kills=5)
