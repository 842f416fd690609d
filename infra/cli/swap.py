"""``chargemesh pack history PACK``: a battery pack's lineage through every swap cycle (E2) —
registered into a station's inventory, fitted to a vehicle, returned — with each swap's
settlement: the packs read model (:mod:`chargemesh.sinks.queries.packs`), printed."""

from __future__ import annotations

import dataclasses
import json

import click
from chargemesh.infra.cli.errors import ChargemeshGroup
from chargemesh.infra.cli.query import read_model
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.cli.tables import print_table
from chargemesh.infra.config import Settings
from chargemesh.sinks.queries.packs import PackHistory, read_pack_history
from rich.console import Console
from rich.table import Table


def load_pack_history(settings: Settings, pack_id: str) -> PackHistory:
    return read_model(settings, lambda client: read_pack_history(client, pack_id))


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
