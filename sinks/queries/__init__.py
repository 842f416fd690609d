"""Read models over the ClickHouse tables the sink writes: one module per read model.

Each function takes a ``clickhouse_driver.Client`` (or settings satisfying
``chargemesh.ports.ClickHouseSettings``) and returns rows or dataclasses. The CLI and the report
call them; nothing here imports the infra package.
"""

from __future__ import annotations

from typing import Any


class ReadModelError(RuntimeError):
    """A read model cannot be given as asked (e.g. more rows than its limit); the message says why."""


def named_rows(client: Any, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``sql`` on an open client, keyed by the column names ClickHouse reports."""
    rows, columns = client.execute(sql, params, with_column_types=True)
    return [dict(zip([c[0] for c in columns], row)) for row in rows]


def keyed_rows(client: Any, sql: str, params: dict[str, Any],
               columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of ``sql`` (which selects ``columns``, in order) on an open client, keyed by them."""
    return [dict(zip(columns, row)) for row in client.execute(sql, params)]
