"""The grid zones read model (issue 15, hole 2): every registered zone, its jurisdiction, the
authority that registered it, its operators and the program in force, from the view
``grid_zones_current`` over ``grid_zones``.

``read_grid_zones`` takes a ``clickhouse_driver.Client``; ``chargemesh grid zones`` prints it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chargemesh.sinks.queries import ReadModelError, named_rows

ZONES_READ_MAX = 10_000
NO_PROGRAM = "NONE"


@dataclasses.dataclass(frozen=True)
class GridZone:
    grid_zone_id: str
    jurisdiction: str
    registered_by: str
    operators: list[str]
    registered_from_ms: int
    program: str  # NONE: no program declared (sessions there settle bilaterally)
    program_declared_by: str
    program_from_ms: int
    registrations: int


def read_grid_zones(client: Any) -> list[GridZone]:
    rows = named_rows(client, "SELECT grid_zone_id, zone_jurisdiction, registered_by, operators, "
                      "registered_from_ms, program_in_force, program_declared_by, "
                      "program_from_ms, registrations FROM grid_zones_current "
                      f"ORDER BY grid_zone_id LIMIT {ZONES_READ_MAX + 1}", {})
    if len(rows) > ZONES_READ_MAX:
        raise ReadModelError(f"more than {ZONES_READ_MAX} grid zones")
    return [GridZone(r["grid_zone_id"], r["zone_jurisdiction"], r["registered_by"],
                     list(r["operators"]), int(r["registered_from_ms"]),
                     r["program_in_force"] or NO_PROGRAM, r["program_declared_by"],
                     int(r["program_from_ms"]), int(r["registrations"])) for r in rows]
