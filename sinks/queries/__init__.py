"""Read models over the ClickHouse tables the sink writes: one module per read model.

Each function takes a ``clickhouse_driver.Client`` (or settings satisfying
``chargemesh.ports.ClickHouseSettings``) and returns rows or dataclasses. The CLI and the report
call them; nothing here imports the infra package.
"""

from __future__ import annotations


class ReadModelError(RuntimeError):
    """A read model cannot be given as asked (e.g. more rows than its limit); the message says why."""
