"""The HTML report: everything read back from ClickHouse, drawn as inline SVG, one file.

``build_report(settings, out_dir, run_id)`` writes ``report-<run>.html`` (self-contained: no
external JS, CSS or fonts) and ``report-<run>.json`` (the same figures as data) into
``out_dir`` and returns the HTML path. ``chargemesh report [--run-id ID] [--out DIR]`` runs it.

Scope: the simulator's tables (``simulation_runs``, ``simulation_latencies``) are filtered by
run id (default: the latest run in ``simulation_runs``; with none, every latency row). Every
other table carries no run id, so those sections cover the whole database.

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
from clickhouse_driver import Client

from chargemesh.infra import svg_charts as charts
from chargemesh.infra.checks import ensure
from chargemesh.infra.cli import cli, settings_of
from chargemesh.infra.config import Settings
from chargemesh.infra.preflight import require_clickhouse
from chargemesh.sinks.migrate import clickhouse_client

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
HEATMAP_STATIONS_MAX = 40
HEATMAP_HOURS_MAX = 168
REPRICE_SESSIONS_MAX = 8
REPRICE_WINDOW_BEFORE_MS = 30 * MINUTE_MS
REPRICE_WINDOW_AFTER_MS = 60 * MINUTE_MS
REJECTION_REASONS_MAX = 30
LATENCY_ROWS_MAX = 500_000
TABLE_ROWS_MAX = 50
HISTOGRAM_BINS = 30
JsonDict = dict[str, Any]


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


# ---- reading ------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Reader:
    client: Client

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.client.execute(sql, params or {})]

    def scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        found = self.rows(sql, params)
        return found[0][0] if found else None


def _meta(db: _Reader, settings: Settings, run_id: str | None) -> JsonDict:
    if run_id is None:
        run_id = db.scalar("SELECT run_id FROM simulation_runs FINAL "
                           "ORDER BY started_at_ms DESC, run_id LIMIT 1")
    run: JsonDict | None = None
    if run_id is not None:
        found = db.rows("SELECT seed, started_at_ms, finished_at_ms, params_json, summary_json "
                        "FROM simulation_runs FINAL WHERE run_id = %(run)s", {"run": run_id})
        if found:
            seed, started, finished, params, summary = found[0]
            run = {"seed": seed, "started_at_ms": started, "finished_at_ms": finished,
                   "params": _loads(params), "summary": _loads(summary)}
    first, last, events = db.rows("SELECT min(occurred_at_ms), max(occurred_at_ms), count() "
                                  "FROM events FINAL")[0]
    query = query_command(settings)
    return {"run_id": run_id, "run": run, "events": events,
            "first_event_at_ms": first if events else None,
            "last_event_at_ms": last if events else None,
            "generated_at_ms": int(dt.datetime.now(tz=dt.UTC).timestamp() * 1000),
            "query_command": query, "database": settings.clickhouse_database}


def query_command(settings: Settings) -> str:
    """The clickhouse-client command line that opens this deployment's database."""
    host, port = settings.clickhouse_address
    where = "" if settings.clickhouse_embedded else f"--host {host} "
    return f"clickhouse-client {where}--port {port} -d {settings.clickhouse_database}"


