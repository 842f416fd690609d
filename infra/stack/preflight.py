"""Is the Kafka broker or the ClickHouse server a command needs there? Answered in seconds.

A client library left alone takes its own time to give up on a service that is absent: a
librdkafka producer retries for 30 s, a metadata request for its whole timeout, a ClickHouse
read waits minutes on a port where something that is not ClickHouse accepted the connection.
The ``chargemesh`` commands call :func:`require_broker` / :func:`require_clickhouse` first, so
an absent stack fails at once with a sentence naming the service, its address and what to do.

:func:`clickhouse_problem` and :func:`broker_problem` turn a client library's connection error
into that sentence; the CLI's error handler (:mod:`chargemesh.infra.cli.errors`) uses them for
errors raised later in a command too.
"""

from __future__ import annotations

import socket

from chargemesh.infra.config import ENV_PREFIX, Settings
from chargemesh.infra.stack.kafka_admin import TopicAdminError, topic_partitions
from chargemesh.sinks.migrate import clickhouse_client
from clickhouse_driver import errors as ch_errors
from confluent_kafka import KafkaError, KafkaException

# How long a probe waits for a service before the command gives up on it.
PROBE_TIMEOUT_S = 5.0
# A refused TCP connection is immediate; this bounds a connect to a host that drops packets.
TCP_CONNECT_TIMEOUT_S = 2.0
BOOTSTRAP_SERVERS_MAX = 64
SERVER_MESSAGE_CHARS_MAX = 300

# librdkafka error codes that mean "no broker answered" (rather than "the broker refused").
_KAFKA_UNREACHABLE_CODES = frozenset({
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TIMED_OUT,
    KafkaError._MSG_TIMED_OUT,
    KafkaError._RESOLVE,
})
# ClickHouse server error codes that mean "the tables are not there": migrations not applied.
_CH_SCHEMA_MISSING_CODES = frozenset({
    ch_errors.ErrorCodes.UNKNOWN_TABLE,
    ch_errors.ErrorCodes.UNKNOWN_DATABASE,
    ch_errors.ErrorCodes.UNKNOWN_IDENTIFIER,
    ch_errors.ErrorCodes.NO_SUCH_COLUMN_IN_TABLE,
})
_CH_LOGIN_CODES = frozenset({
    ch_errors.ErrorCodes.UNKNOWN_USER,
    ch_errors.ErrorCodes.WRONG_PASSWORD,
    ch_errors.ErrorCodes.REQUIRED_PASSWORD,
    516,  # AUTHENTICATION_FAILED (servers newer than the driver's code table)
})


class ServiceUnavailableError(RuntimeError):
    """A service a command needs (Kafka, ClickHouse) did not answer; the message says what to
    do."""


# ---- ClickHouse ----------------------------------------------------------------------------


def clickhouse_remedy(settings: Settings) -> str:
    if settings.clickhouse_embedded:
        return (f"is the stack up? run `chargemesh up` (or check {ENV_PREFIX}CLICKHOUSE_PORT, "
                f"or set {ENV_PREFIX}CLICKHOUSE_HOST to use another server)")
    return (f"check that the server runs and that {ENV_PREFIX}CLICKHOUSE_HOST / "
            f"{ENV_PREFIX}CLICKHOUSE_PORT name its native TCP port")


def require_clickhouse(settings: Settings, timeout_s: float | None = None) -> None:
    """Raise ServiceUnavailableError unless ClickHouse answers ``SELECT 1`` within
    ``timeout_s`` (default PROBE_TIMEOUT_S), on the ``default`` database: a missing chargemesh
    database is the query's own, clearer error."""
    timeout_s = timeout_s or PROBE_TIMEOUT_S
    client = clickhouse_client(settings, database=False, query_timeout_s=timeout_s)
    try:
        client.execute("SELECT 1")
    except (ch_errors.Error, OSError, EOFError) as exc:
        problem = clickhouse_problem(settings, exc, timeout_s)
        raise ServiceUnavailableError(problem or f"ClickHouse probe failed: {exc}") from exc
    finally:
        client.disconnect()


def clickhouse_problem(settings: Settings, exc: BaseException,
                       timeout_s: float | None = None) -> str | None:
    """What a ClickHouse client error means and what to do, or None if ``exc`` is not one."""
    host, port = settings.clickhouse_address
    where = f"ClickHouse at {host}:{port}"
    remedy = clickhouse_remedy(settings)
    within = f" within {timeout_s:.0f} s" if timeout_s else ""
    if isinstance(exc, ch_errors.ServerException):
        return _clickhouse_server_problem(settings, exc)
    if isinstance(exc, (ch_errors.SocketTimeoutError, socket.timeout)):
        return (f"{where} accepted the connection but did not answer{within}: is that port a "
                f"ClickHouse server's native TCP port, and is the server running? "
                f"(`chargemesh status`)")
    if isinstance(exc, ConnectionRefusedError) or (
            isinstance(exc, ch_errors.NetworkError) and "refused" in str(exc).lower()):
        return f"{where} refused the connection: {remedy}"
    if isinstance(exc, (ch_errors.UnexpectedPacketFromServerError,
                        ch_errors.UnknownPacketFromServerError, ch_errors.NetworkError,
                        EOFError, ConnectionResetError)):
        return (f"{where} did not speak the ClickHouse native protocol ({_first_line(exc)}): "
                f"is {ENV_PREFIX}CLICKHOUSE_PORT the server's native TCP port (not HTTP), "
                f"and is the server running? (`chargemesh status`)")
    return None


