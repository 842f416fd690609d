"""The HTML report: everything read back from ClickHouse, drawn as inline SVG, one file.

``build_report(settings, out_dir, run_id)`` writes ``report-<run>.html`` (self-contained: no
external JS, CSS or fonts) and ``report-<run>.json`` (the same figures as data) into
``out_dir`` and returns the HTML path. ``chargemesh report [--run-id ID] [--out DIR]`` runs it.

Scope: the run given, else the latest in ``simulation_runs``. Every section reads that run's
rows only (identifiers carrying its prefix, rejections within its wall-clock window, latencies
by run id: ``infra/report/queries.py``), and says so; with no run recorded (say after
``chargemesh demo`` only) every section is cumulative over the whole database, i.e. every run
in the state folder, and the header and each section say that instead. The JSON figures carry
the same ``scope`` ("run <id>" or "cumulative") in ``meta`` and in every section.

Money stays ``Decimal`` end to end and is shown as a Decimal string with its currency; sums
are per currency, never across currencies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
from chargemesh.checks import ensure
from chargemesh.infra.cli.root import settings_of
from chargemesh.infra.config import Settings
from chargemesh.infra.report import svg_charts as charts
from chargemesh.infra.report.queries import (
    CUMULATIVE,
    HEATMAP_HOURS_MAX,
    HEATMAP_STATIONS_MAX,
    MARKET_RULES_SQL,
    REPRICE_SESSIONS_MAX,
    JsonDict,
    Reader,
    energy_revenue,
    latencies,
    meta,
    query_command,
    rejections,
    reprice,
    resolve_run,
    utilisation,
)
from chargemesh.infra.stack.preflight import require_clickhouse
from chargemesh.sinks.migrate import clickhouse_client
from chargemesh.units import MINUTE_MS

REPRICE_WINDOW_BEFORE_MS = 30 * MINUTE_MS
REPRICE_WINDOW_AFTER_MS = 60 * MINUTE_MS
REJECTION_REASONS_MAX = 30
TABLE_ROWS_MAX = 50
HISTOGRAM_BINS = 30


# ---- formatting ---------------------------------------------------------------------------------

def money(amount: Decimal, currency: str) -> str:
    """``Decimal('24.990000'), 'EUR'`` -> ``'24.99 EUR'``: trailing zeros past two decimals
    dropped, the value itself never rounded."""
    ensure(isinstance(amount, Decimal), f"money must be Decimal, got {type(amount).__name__}")
    whole, _, frac = format(amount, "f").partition(".")
    text = f"{whole}.{frac.rstrip('0').ljust(2, '0')}"
    return f"{text} {currency}".strip()


def kwh(energy_wh: int) -> str:
    """Integer Wh as kWh with three decimals (exact: 1 Wh = 0.001 kWh)."""
    return format(Decimal(int(energy_wh)) / 1000, ".3f")


def utc(at_ms: int) -> str:
    moment = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _json_default(value: object) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ---- compact tables -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TableSpec:
    key: str
    title: str
    source: str
    headers: tuple[str, ...]
    scoped_by: str  # the id column that carries a run's prefix
    sql: str  # "{scope}" is the run's condition on scoped_by
    cells: Callable[[tuple[Any, ...]], list[str]]


def _s(value: Any) -> str:
    return str(value)


TABLES: tuple[TableSpec, ...] = (
    TableSpec("settlements_status", "Settlements by status and currency", "settlements_status",
              ("status", "currency", "settlements", "total", "oldest pending age (s)"),
              "settlement_id", "SELECT status, currency, count(), sum(total_amount), "
              "maxIf(pending_age_ms, status = 'PENDING') FROM settlements_status "
              "WHERE {scope} GROUP BY status, currency ORDER BY status, currency",
              lambda r: [r[0], r[1], _s(r[2]), money(r[3], r[1]),
                         _s(r[4] // 1000) if r[0] == "PENDING" else "–"]),
    TableSpec("market_rules", "Market rules in the day", "events, power_limits, "
              "session_lifecycle, settlement_expiries, settlements",
              ("rule", "grid event, tariff, session or settlement", "what happened", "at"),
              "subject", MARKET_RULES_SQL, lambda r: [r[0], r[1], r[2], utc(r[3])]),
    TableSpec("disputes", "Disputes", "disputes_current",
              ("dispute", "station", "session", "kind", "status", "outcome", "evidence",
               "adjustment"), "dispute_id",
              "SELECT dispute_id, station_id, session_id, kind, status, outcome, evidence_count, "
              "adjustment_total, currency FROM disputes_current WHERE {scope} "
              "ORDER BY opened_at_ms, dispute_id",
              lambda r: [*map(_s, r[:7]), money(r[7], r[8]) if r[8] else "–"]),
    TableSpec("credential_reevaluations", "Revocation re-evaluations",
              "credential_reevaluations",
              ("revoked credential", "subject kind", "outcome", "count"),
              "revoked_credential_id",
              "SELECT revoked_credential_id, subject_kind, outcome, count() "
              "FROM credential_reevaluations FINAL WHERE {scope} "
              "GROUP BY revoked_credential_id, subject_kind, outcome "
              "ORDER BY revoked_credential_id, subject_kind, outcome",
              lambda r: list(map(_s, r))),
    TableSpec("v2g_settlements", "E3 V2G settlements", "v2g_settlements",
              ("settlement", "station", "import (kWh)", "export (kWh)", "import charge",
               "export credit", "clearing price (per kWh)", "net"), "settlement_id",
              "SELECT settlement_id, station_id, energy_import_wh, energy_export_wh, "
              "import_amount, export_credit, clearing_price_per_kwh, total_amount, currency "
              "FROM v2g_settlements WHERE {scope} ORDER BY admitted_at_ms, settlement_id",
              lambda r: [r[0], r[1], kwh(r[2]), kwh(r[3]), money(r[4], r[8]),
                         money(r[5], r[8]), money(r[6], r[8]), money(r[7], r[8])]),
    TableSpec("fleet_esg_monthly", "E4 fleet depots (ESG, monthly)", "fleet_esg_monthly",
              ("fleet", "site", "month", "sessions", "final", "import (kWh)", "renewable (kWh)",
               "renewable share (%)", "internal amount"), "site_id",
              "SELECT fleet_id, site_id, month, sessions, final_sessions, energy_import_wh, "
              "renewable_wh, renewable_share, internal_amount, currency FROM fleet_esg_monthly "
              "WHERE {scope} ORDER BY fleet_id, site_id, month",
              lambda r: [r[0], r[1], r[2], _s(r[3]), _s(r[4]), kwh(r[5]), kwh(r[6]),
                         f"{100 * float(r[7]):.1f}", money(r[8], r[9])]),
    TableSpec("pack_history", "E2 battery packs", "pack_history_valid",
              ("pack", "action", "station", "vehicle credential", "chemistry",
               "state of health (‰)", "charge (kWh)", "at"), "pack_id",
              "SELECT pack_id, action, station_id, vehicle_credential_id, chemistry, "
              "state_of_health_permille, charge_wh, at_ms FROM pack_history_valid "
              "WHERE {scope} ORDER BY pack_id, at_ms, action",
              lambda r: [*map(_s, r[:6]), kwh(r[6]), utc(r[7])]),
    TableSpec("wireless_trips", "E1 wireless road trips", "wireless_trips",
              ("trip", "road operator", "segments", "passes accepted", "passes refused",
               "energy (kWh)", "total", "closed because"), "trip_id",
              "SELECT trip_id, road_operator_id, segments, passes_accepted, passes_refused, "
              "energy_wh, total_amount, currency, close_reason FROM wireless_trips FINAL "
              "WHERE {scope} ORDER BY closed_at_ms, trip_id",
              lambda r: [*map(_s, r[:5]), kwh(r[5]), money(r[6], r[7]), r[8]]),
    TableSpec("mobile_station_locations", "E5 mobile charger locations",
              "mobile_station_locations_valid",
              ("station", "jurisdiction", "latitude (°)", "longitude (°)", "tariff",
               "posted rate (per kWh)", "relocated at"), "station_id",
              "SELECT station_id, jurisdiction, latitude_microdeg, longitude_microdeg, tariff_id, "
              "posted_rate_per_kwh, relocated_at_ms FROM mobile_station_locations_valid "
              "WHERE {scope} ORDER BY relocated_at_ms, station_id",
              lambda r: [r[0], r[1], f"{r[2] / 1e6:.6f}", f"{r[3] / 1e6:.6f}", r[4],
                         _s(r[5]), utc(r[6])]),
)


def _tables(db: Reader) -> list[JsonDict]:
    """Each compact table with rows in scope (at most TABLE_ROWS_MAX shown, with the total)."""
    out = []
    for spec in TABLES:
        sql = spec.sql.format(scope=db.scope.ids_in(spec.scoped_by))
        total = db.scalar(f"SELECT count() FROM ({sql})")
        if not total:
            continue
        rows = db.rows(f"{sql} LIMIT {TABLE_ROWS_MAX}")
        out.append({"key": spec.key, "title": spec.title, "source": spec.source,
                    "scope": db.scope.label, "scoped_by": spec.scoped_by,
                    "headers": list(spec.headers), "rows": [spec.cells(r) for r in rows],
                    "total_rows": total})
    return out


def collect_figures(settings: Settings, run_id: str | None = None) -> JsonDict:
    """Every figure of the report, as JSON-ready data (money as Decimal strings), scoped to
    ``run_id`` (default: the latest run; cumulative when none is recorded)."""
    client = clickhouse_client(settings)
    try:
        scope, run = resolve_run(Reader(client), run_id)
        db = Reader(client, scope)
        return {"meta": meta(db, settings, run), "utilisation": utilisation(db),
                "energy_revenue": energy_revenue(db), "reprice": reprice(db),
                "rejections": rejections(db), "latencies": latencies(db),
                "tables": _tables(db)}
    finally:
        client.disconnect()


# ---- figures to SVG -----------------------------------------------------------------------------

def _hour_label(hour_ms: int) -> str:
    return dt.datetime.fromtimestamp(hour_ms / 1000, tz=dt.UTC).strftime("%m-%d %H:00")


def utilisation_svg(fig: JsonDict) -> str:
    return charts.heatmap(
        "Slot utilisation per station and hour", fig["stations"],
        [_hour_label(h) for h in fig["hours_ms"]], fig["utilisation_percent"],
        x_label="hour starting (UTC)", y_label="station",
        value_unit="% reserved", value_max=100.0)


def energy_svg(fig: JsonDict) -> str:
    rows = fig["by_jurisdiction"]
    jurisdictions = sorted({r["jurisdiction"] for r in rows})
    currencies = sorted({r["currency"] for r in rows})
    cell = {(r["jurisdiction"], r["currency"]): r["energy_import_wh"] / 1000 for r in rows}
    return charts.grouped_bars(
        "Energy delivered by jurisdiction (settled)", jurisdictions,
        [f"billed in {c}" for c in currencies],
        [[cell.get((j, c)) for c in currencies] for j in jurisdictions],
        x_label="jurisdiction", y_label="energy (kWh)",
        frame=charts.Frame(width=560))


def revenue_svgs(fig: JsonDict) -> list[str]:
    """One chart per currency: amounts in different currencies never share an axis."""
    out = []
    for currency in sorted({r["currency"] for r in fig["by_jurisdiction"]}):
        rows = [r for r in fig["by_jurisdiction"] if r["currency"] == currency]
        out.append(charts.grouped_bars(
            f"Revenue in {currency} by jurisdiction", [r["jurisdiction"] for r in rows],
            [currency], [[float(Decimal(r["revenue"]))] for r in rows],
            x_label="jurisdiction", y_label=f"revenue ({currency}, incl. tax)",
            frame=charts.Frame(width=360)))
    return out


def reprice_svg(fig: JsonDict) -> str:
    title = "Re-pricing around a grid event"
    if not fig["sessions"]:
        return charts.empty_chart(title, "no re-pricing recorded")
    at = fig["grid_event_at_ms"]
    series, markers = [], []
    for i, s in enumerate(fig["sessions"]):
        start = max(s["started_at_ms"] or at - REPRICE_WINDOW_BEFORE_MS,
                    at - REPRICE_WINDOW_BEFORE_MS)
        end = min(s["closed_at_ms"] or at + REPRICE_WINDOW_AFTER_MS, at + REPRICE_WINDOW_AFTER_MS)
        proposed = float(Decimal(s["proposed_rate_per_kwh"]))
        base = float(Decimal(s["base_rate_per_kwh"])) if s["base_rate_per_kwh"] else proposed
        change = max(s["effective_from_ms"], start)
        after = proposed if s["accepted"] else base
        points = [(start, base), (change, after), (max(end, change), after)]
        rel = [((x - at) / MINUTE_MS, y) for x, y in points]
        currency = f" ({s['currency']})" if s["currency"] else ""
        series.append(charts.Series(f"{s['session_id']}{currency}", rel))
        markers.append(charts.Marker(i, (s["proposed_at_ms"] - at) / MINUTE_MS, proposed,
                                     f"proposed {s['proposed_rate_per_kwh']}/kWh",
                                     filled=False))
        if s["accepted_at_ms"]:
            markers.append(charts.Marker(i, (s["accepted_at_ms"] - at) / MINUTE_MS, proposed,
                                         f"accepted {s['proposed_rate_per_kwh']}/kWh"))
    currencies = {s["currency"] for s in fig["sessions"] if s["currency"]}
    unit = f"{currencies.pop()}/kWh" if len(currencies) == 1 else "per kWh, currency in legend"
    return charts.timeline(
        f"{title} {fig['grid_event_id']}", series,
        x_label="time since the grid event's first re-price proposal (min)",
        y_label=f"rate in force ({unit})", markers=markers,
        vertical_lines=[(0.0, "grid event")], frame=charts.Frame(width=1300, height=380, top=50))


def rejections_svg(fig: JsonDict) -> str:
    rows = fig["by_reason_and_topic"]
    totals: dict[str, int] = defaultdict(int)
    for r in rows:
        totals[r["reason_code"]] += r["count"]
    reasons = sorted(totals, key=lambda k: (-totals[k], k))[:REJECTION_REASONS_MAX]
    topics = sorted({r["source_topic"] for r in rows})
    cell = {(r["reason_code"], r["source_topic"]): r["count"] for r in rows}
    return charts.grouped_bars(
        "Rejections by reason and source topic", reasons,
        [t.removeprefix("chargemesh.") for t in topics],
        [[cell.get((reason, t)) for t in topics] for reason in reasons],
        x_label="reason code", y_label="rejected events (count)",
        frame=charts.Frame(width=1300, height=360))


def latency_svg(kind: JsonDict) -> str:
    return charts.histogram(
        f"{kind['kind']} latency (n={kind['count']})", kind["values_ms"],
        x_label="latency (ms)", y_label="measurements (count)", bins=HISTOGRAM_BINS,
        lines=[(kind["p50_ms"], f"p50 {kind['p50_ms']:.1f} ms"),
               (kind["p99_ms"], f"p99 {kind['p99_ms']:.1f} ms")],
        frame=charts.Frame(width=640, height=320, top=50))


# ---- HTML ---------------------------------------------------------------------------------------

CSS = """
body { font-family: 'DejaVu Sans', Helvetica, Arial, sans-serif; margin: 24px; color: #222;
       max-width: 1340px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 2px solid #0072B2; padding-bottom: 4px;
       margin-top: 32px; }