def _loads(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {"unparsed": text}


def _utilisation(db: _Reader) -> JsonDict:
    """Reserved share of each station's connector-hours, per UTC hour."""
    connectors = dict(db.rows("SELECT station_id, uniqExact(connector_id) FROM slot_ledger FINAL "
                              "GROUP BY station_id"))
    rows = db.rows("SELECT station_id, toInt64(toUnixTimestamp(hour_start)) * 1000 AS hour_ms, "
                   "sum(reserved_ms), sum(energy_wh) FROM slot_utilisation_hourly "
                   "GROUP BY station_id, hour_ms ORDER BY station_id, hour_ms")
    busy: dict[str, int] = defaultdict(int)
    for station, _, reserved_ms, _ in rows:
        busy[station] += reserved_ms
    stations = sorted(busy, key=lambda s: (-busy[s], s))[:HEATMAP_STATIONS_MAX]
    hours: list[int] = []
    if rows:
        first = min(r[1] for r in rows)
        last = min(max(r[1] for r in rows), first + (HEATMAP_HOURS_MAX - 1) * HOUR_MS)
        hours = list(range(first, last + HOUR_MS, HOUR_MS))
    cells: dict[tuple[str, int], float] = {}
    energy: dict[tuple[str, int], int] = {}
    for station, hour_ms, reserved_ms, energy_wh in rows:
        share = reserved_ms / (HOUR_MS * max(1, connectors.get(station, 1)))
        cells[(station, hour_ms)] = round(100.0 * share, 2)
        energy[(station, hour_ms)] = energy_wh
    return {"stations": stations, "hours_ms": hours,
            "connectors": {s: connectors.get(s, 0) for s in stations},
            "utilisation_percent": [[cells.get((s, h), 0.0) for h in hours] for s in stations],
            "reserved_energy_wh": [[energy.get((s, h), 0) for h in hours] for s in stations],
            "hours_truncated": bool(rows) and max(r[1] for r in rows) > hours[-1]}


def _energy_revenue(db: _Reader) -> JsonDict:
    rows = db.rows("SELECT jurisdiction, currency, sum(settlements), sum(energy_import_wh), "
                   "sum(total_amount) FROM revenue_daily GROUP BY jurisdiction, currency "
                   "ORDER BY jurisdiction, currency")
    by_currency: dict[str, Decimal] = defaultdict(Decimal)
    for _, currency, _, _, amount in rows:
        by_currency[currency] += amount
    return {
        "by_jurisdiction": [{"jurisdiction": j, "currency": c, "settlements": n,
                             "energy_import_wh": wh, "revenue": str(amount)}
                            for j, c, n, wh, amount in rows],
        "revenue_by_currency": {c: str(v) for c, v in sorted(by_currency.items())},
    }


def _reprice(db: _Reader) -> JsonDict:
    """The grid event that re-priced the most sessions, and those sessions' rates around it."""
    busiest = db.rows("SELECT grid_event_id, count() AS sessions, min(proposed_at_ms) "
                      "FROM reprices_current GROUP BY grid_event_id "
                      "ORDER BY sessions DESC, grid_event_id LIMIT 1")
    if not busiest:
        return {"grid_event_id": None, "sessions": [], "grid_events": 0}
    event_id, count, event_at = busiest[0]
    rows = db.rows(
        "SELECT r.session_id, r.station_id, r.effective_from_ms, r.rate_per_kwh, "
        "r.proposed_at_ms, r.accepted, r.accepted_at_ms, s.started_at_ms, s.closed_at_ms, "
        "s.reservation_id FROM (SELECT * FROM reprices_current WHERE grid_event_id = %(g)s) AS r "
        "ANY LEFT JOIN (SELECT station_id, session_id, started_at_ms, closed_at_ms, "
        "reservation_id FROM sessions_current) AS s USING (station_id, session_id) "
        "ORDER BY r.proposed_at_ms, r.session_id LIMIT %(n)s", {"g": event_id,
                                                               "n": REPRICE_SESSIONS_MAX})
    reservations = tuple(r[9] for r in rows) or ("",)
    base = dict(db.rows("SELECT reservation_id, rate_per_kwh FROM slot_ledger FINAL "
                        "WHERE reservation_id IN %(ids)s", {"ids": reservations}))
    currency = dict(db.rows("SELECT session_id, any(currency) FROM settlements FINAL "
                            "WHERE session_id IN %(ids)s GROUP BY session_id",
                            {"ids": tuple(r[0] for r in rows) or ("",)}))
    sessions = [{"session_id": sid, "station_id": st, "effective_from_ms": eff,
                 "proposed_rate_per_kwh": str(rate), "proposed_at_ms": prop,
                 "accepted": bool(acc), "accepted_at_ms": acc_at if acc else None,
                 "base_rate_per_kwh": str(base[res]) if res in base else None,
                 "started_at_ms": start or None, "closed_at_ms": closed or None,
                 "currency": currency.get(sid, "")}
                for sid, st, eff, rate, prop, acc, acc_at, start, closed, res in rows]
    grid_events = db.scalar("SELECT uniqExact(grid_event_id) FROM reprices_current")
    return {"grid_event_id": event_id, "grid_event_at_ms": event_at, "sessions_repriced": count,
            "sessions": sessions, "grid_events": grid_events}


def _rejections(db: _Reader) -> JsonDict:
    rows = db.rows("SELECT reason_code, source_topic, count() FROM rejections FINAL "
                   "GROUP BY reason_code, source_topic ORDER BY reason_code, source_topic")
    return {"by_reason_and_topic": [{"reason_code": r, "source_topic": t, "count": n}
                                    for r, t, n in rows]}


def _latencies(db: _Reader, run_id: str | None) -> JsonDict:
    where, params = ("WHERE run_id = %(run)s", {"run": run_id}) if run_id else ("", {})
    stats = db.rows("SELECT kind, count(), quantileExact(0.5)(latency_ms), "
                    f"quantileExact(0.99)(latency_ms), max(latency_ms) "
                    f"FROM simulation_latencies FINAL {where} GROUP BY kind ORDER BY kind",
                    params)
    values: dict[str, list[float]] = defaultdict(list)
    for kind, latency in db.rows(f"SELECT kind, latency_ms FROM simulation_latencies FINAL "
                                 f"{where} LIMIT {LATENCY_ROWS_MAX}", params):
        values[kind].append(float(latency))
    return {"scope": f"run {run_id}" if run_id else "all runs",
            "kinds": [{"kind": k, "count": n, "p50_ms": p50, "p99_ms": p99, "max_ms": top,
                       "values_ms": values.get(k, [])} for k, n, p50, p99, top in stats]}


# ---- compact tables -----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TableSpec:
    key: str
    title: str
    source: str
    headers: tuple[str, ...]
    sql: str
    cells: Callable[[tuple[Any, ...]], list[str]]


def _s(value: Any) -> str:
    return str(value)


TABLES: tuple[TableSpec, ...] = (
    TableSpec("settlements_status", "Settlements by status and currency", "settlements_status",
              ("status", "currency", "settlements", "total", "oldest pending age (s)"),
              "SELECT status, currency, count(), sum(total_amount), "
              "maxIf(pending_age_ms, status = 'PENDING') FROM settlements_status "
              "GROUP BY status, currency ORDER BY status, currency",
              lambda r: [r[0], r[1], _s(r[2]), money(r[3], r[1]),
                         _s(r[4] // 1000) if r[0] == "PENDING" else "–"]),
    TableSpec("disputes", "Disputes", "disputes_current",
              ("dispute", "station", "session", "kind", "status", "outcome", "evidence",
               "adjustment"),
              "SELECT dispute_id, station_id, session_id, kind, status, outcome, evidence_count, "
              "adjustment_total, currency FROM disputes_current ORDER BY opened_at_ms, dispute_id",
              lambda r: [*map(_s, r[:7]), money(r[7], r[8]) if r[8] else "–"]),
    TableSpec("credential_reevaluations", "Revocation re-evaluations",
              "credential_reevaluations",
              ("revoked credential", "subject kind", "outcome", "count"),
              "SELECT revoked_credential_id, subject_kind, outcome, count() "
              "FROM credential_reevaluations FINAL GROUP BY revoked_credential_id, subject_kind, "
              "outcome ORDER BY revoked_credential_id, subject_kind, outcome",
              lambda r: list(map(_s, r))),
    TableSpec("v2g_settlements", "E3 V2G settlements", "v2g_settlements",
              ("settlement", "station", "import (kWh)", "export (kWh)", "import charge",
               "export credit", "clearing price (per kWh)", "net"),
              "SELECT settlement_id, station_id, energy_import_wh, energy_export_wh, "
              "import_amount, export_credit, clearing_price_per_kwh, total_amount, currency "
              "FROM v2g_settlements ORDER BY admitted_at_ms, settlement_id",
              lambda r: [r[0], r[1], kwh(r[2]), kwh(r[3]), money(r[4], r[8]),
                         money(r[5], r[8]), money(r[6], r[8]), money(r[7], r[8])]),
    TableSpec("fleet_esg_monthly", "E4 fleet depots (ESG, monthly)", "fleet_esg_monthly",
              ("fleet", "site", "month", "sessions", "final", "import (kWh)", "renewable (kWh)",
               "renewable share (%)", "internal amount"),
              "SELECT fleet_id, site_id, month, sessions, final_sessions, energy_import_wh, "
              "renewable_wh, renewable_share, internal_amount, currency FROM fleet_esg_monthly "
              "ORDER BY fleet_id, site_id, month",
              lambda r: [r[0], r[1], r[2], _s(r[3]), _s(r[4]), kwh(r[5]), kwh(r[6]),
                         f"{100 * float(r[7]):.1f}", money(r[8], r[9])]),
    TableSpec("pack_history", "E2 battery packs", "pack_history_valid",
              ("pack", "action", "station", "vehicle credential", "chemistry",
               "state of health (‰)", "charge (kWh)", "at"),
              "SELECT pack_id, action, station_id, vehicle_credential_id, chemistry, "
              "state_of_health_permille, charge_wh, at_ms FROM pack_history_valid "
              "ORDER BY pack_id, at_ms, action",
              lambda r: [*map(_s, r[:6]), kwh(r[6]), utc(r[7])]),
    TableSpec("wireless_trips", "E1 wireless road trips", "wireless_trips",
              ("trip", "road operator", "segments", "passes accepted", "passes refused",
               "energy (kWh)", "total", "closed because"),
              "SELECT trip_id, road_operator_id, segments, passes_accepted, passes_refused, "
              "energy_wh, total_amount, currency, close_reason FROM wireless_trips FINAL "
              "ORDER BY closed_at_ms, trip_id",
              lambda r: [*map(_s, r[:5]), kwh(r[5]), money(r[6], r[7]), r[8]]),
    TableSpec("mobile_station_locations", "E5 mobile charger locations",
              "mobile_station_locations_valid",
              ("station", "jurisdiction", "latitude (°)", "longitude (°)", "tariff",
               "posted rate (per kWh)", "relocated at"),
              "SELECT station_id, jurisdiction, latitude_microdeg, longitude_microdeg, tariff_id, "
              "posted_rate_per_kwh, relocated_at_ms FROM mobile_station_locations_valid "
              "ORDER BY relocated_at_ms, station_id",
              lambda r: [r[0], r[1], f"{r[2] / 1e6:.6f}", f"{r[3] / 1e6:.6f}", r[4],
                         _s(r[5]), utc(r[6])]),
)


def _tables(db: _Reader) -> list[JsonDict]:
    """Each compact table that has rows (at most TABLE_ROWS_MAX shown, with the total)."""
    out = []
    for spec in TABLES:
        total = db.scalar(f"SELECT count() FROM ({spec.sql})")
        if not total:
            continue
        rows = db.rows(f"{spec.sql} LIMIT {TABLE_ROWS_MAX}")
        out.append({"key": spec.key, "title": spec.title, "source": spec.source,
                    "headers": list(spec.headers), "rows": [spec.cells(r) for r in rows],
                    "total_rows": total})
    return out


def collect_figures(settings: Settings, run_id: str | None = None) -> JsonDict:
    """Every figure of the report, as JSON-ready data (money as Decimal strings)."""
    client = clickhouse_client(settings)
    try:
        db = _Reader(client)
        meta = _meta(db, settings, run_id)
        return {"meta": meta, "utilisation": _utilisation(db),
                "energy_revenue": _energy_revenue(db), "reprice": _reprice(db),
                "rejections": _rejections(db), "latencies": _latencies(db, meta["run_id"]),
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
    run = meta["run"]
    items = [("run id", meta["run_id"] or "(no simulation run recorded)")]
    if run:
        items += [("seed", str(run["seed"])),
                  ("parameters", json.dumps(run["params"], sort_keys=True)),
                  ("run time", f"{utc(run['started_at_ms'])} – {utc(run['finished_at_ms'])}")]
    if meta["events"]:
        items.append(("events in ClickHouse", (f"{meta['events']} admitted, "
                      f"{utc(meta['first_event_at_ms'])} – {utc(meta['last_event_at_ms'])}")))
    items.append(("generated", utc(meta["generated_at_ms"])))
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)
    return (f"<h1>chargemesh report</h1><dl>{rows}</dl>"
            f"<p class='note'>Query ClickHouse directly: <code>{html.escape(meta['query_command'])}"
            f"</code>, e.g. <code>SELECT * FROM revenue_daily</code> or <code>SELECT * FROM "
            f"simulation_latencies FINAL WHERE run_id = '…'</code>. Scope: latencies and the run "
            f"header are filtered by run id; every other section covers the whole database "
            f"<code>{html.escape(meta['database'])}</code> (those tables carry no run id).</p>")


def _energy_html(fig: JsonDict) -> str:
    rows = [[r["jurisdiction"], r["currency"], str(r["settlements"]),
             kwh(r["energy_import_wh"]), money(Decimal(r["revenue"]), r["currency"])]
            for r in fig["by_jurisdiction"]]
    totals = [[c, money(Decimal(v), c)] for c, v in fig["revenue_by_currency"].items()]
    charts_html = "".join([energy_svg(fig), *revenue_svgs(fig)])
    return ("<h2>Energy and revenue by jurisdiction and currency</h2>"
            "<p class='note'>From <code>revenue_daily</code> (admitted settlements, FINAL or "
            "PENDING, corrections counted with their own sign; internal fleet accounting "
            "excluded). Amounts are per currency, never added across currencies.</p>"
            f"<div class='row'>{charts_html}</div><div class='row'><div>"
            + _table(["jurisdiction", "currency", "settlements", "energy (kWh)", "revenue"], rows)
            + "</div><div>" + _table(["currency", "total revenue"], totals)
            + "</div></div>")


def _latency_html(fig: JsonDict) -> str:
    kinds = fig["kinds"]
    out = [f"<h2>Latencies ({html.escape(fig['scope'])})</h2>",
           ("<p class='note'>From <code>simulation_latencies</code>, measured by the simulator's "
           "participants (request published → decision consumed). Percentiles are ClickHouse's "
           "<code>quantileExact</code>.</p>")]
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
        f"at most {HEATMAP_HOURS_MAX} hours.</p>"), utilisation_svg(util),
        _energy_html(figures["energy_revenue"]),
        ("<h2>Re-pricing timeline</h2><p class='note'>From <code>reprices_current</code>: the "
        f"grid event that re-priced the most sessions ({reprice.get('sessions_repriced', 0)} "
        f"sessions; {reprice['grid_events']} grid events in all; at most "
        f"{REPRICE_SESSIONS_MAX} drawn). Line: the rate in force (booked rate from "
        "<code>slot_ledger</code>, then the re-priced rate from its effective time once the "
        "vehicle accepted); open circle: proposal, filled: acceptance. Sessions with the "
        "same rates overlap: earlier ones are drawn wider underneath.</p>"),
        reprice_svg(reprice),
        (f"<h2>Rejections</h2><p class='note'>From <code>rejections</code>: {rejections} events "
        "not admitted, by reason code and the topic they arrived on.</p>"),
        rejections_svg(figures["rejections"]) if rejections else "<p>No rejections.</p>",
        _latency_html(figures["latencies"]),
    ]
    for table in figures["tables"]:
        shown = len(table["rows"])
        more = f" (first {shown} of {table['total_rows']})" if table["total_rows"] > shown else ""
        parts.append(f"<h2>{html.escape(table['title'])}</h2><p class='note'>From <code>"
                     f"{html.escape(table['source'])}</code>{more}.</p>"
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


@cli.command()
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
