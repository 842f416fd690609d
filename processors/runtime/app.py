"""The Faust processors: verify on the way in, decide per station, publish decisions.

Agents only move data; every decision is made by the pure modules (``ingress``, ``governance``,
``ledger``). Correctness does not depend on Kafka transactions (at-least-once here):

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
import dataclasses
import json
import logging
import os
import time
import uuid
from typing import Any, Awaitable

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from chargemesh.infra.config import Settings
from chargemesh.processors.decisions import Decision
from chargemesh.processors.ledger import state as ledger
from chargemesh.processors.grid import observers
from chargemesh.processors.runtime.follower import GovernanceFollower
from chargemesh.processors.governance import TrustAnchor
from chargemesh.processors.ingress import Admitted, Refused, admit, rejection_record
from chargemesh.processors.ledger.step import Step, grid_replay, market_step
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.schemas import registry
from chargemesh.schemas.codec import catalog
from chargemesh.streams import topics
from chargemesh.streams.envelope import REJECTED_SCHEMA, SignedEvent, seal
from chargemesh.streams.keys import Signer

log = logging.getLogger(__name__)

APP_ID = "chargemesh-processors"
PROCESSOR_CREDENTIAL_ID = "mesh:processor"
BATCH_EVENTS_MAX = 500
STREAM_BUFFER_EVENTS_MAX = 2 * BATCH_EVENTS_MAX
BATCH_WITHIN_S = 0.005
OUTPUT_LINGER_MS = 2
DECISION_NAMESPACE = uuid.UUID("0b9d6a8e-54f3-4f0b-8c1e-7a2f3d4e5c6b")
# A refusal for one of these may only mean this worker's trust view lags: catch up, retry once.
STALE_VIEW_REASONS = frozenset({
    Reason.UNKNOWN_CREDENTIAL.value, Reason.UNRECOGNISED_AUTHORITY.value,
})
CALENDAR_PUBLISHED = "chargemesh.capacity.v1.SlotCalendarPublished"
CREDENTIAL_REVOKED = "chargemesh.governance.v1.CredentialRevoked"
REVOCATION_ROUTED = "chargemesh.ledger.v1.RevocationRouted"
# A revocation names at most this many cascaded credentials (the rest still fail their chain
# at ingress; the record says it was truncated).
REVOCATION_CASCADE_MAX = 10_000
ROUTING_KEY_TRIES_MAX = 100_000
ZONE_STATIONS_MAX = 100_000


class ChangelogTable:
    """Worker state keyed like its input topic, persisted to its own state topic (same
    partitioning), restored by reading that topic on assignment. ``data`` is the local view."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)


@dataclasses.dataclass(frozen=True)
class Output:
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


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
    driver.aiokafka = shim  # type: ignore[assignment]


EXIT_INFRASTRUCTURE_FAILURE = 70


def fail_stop(what: str, exc: BaseException) -> None:
    """Stop the process at once when a batch cannot be completed (broker unreachable...).

    Faust acknowledges a ``take_events`` batch even when the loop body raises, and would then
    commit offsets whose outputs were never published. Exiting before that commit means the
    batch is redone from the last committed offset by the restarted worker: nothing is lost.
    Bad *data* never gets here: the pure steps turn it into rejections.
    """
    log.critical("%s failed, stopping the worker so nothing is committed: %r", what, exc)
    logging.shutdown()
    os._exit(EXIT_INFRASTRUCTURE_FAILURE)


def load_anchors(settings: Settings) -> list[TrustAnchor]:
    path = settings.trust_anchors_path
    if not path.is_file():
        raise FileNotFoundError(f"no trust anchors at {path}: set CHARGEMESH_TRUST_ANCHORS_FILE")
    return TrustAnchor.load_file(path)


def load_processor_signer(settings: Settings) -> Signer:
    path = settings.processor_key_path
    if not path.is_file():
        Signer.generate(PROCESSOR_CREDENTIAL_ID).save(path)
    return Signer.load(path)


