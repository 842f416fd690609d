"""The digest P3 grid observers sign: one definition for the SDK and the processors.

``SHA-256(b"chargemesh/observer-decision/v1\\0" || Avro binary of the ObserverDecision record)``.
The record is the ``decision`` field of ``chargemesh.grid.v1.ObserverAttestation`` (its ``.avsc``
is the only definition). Avro arrays keep their order and decimals have a single encoding at the
schema's scale, so the bytes, and the digest, are a function of the decision's content and its
curtailment order; there are no maps in it.
"""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache
from typing import Any

import fastavro
from chargemesh.schemas.codec import catalog

ATTESTATION = "chargemesh.grid.v1.ObserverAttestation"
DIGEST_PREFIX = b"chargemesh/observer-decision/v1\0"


@lru_cache(maxsize=1)
def _decision_schema() -> Any:
    attestation = catalog().current(ATTESTATION).parsed
    field = next(f for f in attestation["fields"] if f["name"] == "decision")
    return fastavro.parse_schema(field["type"])


def decision_digest(decision: dict[str, Any]) -> bytes:
    """The 32-byte digest of an ``ObserverDecision`` (raises on a record the schema refuses)."""
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, _decision_schema(), decision)
    return hashlib.sha256(DIGEST_PREFIX + buffer.getvalue()).digest()
