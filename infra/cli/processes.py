"""Processor workers and the ClickHouse sink as processes of one state directory.

* ``chargemesh start|stop|ps``: processor workers and the ClickHouse sink as background
  processes of one state directory (``<state_dir>/processors.json``), like ``up``/``down`` do
  for the stack; ``chargemesh status`` lists them too (:func:`processor_components`);
* ``chargemesh worker`` / ``chargemesh sink``: one worker, or the sink, in the foreground
  (for operators and systemd units).

A process is only ever signalled through a pid ``start`` recorded, and only while
``/proc/<pid>`` still shows the same process: the start time recorded with it (a reused pid has
another) and the command line ``start`` gave it. ``python -m chargemesh.infra.cli.processes sink``
is the sink's entry point that ``start`` launches (settings from ``CHARGEMESH_*``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from chargemesh.checks import ensure
from chargemesh.infra.cli.anchors import check_anchors
from chargemesh.infra.cli.errors import OpsError
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.cli.tables import out, print_table
from chargemesh.infra.config import Settings, load_settings
from chargemesh.infra.stack import supervisor as processes
from chargemesh.infra.stack.embedded import (
    BROKER,
    CLICKHOUSE,
    ComponentStatus,
    EmbeddedStack,
    StackError,
)
from chargemesh.infra.stack.preflight import require_broker, require_clickhouse
from chargemesh.infra.stack.supervisor import (
    LOOPBACK,
    ManagedProcess,
    process_running,
    stop_processes,
)
from rich.table import Table

# Exit codes besides click's 0 (done), 1 (failed: the message says why) and 2 (usage error).
EXIT_NOT_RUNNING = 3  # `ps`: nothing started (the LSB "program is not running" status)

PROCESSORS_FILE = "processors.json"
PROCESSORS_LOCK_FILE = "processors.lock"
PROCESSORS_STATE_VERSION = 1
SINK = "sink"
WORKER_PREFIX = "worker-"
WORKERS_MAX = 16
WORKER_MODULE = "chargemesh.infra.stack.worker_main"
SINK_MODULE = "chargemesh.infra.cli.processes"
# Faust retitles its worker when setproctitle is installed: "[Faust:Worker] -running- ...".
# A worker is ready when its web port answers (Faust opens it once the app is set up).
WORKER_READY_TIMEOUT_S = 90.0
# The sink has no port: it is taken as started when it still runs after this long.
SINK_SETTLE_S = 2.0
READY_POLL_INTERVAL_S = 0.2
LOCK_WAIT_S = 60.0


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
                uptime_s=processes.uptime_s(proc) if running else 0.0,
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
        return processes.spawn_managed(name, argv, ports, self.logs_dir / f"{name}.log", env=env)

    def _wait_ready(self, started: list[ManagedProcess], progress: Callable[[str], None]) -> None:
        """Until every worker's web port answers and the sink still runs after a moment."""

        def ready(proc: ManagedProcess, waited_s: float) -> bool:
            if proc.web_port is None:
                return waited_s >= SINK_SETTLE_S
            return processes.port_open(proc.web_port)

        def waiting(pending: list[ManagedProcess], waited_s: float) -> None:
            progress(f"waiting for {', '.join(p.name for p in pending)} ({waited_s:.0f} s)")

        try:
            processes.wait_ready(started, process_running, ready, WORKER_READY_TIMEOUT_S,
                                 lambda proc: processes.record_exited(proc.record), waiting,
                                 READY_POLL_INTERVAL_S)
        except processes.ExitedError as exc:
            raise OpsError(str(exc)) from exc
        except processes.NotReadyError as exc:
            stop_processes(exc.pending)
            raise OpsError(
                f"{', '.join(p.name for p in exc.pending)} did not come up within "
                f"{WORKER_READY_TIMEOUT_S:.0f} s (stopped); see {self.logs_dir}"
            ) from exc


def _name_order(name: str) -> tuple[int, int, str]:
    if name.startswith(WORKER_PREFIX) and name[len(WORKER_PREFIX):].isdigit():
        return (0, int(name[len(WORKER_PREFIX):]), name)
    return (1, 0, name)


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



@click.command()
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
        with out().status("starting") as status:
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
    print_table(out(), table)
    extra = set(fleet.read_state()) - {o.process.name for o in outcomes}
    if extra:
        out().print(f"also recorded (not asked for, left as they are): {sorted(extra)}")
    if workers > settings.partitions:
        out().print(f"note: {workers} workers for {settings.partitions} partitions: "
                       f"{workers - settings.partitions} will stay idle")


@click.command()
@click.pass_context
def stop(ctx: click.Context) -> None:
    """Stop the workers and the sink `start` launched (SIGTERM, then SIGKILL); nothing else."""
    try:
        with out().status("stopping") as status:
            outcomes = ProcessorFleet(settings_of(ctx)).stop(status.update)
    except OpsError as exc:
        raise click.ClickException(str(exc)) from exc
    if not outcomes:
        out().print("nothing to stop")
    for name, outcome in outcomes.items():
        out().print(f"{name}: {outcome}")


@click.command()
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
        out().print("no processors started: run `chargemesh start`")
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
        print_table(out(), table)
    if not views:
        ctx.exit(EXIT_NOT_RUNNING)
    if not all(view.healthy for view in views):
        ctx.exit(1)


@click.command()
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


@click.command()
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


def _module_main(argv: list[str]) -> int:
    """``python -m chargemesh.infra.cli.processes sink``: the sink ``start`` launches (settings from
    CHARGEMESH_*). Not a CLI: ``chargemesh sink`` is."""
    if argv != [SINK]:
        print("usage: python -m chargemesh.infra.cli.processes sink", file=sys.stderr)
        return 2
    run_sink_foreground(load_settings(), None, "info")
    return 0


if __name__ == "__main__":
    sys.exit(_module_main(sys.argv[1:]))
