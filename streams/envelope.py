"""The signed envelope every chargemesh event travels in.

A ``SignedEvent`` (``schemas/avro/chargemesh.envelope.v1.SignedEvent.avsc``) holds an
``EventBody`` and one or more signatures. Every signature covers the same canonical bytes::

    DOMAIN_PREFIX || payload schema fingerprint (8 bytes) || Avro binary of EventBody

The body embeds the payload's own Avro binary, so signatures are over bytes, never dicts. The
event hash (SHA-256 of those bytes) is what lineage links (``prev_hash``) point at.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import io
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import fastavro

from chargemesh.schemas import framing
from chargemesh.schemas.codec import SINGLE_OBJECT_MAGIC, DecodeError, SchemaCatalog, catalog
from chargemesh.streams.keys import Signer, verify_signature

DOMAIN_PREFIX = b"chargemesh/signed-event/v1\x00"
SIGNED_EVENT_SCHEMA = "chargemesh.envelope.v1.SignedEvent"
REJECTED_SCHEMA = "chargemesh.envelope.v1.EventRejected"
SIGNATURES_MAX = 16
SIGNATURE_ALGORITHM = "Ed25519"
ENVELOPE_BYTES_MAX = 1_000_000
ID_CHARS_MAX = 128


@dataclasses.dataclass(frozen=True)
class EventBody:
    event_id: str
    event_type: str
    schema_fingerprint: bytes
    occurred_at_ms: int
    subject_key: str
    author_credential_id: str
    chain_id: str
    prev_hash: bytes
    payload: bytes

    def as_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Signature:
    signer_credential_id: str
    signature: bytes
    algorithm: str = SIGNATURE_ALGORITHM


@dataclasses.dataclass(frozen=True)
class SignedEvent:
    """A decoded envelope: its body, its body's exact Avro bytes and its signatures."""

    body: EventBody
    body_bytes: bytes
    signatures: tuple[Signature, ...]

    @property
    def event_id(self) -> str:
        return self.body.event_id

    @property
    def event_type(self) -> str:
        return self.body.event_type

    @property
    def signing_bytes(self) -> bytes:
        return DOMAIN_PREFIX + self.body.schema_fingerprint + self.body_bytes

    @property
    def event_hash(self) -> bytes:
        return hashlib.sha256(self.signing_bytes).digest()

    def signer_ids(self) -> list[str]:
        return [sig.signer_credential_id for sig in self.signatures]

    def signature_by(self, credential_id: str) -> Signature | None:
        for sig in self.signatures:
            if sig.signer_credential_id == credential_id:
                return sig
        return None

    def with_signature(self, signer: Signer) -> "SignedEvent":
        """Add a co-signature over the same canonical bytes (multi-party events)."""
        sig = Signature(signer.credential_id, signer.sign(self.signing_bytes))
        kept = tuple(s for s in self.signatures if s.signer_credential_id != signer.credential_id)
        return dataclasses.replace(self, signatures=kept + (sig,))

    def verify_by(self, credential_id: str, public_key: bytes) -> bool:
        sig = self.signature_by(credential_id)
        return sig is not None and verify_signature(public_key, sig.signature, self.signing_bytes)

    def encode(self) -> bytes:
        parts = _parts()
        buffer = io.BytesIO()
        fastavro.schemaless_writer(
            buffer,
            parts.signatures,
            [
                {"signer_credential_id": s.signer_credential_id, "algorithm": s.algorithm,
                 "signature": s.signature}
                for s in self.signatures
            ],
        )
        return SINGLE_OBJECT_MAGIC + parts.fingerprint + self.body_bytes + buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class _EnvelopeParts:
    fingerprint: bytes
    body: Any
    signatures: Any


_PARTS: _EnvelopeParts | None = None


def _parts() -> _EnvelopeParts:
    """The SignedEvent schema split into its body record and its signature array."""
    global _PARTS
    if _PARTS is None:
        signed = catalog().current(SIGNED_EVENT_SCHEMA)
        raw = signed.parsed
        body_raw = raw["fields"][0]["type"]
        sigs_raw = raw["fields"][1]["type"]
        _PARTS = _EnvelopeParts(
            fingerprint=signed.fingerprint,
            body=fastavro.parse_schema(body_raw),
            signatures=fastavro.parse_schema(sigs_raw),
        )
    return _PARTS


def _encode_body(body: EventBody) -> bytes:
    buffer = io.BytesIO()
    record = {
        "event_id": body.event_id,
        "event_type": body.event_type,
        "schema_fingerprint": body.schema_fingerprint,
        "occurred_at_ms": body.occurred_at_ms,
        "subject_key": body.subject_key,
        "author_credential_id": body.author_credential_id,
        "chain_id": body.chain_id,
        "prev_hash": body.prev_hash,
        "payload": body.payload,
    }
    fastavro.schemaless_writer(buffer, _parts().body, record)
    return buffer.getvalue()


_EVENT_ID_SOURCE: contextvars.ContextVar[Iterator[str] | None] = contextvars.ContextVar(
    "chargemesh_event_id_source", default=None)


def new_event_id() -> str:
    source = _EVENT_ID_SOURCE.get()
    return next(source) if source is not None else str(uuid.uuid4())


