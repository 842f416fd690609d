"""The one process supervisor: every process chargemesh starts goes through here.

``spawn`` starts a command in its own session with its output appended to a log file and returns
its ``ProcessRecord``; ``wait_ready`` polls a readiness check with a bounded wait (naming the log of
a process that exited); ``stop`` / ``stop_all`` send SIGTERM, then SIGKILL after a bounded grace
period; ``kill`` sends SIGKILL at once. Pid records: ``ProcessRecord`` (the embedded broker and
ClickHouse in ``stack.json``) and ``ManagedProcess`` (the workers and the sink ``chargemesh start``
keeps in ``processors.json``, with the start time and command line that prove identity).
Users: ``stack.embedded`` (broker, ClickHouse), ``stack.worker.WorkerProcess`` (the Faust worker of
tests, the simulator, the demo, chaos and benchmarks), ``cli.ops.ProcessorFleet`` (``start``,
``stop``, ``ps``), ``bench.suite`` (sink, profiled worker, plain loop).

Nothing here finds a process by name. A process is only ever signalled through a pid that
``chargemesh up`` recorded, and only after ``/proc/<pid>/cmdline`` shows it still runs the
executable that was recorded with it (a pid can be reused after a crash or a reboot).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from chargemesh.checks import ensure

LOOPBACK = "127.0.0.1"
PORT_PROBE_TIMEOUT_S = 0.5
STOP_GRACE_S = 15.0
KILL_WAIT_S = 5.0
POLL_INTERVAL_S = 0.1
LOG_TAIL_BYTES_MAX = 2_000
READY_POLL_INTERVAL_S = 0.2
READY_WAIT_S_MAX = 600.0
FAUST_PROCESS_TITLE = "[Faust:Worker]"  # a Faust worker retitles its process to this
_STAT_FIELD_STATE = 0  # fields after the ")" closing comm in /proc/<pid>/stat
_STAT_FIELD_START_TICKS = 19

T = TypeVar("T")


class SupervisorError(RuntimeError):
    """A supervised process did not come up."""


class ExitedError(SupervisorError):
    """A process exited while it was awaited; the message ends with the tail of its log."""

    def __init__(self, name: str, pid: int, log_path: str) -> None:
        super().__init__(f"{name} (pid {pid}) exited; last lines of {log_path}:\n"
                         f"{log_tail(log_path)}")
        self.name, self.pid, self.log_path = name, pid, log_path


class NotReadyError(SupervisorError):
    """Processes still not ready when the wait ran out (left running: the caller decides)."""

    def __init__(self, pending: list[Any], timeout_s: float) -> None:
        super().__init__(f"not ready within {timeout_s:.0f} s: {len(pending)} processes")
        self.pending, self.timeout_s = pending, timeout_s

# Popen objects of the processes this interpreter started: kept so a child that died is reaped
# (otherwise it lingers as a zombie and still looks alive to ``kill(pid, 0)``).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclasses.dataclass(frozen=True)
class ProcessRecord:
    """One process ``up`` started, as written to ``stack.json``."""

    name: str
    pid: int
    executable: str
    ports: dict[str, int]
    log_path: str
    started_at_ms: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ProcessRecord:
        return cls(
            name=str(raw["name"]),
            pid=int(raw["pid"]),
            executable=str(raw["executable"]),
            ports={str(k): int(v) for k, v in dict(raw["ports"]).items()},
            log_path=str(raw["log_path"]),
            started_at_ms=int(raw["started_at_ms"]),
        )


def spawn(
    name: str,
    argv: list[str],
    ports: dict[str, int],
    log_path: Path,
    env: Mapping[str, str] | None = None,
) -> ProcessRecord:
    """Start ``argv`` in its own session (it outlives the CLI), output appended to ``log_path``."""
    ensure(len(argv) > 0, "spawn needs a command")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=None if env is None else dict(env),
        )
    _CHILDREN[proc.pid] = proc
    return ProcessRecord(
        name=name,
        pid=proc.pid,
        executable=argv[0],
        ports=dict(ports),
        log_path=str(log_path),
        started_at_ms=int(time.time() * 1000),
    )


def _child_alive(pid: int) -> bool | None:
    """For a child of this interpreter: whether it still runs (reaping it if not); else None.

    A child's own word beats ``/proc``: right after exec its cmdline can still read empty.
    """
    proc = _CHILDREN.get(pid)
    if proc is None:
        return None
    if proc.poll() is None:
        return True
    del _CHILDREN[pid]
    return False


def _proc_state(pid: int) -> str | None:
    """The one-letter state from ``/proc/<pid>/stat``, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Format: "pid (comm) S ..."; comm may hold spaces or parentheses, so split after the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def pid_alive(record: ProcessRecord) -> bool:
    """The recorded process still runs (not a zombie) and still runs the recorded executable."""
    if record.pid <= 1:
        return False
    child = _child_alive(record.pid)
    if child is not None:
        return child
    state = _proc_state(record.pid)
    if state is None or state in ("Z", "X"):
        return False
    return _runs_executable(record.pid, record.executable)


def _runs_executable(pid: int, executable: str) -> bool:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except (FileNotFoundError, ProcessLookupError, UnicodeDecodeError):
        return False
    return argv0 == executable or Path(argv0).name == Path(executable).name


