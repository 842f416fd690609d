"""The main job: a small scripted marketplace day on the embedded stack, end to end.

``chargemesh demo`` brings the stack up, starts a processor worker and the ClickHouse sink,
credentials a small world (two jurisdictions with their own rate authorities, currencies and
taxes; stations with metered connectors; vehicles; a grid operator running a demand-response
program), drives reservations, walk-ups, charging sessions, a grid price spike with re-pricing
and settlements, then prints what ClickHouse holds and shuts everything down.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from decimal import Decimal
from typing import Any, Callable

from chargemesh.infra.config import Settings
from chargemesh.infra.stack.bootstrap import Deployment, deploy
from chargemesh.infra.stack.embedded import EmbeddedStack
from chargemesh.infra.stack.worker import Record, TopicReader, WorkerProcess
from chargemesh.sinks.clickhouse_sink import ClickHouseSink
from chargemesh.sinks.migrate import clickhouse_client
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import Participant
from chargemesh.streams.topics import DECISIONS, SETTLEMENTS
from chargemesh.units import HOUR_MS, MINUTE_MS

SLOT_MS = 15 * MINUTE_MS
WAIT_S_MAX = 90.0
SINK_STOP_S_MAX = 30.0
Say = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Jurisdiction:
    code: str
    currency: str
    authority_name: str
    posted: str
    ceiling: str
    tax_percent: str
    congestion: str
    renewable: str
    rounding: str
    grid_zone: str


JURISDICTIONS = (
    Jurisdiction("US-CA", "USD", "California utility commission", "0.42", "0.80", "7.25",
                 "0.02", "0.015", "HALF_UP", "caiso-sfbay"),
    Jurisdiction("DE-BY", "EUR", "Bundesnetzagentur (Bayern)", "0.49", "0.89", "19", "0",
                 "0.01", "HALF_EVEN", "tennet-by"),
)


@dataclasses.dataclass
class Station:
    participant: Participant
    jurisdiction: Jurisdiction
    authority_id: str
    meters: dict[str, Participant]


@dataclasses.dataclass
class Drive:
    """One vehicle's visit: booking, handshake, readings, close-out."""

    vehicle: Participant
    station: Station
    connector_id: str
    start_ms: int
    kind: str  # "posted" | "walk_up"
    energy_wh: int
    power_w: int
    session_id: str = ""
    readings: list[tuple[int, int]] = dataclasses.field(default_factory=list)