def _clickhouse_server_problem(settings: Settings, exc: ch_errors.ServerException) -> str:
    host, port = settings.clickhouse_address
    said = _first_line(exc)
    if exc.code in _CH_SCHEMA_MISSING_CODES:
        return (f"ClickHouse database {settings.clickhouse_database!r} at {host}:{port} lacks "
                f"what this command reads ({said}): run `chargemesh up` to apply the "
                f"migrations (or check {ENV_PREFIX}CLICKHOUSE_DATABASE)")
    if exc.code in _CH_LOGIN_CODES:
        return (f"ClickHouse at {host}:{port} refused user {settings.clickhouse_user!r} "
                f"({said}): check {ENV_PREFIX}CLICKHOUSE_USER / {ENV_PREFIX}CLICKHOUSE_PASSWORD")
    return (f"ClickHouse at {host}:{port} refused the query ({said}): see the server's log "
            f"(`chargemesh status` names the stack), or run with --debug for the traceback")


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = text.split(". Stack trace:")[0]
    if len(text) > SERVER_MESSAGE_CHARS_MAX:
        text = text[:SERVER_MESSAGE_CHARS_MAX] + "..."
    return text or type(exc).__name__


# ---- Kafka ---------------------------------------------------------------------------------


def broker_remedy(settings: Settings) -> str:
    if settings.kafka_embedded:
        return (f"is the stack up? run `chargemesh up` (or check {ENV_PREFIX}KAFKA_PORT, or "
                f"set {ENV_PREFIX}KAFKA_BOOTSTRAP to use another cluster)")
    return f"check that the cluster runs and that {ENV_PREFIX}KAFKA_BOOTSTRAP names it"


def bootstrap_addresses(bootstrap_servers: str) -> list[tuple[str, int]]:
    """``host:port`` pairs of a bootstrap list (a ``PROTOCOL://`` prefix is allowed); pairs
    that do not parse are left out."""
    out: list[tuple[str, int]] = []
    for item in bootstrap_servers.split(",")[:BOOTSTRAP_SERVERS_MAX]:
        address = item.strip().rsplit("://", 1)[-1]
        host, _, port = address.rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def _tcp_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=TCP_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def require_broker(settings: Settings, timeout_s: float | None = None) -> None:
    """Raise ServiceUnavailableError unless a bootstrap server accepts a TCP connection and
    answers a metadata request within ``timeout_s`` (default PROBE_TIMEOUT_S)."""
    timeout_s = timeout_s or PROBE_TIMEOUT_S
    servers = settings.bootstrap_servers
    addresses = bootstrap_addresses(servers)
    if addresses and not any(_tcp_accepts(host, port) for host, port in addresses):
        raise ServiceUnavailableError(
            f"Kafka broker at {servers} refused the connection: {broker_remedy(settings)}")
    try:
        topic_partitions(settings, timeout_s=timeout_s)
    except TopicAdminError as exc:
        if not addresses:
            raise ServiceUnavailableError(
                f"Kafka broker at {servers} did not answer within {timeout_s:.0f} s: "
                f"{broker_remedy(settings)}") from exc
        raise ServiceUnavailableError(
            f"Kafka broker at {servers} accepted the connection but did not answer within "
            f"{timeout_s:.0f} s: is a running Kafka broker on that port? check `chargemesh "
            f"status` and {ENV_PREFIX}KAFKA_PORT / {ENV_PREFIX}KAFKA_BOOTSTRAP") from exc


def broker_problem(settings: Settings, exc: BaseException) -> str | None:
    """What a Kafka client error means and what to do, or None if ``exc`` is not one."""
    servers = settings.bootstrap_servers
    if isinstance(exc, KafkaException):
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() in _KAFKA_UNREACHABLE_CODES:
            return (f"Kafka broker at {servers} did not answer ({error.str()}): "
                    f"{broker_remedy(settings)}")
        detail = error.str() if isinstance(error, KafkaError) else str(exc)
        return (f"Kafka at {servers} refused the request ({detail}): check `chargemesh status`, "
                f"or run with --debug for the traceback")
    if isinstance(exc, TopicAdminError):
        return f"{_first_line(exc)}: {broker_remedy(settings)}"
    return None