def port_open(port: int, host: str = LOOPBACK) -> bool:
    """Something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=PORT_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """``host:port`` can be bound for listening (SO_REUSEADDR: TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports the kernel reports free right now (bind to port 0)."""
    ensure(0 < count <= 64, f"free_ports count out of range: {count}")
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait_gone(items: list[T], running: Callable[[T], bool], wait_s: float) -> list[T]:
    deadline = time.monotonic() + wait_s
    alive = [item for item in items if running(item)]
    while alive and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL_S)
        alive = [item for item in alive if running(item)]
    return alive


def terminate(items: Sequence[T], pid_of: Callable[[T], int], running: Callable[[T], bool],
              grace_s: float = STOP_GRACE_S) -> dict[int, str]:
    """SIGTERM every running item at once, SIGKILL what outlives ``grace_s``, wait at most
    ``KILL_WAIT_S`` more. Returns index -> outcome for the items that were running (stopping N
    processes takes one grace period, not N)."""
    ensure(0 < grace_s <= 600, f"grace out of range: {grace_s}")
    running_now = [(i, item) for i, item in enumerate(items) if running(item)]
    for _, item in running_now:
        _signal(pid_of(item), signal.SIGTERM)
    stubborn = _wait_gone([x for x in running_now], lambda x: running(x[1]), grace_s)
    for _, item in stubborn:
        _signal(pid_of(item), signal.SIGKILL)
    survivors = _wait_gone(stubborn, lambda x: running(x[1]), KILL_WAIT_S)
    outcomes: dict[int, str] = {}
    for entry in running_now:
        if entry in survivors:
            outcomes[entry[0]] = "still running after SIGKILL"
        elif entry in stubborn:
            outcomes[entry[0]] = f"killed after {grace_s:.0f} s"
        else:
            outcomes[entry[0]] = "stopped"
    return outcomes


def stop(record: ProcessRecord, grace_s: float = STOP_GRACE_S) -> str:
    """SIGTERM the recorded process, SIGKILL it after ``grace_s``. Returns what happened."""
    return terminate([record], lambda r: r.pid, pid_alive, grace_s).get(0, "not running")


def kill(record: ProcessRecord) -> str:
    """SIGKILL the recorded process now and wait (bounded) until it is gone."""
    if not pid_alive(record):
        return "not running"
    _signal(record.pid, signal.SIGKILL)
    if _wait_gone([record], pid_alive, KILL_WAIT_S):
        return "still running after SIGKILL"
    return "killed"


def wait_ready(items: Sequence[T], running: Callable[[T], bool],
               ready: Callable[[T, float], bool], timeout_s: float,
               exited: Callable[[T], SupervisorError],
               progress: Callable[[list[T], float], None] | None = None,
               poll_s: float = READY_POLL_INTERVAL_S) -> None:
    """Until ``ready(item, waited_s)`` holds for every item. Raises ``exited(item)`` as soon as
    one stops running, ``NotReadyError`` (with the pending items) after ``timeout_s``."""
    ensure(0 < timeout_s <= READY_WAIT_S_MAX, f"readiness wait out of range: {timeout_s}")
    begun = time.monotonic()
    pending = list(items)
    while pending:
        waited_s = time.monotonic() - begun
        for item in list(pending):
            if not running(item):
                raise exited(item)
            if ready(item, waited_s):
                pending.remove(item)
        if not pending:
            return
        if waited_s > timeout_s:
            raise NotReadyError(pending, timeout_s)
        if progress is not None:
            progress(pending, waited_s)
        time.sleep(poll_s)


def record_exited(record: ProcessRecord) -> SupervisorError:
    return ExitedError(record.name, record.pid, record.log_path)


# ---- processes ``chargemesh start`` launched: identity by start time and command line ----------


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


def proc_stat(pid: int) -> tuple[str, int] | None:
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
        return pid_alive(proc.record)
    if argv == list(proc.argv):
        return True
    # Faust's retitled worker: "[Faust:Worker] -running- <app id> -p <web port> <data dir>".
    title = " ".join(argv)
    return title.startswith(FAUST_PROCESS_TITLE) and f" -p {proc.web_port} " in title


def process_running(proc: ManagedProcess) -> bool:
    """The recorded process still runs: same pid, same start time, the command ``start`` gave."""
    if proc.pid <= 1:
        return False
    stat = proc_stat(proc.pid)
    if stat is None or stat[0] in ("Z", "X"):
        pid_alive(proc.record)  # reaps it when it is a child of this interpreter
        return False
    return stat[1] == proc.start_ticks and _cmdline_matches(proc)


def spawn_managed(name: str, argv: list[str], ports: dict[str, int], log_path: Path,
                  env: Mapping[str, str] | None = None) -> ManagedProcess:
    """``spawn``, plus the start time and command line that identify the process later."""
    record = spawn(name, argv, ports, log_path, env=env)
    stat = proc_stat(record.pid)
    ensure(stat is not None, f"{name} (pid {record.pid}) vanished right after it was started")
    return ManagedProcess(record, tuple(argv), stat[1] if stat else 0)


def stop_processes(procs: list[ManagedProcess],
                   grace_s: float = STOP_GRACE_S) -> dict[str, str]:
    """SIGTERM every recorded process that is still the same process, SIGKILL what outlives
    ``grace_s``; all at once. A pid that now belongs to another process is left alone."""
    outcomes: dict[str, str] = {}
    for proc in procs:
        if process_running(proc):
            continue
        if proc_stat(proc.pid) is not None:
            outcomes[proc.name] = f"not running (pid {proc.pid} is another process now: left alone)"
        else:
            outcomes[proc.name] = "not running"
    done = terminate(procs, lambda p: p.pid, process_running, grace_s)
    for index, outcome in done.items():
        outcomes[procs[index].name] = outcome
    return outcomes


def boot_time_s() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise SupervisorError("no btime in /proc/stat")


def uptime_s(proc: ManagedProcess) -> float:
    started_s = boot_time_s() + proc.start_ticks / os.sysconf("SC_CLK_TCK")
    return max(0.0, time.time() - started_s)


def log_tail(path: str | Path) -> str:
    """The last ``LOG_TAIL_BYTES_MAX`` bytes of a log, for error messages."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_BYTES_MAX))
            return handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