@contextlib.contextmanager
def deterministic_event_ids(namespace: str) -> Iterator[None]:
    """Inside: events sealed without an explicit id get UUIDv5(namespace, n) for n = 0, 1, ...
    in this context only, so a seeded plan (the simulator's) is reproducible byte for byte."""
    base = uuid.uuid5(uuid.NAMESPACE_URL, f"chargemesh:event-ids:{namespace}")
    token = _EVENT_ID_SOURCE.set(str(uuid.uuid5(base, str(n))) for n in itertools.count())
    try:
        yield
    finally:
        _EVENT_ID_SOURCE.reset(token)


def seal(
    event_type: str,
    payload: dict[str, Any],
    *,
    author: Signer,
    subject_key: str,
    occurred_at_ms: int,
    chain_id: str = "",
    prev_hash: bytes = b"",
    event_id: str | None = None,
    co_signers: tuple[Signer, ...] = (),
    schemas: SchemaCatalog | None = None,
) -> SignedEvent:
    """Encode ``payload`` under its schema, wrap it in a body and sign it (author first)."""
    cat = schemas or catalog()
    fingerprint, payload_bytes = cat.encode(event_type, payload)
    body = EventBody(
        event_id=event_id or new_event_id(),
        event_type=event_type,
        schema_fingerprint=fingerprint,
        occurred_at_ms=occurred_at_ms,
        subject_key=subject_key,
        author_credential_id=author.credential_id,
        chain_id=chain_id,
        prev_hash=prev_hash,
        payload=payload_bytes,
    )
    event = SignedEvent(body, _encode_body(body), ()).with_signature(author)
    for signer in co_signers:
        event = event.with_signature(signer)
    return event


def open_envelope(data: bytes) -> SignedEvent:
    """Decode wire bytes into a SignedEvent; raises DecodeError with a reason code.

    The signing bytes are the body exactly as it stands on the wire: nothing is re-encoded.
    """
    if len(data) > ENVELOPE_BYTES_MAX:
        raise DecodeError("OVERSIZED", f"envelope of {len(data)} bytes > {ENVELOPE_BYTES_MAX}")
    data = framing.normalise(data)  # Confluent-framed -> single-object, when configured
    parts = _parts()
    if len(data) < 10 or data[:2] != SINGLE_OBJECT_MAGIC:
        raise DecodeError("MALFORMED_ENVELOPE", "not Avro single-object encoded (no C3 01 header)")
    if data[2:10] != parts.fingerprint:
        raise DecodeError("MALFORMED_ENVELOPE", f"not a {SIGNED_EVENT_SCHEMA} (fingerprint)")
    stream = io.BytesIO(data)
    stream.seek(10)
    try:
        raw_body = fastavro.schemaless_reader(stream, parts.body, parts.body)
        body_end = stream.tell()
        raw_sigs = fastavro.schemaless_reader(stream, parts.signatures, parts.signatures)
    except Exception as exc:  # fastavro raises many types on hostile bytes
        raise DecodeError("MALFORMED_ENVELOPE", f"{type(exc).__name__}: {exc}") from exc
    if stream.tell() != len(data):
        raise DecodeError("MALFORMED_ENVELOPE", f"{len(data) - stream.tell()} trailing bytes")
    if not raw_sigs:
        raise DecodeError("MISSING_SIGNATURE", "envelope carries no signature")
    if len(raw_sigs) > SIGNATURES_MAX:
        raise DecodeError("MALFORMED_ENVELOPE", f"{len(raw_sigs)} signatures > {SIGNATURES_MAX}")
    body = EventBody(**raw_body)
    # The event type too: it is copied into the rejection record, which must fit the topic.
    for text in (body.event_id, body.event_type, body.author_credential_id, body.subject_key,
                 body.chain_id):
        if len(text) > ID_CHARS_MAX:
            raise DecodeError("MALFORMED_ENVELOPE", f"identifier longer than {ID_CHARS_MAX}")
    sigs = tuple(
        Signature(s["signer_credential_id"], s["signature"], s["algorithm"]) for s in raw_sigs
    )
    for sig in sigs:
        # The algorithm name is not under the signature: accept exactly the one we verify.
        if sig.algorithm != SIGNATURE_ALGORITHM:
            raise DecodeError("BAD_SIGNATURE", f"unsupported signature algorithm {sig.algorithm!r}")
    return SignedEvent(body, bytes(data[10:body_end]), sigs)


def open_payload(
    event: SignedEvent, schemas: SchemaCatalog | None = None
) -> dict[str, Any]:
    """Decode the payload under its writer schema, resolved to the current reader schema."""
    cat = schemas or catalog()
    name, record = cat.decode(event.body.schema_fingerprint, event.body.payload)
    if name != event.body.event_type:
        raise DecodeError(
            "MALFORMED_PAYLOAD", f"event_type {event.body.event_type} but schema is {name}"
        )
    return record


def event_view(event: SignedEvent, payload: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON view of an event for humans and the CLI."""
    body = event.body
    return {
        "event_id": body.event_id,
        "event_type": body.event_type,
        "occurred_at_ms": body.occurred_at_ms,
        "subject_key": body.subject_key,
        "author_credential_id": body.author_credential_id,
        "chain_id": body.chain_id,
        "prev_hash": body.prev_hash.hex(),
        "event_hash": event.event_hash.hex(),
        "schema_fingerprint": body.schema_fingerprint.hex(),
        "signers": event.signer_ids(),
        "payload": payload,
    }
