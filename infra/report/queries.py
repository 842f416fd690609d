"""What the HTML report reads from ClickHouse, scoped to one simulation run where it can be.

A run of ``chargemesh simulate`` writes no run id into the market's tables, but every
identifier it creates carries its prefix (``SimConfig.prefix``, ``s<seed><tag>``: ``s11`` the
first time a seed runs in a state folder, ``s11r1`` the second): stations ``s11-dcfast-7``,
sessions ``session:s11-o5``, settlements ``stl:session:s11-o5``, trips ``trip:s11-0``, road
operators ``road-operator:s11``, packs ``s11-pack-...``, credentials ``vehicle:s11-car-3`` or
``authority:s11:root``. :class:`Scope` matches the prefix as a whole token (at the start or
after ``:``, followed by ``-``, ``:`` or the end), so ``s1`` never matches ``s17-`` nor
``s1r1-``. Rejections are the run's by its wall-clock window (``simulation_runs``'
``started_at_ms`` to ``finished_at_ms``); latencies by run id.

With no run recorded (say after ``chargemesh demo`` only), or a run recorded without a prefix,
the scope is cumulative: every row of the database, i.e. every run in the state folder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections import defaultdict
from decimal import Decimal
from typing import Any

from chargemesh.infra.config import Settings
from chargemesh.infra.sim.plan import SimConfig
from chargemesh.units import HOUR_MS
from clickhouse_driver import Client

HEATMAP_STATIONS_MAX = 40
HEATMAP_HOURS_MAX = 168
REPRICE_SESSIONS_MAX = 8
LATENCY_ROWS_MAX = 500_000
CUMULATIVE = "cumulative"
JsonDict = dict[str, Any]


class UnknownRunError(LookupError):
    """The report was asked for a run id that ``simulation_runs`` does not hold."""


@dataclasses.dataclass(frozen=True)
class Scope:
    """Which rows a section reads: one run's (``prefix`` set) or every row (cumulative)."""

    run_id: str | None = None
    prefix: str = ""
    started_at_ms: int = 0
    finished_at_ms: int = 0
    reason: str = ""  # why the scope is cumulative, if it is

    @property
    def scoped(self) -> bool:
        return bool(self.prefix)

    @property
    def label(self) -> str:
        return f"run {self.run_id}" if self.scoped else CUMULATIVE

    @property
    def id_pattern(self) -> str:
        """The re2 pattern an identifier of this run matches (``match(id, pattern)``)."""
        return f"(^|:){re.escape(self.prefix)}([-:]|$)"

    @property
    def params(self) -> dict[str, Any]:
        return {"scope_ids": self.id_pattern, "scope_from_ms": self.started_at_ms,
                "scope_until_ms": self.finished_at_ms}

    def ids_in(self, *columns: str) -> str:
        """SQL: one of ``columns`` carries the run's prefix (always true when cumulative)."""
        if not self.scoped:
            return "1"
        return "(" + " OR ".join(f"match({c}, %(scope_ids)s)" for c in columns) + ")"

    def rejected_in_run(self) -> str:
        """SQL: a ``rejections`` row was written while the run ran (always true if cumulative)."""
        if not self.scoped:
            return "1"
        return "rejected_at_ms BETWEEN %(scope_from_ms)s AND %(scope_until_ms)s"


