"""The regulator's audit over ClickHouse (P5): the ``events`` archive as an audit source, and
the ``audit_findings`` table an audit's findings are recorded in.

Functions take a ``clickhouse_driver.Client``; ``chargemesh audit --source clickhouse`` replays
what :func:`read_archive` returns, ``chargemesh audit --record`` writes through
:func:`insert_findings`.
"""

from __future__ import annotations

from typing import Any

from chargemesh.processors.audit.checkpoints import LogRecord
from chargemesh.processors.audit.replay import AuditReport, AuditSource
from chargemesh.processors.governance import GOVERNANCE_EVENT_TYPES
from chargemesh.sinks.projections import TABLES
from chargemesh.sinks.projections.audit import AUDIT_FINDINGS
from chargemesh.sinks.projections.core import seconds
from chargemesh.streams import topics
from clickhouse_driver import Client

ARCHIVE_ROWS_MAX = 20_000_000


def read_archive(client: Client, rows_max: int = ARCHIVE_ROWS_MAX) -> AuditSource:
    """The ``events`` archive: one row per event id (FINAL), the envelope bytes as archived.
    Governance events are the admitted copies, replayed to a fixpoint (the archive does not keep
    the governance topic's order)."""
    rows = client.execute(
        "SELECT topic, kafka_partition, kafka_offset, subject_key, event_id, event_type, "
        "event_hash, envelope_bytes, occurred_at_ms FROM events FINAL "
        f"ORDER BY topic, kafka_partition, kafka_offset LIMIT {int(rows_max)}",
        settings={"strings_as_bytes": True})
    governance, logs, checkpoints = [], [], []
    archived: dict[tuple[str, int, int], tuple[str, str]] = {}
    for topic_b, partition, offset, key, event_id, event_type, event_hash, value, at_ms in rows:
        topic = topic_b.decode()
        record = LogRecord(topic, int(partition), int(offset), bytes(key), bytes(value))
        archived[(topic, record.partition, record.offset)] = (event_id.decode(),
                                                              event_hash.decode())
        if topic == topics.CHECKPOINTS.name:
            checkpoints.append(record)
            continue
        if event_type.decode() in GOVERNANCE_EVENT_TYPES:
            governance.append((int(at_ms), record))
        logs.append(record)
    ordered = [r for _, r in sorted(governance, key=lambda g: (g[0], g[1].partition,
                                                                g[1].offset))]
    return AuditSource("clickhouse", ordered, False, logs, checkpoints, archived)


def finding_rows(report: AuditReport, audited_at_ms: int) -> tuple[str, list[tuple[Any, ...]]]:
    """The audit id (``authority/audited_at_ms``) and one ``audit_findings`` row per finding."""
    audit_id = f"{report.authority_id}/{audited_at_ms}"
    rows = [(audit_id, report.authority_id, audited_at_ms, seconds(audited_at_ms), report.source,
             f.code, f.event_id, f.event_type, f.where, f.session_id, f.detail)
            for f in report.findings]
    return audit_id, rows


def insert_findings(client: Client, rows: list[tuple[Any, ...]]) -> None:
    client.execute(f"INSERT INTO {AUDIT_FINDINGS} ({', '.join(TABLES[AUDIT_FINDINGS])}) VALUES",
                   rows)
