"""Signed log checkpoints (C5, P5): RFC 9162 tree heads over the lineage logs. Pure.

The leaves of a log are the exact bytes of each record of one partition of the admitted,
decisions or settlements topic, in offset order, from the partition's first record. A checkpoint
(``chargemesh.audit.v1.LogCheckpoint``, signed by the deployment's CHECKPOINT credential, a
key of its own and never the processors' whose decisions it covers, on
``chargemesh.checkpoints.v1`` keyed by ``<topic>/<partition>``) fixes the tree head of the first
``tree_size`` records and carries a consistency proof from the log's previous checkpoint, so an
auditor holding two checkpoints knows the log was only appended to in between, and an inclusion
proof against a checkpoint shows a record was in the log when it was signed.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from chargemesh.processors.records import Record
from chargemesh.streams import merkle, topics
from chargemesh.streams.envelope import SignedEvent, seal
from chargemesh.streams.keys import Signer

CHECKPOINT_EVENT_TYPE = "chargemesh.audit.v1.LogCheckpoint"
CHECKPOINTED_TOPICS: tuple[str, ...] = (topics.ADMITTED.name, topics.DECISIONS.name,
                                        topics.SETTLEMENTS.name)
CHECKPOINT_NAMESPACE = uuid.UUID("3c2b9f4e-8a61-4d0b-b7e5-1f6a2c9d8e71")
LOG_RECORDS_MAX = 50_000_000


# One record of a log partition as read from the topic (or the archive): the pipeline's record.
LogRecord = Record


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A decoded checkpoint and the signed event that carried it."""

    event: SignedEvent
    log_id: str
    log_topic: str
    log_partition: int
    tree_size: int
    root_hash: bytes
    first_offset: int
    last_offset: int
    previous_tree_size: int
    previous_root_hash: bytes
    consistency_proof: tuple[bytes, ...]
    checkpointed_at_ms: int

    @classmethod
    def of(cls, event: SignedEvent, p: dict[str, Any]) -> Checkpoint:
        return cls(event, p["log_id"], p["log_topic"], int(p["log_partition"]),
                   int(p["tree_size"]), bytes(p["root_hash"]), int(p["first_offset"]),
                   int(p["last_offset"]), int(p["previous_tree_size"]),
                   bytes(p["previous_root_hash"]), tuple(bytes(h) for h in p["consistency_proof"]),
                   int(p["checkpointed_at_ms"]))


def log_id(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def partition_logs(records: Iterable[LogRecord]) -> dict[str, list[LogRecord]]:
    """Records per log id, in offset order, one per offset (a re-read record counts once)."""
    by_log: dict[str, dict[int, LogRecord]] = {}
    for record in records:
        by_log.setdefault(log_id(record.topic, record.partition), {}).setdefault(
            record.offset, record)
    return {lid: [offsets[o] for o in sorted(offsets)] for lid, offsets in by_log.items()}


def leaf_hashes(log: Sequence[LogRecord]) -> list[bytes]:
    if len(log) > LOG_RECORDS_MAX:
        raise merkle.MerkleError(f"log of {len(log)} records > {LOG_RECORDS_MAX}")
    return [merkle.leaf_hash(record.value) for record in log]


def checkpoint_payload(topic: str, partition: int, log: Sequence[LogRecord],
                       previous: Checkpoint | None, at_ms: int) -> dict[str, Any] | None:
    """The next checkpoint of a log partition, or None when nothing was appended since
    ``previous`` (or the log is empty)."""
    hashes = leaf_hashes(log)
    size = len(hashes)
    if size == 0 or (previous is not None and previous.tree_size >= size):
        return None
    proof: list[bytes] = []
    if previous is not None and previous.tree_size > 0:
        proof = merkle.consistency_proof(hashes, previous.tree_size, size)
    return {
        "log_id": log_id(topic, partition), "log_topic": topic, "log_partition": partition,
        "tree_size": size, "root_hash": merkle.subtree_root(hashes),
        "first_offset": log[0].offset, "last_offset": log[-1].offset,
        "previous_tree_size": previous.tree_size if previous else 0,
        "previous_root_hash": previous.root_hash if previous else b"",
        "consistency_proof": proof, "checkpointed_at_ms": at_ms,
    }


def seal_checkpoint(signer: Signer, payload: dict[str, Any]) -> SignedEvent:
    """Deterministic id (a re-run over the same log signs the same checkpoint id)."""
    event_id = str(uuid.uuid5(CHECKPOINT_NAMESPACE, f"{payload['log_id']}/{payload['tree_size']}/"
                                                    f"{payload['root_hash'].hex()}"))
    return seal(CHECKPOINT_EVENT_TYPE, payload, author=signer, subject_key=payload["log_id"],
                occurred_at_ms=payload["checkpointed_at_ms"], event_id=event_id)


def latest(checkpoints: Iterable[Checkpoint]) -> dict[str, Checkpoint]:
    """The largest checkpoint of each log."""
    out: dict[str, Checkpoint] = {}
    for cp in checkpoints:
        if cp.log_id not in out or cp.tree_size > out[cp.log_id].tree_size:
            out[cp.log_id] = cp
    return out


def next_checkpoints(signer: Signer, logs: dict[str, list[LogRecord]],
                     previous: dict[str, Checkpoint], at_ms: int) -> list[SignedEvent]:
    """One new signed checkpoint per log that grew since its latest checkpoint."""
    out = []
    for lid in sorted(logs):
        log = logs[lid]
        payload = checkpoint_payload(log[0].topic, log[0].partition, log, previous.get(lid),
                                     at_ms)
        if payload is not None:
            out.append(seal_checkpoint(signer, payload))
    return out


@dataclasses.dataclass(frozen=True)
class InclusionProof:
    """A record's place in a checkpointed log and the path from its leaf to the signed root."""

    log_id: str
    offset: int
    leaf_index: int
    tree_size: int
    root_hash: bytes
    path: tuple[bytes, ...]
    checkpoint_event_id: str

    def verify(self, leaf: bytes) -> bool:
        return bool(merkle.verify_inclusion(leaf, self.leaf_index, self.tree_size, self.path,
                                            self.root_hash))

    def as_json(self) -> dict[str, Any]:
        return {"log_id": self.log_id, "offset": self.offset, "leaf_index": self.leaf_index,
                "tree_size": self.tree_size, "root_hash": self.root_hash.hex(),
                "path": [h.hex() for h in self.path],
                "checkpoint_event_id": self.checkpoint_event_id}


def prove_inclusion(log: Sequence[LogRecord], offset: int,
                    checkpoint: Checkpoint) -> InclusionProof | None:
    """The inclusion proof of the record at ``offset`` in ``checkpoint``'s tree (None: the
    record is not covered by it). The path is computed from the log as read; it only verifies if
    those records are the ones the checkpoint signed."""
    index = next((i for i, r in enumerate(log) if r.offset == offset), None)
    if index is None or index >= checkpoint.tree_size or len(log) < checkpoint.tree_size:
        return None
    path = merkle.inclusion_proof(leaf_hashes(log), index, checkpoint.tree_size)
    return InclusionProof(checkpoint.log_id, offset, index, checkpoint.tree_size,
                          checkpoint.root_hash, tuple(path), checkpoint.event.event_id)
