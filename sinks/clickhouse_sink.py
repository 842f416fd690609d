"""The ClickHouse sink: admitted, decisions, settlements and rejections topics into ClickHouse.

One cycle (:meth:`ClickHouseSink.drain_once`) reads a batch for up to ``FLUSH_INTERVAL_S`` or
``MESSAGES_PER_BATCH_MAX`` messages, projects every message into rows
(:mod:`chargemesh.sinks.projections`), inserts them table by table (at most
``ROWS_PER_INSERT_MAX`` rows per insert, so about one insert per table per second) and commits
the batch's offsets only once every insert was acknowledged. Kafka is at-least-once and so is
this sink; every table is a ``ReplacingMergeTree`` keyed by an id taken from the event, so a
batch inserted twice (after a crash between insert and commit, or a redelivery) collapses.

When ClickHouse does not answer, an insert is retried ``INSERT_ATTEMPTS_MAX`` times with a
backoff; then the cycle gives up without committing, rewinds the consumer to the batch's first
offsets and raises :class:`ClickHouseUnavailableError`. :meth:`ClickHouseSink.run` waits
``retry_after_s`` and tries again, for as long as it takes: nothing is lost and nothing skipped.
A message that does not decode is written to ``rejections`` (``SINK_UNDECODABLE``) and the sink
goes on. An insert ClickHouse refuses for good (a bug) stalls the sink loudly rather than drop
data. The sink does not verify signatures: its topics hold what ingress verified and what the
processors signed; ``events.envelope_bytes`` keeps the exact signed bytes for any later audit.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import Any, Self

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from chargemesh.checks import InvariantError, ensure
from chargemesh.ports import KafkaSettings, SinkSettings
from chargemesh.schemas import registry
from chargemesh.sinks.migrate import clickhouse_client
from chargemesh.sinks.projections import TABLES, project
from chargemesh.sinks.projections.core import Row, Rows, SourceMessage
from chargemesh.streams.topics import (
    ADMITTED, CHECKPOINTS, DECISIONS, DISPUTES, REJECTIONS, SETTLEMENTS,
)

log = logging.getLogger(__name__)

GROUP_ID_DEFAULT = "chargemesh-sink-clickhouse"
SINK_TOPICS: tuple[str, ...] = (ADMITTED.name, DECISIONS.name, SETTLEMENTS.name, REJECTIONS.name,
                                CHECKPOINTS.name, DISPUTES.name)
MESSAGES_PER_BATCH_MAX = 5_000
# Messages are up to 1 MiB (topics.MESSAGE_BYTES_MAX): bound a batch's memory too. Checked
# between consume calls, so a batch may pass it by one call's messages.
BATCH_VALUE_BYTES_MAX = 32 * 1024 * 1024
ROWS_PER_INSERT_MAX = 5_000
MESSAGES_PER_CONSUME_MAX = 1_000
FLUSH_INTERVAL_S = 1.0
# A hung server (SIGSTOP, network partition) fails an insert after this long, not minutes.
INSERT_TIMEOUT_S = 10.0
INSERT_ATTEMPTS_MAX = 3
INSERT_BACKOFF_INITIAL_S = 0.25
INSERT_BACKOFF_MAX_S = 2.0
# How long run() waits after a cycle gave up before it reads the batch again.
OUTAGE_RETRY_AFTER_S = 2.0
# Kafka drops a consumer that does not poll for max.poll.interval.ms; one cycle must fit in it.
CYCLE_S_MAX = (
    FLUSH_INTERVAL_S
    + INSERT_ATTEMPTS_MAX * (INSERT_TIMEOUT_S + INSERT_BACKOFF_MAX_S)
    + OUTAGE_RETRY_AFTER_S
)
MAX_POLL_INTERVAL_MS = 300_000
CLICKHOUSE_ERRORS = (ch_errors.Error, OSError, EOFError)


class ClickHouseUnavailableError(RuntimeError):
    """ClickHouse did not take a batch; nothing was committed. Try again after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclasses.dataclass