def expected_partition(key: bytes, partitions: int) -> int:
    """The Java client's (and Faust's) default partitioner: murmur2, positive, modulo."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def routing_key(prefix: str, partition: int, partitions: int) -> str:
    """A key that the murmur2 partitioner sends to ``partition`` (for per-partition fan-out)."""
    for n in range(ROUTING_KEY_TRIES_MAX):
        key = f"{prefix}:{n}"
        if expected_partition(key.encode(), partitions) == partition:
            return key
    raise RuntimeError(f"no key for partition {partition} in {ROUTING_KEY_TRIES_MAX} tries")


def decision_id(cause_event_id: str, index: int) -> str:
    return str(uuid.uuid5(DECISION_NAMESPACE, f"{cause_event_id}/{index}"))


def now_ms() -> int:
    return int(time.time() * 1000)


STATS_INTERVAL_S = 5.0
STUCK_BATCH_S = 10.0
COMMIT_INTERVAL_S = 0.5


class BatchStats:
    """Batches, events and time spent, logged every STATS_INTERVAL_S (operators read these)."""

    def __init__(self) -> None:
        self.batches = self.events = 0
        self.busy_s = 0.0
        self.phases: dict[str, float] = {}
        self.offsets: dict[int, tuple[int, int]] = {}

    def record(self, events: int, busy_s: float) -> None:
        self.batches += 1
        self.events += events
        self.busy_s += busy_s

    def offset(self, partition: int, offset: int) -> None:
        low, high = self.offsets.get(partition, (offset, offset))
        self.offsets[partition] = (min(low, offset), max(high, offset))

    def phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def report(self) -> None:
        if self.batches:
            phases = " ".join(f"{k}={v:.2f}s" for k, v in sorted(self.phases.items()))
            log.info("market: %d events in %d batches (%.1f per batch), busy %.2fs %s offsets %s",
                     self.events, self.batches, self.events / self.batches, self.busy_s, phases,
                     dict(sorted(self.offsets.items())))
        self.batches = self.events = 0
        self.busy_s = 0.0
        self.phases = {}
        self.offsets = {}


class Processors:
    """Holds the app, its topics and tables, and the per-worker trust view."""

    def __init__(self, settings: Settings, worker_index: int = 0) -> None:
        self.settings = settings
        self.signer = load_processor_signer(settings)
        # Confluent framing of every output when a registry is configured (and decoding of
        # framed inputs); None = Avro single-object encoding.
        self.framing = registry.from_settings(settings)
        self.follower = GovernanceFollower(
            settings.kafka_client_config(), load_anchors(settings),
            processors=[TrustAnchor(self.signer.credential_id, self.signer.public_key)])
        self.ready = asyncio.Event()
        # Set while the worker's state matches its assignment. Faust's table recovery resumes the
        # streams concurrently with our restore (it has no tables of its own to wait for), so
        # every batch waits for this before it reads state.
        self.restored = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._batch_started_s = 0.0
        self.stats = BatchStats()
        _shorten_faust_fetch_wait(settings.consumer_fetch_wait_ms)
        self.app = faust.App(
            APP_ID,
            broker="kafka://" + settings.bootstrap_servers.replace(",", ";"),
            store="memory://",
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            broker_session_timeout=settings.session_timeout_ms / 1000,
            broker_heartbeat_interval=max(0.5, settings.session_timeout_ms / 3000 / 2),
            consumer_auto_offset_reset="earliest",
            web_port=settings.worker_web_port + worker_index,
            web_host="127.0.0.1",
            producer_acks=-1,
            producer_linger=0.002,
            # Commit acknowledged offsets often: a restart then redelivers little.
            broker_commit_interval=COMMIT_INTERVAL_S,
            table_standby_replicas=0,
            # Read-ahead per stream (Faust's default 4,096): with records of up to 1 MiB the
            # default could hold ~4 GiB in front of a hostile backlog; two batches' worth.
            stream_buffer_maxsize=STREAM_BUFFER_EVENTS_MAX,
        )
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.topics = {spec.name: self.app.topic(spec.name, **raw) for spec in topics.ALL_TOPICS}
        self.station_to_ledger = ChangelogTable(topics.STATION_LEDGER_STATE.name)
        self.event_id_to_position = ChangelogTable(topics.EVENT_POSITION_STATE.name)
        self.zone_to_stations = ChangelogTable(topics.ZONE_STATIONS_STATE.name)
        # Decoded station ledgers, as persisted: station -> (the table value it was decoded from
        # or encoded to, that state). Used only while ``station_to_ledger.data`` still holds that
        # very bytes object (identity), so a restore that replaces a value is never shadowed.
        # Batches mutate the cached state in place; a batch that fails stops the process
        # (fail_stop), so a state here never runs ahead of what the state topic acknowledged.
        self._ledger_cache: dict[str, tuple[bytes, ledger.LedgerState]] = {}
        self._register()

    # ---- wiring ------------------------------------------------------------------------------

    def _register(self) -> None:
        app = self.app

        @app.task
        async def follow_governance() -> None:
            await self.follower.start()
            await self.follower.catch_up()
            self.ready.set()

        @app.timer(interval=0.5)
        async def refresh_governance() -> None:
            if self.ready.is_set():
                await self.follower.poll_once()

        @app.agent(self.topics[topics.GOVERNANCE.name])
        async def admit_governance(stream: Any) -> None:
            async for batch in stream.take_events(BATCH_EVENTS_MAX, within=BATCH_WITHIN_S):
                await self._wait_ready()
                try:
                    await self._publish(await self._governance_outputs(batch))
                except BaseException as exc:  # noqa: BLE001 - see fail_stop
                    fail_stop("governance batch", exc)

        @app.on_partitions_assigned.connect
        async def restore_after_assignment(sender: Any, assigned: Any, **_: Any) -> None:
            self.restored.clear()
            self._ledger_cache.clear()
            await self._restore_tables(assigned)
            self.restored.set()

        @app.agent(self.topics[topics.MARKET.name])
        async def decide_market(stream: Any) -> None:
            finished = 0.0
            async for batch in stream.take_events(BATCH_EVENTS_MAX, within=BATCH_WITHIN_S):
                await self._wait_ready()
                started = time.perf_counter()
                if finished:  # between batches: Faust's fetch, batching and acks, or idle
                    self.stats.phase("gap", started - finished)
                self._batch_started_s = started
                for event in batch:
                    self.stats.offset(event.message.partition, event.message.offset)
                try:
                    await self._market_batch(batch)
                except BaseException as exc:  # noqa: BLE001 - see fail_stop
                    fail_stop("market batch", exc)
                finished = time.perf_counter()
                self.stats.record(len(batch), finished - started)
                self._batch_started_s = 0.0

        @app.agent(self.topics[topics.GRID.name])
        async def route_grid(stream: Any) -> None:
            async for batch in stream.take_events(BATCH_EVENTS_MAX, within=BATCH_WITHIN_S):
                await self._wait_ready()
                try:
                    await self._grid_batch(batch)
                except BaseException as exc:  # noqa: BLE001 - see fail_stop
                    fail_stop("grid batch", exc)

        @app.timer(interval=STATS_INTERVAL_S)
        async def report_stats() -> None:
            self.stats.report()
            self._watch_stuck_batch()

    async def _wait_ready(self) -> None:
        """Governance caught up and state restored for the current assignment."""
        await self.ready.wait()
        await self.restored.wait()

    async def _publish(self, outputs: list[Output]) -> None:
        """Send every output and wait until the broker acknowledged all of them.

        Outputs go through a plain idempotent aiokafka producer (acks=all): measured here, its
        acknowledgement of a batch takes ~5 ms where Faust's buffered send path took ~60 ms.
        """
        if not outputs:
            return
        producer = await self._output_producer()
        pending: list[Awaitable[Any]] = []
        for out in outputs:
            value = out.value if self.framing is None else self.framing.frame(out.topic, out.value)
            pending.append(await producer.send(out.topic, value=value, key=out.key,
                                               headers=list(out.headers) or None))
        await asyncio.gather(*pending)

    async def _persist(self, writes: list[tuple[ChangelogTable, bytes, int, bytes]]) -> None:
        """Write state entries (table, key, partition, value) to their state topics, wait for the
        broker's ack, then update the worker's local view.

        This runs after the batch's outputs were acknowledged and before Faust acknowledges the
        batch's input events, so a committed input offset always has its state on the broker.
        (Faust's own tables buffer their changelog writes and were seen to commit offsets ahead
        of them: a worker killed then restarted with older state and lost sessions.) Each entry
        goes to the partition of the input it belongs to, so a worker restores exactly the state
        of the input partitions it is assigned.
        """
        if not writes:
            return
        producer = await self._output_producer()
        pending = [await producer.send(table.topic, key=key, value=value, partition=partition)
                   for table, key, partition, value in writes]
        await asyncio.gather(*pending)
        for table, key, _, value in writes:
            table.data[key] = value

    def _watch_stuck_batch(self) -> None:
        """Log where every task waits when a market batch has run for too long."""
        started = self._batch_started_s
        if started and time.perf_counter() - started > STUCK_BATCH_S:
            for task in asyncio.all_tasks():
                frames = task.get_stack(limit=8)
                where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in frames)
                log.warning("batch running %.0fs; task %s at %s",
                            time.perf_counter() - started, task.get_name(), where)

    async def _restore_tables(self, assigned: Any) -> None:
        """Read our state topics' partitions for the assigned input partitions, to their end.

        Our own reader, not Faust's table recovery: Faust stops at the changelog's reported high
        watermark, which the embedded broker reports per record batch (3 records in one batch:
        high watermark 1), so it restored stale state. ``read_changelog`` reads up to a marker
        it appends itself, which does not depend on that figure.
        """
        for table, source in ((self.station_to_ledger, topics.MARKET.name),
                              (self.event_id_to_position, topics.MARKET.name),
                              (self.zone_to_stations, topics.GRID.name)):
            partitions = sorted(tp.partition for tp in assigned if tp.topic == source)
            await read_changelog(self.settings, table, partitions,
                                 await self._output_producer())

    async def _output_producer(self) -> AIOKafkaProducer:
        async with self._producer_lock:
            return await self._start_output_producer()

    async def _start_output_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.bootstrap_servers.split(","),
                # Not idempotent: the embedded broker refuses aiokafka's InitProducerId. A retried
                # send may duplicate a record; every record has a deterministic id for that.
                acks="all", enable_idempotence=False, linger_ms=OUTPUT_LINGER_MS,
                max_request_size=topics.MESSAGE_BYTES_MAX)
            await producer.start()
            self._producer = producer
        return self._producer

    # ---- outputs -----------------------------------------------------------------------------

    def _rejected(self, raw: bytes, topic: str, partition: int, offset: int,
                  refused: Refused) -> Output:
        record = rejection_record(raw, topic, partition, offset, refused, now_ms())
        value = catalog().single_object_encode(REJECTED_SCHEMA, record)
        return Output(topics.REJECTIONS.name, topic.encode(), value)

    @staticmethod
    def _admitted(raw: bytes, key: bytes, topic: str, partition: int, offset: int) -> Output:
        headers = (("source_topic", topic.encode()), ("source_partition", str(partition).encode()),
                   ("source_offset", str(offset).encode()))
        return Output(topics.ADMITTED.name, key, raw, headers)

    async def _governance_outputs(self, batch: list[Any]) -> list[Output]:
        outputs = []
        for event in batch:
            msg = event.message
            await self.follower.catch_up(msg.offset + 1)
            verdict = self.follower.verdict_at(msg.offset)
            if verdict is None:
                log.error("no governance verdict for offset %s (too old to keep)", msg.offset)
                continue
            if isinstance(verdict, Refused):
                outputs.append(self._rejected(msg.value, msg.topic, msg.partition, msg.offset,
                                              verdict))
            else:
                outputs.append(self._admitted(msg.value, msg.key or b"", msg.topic,
                                              msg.partition, msg.offset))
                if verdict.event.event_type == CREDENTIAL_REVOKED:
                    outputs.extend(self._revocation_fan_out(verdict))
        return outputs

    def _revocation_fan_out(self, verdict: Admitted) -> list[Output]:
        """P4: one ``RevocationRouted`` per market partition, so every station ledger
        re-evaluates in its own order what rested on the revoked credentials."""
        event, p = verdict.event, verdict.payload
        cascade = self.follower.store.descendants(p["credential_id"])
        truncated = len(cascade) > REVOCATION_CASCADE_MAX
        outputs = []
        for partition in range(self.settings.partitions):
            key = routing_key(f"revocation:{event.event_id}", partition, self.settings.partitions)
            routed = seal(REVOCATION_ROUTED, {
                "routing_key": key, "market_partition": partition,
                "revocation_event_id": event.event_id,
                "revoked_credential_id": p["credential_id"],
                "effective_at_ms": p["effective_at_ms"],
                "revoked_credential_ids": cascade[:REVOCATION_CASCADE_MAX],
                "cascade_truncated": truncated, "revocation_event": event.encode(),
            }, author=self.signer, subject_key=key, occurred_at_ms=event.body.occurred_at_ms,
                prev_hash=event.event_hash, event_id=decision_id(event.event_id, partition))
            outputs.append(Output(topics.MARKET.name, key.encode(), routed.encode()))
        return outputs

    async def _verify(self, raw: bytes, key: bytes | None, topic: str) -> Admitted | Refused:
        verdict = admit(raw, key, topic, self.follower.store)
        if isinstance(verdict, Refused) and verdict.rejection.reason in STALE_VIEW_REASONS:
            await self.follower.catch_up()
            verdict = admit(raw, key, topic, self.follower.store)
        return verdict

    # ---- the market: one single-writer ledger per station ------------------------------------

    async def _market_batch(self, batch: list[Any]) -> None:
        outputs: list[Output] = []
        touched: dict[str, StationBatch] = {}
        first_seen: dict[str, str] = {}
        clock = time.perf_counter
        verify_s = 0.0
        began = clock()
        for event in batch:
            msg = event.message
            t0 = clock()
            verdict = await self._verify(msg.value, msg.key, msg.topic)
            verify_s += clock() - t0
            if isinstance(verdict, Admitted) and msg.partition != expected_partition(
                    msg.key or b"", self.settings.partitions):
                verdict = Refused(Rejection.of(Reason.KEY_MISMATCH, "not on the key's partition"),
                                  verdict.event)
            if isinstance(verdict, Refused):
                outputs.append(self._rejected(msg.value, msg.topic, msg.partition, msg.offset,
                                              verdict))
                continue
            if verdict.event.event_type == REVOCATION_ROUTED:
                # Fan-out record: every station of this partition re-evaluates, in turn.
                stations = self._stations_on(msg.partition, touched)
                scoped = True
            else:
                stations = [verdict.event.body.subject_key]
                scoped = False
            for station in stations:
                outputs.extend(self._station_step(station, verdict, msg, touched, first_seen,
                                                  scoped))
        # Outputs first, acknowledged; only then the state that says they were produced.
        decided = clock()
        await self._publish(outputs)
        published = clock()
        states = [(self.station_to_ledger, station.encode(), b.partition,
                   ledger.dump_state(b.state)) for station, b in touched.items()]
        writes = states + [
            (self.event_id_to_position, event_id.encode(), int(position.split(":")[0]),
             position.encode()) for event_id, position in first_seen.items()]
        encoded = clock()
        await self._persist(writes)
        for (_, _, _, value), (station, b) in zip(states, touched.items()):
            self._ledger_cache[station] = (value, b.state)
        # Per-phase seconds, logged by BatchStats.report: verify (ingress admission), decide
        # (ledger steps and sealing outputs), publish (outputs sent and acknowledged), encode
        # (state serialised), tables (state written and acknowledged).
        self.stats.phase("verify", verify_s)
        self.stats.phase("decide", decided - began - verify_s)
        self.stats.phase("publish", published - decided)
        self.stats.phase("encode", encoded - published)
        self.stats.phase("tables", clock() - encoded)

    def _station_step(self, station: str, verdict: Admitted, msg: Any,
                      touched: dict[str, "StationBatch"], first_seen: dict[str, str],
                      scoped: bool) -> list[Output]:
        """One admitted market event applied to one station's ledger; its outputs."""
        outputs: list[Output] = []
        batch_of = touched.get(station) or self._load_station(station, msg.partition)
        touched[station] = batch_of
        state = batch_of.state
        event_id = verdict.event.event_id
        seen = first_seen.get(event_id) or self._position_of(event_id)
        step = guarded_step(batch_of, verdict, msg.partition, msg.offset, seen,
                            self.follower.store)
        if not step.applied:
            return outputs  # applied before a restart; its outputs were acknowledged then
        if not step.replay and event_id not in first_seen:
            first_seen[event_id] = f"{msg.partition}:{msg.offset}"
            outputs.append(self._admitted(msg.value, msg.key or b"", msg.topic,
                                          msg.partition, msg.offset))
        scope = station if scoped else ""
        outputs.extend(self._decision_output(state, verdict.event, i, d, scope)
                       for i, d in enumerate(step.decisions))
        if verdict.event.event_type == CALENDAR_PUBLISHED and step.rejection is None:
            outputs.append(self._zone_joined(state, verdict.event))
        if step.rejection is not None:
            outputs.append(self._rejected(msg.value, msg.topic, msg.partition, msg.offset,
                                          Refused(step.rejection, verdict.event)))
        return outputs

    def _stations_on(self, partition: int, touched: dict[str, "StationBatch"]) -> list[str]:
        """Every station with a ledger on ``partition`` (restored or touched in this batch)."""
        known = {key.decode() for key in self.station_to_ledger.data} | set(touched)
        return sorted(s for s in known
                      if expected_partition(s.encode(), self.settings.partitions) == partition)

    # ---- the grid: one router per zone ---------------------------------------------------------

    async def _grid_batch(self, batch: list[Any]) -> None:
        """Zone membership and grid events; each grid event is routed to the zone's stations."""
        outputs: list[Output] = []
        zones: dict[str, dict[str, Any]] = {}
        for event in batch:
            msg = event.message
            verdict = await self._verify(msg.value, msg.key, msg.topic)
            if isinstance(verdict, Admitted):
                zone = verdict.event.body.subject_key
                zstate = zones.get(zone) or self._load_zone(zone)
                zones[zone] = zstate
                if msg.offset <= zstate["applied_through_offset"]:
                    continue  # applied before a restart
                zstate["applied_through_offset"] = msg.offset
                replayed = grid_replay(zstate, verdict.event)
                verdict = (Refused(replayed, verdict.event) if replayed
                           else self._grid_step(zstate, verdict, outputs))
            if isinstance(verdict, Refused):
                outputs.append(self._rejected(msg.value, msg.topic, msg.partition, msg.offset,
                                              verdict))
            else:
                outputs.append(self._admitted(msg.value, msg.key or b"", msg.topic,
                                              msg.partition, msg.offset))
        await self._publish(outputs)
        await self._persist([
            (self.zone_to_stations, zone.encode(), expected_partition(zone.encode(),
                                                                        self.settings.partitions),
             json.dumps(z, sort_keys=True).encode()) for zone, z in zones.items()])

    def _load_zone(self, zone: str) -> dict[str, Any]:
        raw = self.zone_to_stations.get(zone.encode())
        if raw:
            loaded: dict[str, Any] = json.loads(raw)
            return loaded
        return {"stations": [], "applied_through_offset": -1}

    def _grid_step(self, zstate: dict[str, Any], verdict: Admitted,
                   outputs: list[Output]) -> Admitted | Refused:
        event, payload = verdict.event, verdict.payload
        if event.event_type == "chargemesh.grid.v1.StationZoneJoined":
            stations = set(zstate["stations"]) | {payload["station_id"]}
            zstate["stations"] = sorted(stations)[:ZONE_STATIONS_MAX]
            return verdict
        if event.event_type in observers.ROUTER_EVENT_TYPES:
            return self._observer_step(zstate, verdict, outputs)
        if not self.follower.store.operates_zone(event.body.author_credential_id,
                                                 payload["grid_zone_id"]):
            return Refused(Rejection.of(Reason.ROLE_NOT_PERMITTED, "the author does not operate "
                                        f"grid zone {payload['grid_zone_id']}"), event)
        if observers.observed(zstate.get("observers"), payload["from_at_ms"]):
            return verdict  # P3: in lineage as a proposal; only an observer quorum takes effect
        for index, station in enumerate(zstate["stations"]):
            routed = seal(
                "chargemesh.grid.v1.GridEventRouted",
                {"station_id": station, "grid_zone_id": payload["grid_zone_id"],
                 "grid_event_id": payload["grid_event_id"], "grid_event": event.encode()},
                author=self.signer, subject_key=station, occurred_at_ms=event.body.occurred_at_ms,
                prev_hash=event.event_hash, event_id=decision_id(event.event_id, index))
            outputs.append(Output(topics.MARKET.name, station.encode(), routed.encode()))
        return verdict

    def _observer_step(self, zstate: dict[str, Any], verdict: Admitted,
                       outputs: list[Output]) -> Admitted | Refused:
        """P3: an observer set or attestation, folded into the zone's state; a quorum is
        recorded and routed to the zone's stations, an equivocation recorded with evidence."""
        event, before = verdict.event, json.dumps(zstate.get("observers"))
        ostate = zstate.setdefault("observers", observers.new_state())
        try:
            if event.event_type == observers.SET_DECLARED:
                problem = observers.declare_set(ostate, event, verdict.payload,
                                                self.follower.store)
                outcome = observers.Outcome(problem)
            else:
                outcome = observers.attest(ostate, zstate["stations"], event, verdict.payload)
        except Exception as exc:  # noqa: BLE001 - one poisoned event must not stop the zone
            log.exception("observer step failed for %s", event.event_id)
            zstate.pop("observers")
            if before != "null":
                zstate["observers"] = json.loads(before)
            return Refused(Rejection.of(Reason.INTERNAL_ERROR,
                                        f"{type(exc).__name__}: {exc}"[:500]), event)
        for index, decision in enumerate(outcome.decisions):
            sealed = seal(decision.event_type, dict(decision.payload), author=self.signer,
                          subject_key=decision.key,
                          occurred_at_ms=event.body.occurred_at_ms, chain_id=event.body.chain_id,
                          prev_hash=event.event_hash, event_id=decision_id(event.event_id, index))
            outputs.append(Output(decision.topic, decision.key.encode(), sealed.encode()))
        return verdict if outcome.rejection is None else Refused(outcome.rejection, event)

    def _position_of(self, event_id: str) -> str | None:
        raw = self.event_id_to_position.get(event_id.encode())
        return raw.decode() if raw else None

    def _load_station(self, station: str, partition: int) -> StationBatch:
        raw = self.station_to_ledger.get(station.encode())
        cached = self._ledger_cache.get(station)
        if raw and cached is not None and cached[0] is raw:
            return StationBatch(cached[1], raw, partition)  # decoded when it was persisted
        state = ledger.load_state(raw) if raw else ledger.LedgerState(station)
        return StationBatch(state, raw, partition)

    def _decision_output(self, state: ledger.LedgerState, cause: SignedEvent, index: int,
                         decision: Decision, scope: str = "") -> Output:
        sealed = seal_decision(self.signer, state, cause, index, decision, scope)
        return Output(decision.topic, decision.key.encode(), sealed.encode())

    def _zone_joined(self, state: ledger.LedgerState, cause: SignedEvent) -> Output:
        """Tell the grid agent this station is in its calendar's grid zone."""
        cal = state.calendar or {}
        zone = cal.get("grid_zone_id", "")
        sealed = seal("chargemesh.grid.v1.StationZoneJoined",
                      {"station_id": state.station_id, "grid_zone_id": zone,
                       "calendar_version": cal.get("calendar_version", 0)},
                      author=self.signer, subject_key=zone, occurred_at_ms=state.clock_ms,
                      prev_hash=cause.event_hash, event_id=decision_id(cause.event_id, 1_000))
        return Output(topics.GRID.name, zone.encode(), sealed.encode())