.note { color: #555; font-size: 13px; margin: 4px 0 10px; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #eef3f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { background: #f4f4f4; padding: 2px 5px; border-radius: 3px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; font-size: 14px; }
dt { font-weight: bold; }
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(cell: str) -> str:
    numeric = cell[:1].isdigit() or cell[:1] == "-" and cell[1:2].isdigit()
    return f"<td class='num'>{html.escape(cell)}</td>" if numeric else (
        f"<td>{html.escape(cell)}</td>")


def _header_html(meta: JsonDict) -> str:
    run, scoped = meta["run"], meta["scope"] != CUMULATIVE
    items = [("run id", meta["run_id"] or "(no simulation run recorded)"),
             ("scope", f"{meta['scope']}: identifiers carrying the prefix {meta['id_prefix']}"
              if scoped else f"cumulative: {meta['cumulative_reason']}")]
    if run:
        items += [("seed", str(run["seed"])),
                  ("parameters", json.dumps(run["params"], sort_keys=True)),
                  ("run time", f"{utc(run['started_at_ms'])} – {utc(run['finished_at_ms'])}")]
    if meta["events"]:
        of = f" of this run ({meta['events_in_database']} in the database)" if scoped else ""
        items.append(("events in ClickHouse", (f"{meta['events']} admitted{of}, "
                      f"{utc(meta['first_event_at_ms'])} – {utc(meta['last_event_at_ms'])}")))
    items.append(("generated", utc(meta["generated_at_ms"])))
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)
    where = f" WHERE match(station_id, '{meta['id_pattern']}')" if scoped else ""
    return (f"<h1>chargemesh report</h1><dl>{rows}</dl>"
            f"<p class='note'>Query ClickHouse directly: <code>{html.escape(meta['query_command'])}"
            f"</code>, e.g. <code>{html.escape(f'SELECT * FROM revenue_daily{where}')}</code> or "
            "<code>SELECT * FROM simulation_latencies FINAL WHERE run_id = '…'</code>. "
            + _scope_html(meta) + "</p>")


