"""The disputes read model (P2): disputes' current state, each one's changes in order, and the
lines of the settlement that corrected it, from ``disputes_current``, ``disputes`` and
``settlement_lines`` (migrations 0003 and 0004).

Functions take a ``clickhouse_driver.Client``; ``chargemesh disputes list`` and ``disputes show``
print what they return.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chargemesh.sinks.queries import ReadModelError, keyed_rows
from clickhouse_driver import Client

CHANGES_READ_MAX = 1_000

LIST_COLUMNS = (
    "dispute_id", "station_id", "session_id", "kind", "status", "outcome", "opened_at_ms",
    "opened_by_credential_id", "evidence_count", "settlement_id", "adjustment_settlement_id",
    "adjustment_total", "currency", "resolved_by_credential_id",
)
CHANGE_COLUMNS = ("seq", "change", "status", "actor_credential_id", "recorded_at_ms",
                  "evidence_event_ids", "statement", "outcome", "adjustment_settlement_id",
                  "adjustment_total", "cause_event_id")
LINE_COLUMNS = ("settlement_id", "line_no", "kind", "description", "quantity_wh", "amount",
                "currency")


@dataclasses.dataclass(frozen=True)
class DisputeView:
    summary: dict[str, Any]
    changes: list[dict[str, Any]]
    correction_lines: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"dispute": self.summary, "changes": self.changes,
                "correction_lines": self.correction_lines}


def read_disputes(client: Client, only_open: bool, station_id: str | None,
                  limit: int) -> list[dict[str, Any]]:
    """Current state of disputes (of ``station_id`` if given), latest opened first."""
    where = ["1 = 1"]
    if only_open:
        where.append("status = 'OPEN'")
    if station_id:
        where.append("station_id = %(station)s")
    sql = (f"SELECT {', '.join(LIST_COLUMNS)} FROM disputes_current WHERE {' AND '.join(where)}"
           " ORDER BY opened_at_ms DESC, dispute_id LIMIT %(limit)s")
    return keyed_rows(client, sql, {"station": station_id or "", "limit": limit}, LIST_COLUMNS)


def read_dispute(client: Client, dispute_id: str) -> DisputeView:
    """One dispute: its current state, its changes by ``seq`` and its correction's lines.
    ``ReadModelError`` if no dispute has this id, or several (at different stations)."""
    found = keyed_rows(client, f"SELECT {', '.join(LIST_COLUMNS)} FROM disputes_current "
                       "WHERE dispute_id = %(id)s", {"id": dispute_id}, LIST_COLUMNS)
    if not found:
        raise ReadModelError(f"no dispute {dispute_id!r} in ClickHouse (is the sink running?)")
    if len(found) > 1:
        raise ReadModelError(f"{dispute_id!r} names {len(found)} disputes at different "
                             "stations or sessions: use `disputes list --station`")
    summary = found[0]
    changes = keyed_rows(client, f"SELECT {', '.join(CHANGE_COLUMNS)} FROM disputes FINAL "
                         "WHERE dispute_id = %(id)s AND station_id = %(station)s ORDER BY seq "
                         "LIMIT %(limit)s",
                         {"id": dispute_id, "station": summary["station_id"],
                          "limit": CHANGES_READ_MAX}, CHANGE_COLUMNS)
    lines: list[dict[str, Any]] = []
    if summary["adjustment_settlement_id"]:
        lines = keyed_rows(client, f"SELECT {', '.join(LINE_COLUMNS)} FROM settlement_lines "
                           "FINAL WHERE settlement_id = %(sid)s ORDER BY line_no",
                           {"sid": summary["adjustment_settlement_id"]}, LINE_COLUMNS)
    return DisputeView(summary, changes, lines)
