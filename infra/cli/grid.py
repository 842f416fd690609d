"""``chargemesh grid observers ZONE``: a zone's observer set, its quorum decisions and the
observers caught equivocating (P3): the observers read model
(:mod:`chargemesh.sinks.queries.observers`), printed."""

from __future__ import annotations

import dataclasses
import json

import click
from chargemesh.infra.cli.errors import ChargemeshGroup
from chargemesh.infra.cli.query import read_model
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.cli.tables import print_table
from chargemesh.infra.config import Settings
from chargemesh.sinks.queries.grid_zones import GridZone, read_grid_zones
from chargemesh.sinks.queries.observers import ObserverView, read_observer_view
from rich.console import Console
from rich.table import Table

DIGEST_CHARS_SHOWN = 16


def load_observer_view(settings: Settings, zone: str) -> ObserverView:
    return read_model(settings, lambda client: read_observer_view(client, zone))


def observer_tables(view: ObserverView) -> list[Table]:
    s = view.observer_set
    head = Table(title=f"grid zone {view.zone}: observer set")
    for column in ("version", "k of n (f)", "observers", "interval", "declared by / operator"):
        head.add_column(column)
    if s is not None:
        head.add_row(str(s["observer_set_version"]), f"{s['threshold_k']} of "
                     f"{len(s['observer_credential_ids'])} ({s['faults_tolerated_f']})",
                     ", ".join(s["observer_credential_ids"]), f"{s['interval_ms'] // 1000} s",
                     f"{s['declared_by_authority_id']} / {s['grid_operator_credential_id']}")
    decided = Table(title="quorum decisions (latest first)")
    for column in ("interval start ms", "digest", "signers", "curtailment order", "rate/kWh"):
        decided.add_column(column)
    for d in view.decisions:
        decided.add_row(str(d["interval_start_at_ms"]), d["decision_digest"][:DIGEST_CHARS_SHOWN],
                        ", ".join(d["signer_credential_ids"]), " > ".join(d["curtailment_order"]),
                        str(d["rate_per_kwh"]))
    caught = Table(title="equivocations")
    for column in ("observer", "interval start ms", "evidence (event ids)", "after quorum"):
        caught.add_column(column)
    for e in view.equivocations:
        caught.add_row(e["observer_credential_id"], str(e["interval_start_at_ms"]),
                       f"{e['first_attestation_event_id']}\n{e['second_attestation_event_id']}",
                       "yes" if e["interval_decided"] else "no")
    refusals = Table(title="refused attestations (all zones)")
    refusals.add_column("reason")
    refusals.add_column("count", justify="right")
    for reason, n in sorted(view.refusals.items()):
        refusals.add_row(reason, str(n))
    return [head, decided, caught, refusals]


def zones_table(zones: list[GridZone]) -> Table:
    table = Table(title="grid zones: registered by their jurisdiction's authority")
    for column in ("zone", "jurisdiction", "registered by", "operators", "program"):
        table.add_column(column)
    for z in zones:
        table.add_row(z.grid_zone_id, z.jurisdiction, z.registered_by, ", ".join(z.operators),
                      z.program)
    return table


@click.group(cls=ChargemeshGroup)
def grid() -> None:
    """Grid zones: who registered and operates them, their programs, observer sets (P3)."""


@grid.command("zones")
@click.option("--json", "as_json", is_flag=True, help="Print the zones as JSON.")
@click.pass_context
def grid_zones(ctx: click.Context, as_json: bool) -> None:
    """Every registered grid zone: jurisdiction, authority, operators, program in force."""
    zones = read_model(settings_of(ctx), read_grid_zones)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(z) for z in zones], indent=2, sort_keys=True))
        return
    print_table(Console(), zones_table(zones))


@grid.command("observers")
@click.argument("zone")
@click.option("--json", "as_json", is_flag=True, help="Print the view as JSON.")
@click.pass_context
def grid_observers(ctx: click.Context, zone: str, as_json: bool) -> None:
    """A zone's observer set, recent quorum decisions, equivocations and refusals."""
    view = load_observer_view(settings_of(ctx), zone)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(view), indent=2, sort_keys=True, default=str))
        return
    console = Console()
    for table in observer_tables(view):
        print_table(console, table)
