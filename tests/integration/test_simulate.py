"""`chargemesh simulate`: the plan is a pure function of its seed and exercises every capability;
one small run on a private stack settles in several currencies and rejects every hostile event
with its reason, as ClickHouse shows afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from chargemesh.infra.config import Settings
from chargemesh.infra.sim.plan import SimConfig, plan_market
from chargemesh.sinks.migrate import clickhouse_client

CHARGEMESH = str(Path(sys.executable).parent / "chargemesh")
SMALL = SimConfig(seed=11, stations=10, vehicles=20, hours=4)
RUN_TIMEOUT_S = 240

EVERY_CAPABILITY = (
    "station_ac_l2", "station_dc_fast", "station_mcs", "station_destination", "station_depot",
    "station_swap", "station_mobile", "station_v2g", "station_wireless_road",
    "posted_reservation", "walk_up", "no_show", "station_fault", "grid_event", "reprice",
    "v2g_session", "fleet_internal_session", "battery_swap", "mobile_relocation",
    "mobile_session", "wireless_trip", "megawatt_session", "overnight_session",
    "roaming_with_reciprocity", "roaming_without_reciprocity", "dispute", "revocation",
    "hostile_forged_signature", "hostile_replayed_event_id", "hostile_double_booking",
    "hostile_meter_went_backwards",
    # issue 16's market rules in the day
    "price_window", "curtailment_unobserved", "tariff_version", "reprice_unanswered",
    "settlement_expiry", "settlement_reversal")


def test_the_same_seed_plans_the_same_bytes_and_another_seed_does_not() -> None:
    first, again = plan_market(SMALL), plan_market(SMALL)
    assert [e.encode() for e in first.events()] == [e.encode() for e in again.events()]
    assert [p.label for p in first.phases] == [p.label for p in again.phases]
    other = plan_market(SimConfig(seed=12, stations=10, vehicles=20, hours=4))
    assert {e.event_id for e in other.events()}.isdisjoint({e.event_id for e in first.events()})
    assert [e.encode() for e in other.events()] != [e.encode() for e in first.events()]


def test_the_plan_exercises_every_capability_and_the_hostile_fraction() -> None:
    plan = plan_market(SMALL)
    missing = [c for c in EVERY_CAPABILITY if plan.capabilities.get(c, 0) < 1]
    assert missing == []
    assert set(plan.hostile.values()) == {"FORGED_SIGNATURE", "REPLAYED_EVENT_ID",
                                          "DOUBLE_BOOKING", "METER_WENT_BACKWARDS"}
    assert set(plan.refused.values()) == {"NO_RECIPROCITY", "CREDENTIAL_REVOKED"}
    # A replay is the same bytes published twice; everything else appears once.
    ids = [e.event_id for e in plan.events()]
    twice = {i for i in ids if ids.count(i) > 1}
    assert twice == {i for i, k in plan.hostile.items() if k == "REPLAYED_EVENT_ID"}
    # A bigger market scales the hostile fraction with it.
    bigger = plan_market(SimConfig(seed=11, stations=24, vehicles=200, hours=24,
                                   hostile_fraction=0.05))
    assert len(bigger.hostile) > len(plan.hostile)


def test_each_station_publishes_in_its_own_time_order() -> None:
    plan = plan_market(SMALL)
    station_clock = {"CapacityChanged", "StationHeartbeat", "ConnectorHandshakeCompleted",
                     "MeterReadingRecorded", "MeterClosedOut"}
    last: dict[str, int] = {}
    for event in plan.events():
        if event.event_type.rsplit(".", 1)[1] not in station_clock:
            continue
        if event.event_id in plan.hostile:
            continue
        key, at = event.body.subject_key, event.body.occurred_at_ms
        assert at >= last.get(key, 0), (key, event.event_type)
        last[key] = at


@pytest.mark.integration
def test_a_small_simulated_market_on_its_own_stack(
        new_stack_settings: Callable[[], Settings]) -> None:
    settings = new_stack_settings()
    env = dict(os.environ, **settings.as_environ(), COLUMNS="160")
    done = subprocess.run(
        [CHARGEMESH, "simulate", "--seed", str(SMALL.seed), "--stations", str(SMALL.stations),
         "--vehicles", str(SMALL.vehicles), "--hours", str(SMALL.hours), "--keep-running"],
        env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    try:
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        assert "Settlements by jurisdiction" in done.stdout
        plan = plan_market(SMALL)
        client = clickhouse_client(settings)
        try:
            currencies = client.execute(
                "SELECT currency, count() FROM settlements FINAL WHERE settlement_id LIKE "
                "%(p)s GROUP BY currency ORDER BY currency", {"p": f"%:{SMALL.prefix}-%"})
            assert len(currencies) >= 2 and {"USD", "EUR"} <= {c for c, _ in currencies}
            reasons = dict(client.execute(
                "SELECT event_id, any(reason_code) FROM rejections FINAL WHERE event_id IN "
                "%(e)s GROUP BY event_id", {"e": tuple(plan.hostile)}))
            assert set(reasons) == set(plan.hostile)  # every hostile event, by its id
            expected = {"FORGED_SIGNATURE": "BAD_SIGNATURE",
                        "REPLAYED_EVENT_ID": "REPLAYED_EVENT_ID",
                        "DOUBLE_BOOKING": "SLOT_TAKEN",
                        "METER_WENT_BACKWARDS": "METER_WENT_BACKWARDS"}
            assert {eid: expected[k] for eid, k in plan.hostile.items()} == reasons
            kinds = dict(client.execute(
                "SELECT kind, count() FROM simulation_latencies FINAL WHERE run_id IN "
                "(SELECT run_id FROM simulation_runs FINAL WHERE seed = %(s)s) GROUP BY kind",
                {"s": SMALL.seed}))
            assert {"walk_up_authorisation", "settlement_finality", "reprice"} <= set(kinds)
            statuses = dict(client.execute(
                "SELECT status, count() FROM settlements_status WHERE settlement_id LIKE %(p)s "
                "GROUP BY status", {"p": f"%:{SMALL.prefix}-%"}))
            # issue 16: one settlement left unsigned expires; one reversed after a revocation
            # (its reversal is itself FINAL)
            assert statuses == {"FINAL": len(plan.expected_settlements) - 2,
                                "EXPIRED": 1, "REVERSED": 1}
            stopped = client.execute(
                "SELECT count() FROM session_lifecycle WHERE stage = 'STOPPED' AND stop_reason = "
                "'REPRICE_REFUSED' AND session_id LIKE %(p)s", {"p": f"%:{SMALL.prefix}-%"})
            assert stopped == [(plan.capabilities["reprice_unanswered"],)]
        finally:
            client.disconnect()
    finally:
        subprocess.run([CHARGEMESH, "down"], env=env, capture_output=True, timeout=120,
                       check=False)
