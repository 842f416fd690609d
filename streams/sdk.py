"""Participant SDK: hold keys and credentials, sign, publish and read chargemesh events.

A vehicle, station, meter, grid operator, issuer or authority is a :class:`Participant` (a signer
plus the subject it stands for). :class:`Publisher` writes signed events to the right topic with
the partition key Kafka's Java clients and Faust use (murmur2), so every worker agrees on which
partition holds a station.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from decimal import Decimal
from typing import Any, Iterable

from confluent_kafka import Producer

from chargemesh.streams import topics
from chargemesh.streams.envelope import SignedEvent, seal
from chargemesh.streams.keys import Signer

FOREVER_MS = 2**62
PRODUCER_QUEUE_MESSAGES_MAX = 100_000
PRODUCER_LINGER_MS = 5
FLUSH_TIMEOUT_S = 30.0
MONEY_SCALE = Decimal("0.000001")

TOPIC_OF_DOMAIN = {
    "governance": topics.GOVERNANCE.name,
    "capacity": topics.MARKET.name,
    "orders": topics.MARKET.name,
    "session": topics.MARKET.name,
    "grid": topics.GRID.name,
    "dispute": topics.DISPUTES.name,
}


def now_ms() -> int:
    return int(time.time() * 1000)


def money(value: str | int | Decimal) -> Decimal:
    """A Decimal at the wire scale (6 places); never built from a float."""
    if isinstance(value, float):
        raise TypeError("money is never a float")
    return Decimal(value).quantize(MONEY_SCALE)


def topic_for(event_type: str) -> str:
    domain = event_type.split(".")[1]
    return TOPIC_OF_DOMAIN[domain]


def seed_for(name: str, secret: str = "chargemesh-demo") -> bytes:
    """A deterministic 32-byte key seed (simulations and tests that must be reproducible)."""
    return hashlib.sha256(f"{secret}/{name}".encode()).digest()


@dataclasses.dataclass(frozen=True)
class Participant:
    signer: Signer
    subject_id: str

    @property
    def credential_id(self) -> str:
        return self.signer.credential_id

    @property
    def public_key(self) -> bytes:
        return self.signer.public_key

    @classmethod
    def generate(cls, credential_id: str, subject_id: str | None = None) -> "Participant":
        return cls(Signer.generate(credential_id), subject_id or credential_id)

    @classmethod
    def seeded(cls, credential_id: str, subject_id: str | None = None,
               secret: str = "chargemesh-demo") -> "Participant":
        return cls(Signer.from_seed(credential_id, seed_for(credential_id, secret)),
                   subject_id or credential_id)

    def sign(
        self,
        event_type: str,
        payload: dict[str, Any],
        *,
        subject_key: str,
        occurred_at_ms: int | None = None,
        chain_id: str = "",
        prev_hash: bytes = b"",
        event_id: str | None = None,
        co_signers: Iterable["Participant"] = (),
    ) -> SignedEvent:
        return seal(
            event_type,
            payload,
            author=self.signer,
            subject_key=subject_key,
            occurred_at_ms=now_ms() if occurred_at_ms is None else occurred_at_ms,
            chain_id=chain_id,
            prev_hash=prev_hash,
            event_id=event_id,
            co_signers=tuple(p.signer for p in co_signers),
        )

    # ---- governance ------------------------------------------------------------------------

    def declare_authority(self, name: str, jurisdiction: str, roles: list[str],
                          currency: str = "", at_ms: int = 0) -> SignedEvent:
        payload = {
            "authority_id": self.credential_id, "name": name, "jurisdiction": jurisdiction,
            "public_key": self.public_key, "roles": roles, "currency": currency,
            "declared_at_ms": at_ms,
        }
        return self.sign("chargemesh.governance.v1.AuthorityDeclared", payload,
                         subject_key=self.credential_id, occurred_at_ms=at_ms)

    def delegate_issuer(self, issuer: "Participant", roles: list[str], jurisdictions: list[str],
                        valid_from_ms: int = 0, valid_until_ms: int = FOREVER_MS,
                        at_ms: int = 0) -> SignedEvent:
        payload = {
            "issuer_id": issuer.credential_id, "authority_id": self.credential_id,
            "public_key": issuer.public_key, "roles": roles, "jurisdictions": jurisdictions,
            "valid_from_ms": valid_from_ms, "valid_until_ms": valid_until_ms,
        }
        return self.sign("chargemesh.governance.v1.IssuerDelegated", payload,
                         subject_key=self.credential_id, occurred_at_ms=at_ms)

    def issue_credential(self, holder: "Participant", roles: list[str], jurisdiction: str,
                         valid_from_ms: int = 0, valid_until_ms: int = FOREVER_MS,
                         attributes: dict[str, str] | None = None, at_ms: int = 0) -> SignedEvent:
        payload = {
            "credential_id": holder.credential_id, "subject_id": holder.subject_id,
            "issuer_id": self.credential_id, "public_key": holder.public_key, "roles": roles,
            "jurisdiction": jurisdiction, "valid_from_ms": valid_from_ms,
            "valid_until_ms": valid_until_ms,
            "attributes": [{"name": k, "value": v} for k, v in sorted((attributes or {}).items())],
        }
        return self.sign("chargemesh.governance.v1.CredentialIssued", payload,
                         subject_key=self.credential_id, occurred_at_ms=at_ms)

    def revoke(self, credential_id: str, effective_at_ms: int, reason_code: str = "OTHER",
               detail: str = "", at_ms: int | None = None) -> SignedEvent:
        payload = {
            "credential_id": credential_id, "revoked_by_id": self.credential_id,
            "effective_at_ms": effective_at_ms, "reason_code": reason_code, "detail": detail,
        }
        return self.sign("chargemesh.governance.v1.CredentialRevoked", payload,
                         subject_key=self.credential_id,
                         occurred_at_ms=effective_at_ms if at_ms is None else at_ms)


class Publisher:
    """Publishes signed events to their topics, keyed by their subject_key."""

    def __init__(self, kafka_config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        """``kafka_config``: librdkafka settings, e.g. ``Settings.kafka_client_config()``."""
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
        self.publish_raw(topic or topic_for(event.event_type), event.body.subject_key,
                         event.encode())

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