def _scope_html(meta: JsonDict) -> str:
    database = f"<code>{html.escape(meta['database'])}</code>"
    if meta["scope"] == CUMULATIVE:
        sections = "every section but the latencies (filtered by run id)" if meta[
            "run_id"] else "every section"
        return (f"<strong>Scope: cumulative</strong> ({html.escape(meta['cumulative_reason'])}"
                f"): {sections} covers every row of the database {database}, i.e. every run "
                "in this state folder, plus any demo.")
    prefix = html.escape(meta["id_prefix"])
    return (f"<strong>Scope: {html.escape(meta['scope'])}</strong>. The market's tables carry "
            f"no run id, but every identifier this run created carries its prefix "
            f"<code>{prefix}</code> as a whole token (<code>{prefix}-…</code>, "
            f"<code>…:{prefix}-…</code>, <code>…:{prefix}:…</code>, <code>…:{prefix}</code>), "
            "so every section below reads this run's rows only, as its note says; rejections "
            "carry no such id and are the run's by its wall-clock window, latencies by run id. "
            f"Nothing in this report is cumulative over the database {database}.")


def _scoped(scope: str, rows: str) -> str:
    """How a section's note ends: which rows it counts."""
    if scope == CUMULATIVE:
        return (" <strong>Cumulative</strong>: every row in the database (every run in this "
                "state folder, plus any demo).")
    return f" Scope: {html.escape(scope)} only ({rows})."


