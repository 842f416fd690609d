"""Every command fails the same way: one line on stderr naming the cause and what to do, exit 1,
no traceback (issue 13). ``--debug`` (or ``CHARGEMESH_DEBUG=1``) adds the traceback; a bug says
"internal error" and always shows it.

The stack is absent in most of these tests: free ports nobody listens on, or a socket of the
test's own that holds a port, answers nothing, or answers garbage. Only the missing-table case
uses the session's stack. A few run the real console script, so stderr is exactly what a user
sees (no library log lines, no librdkafka noise).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from chargemesh.infra.stack import preflight
from chargemesh.infra.cli.main import cli
from chargemesh.infra.config import Settings
from chargemesh.sinks.migrate import clickhouse_client
from click.testing import CliRunner, Result

from tests.conftest import private_settings

CONSOLE_SCRIPT = Path(sys.executable).with_name("chargemesh")
SUBPROCESS_TIMEOUT_S = 60
# Short probes for the sockets that accept and never answer (the default is 5 s).
TEST_PROBE_TIMEOUT_S = 1.0
UP_REMEDY = "run `chargemesh up`"

# ---- helpers --------------------------------------------------------------------------------


def environ(settings: Settings, **extra: str) -> dict[str, str]:
    """The process environment for ``settings`` (no CHARGEMESH_* of the developer's shell)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEMESH_")}
    return {**env, **settings.as_environ(), "COLUMNS": "200", **extra}


def invoke(settings: Settings, *args: str) -> Result:
    env: dict[str, str | None] = {**settings.as_environ(), "CHARGEMESH_CONFIG": None,
                                  "CHARGEMESH_DEBUG": None, "COLUMNS": "200"}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def console(settings: Settings, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CONSOLE_SCRIPT), *args], env=environ(settings, **extra_env),
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                          check=False)


def error_line(command: str, stderr: str, output: str) -> str:
    """The one line a failed ``command`` printed, after checking it is the only one and that
    nothing printed a traceback."""
    assert "Traceback" not in output, output
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    prefix = f"chargemesh {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix):]


def assert_one_line(result: Result, command: str) -> str:
    assert result.exit_code == 1, result.output
    return error_line(command, result.stderr, result.output)


@pytest.fixture
def absent(tmp_path: Path) -> Settings:
    """Settings of a stack that is not there: free ports, nothing listening."""
    return private_settings(tmp_path / "state")


@pytest.fixture
def participant_files(tmp_path: Path, absent: Settings) -> dict[str, str]:
    """A key file, a payload file and trust anchors, so the commands get as far as the stack."""
    key = tmp_path / "station.json"
    made = invoke(absent, "keys", "generate", "--out", str(key), "--credential-id", "st-1",
                  "--subject-id", "station-1")
    assert made.exit_code == 0, made.output
    public_key_hex = made.stdout.split('"public_key_hex": "')[1].split('"')[0]
    anchored = invoke(absent, "anchors", "add", "--authority-id", "root", "--public-key-hex",
                      public_key_hex)
    assert anchored.exit_code == 0, anchored.output
    payload = tmp_path / "beat.json"
    payload.write_text('{"station_id": "station-1", "at_ms": 1790000000000}')
    return {"KEY": str(key), "PAYLOAD": str(payload), "PUBLIC_KEY": public_key_hex}


class PortHolder:
    """Listening sockets on given ports; each accepted connection gets ``reply`` (then is
    closed), or is held open and answered nothing when ``reply`` is None."""

    def __init__(self, ports: list[int], reply: bytes | None = None) -> None:
        self.reply = reply
        self.sockets = []
        for port in ports:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(16)
            self.sockets.append(sock)
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._serve, args=(s,), daemon=True)
                        for s in self.sockets]
        for thread in self.threads:
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            if self.reply is None:
                self.held.append(conn)
                continue
            with contextlib.suppress(OSError):
                conn.recv(4096)
                conn.sendall(self.reply)
            conn.close()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        for sock in [*self.held, *self.sockets]:
            sock.close()


@contextlib.contextmanager
def holding(ports: list[int], reply: bytes | None = None) -> Iterator[PortHolder]:
    holder = PortHolder(ports, reply)
    try:
        yield holder
    finally:
        holder.close()


# ---- nothing listening: every command that needs the stack ------------------------------------

