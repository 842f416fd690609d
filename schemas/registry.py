"""Confluent Schema Registry framing, the optional wire format.

By default every value is Avro single-object encoded (``C3 01`` + CRC-64-AVRO fingerprint + body),
which any Avro consumer decodes with the ``.avsc`` files alone. When a deployment sets
``CHARGEMESH_SCHEMA_REGISTRY_URL``, producers instead frame values the Confluent way (magic byte
``0`` + 4-byte big-endian schema id + body), registering each schema under the topic's
``<topic>-value`` subject (TopicNameStrategy), so Confluent deserializers and tools read the topics.

The Avro body is the same bytes in both formats, and signatures cover the schema fingerprint and
that body, never the framing: re-framing an event never invalidates it. A framed value is
turned back into single-object form by resolving its id at the registry and matching the
registered schema's fingerprint against the packaged catalog; a schema the catalog does not know
is refused (``UNKNOWN_SCHEMA``), so a registry cannot smuggle in a different writer schema.
"""

from __future__ import annotations

import collections
import json
import threading
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from chargemesh.schemas.codec import catalog, crc64_avro
# install/installed: the process's unframer lives in framing (the codec reads it from there
# without importing this module); they stay importable here, where deployments configure it.
from chargemesh.schemas.framing import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    DecodeError,
    confluent_frame,
    confluent_unframe,
    install,
    installed,
)

# Ids resolved (or refused) are remembered; a hostile stream of random ids costs one registry
# lookup each, at most this many remembered refusals.
REFUSED_IDS_MAX = 10_000
REGISTRY_TIMEOUT_S = 5


class SchemaRegistryFraming:
    """Frames and unframes values against one Confluent-compatible schema registry."""

    def __init__(self, url: str, client: Any | None = None) -> None:
        if client is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            client = SchemaRegistryClient({"url": url, "timeout": REGISTRY_TIMEOUT_S})
        self.url = url
        self._client = client
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, bytes], int] = {}
        self._fingerprints: dict[int, bytes] = {}
        self._refused: collections.OrderedDict[int, str] = collections.OrderedDict()

    # ---- producing ---------------------------------------------------------------------------

    def schema_id(self, topic: str, fingerprint: bytes) -> int:
        """The registry id of a packaged schema under ``<topic>-value``, registering it once."""
        key = (topic, fingerprint)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        from confluent_kafka.schema_registry import Schema

        loaded = catalog().by_fingerprint(fingerprint)
        if loaded is None:
            raise DecodeError("UNKNOWN_SCHEMA", f"no packaged schema {fingerprint.hex()}")
        schema_id = self._client.register_schema(f"{topic}-value",
                                                 Schema(loaded.canonical_form, "AVRO"))
        with self._lock:
            self._ids[key] = schema_id
            self._fingerprints[schema_id] = fingerprint
        return schema_id

    def frame(self, topic: str, value: bytes) -> bytes:
        """Single-object bytes -> Confluent framing (already framed values pass unchanged)."""
        if value[:1] == CONFLUENT_MAGIC:
            return value
        if len(value) < 10 or value[:2] != SINGLE_OBJECT_MAGIC:
            raise DecodeError("MALFORMED_ENVELOPE", "not Avro single-object encoded")
        return confluent_frame(self.schema_id(topic, bytes(value[2:10])), bytes(value[10:]))

    # ---- consuming ---------------------------------------------------------------------------

    def fingerprint_of(self, schema_id: int) -> bytes:
        with self._lock:
            if schema_id in self._fingerprints:
                return self._fingerprints[schema_id]
            if schema_id in self._refused:
                raise DecodeError("UNKNOWN_SCHEMA", self._refused[schema_id])
        try:
            schema = self._client.get_schema(schema_id)
            parsed = fastavro.parse_schema(json.loads(schema.schema_str), _write_hint=False)
            fingerprint = crc64_avro(to_parsing_canonical_form(parsed).encode("utf-8"))
            if catalog().by_fingerprint(fingerprint) is None:
                raise DecodeError("UNKNOWN_SCHEMA",
                                  f"registry schema id {schema_id} ({parsed.get('name')}) is not "
                                  "a packaged chargemesh schema")
        except DecodeError as exc:
            self._refuse(schema_id, exc.detail)
            raise
        except Exception as exc:  # noqa: BLE001 - the registry's errors, unparsable schemas
            detail = f"schema id {schema_id} not resolvable at the registry: " \
                     f"{type(exc).__name__}: {exc}"[:500]
            self._refuse(schema_id, detail)
            raise DecodeError("UNKNOWN_SCHEMA", detail) from exc
        with self._lock:
            self._fingerprints[schema_id] = fingerprint
        return fingerprint

    def _refuse(self, schema_id: int, detail: str) -> None:
        with self._lock:
            self._refused[schema_id] = detail
            while len(self._refused) > REFUSED_IDS_MAX:
                self._refused.popitem(last=False)

    def to_single_object(self, value: bytes) -> bytes:
        schema_id, body = confluent_unframe(value)
        return SINGLE_OBJECT_MAGIC + self.fingerprint_of(schema_id) + body


def from_settings(settings: Any) -> SchemaRegistryFraming | None:
    """The framing for a deployment's settings, installed for decoding; None when unset."""
    url = getattr(settings, "schema_registry_url", "")
    if not url:
        return None
    current = installed()
    if isinstance(current, SchemaRegistryFraming) and current.url == url:
        return current
    framing = SchemaRegistryFraming(url)
    install(framing)
    return framing

