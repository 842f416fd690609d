"""``chargemesh pack history PACK``: a battery pack's lineage through every swap cycle (E2) —
registered into a station's inventory, fitted to a vehicle, returned — with each swap's
settlement, read back from ClickHouse (``pack_history_valid``, ``settlements``)."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from typing import Any

import click
from chargemesh.infra.cli.errors import ChargemeshGroup
from chargemesh.infra.cli.query import cli_client
from chargemesh.infra.cli.query import named_rows as _rows
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.cli.tables import print_table
from chargemesh.infra.config import Settings
from rich.console import Console
from rich.table import Table

STEPS_SHOWN_MAX = 1_000


@dataclasses.dataclass(frozen=True)
class PackHistory:
    pack_id: str
    steps: list[dict[str, Any]]  # oldest first; a swap step carries its settlement, if any
    cycles: int  # times the pack went out on a vehicle
    vehicles: list[str]  # vehicle credentials it went out on, in order


def load_pack_history(settings: Settings, pack_id: str) -> PackHistory:
    client = cli_client(settings)
    try:
        steps = _rows(client, "SELECT at_ms, action, station_id, session_id, "
                      "vehicle_credential_id, vehicle_id, chemistry, state_of_health_permille, "
                      "capacity_wh, charge_wh, counterpart_pack_id, event_id "
                      "FROM pack_history_valid WHERE pack_id = %(p)s "
                      f"ORDER BY at_ms, action LIMIT {STEPS_SHOWN_MAX}", {"p": pack_id})
        sessions = tuple(sorted({s["session_id"] for s in steps if s["session_id"]}))
        settled: dict[str, dict[str, Any]] = {}
        if sessions:
            for row in _rows(client, "SELECT session_id, settlement_id, total_amount, currency, "
                             "jurisdiction FROM settlements FINAL WHERE session_id IN %(s)s "
                             "AND kind = 'CHARGE'", {"s": sessions}):
                settled[row["session_id"]] = row
    finally:
        client.disconnect()
    for step in steps:
        found = settled.get(step["session_id"], {})
        step["settlement_id"] = found.get("settlement_id", "")
        step["total_amount"] = found.get("total_amount", Decimal(0))
        step["currency"] = found.get("currency", "")
    out = [s["vehicle_credential_id"] for s in steps if s["action"] == "SWAPPED_OUT"]
    return PackHistory(pack_id, steps, len(out), out)


def history_table(view: PackHistory) -> Table:
    table = Table(title=f"pack {view.pack_id}: {view.cycles} swap cycle(s)")
    for column in ("at ms", "step", "station", "vehicle", "chemistry", "SoH ‰", "charge Wh",
                   "swapped with", "settlement"):
        table.add_column(column)
    for s in view.steps:
        settlement = (f"{s['settlement_id']} {s['total_amount']} {s['currency']}"
                      if s["settlement_id"] else "")
        table.add_row(str(s["at_ms"]), s["action"], s["station_id"], s["vehicle_id"],
                      s["chemistry"], str(s["state_of_health_permille"] or ""),
                      str(s["charge_wh"]), s["counterpart_pack_id"], settlement)
    return table


@click.group(cls=ChargemeshGroup)
def pack() -> None:
    """Battery packs of swap stations (E2)."""


@pack.command("history")
@click.argument("pack_id")
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON.")
@click.pass_context
def pack_history(ctx: click.Context, pack_id: str, as_json: bool) -> None:
    """Every registration and swap of PACK_ID, oldest first, with each swap's settlement."""
    view = load_pack_history(settings_of(ctx), pack_id)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(view), indent=2, sort_keys=True, default=str))
        return
    if not view.steps:
        click.echo(f"no history for pack {pack_id}")
        return
    print_table(Console(), history_table(view))