CLICKHOUSE_READS = [
    ("ledger show", ["ledger", "show", "station-1"]),
    ("disputes list", ["disputes", "list"]),
    ("disputes show", ["disputes", "show", "dispute-1"]),
    ("fleet report", ["fleet", "report", "fleet-1"]),
    ("pack history", ["pack", "history", "pack-1"]),
    ("grid observers", ["grid", "observers", "zone-1"]),
    ("audit", ["audit", "--authority", "ra-1", "--source", "clickhouse"]),
    ("report", ["report"]),
]
BROKER_COMMANDS = [
    ("events tail", ["events", "tail", "market"]),
    ("events publish", ["events", "publish", "--key", "KEY", "--type", "StationHeartbeat",
                        "--file", "PAYLOAD"]),
    ("events publish", ["events", "publish", "--raw", "--topic", "market", "--partition-key",
                        "station-1", "--hex", "00"]),
    ("credential revoke", ["credential", "revoke", "--key", "KEY", "--credential-id", "st-1",
                           "--effective-at-ms", "1", "--reason", "OTHER", "--publish"]),
    ("credential show", ["credential", "show", "st-1"]),
    ("checkpoint", ["checkpoint"]),
    ("audit", ["audit", "--authority", "ra-1"]),
    ("audit proof", ["audit", "proof", "event-1"]),
    ("worker", ["worker"]),
    ("sink", ["sink"]),
]


@pytest.mark.parametrize("command,args", CLICKHOUSE_READS, ids=[c for c, _ in CLICKHOUSE_READS])
def test_clickhouse_reads_without_a_stack(absent: Settings, participant_files: dict[str, str],
                                          command: str, args: list[str]) -> None:
    args = [participant_files.get(a, a) for a in args]
    said = assert_one_line(invoke(absent, *args), command)
    host, port = absent.clickhouse_address
    assert said.startswith(f"ClickHouse at {host}:{port} refused the connection: "), said
    assert UP_REMEDY in said


@pytest.mark.parametrize("command,args", BROKER_COMMANDS,
                         ids=[" ".join(a[:2]) for _, a in BROKER_COMMANDS])
def test_broker_commands_without_a_stack(absent: Settings, participant_files: dict[str, str],
                                         command: str, args: list[str]) -> None:
    args = [participant_files.get(a, a) for a in args]
    said = assert_one_line(invoke(absent, *args), command)
    assert said.startswith(f"Kafka broker at {absent.bootstrap_servers} refused the "
                           "connection: "), said
    assert UP_REMEDY in said


def test_start_and_status_without_a_stack(absent: Settings,
                                          participant_files: dict[str, str]) -> None:
    said = assert_one_line(invoke(absent, "start"), "start")
    assert "the stack is not ready" in said and UP_REMEDY in said
    status = invoke(absent, "status")  # a table of what is down, and exit 1: not an error line
    assert status.exit_code == 1 and "Traceback" not in status.output
    assert "not started: run `chargemesh up`" in status.stdout and not status.stderr


def test_a_missing_file_is_named_with_what_to_do(absent: Settings) -> None:
    said = assert_one_line(invoke(absent, "audit", "--authority", "ra-1"), "audit")
    assert str(absent.trust_anchors_path) in said and "CHARGEMESH_TRUST_ANCHORS_FILE" in said


def test_a_bad_setting_is_named(absent: Settings) -> None:
    done = console(absent, "status", CHARGEMESH_KAFKA_PORT="not-a-port")
    assert done.returncode == 1
    said = error_line("status", done.stderr, done.stdout + done.stderr)
    assert said.startswith("CHARGEMESH_KAFKA_PORT = 'not-a-port' is not an integer"), said


def test_usage_errors_keep_clicks_exit_2(absent: Settings) -> None:
    result = invoke(absent, "ledger", "show")
    assert result.exit_code == 2 and "Missing argument 'STATION'" in result.stderr


# ---- the real console script: what a user's terminal shows ------------------------------------


def test_console_script_prints_one_line_and_no_library_noise(
        absent: Settings, participant_files: dict[str, str]) -> None:
    read = console(absent, "ledger", "show", "station-1")
    assert read.returncode == 1
    said = error_line("ledger show", read.stderr, read.stdout + read.stderr)
    assert "refused the connection" in said and UP_REMEDY in said  # no clickhouse_driver log
    publish = console(absent, "events", "publish", "--key", participant_files["KEY"], "--type",
                      "StationHeartbeat", "--file", participant_files["PAYLOAD"])
    assert publish.returncode == 1
    said = error_line("events publish", publish.stderr, publish.stdout + publish.stderr)
    assert "Kafka broker at" in said  # and no librdkafka "%3|...|FAIL|" lines