class Batch:
    """Messages of one cycle, their rows, and where each partition starts and ends."""

    size: int = 0
    value_bytes: int = 0
    rows: Rows = dataclasses.field(default_factory=dict)
    first_offsets: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    next_offsets: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)

    def add(self, message: SourceMessage, rows: Rows) -> None:
        place = (message.topic, message.partition)
        self.first_offsets.setdefault(place, message.offset)
        self.next_offsets[place] = message.offset + 1
        for table, table_rows in rows.items():
            self.rows.setdefault(table, []).extend(table_rows)
        self.size += 1
        self.value_bytes += len(message.value or b"")

    @property
    def full(self) -> bool:
        return self.size >= MESSAGES_PER_BATCH_MAX or self.value_bytes >= BATCH_VALUE_BYTES_MAX


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def consumer_config(settings: KafkaSettings, group_id: str) -> dict[str, Any]:
    """librdkafka settings: manual commits only, from the start when the group is new."""
    ensure(CYCLE_S_MAX * 1000 < MAX_POLL_INTERVAL_MS, "a sink cycle outlasts max.poll.interval")
    return {
        **settings.kafka_client_config(),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(1, settings.session_timeout_ms // 3),
        "max.poll.interval.ms": MAX_POLL_INTERVAL_MS,
    }


def _source_message(message: Message, ingested_at_ms: int) -> SourceMessage:
    kind, timestamp_ms = message.timestamp()
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:
        raise InvariantError("a consumed message without topic, partition or offset")
    return SourceMessage(
        topic=topic,
        partition=partition,
        offset=offset,
        value=message.value(),
        timestamp_ms=ingested_at_ms if kind == TIMESTAMP_NOT_AVAILABLE else int(timestamp_ms),
    )


class ClickHouseSink:
    """A consumer-group member that copies its partitions into ClickHouse, batch by batch."""

    def __init__(
        self,
        settings: SinkSettings,
        group_id: str = GROUP_ID_DEFAULT,
        topics: Sequence[str] = SINK_TOPICS,
        rejections_topic: str = REJECTIONS.name,
    ) -> None:
        ensure(len(topics) > 0, "the sink needs at least one topic")
        self.settings = settings
        registry.from_settings(settings)  # decode Confluent-framed values when configured
        self.group_id = group_id
        self.topics = tuple(topics)
        self.rejections_topic = rejections_topic
        self._client: Client | None = None
        self._closed = False
        # monotonic time of the last assignment: a group join is not idleness (see run()).
        self._assigned_at_s = time.monotonic()
        self._consumer = Consumer(consumer_config(settings, group_id))
        self._consumer.subscribe(list(self.topics), on_assign=self._on_assign)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- public API ----------------------------------------------------------------------------

    def drain_once(self) -> int:
        """One cycle: poll a batch, insert its rows, commit. Returns the messages handled.

        Raises :class:`ClickHouseUnavailableError` (after rewinding to the batch's start and
        without committing) when ClickHouse did not take the batch.
        """
        batch = self._poll_batch()
        if batch.size == 0:
            return 0
        try:
            self._insert(batch.rows)
        except ClickHouseUnavailableError:
            self._rewind(batch)
            raise
        self._commit(batch)
        return batch.size

    def run(
        self, stop_event: threading.Event | None = None, idle_exit_s: float | None = None
    ) -> int:
        """Cycle until ``stop_event`` is set, or no message came for ``idle_exit_s`` (if given)
        since the last message or the last partition assignment (a group join reads nothing).

        A ClickHouse outage never ends the loop: the batch is read again after
        ``retry_after_s`` until ClickHouse takes it. Returns the messages handled.
        """
        stop = stop_event or threading.Event()
        handled = 0
        last_work = time.monotonic()
        while not stop.is_set():
            try:
                count = self.drain_once()
            except ClickHouseUnavailableError as exc:
                log.warning("ClickHouse unavailable, retrying in %.1f s: %s",
                            exc.retry_after_s, exc)
                last_work = time.monotonic()  # work is pending: an outage is not idleness
                stop.wait(exc.retry_after_s)
                continue
            handled += count
            if count:
                last_work = time.monotonic()
            idle_since_s = max(last_work, self._assigned_at_s)
            if idle_exit_s is not None and time.monotonic() - idle_since_s >= idle_exit_s:
                break
        return handled

    def close(self) -> None:
        """Leave the consumer group and disconnect from ClickHouse. Uncommitted work is re-read.

        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        self._disconnect()
        self._consumer.close()

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %d partitions", len(partitions))
        self._assigned_at_s = time.monotonic()

    # -- one cycle -----------------------------------------------------------------------------

    def _poll_batch(self) -> Batch:
        batch = Batch()
        deadline = time.monotonic() + FLUSH_INTERVAL_S
        while not batch.full:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            wanted = min(MESSAGES_PER_CONSUME_MAX, MESSAGES_PER_BATCH_MAX - batch.size)
            for message in self._consumer.consume(num_messages=wanted, timeout=remaining_s):
                self._add(batch, message)
        return batch

    def _add(self, batch: Batch, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
            return
        ingested_at_ms = now_ms()
        source = _source_message(message, ingested_at_ms)
        batch.add(source, project(source, self.rejections_topic, ingested_at_ms))

    def _insert(self, rows: Rows) -> None:
        """Insert every table's rows; bounded retries, then :class:`ClickHouseUnavailableError`."""
        pending = sorted(table for table, table_rows in rows.items() if table_rows)
        backoff_s = INSERT_BACKOFF_INITIAL_S
        for attempt in range(1, INSERT_ATTEMPTS_MAX + 1):
            try:
                while pending:
                    self._insert_table(pending[0], rows[pending[0]])
                    pending.pop(0)  # done tables are not inserted again on a retry
                return
            except CLICKHOUSE_ERRORS as exc:
                self._disconnect()
                log.warning("insert into %s failed (attempt %d/%d): %s",
                            pending[0], attempt, INSERT_ATTEMPTS_MAX, exc)
                if attempt == INSERT_ATTEMPTS_MAX:
                    raise ClickHouseUnavailableError(
                        f"insert into {pending[0]} failed {attempt} times: {exc}",
                        OUTAGE_RETRY_AFTER_S,
                    ) from exc
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, INSERT_BACKOFF_MAX_S)

    def _insert_table(self, table: str, rows: list[Row]) -> None:
        columns = TABLES[table]
        statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
        client = self._connect()
        for start in range(0, len(rows), ROWS_PER_INSERT_MAX):
            chunk = rows[start:start + ROWS_PER_INSERT_MAX]
            ensure(all(len(row) == len(columns) for row in chunk), f"{table}: row width")
            client.execute(statement, chunk)

    def _commit(self, batch: Batch) -> None:
        """Commit what ClickHouse acknowledged. A failed commit only means a harmless re-read."""
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(batch.next_offsets.items())]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("offset commit failed (the batch will be read and collapse again): %s",
                        exc)

    def _rewind(self, batch: Batch) -> None:
        """Seek back to the batch's first offsets, so the next cycle reads the batch again."""
        for (topic, partition), offset in sorted(batch.first_offsets.items()):
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                # Revoked meanwhile: its new owner starts from the last commit, which is older.
                log.info("no rewind of %s[%d]: %s", topic, partition, exc)

    # -- ClickHouse connection -----------------------------------------------------------------

    def _connect(self) -> Client:
        if self._client is None:
            self._client = clickhouse_client(self.settings, query_timeout_s=INSERT_TIMEOUT_S)
        return self._client

    def _disconnect(self) -> None:
        if self._client is not None:
            try:
                self._client.disconnect()
            finally:
                self._client = None


def run_sink(settings: SinkSettings, group_id: str = GROUP_ID_DEFAULT) -> None:
    """Run the sink in the foreground until SIGINT or SIGTERM (for the CLI)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current cycle", signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ClickHouseSink(settings, group_id=group_id) as sink:
            handled = sink.run(stop_event=stop)
        log.info("sink stopped after %d messages", handled)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

