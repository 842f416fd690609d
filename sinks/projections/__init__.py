"""Every ClickHouse projection, composed in one place.

Each domain module declares its ``TABLES`` (insert columns per table, in row-tuple order) and
its ``PROJECTORS`` (full event type -> projector); :mod:`.core` holds the machinery they share
and the two tables every message may write to. Nothing registers itself on import: the lists
below are the whole of it. Composing checks what registration used to: no event type or table
is claimed twice, and every event type is a packaged schema (a typo fails at import, not on the
first event).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from chargemesh.checks import ensure
from chargemesh.schemas.codec import catalog
from chargemesh.sinks.projections import (
    audit,
    core,
    disputes,
    grid_zones,
    ledger,
    observers,
    power_limits,
    revocation,
    sessions,
    settlements,
    swap_mobile,
    v2g_fleet,
    wireless,
)
from chargemesh.sinks.projections.core import Projector, Rows, SourceMessage

_DOMAIN_TABLES: Sequence[Mapping[str, tuple[str, ...]]] = (
    core.TABLES, ledger.TABLES, sessions.TABLES, settlements.TABLES, disputes.TABLES,
    audit.TABLES, observers.TABLES, revocation.TABLES, v2g_fleet.TABLES, swap_mobile.TABLES,
    wireless.TABLES, grid_zones.TABLES, power_limits.TABLES,
)
_DOMAIN_PROJECTORS: Sequence[Mapping[str, Projector]] = (
    ledger.PROJECTORS, sessions.PROJECTORS, settlements.PROJECTORS, disputes.PROJECTORS,
    audit.PROJECTORS, observers.PROJECTORS, revocation.PROJECTORS, v2g_fleet.PROJECTORS,
    swap_mobile.PROJECTORS, wireless.PROJECTORS, grid_zones.PROJECTORS, power_limits.PROJECTORS,
)


def _tables() -> dict[str, tuple[str, ...]]:
    tables: dict[str, tuple[str, ...]] = {}
    for domain in _DOMAIN_TABLES:
        for table, columns in domain.items():
            ensure(table not in tables, f"two declarations of table {table}")
            tables[table] = columns
    return tables


def _projectors() -> dict[str, Projector]:
    projectors: dict[str, Projector] = {}
    for domain in _DOMAIN_PROJECTORS:
        for event_type, projector in domain.items():
            ensure(event_type not in projectors, f"two projectors for {event_type}")
            catalog().current(event_type)
            projectors[event_type] = projector
    return projectors


# Read-only: composed here once. Insert columns of every table the sink writes, in row-tuple
# order (DDL in sinks/migrations/).
TABLES: Mapping[str, tuple[str, ...]] = MappingProxyType(_tables())
# The projector of each event type (full name, version included); other types give only their
# ``events`` row.
PROJECTORS: Mapping[str, Projector] = MappingProxyType(_projectors())


def project(message: SourceMessage, rejections_topic: str, ingested_at_ms: int) -> Rows:
    """The rows ``message`` stands for, under every projector and table above; never raises on
    bad input (it becomes a rejection row)."""
    return core.project_message(message, rejections_topic, ingested_at_ms, PROJECTORS, TABLES)
