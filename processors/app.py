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
import logging
import time
import uuid
from typing import Any, Awaitable

import faust
from aiokafka.partitioner import murmur2

from chargemesh.infra.config import Settings
from chargemesh.processors import ledger
from chargemesh.processors.follower import GovernanceFollower
from chargemesh.processors.governance import TrustAnchor
from chargemesh.processors.ingress import Admitted, Refused, admit, rejection_record
from chargemesh.processors.market import market_step
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.schemas.codec import catalog
from chargemesh.streams import topics
from chargemesh.streams.envelope import REJECTED_SCHEMA, SignedEvent, seal
from chargemesh.streams.keys import Signer

log = logging.getLogger(__name__)

APP_ID = "chargemesh-processors"
PROCESSOR_CREDENTIAL_ID = "mesh:processor"
BATCH_EVENTS_MAX = 500
BATCH_WITHIN_S = 0.005
DECISION_NAMESPACE = uuid.UUID("0b9d6a8e-54f3-4f0b-8c1e-7a2f3d4e5c6b")
# A refusal for one of these may only mean this worker's trust view lags: catch up, retry once.
STALE_VIEW_REASONS = frozenset({
    Reason.UNKNOWN_CREDENTIAL.value, Reason.UNRECOGNISED_AUTHORITY.value,
})
LEDGER_DECISION_NS = "chargemesh.ledger.v1."


@dataclasses.dataclass(frozen=True)
class Output:
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


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


def decision_id(cause_event_id: str, index: int) -> str:
    return str(uuid.uuid5(DECISION_NAMESPACE, f"{cause_event_id}/{index}"))


def now_ms() -> int:
    return int(time.time() * 1000)


class Processors:
    """Holds the app, its topics and tables, and the per-worker trust view."""

    def __init__(self, settings: Settings, worker_index: int = 0) -> None:
        self.settings = settings
        self.signer = load_processor_signer(settings)
        self.follower = GovernanceFollower(settings.kafka_client_config(), load_anchors(settings))
        self.ready = asyncio.Event()
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
            table_standby_replicas=0,
        )
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.topics = {spec.name: self.app.topic(spec.name, **raw) for spec in topics.ALL_TOPICS}
        # key_type/value_type bytes make Faust use the raw codec for the changelog too.
        table_args: dict[str, Any] = dict(key_type=bytes, value_type=bytes,
                                          partitions=settings.partitions, use_partitioner=True)
        self.station_to_ledger = self.app.Table("station_to_ledger", **table_args)
        self.event_id_to_position = self.app.Table("event_id_to_position", **table_args)
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
                await self.ready.wait()
                await self._publish(await self._governance_outputs(batch))

        @app.agent(self.topics[topics.MARKET.name])
        async def decide_market(stream: Any) -> None:
            async for batch in stream.take_events(BATCH_EVENTS_MAX, within=BATCH_WITHIN_S):
                await self.ready.wait()
                await self._market_batch(batch)

    async def _publish(self, outputs: list[Output]) -> None:
        """Send every output and wait until the broker acknowledged all of them."""
        pending: list[Awaitable[Any]] = []
        for out in outputs:
            fut = await self.topics[out.topic].send(key=out.key, value=out.value,
                                                    headers=list(out.headers) or None)
            pending.append(fut)
        if pending:
            await asyncio.gather(*pending)

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
        touched: dict[str, ledger.LedgerState] = {}
        first_seen: dict[str, str] = {}
        for event in batch:
            msg = event.message
            verdict = await self._verify(msg.value, msg.key, msg.topic)
            if isinstance(verdict, Admitted) and msg.partition != expected_partition(
                    msg.key or b"", self.settings.partitions):
                verdict = Refused(Rejection.of(Reason.KEY_MISMATCH, "not on the key's partition"),
                                  verdict.event)
            if isinstance(verdict, Refused):
                outputs.append(self._rejected(msg.value, msg.topic, msg.partition, msg.offset,
                                              verdict))
                continue
            station = verdict.event.body.subject_key
            state = touched.get(station) or self._load_state(station)
            touched[station] = state
            event_id = verdict.event.event_id
            seen = first_seen.get(event_id) or self._position_of(event_id)
            step = market_step(state, verdict, msg.partition, msg.offset, seen,
                               self.follower.store)
            if not step.applied:
                continue  # applied before a restart; its outputs were acknowledged then
            if not step.replay:
                first_seen[event_id] = f"{msg.partition}:{msg.offset}"
                outputs.append(self._admitted(msg.value, msg.key or b"", msg.topic,
                                              msg.partition, msg.offset))
            outputs.extend(self._decision_output(state, verdict.event, i, d)
                           for i, d in enumerate(step.decisions))
            if step.rejection is not None:
                outputs.append(self._rejected(msg.value, msg.topic, msg.partition, msg.offset,
                                              Refused(step.rejection, verdict.event)))
        # Outputs first, acknowledged; only then the state that says they were produced.
        await self._publish(outputs)
        for station, state in touched.items():
            self.station_to_ledger[station.encode()] = ledger.dump_state(state)
        for event_id, position in first_seen.items():
            self.event_id_to_position[event_id.encode()] = position.encode()

    def _position_of(self, event_id: str) -> str | None:
        raw = self.event_id_to_position.get(event_id.encode())
        return raw.decode() if raw else None

    def _load_state(self, station: str) -> ledger.LedgerState:
        raw = self.station_to_ledger.get(station.encode())
        return ledger.load_state(raw) if raw else ledger.LedgerState(station)

    def _decision_output(self, state: ledger.LedgerState, cause: SignedEvent, index: int,
                         decision: ledger.Decision) -> Output:
        sealed = seal_decision(self.signer, state, cause, index, decision)
        return Output(topics.DECISIONS.name, state.station_id.encode(), sealed.encode())


def seal_decision(signer: Signer, state: ledger.LedgerState, cause: SignedEvent, index: int,
                  decision: ledger.Decision) -> SignedEvent:
    """A ledger decision as a signed event: deterministic id, time and bytes (Ed25519 is)."""
    kind, payload = decision
    wire = {k: v for k, v in payload.items() if not k.startswith("_")}
    return seal(LEDGER_DECISION_NS + kind, wire, author=signer, subject_key=state.station_id,
                occurred_at_ms=state.clock_ms,
                chain_id=wire.get("reservation_id") or wire.get("order_id", ""),
                prev_hash=cause.event_hash, event_id=decision_id(cause.event_id, index))


def create_app(settings: Settings, worker_index: int = 0) -> faust.App:
    return Processors(settings, worker_index).app