def _energy_html(fig: JsonDict) -> str:
    rows = [[r["jurisdiction"], r["currency"], str(r["settlements"]),
             kwh(r["energy_import_wh"]), money(Decimal(r["revenue"]), r["currency"])]
            for r in fig["by_jurisdiction"]]
    totals = [[c, money(Decimal(v), c)] for c, v in fig["revenue_by_currency"].items()]
    charts_html = "".join([energy_svg(fig), *revenue_svgs(fig)])
    return ("<h2>Energy and revenue by jurisdiction and currency</h2>"
            "<p class='note'>From <code>revenue_daily</code> (admitted settlements, FINAL or "
            "PENDING, corrections counted with their own sign; internal fleet accounting "
            "excluded). Amounts are per currency, never added across currencies."
            + _scoped(fig["scope"], "settled at stations or road operators whose id carries "
                      "the run's prefix") + "</p>"
            f"<div class='row'>{charts_html}</div><div class='row'><div>"
            + _table(["jurisdiction", "currency", "settlements", "energy (kWh)", "revenue"], rows)
            + "</div><div>" + _table(["currency", "total revenue"], totals)
            + "</div></div>")


def _latency_html(fig: JsonDict) -> str:
    kinds = fig["kinds"]
    out = [f"<h2>Latencies ({html.escape(fig['scope'])})</h2>",
           ("<p class='note'>From <code>simulation_latencies</code>, measured by the simulator's "
           "participants (request published → decision consumed). Percentiles are ClickHouse's "
           "<code>quantileExact</code>."
            + _scoped(fig["scope"], "measured by this run, by its run id") + "</p>")]
    if not kinds:
        return "".join(out) + "<p>No latencies recorded for this scope.</p>"
    out.append(_table(["kind", "measurements", "p50 (ms)", "p99 (ms)", "max (ms)"],
                      [[k["kind"], str(k["count"]), f"{k['p50_ms']:.1f}", f"{k['p99_ms']:.1f}",
                        f"{k['max_ms']:.1f}"] for k in kinds]))
    out.append("<div class='row'>" + "".join(latency_svg(k) for k in kinds) + "</div>")
    return "".join(out)


