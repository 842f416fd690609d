"""Verify on the way in: decode, check the policy and the trust chain, or reject with a reason.

Pure: no Kafka. Agents call :func:`admit` on the raw bytes of each message before anything else
reads the payload; what fails becomes an ``EventRejected`` record (:func:`rejection_record`).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from chargemesh.processors.governance import GOVERNANCE_EVENT_TYPES, ChainOk, TrustStore
from chargemesh.processors.policy import POLICIES
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.schemas.codec import DecodeError
from chargemesh.streams.envelope import ID_CHARS_MAX, SignedEvent, open_envelope, open_payload
from chargemesh.streams.topics import GOVERNANCE

REJECTION_NAMESPACE = uuid.UUID("6f1d5c1e-2b7a-4c8e-9a51-3c7f0e2d9b11")
RAW_BYTES_KEPT_MAX = 64 * 1024
DETAIL_CHARS_MAX = 1_000


@dataclasses.dataclass(frozen=True)
class Admitted:
    event: SignedEvent
    payload: dict[str, Any]
    author: ChainOk | None  # None for governance events, which the trust store checks itself


@dataclasses.dataclass(frozen=True)
class Refused:
    rejection: Rejection
    event: SignedEvent | None  # None when the bytes did not even decode


def decode(raw: bytes) -> tuple[SignedEvent, dict[str, Any]] | Refused:
    try:
        event = open_envelope(raw)
    except DecodeError as exc:
        return Refused(Rejection(Reason(exc.reason_code), exc.detail), None)
    try:
        payload = open_payload(event)
    except DecodeError as exc:
        return Refused(Rejection(Reason(exc.reason_code), exc.detail), event)
    return event, payload


def _decode_for(
    raw: bytes, key: bytes | None, topic: str
) -> tuple[SignedEvent, dict[str, Any]] | Refused:
    decoded = decode(raw)
    if isinstance(decoded, Refused):
        return decoded
    event, _ = decoded
    policy = POLICIES.get(event.event_type)
    if policy is None or policy.topic != topic:
        return Refused(
            Rejection.of(Reason.WRONG_TOPIC, f"{event.event_type} is not accepted on {topic}"),
            event,
        )
    if key is not None and key.decode("utf-8", "replace") != event.body.subject_key:
        return Refused(
            Rejection.of(Reason.KEY_MISMATCH, "message key differs from the signed subject_key"),
            event,
        )
    return decoded


def admit_governance(raw: bytes, key: bytes | None, store: TrustStore) -> Admitted | Refused:
    """Decode a governance event and fold it into ``store`` if the store admits it."""
    decoded = _decode_for(raw, key, GOVERNANCE.name)
    if isinstance(decoded, Refused):
        return decoded
    event, payload = decoded
    problem = store.apply(event, payload)
    if problem is not None:
        return Refused(problem, event)
    return Admitted(event, payload, None)


def admit(raw: bytes, key: bytes | None, topic: str, store: TrustStore) -> Admitted | Refused:
    """Decode ``raw`` from ``topic`` and check it against its policy and the trust store.

    Pure: the store is only read. Governance events go through :func:`admit_governance`.
    """
    decoded = _decode_for(raw, key, topic)
    if isinstance(decoded, Refused):
        return decoded
    event, payload = decoded
    if event.event_type in GOVERNANCE_EVENT_TYPES:
        return Refused(Rejection.of(Reason.WRONG_TOPIC, "governance events change the store"),
                       event)
    verdict = store.check_event(event, payload)
    if isinstance(verdict, Rejection):
        return Refused(verdict, event)
    return Admitted(event, payload, verdict)


def rejection_id(topic: str, partition: int, offset: int) -> str:
    """Deterministic: a redelivered message yields the same rejection, never a second one."""
    return str(uuid.uuid5(REJECTION_NAMESPACE, f"{topic}/{partition}/{offset}"))


def rejection_record(
    raw: bytes,
    topic: str,
    partition: int,
    offset: int,
    refused: Refused,
    rejected_at_ms: int,
) -> dict[str, Any]:
    """The ``chargemesh.envelope.v1.EventRejected`` record for a refused input."""
    event = refused.event
    return {
        "rejection_id": rejection_id(topic, partition, offset),
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "reason_code": refused.rejection.reason,
        "detail": refused.rejection.detail[:DETAIL_CHARS_MAX],
        # open_envelope bounds these; cut anyway so a rejection always fits its topic.
        "event_id": event.event_id[:ID_CHARS_MAX] if event else "",
        "event_type": event.event_type[:ID_CHARS_MAX] if event else "",
        "author_credential_id": event.body.author_credential_id[:ID_CHARS_MAX] if event else "",
        "rejected_at_ms": rejected_at_ms,
        "raw_bytes": raw[:RAW_BYTES_KEPT_MAX],
    }