class Demo:
    def __init__(self, settings: Settings, say: Say) -> None:
        self.settings, self.say = settings, say
        # Every identifier of this run carries its tag ("" the first time in a state folder,
        # then "-r1", "-r2", ...), so a demo after a demo or a simulation on the same broker
        # never collides with earlier ids, and waits only for its own decisions.
        self.tag = next_demo_tag(settings)
        now = int(time.time() * 1000)
        self.day_ms = (now // HOUR_MS) * HOUR_MS
        self.dep: Deployment = deploy(settings, [j.code for j in JURISDICTIONS],
                                      at_ms=self.day_ms - HOUR_MS)
        self.authorities: dict[str, Participant] = {}
        self.stations: list[Station] = []
        self.vehicles: dict[str, list[Participant]] = {}
        self.operator: Participant | None = None
        self.conns: dict[str, list[tuple[str, int, str]]] = {}
        self._reservation_of: dict[str, str] = {}
        self.base_name: dict[str, str] = {}
        self.decisions = TopicReader(settings, DECISIONS.name)
        self.settlements = TopicReader(settings, SETTLEMENTS.name)

    def zone(self, j: Jurisdiction) -> str:
        return j.grid_zone + self.tag

    # ---- the world -----------------------------------------------------------------------------

    def credential_world(self) -> None:
        dep, at = self.dep, self.day_ms - HOUR_MS
        gov: list[SignedEvent] = []
        for j in JURISDICTIONS:
            authority = dep.root if j is JURISDICTIONS[0] else dep.participant(
                f"authority:{j.code.lower()}")
            if authority is not dep.root:
                gov.append(dep.root.recognise_authority(authority, j.code,
                                                        ["AUTHORITY", "RATE_AUTHORITY"], at_ms=at))
                # P1: the deployment's vehicles are credentialed under the root; charging at a
                # station filing under this authority is roaming, admitted by reciprocity.
                gov.append(sdk.reciprocity_agreed(dep.root, authority,
                                                  agreement_id=f"reciprocity:{j.code}", at_ms=at))
            self.authorities[j.code] = authority
            gov.append(sdk.tariff_filed(
                authority, tariff_id=f"tariff:{j.code}{self.tag}", jurisdiction=j.code, currency=j.currency,
                ceiling_per_kwh=j.ceiling, rounding=j.rounding, tax_percent=j.tax_percent,
                congestion_fee_per_kwh=j.congestion, renewable_adder_per_kwh=j.renewable,
                at_ms=at))
            gov.append(sdk.rules_published(authority, rules_version=f"rules:{j.code}{self.tag}:1",
                                           jurisdiction=j.code, at_ms=at))
        operator = dep.participant(f"grid-op:caiso{self.tag}")
        self.operator = operator
        gov.append(dep.issuer.issue_credential(operator, ["GRID_OPERATOR"], "US-CA", attributes={
            "grid_zones": self.zone(JURISDICTIONS[0])}, at_ms=at))
        gov.append(sdk.grid_program(operator, grid_zone_id=self.zone(JURISDICTIONS[0]),
                                    program="DEMAND_RESPONSE",
                                    operator_ids=[operator.credential_id], at_ms=at))
        gov += self._stations_and_vehicles(at)
        dep.publish(gov)
        self.say(f"credentialed {len(self.stations)} stations, "
                 f"{sum(map(len, self.vehicles.values()))} vehicles, 1 grid operator "
                 f"under {len(JURISDICTIONS)} rate authorities")

    def _stations_and_vehicles(self, at: int) -> list[SignedEvent]:
        gov: list[SignedEvent] = []
        layout = [("US-CA", "sf-mission", [("c1", 150_000, "DC_FAST"), ("c2", 11_000, "AC_L2")]),
                  ("US-CA", "oakland-port", [("c1", 1_000_000, "MCS")]),
                  ("DE-BY", "muenchen-ost", [("c1", 300_000, "DC_FAST"), ("c2", 22_000, "AC_L2")])]
        for code, base, conns in layout:
            name = base + self.tag
            self.base_name[name] = base
            j = next(x for x in JURISDICTIONS if x.code == code)
            participant, issued = self.dep.credential(f"station:{name}", ["STATION"], code,
                                                      subject_id=name, at_ms=at)
            gov.append(issued)
            meters = {}
            for cid, _, _ in conns:
                meters[cid], issued = self.dep.credential(f"meter:{name}:{cid}", ["METER"], code,
                                                          at_ms=at)
                gov.append(issued)
            self.stations.append(Station(participant, j, self.authorities[code].credential_id,
                                         meters))
            self.conns[name] = conns
        for j in JURISDICTIONS:
            self.vehicles[j.code] = []
            for i in range(3):
                vid = f"{j.code.lower()}-ev-{i}{self.tag}"
                vehicle, issued = self.dep.credential(f"vehicle:{vid}", ["VEHICLE"], j.code,
                                                      subject_id=vid, at_ms=at)
                self.vehicles[j.code].append(vehicle)
                gov.append(issued)
        return gov

    def publish_calendars(self) -> None:
        events = []
        for st in self.stations:
            j = st.jurisdiction
            connectors = [sdk.connector(cid, power, kind, st.meters[cid].credential_id)
                          for cid, power, kind in self.conns[st.participant.subject_id]]
            events.append(sdk.calendar_published(
                st.participant, rate_authority_id=st.authority_id, jurisdiction=j.code,
                tariff_id=f"tariff:{j.code}{self.tag}",
                rules_version=f"rules:{j.code}{self.tag}:1",
                connectors=connectors, slot_duration_ms=SLOT_MS, horizon_start_ms=self.day_ms,
                horizon_end_ms=self.day_ms + 24 * HOUR_MS, posted_rate_per_kwh=j.posted,
                currency=j.currency, grid_zone_id=self.zone(j), at_ms=self.day_ms))
        self.dep.publish(events)
        self.say(f"published {len(events)} slot calendars (15-minute slots, 24 h)")

    # ---- the day -------------------------------------------------------------------------------

    def plan(self) -> list[Drive]:
        by_name = {self.base_name[st.participant.subject_id]: st for st in self.stations}
        ca, de = self.vehicles["US-CA"], self.vehicles["DE-BY"]
        start = self.day_ms + HOUR_MS
        return [
            Drive(ca[0], by_name["sf-mission"], "c1", start, "posted", 40_000, 120_000),
            Drive(ca[1], by_name["sf-mission"], "c2", start, "posted", 9_000, 10_000),
            Drive(ca[2], by_name["oakland-port"], "c1", start, "posted", 320_000, 900_000),
            Drive(de[0], by_name["muenchen-ost"], "c1", start + 5 * MINUTE_MS, "walk_up",
                  30_000, 150_000),
            Drive(de[1], by_name["muenchen-ost"], "c2", start, "posted", 12_000, 20_000),
        ]

    def book(self, drives: list[Drive]) -> None:
        orders = []
        for i, d in enumerate(drives):
            if d.kind != "posted":
                continue
            orders.append(self._order(d, f"demo{self.tag}-order-{i}", self.day_ms + 10 * MINUTE_MS))
        self.dep.publish(orders)
        reserved = self._await(self.decisions, lambda r: _short(r) == "SlotReserved",
                               len(orders), "reservations")
        self.say(f"{len(reserved)} reservations on the slot ledgers (posted-price acceptances)")
        walk_ups = [d for d in drives if d.kind == "walk_up"]
        beats = [sdk.heartbeat(d.station.participant, d.start_ms) for d in walk_ups]
        self.dep.publish(beats + [self._order(d, f"demo{self.tag}-walkup-{i}", d.start_ms)
                                  for i, d in enumerate(walk_ups)])
        self._await(self.decisions, lambda r: _short(r) == "SlotReserved"
                    and r.payload()["walk_up"], len(walk_ups), "walk-up authorisations")
        self.say(f"{len(walk_ups)} walk-up authorised on arrival")

    def _order(self, d: Drive, order_id: str, at_ms: int) -> SignedEvent:
        ident = sdk.identity(station_id=d.station.participant.subject_id, vehicle=d.vehicle,
                             rate_authority_id=d.station.authority_id,
                             jurisdiction=d.station.jurisdiction.code, connector_id=d.connector_id)
        slots = -(-d.energy_wh * HOUR_MS // (d.power_w * SLOT_MS))
        terms = sdk.claim(energy_wh=d.energy_wh, start_ms=d.start_ms,
                          stop_ms=d.start_ms + max(1, slots + 1) * SLOT_MS,
                          ceiling_rate_per_kwh=d.station.jurisdiction.ceiling,
                          currency=d.station.jurisdiction.currency)
        d.session_id = f"session:{order_id}"
        self._reservation_of[d.session_id] = f"res:{order_id}"
        return sdk.order(d.vehicle, d.kind, order_id=order_id, ident=ident, terms=terms,
                         rate_per_kwh=d.station.jurisdiction.posted, arrived_at_ms=at_ms,
                         at_ms=at_ms)

    def charge(self, drives: list[Drive]) -> None:
        self.dep.publish([self._handshake(d) for d in drives])
        self.dep.publish([r for d in drives for r in self._readings(d, 1, 2)])
        spike_at = self.day_ms + HOUR_MS + 21 * MINUTE_MS
        ca = JURISDICTIONS[0]
        assert self.operator is not None
        self.dep.publish([sdk.grid_event(self.operator, grid_event_id=f"ge:caiso{self.tag}:spike-1",
                                         grid_zone_id=self.zone(ca), kind="PRICE_SIGNAL",
                                         from_ms=spike_at, until_ms=spike_at + 2 * HOUR_MS,
                                         rate_per_kwh="0.61")])
        in_zone = [d for d in drives if d.station.jurisdiction is ca]
        proposed = self._await(self.decisions, lambda r: _short(r) == "RepriceProposed",
                               len(in_zone), "re-price proposals")
        self.say(f"grid price spike in {self.zone(ca)}: {len(proposed)} active sessions "
                 "re-priced to 0.61 USD/kWh; their vehicles accept (below their ceilings)")
        self.dep.publish([sdk.reprice_accepted(
            d.vehicle, session_id=d.session_id, station_id=d.station.participant.subject_id,
            grid_event_id=f"ge:caiso{self.tag}:spike-1", rate_per_kwh="0.61", at_ms=spike_at + MINUTE_MS)
            for d in in_zone])
        self.dep.publish([r for d in drives for r in self._readings(d, 3, 4)])

    def _handshake(self, d: Drive) -> SignedEvent:
        ident = sdk.identity(station_id=d.station.participant.subject_id, vehicle=d.vehicle,
                             rate_authority_id=d.station.authority_id,
                             jurisdiction=d.station.jurisdiction.code, connector_id=d.connector_id)
        return sdk.handshake(d.station.participant, d.vehicle, session_id=d.session_id,
                             reservation_id=self._reservation_of[d.session_id], ident=ident,
                             started_at_ms=d.start_ms, meter_start_wh=0)

    def _readings(self, d: Drive, first: int, last: int) -> list[SignedEvent]:
        out = []
        for seq in range(first, last + 1):
            at = d.start_ms + seq * 10 * MINUTE_MS
            wh = min(d.energy_wh, d.power_w * seq * 10 * MINUTE_MS // HOUR_MS)
            d.readings.append((at, wh))
            out.append(sdk.meter_reading(d.station.meters[d.connector_id],
                                         session_id=d.session_id,
                                         station_id=d.station.participant.subject_id,
                                         connector_id=d.connector_id, seq=seq, import_wh=wh,
                                         at_ms=at))
        return out

    def settle(self, drives: list[Drive]) -> None:
        closes = {}
        for d in drives:
            at, wh = d.readings[-1]
            closes[d.session_id] = sdk.meter_closed_out(
                d.station.participant, session_id=d.session_id, connector_id=d.connector_id,
                closed_at_ms=at + MINUTE_MS, final_import_wh=wh,
                last_reading_seq=len(d.readings))
        self.dep.publish(list(closes.values()))
        self._await(self.settlements, lambda r: _short(r) == "SettlementAdmitted", len(drives),
                    "admitted settlements")
        signatures = [sdk.close_out_countersigned(d.vehicle, closes[d.session_id],
                                                  d.readings[-1][0] + 2 * MINUTE_MS)
                      for d in drives]
        assert self.operator is not None
        signatures += [sdk.settlement_co_signed(
            self.operator, closes[d.session_id], grid_zone_id=self.zone(d.station.jurisdiction),
            clearing_price_per_kwh="0.183", at_ms=d.readings[-1][0] + 3 * MINUTE_MS)
            for d in drives if d.station.jurisdiction is JURISDICTIONS[0]]
        self.dep.publish(signatures)
        final = self._await(self.settlements, lambda r: _short(r) == "SettlementFinalised",
                            len(drives), "final settlements")
        self.say(f"{len(final)} settlements final: vehicle countersigned each close-out, the "
                 "grid operator co-signed the demand-response zone's")

    def _await(self, reader: TopicReader, match: Callable[[Record], bool], count: int,
               what: str) -> list[Record]:
        own = {st.participant.subject_id.encode() for st in self.stations} | {
            session.encode() for session in self._reservation_of}

        def found(records: list[Record]) -> list[Record]:
            seen: dict[str, Record] = {}
            for r in records:
                if r.key in own and match(r):
                    seen.setdefault(r.event().event_id, r)
            return list(seen.values())

        try:
            reader.wait_for(lambda rs: len(found(rs)) >= count, timeout_s=WAIT_S_MAX)
        except TimeoutError as exc:
            raise RuntimeError(f"waited {WAIT_S_MAX:.0f}s for {count} {what}") from exc
        return found(reader.records)

    def close(self) -> None:
        self.decisions.close()
        self.settlements.close()


DEMO_RUNS_FILE = "demo-runs.json"


def next_demo_tag(settings: Settings) -> str:
    """"" for the first demo in this state folder, then "-r1", "-r2", ... (recorded there)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    path = settings.state_dir / DEMO_RUNS_FILE
    runs = json.loads(path.read_text()) if path.exists() else []
    tag = "" if not runs else f"-r{len(runs)}"
    path.write_text(json.dumps(runs + [{"tag": tag, "at_ms": int(time.time() * 1000)}]))
    return tag


def _short(record: Record) -> str:
    try:
        return record.event().event_type.rsplit(".", 1)[1]
    except Exception:  # noqa: BLE001 - a record that is not an event matches nothing
        return ""


@dataclasses.dataclass(frozen=True)
class DemoScope:
    """What one demo run wrote: its stations, from its own day (virtual ms) and wall start."""

    station_ids: tuple[str, ...]
    since_ms: int
    wall_since_ms: int


def summary(settings: Settings, scope: DemoScope) -> dict[str, list[tuple[Any, ...]]]:
    """What an analyst sees in ClickHouse afterwards about this demo run (earlier runs in the
    same state folder are left out; the `events` count alone is cumulative and says so)."""
    client = clickhouse_client(settings)
    params = {"s": scope.station_ids, "t": scope.since_ms, "w": scope.wall_since_ms}
    mine = "station_id IN %(s)s AND admitted_at_ms >= %(t)s"
    queries = {
        "revenue": "SELECT jurisdiction, currency, count(), sum(energy_import_wh), "
                   f"sum(total_amount) FROM settlements FINAL WHERE {mine} "
                   "GROUP BY jurisdiction, currency ORDER BY jurisdiction",
        "lines": "SELECT kind, count(), sum(amount) FROM settlement_lines FINAL WHERE "
                 "settlement_id IN (SELECT settlement_id FROM settlements FINAL WHERE "
                 f"{mine}) GROUP BY kind ORDER BY kind",
        "decisions": "SELECT decision_type, count() FROM ledger_decisions FINAL WHERE "
                     "station_id IN %(s)s AND occurred_at_ms >= %(t)s "
                     "GROUP BY decision_type ORDER BY decision_type",
        "reprices": "SELECT stage, count() FROM reprices FINAL WHERE station_id IN %(s)s AND "
                    "occurred_at_ms >= %(t)s GROUP BY stage ORDER BY stage",
        "finality": f"SELECT status, count() FROM settlements_status WHERE {mine} "
                    "GROUP BY status ORDER BY status",
        "rejections": "SELECT reason_code, count() FROM rejections FINAL WHERE rejected_at_ms "
                      ">= %(w)s GROUP BY reason_code ORDER BY reason_code",
        "events": "SELECT count() FROM events FINAL",
    }
    try:
        return {name: list(client.execute(sql, params)) for name, sql in queries.items()}
    finally:
        client.disconnect()


def run_demo(settings: Settings, say: Say, keep_running: bool = False) -> dict[str, Any]:
    wall_started_ms = int(time.time() * 1000)
    stack = EmbeddedStack(settings)
    started = stack.up()
    say(f"stack up: {', '.join(started.started) or 'already running'}")
    worker = WorkerProcess(settings, loglevel="warning")
    stop = threading.Event()
    sink: ClickHouseSink | None = None
    sink_thread: threading.Thread | None = None
    demo: Demo | None = None
    try:
        demo = Demo(settings, say)
        worker.start()
        sink = ClickHouseSink(settings)
        sink_thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
        sink_thread.start()
        demo.credential_world()
        demo.publish_calendars()
        drives = demo.plan()
        demo.book(drives)
        demo.charge(drives)
        demo.settle(drives)
        scope = DemoScope(tuple(st.participant.subject_id for st in demo.stations),
                          demo.day_ms - HOUR_MS, wall_started_ms)
        return _wait_summary(settings, scope, len(drives))
    finally:
        stop.set()
        if demo is not None:
            demo.close()
        if sink_thread is not None:
            sink_thread.join(SINK_STOP_S_MAX)
        if sink is not None:
            sink.close()
        worker.stop()
        if not keep_running:
            stack.down()
            say("stack down")


def _wait_summary(settings: Settings, scope: DemoScope, settlements: int) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S_MAX
    result = summary(settings, scope)
    while time.monotonic() < deadline:
        result = summary(settings, scope)
        final = sum(n for status, n in result["finality"] if status == "FINAL")
        if sum(row[2] for row in result["revenue"]) >= settlements and final >= settlements:
            break
        time.sleep(0.5)
    return result


def money_text(value: Decimal) -> str:
    return f"{value:,.2f}"


# ---- the `chargemesh demo` command ------------------------------------------------------------

import click  # noqa: E402
from chargemesh.infra.cli.root import settings_of  # noqa: E402
from chargemesh.infra.cli.tables import print_table  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402


@click.command()
@click.option("--keep-running", is_flag=True, help="Leave the embedded stack up afterwards.")
@click.pass_context
def demo(ctx: click.Context, keep_running: bool) -> None:
    """Run a scripted marketplace day end to end and summarise it from ClickHouse."""
    console = Console()
    started = time.monotonic()
    settings = settings_of(ctx)

    def say(message: str) -> None:
        console.print(f"[dim]{time.monotonic() - started:6.1f}s[/dim]  {message}")

    result = run_demo(settings, say, keep_running=keep_running)
    print_table(console, _revenue_table(result))
    for title, key, headers in (("Settlement lines", "lines", ("kind", "lines", "amount")),
                                ("Ledger decisions", "decisions", ("decision", "count")),
                                ("Re-pricing", "reprices", ("stage", "count")),
                                ("Settlement finality", "finality", ("status", "count")),
                                ("Rejections", "rejections", ("reason", "count"))):
        table = Table(title=title, min_width=len(title) + 4)  # a title never wraps
        for header in headers:
            table.add_column(header, justify="left" if header in ("kind", "decision", "reason",
                                                                  "stage", "status")
                             else "right")
        for row in result[key]:
            table.add_row(*[money_text(v) if isinstance(v, Decimal) else str(v) for v in row])
        print_table(console, table)
    console.print(f"{result['events'][0][0]} signed events in ClickHouse table `events` "
                  "(cumulative: every run in this state folder; the tables above are this "
                  "demo's own). "
                  f"Query it yourself: clickhouse-client --port {settings.clickhouse_port} "
                  f"-d {settings.clickhouse_database}" + ("" if keep_running else
                                                          " (after `chargemesh up`)"))
    console.print(f"done in {time.monotonic() - started:.1f}s")


def _revenue_table(result: dict[str, Any]) -> Table:
    table = Table(title="Settlements by jurisdiction (read back from ClickHouse)")
    for header in ("jurisdiction", "currency", "settlements", "energy kWh", "total"):
        table.add_column(header, justify="left" if header in ("jurisdiction", "currency")
                         else "right")
    for jurisdiction, currency, count, energy_wh, total in result["revenue"]:
        table.add_row(jurisdiction, currency, str(count), f"{energy_wh / 1000:,.3f}",
                      money_text(total))
    return table
