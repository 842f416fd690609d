"""``chargemesh disputes list [--open]`` and ``chargemesh disputes show ID`` (P2): the disputes
read model (:mod:`chargemesh.sinks.queries.disputes`), printed."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import click
from chargemesh.infra.cli.errors import ChargemeshGroup
from chargemesh.infra.cli.query import read_model
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.cli.tables import out, print_table
from chargemesh.infra.config import Settings
from chargemesh.sinks.queries.disputes import DisputeView, read_dispute, read_disputes
from rich.table import Table

QUERY_TIMEOUT_S = 30.0
LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 10_000
STATEMENT_CHARS_SHOWN = 80


def load_disputes(settings: Settings, only_open: bool, station_id: str | None,
                  limit: int) -> list[dict[str, Any]]:
    """Current state of disputes, latest opened first."""
    return read_model(settings, lambda client: read_disputes(client, only_open, station_id,
                                                             limit), QUERY_TIMEOUT_S)


def load_dispute(settings: Settings, dispute_id: str) -> DisputeView:
    return read_model(settings, lambda client: read_dispute(client, dispute_id),
                      QUERY_TIMEOUT_S)


def _text(value: Any) -> str:
    if isinstance(value, Decimal):
        return f"{value.normalize():f}" if value else "0"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _when(at_ms: int) -> str:
    if not at_ms:
        return ""
    return dt.datetime.fromtimestamp(at_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def disputes_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("dispute", "station", "session", "kind", "status", "outcome", "opened (UTC)",
                   "opened by", "evidence", "correction"):
        table.add_column(column, overflow="fold")
    for r in rows:
        correction = (f"{r['adjustment_settlement_id']} {_text(r['adjustment_total'])} "
                      f"{r['currency']}" if r["adjustment_settlement_id"] else "")
        status = "[yellow]OPEN[/yellow]" if r["status"] == "OPEN" else r["status"]
        table.add_row(r["dispute_id"], r["station_id"], r["session_id"], r["kind"], status,
                      r["outcome"], _when(r["opened_at_ms"]), r["opened_by_credential_id"],
                      str(r["evidence_count"]), correction)
    return table


def changes_table(view: DisputeView) -> Table:
    s = view.summary
    table = Table(title=f"dispute {s['dispute_id']} at {s['station_id']}, session "
                  f"{s['session_id']} ({s['kind']}): {s['status']} {s['outcome']}".rstrip())
    for column in ("seq", "change", "by", "at (UTC)", "evidence", "statement"):
        table.add_column(column, overflow="fold")
    for c in view.changes:
        table.add_row(str(c["seq"]), c["change"] + (f" {c['outcome']}" if c["outcome"] else ""),
                      c["actor_credential_id"], _when(c["recorded_at_ms"]),
                      str(len(c["evidence_event_ids"])),
                      c["statement"][:STATEMENT_CHARS_SHOWN])
    return table


def lines_table(view: DisputeView) -> Table:
    s = view.summary
    table = Table(title=f"correction {s['adjustment_settlement_id']} of {s['settlement_id']}")
    for column in ("line", "kind", "description", "quantity (Wh)", "amount"):
        table.add_column(column, overflow="fold")
    for ln in view.correction_lines:
        table.add_row(str(ln["line_no"]), ln["kind"], ln["description"], str(ln["quantity_wh"]),
                      f"{_text(ln['amount'])} {ln['currency']}")
    table.add_row("", "TOTAL", "", "", f"{_text(s['adjustment_total'])} {s['currency']}")
    return table


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(type(value).__name__)


@click.group(cls=ChargemeshGroup)
def disputes() -> None:
    """Disputes (P2): who opened what, the evidence, the arbiter's outcome and corrections."""


@disputes.command("list")
@click.option("--open", "only_open", is_flag=True, help="Only disputes not resolved yet.")
@click.option("--station", default=None, help="Only this station's disputes.")
@click.option("--limit", type=click.IntRange(1, LIST_LIMIT_MAX), default=LIST_LIMIT_DEFAULT,
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the disputes as JSON.")
@click.pass_context
def disputes_list(ctx: click.Context, only_open: bool, station: str | None, limit: int,
                  as_json: bool) -> None:
    """Disputes with their current state, latest opened first."""
    rows = load_disputes(settings_of(ctx), only_open, station, limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True, default=_jsonable))
        return
    title = f"{'open ' if only_open else ''}disputes ({len(rows)})"
    print_table(out(), disputes_table(rows, title))


@disputes.command("show")
@click.argument("dispute_id")
@click.option("--json", "as_json", is_flag=True, help="Print the dispute as JSON.")
@click.pass_context
def disputes_show(ctx: click.Context, dispute_id: str, as_json: bool) -> None:
    """One dispute: every change in order, and the correcting settlement's lines if any."""
    view = load_dispute(settings_of(ctx), dispute_id)
    if as_json:
        click.echo(json.dumps(view.to_json(), indent=2, sort_keys=True, default=_jsonable))
        return
    console = out()
    print_table(console, changes_table(view))
    if view.correction_lines:
        print_table(console, lines_table(view))
