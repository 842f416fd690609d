"""The plain records the pipeline reads and writes, and how they are keyed and identified. Pure.

A :class:`Record` is one input message (whatever client read it), an :class:`Output` one message
to publish, a :class:`StateWrite` one entry of a worker's state topic. Partitioning is Kafka's
Java-client default (murmur2), which Faust, aiokafka and the SDK's publisher use too, so every
worker and every participant agree on which partition holds a station, a zone or a routing key.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid

# Output ids are UUIDv5 of the causing event's id (and an index) in this namespace: a batch
# redone after a crash republishes byte-identical records that consumers collapse by id.
DECISION_NAMESPACE = uuid.UUID("0b9d6a8e-54f3-4f0b-8c1e-7a2f3d4e5c6b")
ROUTING_KEY_TRIES_MAX = 100_000
_MURMUR2_SEED = 0x9747B28C
_MURMUR2_M = 0x5BD1E995
_MURMUR2_R = 24
_U32 = 0xFFFFFFFF
_POSITIVE = 0x7FFFFFFF
_WORD_BYTES = 4


@dataclasses.dataclass(frozen=True)
class Record:
    """One input message: where it was read and its raw key and value."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


@dataclasses.dataclass(frozen=True)
class Output:
    """One message to publish (the broker picks the partition from ``key``)."""

    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclasses.dataclass(frozen=True)
class StateWrite:
    """One state entry: ``key`` -> ``value`` on ``partition`` of the state topic ``topic``
    (the partition of the input it belongs to, so a worker restores exactly its inputs' state)."""

    topic: str
    key: bytes
    partition: int
    value: bytes


def murmur2(data: bytes) -> int:
    """MurmurHash2 as Kafka's Java client computes it (``Utils.murmur2``), unsigned 32 bits."""
    length = len(data)
    h = (_MURMUR2_SEED ^ length) & _U32
    whole = length - length % _WORD_BYTES
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * _MURMUR2_M) & _U32
        k ^= k >> _MURMUR2_R
        k = (k * _MURMUR2_M) & _U32
        h = ((h * _MURMUR2_M) & _U32) ^ k
    tail = data[whole:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * _MURMUR2_M) & _U32
    h ^= h >> 13
    h = (h * _MURMUR2_M) & _U32
    h ^= h >> 15
    return h


def expected_partition(key: bytes, partitions: int) -> int:
    """The Java client's (and Faust's) default partitioner: murmur2, positive, modulo."""
    return (murmur2(key) & _POSITIVE) % partitions


def routing_key(prefix: str, partition: int, partitions: int) -> str:
    """A key that the murmur2 partitioner sends to ``partition`` (for per-partition fan-out)."""
    for n in range(ROUTING_KEY_TRIES_MAX):
        key = f"{prefix}:{n}"
        if expected_partition(key.encode(), partitions) == partition:
            return key
    raise RuntimeError(f"no key for partition {partition} in {ROUTING_KEY_TRIES_MAX} tries")


def decision_id(cause_event_id: str, index: int) -> str:
    """The id of the ``index``-th record a processor derives from ``cause_event_id``."""
    return str(uuid.uuid5(DECISION_NAMESPACE, f"{cause_event_id}/{index}"))
