"""The embedded stack, end to end: real broker, real ClickHouse, the real CLI."""

from __future__ import annotations

import datetime
import os
import signal
import time
import uuid
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer

from chargemesh.infra.cli.main import cli
from chargemesh.infra.config import Settings
from chargemesh.infra.stack.supervisor import ProcessRecord, pid_alive
from chargemesh.infra.stack.embedded import BROKER, CLICKHOUSE, EmbeddedStack, StackError
from chargemesh.sinks.migrate import apply_migrations, clickhouse_client
from chargemesh.streams.topics import MARKET

from tests.conftest import external_stack

pytestmark = pytest.mark.integration

POLLS_MAX = 300
POLL_TIMEOUT_S = 0.1
CONSUME_BATCH_MAX = 10_000
FLUSH_TIMEOUT_S = 10.0
GONE_POLLS_MAX = 100


def _env_for(settings: Settings) -> dict[str, str | None]:
    """The CHARGEMESH_* environment that makes the CLI see exactly these settings."""
    return {
        "CHARGEMESH_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CHARGEMESH_KAFKA_PORT": str(settings.kafka_port),
        "CHARGEMESH_CLICKHOUSE_HOST": settings.clickhouse_host,
        "CHARGEMESH_CLICKHOUSE_PORT": str(settings.clickhouse_port),
        "CHARGEMESH_CLICKHOUSE_HTTP_PORT": str(settings.clickhouse_http_port),
        "CHARGEMESH_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "CHARGEMESH_CONFIG": None,
    }


def _wait_until_gone(record: ProcessRecord) -> None:
    """SIGKILL is asynchronous: the process lingers for a moment after ``kill`` returns."""
    for _ in range(GONE_POLLS_MAX):
        if not pid_alive(record):
            return
        time.sleep(POLL_TIMEOUT_S)
    raise AssertionError(f"pid {record.pid} still alive after SIGKILL")


def _consume_until(consumer: Consumer, wanted: bytes) -> tuple[bytes | None, bytes | None]:
    """Reads in bulk: the topic may already hold other tests' records before ours."""
    for _ in range(POLLS_MAX):
        for message in consumer.consume(CONSUME_BATCH_MAX, POLL_TIMEOUT_S):
            if message.error() is None and message.value() == wanted:
                return message.key(), message.value()
    return None, None


def test_a_produced_record_reaches_a_consumer_group(stack_settings: Settings) -> None:
    value = f"hello {uuid.uuid4()}".encode()
    producer = Producer({**stack_settings.kafka_client_config(), "enable.idempotence": True})
    producer.produce(MARKET.name, key=b"station-1", value=value)
    assert producer.flush(FLUSH_TIMEOUT_S) == 0

    consumer = Consumer(
        {
            **stack_settings.kafka_client_config(),
            "group.id": f"test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": stack_settings.session_timeout_ms,
            "heartbeat.interval.ms": stack_settings.session_timeout_ms // 3,
        }
    )
    try:
        consumer.subscribe([MARKET.name])
        key, got = _consume_until(consumer, value)
    finally:
        consumer.close()
    assert (key, got) == (b"station-1", value)


def _event_row(event_id: str) -> dict[str, object]:
    occurred_at = datetime.datetime(2026, 9, 21, 12, 0, 0)
    return {
        "event_id": event_id,
        "event_type": "chargemesh.capacity.v1.CapacityChanged",
        "topic": MARKET.name,
        "kafka_partition": 2,
        "kafka_offset": 41,
        "subject_key": "station-1",
        "author_credential_id": "cred-1",
        "occurred_at_ms": 1_790_000_000_000,
        "occurred_at": occurred_at,
        "schema_fingerprint": "00" * 8,
        "prev_hash": "",
        "event_hash": "ab" * 32,
        "payload_json": '{"capacity_w": 150000}',
        "envelope_bytes": "\x00\x01signed",
        "ingested_at": occurred_at,
    }


def test_events_table_keeps_one_row_per_event_id(stack_settings: Settings) -> None:
    event_id = str(uuid.uuid4())
    row = _event_row(event_id)
    client = clickhouse_client(stack_settings)
    try:
        insert = f"INSERT INTO events ({', '.join(row)}) VALUES"
        client.execute(insert, [row])
        client.execute(insert, [row])  # a replayed batch
        rows = client.execute(
            "SELECT event_id, kafka_offset, payload_json FROM events FINAL WHERE event_id = %(id)s",
            {"id": event_id},
        )
    finally:
        client.disconnect()
    assert rows == [(event_id, 41, '{"capacity_w": 150000}')]


def test_migrations_are_applied_once(stack_settings: Settings) -> None:
    assert apply_migrations(stack_settings) == []


@pytest.mark.skipif(external_stack(), reason="the external stack has no pids of ours")
def test_up_again_reuses_the_running_processes(stack_settings: Settings) -> None:
    stack = EmbeddedStack(stack_settings)
    first = stack.up()
    second = stack.up()
    assert first.pids == second.pids
    assert set(first.pids) == {BROKER, CLICKHOUSE}
    assert second.started == ()
    assert all(component.healthy for component in stack.status())


@pytest.mark.skipif(external_stack(), reason="starts embedded stacks of its own")
def test_up_refuses_ports_another_stack_holds(
    stack_settings: Settings, new_stack_settings: Callable[[], Settings]
) -> None:
    clash = new_stack_settings().with_overrides(kafka_port=stack_settings.kafka_port)
    stack = EmbeddedStack(clash)
    with pytest.raises(StackError, match=str(stack_settings.kafka_port)):
        stack.up()
    assert stack.down() == {}  # nothing was started


@pytest.mark.skipif(external_stack(), reason="starts embedded stacks of its own")
def test_status_reports_a_killed_broker(new_stack_settings: Callable[[], Settings]) -> None:
    settings = new_stack_settings()
    stack = EmbeddedStack(settings)
    try:
        result = stack.up()
        os.kill(result.pids[BROKER], signal.SIGKILL)
        _wait_until_gone(result.processes[BROKER])

        by_name = {component.name: component for component in stack.status()}
        assert not by_name[BROKER].healthy
        assert "not running" in by_name[BROKER].detail
        assert by_name[CLICKHOUSE].healthy

        cli_run = CliRunner().invoke(
            cli, ["--state-dir", str(settings.state_dir), "status"], env=_env_for(settings)
        )
        assert cli_run.exit_code == 1, cli_run.output
        assert "broker" in cli_run.output
    finally:
        outcomes = stack.down()
    assert outcomes[BROKER] == "not running"
    assert outcomes[CLICKHOUSE] == "stopped"
    assert not any(pid_alive(record) for record in result.processes.values())
    assert not (settings.state_dir / "stack.json").exists()