def render_html(figures: JsonDict) -> str:
    util, reprice = figures["utilisation"], figures["reprice"]
    rejections = sum(r["count"] for r in figures["rejections"]["by_reason_and_topic"])
    parts = [
        _header_html(figures["meta"]),
        ("<h2>Slot utilisation</h2><p class='note'>From <code>slot_utilisation_hourly</code>: "
        "reserved connector-time per station and UTC hour, as a share of the connectors that "
        "station has taken reservations on (<code>slot_ledger</code>); RESERVED and REALLOCATED "
        f"slots. {len(util['stations'])} stations (the busiest {HEATMAP_STATIONS_MAX} at most), "
        f"at most {HEATMAP_HOURS_MAX} hours."
        + _scoped(util["scope"], "stations whose id carries the run's prefix") + "</p>"),
        utilisation_svg(util),
        _energy_html(figures["energy_revenue"]),
        ("<h2>Re-pricing timeline</h2><p class='note'>From <code>reprices_current</code>: the "
        f"grid event that re-priced the most sessions ({reprice.get('sessions_repriced', 0)} "
        f"sessions; {reprice['grid_events']} grid events in this scope; at most "
        f"{REPRICE_SESSIONS_MAX} drawn). Line: the rate in force (booked rate from "
        "<code>slot_ledger</code>, then the re-priced rate from its effective time once the "
        "vehicle accepted); open circle: proposal, filled: acceptance. Sessions with the "
        "same rates overlap: earlier ones are drawn wider underneath."
        + _scoped(reprice["scope"], "sessions at the run's stations") + "</p>"),
        reprice_svg(reprice),
        (f"<h2>Rejections</h2><p class='note'>From <code>rejections</code>: {rejections} events "
        "not admitted, by reason code and the topic they arrived on."
        + _scoped(figures["rejections"]["scope"], "rejected between the run's start and finish "
                  "by the wall clock; a rejection carries no run id, so anything else this "
                  "stack rejected in that window counts too") + "</p>"),
        rejections_svg(figures["rejections"]) if rejections else "<p>No rejections.</p>",
        _latency_html(figures["latencies"]),
    ]
    for table in figures["tables"]:
        shown = len(table["rows"])
        more = f" (first {shown} of {table['total_rows']})" if table["total_rows"] > shown else ""
        parts.append(f"<h2>{html.escape(table['title'])}</h2><p class='note'>From <code>"
                     f"{html.escape(table['source'])}</code>{more}."
                     + _scoped(table["scope"], f"rows whose <code>{table['scoped_by']}</code> "
                               "carries the run's prefix") + "</p>"
                     + _table(table["headers"], table["rows"]))
    title = f"chargemesh report {figures['meta']['run_id'] or ''}".strip()
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>"
            f"{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def build_report(settings: Settings, out_dir: Path, run_id: str | None = None) -> Path:
    """Read every figure back from ClickHouse, write ``report-<run>.html`` and ``.json`` into
    ``out_dir``, return the HTML path."""
    figures = collect_figures(settings, run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"report-{_file_safe(figures['meta']['run_id'] or 'all')}"
    html_path, json_path = out_dir / f"{stem}.html", out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(figures, indent=1, default=_json_default) + "\n")
    html_path.write_text(render_html(figures), encoding="utf-8")
    return html_path


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


@click.command()
@click.option("--run-id", default=None, help="Simulation run to report on (default: the latest).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Output directory (default: <state_dir>/reports).")
@click.pass_context
def report(ctx: click.Context, run_id: str | None, out_dir: Path | None) -> None:
    """Write the HTML report (inline SVG plots) and its JSON figures, read from ClickHouse."""
    settings = settings_of(ctx)
    require_clickhouse(settings)
    path = build_report(settings, out_dir or settings.state_dir / "reports", run_id)
    click.echo(f"report: {path}")
    click.echo(f"figures: {path.with_suffix('.json')}")
    click.echo(f"query ClickHouse: {query_command(settings)}")
