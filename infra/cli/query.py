"""How a read-only ``chargemesh`` command (disputes, fleet, grid, pack, ledger) reads ClickHouse:
a client checked first, one read model of :mod:`chargemesh.sinks.queries` called on it, and its
failures said as one line. The SQL lives in the read models, not here."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from chargemesh.infra.cli.errors import OpsError
from chargemesh.infra.config import Settings
from chargemesh.infra.stack.preflight import require_clickhouse
from chargemesh.sinks.migrate import QUERY_TIMEOUT_S, clickhouse_client
from chargemesh.sinks.queries import ReadModelError
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

T = TypeVar("T")


def cli_client(settings: Settings, query_timeout_s: float = QUERY_TIMEOUT_S) -> Client:
    """A client for a read command, once ClickHouse answered a short probe: a stack that is
    down, or something else on the port, fails in seconds with one sentence (preflight's
    ServiceUnavailableError) instead of after the query timeout."""
    require_clickhouse(settings)
    return clickhouse_client(settings, query_timeout_s=query_timeout_s)


def read_model(settings: Settings, read: Callable[[Client], T],
               query_timeout_s: float = QUERY_TIMEOUT_S) -> T:
    """``read(client)`` on a client of its own. A read model's ``ReadModelError`` and a
    ClickHouse that does not answer become an ``OpsError`` (the error handler names a
    connection problem with what to do); an ``OpsError`` raised by ``read`` passes as it is."""
    client = cli_client(settings, query_timeout_s=query_timeout_s)
    try:
        return read(client)
    except ReadModelError as exc:
        raise OpsError(str(exc)) from exc
    except (ch_errors.Error, OSError, EOFError) as exc:
        host, port = settings.clickhouse_address
        raise OpsError(f"ClickHouse at {host}:{port} did not answer: {exc}") from exc
    finally:
        client.disconnect()
