"""The battery pack read model (E2): a pack's lineage through every swap cycle (registered
into a station's inventory, fitted to a vehicle, returned) with each swap's settlement, from
``pack_history_valid`` and ``settlements``.

``read_pack_history`` takes a ``clickhouse_driver.Client``; ``chargemesh pack history`` prints
what it returns.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

from chargemesh.sinks.queries import named_rows
from clickhouse_driver import Client

STEPS_READ_MAX = 1_000
SWAPPED_OUT = "SWAPPED_OUT"


@dataclasses.dataclass(frozen=True)
class PackHistory:
    pack_id: str
    steps: list[dict[str, Any]]  # oldest first; a swap step carries its settlement, if any
    cycles: int  # times the pack went out on a vehicle
    vehicles: list[str]  # vehicle credentials it went out on, in order


def read_pack_history(client: Client, pack_id: str) -> PackHistory:
    steps = named_rows(client, "SELECT at_ms, action, station_id, session_id, "
                       "vehicle_credential_id, vehicle_id, chemistry, state_of_health_permille, "
                       "capacity_wh, charge_wh, counterpart_pack_id, event_id "
                       "FROM pack_history_valid WHERE pack_id = %(p)s "
                       f"ORDER BY at_ms, action LIMIT {STEPS_READ_MAX}", {"p": pack_id})
    sessions = tuple(sorted({s["session_id"] for s in steps if s["session_id"]}))
    settled: dict[str, dict[str, Any]] = {}
    if sessions:
        for row in named_rows(client, "SELECT session_id, settlement_id, total_amount, "
                              "currency, jurisdiction FROM settlements FINAL "
                              "WHERE session_id IN %(s)s AND kind = 'CHARGE'", {"s": sessions}):
            settled[row["session_id"]] = row
    for step in steps:
        found = settled.get(step["session_id"], {})
        step["settlement_id"] = found.get("settlement_id", "")
        step["total_amount"] = found.get("total_amount", Decimal(0))
        step["currency"] = found.get("currency", "")
    out = [s["vehicle_credential_id"] for s in steps if s["action"] == SWAPPED_OUT]
    return PackHistory(pack_id, steps, len(out), out)
