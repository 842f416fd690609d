"""Operating chargemesh from the command line: processor processes, trust anchors, the slot
ledger as a calendar, and a decoding topic tail.

Registered on the ``chargemesh`` group through ``COMMAND_MODULES`` in :mod:`chargemesh.infra.cli.root`:

* ``chargemesh anchors add|list``: the trust anchors file every worker loads at start;
* ``chargemesh start|stop|ps``: processor workers and the ClickHouse sink as background
  processes of one state directory (``<state_dir>/processors.json``), like ``up``/``down`` do
  for the stack; ``chargemesh status`` lists them too;
* ``chargemesh worker`` / ``chargemesh sink``: one worker, or the sink, in the foreground
  (for operators and systemd units);
* ``chargemesh ledger show STATION``: a station's calendar with its bookings, from ClickHouse;
* ``chargemesh events tail TOPIC``: the records of a topic, decoded.

A process is only ever signalled through a pid ``start`` recorded, and only while
``/proc/<pid>`` still shows the same process: the start time recorded with it (a reused pid has
another) and the command line ``start`` gave it. ``python -m chargemesh.infra.cli.ops sink`` is
the sink's entry point that ``start`` launches (settings from ``CHARGEMESH_*``).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.table import Table
from rich.text import Text

from chargemesh.infra.stack import supervisor as processes
from chargemesh.checks import ensure
from chargemesh.infra.cli.root import STATUS_EXTENSIONS, cli, settings_of
from chargemesh.infra.config import Settings, load_settings
from chargemesh.infra.stack.preflight import require_broker, require_clickhouse
from chargemesh.infra.stack.supervisor import LOOPBACK, ProcessRecord
from chargemesh.infra.stack.embedded import BROKER, CLICKHOUSE, ComponentStatus, EmbeddedStack, StackError
from chargemesh.processors.governance import TrustAnchor
from chargemesh.schemas.codec import DecodeError, catalog, to_jsonable
from chargemesh.sinks.migrate import clickhouse_client
from chargemesh.schemas import registry
from chargemesh.streams.envelope import REJECTED_SCHEMA, event_view, open_envelope, open_payload
from chargemesh.streams.topics import ALL_TOPICS


def _out() -> Console:
    """A console per use: it writes to the current stdout and reads COLUMNS when it is made."""
    return Console(highlight=False)


# Exit codes besides click's 0 (done), 1 (failed: the message says why) and 2 (usage error).
EXIT_NOT_RUNNING = 3  # `ps`: nothing started (the LSB "program is not running" status)


class OpsError(RuntimeError):
    """An operation could not be done; the message says what to do."""


# ==== trust anchors =============================================================================

ED25519_PUBLIC_KEY_BYTES = 32
ANCHORS_MAX = 1_000


def read_anchor_entries(path: Path) -> list[dict[str, str]]:
    """The anchors file as written (``TrustAnchor.load_file``'s format); [] if there is none."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError) as exc:
        raise OpsError(f"{path} is not a trust anchors file: {exc}") from exc
    valid = isinstance(raw, list) and all(
        isinstance(item, dict)
        and isinstance(item.get("authority_id"), str)
        and isinstance(item.get("public_key_hex"), str)
        for item in raw
    )
    if not valid:
        raise OpsError(
            f"{path} is not a trust anchors file: expected a JSON list of "
            '{"authority_id": ..., "public_key_hex": ...}'
        )
    return [{"authority_id": i["authority_id"], "public_key_hex": i["public_key_hex"]} for i in raw]


def add_anchor(path: Path, authority_id: str, public_key: bytes, replace: bool) -> str:
    """Add (or with ``replace``, re-key) one anchor; returns "added", "replaced" or "unchanged"."""
    ensure(len(public_key) == ED25519_PUBLIC_KEY_BYTES, "anchor keys are Ed25519 public keys")
    entries = read_anchor_entries(path)
    key_hex = public_key.hex()
    outcome = "added"
    for entry in entries:
        if entry["authority_id"] != authority_id:
            continue
        if entry["public_key_hex"].lower() == key_hex:
            return "unchanged"
        if not replace:
            raise OpsError(
                f"{authority_id} is already a trust anchor in {path} with another key "
                f"({entry['public_key_hex']}); pass --replace to re-key it"
            )
        entry["public_key_hex"] = key_hex
        outcome = "replaced"
    if outcome == "added":
        if len(entries) >= ANCHORS_MAX:
            raise OpsError(f"{path} already lists {ANCHORS_MAX} anchors")
        entries.append({"authority_id": authority_id, "public_key_hex": key_hex})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    tmp.replace(path)
    return outcome


def check_anchors(settings: Settings) -> int:
    """Fail clearly unless the workers' trust anchors file exists and lists anchors."""
    path = settings.trust_anchors_path
    if not path.is_file():
        raise OpsError(
            f"no trust anchors at {path}: workers trust no authority without them. Declare "
            "the deployment's root authority first:\n"
            "  chargemesh anchors add --authority-id ID --public-key-hex HEX\n"
            "(or point CHARGEMESH_TRUST_ANCHORS_FILE at an existing anchors file)"
        )
    try:
        anchors = TrustAnchor.load_file(path)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise OpsError(f"{path} is not a trust anchors file ({exc!r}); see `anchors add`") from exc
    if not anchors:
        raise OpsError(f"{path} lists no trust anchors; see `chargemesh anchors add`")
    return len(anchors)


def _public_key_param(_ctx: click.Context, _param: click.Parameter, value: str) -> bytes:
    try:
        raw = bytes.fromhex(value.strip())
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise click.BadParameter(
            f"not a hex Ed25519 public key ({ED25519_PUBLIC_KEY_BYTES} bytes, "
            f"{2 * ED25519_PUBLIC_KEY_BYTES} hex digits): {exc}"
        ) from exc
    return raw


@cli.group()
def anchors() -> None:
    """The trust anchors (root authorities) the processor workers start from."""


@anchors.command("add")
@click.option("--authority-id", required=True, help="The root authority's id.")
@click.option(
    "--public-key-hex",
    "public_key",
    required=True,
    callback=_public_key_param,
    help="Its Ed25519 public key, 64 hex digits.",
)
@click.option("--replace", is_flag=True, help="Re-key an anchor that is already listed.")
@click.pass_context
def anchors_add(ctx: click.Context, authority_id: str, public_key: bytes, replace: bool) -> None:
    """Add a trust anchor to the anchors file (<state_dir>/trust_anchors.json by default)."""
    if not authority_id.strip():
        raise click.BadParameter("must not be empty", param_hint="--authority-id")
    path = settings_of(ctx).trust_anchors_path
    try:
        outcome = add_anchor(path, authority_id, public_key, replace)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    _out().print(f"{authority_id}: {outcome} in {path}")


@anchors.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the anchors as JSON.")
@click.pass_context
def anchors_list(ctx: click.Context, as_json: bool) -> None:
    """The trust anchors the workers will load."""
    path = settings_of(ctx).trust_anchors_path
    try:
        entries = read_anchor_entries(path)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        _out().print(f"no trust anchors in {path}")
        return
    table = Table(title=f"trust anchors ({path})")
    table.add_column("authority")
    table.add_column("Ed25519 public key", overflow="fold")
    for entry in entries:
        table.add_row(entry["authority_id"], entry["public_key_hex"])
    _out().print(table)


# ==== processor processes =======================================================================

PROCESSORS_FILE = "processors.json"
PROCESSORS_LOCK_FILE = "processors.lock"
PROCESSORS_STATE_VERSION = 1
SINK = "sink"
WORKER_PREFIX = "worker-"
WORKERS_MAX = 16
WORKER_MODULE = "chargemesh.infra.stack.worker_main"
SINK_MODULE = "chargemesh.infra.cli.ops"
# Faust retitles its worker when setproctitle is installed: "[Faust:Worker] -running- ...".
FAUST_PROCESS_TITLE = "[Faust:Worker]"
# A worker is ready when its web port answers (Faust opens it once the app is set up).
WORKER_READY_TIMEOUT_S = 90.0
# The sink has no port: it is taken as started when it still runs after this long.
SINK_SETTLE_S = 2.0
READY_POLL_INTERVAL_S = 0.2
LOCK_WAIT_S = 60.0
_STAT_FIELD_STATE = 0  # fields after the ")" closing comm in /proc/<pid>/stat
_STAT_FIELD_START_TICKS = 19


@dataclasses.dataclass(frozen=True)
class ManagedProcess:
    """A process ``start`` launched: its stack-style record, command line and start time."""

    record: ProcessRecord
    argv: tuple[str, ...]
    # Field 22 of /proc/<pid>/stat (clock ticks after boot): a reused pid has another value.
    start_ticks: int

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def pid(self) -> int:
        return self.record.pid

    @property
    def web_port(self) -> int | None:
        return self.record.ports.get("web")

    def to_json(self) -> dict[str, Any]:
        return {**self.record.to_json(), "argv": list(self.argv), "start_ticks": self.start_ticks}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ManagedProcess:
        return cls(
            record=ProcessRecord.from_json(raw),
            argv=tuple(str(arg) for arg in raw["argv"]),
            start_ticks=int(raw["start_ticks"]),
        )


@dataclasses.dataclass(frozen=True)
class StartOutcome:
    process: ManagedProcess
    outcome: str  # "started" | "already running"


@dataclasses.dataclass(frozen=True)
class ProcessView:
    """What ``ps`` and ``status`` show for one recorded process."""

    name: str
    pid: int
    running: bool
    web_port: int | None
    web_answers: bool
    uptime_s: float
    log_path: str

    @property
    def healthy(self) -> bool:
        return self.running and (self.web_port is None or self.web_answers)

    def detail(self) -> str:
        if not self.running:
            return f"not running (log: {self.log_path}); `chargemesh start` restarts it"
        web = ""
        if self.web_port is not None:
            web = "; web port answers" if self.web_answers else "; web port does not answer yet"
        return f"up {_duration_text(self.uptime_s)}{web}"

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "healthy": self.healthy}


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) of ``pid`` from ``/proc``, or None if there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[_STAT_FIELD_STATE], int(fields[_STAT_FIELD_START_TICKS])


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _cmdline_matches(proc: ManagedProcess) -> bool:
    argv = _cmdline(proc.pid)
    if not argv:
        # Between fork and exec (or while exiting) the command line reads empty: only a child
        # this interpreter just started is given the benefit of the doubt (its Popen knows).
        return processes.pid_alive(proc.record)
    if argv == list(proc.argv):
        return True
    # Faust's retitled worker: "[Faust:Worker] -running- <app id> -p <web port> <data dir>".
    title = " ".join(argv)
    return title.startswith(FAUST_PROCESS_TITLE) and f" -p {proc.web_port} " in title


