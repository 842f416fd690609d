"""Child processes of the embedded stack: start detached, probe, stop by recorded pid only.

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chargemesh.checks import ensure

LOOPBACK = "127.0.0.1"
PORT_PROBE_TIMEOUT_S = 0.5
STOP_GRACE_S = 15.0
KILL_WAIT_S = 5.0
POLL_INTERVAL_S = 0.1
LOG_TAIL_BYTES_MAX = 2_000

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


def _wait_gone(record: ProcessRecord, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not pid_alive(record):
            return True
        time.sleep(POLL_INTERVAL_S)
    return not pid_alive(record)


def stop(record: ProcessRecord) -> str:
    """SIGTERM the recorded process, SIGKILL it after ``STOP_GRACE_S``. Returns what happened."""
    if not pid_alive(record):
        return "not running"
    os.kill(record.pid, signal.SIGTERM)
    if _wait_gone(record, STOP_GRACE_S):
        return "stopped"
    os.kill(record.pid, signal.SIGKILL)
    if _wait_gone(record, KILL_WAIT_S):
        return f"killed after {STOP_GRACE_S:.0f} s"
    return "still running after SIGKILL"


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
