"""Hypothesis strategies that generate valid records for any of our Avro schemas."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

TEXT = st.text(max_size=24)
LONG = st.integers(min_value=-(2**63), max_value=2**63 - 1)
INT = st.integers(min_value=-(2**31), max_value=2**31 - 1)
DECIMAL_6 = st.integers(min_value=-(10**14), max_value=10**14).map(
    lambda n: Decimal(n).scaleb(-6)
)


def strategy_for(schema: Any, named: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    named = {} if named is None else named
    if isinstance(schema, str):
        primitive = {
            "string": TEXT, "long": LONG, "int": INT, "boolean": st.booleans(),
            "bytes": st.binary(max_size=40), "null": st.none(),
            "double": st.floats(allow_nan=False), "float": st.floats(allow_nan=False, width=32),
        }
        if schema in primitive:
            return primitive[schema]
        return named[schema]
    if isinstance(schema, list):
        return st.one_of([strategy_for(branch, named) for branch in schema])
    kind = schema["type"]
    if kind == "bytes" and schema.get("logicalType") == "decimal":
        return DECIMAL_6
    if kind == "record":
        fields = {f["name"]: strategy_for(f["type"], named) for f in schema["fields"]}
        strat = st.fixed_dictionaries(fields)
        named[schema["name"]] = strat
        return strat
    if kind == "enum":
        strat = st.sampled_from(schema["symbols"])
        named[schema["name"]] = strat
        return strat
    if kind == "array":
        return st.lists(strategy_for(schema["items"], named), max_size=3)
    if kind == "fixed":
        strat = st.binary(min_size=schema["size"], max_size=schema["size"])
        named[schema["name"]] = strat
        return strat
    if kind == "map":
        return st.dictionaries(TEXT, strategy_for(schema["values"], named), max_size=3)
    return strategy_for(kind, named)
