"""The Faust processors: verify on the way in, decide per station and per zone, publish.

Agents only move data: each reads a batch, verifies it, calls the pure pipeline
(``processors/pipeline.py``: ``market_batch``, ``grid_batch``, ``governance_batch``), publishes
the outputs, then persists the state writes. Correctness does not depend on Kafka transactions
(at-least-once here):

* outputs of a batch (admitted copies, decisions, rejections) are published and acknowledged
  *before* the table state that records them is written, and every output has a deterministic
  id (decisions: UUIDv5 of the causing event; rejections: of topic/partition/offset), so a batch
  redone after a crash republishes identical records that consumers collapse by id;
* each station's ledger records the last offset it applied (``applied_through_offset``), so a
  redelivered event never changes the state twice;
* ``event_id_to_position`` remembers where each event id was first seen: the same id at another
  position is a replay and is rejected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import faust
from chargemesh.ports import KafkaSettings, ProcessorSettings
from chargemesh.processors import pipeline
from chargemesh.processors.governance import TrustAnchor
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.records import Record
from chargemesh.processors.runtime.changelog import ChangelogTable, restore_tables
from chargemesh.processors.runtime.follower import GovernanceFollower
from chargemesh.processors.runtime.producer import OutputProducer
from chargemesh.processors.runtime.stats import STATS_INTERVAL_S, BatchStats
from chargemesh.schemas import registry
from chargemesh.streams import topics
from chargemesh.streams.keys import Signer
from chargemesh.units import SECOND_MS

log = logging.getLogger(__name__)

APP_ID = "chargemesh-processors"
BATCH_EVENTS_MAX = 500
STREAM_BUFFER_EVENTS_MAX = 2 * BATCH_EVENTS_MAX
BATCH_WITHIN_S = 0.005
COMMIT_INTERVAL_S = 0.5
GOVERNANCE_POLL_INTERVAL_S = 0.5
HEARTBEAT_INTERVAL_S_MIN = 0.5
HEARTBEATS_PER_SESSION_TIMEOUT = 6
PRODUCER_LINGER_S = 0.002
EXIT_INFRASTRUCTURE_FAILURE = 70


def now_ms() -> int:
    return int(time.time() * SECOND_MS)


def fail_stop(what: str, exc: BaseException) -> None:
    """Stop the process at once when a batch cannot be completed (broker unreachable...).

    Faust acknowledges a ``take_events`` batch even when the loop body raises, and would then
    commit offsets whose outputs were never published. Exiting before that commit means the
    batch is redone from the last committed offset by the restarted worker: nothing is lost.
    Bad *data* never gets here: the pure pipeline turns it into rejections.
    """
    log.critical("%s failed, stopping the worker so nothing is committed: %r", what, exc)
    logging.shutdown()
    os._exit(EXIT_INFRASTRUCTURE_FAILURE)


def load_anchors(settings: ProcessorSettings) -> list[TrustAnchor]:
    path = settings.trust_anchors_path
    if not path.is_file():
        raise FileNotFoundError(f"no trust anchors at {path}: set CHARGEMESH_TRUST_ANCHORS_FILE")
    anchors: list[TrustAnchor] = TrustAnchor.load_file(path)
    return anchors


class ProcessorKeyMissingError(FileNotFoundError):
    """The deployment's PROCESSOR credential key file is not where the settings say."""


def load_processor_signer(settings: ProcessorSettings) -> Signer:
    """The key of the deployment's PROCESSOR credential, issued through governance and shared
    by every worker (never generated here: a key of one host's own would be trusted by nobody,
    and the other hosts' workers would refuse its routed records)."""
    path = settings.processor_key_path
    if not path.is_file():
        raise ProcessorKeyMissingError(
            f"no processor credential key at {path}: the deployment's governance issues one "
            "(role PROCESSOR; `chargemesh up` does for its dev governance) and every worker "
            "shares its key file (CHARGEMESH_PROCESSOR_KEY_FILE)")
    return Signer.load(path)


def _shorten_faust_fetch_wait(wait_ms: int) -> None:
    """Faust hard-codes ``fetch_max_wait_ms=1500`` for its consumer. A broker that answers a
    fetch only when that wait expires (the embedded Tansu broker does) then adds up to 1.5 s to
    every decision; on Kafka a lower wait only costs a few more idle fetches."""
    import types

    import aiokafka
    import faust.transport.drivers.aiokafka as driver

    class ShortWaitConsumer(aiokafka.AIOKafkaConsumer):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["fetch_max_wait_ms"] = wait_ms
            super().__init__(*args, **kwargs)

    shim = types.SimpleNamespace(**vars(aiokafka))
    shim.AIOKafkaConsumer = ShortWaitConsumer
    setattr(driver, "aiokafka", shim)  # noqa: B010 - the module's attribute, patched


