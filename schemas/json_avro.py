"""JSON in, Avro datum out: the reverse of :func:`chargemesh.schemas.codec.to_jsonable`.

People and scripts write payloads as JSON: decimals as strings (``"0.350000"``; a JSON float is
refused, money is never a float), bytes and fixed as hex, enums as their symbol, a union holding
records either untagged (the one record branch whose fields fit) or tagged the Avro-JSON way
(``{"V2GExtension": {...}}``, short or full name). :func:`from_json` walks the writer schema with
an explicit stack and a depth limit and says exactly where a value does not fit
(``$.claim.energy_wh: expected an integer (long), got str '12'``). Fields left out take the
schema's default; a field that is neither in the schema nor defaulted is an error.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from chargemesh.schemas.codec import SchemaError, catalog

DEPTH_MAX = 32
NODES_MAX = 100_000
VALUE_CHARS_SHOWN_MAX = 40
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


class PayloadError(SchemaError):
    """A JSON value does not fit the Avro schema; ``path`` says where (``$.claim.currency``)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def from_json(event_type: str, value: Any) -> dict[str, Any]:
    """The Avro datum of ``value`` (parsed JSON) under ``event_type``'s current schema."""
    parsed = catalog().current(event_type).parsed
    named: dict[str, Any] = dict(parsed.get("__named_schemas", {}))
    out = convert(parsed, value, named)
    if not isinstance(out, dict):
        raise PayloadError("$", "a payload is a JSON object")
    return out


def convert(schema: Any, value: Any, named: dict[str, Any]) -> Any:
    """Convert ``value`` under ``schema`` (fastavro-parsed; ``named`` resolves references)."""
    root: dict[str, Any] = {}
    # (schema, value, path, container, slot, depth)
    stack: list[tuple[Any, Any, str, Any, Any, int]] = [(schema, value, "$", root, "v", 0)]
    nodes = 0
    while stack:
        sch, val, path, container, slot, depth = stack.pop()
        nodes += 1
        if nodes > NODES_MAX:
            raise PayloadError(path, f"more than {NODES_MAX} values")
        if depth > DEPTH_MAX:
            raise PayloadError(path, f"nested deeper than {DEPTH_MAX}")
        children: list[tuple[Any, Any, str, Any, Any, int]] = []
        container[slot] = _node(_resolve(sch, named, path), val, path, named, children)
        stack.extend((c[0], c[1], c[2], c[3], c[4], depth + 1) for c in children)
    return root["v"]


def _resolve(schema: Any, named: dict[str, Any], path: str) -> Any:
    if isinstance(schema, str) and schema not in _PRIMITIVES:
        if schema not in named:
            raise PayloadError(path, f"schema names unknown type {schema}")
        return named[schema]
    if isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)):
        return schema["type"]
    return schema


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) > VALUE_CHARS_SHOWN_MAX:
        text = text[:VALUE_CHARS_SHOWN_MAX] + "..."
    return f"{type(value).__name__} {text}"


def _node(schema: Any, value: Any, path: str, named: dict[str, Any],
          children: list[Any]) -> Any:
    """One value: scalars are returned; containers are returned empty, children queued."""
    if isinstance(schema, list):
        return _union(schema, value, path, named, children)
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "record":
        return _record(schema, value, path, children)
    if kind == "array":
        if not isinstance(value, list):
            raise PayloadError(path, f"expected a JSON list, got {_shown(value)}")
        out: list[Any] = [None] * len(value)
        children.extend((schema["items"], item, f"{path}[{i}]", out, i)
                        for i, item in enumerate(value))
        return out
    if kind == "map":
        if not isinstance(value, dict):
            raise PayloadError(path, f"expected a JSON object, got {_shown(value)}")
        mapped: dict[str, Any] = {}
        children.extend((schema["values"], v, f"{path}.{k}", mapped, k) for k, v in value.items())
        return mapped
    return _scalar(schema, kind, value, path)


def _record(schema: dict[str, Any], value: Any, path: str, children: list[Any]) -> Any:
    if not isinstance(value, dict):
        raise PayloadError(path, f"expected a JSON object ({schema['name']}), got {_shown(value)}")
    fields = {f["name"]: f for f in schema["fields"]}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise PayloadError(path, f"{schema['name']} has no field {', '.join(unknown)} "
                           f"(fields: {', '.join(fields)})")
    out: dict[str, Any] = {}
    for name, field in fields.items():
        if name in value:
            children.append((field["type"], value[name], f"{path}.{name}", out, name))
        elif "default" not in field:
            raise PayloadError(f"{path}.{name}", "missing (the field has no default)")
    return out