@dataclasses.dataclass
class StationBatch:
    """A station's state during one batch, and how to rebuild it if a step blows up."""

    state: ledger.LedgerState
    loaded: bytes | None  # the table value at batch start
    partition: int
    steps: list[tuple[Admitted, int, int, str | None]] = dataclasses.field(
        default_factory=list)


CHANGELOG_FETCH_RECORDS_MAX = 10_000
CHANGELOG_FETCH_TIMEOUT_MS = 200
CHANGELOG_RESTORE_TIMEOUT_S = 120.0
# Written to every state partition when a worker restores it; never a table key (tables are
# keyed by station, event id or zone, none of which starts with a NUL byte).
RESTORE_MARKER_KEY = b"\x00restore-marker"


async def read_changelog(settings: Settings, table: Any, partitions: list[int],
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
    applied = 0
    upto: dict[int, int] = {}
    deadline = time.monotonic() + CHANGELOG_RESTORE_TIMEOUT_S
    try:
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
    finally:
        await consumer.stop()
    log.info("resynced %s: %d records, marker offsets %s", topic, applied, upto)
    return applied


def guarded_step(batch: StationBatch, verdict: Admitted, partition: int, offset: int,
                 seen: str | None, view: ledger.GovernanceView) -> Step:
    """``market_step``, with a bug in it turned into a rejection instead of a crash loop.

    A step that raises may have half-changed the state: the station is rebuilt from its value at
    batch start plus the steps before this one (deterministic), then the event is rejected.
    """
    try:
        step = market_step(batch.state, verdict, partition, offset, seen, view)
    except Exception as exc:  # noqa: BLE001 - one poisoned event must not stop the station
        log.exception("market step failed for %s", verdict.event.event_id)
        state = ledger.load_state(batch.loaded) if batch.loaded else ledger.LedgerState(
            batch.state.station_id)
        for args in batch.steps:
            market_step(state, *args, view)
        state.applied_through_offset = offset
        batch.state.__dict__.update(state.__dict__)
        return Step(applied=True, rejection=Rejection.of(
            Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:500]))
    batch.steps.append((verdict, partition, offset, seen))
    return step


def seal_decision(signer: Signer, state: ledger.LedgerState, cause: SignedEvent, index: int,
                  decision: Decision, scope: str = "") -> SignedEvent:
    """A ledger decision as a signed event: deterministic id, time and bytes (Ed25519 is).

    ``scope`` (the station) keeps ids distinct when one cause reaches many stations."""
    wire = dict(decision.payload)
    return seal(decision.event_type, wire, author=signer, subject_key=decision.key,
                occurred_at_ms=state.clock_ms,
                chain_id=(wire.get("session_id") or wire.get("reservation_id")
                          or wire.get("order_id", "")),
                prev_hash=cause.event_hash,
                event_id=decision_id(f"{cause.event_id}@{scope}" if scope else cause.event_id,
                                     index))


def create_app(settings: Settings, worker_index: int = 0) -> faust.App:
    return Processors(settings, worker_index).app
