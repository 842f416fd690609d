"""The two wire forms of a chargemesh value, and which of them this process accepts.

Every value is Avro single-object encoded (``C3 01`` + 8-byte fingerprint + body); a deployment
with a schema registry frames values the Confluent way instead (``00`` + 4-byte schema id +
body). :func:`normalise` turns an accepted value into single-object form, using the unframer
:func:`install` registered (``chargemesh.schemas.registry.SchemaRegistryFraming``, installed by
``registry.from_settings``). This module imports nothing of chargemesh: the codec and the
registry both build on it, so neither needs the other at import time.
"""

from __future__ import annotations

from typing import Protocol

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
CONFLUENT_HEADER_BYTES = 5


class DecodeError(Exception):
    """Bytes that do not decode under the declared schema."""

    def __init__(self, reason_code: str, detail: str) -> None:
        super().__init__(f"{reason_code}: {detail}")
        self.reason_code = reason_code
        self.detail = detail


class Unframer(Protocol):
    """Turns a Confluent-framed value back into single-object bytes (a schema registry)."""

    @property
    def url(self) -> str: ...

    def to_single_object(self, value: bytes) -> bytes: ...


_INSTALLED: Unframer | None = None


def install(unframer: Unframer | None) -> None:
    """Make this process's decoders accept Confluent-framed values (None: refuse them)."""
    global _INSTALLED
    _INSTALLED = unframer


def installed() -> Unframer | None:
    return _INSTALLED


def normalise(value: bytes) -> bytes:
    """Any accepted wire form -> Avro single-object bytes (what signatures and decoders use)."""
    if value[:1] != CONFLUENT_MAGIC:
        return value
    unframer = _INSTALLED
    if unframer is None:
        raise DecodeError("MALFORMED_ENVELOPE",
                          "Confluent-framed value but no schema registry is configured")
    return unframer.to_single_object(value)


def confluent_frame(schema_id: int, body: bytes) -> bytes:
    """Confluent Schema Registry framing: magic 0, 4-byte big-endian schema id, Avro binary."""
    return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big") + body


def confluent_unframe(data: bytes) -> tuple[int, bytes]:
    if len(data) < CONFLUENT_HEADER_BYTES or data[:1] != CONFLUENT_MAGIC:
        raise DecodeError("MALFORMED_ENVELOPE", "not Confluent-framed (no magic byte 0)")
    return (int.from_bytes(data[1:CONFLUENT_HEADER_BYTES], "big"),
            bytes(data[CONFLUENT_HEADER_BYTES:]))