@pytest.mark.parametrize("how", ["--debug", "CHARGEMESH_DEBUG=1"])
def test_debug_shows_the_traceback(absent: Settings, how: str) -> None:
    if how == "--debug":
        done = console(absent, "--debug", "pack", "history", "pack-1")
    else:
        done = console(absent, "pack", "history", "pack-1", CHARGEMESH_DEBUG="1")
    assert done.returncode == 1
    assert "chargemesh pack history: error: ClickHouse at" in done.stderr
    assert "Traceback (most recent call last)" in done.stderr
    assert "ServiceUnavailableError" in done.stderr


def test_a_bug_is_an_internal_error_with_its_traceback(
        absent: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_settings: Settings, _zone: str) -> None:
        raise KeyError("observer_set_version")

    monkeypatch.setattr("chargemesh.infra.cli.grid.load_observer_view", broken)
    result = invoke(absent, "grid", "observers", "zone-1")
    assert result.exit_code == 1
    first = result.stderr.splitlines()[0]
    assert first.startswith("chargemesh grid observers: internal error: KeyError: "), first
    assert "This is a bug in chargemesh" in first
    assert "Traceback (most recent call last)" in result.stderr


# ---- ports in use: up, simulate, demo ---------------------------------------------------------


@pytest.mark.parametrize("args", [["up"], ["simulate", "--stations", "10", "--vehicles", "10",
                                           "--hours", "4"], ["demo"]], ids=lambda a: a[0])
def test_ports_in_use(absent: Settings, args: list[str]) -> None:
    with holding([absent.kafka_port, absent.clickhouse_port]):
        done = console(absent, *args)
    assert done.returncode == 1
    said = error_line(args[0], done.stderr, done.stdout + done.stderr)
    assert said.startswith("ports already in use: "), said
    assert f"broker port {absent.kafka_port}" in said
    assert f"clickhouse port {absent.clickhouse_port}" in said
    assert "CHARGEMESH_KAFKA_PORT" in said  # what to do
    assert not (absent.state_dir / "stack.json").exists()  # nothing was started


# ---- something that is not ClickHouse (or Kafka) on the port ----------------------------------


@pytest.fixture
def short_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "PROBE_TIMEOUT_S", TEST_PROBE_TIMEOUT_S)


def test_a_port_that_answers_nothing(absent: Settings, short_probes: None) -> None:
    with holding([absent.clickhouse_port, absent.kafka_port]):
        read = invoke(absent, "pack", "history", "pack-1")
        tail = invoke(absent, "events", "tail", "market")
    said = assert_one_line(read, "pack history")
    assert "accepted the connection but did not answer within 1 s" in said
    assert "native TCP port" in said
    said = assert_one_line(tail, "events tail")
    assert said.startswith(f"Kafka broker at {absent.bootstrap_servers} accepted the "
                           "connection but did not answer within 1 s"), said


def test_a_port_that_answers_another_protocol(absent: Settings) -> None:
    with holding([absent.clickhouse_port], reply=b"HTTP/1.0 400 Bad Request\r\n\r\n"):
        result = invoke(absent, "disputes", "list")
    said = assert_one_line(result, "disputes list")
    assert "did not speak the ClickHouse native protocol" in said, said
    assert "CHARGEMESH_CLICKHOUSE_PORT" in said


# ---- a ClickHouse that answers, without chargemesh's tables -----------------------------------

EMPTY_DATABASE = "chargemesh_cli_errors_empty"


@pytest.mark.parametrize("database", [EMPTY_DATABASE, "chargemesh_cli_errors_absent"])
def test_a_database_without_the_tables(stack_settings: Settings, database: str) -> None:
    client = clickhouse_client(stack_settings, database=False)
    try:
        client.execute(f"CREATE DATABASE IF NOT EXISTS {EMPTY_DATABASE}")
    finally:
        client.disconnect()
    settings = stack_settings.with_overrides(clickhouse_database=database)
    for command, args in (("pack history", ["pack", "history", "pack-1"]),
                          ("disputes list", ["disputes", "list"])):
        said = assert_one_line(invoke(settings, *args), command)
        assert said.startswith(f"ClickHouse database {database!r} at "), said
        assert "run `chargemesh up` to apply the migrations" in said