def _faust_app(settings: KafkaSettings, web_port: int) -> faust.App:
    return faust.App(
        APP_ID,
        broker="kafka://" + settings.bootstrap_servers.replace(",", ";"),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.session_timeout_ms / SECOND_MS,
        broker_heartbeat_interval=max(HEARTBEAT_INTERVAL_S_MIN,
                                      settings.session_timeout_ms / SECOND_MS
                                      / HEARTBEATS_PER_SESSION_TIMEOUT),
        consumer_auto_offset_reset="earliest",
        web_port=web_port,
        web_host="127.0.0.1",
        producer_acks=-1,
        producer_linger=PRODUCER_LINGER_S,
        # Commit acknowledged offsets often: a restart then redelivers little.
        broker_commit_interval=COMMIT_INTERVAL_S,
        table_standby_replicas=0,
        # Read-ahead per stream (Faust's default 4,096): with records of up to 1 MiB the
        # default could hold ~4 GiB in front of a hostile backlog; two batches' worth.
        stream_buffer_maxsize=STREAM_BUFFER_EVENTS_MAX,
    )


def _record(event: Any) -> Record:
    msg = event.message
    return Record(msg.topic, msg.partition, msg.offset, msg.key, msg.value)


class Processors:
    """Holds the app, its topics and tables, and the per-worker trust view."""

    def __init__(self, settings: ProcessorSettings, worker_index: int = 0) -> None:
        self.settings = settings
        self.signer = load_processor_signer(settings)
        # Our own key is trusted only as the PROCESSOR credential governance issued for it.
        # The anchors file is watched: `chargemesh anchors add|remove` take effect while we run.
        self.follower = GovernanceFollower(settings.kafka_client_config(), load_anchors(settings),
                                           anchors_path=settings.trust_anchors_path)
        self.ready = asyncio.Event()
        # Set while the worker's state matches its assignment. Faust's table recovery resumes the
        # streams concurrently with our restore (it has no tables of its own to wait for), so
        # every batch waits for this before it reads state.
        self.restored = asyncio.Event()
        # Confluent framing of every output when a registry is configured (and decoding of
        # framed inputs); None = Avro single-object encoding.
        self.producer = OutputProducer(settings, registry.from_settings(settings))
        self.stats = BatchStats()
        _shorten_faust_fetch_wait(settings.consumer_fetch_wait_ms)
        self.app = _faust_app(settings, settings.worker_web_port + worker_index)
        self.topics = {spec.name: self.app.topic(spec.name, key_serializer="raw",
                                                 value_serializer="raw")
                       for spec in topics.ALL_TOPICS}
        self.station_to_ledger = ChangelogTable(topics.STATION_LEDGER_STATE.name)
        self.event_id_to_position = ChangelogTable(topics.EVENT_POSITION_STATE.name)
        self.zone_to_stations = ChangelogTable(topics.ZONE_STATIONS_STATE.name)
        self.tables = {t.topic: t for t in (self.station_to_ledger, self.event_id_to_position,
                                            self.zone_to_stations)}
        # Decoded station ledgers, as persisted (pipeline.MarketTables.decoded): station ->
        # (the table value, that state). Batches update them in place; a batch that fails stops
        # the process (fail_stop), so a state here never runs ahead of the acknowledged one.
        self._ledger_cache: dict[str, tuple[bytes, ledger.LedgerState]] = {}
        self._register_governance()
        self._register_market_and_grid()

    # ---- wiring ------------------------------------------------------------------------------

    def _register_governance(self) -> None:
        app = self.app

        @app.task  # type: ignore[untyped-decorator]
        async def follow_governance() -> None:
            await self.follower.start()
            await self.follower.catch_up()
            self.ready.set()

        @app.timer(interval=GOVERNANCE_POLL_INTERVAL_S)  # type: ignore[untyped-decorator]
        async def refresh_governance() -> None:
            if self.ready.is_set():
                await self.follower.poll_once()

        @app.agent(self.topics[topics.GOVERNANCE.name])
        async def admit_governance(stream: Any) -> None:
            async for batch in stream.take_events(BATCH_EVENTS_MAX, within=BATCH_WITHIN_S):
                await self._wait_ready()
                try:
                    await self._governance_batch([_record(e) for e in batch])
                except BaseException as exc:  # noqa: BLE001 - see fail_stop
                    fail_stop("governance batch", exc)

        @app.on_partitions_assigned.connect  # type: ignore[arg-type]
        async def restore_after_assignment(sender: Any, assigned: Any, **_: Any) -> None:
            self.restored.clear()
            self._ledger_cache.clear()
            await self._restore_tables(assigned)
            self.restored.set()

    def _register_market_and_grid(self) -> None:
        app = self.app

        @app.agent(self.topics[topics.MARKET.name])
        async def decide_market(stream: Any) -> None:
            finished = 0.0
            async for batch in stream.take_events(BATCH_EVENTS_MAX, within=BATCH_WITHIN_S):
                await self._wait_ready()
                started = time.perf_counter()
                if finished:  # between batches: Faust's fetch, batching and acks, or idle
                    self.stats.phase("gap", started - finished)
                self.stats.batch_started_s = started
                records = [_record(e) for e in batch]
                for record in records:
                    self.stats.offset(record.partition, record.offset)
                try:
                    await self._market_batch(records)
                except BaseException as exc:  # noqa: BLE001 - see fail_stop
                    fail_stop("market batch", exc)
                finished = time.perf_counter()
                self.stats.record(len(batch), finished - started)
                self.stats.batch_started_s = 0.0

        @app.agent(self.topics[topics.GRID.name])
        async def route_grid(stream: Any) -> None:
            async for batch in stream.take_events(BATCH_EVENTS_MAX, within=BATCH_WITHIN_S):
                await self._wait_ready()
                try:
                    await self._grid_batch([_record(e) for e in batch])
                except BaseException as exc:  # noqa: BLE001 - see fail_stop
                    fail_stop("grid batch", exc)

        @app.timer(interval=STATS_INTERVAL_S)  # type: ignore[untyped-decorator]
        async def report_stats() -> None:
            self.stats.report()
            self.stats.watch_stuck_batch()

    async def _wait_ready(self) -> None:
        """Governance caught up and state restored for the current assignment."""
        await self.ready.wait()
        await self.restored.wait()

    async def _restore_tables(self, assigned: Any) -> None:
        """Read our state topics' partitions for the assigned input partitions, to their end
        (``changelog.read_changelog``: up to a marker it appends itself)."""
        tables = [(table, sorted(tp.partition for tp in assigned if tp.topic == source))
                  for table, source in ((self.station_to_ledger, topics.MARKET.name),
                                        (self.event_id_to_position, topics.MARKET.name),
                                        (self.zone_to_stations, topics.GRID.name))]
        await restore_tables(self.settings, tables, await self.producer.get())

    # ---- load, call the pipeline, publish, persist -------------------------------------------

    def _context(self) -> pipeline.BatchContext:
        return pipeline.BatchContext(self.follower.store, self.signer, self.settings.partitions,
                                     now_ms())

    async def _verify_all(self, records: list[Record]) -> list[pipeline.Verdict]:
        """Each record's verdict; a refusal that may only mean our trust view lags is retried
        once after catching up with the governance topic."""
        verdicts = []
        for record in records:
            verdict = pipeline.verify(record, self.follower.store)
            if pipeline.stale_view(verdict):
                await self.follower.catch_up()
                verdict = pipeline.verify(record, self.follower.store)
            verdicts.append(verdict)
        return verdicts

    async def _governance_batch(self, records: list[Record]) -> None:
        """The follower applies the governance topic itself; take its verdict of each record."""
        verdicts: list[pipeline.Verdict | None] = []
        for record in records:
            await self.follower.catch_up(record.offset + 1)
            verdict = self.follower.verdict_at(record.offset)
            if verdict is None:
                log.error("no governance verdict for offset %s (too old to keep)", record.offset)
            verdicts.append(verdict)
        result = pipeline.governance_batch(records, verdicts, self._context())
        await self.producer.publish(result.outputs)

    async def _market_batch(self, records: list[Record]) -> None:
        clock = time.perf_counter
        began = clock()
        verdicts = await self._verify_all(records)
        verified = clock()
        tables = pipeline.MarketTables(self.station_to_ledger.data,
                                       self.event_id_to_position.data, self._ledger_cache)
        result = pipeline.market_batch(records, verdicts, tables, self._context())
        decided = clock()
        # Outputs first, acknowledged; only then the state that says they were produced.
        await self.producer.publish(result.outputs)
        published = clock()
        await self.producer.persist(result.state_writes, self.tables)
        self._ledger_cache.update(result.ledgers)
        # Per-phase seconds, logged by BatchStats.report: verify (ingress admission), decide
        # (the pipeline: ledger steps, sealing outputs, state encoded), publish (outputs sent
        # and acknowledged), tables (state written and acknowledged).
        self.stats.phase("verify", verified - began)
        self.stats.phase("decide", decided - verified)
        self.stats.phase("publish", published - decided)
        self.stats.phase("tables", clock() - published)

    async def _grid_batch(self, records: list[Record]) -> None:
        verdicts = await self._verify_all(records)
        result = pipeline.grid_batch(records, verdicts, self.zone_to_stations.data,
                                     self._context())
        await self.producer.publish(result.outputs)
        await self.producer.persist(result.state_writes, self.tables)


def create_app(settings: ProcessorSettings, worker_index: int = 0) -> faust.App:
    return Processors(settings, worker_index).app