def _scalar(schema: Any, kind: str, value: Any, path: str) -> Any:
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    if logical == "decimal":
        return _decimal(schema, value, path)
    if kind == "null":
        if value is not None:
            raise PayloadError(path, f"expected null, got {_shown(value)}")
        return None
    if kind == "boolean":
        if not isinstance(value, bool):
            raise PayloadError(path, f"expected true or false, got {_shown(value)}")
        return value
    if kind in ("int", "long"):
        low, high = (INT_MIN, INT_MAX) if kind == "int" else (LONG_MIN, LONG_MAX)
        if not isinstance(value, int) or isinstance(value, bool):
            raise PayloadError(path, f"expected an integer ({kind}), got {_shown(value)}")
        if not low <= value <= high:
            raise PayloadError(path, f"{value} is out of range for an Avro {kind}")
        return value
    if kind in ("float", "double"):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise PayloadError(path, f"expected a number ({kind}), got {_shown(value)}")
        return float(value)
    if kind == "string":
        if not isinstance(value, str):
            raise PayloadError(path, f"expected a string, got {_shown(value)}")
        return value
    if kind in ("bytes", "fixed"):
        return _hex(schema, kind, value, path)
    if kind == "enum":
        if value not in schema["symbols"]:
            raise PayloadError(path, f"expected one of {', '.join(schema['symbols'])}, "
                               f"got {_shown(value)}")
        return value
    raise PayloadError(path, f"unsupported schema type {kind}")


def _hex(schema: Any, kind: str, value: Any, path: str) -> bytes:
    if not isinstance(value, str):
        raise PayloadError(path, f"expected bytes as a hex string, got {_shown(value)}")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise PayloadError(path, f"not hex: {_shown(value)}") from None
    if kind == "fixed" and len(raw) != schema["size"]:
        raise PayloadError(path, f"expected {schema['size']} bytes, got {len(raw)}")
    return raw


def _decimal(schema: dict[str, Any], value: Any, path: str) -> Decimal:
    if isinstance(value, float):
        raise PayloadError(path, f"a decimal is written as a string (\"12.50\"), never a float: "
                           f"got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PayloadError(path, f"expected a decimal as a string, got {_shown(value)}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise PayloadError(path, f"not a decimal number: {_shown(value)}") from None
    if not number.is_finite():
        raise PayloadError(path, f"not a finite decimal: {value!r}")
    scale, precision = int(schema.get("scale", 0)), int(schema["precision"])
    exact = number.quantize(Decimal(1).scaleb(-scale)) if number.adjusted() < precision else None
    if exact is None or exact != number:
        raise PayloadError(path, f"{value} does not fit decimal({precision},{scale})")
    if len(exact.as_tuple().digits) > precision:
        raise PayloadError(path, f"{value} has more than {precision} digits")
    return exact


def _union(schema: list[Any], value: Any, path: str, named: dict[str, Any],
           children: list[Any]) -> Any:
    branches = [_resolve(b, named, path) for b in schema]
    if value is None and "null" in branches:
        return None
    records = [b for b in branches if isinstance(b, dict) and b.get("type") == "record"]
    tagged = _tagged(records, value)
    if tagged is not None:
        branch, inner = tagged
    else:
        fitting = [b for b in records if isinstance(value, dict) and _fits(b, value)]
        if len(fitting) > 1:
            raise PayloadError(path, "fits several of " + ", ".join(b["name"] for b in fitting)
                               + ': tag it, e.g. {"' + _short(fitting[0]["name"]) + '": {...}}')
        if not fitting:
            return _plain_branch(branches, value, path, named, children)
        branch, inner = fitting[0], value
    # fastavro's (record name, datum) notation picks the branch; the datum fills in later.
    return (branch["name"], _record(branch, inner, path, children))


def _short(full_name: str) -> str:
    return full_name.rsplit(".", 1)[-1]


def _tagged(records: list[dict[str, Any]], value: Any) -> tuple[dict[str, Any], Any] | None:
    if not isinstance(value, dict) or len(value) != 1:
        return None
    (tag, inner), = value.items()
    for branch in records:
        if tag in (branch["name"], _short(branch["name"])) and isinstance(inner, dict):
            return branch, inner
    return None


def _fits(record: dict[str, Any], value: dict[str, Any]) -> bool:
    names = {f["name"] for f in record["fields"]}
    required = {f["name"] for f in record["fields"] if "default" not in f}
    return set(value) <= names and required <= set(value)


def _plain_branch(branches: list[Any], value: Any, path: str, named: dict[str, Any],
                  children: list[Any]) -> Any:
    """A non-record branch: the first one the value converts under."""
    problems = []
    for branch in branches:
        if isinstance(branch, dict) and branch.get("type") == "record":
            continue
        try:
            return convert(branch, value, named)
        except PayloadError as exc:
            problems.append(exc.problem)
    names = [b["name"] if isinstance(b, dict) and "name" in b else str(b) for b in branches]
    raise PayloadError(path, f"fits none of the union's branches ({', '.join(names)}): "
                       + "; ".join(problems[:3]))
