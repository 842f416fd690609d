"""The operator commands: trust anchors, processor lifecycle, the ledger calendar, the topic tail.

Pure parts (topic names, the day grid, the table) run without a stack; the lifecycle runs on a
stack of its own, and the tail and the ledger on the session's stack with a processor worker.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic
from rich.console import Console

from chargemesh.infra.cli import processes as cli_processes
from chargemesh.infra.cli.main import cli
from chargemesh.infra.cli.events import resolve_topic
from chargemesh.infra.cli.ledger import build_day, ledger_table, rate_text, short_id, summary_lines
from chargemesh.infra.cli.processes import ManagedProcess, ProcessorFleet, process_running
from chargemesh.sinks.queries.ledger import Booking, Calendar, ConnectorInfo
from chargemesh.infra.config import Settings
from chargemesh.infra.stack.kafka_admin import admin_client
from chargemesh.infra.stack.supervisor import ProcessRecord
from chargemesh.infra.stack.worker import TopicReader
from chargemesh.infra.stack.embedded import EmbeddedStack
from chargemesh.processors.governance import TrustAnchor
from chargemesh.schemas.codec import catalog
from chargemesh.sinks.clickhouse_sink import ClickHouseSink
from chargemesh.sinks.migrate import clickhouse_client
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import REJECTED_SCHEMA
from chargemesh.streams.keys import Signer
from chargemesh.streams.sdk.participant import now_ms
from chargemesh.streams.topics import DECISIONS, REJECTIONS
from chargemesh.units import DAY_MS

from tests.conftest import Mesh
from tests.support.market import HOUR_MS, SLOT_MS, open_market

TERMINAL_COLUMNS = 100
WAIT_S = 60.0


def run(settings: Settings, *args: str) -> Result:
    """``chargemesh ARGS`` against ``settings`` (passed the way child processes get them)."""
    env: dict[str, str | None] = {**settings.as_environ(), "COLUMNS": str(TERMINAL_COLUMNS),
                                  "CHARGEMESH_CONFIG": None}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.2)


# ---- pure: names, formatting, the day grid ---------------------------------------------------


def test_topics_are_accepted_by_short_or_full_name() -> None:
    assert resolve_topic("settlements") == "chargemesh.settlements.v1"
    assert resolve_topic("decisions.v1") == DECISIONS.name
    assert resolve_topic(REJECTIONS.name) == REJECTIONS.name
    assert resolve_topic("other.team.topic") == "other.team.topic"  # must exist when read
    with pytest.raises(click.BadParameter, match="settlements"):
        resolve_topic("settlement")


def test_rates_and_ids_are_shortened_for_cells() -> None:
    assert rate_text(Decimal("0.400000")) == "0.40"
    assert rate_text(Decimal("0.412500")) == "0.4125"
    assert rate_text(Decimal(12)) == "12.00"
    assert short_id("order-1") == "order-1"
    assert short_id("station-7-vehicle-42-cred") == "…e-42-cred"


def _calendar(day_ms: int) -> Calendar:
    return Calendar(
        version=3, slot_duration_ms=HOUR_MS, horizon_start_at_ms=day_ms - 2 * HOUR_MS,
        horizon_end_at_ms=day_ms + 20 * HOUR_MS, posted_rate_per_kwh="0.350000", currency="EUR",
        connectors=(ConnectorInfo("c1", 150_000, "DC_FAST"), ConnectorInfo("c2", 22_000, "AC_L2")),
    )


def _booking(rid: str, connector: str, start_ms: int, slots: int, status: str = "RESERVED",
             walk_up: bool = False) -> Booking:
    return Booking(rid, connector, f"order-{rid}", f"vehicle-{rid}", start_ms,
                   start_ms + slots * HOUR_MS, Decimal("0.400000"), 10_000, walk_up, status, "")


def test_a_day_has_the_calendars_slots_and_each_booking_in_its_cells() -> None:
    day = dt.date(2030, 3, 1)
    day_ms = int(dt.datetime(2030, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)
    bookings = [
        _booking("night", "c1", day_ms - HOUR_MS, 2),  # from the day before into this one
        _booking("two", "c2", day_ms + 3 * HOUR_MS, 2),
        _booking("walk", "c1", day_ms + 5 * HOUR_MS, 1, walk_up=True),
        _booking("moved", "c2", day_ms + 6 * HOUR_MS, 1, status="REALLOCATED"),
        _booking("gone", "c1", day_ms + 7 * HOUR_MS, 1, status="RELEASED"),
        _booking("tomorrow", "c1", day_ms + DAY_MS, 1),
    ]
    view = build_day("st-1", day, _calendar(day_ms), bookings)
    # The horizon ends at 20:00: 20 hourly slots, 2 connectors.
    assert len(view.slot_starts) == 20 and view.connectors == ("c1", "c2")
    held = {(start - day_ms) // HOUR_MS: (c, b.reservation_id)
            for (start, c), b in view.cells.items()}
    assert held == {0: ("c1", "night"), 3: ("c2", "two"), 4: ("c2", "two"), 5: ("c1", "walk"),
                    6: ("c2", "moved")}
    assert [b.reservation_id for b in view.released] == ["gone"]
    assert view.summary() == {"bookings": 4, "walk_ups": 1, "reallocated": 1, "released": 1,
                              "connector_slots": 40, "booked_connector_slots": 5,
                              "utilisation_pct": 12.5}
    console = Console(file=io.StringIO(), width=TERMINAL_COLUMNS)
    console.print(ledger_table(view, all_slots=False))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "order-walk W" in text and "…der-moved ↻" in text and "┆ order-two" in text
    assert "07:00–20:00" in text and "free ×13" in text  # a free run is one row
    assert max(len(line) for line in text.splitlines()) <= TERMINAL_COLUMNS
    assert summary_lines(view)[0].startswith("bookings: 4 (1 walk-up, 1 moved here)")


def test_without_a_calendar_the_day_shows_the_booked_slots() -> None:
    day_ms = int(dt.datetime(2030, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)
    view = build_day("st-1", dt.date(2030, 3, 1), None,
                     [_booking("a", "c9", day_ms + HOUR_MS, 1),
                      _booking("b", "c8", day_ms + 3 * HOUR_MS, 1)])
    assert view.connectors == ("c8", "c9")
    assert [(s - day_ms) // HOUR_MS for s in view.slot_starts] == [1, 2, 3]
    assert "booked slots only" in summary_lines(view)[1]


# ---- anchors and the process commands without a stack ----------------------------------------


def test_anchors_add_writes_the_file_the_workers_load(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    root, other = Signer.generate("root-a"), Signer.generate("root-b")
    added = run(settings, "anchors", "add", "--authority-id", "root-a",
                "--public-key-hex", root.public_key.hex())
    assert added.exit_code == 0, added.output
    assert TrustAnchor.load_file(settings.trust_anchors_path) == [
        TrustAnchor("root-a", root.public_key)]
    again = run(settings, "anchors", "add", "--authority-id", "root-a",
                "--public-key-hex", root.public_key.hex())
    assert again.exit_code == 0 and "unchanged" in again.output
    rekey = run(settings, "anchors", "add", "--authority-id", "root-a",
                "--public-key-hex", other.public_key.hex())
    assert rekey.exit_code == 1 and "--replace" in rekey.output
    bad = run(settings, "anchors", "add", "--authority-id", "x", "--public-key-hex", "abcd")
    assert bad.exit_code == 2 and "64 hex digits" in bad.output
    run(settings, "anchors", "add", "--authority-id", "root-b",
        "--public-key-hex", other.public_key.hex())
    listed = json.loads(run(settings, "anchors", "list", "--json").stdout)
    assert [e["authority_id"] for e in listed] == ["root-a", "root-b"]
    assert TrustAnchor.load_file(settings.trust_anchors_path)[1].public_key == other.public_key


def test_start_without_trust_anchors_says_how_to_add_them(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "state")
    result = run(settings, "start")
    assert result.exit_code == 1
    assert "chargemesh anchors add --authority-id ID --public-key-hex HEX" in result.output
    assert not (settings.state_dir / "processors.json").exists()


def _proc_start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_stop_never_signals_a_process_that_is_not_the_recorded_one(tmp_path: Path) -> None:
    """A recorded pid now held by another program (other start time, or another command line)
    is left alone: stop only ever signals the very process start launched."""
    settings = Settings(state_dir=tmp_path)
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        worker_argv = (sys.executable, "-m", "chargemesh.infra.stack.worker_main", "--index", "0")
        reused = ManagedProcess(  # same command, but the pid was reused by a later process
            ProcessRecord("worker-0", sleepers[0].pid, "sleep", {}, "w.log", 0),
            ("sleep", "60"), _proc_start_ticks(sleepers[0].pid) - 1)
        other = ManagedProcess(  # the very process, but it runs another command
            ProcessRecord("worker-1", sleepers[1].pid, sys.executable, {}, "w.log", 0),
            worker_argv, _proc_start_ticks(sleepers[1].pid))
        state = {"version": 1, "processes": {p.name: p.to_json() for p in (reused, other)}}
        (tmp_path / "processors.json").write_text(json.dumps(state))
        assert not process_running(reused) and not process_running(other)
        assert run(settings, "ps").exit_code == 1
        result = run(settings, "stop")
        assert result.exit_code == 0, result.output
        assert result.output.count("left alone") == 2
        assert all(s.poll() is None for s in sleepers)
        assert run(settings, "ps").exit_code == cli_processes.EXIT_NOT_RUNNING
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


# ---- the lifecycle on a stack of its own -----------------------------------------------------


def _recorded(settings: Settings) -> dict[str, ManagedProcess]:
    return ProcessorFleet(settings).read_state()


@pytest.mark.integration
def test_start_is_idempotent_restarts_the_dead_and_stop_stops_them(
    new_stack_settings: Callable[[], Settings],
) -> None:
    settings = new_stack_settings()
    stack = EmbeddedStack(settings)
    stack.up()
    try:
        run(settings, "anchors", "add", "--authority-id", "root",
            "--public-key-hex", Signer.generate("root").public_key.hex())
        # Both workers share the deployment's processor key file (no governance here: only the
        # processes are under test).
        Signer.generate("root:processor").save(settings.processor_key_path)
        first = run(settings, "start", "--workers", "2")
        assert first.exit_code == 0, first.output
        procs = _recorded(settings)
        assert list(procs) == ["worker-0", "worker-1", "sink"]
        assert first.output.count("started") == 3
        for proc in procs.values():
            assert process_running(proc)
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            assert cmdline[:3] == [sys.executable.encode(), b"-m", proc.argv[2].encode()]
            assert Path(proc.record.log_path).parent == settings.state_dir.resolve() / "logs"

        again = run(settings, "start", "--workers", "2")
        assert again.exit_code == 0, again.output
        assert again.output.count("already running") == 3
        assert {n: p.pid for n, p in _recorded(settings).items()} == {
            n: p.pid for n, p in procs.items()}

        ps = json.loads(run(settings, "ps", "--json").stdout)
        assert [(p["name"], p["healthy"]) for p in ps] == [
            ("worker-0", True), ("worker-1", True), ("sink", True)]
        status = run(settings, "status")
        assert status.exit_code == 0, status.output
        assert all(name in status.output for name in ("broker", "worker-0", "worker-1", "sink"))

        # A worker dies: ps and status say so, and start brings back that one only.
        os.kill(procs["worker-1"].pid, signal.SIGKILL)
        wait_until(lambda: not process_running(procs["worker-1"]), "worker-1 gone")
        assert run(settings, "ps").exit_code == 1
        assert run(settings, "status").exit_code == 1
        third = run(settings, "start", "--workers", "2")
        assert third.exit_code == 0, third.output
        now = _recorded(settings)
        assert now["worker-1"].pid != procs["worker-1"].pid and process_running(now["worker-1"])
        assert (now["worker-0"].pid, now["sink"].pid) == (procs["worker-0"].pid,
                                                          procs["sink"].pid)

        stopped = run(settings, "stop")
        assert stopped.exit_code == 0, stopped.output
        assert stopped.output.count(": stopped") == 3
        assert not any(process_running(p) for p in now.values())
        assert not (settings.state_dir / "processors.json").exists()
        assert run(settings, "ps").exit_code == cli_processes.EXIT_NOT_RUNNING
        assert "nothing to stop" in run(settings, "stop").output
    finally:
        run(settings, "stop")
        stack.down()


# ---- events tail on the session stack --------------------------------------------------------


def _station_decisions(settings: Settings, station_id: str, count: int) -> None:
    reader = TopicReader(settings, DECISIONS.name)
    try:
        reader.wait_for(lambda rs: sum(r.key == station_id.encode() for r in rs) >= count,
                        timeout_s=WAIT_S)
    finally:
        reader.close()


@pytest.mark.integration
def test_events_tail_decodes_decisions_and_rejections(mesh: Mesh) -> None:
    market = open_market(mesh, f"tail{uuid.uuid4().hex[:6]}", now_ms(),
                         [sdk.connector("c1", 150_000)])
    a, b = market.vehicle("a"), market.vehicle("b")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    slot = market.start_ms + 4 * SLOT_MS
    mesh.publish(market.posted_order(a, "a", slot), market.posted_order(b, "b", slot))
    _station_decisions(mesh.settings, market.station_id, 2)

    lines = run(mesh.settings, "events", "tail", "decisions", "--key",
                market.station_id).stdout.splitlines()
    assert len(lines) == 2
    assert "SlotReserved" in lines[0] and f"order={market.order_id('a')}" in lines[0]
    assert "OrderRejected" in lines[1] and "reason=SLOT_TAKEN" in lines[1]
    assert all(f"key={market.station_id}" in line for line in lines)
    docs = [json.loads(line) for line in run(
        mesh.settings, "events", "tail", DECISIONS.name, "--key", market.station_id,
        "--json").stdout.splitlines()]
    assert [(d["kind"], d["event"]["event_type"].rsplit(".", 1)[1], d["event"]["payload"]
             ["order_id"]) for d in docs] == [
        ("event", "SlotReserved", market.order_id("a")),
        ("event", "OrderRejected", market.order_id("b"))]
    assert docs[0]["event"]["payload"]["rate_per_kwh"] == "0.400000"
    processor = json.loads(mesh.settings.processor_key_path.read_text())["credential_id"]
    assert docs[0]["event"]["signers"] == [processor]

    def refused_b() -> list[dict[str, Any]]:
        out = run(mesh.settings, "events", "tail", "rejections", "--limit", "0", "--json")
        return [d["rejection"] for d in map(json.loads, out.stdout.splitlines())
                if d["kind"] == "rejection"
                and d["rejection"]["author_credential_id"] == b.credential_id]

    wait_until(lambda: bool(refused_b()), "b's rejection on the rejections topic")
    assert refused_b()[0]["reason_code"] == "SLOT_TAKEN"
    text = run(mesh.settings, "events", "tail", "rejections", "--limit", "0").stdout
    assert any("REJECTED SLOT_TAKEN" in line and f"author={b.credential_id}" in line
               for line in text.splitlines())


def _scratch_topic(settings: Settings) -> str:
    name = f"cli-tail-test.{uuid.uuid4().hex[:8]}"
    admin = admin_client(settings)  # held until the result: a dropped client cancels it
    admin.create_topics([NewTopic(name, 1, 1)])[name].result(timeout=30)
    return name


@pytest.mark.integration
def test_events_tail_reports_undecodable_bytes_and_follows_new_records(mesh: Mesh) -> None:
    topic = _scratch_topic(mesh.settings)
    producer = Producer(mesh.settings.kafka_client_config())
    heartbeat = sdk.heartbeat(sdk.Participant.generate("st-scratch"), now_ms())
    rejection = catalog().single_object_encode(REJECTED_SCHEMA, {
        "rejection_id": "r-1", "source_topic": "t", "source_partition": 0, "source_offset": 7,
        "reason_code": "BAD_SIGNATURE", "detail": "tampered", "event_id": "e-1",
        "event_type": "chargemesh.orders.v1.BidPlaced", "author_credential_id": "v-1",
        "rejected_at_ms": 1_790_000_000_000, "raw_bytes": b"\x01\x02"})
    for key, value in ((b"k0", b"\xde\xad\xbe\xef not avro"), (b"st-scratch",
                       heartbeat.encode()), (b"t", rejection)):
        producer.produce(topic, key=key, value=value)
    producer.flush(10)

    docs = [json.loads(line) for line in run(
        mesh.settings, "events", "tail", topic, "--from-beginning", "--json").stdout.splitlines()]
    assert [d["kind"] for d in docs] == ["undecodable", "event", "rejection"]
    assert docs[0]["value_hex_prefix"].startswith("deadbeef")
    assert docs[0]["error"].startswith("MALFORMED_ENVELOPE")
    assert docs[1]["event"]["event_type"] == "chargemesh.capacity.v1.StationHeartbeat"
    assert docs[2]["rejection"]["raw_bytes"] == "0102"
    text = run(mesh.settings, "events", "tail", topic, "--limit", "1").stdout.splitlines()
    assert len(text) == 1 and "REJECTED BAD_SIGNATURE" in text[0]
    undecodable = run(mesh.settings, "events", "tail", topic, "--key", "k0").stdout
    assert "UNDECODABLE" in undecodable and "deadbeef" in undecodable

    def later() -> None:
        time.sleep(1.5)
        producer.produce(topic, key=b"st-scratch", value=heartbeat.encode())
        producer.flush(10)

    thread = threading.Thread(target=later)
    thread.start()
    followed = run(mesh.settings, "events", "tail", topic, "--key", "st-scratch", "--follow",
                   "--timeout", "8")
    thread.join()
    assert followed.exit_code == 0, followed.output
    assert followed.stdout.count("StationHeartbeat") == 2  # the one there, then the new one
    usage = run(mesh.settings, "events", "tail", topic, "--from-beginning", "--follow",
                "--limit", "3")
    assert usage.exit_code == 2
    missing = run(mesh.settings, "events", "tail", "no-such.topic.v1")
    assert missing.exit_code == 1 and "does not exist" in missing.output


# ---- ledger show after the sink wrote the ledger ---------------------------------------------


def _slot_states(settings: Settings, station_id: str) -> dict[str, int]:
    client = clickhouse_client(settings)
    try:
        rows = client.execute("SELECT status, count() FROM slot_ledger FINAL "
                              "WHERE station_id = %(s)s GROUP BY status", {"s": station_id})
        return {status: int(count) for status, count in rows}
    finally:
        client.disconnect()


def _sink_until(settings: Settings, done: Callable[[], bool]) -> None:
    with ClickHouseSink(settings, group_id=f"test-cli-ledger-{uuid.uuid4()}") as sink:
        deadline = time.monotonic() + WAIT_S
        while not done():
            assert time.monotonic() < deadline, "the sink did not write the ledger in time"
            sink.drain_once()


@pytest.mark.integration
def test_ledger_show_draws_the_days_bookings_from_clickhouse(mesh: Mesh) -> None:
    t = now_ms()
    market = open_market(mesh, f"lshow{uuid.uuid4().hex[:4]}", t,
                         [sdk.connector("c1", 50_000), sdk.connector("c2", 50_000)], hours=48,
                         reallocation="SAME_SLOT_OTHER_CONNECTOR")
    v = {name: market.vehicle(name) for name in ("vip", "flex", "late", "other")}
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    day_ms = -(-market.start_ms // DAY_MS) * DAY_MS  # the first whole UTC day of the horizon
    slot, later = day_ms + 2 * HOUR_MS, day_ms + 3 * HOUR_MS
    mesh.publish(
        market.posted_order(v["flex"], "flex", slot, connector_id="c1", curtailable=True),
        market.posted_order(v["vip"], "vip", slot, connector_id="c2", demand_response_priority=5),
        market.posted_order(v["late"], "late", later, connector_id="c1"),
        market.posted_order(v["other"], "other", later, connector_id="c2", slots=2),
    )
    _station_decisions(mesh.settings, market.station_id, 4)
    # Curtailment: the VIP moves to c1 (bumping flex), late cannot move and is released.
    mesh.publish(sdk.capacity_changed(market.station, connector_id="c2", available=True,
                                      power_w=5_000, from_ms=slot, until_ms=slot + SLOT_MS,
                                      cause="CURTAILMENT", at_ms=t + 1),
                 sdk.capacity_changed(market.station, connector_id="c1", available=True,
                                      power_w=5_000, from_ms=later, until_ms=later + SLOT_MS,
                                      cause="CURTAILMENT", at_ms=t + 2))
    _station_decisions(mesh.settings, market.station_id, 7)
    _sink_until(mesh.settings, lambda: _slot_states(mesh.settings, market.station_id) == {
        "RESERVED": 1, "REALLOCATED": 1, "RELEASED": 2})

    date = dt.datetime.fromtimestamp(day_ms / 1000, tz=dt.UTC).date().isoformat()
    shown = run(mesh.settings, "ledger", "show", market.station_id, "--date", date)
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert max(len(line) for line in text.splitlines()) <= TERMINAL_COLUMNS
    vip, other = market.order_id("vip"), market.order_id("other")
    assert f"{short_id(vip)} ↻" in text and f"┆ {short_id(other)}" in text
    assert "0.40" in text and "free" in text
    assert "bookings: 2 (0 walk-up, 1 moved here) · released: 2" in text
    assert "utilisation: 1.6% (3/192 connector-slots)" in text

    doc = json.loads(run(mesh.settings, "ledger", "show", market.station_id, "--date", date,
                         "--json").stdout)
    booked = {b["order_id"]: b for b in doc["bookings"]}
    assert set(booked) == {vip, other}
    # The REALLOCATED row carries no order, vehicle or rate: they come from SlotReserved.
    assert (booked[vip]["status"], booked[vip]["connector_id"], booked[vip]["rate_per_kwh"],
            booked[vip]["vehicle_credential_id"]) == (
        "REALLOCATED", "c1", "0.400000", v["vip"].credential_id)
    assert {b["order_id"] for b in doc["released"]} == {market.order_id("flex"),
                                                         market.order_id("late")}
    cells = {s["start_at_ms"]: s["cells"] for s in doc["slots"]}
    assert cells[slot] == {"c1": booked[vip]["reservation_id"], "c2": None}
    assert cells[later + SLOT_MS]["c2"] == booked[other]["reservation_id"]
    assert doc["summary"]["utilisation_pct"] == round(100 * 3 / 192, 2)
    unknown = run(mesh.settings, "ledger", "show", f"nobody-{uuid.uuid4()}")
    assert unknown.exit_code == 1 and "no calendar and no bookings" in unknown.output
