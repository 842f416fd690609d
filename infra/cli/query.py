"""ClickHouse reads shared by the read-only ``chargemesh`` commands (disputes, fleet, grid,
pack, ledger, report): a client checked first, rows as dicts keyed by column name."""

from __future__ import annotations

from typing import Any

from chargemesh.infra.config import Settings
from chargemesh.infra.stack.preflight import require_clickhouse
from chargemesh.sinks.migrate import QUERY_TIMEOUT_S, clickhouse_client
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors


def cli_client(settings: Settings, query_timeout_s: float = QUERY_TIMEOUT_S) -> Client:
    """A client for a read command, once ClickHouse answered a short probe: a stack that is
    down, or something else on the port, fails in seconds with one sentence (preflight's
    ServiceUnavailableError) instead of after the query timeout."""
    require_clickhouse(settings)
    return clickhouse_client(settings, query_timeout_s=query_timeout_s)


def named_rows(client: Any, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``sql`` on an open ``client``, keyed by the column names ClickHouse reports."""
    rows, columns = client.execute(sql, params, with_column_types=True)
    return [dict(zip([c[0] for c in columns], row)) for row in rows]


def query_rows(settings: Settings, sql: str, params: dict[str, Any], columns: tuple[str, ...],
               error: type[Exception], query_timeout_s: float) -> list[dict[str, Any]]:
    """Rows of ``sql`` on a client of its own, keyed by ``columns``; ``error`` if ClickHouse
    does not answer."""
    client = cli_client(settings, query_timeout_s=query_timeout_s)
    try:
        rows = client.execute(sql, params)
    except (ch_errors.Error, OSError, EOFError) as exc:
        host, port = settings.clickhouse_address
        raise error(f"ClickHouse at {host}:{port} did not answer: {exc}") from exc
    finally:
        client.disconnect()
    return [dict(zip(columns, row)) for row in rows]
