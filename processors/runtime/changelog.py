"""The workers' state tables: each kept in memory, persisted to its own state topic, restored by
reading that topic back when partitions are assigned.

Our own store, not Faust's tables: Faust's buffered changelog writes were seen to commit input
offsets ahead of them (a worker killed then restarted with older state and lost sessions), and
its recovery stops at the changelog's reported high watermark, which the embedded broker reports
per record batch (3 records in one batch: high watermark 1), so it restored stale state.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from chargemesh.ports import KafkaSettings

log = logging.getLogger(__name__)

CHANGELOG_FETCH_RECORDS_MAX = 10_000
CHANGELOG_FETCH_TIMEOUT_MS = 200
CHANGELOG_RESTORE_TIMEOUT_S = 120.0
# Written to every state partition when a worker restores it; never a table key (tables are
# keyed by station, event id or zone, none of which starts with a NUL byte).
RESTORE_MARKER_KEY = b"\x00restore-marker"


class ChangelogTable:
    """Worker state keyed like its input topic, persisted to its own state topic (same
    partitioning), restored by reading that topic on assignment. ``data`` is the local view."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)


async def read_changelog(settings: KafkaSettings, table: ChangelogTable, partitions: list[int],
                         producer: AIOKafkaProducer) -> int:
    """Apply a table's changelog partitions from the start up to a marker written just now.

    The end of a partition is not taken from the broker's high watermark (the embedded broker
    under-reports it) nor from a run of empty fetches (a slow fetch after a restart once ended
    the restore early and a worker resumed with a station's older state). Instead a unique marker
    record is appended to every partition, acknowledged by the broker, and the partition is read
    until that marker comes back: everything acknowledged before it has then been applied.
    """
    if not partitions:
        return 0
    topic = table.topic
    nonce = uuid.uuid4().hex.encode()
    await asyncio.gather(*[await producer.send(topic, key=RESTORE_MARKER_KEY, value=nonce,
                                               partition=p) for p in partitions])
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers.split(","),
                                group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=CHANGELOG_FETCH_TIMEOUT_MS)
    await consumer.start()
    try:
        applied, upto = await _read_to_marker(consumer, table, partitions, nonce)
    finally:
        await consumer.stop()
    log.info("resynced %s: %d records, marker offsets %s", topic, applied, upto)
    return applied


async def _read_to_marker(consumer: AIOKafkaConsumer, table: ChangelogTable,
                          partitions: list[int], nonce: bytes) -> tuple[int, dict[int, int]]:
    """Apply records to ``table.data`` until every partition returned its marker ``nonce``:
    how many were applied, and each partition's marker offset."""
    topic = table.topic
    applied = 0
    upto: dict[int, int] = {}
    deadline = time.monotonic() + CHANGELOG_RESTORE_TIMEOUT_S
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    open_partitions = set(partitions)
    while open_partitions:
        if time.monotonic() > deadline:
            raise TimeoutError(f"restore of {topic} {sorted(open_partitions)} did not reach "
                               f"its marker in {CHANGELOG_RESTORE_TIMEOUT_S:.0f}s")
        fetched = await consumer.getmany(*tps, timeout_ms=CHANGELOG_FETCH_TIMEOUT_MS,
                                         max_records=CHANGELOG_FETCH_RECORDS_MAX)
        for tp, records in fetched.items():
            for record in records:
                if record.key == RESTORE_MARKER_KEY:
                    if record.value == nonce:
                        open_partitions.discard(tp.partition)
                        upto[tp.partition] = record.offset
                    continue
                if tp.partition not in open_partitions:
                    continue  # written after our marker: by a batch of ours, already held
                if record.value is None:
                    table.data.pop(record.key, None)
                else:
                    table.data[record.key] = record.value
                applied += 1
    return applied, upto


async def restore_tables(settings: KafkaSettings,
                         tables: list[tuple[ChangelogTable, list[int]]],
                         producer: AIOKafkaProducer) -> None:
    """Read each table's partitions (those of its input the worker was assigned) to their end."""
    for table, partitions in tables:
        await read_changelog(settings, table, partitions, producer)