def process_running(proc: ManagedProcess) -> bool:
    """The recorded process still runs: same pid, same start time, the command ``start`` gave."""
    if proc.pid <= 1:
        return False
    stat = _proc_stat(proc.pid)
    if stat is None or stat[0] in ("Z", "X"):
        processes.pid_alive(proc.record)  # reaps it when it is a child of this interpreter
        return False
    return stat[1] == proc.start_ticks and _cmdline_matches(proc)


def _boot_time_s() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OpsError("no btime in /proc/stat")


def _uptime_s(proc: ManagedProcess) -> float:
    started_s = _boot_time_s() + proc.start_ticks / os.sysconf("SC_CLK_TCK")
    return max(0.0, time.time() - started_s)


def _duration_text(seconds: float) -> str:
    whole = int(seconds)
    if whole < 120:
        return f"{whole} s"
    if whole < 7_200:
        return f"{whole // 60} min"
    if whole < 172_800:
        return f"{whole // 3_600} h {whole % 3_600 // 60} min"
    return f"{whole // 86_400} d"


class ProcessorFleet:
    """Start, inspect and stop the processor workers and the sink of one state directory."""

    def __init__(self, settings: Settings) -> None:
        self.state_dir = settings.state_dir.expanduser().resolve()
        # Children get the settings as CHARGEMESH_* with an absolute state directory.
        self.settings = settings.with_overrides(state_dir=self.state_dir)

    @property
    def state_path(self) -> Path:
        return self.state_dir / PROCESSORS_FILE

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    # -- public API ------------------------------------------------------------------------------

    def start(
        self, workers: int, with_sink: bool, loglevel: str, progress: Callable[[str], None]
    ) -> list[StartOutcome]:
        """Launch what is wanted and not running yet, then wait until each one is up."""
        ensure(1 <= workers <= WORKERS_MAX, f"workers out of range: {workers}")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            procs = self.read_state()
            outcomes = []
            for name, argv, web_port in self._wanted(workers, with_sink, loglevel):
                current = procs.get(name)
                if current is not None and process_running(current):
                    outcomes.append(StartOutcome(current, "already running"))
                    continue
                procs[name] = self._spawn(name, argv, web_port)
                self._write_state(procs)
                outcomes.append(StartOutcome(procs[name], "started"))
            started = [o.process for o in outcomes if o.outcome == "started"]
            self._wait_ready(started, progress)
        return outcomes

    def stop(self, progress: Callable[[str], None]) -> dict[str, str]:
        """Stop the recorded processes (and nothing else). Returns name -> what happened."""
        if not self.state_path.is_file():
            return {}
        with self._locked():
            procs = self.read_state()
            progress(f"stopping {len(procs)} processes")
            outcomes = stop_processes(list(procs.values()))
            survivors = {n: p for n, p in procs.items() if process_running(p)}
            if survivors:
                self._write_state(survivors)
                raise OpsError(f"could not stop {sorted(survivors)}; outcomes: {outcomes}")
            self.state_path.unlink(missing_ok=True)
        return outcomes

    def inspect(self) -> list[ProcessView]:
        views = []
        for proc in self.read_state().values():
            running = process_running(proc)
            web_answers = (
                running and proc.web_port is not None and processes.port_open(proc.web_port)
            )
            views.append(ProcessView(
                name=proc.name,
                pid=proc.pid,
                running=running,
                web_port=proc.web_port,
                web_answers=web_answers,
                uptime_s=_uptime_s(proc) if running else 0.0,
                log_path=proc.record.log_path,
            ))
        return views

    # -- state file ------------------------------------------------------------------------------

    def read_state(self) -> dict[str, ManagedProcess]:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise OpsError(f"{self.state_path} is corrupt ({exc}); check for strays") from exc
        if raw.get("version") != PROCESSORS_STATE_VERSION:
            raise OpsError(f"{self.state_path} has unknown version {raw.get('version')!r}")
        procs = {name: ManagedProcess.from_json(p) for name, p in raw["processes"].items()}
        return dict(sorted(procs.items(), key=lambda item: _name_order(item[0])))

    def _write_state(self, procs: dict[str, ManagedProcess]) -> None:
        body = {
            "version": PROCESSORS_STATE_VERSION,
            "processes": {name: proc.to_json() for name, proc in procs.items()},
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One ``start``/``stop`` at a time per state directory (flock, bounded wait)."""
        with open(self.state_dir / PROCESSORS_LOCK_FILE, "a") as handle:
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OpsError(
                            f"{self.state_dir} is locked by another chargemesh start/stop"
                        ) from None
                    time.sleep(READY_POLL_INTERVAL_S)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- starting --------------------------------------------------------------------------------

    def _wanted(
        self, workers: int, with_sink: bool, loglevel: str
    ) -> list[tuple[str, list[str], int | None]]:
        wanted: list[tuple[str, list[str], int | None]] = []
        for index in range(workers):
            argv = [sys.executable, "-m", WORKER_MODULE, "--index", str(index),
                    "--loglevel", loglevel]
            wanted.append((f"{WORKER_PREFIX}{index}", argv,
                           self.settings.worker_web_port + index))
        if with_sink:
            wanted.append((SINK, [sys.executable, "-m", SINK_MODULE, SINK], None))
        return wanted

    def _spawn(self, name: str, argv: list[str], web_port: int | None) -> ManagedProcess:
        if web_port is not None and not processes.port_free(web_port):
            raise OpsError(
                f"{name}: web port {web_port} is in use (another worker or program holds it); "
                "pick another base with CHARGEMESH_WORKER_WEB_PORT"
            )
        env = {**os.environ, **self.settings.as_environ(), "PYTHONUNBUFFERED": "1"}
        ports = {} if web_port is None else {"web": web_port}
        record = processes.spawn(name, argv, ports, self.logs_dir / f"{name}.log", env=env)
        stat = _proc_stat(record.pid)
        ensure(stat is not None, f"{name} (pid {record.pid}) vanished right after it was started")
        return ManagedProcess(record, tuple(argv), stat[1] if stat else 0)

    def _wait_ready(self, started: list[ManagedProcess], progress: Callable[[str], None]) -> None:
        """Until every worker's web port answers and the sink still runs after a moment."""
        begun = time.monotonic()
        pending = list(started)
        while pending:
            waited_s = time.monotonic() - begun
            for proc in list(pending):
                if not process_running(proc):
                    raise OpsError(
                        f"{proc.name} (pid {proc.pid}) exited; last lines of "
                        f"{proc.record.log_path}:\n{processes.log_tail(proc.record.log_path)}"
                    )
                if proc.web_port is None:
                    if waited_s >= SINK_SETTLE_S:
                        pending.remove(proc)
                elif processes.port_open(proc.web_port):
                    pending.remove(proc)
            if not pending:
                return
            if waited_s > WORKER_READY_TIMEOUT_S:
                stop_processes(pending)
                raise OpsError(
                    f"{', '.join(p.name for p in pending)} did not come up within "
                    f"{WORKER_READY_TIMEOUT_S:.0f} s (stopped); see {self.logs_dir}"
                )
            progress(f"waiting for {', '.join(p.name for p in pending)} ({waited_s:.0f} s)")
            time.sleep(READY_POLL_INTERVAL_S)


def _name_order(name: str) -> tuple[int, int, str]:
    if name.startswith(WORKER_PREFIX) and name[len(WORKER_PREFIX):].isdigit():
        return (0, int(name[len(WORKER_PREFIX):]), name)
    return (1, 0, name)


def _signal(proc: ManagedProcess, signum: int) -> None:
    try:
        os.kill(proc.pid, signum)
    except ProcessLookupError:
        pass


def _wait_gone(procs: list[ManagedProcess], wait_s: float) -> list[ManagedProcess]:
    deadline = time.monotonic() + wait_s
    alive = [p for p in procs if process_running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(processes.POLL_INTERVAL_S)
        alive = [p for p in alive if process_running(p)]
    return alive


def stop_processes(procs: list[ManagedProcess]) -> dict[str, str]:
    """SIGTERM every recorded process that is still the same process, SIGKILL what outlives
    ``STOP_GRACE_S``; all at once, so stopping N workers takes one grace period, not N."""
    outcomes: dict[str, str] = {}
    running = []
    for proc in procs:
        if process_running(proc):
            running.append(proc)
        elif _proc_stat(proc.pid) is not None:
            outcomes[proc.name] = f"not running (pid {proc.pid} is another process now: left alone)"
        else:
            outcomes[proc.name] = "not running"
    for proc in running:
        _signal(proc, signal.SIGTERM)
    stubborn = _wait_gone(running, processes.STOP_GRACE_S)
    for proc in stubborn:
        _signal(proc, signal.SIGKILL)
    survivors = _wait_gone(stubborn, processes.KILL_WAIT_S)
    for proc in running:
        if proc in survivors:
            outcomes[proc.name] = "still running after SIGKILL"
        elif proc in stubborn:
            outcomes[proc.name] = f"killed after {processes.STOP_GRACE_S:.0f} s"
        else:
            outcomes[proc.name] = "stopped"
    return outcomes


def check_stack(settings: Settings, with_sink: bool) -> None:
    """Fail before starting anything if the broker (and, for the sink, ClickHouse) is not ready."""
    needed = {BROKER, CLICKHOUSE} if with_sink else {BROKER}
    try:
        components = EmbeddedStack(settings).status()
    except StackError as exc:
        raise OpsError(str(exc)) from exc
    problems = [f"{c.name}: {c.detail}" for c in components if c.name in needed and not c.healthy]
    if problems:
        raise OpsError(
            "the stack is not ready (" + "; ".join(problems) + "): run `chargemesh up` first"
        )


def processor_components(settings: Settings) -> list[ComponentStatus]:
    """The rows ``chargemesh status`` adds for the processes ``start`` launched (if any)."""
    try:
        views = ProcessorFleet(settings).inspect()
    except OpsError as exc:
        return [ComponentStatus("processors", True, "-", None, False, str(exc))]
    return [
        ComponentStatus(
            name=view.name,
            embedded=True,
            address="-" if view.web_port is None else f"{LOOPBACK}:{view.web_port}",
            pid=view.pid,
            healthy=view.healthy,
            detail=view.detail(),
        )
        for view in views
    ]


STATUS_EXTENSIONS.append(processor_components)


@cli.command()
@click.option(
    "--workers",
    type=click.IntRange(1, WORKERS_MAX),
    default=1,
    show_default=True,
    help="Processor workers to run (more than CHARGEMESH_PARTITIONS leaves some idle).",
)
@click.option("--no-sink", is_flag=True, help="Do not run the ClickHouse sink.")
@click.option("--loglevel", default="info", show_default=True, help="Log level of the workers.")
@click.pass_context
def start(ctx: click.Context, workers: int, no_sink: bool, loglevel: str) -> None:
    """Start processor workers and the ClickHouse sink in the background (idempotent).

    Logs go to <state_dir>/logs/worker-N.log and sink.log, pids to <state_dir>/processors.json.
    Processes that already run are left as they are; dead ones are started again.
    """
    settings = settings_of(ctx)
    fleet = ProcessorFleet(settings)
    try:
        count = check_anchors(settings)
        check_stack(settings, with_sink=not no_sink)
        with _out().status("starting") as status:
            outcomes = fleet.start(workers, not no_sink, loglevel, status.update)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    table = Table(title=f"chargemesh processors (trust anchors: {count})")
    for column in ("process", "pid", "outcome", "log"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        style = "green" if outcome.outcome == "started" else "cyan"
        table.add_row(outcome.process.name, str(outcome.process.pid),
                      f"[{style}]{outcome.outcome}[/{style}]", outcome.process.record.log_path)
    _out().print(table)
    extra = set(fleet.read_state()) - {o.process.name for o in outcomes}
    if extra:
        _out().print(f"also recorded (not asked for, left as they are): {sorted(extra)}")
    if workers > settings.partitions:
        _out().print(f"note: {workers} workers for {settings.partitions} partitions: "
                       f"{workers - settings.partitions} will stay idle")


@cli.command()
@click.pass_context
def stop(ctx: click.Context) -> None:
    """Stop the workers and the sink `start` launched (SIGTERM, then SIGKILL); nothing else."""
    try:
        with _out().status("stopping") as status:
            outcomes = ProcessorFleet(settings_of(ctx)).stop(status.update)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    if not outcomes:
        _out().print("nothing to stop")
    for name, outcome in outcomes.items():
        _out().print(f"{name}: {outcome}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the processes as JSON.")
@click.pass_context
def ps(ctx: click.Context, as_json: bool) -> None:
    """The processes `start` launched. Exits 1 if one of them is down, 3 if none was started."""
    try:
        views = ProcessorFleet(settings_of(ctx)).inspect()
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps([view.to_json() for view in views], indent=2))
    elif not views:
        _out().print("no processors started: run `chargemesh start`")
    else:
        table = Table(title="chargemesh processors")
        for column in ("process", "pid", "healthy", "web", "detail", "log"):
            table.add_column(column, overflow="fold")
        for view in views:
            table.add_row(
                view.name,
                str(view.pid),
                "[green]yes[/green]" if view.healthy else "[red]NO[/red]",
                "-" if view.web_port is None else str(view.web_port),
                view.detail() if view.running else "not running",
                view.log_path,
            )
        _out().print(table)
    if not views:
        ctx.exit(EXIT_NOT_RUNNING)
    if not all(view.healthy for view in views):
        ctx.exit(1)


@cli.command()
@click.option("--index", type=click.IntRange(0, WORKERS_MAX - 1), default=0, show_default=True,
              help="Worker number (its web port is CHARGEMESH_WORKER_WEB_PORT + index).")
@click.option("--loglevel", default="info", show_default=True)
@click.pass_context
def worker(ctx: click.Context, index: int, loglevel: str) -> None:
    """Run one processor worker in the foreground (until SIGINT/SIGTERM)."""
    from chargemesh.infra.stack.worker_main import run_worker

    settings = settings_of(ctx)
    try:
        check_anchors(settings)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    require_broker(settings)
    # The worker reads its settings from CHARGEMESH_*, like every chargemesh process.
    os.environ.update(settings.with_overrides(state_dir=settings.state_dir.resolve()).as_environ())
    logging.basicConfig(level=loglevel.upper())
    run_worker(index, loglevel)


@cli.command()
@click.option("--group-id", default=None, help="Consumer group (default: the sink's own).")
@click.option("--loglevel", default="info", show_default=True)
@click.pass_context
def sink(ctx: click.Context, group_id: str | None, loglevel: str) -> None:
    """Run the ClickHouse sink in the foreground (until SIGINT/SIGTERM)."""
    settings = settings_of(ctx)
    require_broker(settings)
    require_clickhouse(settings)
    run_sink_foreground(settings, group_id, loglevel)


def run_sink_foreground(settings: Settings, group_id: str | None, loglevel: str) -> None:
    from chargemesh.sinks.clickhouse_sink import GROUP_ID_DEFAULT, run_sink

    logging.basicConfig(level=loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for name in ("clickhouse_driver",):  # logs every refused connection; the sink reports them
        logging.getLogger(name).setLevel(logging.WARNING)
    run_sink(settings, group_id=group_id or GROUP_ID_DEFAULT)


# ==== ledger show ===============================================================================

CALENDAR_EVENT_TYPE = "chargemesh.capacity.v1.SlotCalendarPublished"
SLOT_RESERVED_EVENT_TYPE = "chargemesh.ledger.v1.SlotReserved"
RESERVED, REALLOCATED, RELEASED = "RESERVED", "REALLOCATED", "RELEASED"
CALENDARS_READ_MAX = 100
LEDGER_ROWS_MAX = 20_000
SLOTS_SHOWN_MAX = 1_440  # one day of 1-minute slots
FREE_RUN_COLLAPSE_MIN = 3  # this many free slots in a row show as one row (without --all-slots)
SHORT_ID_CHARS = 10
LEDGER_QUERY_TIMEOUT_S = 30.0
MS_PER_DAY = 86_400_000
MS_PER_MINUTE = 60_000
MONEY_QUANTUM = Decimal("0.000001")  # Decimal(18, 6) in slot_ledger and ledger_decisions


@dataclasses.dataclass(frozen=True)
class ConnectorInfo:
    connector_id: str
    power_w: int
    kind: str


@dataclasses.dataclass(frozen=True)
class Calendar:
    version: int
    slot_duration_ms: int
    horizon_start_at_ms: int
    horizon_end_at_ms: int
    posted_rate_per_kwh: str
    currency: str
    connectors: tuple[ConnectorInfo, ...]

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> Calendar:
        return cls(
            version=int(p["calendar_version"]),
            slot_duration_ms=int(p["slot_duration_ms"]),
            horizon_start_at_ms=int(p["horizon_start_at_ms"]),
            horizon_end_at_ms=int(p["horizon_end_at_ms"]),
            posted_rate_per_kwh=str(p["posted_rate_per_kwh"]),
            currency=str(p["currency"]),
            connectors=tuple(
                ConnectorInfo(str(c["connector_id"]), int(c["power_w"]), str(c["kind"]))
                for c in p["connectors"]
            ),
        )


@dataclasses.dataclass(frozen=True)
class Booking:
    """A reservation's latest state (``slot_ledger FINAL``) with its SlotReserved details."""

    reservation_id: str
    connector_id: str
    order_id: str
    vehicle_credential_id: str
    slot_start_at_ms: int
    slot_stop_at_ms: int
    rate_per_kwh: Decimal
    energy_wh: int
    walk_up: bool
    status: str
    reason_code: str

    @property
    def live(self) -> bool:
        return self.status != RELEASED

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "rate_per_kwh": str(self.rate_per_kwh)}


@dataclasses.dataclass(frozen=True)
class LedgerDay:
    """One UTC day of a station: slot times, connectors, and which booking holds each cell."""

    station_id: str
    day: dt.date
    calendar: Calendar | None
    connectors: tuple[str, ...]
    slot_starts: tuple[int, ...]
    slot_ms: int
    cells: dict[tuple[int, str], Booking]
    bookings: tuple[Booking, ...]
    released: tuple[Booking, ...]

    @property
    def connector_slots(self) -> int:
        return len(self.slot_starts) * len(self.connectors)

    @property
    def utilisation_pct(self) -> float:
        return 100.0 * len(self.cells) / self.connector_slots if self.connector_slots else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "bookings": len(self.bookings),
            "walk_ups": sum(1 for b in self.bookings if b.walk_up),
            "reallocated": sum(1 for b in self.bookings if b.status == REALLOCATED),
            "released": len(self.released),
            "connector_slots": self.connector_slots,
            "booked_connector_slots": len(self.cells),
            "utilisation_pct": round(self.utilisation_pct, 2),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "station_id": self.station_id,
            "date": self.day.isoformat(),
            "calendar": None if self.calendar is None else dataclasses.asdict(self.calendar),
            "slot_duration_ms": self.slot_ms,
            "connectors": list(self.connectors),
            "slots": [
                {
                    "start_at_ms": start,
                    "start": _iso_ms(start),
                    "cells": {
                        c: (self.cells[(start, c)].reservation_id
                            if (start, c) in self.cells else None)
                        for c in self.connectors
                    },
                }
                for start in self.slot_starts
            ],
            "bookings": [b.to_json() for b in self.bookings],
            "released": [b.to_json() for b in self.released],
            "summary": self.summary(),
        }


def read_calendar(client: Client, station_id: str) -> Calendar | None:
    """The station's latest admitted calendar, from the ``events`` table (payload_json)."""
    rows = client.execute(
        "SELECT payload_json FROM events WHERE event_type = %(type)s AND subject_key = %(station)s"
        " ORDER BY occurred_at_ms DESC LIMIT %(limit)s",
        {"type": CALENDAR_EVENT_TYPE, "station": station_id, "limit": CALENDARS_READ_MAX},
    )
    calendars = []
    for (payload_json,) in rows:
        payload = json.loads(payload_json)
        if payload.get("station_id") == station_id:
            calendars.append(Calendar.from_payload(payload))
    return max(calendars, key=lambda c: c.version, default=None)


def read_booking_span(client: Client, station_id: str) -> tuple[int, int] | None:
    rows = client.execute(
        "SELECT count(), min(slot_start_at_ms), max(slot_stop_at_ms) FROM slot_ledger"
        " WHERE station_id = %(station)s",
        {"station": station_id},
    )
    count, first_ms, last_ms = rows[0]
    return None if count == 0 else (int(first_ms), int(last_ms))


def read_bookings(client: Client, station_id: str, from_ms: int, until_ms: int) -> list[Booking]:
    """Latest state of every reservation that touched [from_ms, until_ms) in any version.

    The window filter picks reservation ids from every row version, and only then FINAL picks
    each one's latest row: a filter on slot times next to FINAL could keep an older version of a
    reservation that a reallocation moved out of the window. Order, vehicle, rate and energy
    come from the SlotReserved decision (RELEASED and REALLOCATED rows do not carry them).
    """
    params = {"station": station_id, "from": from_ms, "until": until_ms,
              "limit": LEDGER_ROWS_MAX + 1}
    state_rows = client.execute(
        "SELECT reservation_id, connector_id, order_id, vehicle_credential_id, slot_start_at_ms,"
        " slot_stop_at_ms, rate_per_kwh, energy_wh, walk_up, status, reason_code"
        " FROM slot_ledger FINAL WHERE station_id = %(station)s AND reservation_id IN ("
        "  SELECT reservation_id FROM slot_ledger WHERE station_id = %(station)s"
        "  AND slot_start_at_ms < %(until)s AND slot_stop_at_ms > %(from)s)"
        " ORDER BY slot_start_at_ms, connector_id, reservation_id LIMIT %(limit)s",
        params,
    )
    if len(state_rows) > LEDGER_ROWS_MAX:
        raise OpsError(f"more than {LEDGER_ROWS_MAX} reservations of {station_id} in one day")
    reserved = _reserved_details(client, station_id, [r[0] for r in state_rows])
    bookings = []
    for row in state_rows:
        rid, connector, order, vehicle, start_ms, stop_ms, rate, energy, walk_up, status = row[:10]
        details = reserved.get(rid)
        if details is not None and not order:
            order, vehicle, rate, energy, walk_up = details
        bookings.append(Booking(rid, connector, order, vehicle, int(start_ms), int(stop_ms),
                                _money(rate), int(energy), bool(walk_up), status, row[10]))
    return bookings


def _money(value: Any) -> Decimal:
    """A ``Decimal(18, 6)`` column value at its scale, as the events carry it (0.4 -> 0.400000)."""
    return Decimal(value).quantize(MONEY_QUANTUM)


def _reserved_details(
    client: Client, station_id: str, reservation_ids: list[str]
) -> dict[str, tuple[str, str, Decimal, int, bool]]:
    """reservation_id -> (order, vehicle, rate, energy, walk_up) of its SlotReserved decision."""
    if not reservation_ids:
        return {}
    rows = client.execute(
        "SELECT reservation_id, order_id, vehicle_credential_id, rate_per_kwh, energy_wh,"
        " event_id FROM ledger_decisions WHERE station_id = %(station)s"
        " AND decision_type = 'SlotReserved' AND reservation_id IN %(ids)s",
        {"station": station_id, "ids": tuple(reservation_ids)},
    )
    # ledger_decisions has no walk_up column: the SlotReserved event itself has it.
    walk_ups: dict[str, bool] = {}
    event_ids = tuple(row[5] for row in rows)
    if event_ids:
        for event_id, payload_json in client.execute(
            "SELECT event_id, payload_json FROM events WHERE event_type = %(type)s"
            " AND event_id IN %(ids)s",
            {"type": SLOT_RESERVED_EVENT_TYPE, "ids": event_ids},
        ):
            walk_ups[event_id] = bool(json.loads(payload_json).get("walk_up", False))
    return {
        rid: (order, vehicle, _money(rate), int(energy), walk_ups.get(event_id, False))
        for rid, order, vehicle, rate, energy, event_id in rows
    }


def _day_window(day: dt.date) -> tuple[int, int]:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    start_ms = int(start.timestamp() * 1000)
    return start_ms, start_ms + MS_PER_DAY


def _utc_date(at_ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC).date()


def default_day(calendar: Calendar | None, span: tuple[int, int] | None, now_ms: int) -> dt.date:
    """Today (UTC), moved into the calendar's horizon (or the bookings' span) if outside it."""
    bounds = span if calendar is None else (calendar.horizon_start_at_ms,
                                            calendar.horizon_end_at_ms)
    if bounds is None:
        return _utc_date(now_ms)
    return _utc_date(min(max(now_ms, bounds[0]), bounds[1] - 1))


def _slot_starts(calendar: Calendar | None, live: list[Booking], day_from: int,
                 day_until: int) -> tuple[list[int], int]:
    """The slot grid of the day (calendar's, else the bookings'), plus any off-grid booking."""
    starts: set[int] = set()
    if calendar is not None:
        slot_ms = calendar.slot_duration_ms
        low = max(day_from, calendar.horizon_start_at_ms)
        high = min(day_until, calendar.horizon_end_at_ms)
        first = calendar.horizon_start_at_ms + max(
            0, -(-(low - calendar.horizon_start_at_ms) // slot_ms)) * slot_ms
        starts.update(range(first, high, slot_ms) if high > first else ())
    else:
        slot_ms = min((b.slot_stop_at_ms - b.slot_start_at_ms for b in live), default=0)
        if slot_ms > 0:
            low = max(day_from, min(b.slot_start_at_ms for b in live))
            high = min(day_until, max(b.slot_stop_at_ms for b in live))
            starts.update(range(low, high, slot_ms))
    starts.update(b.slot_start_at_ms for b in live if day_from <= b.slot_start_at_ms < day_until)
    if len(starts) > SLOTS_SHOWN_MAX:
        raise OpsError(f"{len(starts)} slots in one day (> {SLOTS_SHOWN_MAX}): not shown")
    return sorted(starts), slot_ms


def build_day(station_id: str, day: dt.date, calendar: Calendar | None,
              bookings: list[Booking]) -> LedgerDay:
    day_from, day_until = _day_window(day)
    touching = [b for b in bookings
                if b.slot_start_at_ms < day_until and b.slot_stop_at_ms > day_from]
    live = [b for b in touching if b.live]
    starts, slot_ms = _slot_starts(calendar, live, day_from, day_until)
    connectors = [c.connector_id for c in calendar.connectors] if calendar else []
    connectors += sorted({b.connector_id for b in live} - set(connectors))
    cells: dict[tuple[int, str], Booking] = {}
    for booking in live:
        for start in starts:
            if booking.slot_start_at_ms <= start < booking.slot_stop_at_ms:
                cells[(start, booking.connector_id)] = booking
    return LedgerDay(
        station_id=station_id, day=day, calendar=calendar, connectors=tuple(connectors),
        slot_starts=tuple(starts), slot_ms=slot_ms, cells=cells, bookings=tuple(live),
        released=tuple(b for b in touching if not b.live),
    )


def load_ledger_day(settings: Settings, station_id: str, day: dt.date | None,
                    now_ms: int) -> LedgerDay:
    require_clickhouse(settings)
    client = clickhouse_client(settings, query_timeout_s=LEDGER_QUERY_TIMEOUT_S)
    try:
        calendar = read_calendar(client, station_id)
        span = read_booking_span(client, station_id)
        if calendar is None and span is None:
            raise OpsError(
                f"no calendar and no bookings of station {station_id!r} in ClickHouse "
                "(is the sink running? `chargemesh start`, `chargemesh ps`)"
            )
        chosen = day or default_day(calendar, span, now_ms)
        day_from, day_until = _day_window(chosen)
        bookings = read_bookings(client, station_id, day_from, day_until)
    except (ch_errors.Error, OSError, EOFError) as exc:
        host, port = settings.clickhouse_address
        raise OpsError(f"ClickHouse at {host}:{port} did not answer: {exc}") from exc
    finally:
        client.disconnect()
    return build_day(station_id, chosen, calendar, bookings)


def short_id(text: str, width: int = SHORT_ID_CHARS) -> str:
    """The end of an id (where ids of one station differ), "…" marking what was cut."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def rate_text(rate: Decimal) -> str:
    """0.400000 -> "0.40", 0.412500 -> "0.4125": at least two decimals, no trailing zeros."""
    text = f"{rate:.6f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


def _hhmm(at_ms: int, end: bool = False) -> str:
    """UTC hours and minutes; the end of a day (``end``) reads 24:00, not 00:00."""
    if end and at_ms % MS_PER_DAY == 0:
        return "24:00"
    return dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC).strftime("%H:%M")


def _cell(day: LedgerDay, start: int, connector: str) -> Text:
    booking = day.cells.get((start, connector))
    if booking is None:
        return Text("free", style="dim")
    first = booking.slot_start_at_ms == start or start == day.slot_starts[0]
    if not first:
        return Text(f"┆ {short_id(booking.order_id or booking.reservation_id)}", style="dim")
    style = "yellow" if booking.status == REALLOCATED else "green"
    text = Text(short_id(booking.order_id or booking.reservation_id), style=f"bold {style}")
    if booking.status == REALLOCATED:
        text.append(" ↻", style="yellow")
    if booking.walk_up:
        text.append(" W", style="magenta")
    text.append(f"\n{short_id(booking.vehicle_credential_id or '?')} "
                f"{rate_text(booking.rate_per_kwh)}", style="default")
    return text


def _row_groups(day: LedgerDay, all_slots: bool) -> list[list[int]]:
    """Slot starts grouped into table rows: runs of free slots share one row."""
    groups: list[list[int]] = []
    run: list[int] = []
    for start in day.slot_starts:
        if any((start, c) in day.cells for c in day.connectors) or all_slots:
            if run:
                groups.extend([run] if len(run) >= FREE_RUN_COLLAPSE_MIN else [[s] for s in run])
                run = []
            groups.append([start])
        else:
            run.append(start)
    if run:
        groups.extend([run] if len(run) >= FREE_RUN_COLLAPSE_MIN else [[s] for s in run])
    return groups


def ledger_table(day: LedgerDay, all_slots: bool) -> Table:
    cal = day.calendar
    title = f"{day.station_id} · {day.day.isoformat()} (UTC)"
    table = Table(title=title)
    table.add_column("UTC", no_wrap=True)
    powers = {c.connector_id: c for c in cal.connectors} if cal else {}
    for connector in day.connectors:
        info = powers.get(connector)
        header = connector if info is None else (
            f"{connector}\n{info.power_w / 1000:g} kW {info.kind}")
        table.add_column(header, overflow="ellipsis", max_width=24)
    for group in _row_groups(day, all_slots):
        if len(group) == 1:
            label = _hhmm(group[0])
            cells = [_cell(day, group[0], c) for c in day.connectors]
        else:
            label = f"{_hhmm(group[0])}–{_hhmm(group[-1] + day.slot_ms, end=True)}"
            cells = [Text(f"free ×{len(group)}", style="dim") for _ in day.connectors]
        table.add_row(label, *cells)
    return table


def summary_lines(day: LedgerDay) -> list[str]:
    s = day.summary()
    lines = [
        f"bookings: {s['bookings']} ({s['walk_ups']} walk-up, {s['reallocated']} moved here) · "
        + f"released: {s['released']} · utilisation: {day.utilisation_pct:.1f}% "
        + f"({s['booked_connector_slots']}/{s['connector_slots']} connector-slots)"
    ]
    cal = day.calendar
    if cal is None:
        lines.append("no calendar of this station in ClickHouse: booked slots only")
    else:
        lines.append(f"calendar v{cal.version}: {cal.slot_duration_ms // MS_PER_MINUTE} min "
                     f"slots, posted {rate_text(Decimal(cal.posted_rate_per_kwh))} "
                     f"{cal.currency}/kWh")
    markers = [("W", "walk-up", any(b.walk_up for b in day.bookings)),
               ("↻", "moved here by a reallocation",
                any(b.status == REALLOCATED for b in day.bookings)),
               ("┆", "booking continues",
                any(b.slot_stop_at_ms - b.slot_start_at_ms > day.slot_ms for b in day.bookings))]
    legend = [f"{mark} {meaning}" for mark, meaning, shown in markers if shown]
    if legend:
        lines.append(" · ".join(legend))
    if day.released:
        lines.append("released: " + ", ".join(
            f"{short_id(b.order_id or b.reservation_id)} ({_hhmm(b.slot_start_at_ms)} "
            f"{b.connector_id}, {b.reason_code or 'released'})" for b in day.released))
    return lines


@cli.group()
def ledger() -> None:
    """The slot ledger, as the ClickHouse sink recorded it."""


@ledger.command("show")
@click.argument("station")
@click.option("--date", "day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="UTC day (YYYY-MM-DD); default today, or the calendar's nearest day.")
@click.option("--all-slots", is_flag=True, help="One row per slot, free runs not collapsed.")
@click.option("--json", "as_json", is_flag=True, help="Print the day as JSON.")
@click.pass_context
def ledger_show(ctx: click.Context, station: str, day: dt.datetime | None, all_slots: bool,
                as_json: bool) -> None:
    """A station's calendar for one day: a row per slot, a column per connector, who booked."""
    settings = settings_of(ctx)
    try:
        view = load_ledger_day(settings, station, day.date() if day else None,
                               time.time_ns() // 1_000_000)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(view.to_json(), indent=2, sort_keys=True))
        return
    _out().print(ledger_table(view, all_slots))
    for line in summary_lines(view):
        _out().print(Text(line))


# ==== events tail ===============================================================================

TAIL_LIMIT_DEFAULT = 20
_RDKAFKA_LOG = logging.getLogger("chargemesh.cli.tail.rdkafka")
_RDKAFKA_LOG.addHandler(logging.NullHandler())
_RDKAFKA_LOG.propagate = False
# With --key, the tail looks for matches among this many last records of each partition.
TAIL_KEY_SCAN_RECORDS_MAX = 100_000
# While reading what the topic holds, give up if the broker sends nothing for this long.
TAIL_IDLE_S_MAX = 15.0
TAIL_POLL_S = 0.5
TAIL_CONSUME_MAX = 500
TAIL_METADATA_TIMEOUT_S = 10.0
LINE_FIELDS_MAX = 5
LINE_FIELD_CHARS_MAX = 40
LINE_DETAIL_CHARS_MAX = 80
HEX_PREFIX_BYTES = 16
# Payload fields worth a place on a line, most telling first.
LINE_FIELDS = (
    "order_id", "reservation_id", "session_id", "settlement_id", "dispute_id", "credential_id",
    "connector_id", "to_connector_id", "vehicle_credential_id", "slot_start_at_ms",
    "to_slot_start_at_ms", "rate_per_kwh", "accepted_rate_per_kwh", "bid_rate_per_kwh",
    "new_rate_per_kwh", "total_amount", "currency", "energy_wh", "energy_import_wh",
    "cumulative_import_wh", "calendar_version", "reason_code", "outcome", "cause", "kind",
)
# Shorter labels on a line (JSON output keeps the field names).
LINE_FIELD_LABELS = {
    "reservation_id": "reservation", "order_id": "order", "session_id": "session",
    "settlement_id": "settlement", "dispute_id": "dispute", "credential_id": "credential",
    "connector_id": "connector", "to_connector_id": "to_connector",
    "vehicle_credential_id": "vehicle", "slot_start_at_ms": "slot",
    "to_slot_start_at_ms": "to_slot", "accepted_rate_per_kwh": "rate",
    "bid_rate_per_kwh": "bid", "new_rate_per_kwh": "new_rate", "rate_per_kwh": "rate",
    "reason_code": "reason",
}


def resolve_topic(name: str) -> str:
    """A catalogue topic by full name or short name (``settlements``), or any full name."""
    for spec in ALL_TOPICS:
        short = spec.name.split(".")[1]
        if name in (spec.name, short, f"{short}.v1"):
            return spec.name
    if "." in name:
        return name  # not in the catalogue: must exist on the broker (checked when read)
    shorts = ", ".join(spec.name.split(".")[1] for spec in ALL_TOPICS)
    raise click.BadParameter(f"unknown topic {name!r}; one of: {shorts} (or a full topic name)")


def _iso_ms(at_ms: int) -> str:
    moment = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_ms % 1000:03d}Z"


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + key.hex()


def decode_record(message: Message) -> dict[str, Any]:
    """The JSON document of one record: a signed event, a rejection, or undecodable bytes."""
    value = message.value() or b""
    _kind, timestamp_ms = message.timestamp()
    doc: dict[str, Any] = {
        "topic": message.topic(), "partition": message.partition(), "offset": message.offset(),
        "key": _key_text(message.key()), "timestamp_ms": timestamp_ms,
    }
    try:
        event = open_envelope(value)
    except DecodeError as envelope_error:
        try:
            name, record = catalog().single_object_decode(value)
        except DecodeError:
            name, record = "", {}
        if name == REJECTED_SCHEMA:
            return {**doc, "kind": "rejection", "rejection": to_jsonable(record)}
        return {**doc, "kind": "undecodable", "error": str(envelope_error),
                "value_bytes": len(value), "value_hex_prefix": value[:HEX_PREFIX_BYTES].hex()}
    payload: dict[str, Any] | None = None
    try:
        payload = open_payload(event)
    except DecodeError as exc:
        doc["payload_error"] = str(exc)
    return {**doc, "kind": "event", "event": to_jsonable(event_view(event, payload))}


def _field_text(name: str, value: Any) -> str:
    if name.endswith("_at_ms") and isinstance(value, int):
        text = _iso_ms(value)[:16] + "Z"
    else:
        text = str(value)
    if len(text) > LINE_FIELD_CHARS_MAX:
        text = text[:LINE_FIELD_CHARS_MAX - 1] + "…"
    return f"{LINE_FIELD_LABELS.get(name, name)}={text}"


def _line_fields(payload: dict[str, Any], key: str | None) -> list[str]:
    scalars = {k: v for k, v in payload.items()
               if isinstance(v, (str, int, float, bool)) and v != "" and v != key}
    chosen = [k for k in LINE_FIELDS if k in scalars][:LINE_FIELDS_MAX]
    if not chosen:
        chosen = list(scalars)[:LINE_FIELDS_MAX]
    return [_field_text(k, scalars[k]) for k in chosen]


def render_line(doc: dict[str, Any]) -> str:
    """One compact line: UTC time, what it is, key, a few fields, and where it sits."""
    where = click.style(f"[p{doc['partition']}@{doc['offset']}]", dim=True)
    key = f"key={doc['key']}" if doc["key"] is not None else "key=-"
    if doc["kind"] == "event":
        event = doc["event"]
        kind = click.style(f"{event['event_type'].rsplit('.', 1)[-1]:<22}", fg="cyan", bold=True)
        if event["payload"] is None:
            fields = [click.style(f"payload not decodable: {doc.get('payload_error')}", fg="red")]
        else:
            fields = _line_fields(event["payload"], doc["key"])
        at_ms = int(event["occurred_at_ms"])
    elif doc["kind"] == "rejection":
        rej = doc["rejection"]
        kind = click.style(f"{'REJECTED ' + rej['reason_code']:<22}", fg="red", bold=True)
        detail = rej["detail"]
        if len(detail) > LINE_DETAIL_CHARS_MAX:
            detail = detail[:LINE_DETAIL_CHARS_MAX - 1] + "…"
        fields = [f"type={rej['event_type'].rsplit('.', 1)[-1] or '-'}",
                  f"author={rej['author_credential_id'] or '-'}",
                  (f"source={rej['source_topic']}[{rej['source_partition']}]"
                   f"@{rej['source_offset']}"),
                  f"detail={detail!r}"]
        at_ms = int(rej["rejected_at_ms"])
    else:
        kind = click.style(f"{'UNDECODABLE':<22}", fg="magenta", bold=True)
        fields = [f"{doc['error']}; {doc['value_bytes']} bytes: {doc['value_hex_prefix']}…"]
        at_ms = int(doc["timestamp_ms"])
    time_text = click.style(_iso_ms(at_ms), dim=True)
    return "  ".join([time_text, kind, key, " ".join(fields), where])


@dataclasses.dataclass
class TailPlan:
    topic: str
    from_beginning: bool
    limit: int  # 0 = no limit
    follow: bool
    key: bytes | None
    timeout_s: float | None


class TopicTail:
    """Reads one topic without a consumer group (nothing committed), partition by partition."""

    def __init__(self, settings: Settings, plan: TailPlan) -> None:
        self.plan = plan
        self.consumer = Consumer({
            **settings.kafka_client_config(),
            "group.id": f"chargemesh-cli-tail-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
            # librdkafka logs every refused connection; the tail reports failures itself.
            "logger": _RDKAFKA_LOG,
        })
        self.partitions = self._partitions(settings)

    def _partitions(self, settings: Settings) -> list[int]:
        try:
            meta = self.consumer.list_topics(self.plan.topic, timeout=TAIL_METADATA_TIMEOUT_S)
        except KafkaException as exc:
            raise OpsError(f"broker at {settings.bootstrap_servers} did not answer ({exc}): "
                           "is the stack up (`chargemesh status`)?") from exc
        topic = meta.topics.get(self.plan.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            raise OpsError(f"topic {self.plan.topic} does not exist on "
                           f"{settings.bootstrap_servers} (run `chargemesh up`?)")
        return sorted(topic.partitions)

    def assign(self, tail_window: int | None) -> None:
        """From the start, or from the last ``tail_window`` records of each partition."""
        assignment = []
        for partition in self.partitions:
            if tail_window is None:
                assignment.append(TopicPartition(self.plan.topic, partition, OFFSET_BEGINNING))
                continue
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(self.plan.topic, partition), timeout=TAIL_METADATA_TIMEOUT_S)
            assignment.append(TopicPartition(self.plan.topic, partition,
                                             max(low, high - tail_window)))
        self.consumer.assign(assignment)

    def matches(self, message: Message) -> bool:
        return self.plan.key is None or message.key() == self.plan.key

    def read_existing(self) -> Iterator[Message]:
        """The records up to the end of every partition (its end when it is reached)."""
        at_end: set[int] = set()
        idle_since = time.monotonic()
        while len(at_end) < len(self.partitions):
            batch = self.consumer.consume(TAIL_CONSUME_MAX, timeout=TAIL_POLL_S)
            if batch:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > TAIL_IDLE_S_MAX:
                raise OpsError(f"the broker sent nothing for {TAIL_IDLE_S_MAX:.0f} s while "
                               f"reading {self.plan.topic}")
            for message in batch:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        at_end.add(_partition_of(message))
                        continue
                    raise OpsError(f"reading {self.plan.topic} failed: {error}")
                if self.matches(message):
                    yield message

    def follow(self) -> Iterator[Message]:
        deadline = None if self.plan.timeout_s is None else (
            time.monotonic() + self.plan.timeout_s)
        while deadline is None or time.monotonic() < deadline:
            for message in self.consumer.consume(TAIL_CONSUME_MAX, timeout=TAIL_POLL_S):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise OpsError(f"reading {self.plan.topic} failed: {error}")
                    continue
                if self.matches(message):
                    yield message

    def close(self) -> None:
        self.consumer.close()


def _partition_of(message: Message) -> int:
    partition = message.partition()
    ensure(partition is not None, "a consumed record without a partition")
    return int(partition or 0)


def tail_records(settings: Settings, plan: TailPlan, emit: Callable[[Message], None]) -> int:
    """Emit the records the plan asks for, in order; returns how many were emitted."""
    require_broker(settings)
    registry.from_settings(settings)  # decode Confluent-framed values when configured
    tail = TopicTail(settings, plan)
    emitted = 0
    try:
        if plan.from_beginning or plan.limit == 0:
            tail.assign(None)
            for message in tail.read_existing():
                emit(message)
                emitted += 1
                if plan.limit and emitted >= plan.limit:
                    return emitted
        else:
            tail.assign(plan.limit if plan.key is None else TAIL_KEY_SCAN_RECORDS_MAX)
            # Keep the last N of each partition, then the last N of them all by record time.
            per_partition: dict[int, collections.deque[Message]] = {}
            for message in tail.read_existing():
                per_partition.setdefault(
                    _partition_of(message), collections.deque(maxlen=plan.limit)).append(message)
            merged = [m for queue in per_partition.values() for m in queue]
            merged.sort(key=lambda m: (m.timestamp()[1], _partition_of(m), m.offset() or 0))
            for message in merged[-plan.limit:]:
                emit(message)
                emitted += 1
        if plan.follow:
            for message in tail.follow():
                emit(message)
                emitted += 1
    finally:
        tail.close()
    return emitted


@cli.group()
def events() -> None:
    """Records on the chargemesh topics."""


@events.command("tail")
@click.argument("topic")
@click.option("--from-beginning", is_flag=True,
              help="Start at the first record instead of the last --limit records.")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help=f"How many records of those in the topic: the last N (default "
              f"{TAIL_LIMIT_DEFAULT}), or the first N with --from-beginning. 0 = all.")
@click.option("--follow", "-f", is_flag=True,
              help="Then keep printing new records until Ctrl-C (or --timeout).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=None,
              help="With --follow: stop following after this many seconds.")
@click.option("--key", default=None, help="Only records with this key (e.g. a station id).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document per line.")
@click.pass_context
def events_tail(ctx: click.Context, topic: str, from_beginning: bool, limit: int | None,
                follow: bool, timeout_s: float | None, key: str | None, as_json: bool) -> None:
    """Decode and print the records of TOPIC (full name, or short: market, decisions, ...).

    Signed events show their type, key and a few payload fields; rejections their reason;
    bytes that decode as neither are reported with a hex prefix.
    """
    name = resolve_topic(topic)
    if from_beginning and follow and limit:
        raise click.UsageError("--limit with --from-beginning --follow would skip the records "
                               "after the first N; leave --limit out")
    if timeout_s is not None and not follow:
        raise click.UsageError("--timeout only applies to --follow")
    if limit is None:
        limit = 0 if from_beginning else TAIL_LIMIT_DEFAULT
    plan = TailPlan(name, from_beginning, limit, follow,
                    None if key is None else key.encode(), timeout_s)

    def emit(message: Message) -> None:
        doc = decode_record(message)
        click.echo(json.dumps(doc, sort_keys=True) if as_json else render_line(doc))

    try:
        emitted = tail_records(settings_of(ctx), plan, emit)
        if emitted == 0 and not as_json:
            click.echo(f"no records in {name}" + (f" with key {key!r}" if key else ""), err=True)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        pass


def _module_main(argv: list[str]) -> int:
    """``python -m chargemesh.infra.cli.ops sink``: the sink ``start`` launches (settings from
    CHARGEMESH_*). Not a CLI: ``chargemesh sink`` is."""
    if argv != [SINK]:
        print("usage: python -m chargemesh.infra.cli.ops sink", file=sys.stderr)
        return 2
    run_sink_foreground(load_settings(), None, "info")
    return 0


if __name__ == "__main__":
    sys.exit(_module_main(sys.argv[1:]))
