"""Avro codec: the `.avsc` files are the source of truth; this module only loads and applies them.

Wire format (Avro specification, "single-object encoding"): ``C3 01`` + the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form + the Avro binary body.
Any Avro consumer holding the `.avsc` files can decode it. Writer schemas of every published
revision stay loadable (``avro/history/``) so events written years ago keep decoding; they are
read through the current reader schema by Avro schema resolution.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from decimal import Decimal
from importlib import resources
from typing import Any, Iterator

import fastavro
from fastavro.schema import to_parsing_canonical_form

# DecodeError and SINGLE_OBJECT_MAGIC are defined in framing and stay importable from here.
from chargemesh.schemas.framing import SINGLE_OBJECT_MAGIC, DecodeError, normalise

FINGERPRINT_BYTES = 8
PAYLOAD_BYTES_MAX = 512 * 1024
_CRC64_EMPTY = 0xC15D213AA4D7A795


class SchemaError(Exception):
    """A schema could not be found or does not fit the data."""


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> bytes:
    """The Avro spec's CRC-64-AVRO (Rabin) fingerprint, as 8 little-endian bytes."""
    fp = _CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


@dataclasses.dataclass(frozen=True)
class LoadedSchema:
    full_name: str
    parsed: Any
    canonical_form: str
    fingerprint: bytes
    source: str

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()


def load_schema_json(raw: dict[str, Any], source: str = "<inline>") -> LoadedSchema:
    parsed = fastavro.parse_schema(raw, _write_hint=False)
    canonical = to_parsing_canonical_form(parsed)
    return LoadedSchema(
        full_name=f"{raw['namespace']}.{raw['name']}",
        parsed=fastavro.parse_schema(raw),
        canonical_form=canonical,
        fingerprint=crc64_avro(canonical.encode("utf-8")),
        source=source,
    )


def _iter_avsc() -> Iterator[tuple[str, dict[str, Any], bool]]:
    root = resources.files("chargemesh.schemas").joinpath("avro")
    for entry in sorted(root.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".avsc"):
            yield entry.name, json.loads(entry.read_text("utf-8")), True
    history = root.joinpath("history")
    if history.is_dir():
        for entry in sorted(history.iterdir(), key=lambda item: item.name):
            if entry.name.endswith(".avsc"):
                yield entry.name, json.loads(entry.read_text("utf-8")), False


class SchemaCatalog:
    """Current reader schema per full name, and every writer schema by fingerprint."""

    def __init__(self) -> None:
        self._current: dict[str, LoadedSchema] = {}
        self._by_fingerprint: dict[bytes, LoadedSchema] = {}

    def add(self, schema: LoadedSchema, current: bool = True) -> None:
        if current:
            self._current[schema.full_name] = schema
        self._by_fingerprint[schema.fingerprint] = schema

    @classmethod
    def packaged(cls) -> "SchemaCatalog":
        catalog = cls()
        for name, raw, current in _iter_avsc():
            catalog.add(load_schema_json(raw, source=name), current=current)
        return catalog

    def current(self, full_name: str) -> LoadedSchema:
        try:
            return self._current[full_name]
        except KeyError:
            raise SchemaError(f"no schema named {full_name}") from None

    def by_fingerprint(self, fingerprint: bytes) -> LoadedSchema | None:
        return self._by_fingerprint.get(fingerprint)

    def names(self) -> list[str]:
        return sorted(self._current)

    def encode(self, full_name: str, record: dict[str, Any]) -> tuple[bytes, bytes]:
        """Avro binary of ``record`` under the current schema; returns (fingerprint, body)."""
        schema = self.current(full_name)
        buffer = io.BytesIO()
        try:
            fastavro.schemaless_writer(buffer, schema.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise SchemaError(f"{full_name}: record does not fit the schema: {exc}") from exc
        return schema.fingerprint, buffer.getvalue()

    def decode(
        self, fingerprint: bytes, body: bytes, reader_name: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Decode ``body`` written under ``fingerprint``, resolved to the current reader schema."""
        writer = self._by_fingerprint.get(fingerprint)
        if writer is None:
            raise DecodeError("UNKNOWN_SCHEMA",
                              f"no writer schema with fingerprint {fingerprint.hex()}")
        name = reader_name or writer.full_name
        reader = self._current.get(name, writer)
        if len(body) > PAYLOAD_BYTES_MAX:
            raise DecodeError("OVERSIZED", f"{len(body)} bytes > {PAYLOAD_BYTES_MAX}")
        stream = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(stream, writer.parsed, reader.parsed)
        except Exception as exc:  # fastavro raises many types on hostile bytes
            raise DecodeError("MALFORMED_PAYLOAD", f"{name}: {type(exc).__name__}: {exc}") from exc
        if stream.tell() != len(body):
            raise DecodeError("MALFORMED_PAYLOAD",
                              f"{name}: {len(body) - stream.tell()} trailing bytes")
        if not isinstance(record, dict):
            raise DecodeError("MALFORMED_PAYLOAD", f"{name}: not a record")
        return name, record

    def single_object_encode(self, full_name: str, record: dict[str, Any]) -> bytes:
        fingerprint, body = self.encode(full_name, record)
        return SINGLE_OBJECT_MAGIC + fingerprint + body

    def single_object_decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        data = normalise(data)  # Confluent-framed -> single-object, when a registry is installed
        if len(data) < 10 or data[:2] != SINGLE_OBJECT_MAGIC:
            raise DecodeError("MALFORMED_ENVELOPE",
                              "not Avro single-object encoded (no C3 01 header)")
        return self.decode(bytes(data[2:10]), bytes(data[10:]))


def to_jsonable(value: Any) -> Any:
    """JSON view for humans: Decimal as string, bytes as hex, walked without recursion."""
    root: list[Any] = [value]
    stack: list[tuple[Any, Any, Any]] = [(root, 0, value)]
    depth_max = 10_000
    steps = 0
    while stack:
        steps += 1
        if steps > depth_max * 100:
            raise DecodeError("MALFORMED_PAYLOAD", "value too large to render")
        parent, key, item = stack.pop()
        if isinstance(item, dict):
            out: Any = {}
            for k, v in item.items():
                stack.append((out, k, v))
        elif isinstance(item, (list, tuple)):
            out = [None] * len(item)
            for i, v in enumerate(item):
                stack.append((out, i, v))
        elif isinstance(item, Decimal):
            out = str(item)
        elif isinstance(item, (bytes, bytearray)):
            out = bytes(item).hex()
        else:
            out = item
        parent[key] = out
    return root[0]


def render_json(record: dict[str, Any]) -> str:
    return json.dumps(to_jsonable(record), sort_keys=True, separators=(",", ":"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_CATALOG: SchemaCatalog | None = None


def catalog() -> SchemaCatalog:
    """The packaged schema catalog, loaded once per process."""
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = SchemaCatalog.packaged()
    return _CATALOG
