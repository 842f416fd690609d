"""Reading the processors' answers: one's own decisions, settlements, rejections and disputes.

A participant follows its own ids (a station its station id, a vehicle its credential id, either
the sessions it is part of) and a :class:`Reader` hands it, decoded, what the processors wrote
about them on the decisions, settlements, disputes and rejections topics::

    reader = Reader(kafka_config, processor_keys={"mesh:processor": public_key},
                    credential_ids=[vehicle.credential_id])
    reserved = reader.wait_for(lambda r: r.name == "SlotReserved")
    settlement = reader.wait_for_settlement(session_id)    # final, with its total

Every signed record is checked before it is handed out: its author must be one of the
``processor_keys`` (credential id -> Ed25519 public key, which the deployment publishes) and its
signature must verify; anything else is kept aside in :attr:`Reader.refused` with a reason code
and never delivered. Rejection records (``EventRejected``) are not signed: they are decoded and
handed out with their reason code, and trusted as far as the topic's access control goes.

The reader uses confluent-kafka directly: it assigns itself every partition of the topics (no
consumer group, nothing committed), from the beginning or from the current end, and filters on
the client. Processors publish at least once: a record seen twice (same event id, or same
rejection id) is handed out once. Everything it keeps is bounded (``RECEIVED_KEPT_MAX``,
``REFUSED_KEPT_MAX``, ``DELIVERED_IDS_KEPT_MAX``).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from chargemesh.schemas import framing as wire
from chargemesh.schemas.codec import DecodeError, catalog
from chargemesh.schemas.registry import SchemaRegistryFraming
from chargemesh.streams import topics
from chargemesh.streams.envelope import REJECTED_SCHEMA, SignedEvent, open_envelope, open_payload

READ_TOPICS: tuple[str, ...] = (topics.DECISIONS.name, topics.SETTLEMENTS.name,
                                topics.DISPUTES.name, topics.REJECTIONS.name)
GROUP_ID = "chargemesh-sdk-reader"  # librdkafka wants one; the reader never joins the group
FETCH_WAIT_MS = 10
METADATA_TIMEOUT_S = 10.0
MESSAGES_PER_CONSUME_MAX = 1_000
CONSUME_TIMEOUT_S = 0.05
POLL_S = 0.2
WAIT_S_DEFAULT = 60.0
WAIT_S_MAX = 600.0
# What one reader remembers: matching records (for wait_for), refused ones (for diagnosis) and
# the ids of records handed out (a redelivered record, byte-identical, is handed out once).
RECEIVED_KEPT_MAX = 10_000
REFUSED_KEPT_MAX = 1_000
DELIVERED_IDS_KEPT_MAX = 100_000
IDS_FOLLOWED_MAX = 10_000
NOT_FROM_PROCESSOR = "NOT_FROM_PROCESSOR"
BAD_SIGNATURE = "BAD_SIGNATURE"

# Payload fields that name a participant's ids (also looked up inside ``identity``).
_STATION_FIELDS = ("station_id",)
_SESSION_FIELDS = ("session_id",)
_CREDENTIAL_FIELDS = ("vehicle_credential_id", "station_credential_id",
                      "opened_by_credential_id", "actor_credential_id")
_CREDENTIAL_LIST_FIELDS = ("signer_ids", "required_signer_ids")


class ReaderTimeoutError(TimeoutError):
    """What was waited for did not arrive in time."""


@dataclasses.dataclass(frozen=True)
class Received:
    """One record about the participant: where it was read, its type and its decoded payload.

    ``event`` is the verified envelope of a signed record; None for a rejection record, whose
    ``payload`` is the ``EventRejected`` record (``reason_code``, ``detail``, ``event_id``, ...).
    """

    topic: str
    partition: int
    offset: int
    event_type: str
    payload: dict[str, Any]
    event: SignedEvent | None

    @property
    def name(self) -> str:
        """The type without its namespace: ``SlotReserved``, ``EventRejected``, ..."""
        return self.event_type.rsplit(".", 1)[-1]

    @property
    def reason_code(self) -> str:
        """A rejection's (or a refusing decision's, e.g. ``OrderRejected``) reason; else ""."""
        return str(self.payload.get("reason_code", ""))


@dataclasses.dataclass(frozen=True)
class Refused:
    """A record the reader would not hand out, and why (a reason code and a detail)."""

    topic: str
    partition: int
    offset: int
    reason_code: str
    detail: str


@dataclasses.dataclass(frozen=True)
class Settlement:
    """A session's settlement as the processors admitted it, and whether it is final.

    ``final``: every required signer has signed (``SettlementFinalised`` read back);
    ``signer_ids``: who had signed by then (empty while pending).
    """

    settlement_id: str
    session_id: str
    currency: str
    total_amount: Decimal
    lines: tuple[dict[str, Any], ...]
    required_signer_ids: tuple[str, ...]
    signer_ids: tuple[str, ...]
    final: bool


@dataclasses.dataclass
class _Interest:
    station_ids: set[str] = dataclasses.field(default_factory=set)
    credential_ids: set[str] = dataclasses.field(default_factory=set)
    session_ids: set[str] = dataclasses.field(default_factory=set)

    def add(self, kind: set[str], ids: Iterable[str]) -> None:
        kind.update(i for i in ids if i)
        if len(kind) > IDS_FOLLOWED_MAX:
            raise ValueError(f"a reader follows at most {IDS_FOLLOWED_MAX} ids of a kind")

    def matches_rejection(self, record: dict[str, Any]) -> bool:
        return str(record.get("author_credential_id", "")) in self.credential_ids

    def matches_event(self, payload: dict[str, Any]) -> bool:
        scopes = [payload]
        identity = payload.get("identity")
        if isinstance(identity, dict):
            scopes.append(identity)
        for scope in scopes:
            if self._matches_scope(scope):
                return True
        return False

    def _matches_scope(self, scope: dict[str, Any]) -> bool:
        pairs = ((_STATION_FIELDS, self.station_ids), (_SESSION_FIELDS, self.session_ids),
                 (_CREDENTIAL_FIELDS, self.credential_ids))
        for fields, ids in pairs:
            if any(str(scope.get(field, "")) in ids for field in fields):
                return True
        return any(signer in self.credential_ids
                   for field in _CREDENTIAL_LIST_FIELDS for signer in scope.get(field) or ())


class Reader:
    """Follows a participant's ids on the decisions, settlements, disputes and rejections topics.

    A signed record is about the participant when its payload (or its ``identity``) names one
    of the followed station ids, session ids or credential ids (as vehicle, station, dispute
    party or signer); a rejection record when its author is one of the followed credential ids.

    ``kafka_config``: librdkafka settings (``bootstrap.servers``, security); ``processor_keys``:
    the processors' credential ids and Ed25519 public keys; ``from_beginning``: read each topic
    from its first record (else from its end when the reader starts); ``framing``: the
    deployment's schema registry, when values are Confluent-framed.
    """

    def __init__(
        self,
        kafka_config: Mapping[str, Any],
        *,
        processor_keys: Mapping[str, bytes],
        station_ids: Iterable[str] = (),
        credential_ids: Iterable[str] = (),
        session_ids: Iterable[str] = (),
        from_beginning: bool = True,
        topic_names: Iterable[str] = READ_TOPICS,
        framing: SchemaRegistryFraming | None = None,
    ) -> None:
        if not processor_keys:
            raise ValueError("a reader needs the processors' public keys to verify records")
        self._processor_keys = dict(processor_keys)
        self._interest = _Interest()
        self.follow(station_ids=station_ids, credential_ids=credential_ids,
                    session_ids=session_ids)
        if framing is not None:
            wire.install(framing)
        self.received: collections.deque[Received] = collections.deque(maxlen=RECEIVED_KEPT_MAX)
        self.refused: collections.deque[Refused] = collections.deque(maxlen=REFUSED_KEPT_MAX)
        self._delivered_ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._consumer = Consumer({
            **kafka_config, "group.id": GROUP_ID, "enable.auto.commit": False,
            "enable.auto.offset.store": False, "fetch.wait.max.ms": FETCH_WAIT_MS})
        self._closed = False
        try:
            self._consumer.assign(self._start_positions(tuple(topic_names), from_beginning))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # ---- public API --------------------------------------------------------------------------

    def follow(self, *, station_ids: Iterable[str] = (), credential_ids: Iterable[str] = (),
               session_ids: Iterable[str] = ()) -> None:
        """Also follow these ids, from the next record read on (e.g. a session just started)."""
        self._interest.add(self._interest.station_ids, station_ids)
        self._interest.add(self._interest.credential_ids, credential_ids)
        self._interest.add(self._interest.session_ids, session_ids)

    def poll(self, timeout_s: float = POLL_S) -> list[Received]:
        """Read for up to ``timeout_s``; the records about the followed ids, in read order."""
        deadline = time.monotonic() + min(max(timeout_s, 0.0), WAIT_S_MAX)
        delivered: list[Received] = []
        while True:
            remaining_s = deadline - time.monotonic()
            messages = self._consumer.consume(MESSAGES_PER_CONSUME_MAX,
                                              timeout=max(min(remaining_s, CONSUME_TIMEOUT_S), 0))
            for message in messages:
                received = self._receive(message)
                if received is not None and self._first_delivery(received):
                    self.received.append(received)
                    delivered.append(received)
            if remaining_s <= 0:
                return delivered

    def wait_for(self, predicate: Callable[[Received], bool],
                 timeout_s: float = WAIT_S_DEFAULT) -> Received:
        """The first record (already received, or read now) ``predicate`` accepts.

        Raises :class:`ReaderTimeoutError` after ``timeout_s`` (at most ``WAIT_S_MAX``).
        """
        deadline = time.monotonic() + min(timeout_s, WAIT_S_MAX)
        for received in self.received:
            if predicate(received):
                return received
        while time.monotonic() < deadline:
            for received in self.poll():
                if predicate(received):
                    return received
        raise ReaderTimeoutError(f"no matching record within {timeout_s} s "
                                 f"({len(self.received)} received, {len(self.refused)} refused)")

    def settlement(self, session_id: str) -> Settlement | None:
        """The session's settlement from what was received so far (None if not admitted yet).

        The session's own settlement, not a later correction (``adjusts_settlement_id``).
        """
        admitted = next((r.payload for r in self.received
                         if r.name == "SettlementAdmitted" and r.payload["session_id"] == session_id
                         and not r.payload["adjusts_settlement_id"]), None)
        if admitted is None:
            return None
        finalised = next((r.payload for r in self.received
                          if r.name == "SettlementFinalised"
                          and r.payload["settlement_id"] == admitted["settlement_id"]), None)
        return Settlement(
            settlement_id=admitted["settlement_id"], session_id=session_id,
            currency=admitted["currency"], total_amount=admitted["total_amount"],
            lines=tuple(admitted["lines"]),
            required_signer_ids=tuple(admitted["required_signer_ids"]),
            signer_ids=tuple(finalised["signer_ids"]) if finalised else (),
            final=finalised is not None)

    def wait_for_settlement(self, session_id: str, *, final: bool = True,
                            timeout_s: float = WAIT_S_DEFAULT) -> Settlement:
        """The session's settlement once admitted (and final, unless ``final=False``)."""
        self.follow(session_ids=[session_id])
        deadline = time.monotonic() + min(timeout_s, WAIT_S_MAX)
        while True:
            found = self.settlement(session_id)
            if found is not None and (found.final or not final):
                return found
            if time.monotonic() >= deadline:
                state = "not admitted" if found is None else "admitted, not final"
                raise ReaderTimeoutError(f"settlement of {session_id}: {state} after "
                                         f"{timeout_s} s")
            self.poll()

    def close(self) -> None:
        """Disconnect. Idempotent."""
        if not self._closed:
            self._closed = True
            self._consumer.close()

    # ---- one record ----------------------------------------------------------------------------

    def _first_delivery(self, received: Received) -> bool:
        record_id = (received.event.event_id if received.event is not None
                     else str(received.payload.get("rejection_id", "")))
        if record_id in self._delivered_ids:
            return False
        self._delivered_ids[record_id] = None
        while len(self._delivered_ids) > DELIVERED_IDS_KEPT_MAX:
            self._delivered_ids.popitem(last=False)
        return True

    def _start_positions(self, names: tuple[str, ...],
                         from_beginning: bool) -> list[TopicPartition]:
        """Every partition of ``names``: at its first offset, or at its end right now (resolved
        here, so nothing written after the reader started is missed)."""
        metadata = self._consumer.list_topics(timeout=METADATA_TIMEOUT_S)
        positions: list[TopicPartition] = []
        for name in names:
            if name not in metadata.topics or metadata.topics[name].error is not None:
                raise ValueError(f"topic {name} does not exist")
            for partition in sorted(metadata.topics[name].partitions):
                offset = OFFSET_BEGINNING
                if not from_beginning:
                    _, offset = self._consumer.get_watermark_offsets(
                        TopicPartition(name, partition), timeout=METADATA_TIMEOUT_S)
                positions.append(TopicPartition(name, partition, offset))
        return positions

    def _receive(self, message: Message) -> Received | None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                self._refuse(message, "CONSUMER_ERROR", str(error))
            return None
        try:
            if message.topic() == topics.REJECTIONS.name:
                return self._rejection(message)
            return self._signed(message)
        except DecodeError as exc:
            self._refuse(message, exc.reason_code, exc.detail)
            return None

    def _rejection(self, message: Message) -> Received | None:
        name, record = catalog().single_object_decode(message.value() or b"")
        if name != REJECTED_SCHEMA:
            raise DecodeError("WRONG_SCHEMA", f"{name} on the rejections topic")
        if not self._interest.matches_rejection(record):
            return None
        return _received(message, name, record, None)

    def _signed(self, message: Message) -> Received | None:
        event = open_envelope(message.value() or b"")
        author = event.body.author_credential_id
        key = self._processor_keys.get(author)
        if key is None:
            self._refuse(message, NOT_FROM_PROCESSOR, f"{event.event_type} by {author}")
            return None
        if not event.verify_by(author, key):
            self._refuse(message, BAD_SIGNATURE, f"{event.event_type} {event.event_id}")
            return None
        payload = open_payload(event)
        if not self._interest.matches_event(payload):
            return None
        return _received(message, event.event_type, payload, event)

    def _refuse(self, message: Message, reason_code: str, detail: str) -> None:
        self.refused.append(Refused(str(message.topic()), int(message.partition() or 0),
                                    int(message.offset() or 0), reason_code, detail))


def _received(message: Message, event_type: str, payload: dict[str, Any],
              event: SignedEvent | None) -> Received:
    return Received(str(message.topic()), int(message.partition() or 0),
                    int(message.offset() or 0), event_type, payload, event)
