"""Publishing signed events: each to its topic, keyed so every worker agrees on its partition.

:class:`Publisher` writes a :class:`~chargemesh.streams.envelope.SignedEvent` to the topic of its
event type (:func:`topic_for`) with its subject key as the Kafka key, partitioned the way Kafka's
Java clients and Faust partition (murmur2), so the worker that owns a station's partition sees
every event of that station. Delivery is idempotent and acknowledged by all replicas; a full
local queue makes :meth:`Publisher.publish` wait (backpressure), never grow without bound.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer

from chargemesh.schemas.registry import SchemaRegistryFraming
from chargemesh.streams import topics
from chargemesh.streams.envelope import SignedEvent

PRODUCER_QUEUE_MESSAGES_MAX = 100_000
PRODUCER_LINGER_MS = 5
FLUSH_TIMEOUT_S = 30.0

TOPIC_OF_DOMAIN = {
    "governance": topics.GOVERNANCE.name,
    "capacity": topics.MARKET.name,
    "orders": topics.MARKET.name,
    "session": topics.MARKET.name,
    "grid": topics.GRID.name,
    "dispute": topics.DISPUTES.name,
    "audit": topics.CHECKPOINTS.name,
    "wireless": topics.MARKET.name,  # E1: keyed by the road operator (streams/sdk/wireless.py)
}

# Event types that do not live on their domain's topic.
TOPIC_OF_TYPE = {
    "chargemesh.grid.v1.GridProgramDeclared": topics.GOVERNANCE.name,
    "chargemesh.grid.v1.SettlementCoSigned": topics.MARKET.name,
    "chargemesh.grid.v1.GridEventRouted": topics.MARKET.name,
    "chargemesh.grid.v1.ObserverDecisionRouted": topics.MARKET.name,
    # P2: a dispute is decided by the station's ledger; its records go to the disputes topic.
    "chargemesh.dispute.v1.DisputeOpened": topics.MARKET.name,
    "chargemesh.dispute.v1.DisputeEvidenceSubmitted": topics.MARKET.name,
    "chargemesh.dispute.v1.DisputeResolved": topics.MARKET.name,
    "chargemesh.dispute.v1.PaymentFailed": topics.MARKET.name,  # opens a dispute (issue 16)
    "chargemesh.ledger.v1.RevocationRouted": topics.MARKET.name,
}


def topic_for(event_type: str) -> str:
    if event_type in TOPIC_OF_TYPE:
        return TOPIC_OF_TYPE[event_type]
    domain = event_type.split(".")[1]
    return TOPIC_OF_DOMAIN[domain]


class Publisher:
    """Publishes signed events to their topics, keyed by their subject_key."""

    def __init__(self, kafka_config: dict[str, Any], extra: dict[str, Any] | None = None,
                 framing: SchemaRegistryFraming | None = None) -> None:
        """``kafka_config``: librdkafka settings, e.g. ``Settings.kafka_client_config()``;
        ``framing``: Confluent Schema Registry framing instead of Avro single-object encoding."""
        self._framing = framing
        conf = dict(kafka_config)
        conf.update({
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": PRODUCER_LINGER_MS,
            "queue.buffering.max.messages": PRODUCER_QUEUE_MESSAGES_MAX,
            # The Java client's partitioner, which Faust (aiokafka) uses too.
            "partitioner": "murmur2_random",
        })
        conf.update(extra or {})
        self._producer = Producer(conf)
        self._errors: list[str] = []

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def publish(self, event: SignedEvent, topic: str | None = None) -> None:
        topic = topic or topic_for(event.event_type)
        value = event.encode()
        if self._framing is not None:
            value = self._framing.frame(topic, value)
        self.publish_raw(topic, event.body.subject_key, value)

    def publish_raw(self, topic: str, key: str, value: bytes) -> None:
        """Send bytes as they are (hostile-input tests and replays use this too)."""
        while True:
            try:
                self._producer.produce(topic, value=value, key=key.encode(),
                                       on_delivery=self._on_delivery)
                break
            except BufferError:
                # Backpressure: the local queue is full; serve deliveries, then retry.
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
        remaining = self._producer.flush(timeout_s)
        if remaining or self._errors:
            raise RuntimeError(f"{remaining} undelivered, errors: {self._errors[:5]}")
