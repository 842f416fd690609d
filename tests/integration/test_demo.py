"""The README's main command (`chargemesh demo`): its day is a scenario of the simulator's planner
(pure, tagged per run, narrated phases), and on a private embedded stack it runs as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from chargemesh.infra.config import Settings
from chargemesh.infra.sim.plan_demo import DemoConfig, plan_demo

DEMO_TIMEOUT_S = 300
CHARGEMESH = str(Path(sys.executable).parent / "chargemesh")  # the console script


def test_the_demo_day_is_planned_the_same_and_a_tagged_run_shares_no_id() -> None:
    first, again = plan_demo(DemoConfig()), plan_demo(DemoConfig())
    assert [e.encode() for e in first.events()] == [e.encode() for e in again.events()]
    later = plan_demo(DemoConfig(tag="-r1"))
    assert {e.event_id for e in later.events()}.isdisjoint({e.event_id for e in first.events()})
    assert DemoConfig(tag="-r1").station_ids == (
        "demo-r1-sf-mission", "demo-r1-oakland-port", "demo-r1-muenchen-ost")
    ids = [key for phase in later.phases for _, key in phase.barrier]
    assert ids and all("demo-r1-" in key for key in ids)  # it waits only for its own outcomes


def test_the_demo_day_is_a_small_narrated_market() -> None:
    plan = plan_demo(DemoConfig())
    assert len(plan.expected_settlements) == 5 and len(plan.walk_ups) == 1
    assert plan.hostile == {} and plan.refused == {}
    assert [len(sessions) for sessions in plan.grid_events.values()] == [3]
    said = [phase.narration for phase in plan.phases]
    assert said[0].startswith("credentialed 3 stations, 6 vehicles, 1 grid operator under 2 ")
    assert any("walk-up authorised on arrival" in s for s in said)
    assert any("re-priced to 0.61 USD/kWh" in s for s in said)
    assert said[-1].startswith("5 settlements final")
    assert {key for kind, key in plan.phases[-1].barrier if kind == "final"} == set(
        plan.expected_settlements)
    # Each station's events in its own time order (a station's ledger clock is its signed time).
    last: dict[str, int] = {}
    for event in plan.events():
        if event.event_type.rsplit(".", 1)[1] in ("StationHeartbeat", "MeterReadingRecorded",
                                                  "ConnectorHandshakeCompleted",
                                                  "MeterClosedOut"):
            key, at = event.body.subject_key, event.body.occurred_at_ms
            assert at >= last.get(key, 0), (key, event.event_type)
            last[key] = at


@pytest.mark.integration
def test_the_main_command_settles_a_marketplace_and_shuts_down(
        new_stack_settings: Callable[[], Settings]) -> None:
    settings = new_stack_settings()
    env = dict(os.environ, **settings.as_environ())
    done = subprocess.run([CHARGEMESH, "demo"], env=env,
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    said = " ".join(out.split())  # the narration as said, however the console wrapped it
    for step in ("credentialed 3 stations, 6 vehicles", "published 3 slot calendars",
                 "4 reservations", "1 walk-up authorised on arrival",
                 "3 active sessions re-priced", "5 settlements final"):
        assert step in said, step
    # Two jurisdictions settled (DE-BY is roaming under reciprocity), read back from ClickHouse.
    assert "DE-BY" in out and "EUR" in out and "US-CA" in out and "USD" in out
    assert "FINAL" in out and "ENERGY_REPRICED" in out
    status = subprocess.run([CHARGEMESH, "status"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 1, "the demo shut its stack down"
