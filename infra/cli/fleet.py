"""``chargemesh fleet report FLEET [--month YYYY-MM] [--json]`` (E4): a fleet's tax/ESG report
(energy, renewable share and internal cost by depot site and month): the fleet read model
(:mod:`chargemesh.sinks.queries.fleet`), printed."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import click
from chargemesh.infra.cli.errors import ChargemeshGroup
from chargemesh.infra.cli.query import read_model
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.cli.tables import out, print_table
from chargemesh.infra.config import Settings
from chargemesh.sinks.queries import ReadModelError
from chargemesh.sinks.queries.fleet import check_report_args, read_fleet_report
from rich.table import Table

QUERY_TIMEOUT_S = 30.0


def load_report(settings: Settings, fleet_id: str, month: str | None) -> list[dict[str, Any]]:
    """One row per (site, month, currency) of ``fleet_id``, months in order; the arguments are
    checked before ClickHouse is asked."""
    check_report_args(fleet_id, month)
    return read_model(settings, lambda client: read_fleet_report(client, fleet_id, month),
                      QUERY_TIMEOUT_S)


def _kwh(wh: int) -> str:
    return f"{Decimal(wh) / 1000:.3f}"


def _share(share: float) -> str:
    return f"{share * 100:.1f} %"


def report_table(fleet_id: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"fleet {fleet_id}: energy, renewable share and internal cost")
    for column in ("month", "site", "sessions", "final", "import (kWh)", "export (kWh)",
                   "renewable (kWh)", "renewable share", "internal cost"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["month"], r["site_id"], str(r["sessions"]), str(r["final_sessions"]),
                      _kwh(r["energy_import_wh"]), _kwh(r["energy_export_wh"]),
                      _kwh(r["renewable_wh"]), _share(r["renewable_share"]),
                      f"{Decimal(r['internal_amount']).normalize():f} {r['currency']}")
    return table


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


@click.group(cls=ChargemeshGroup)
def fleet() -> None:
    """Fleet depots (E4): internal accounting entries and the tax/ESG report."""


@fleet.command("report")
@click.argument("fleet_id")
@click.option("--month", default=None, help="Only this UTC month (YYYY-MM).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def fleet_report(ctx: click.Context, fleet_id: str, month: str | None, as_json: bool) -> None:
    """Energy, renewable share and internal cost of FLEET_ID by depot site and month."""
    try:
        rows = load_report(settings_of(ctx), fleet_id, month)
    except ReadModelError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({"fleet_id": fleet_id, "month": month, "rows": rows}, indent=2,
                              sort_keys=True, default=_jsonable))
        return
    if not rows:
        click.echo(f"no internal accounting entries for fleet {fleet_id!r}"
                   + (f" in {month}" if month else ""))
        return
    print_table(out(), report_table(fleet_id, rows))