@dataclasses.dataclass
class Reader:
    client: Client
    scope: Scope = dataclasses.field(default_factory=Scope)

    def rows(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of ``sql``; the scope's parameters are always bound."""
        bound = dict(self.scope.params, **(params or {}))
        return [tuple(r) for r in self.client.execute(sql, bound)]

    def scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        found = self.rows(sql, params)
        return found[0][0] if found else None


def _loads(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {"unparsed": text}


def run_prefix(params: JsonDict, summary: JsonDict) -> str:
    """The id prefix a recorded run used: from its summary, else from its seed and tag."""
    prefix = summary.get("prefix") if isinstance(summary, dict) else None
    if isinstance(prefix, str) and prefix:
        return prefix
    seed = params.get("seed") if isinstance(params, dict) else None
    if isinstance(seed, int):
        return str(SimConfig(seed=seed, tag=str(params.get("tag") or "")).prefix)
    return ""


def resolve_run(db: Reader, run_id: str | None) -> tuple[Scope, JsonDict | None]:
    """The run to report on (``run_id``, else the latest recorded) and the scope it gives."""
    if run_id is None:
        run_id = db.scalar("SELECT run_id FROM simulation_runs FINAL "
                           "ORDER BY started_at_ms DESC, run_id LIMIT 1")
        if run_id is None:
            return Scope(reason="no simulation run is recorded in this database "
                                "(say after `chargemesh demo` only)"), None
    found = db.rows("SELECT seed, started_at_ms, finished_at_ms, params_json, summary_json "
                    "FROM simulation_runs FINAL WHERE run_id = %(run)s", {"run": run_id})
    if not found:
        known = [r for (r,) in db.rows("SELECT run_id FROM simulation_runs FINAL "
                                       "ORDER BY started_at_ms DESC LIMIT 5")]
        raise UnknownRunError(f"no simulation run {run_id!r} in simulation_runs; latest: "
                              + (", ".join(known) or "none"))
    seed, started, finished, params, summary = found[0]
    run = {"seed": seed, "started_at_ms": started, "finished_at_ms": finished,
           "params": _loads(params), "summary": _loads(summary)}
    prefix = run_prefix(run["params"], run["summary"])
    reason = "" if prefix else f"run {run_id} recorded no id prefix"
    return Scope(run_id, prefix, started, finished, reason), run


def meta(db: Reader, settings: Settings, run: JsonDict | None) -> JsonDict:
    """The header: the run, its scope, and the admitted events it covers."""
    scope = db.scope
    # Processor events (decisions, settlements) are signed by the processor but keyed by the
    # run's stations or sessions; revocation routing records name the revoked credential.
    mine = scope.ids_in("author_credential_id", "subject_key",
                        "visitParamExtractString(payload_json, 'revoked_credential_id')")
    first, last, events = db.rows("SELECT min(occurred_at_ms), max(occurred_at_ms), count() "
                                  f"FROM events FINAL WHERE {mine}")[0]
    total = db.scalar("SELECT count() FROM events FINAL") if scope.scoped else events
    return {"run_id": scope.run_id, "run": run, "scope": scope.label,
            "id_prefix": scope.prefix or None,
            "id_pattern": scope.id_pattern if scope.scoped else None,
            "cumulative_reason": scope.reason or None, "events": events,
            "events_in_database": total,
            "first_event_at_ms": first if events else None,
            "last_event_at_ms": last if events else None,
            "generated_at_ms": int(dt.datetime.now(tz=dt.UTC).timestamp() * 1000),
            "query_command": query_command(settings), "database": settings.clickhouse_database}


def query_command(settings: Settings) -> str:
    """The clickhouse-client command line that opens this deployment's database."""
    host, port = settings.clickhouse_address
    where = "" if settings.clickhouse_embedded else f"--host {host} "
    return f"clickhouse-client {where}--port {port} -d {settings.clickhouse_database}"


def utilisation(db: Reader) -> JsonDict:
    """Reserved share of each station's connector-hours, per UTC hour (the run's stations)."""
    mine = db.scope.ids_in("station_id")
    connectors = dict(db.rows("SELECT station_id, uniqExact(connector_id) FROM slot_ledger FINAL "
                              f"WHERE {mine} GROUP BY station_id"))
    rows = db.rows("SELECT station_id, toInt64(toUnixTimestamp(hour_start)) * 1000 AS hour_ms, "
                   f"sum(reserved_ms), sum(energy_wh) FROM slot_utilisation_hourly WHERE {mine} "
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
    return {"scope": db.scope.label, "stations": stations, "hours_ms": hours,
            "connectors": {s: connectors.get(s, 0) for s in stations},
            "utilisation_percent": [[cells.get((s, h), 0.0) for h in hours] for s in stations],
            "reserved_energy_wh": [[energy.get((s, h), 0) for h in hours] for s in stations],
            "hours_truncated": bool(rows) and max(r[1] for r in rows) > hours[-1]}


def energy_revenue(db: Reader) -> JsonDict:
    """``revenue_daily`` per jurisdiction and currency; a run's by its stations (a wireless
    trip settles under its road operator, ``road-operator:<prefix>``, which matches too)."""
    rows = db.rows("SELECT jurisdiction, currency, sum(settlements), sum(energy_import_wh), "
                   f"sum(total_amount) FROM revenue_daily WHERE {db.scope.ids_in('station_id')} "
                   "GROUP BY jurisdiction, currency ORDER BY jurisdiction, currency")
    by_currency: dict[str, Decimal] = defaultdict(Decimal)
    for _, currency, _, _, amount in rows:
        by_currency[currency] += amount
    return {
        "scope": db.scope.label,
        "by_jurisdiction": [{"jurisdiction": j, "currency": c, "settlements": n,
                             "energy_import_wh": wh, "revenue": str(amount)}
                            for j, c, n, wh, amount in rows],
        "revenue_by_currency": {c: str(v) for c, v in sorted(by_currency.items())},
    }


def reprice(db: Reader) -> JsonDict:
    """The grid event that re-priced the most sessions (at the run's stations), and those
    sessions' rates around it."""
    mine = db.scope.ids_in("station_id")
    busiest = db.rows("SELECT grid_event_id, count() AS sessions, min(proposed_at_ms) "
                      f"FROM reprices_current WHERE {mine} GROUP BY grid_event_id "
                      "ORDER BY sessions DESC, grid_event_id LIMIT 1")
    if not busiest:
        return {"scope": db.scope.label, "grid_event_id": None, "sessions": [],
                "grid_events": 0}
    event_id, count, event_at = busiest[0]
    rows = db.rows(
        "SELECT r.session_id, r.station_id, r.effective_from_ms, r.rate_per_kwh, "
        "r.proposed_at_ms, r.accepted, r.accepted_at_ms, s.started_at_ms, s.closed_at_ms, "
        "s.reservation_id FROM (SELECT * FROM reprices_current WHERE grid_event_id = %(g)s "
        f"AND {mine}) AS r ANY LEFT JOIN (SELECT station_id, session_id, started_at_ms, "
        "closed_at_ms, reservation_id FROM sessions_current) AS s USING (station_id, session_id) "
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
    grid_events = db.scalar(f"SELECT uniqExact(grid_event_id) FROM reprices_current "
                            f"WHERE {mine}")
    return {"scope": db.scope.label, "grid_event_id": event_id, "grid_event_at_ms": event_at,
            "sessions_repriced": count, "sessions": sessions, "grid_events": grid_events}


def rejections(db: Reader) -> JsonDict:
    """Rejections by reason and topic; a run's are those written while it ran."""
    rows = db.rows("SELECT reason_code, source_topic, count() FROM rejections FINAL "
                   f"WHERE {db.scope.rejected_in_run()} GROUP BY reason_code, source_topic "
                   "ORDER BY reason_code, source_topic")
    return {"scope": db.scope.label,
            "by_reason_and_topic": [{"reason_code": r, "source_topic": t, "count": n}
                                    for r, t, n in rows]}


def latencies(db: Reader) -> JsonDict:
    """Latencies of the run (by run id, even when its ids carry no prefix), else of all."""
    run_id = db.scope.run_id
    where, params = ("WHERE run_id = %(run)s", {"run": run_id}) if run_id else ("", {})
    stats = db.rows("SELECT kind, count(), quantileExact(0.5)(latency_ms), "
                    f"quantileExact(0.99)(latency_ms), max(latency_ms) "
                    f"FROM simulation_latencies FINAL {where} GROUP BY kind ORDER BY kind",
                    params)
    values: dict[str, list[float]] = defaultdict(list)
    for kind, latency in db.rows(f"SELECT kind, latency_ms FROM simulation_latencies FINAL "
                                 f"{where} LIMIT {LATENCY_ROWS_MAX}", params):
        values[kind].append(float(latency))
    return {"scope": f"run {run_id}" if run_id else CUMULATIVE,
            "kinds": [{"kind": k, "count": n, "p50_ms": p50, "p99_ms": p99, "max_ms": top,
                       "values_ms": values.get(k, [])} for k, n, p50, p99, top in stats]}


# ---- issue 16: the market rules in the day ------------------------------------------------------

def _hhmm(column: str) -> str:
    return f"substring(toString(toDateTime(intDiv({column}, 1000), 'UTC')), 1, 16)"


def _field(name: str) -> str:
    """A payload field of ``events.payload_json`` as text (a decimal may be a JSON string)."""
    return f"replaceAll(visitParamExtractRaw(payload_json, '{name}'), '\"', '')"


# One row per rule the day exercised: (rule, subject, detail, at_ms), from tables that hold them:
# the grid's price windows and curtailments and the tariff versions (``events``), the sessions
# limited (``power_limits``), the sessions stopped for an unanswered re-price
# (``session_lifecycle``), the expiries (``settlement_expiries``) and the reversals
# (``settlements`` kind REVERSAL). ``{scope}`` is the run's condition on ``subject``.
MARKET_RULES_SQL = (
    "SELECT rule, subject, detail, at_ms FROM ("
    "SELECT 'price window' AS rule, " + _field("grid_event_id") + " AS subject, concat('zone ', "
    + _field("grid_zone_id") + ", ': ', " + _field("rate_per_kwh") + ", ' per kWh from ', "
    + _hhmm("toInt64(" + _field("from_at_ms") + ")") + ", ' until ', "
    + _hhmm("toInt64(" + _field("until_at_ms") + ")") + ") AS detail, toInt64("
    + _field("from_at_ms") + ") AS at_ms FROM events FINAL WHERE event_type = "
    "'chargemesh.grid.v1.GridEventDeclared' AND " + _field("kind") + " = 'PRICE_SIGNAL' "
    "UNION ALL SELECT 'curtailment (no observers)', " + _field("grid_event_id") + ", concat("
    "'zone ', " + _field("grid_zone_id") + ", ': ', " + _field("kind") + ", ' to ', "
    + _field("capacity_limit_w") + ", ' W from ', " + _hhmm("toInt64(" + _field("from_at_ms")
    + ")") + ", ' until ', " + _hhmm("toInt64(" + _field("until_at_ms") + ")") + "), toInt64("
    + _field("from_at_ms") + ") FROM events FINAL WHERE event_type = "
    "'chargemesh.grid.v1.GridEventDeclared' AND " + _field("kind")
    + " IN ('CURTAILMENT', 'CAPACITY_LIMIT') "
    "UNION ALL SELECT 'sessions power-limited', grid_event_id, concat(toString(uniqExact("
    "session_id)), ' sessions limited (PowerLimitSet), lowest limit ', toString(min("
    "power_limit_w)), ' W'), "
    "min(effective_from_ms) FROM power_limits FINAL GROUP BY grid_event_id "
    "UNION ALL SELECT 'tariff version', " + _field("tariff_id") + ", concat('in force from ', "
    + _hhmm("toInt64(" + _field("effective_from_ms") + ")") + ", ', ceiling ', "
    + _field("energy_rate_ceiling_per_kwh") + ", ' ', " + _field("currency") + ", ' per kWh'), "
    "toInt64(" + _field("effective_from_ms") + ") FROM events FINAL WHERE event_type = "
    "'chargemesh.governance.v1.TariffFiled' AND toInt64OrZero(" + _field("effective_from_ms")
    + ") > 0 "
    "UNION ALL SELECT 'unanswered re-price', session_id, concat('stopped at ', "
    + _hhmm("stopped_at_ms") + ", ' (', stop_reason, ': no answer by the deadline)'), "
    "stopped_at_ms FROM session_lifecycle FINAL WHERE stage = 'STOPPED' AND stop_reason = "
    "'REPRICE_REFUSED' "
    "UNION ALL SELECT 'settlement expired', settlement_id, concat('closed ', "
    + _hhmm("closed_at_ms") + ", ', expired ', " + _hhmm("expired_at_ms") + ", ', missing ', "
    "arrayStringConcat(missing_signer_ids, ', ')), expired_at_ms FROM settlement_expiries FINAL "
    "UNION ALL SELECT 'settlement reversed', settlement_id, concat('voids ', "
    "adjusts_settlement_id, ': ', toString(total_amount), ' ', currency), admitted_at_ms "
    "FROM settlements FINAL WHERE kind = 'REVERSAL'"
    ") WHERE {scope} ORDER BY at_ms, rule, subject")
