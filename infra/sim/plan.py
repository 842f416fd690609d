"""The simulator's market, planned as a pure function of its configuration and seed.

``plan_market(config)`` builds a whole simulated market (authorities in three jurisdictions,
stations of every kind, vehicles with realistic batteries and diurnal arrivals) and returns its
signed events in publishing order, cut into phases at simulated-time boundaries. Nothing here
touches Kafka, ClickHouse or a clock: the same config gives the same events, byte for byte
(every key is derived from ``sim-<seed>``, every timestamp from ``config.day_start_ms``), so a
faulted run can be compared with a fault-free one (issue 9).

Each station's events are published in that station's own time order (bookings, then
handshakes, readings, close-outs, signatures): a station's ledger clock is its own signed time,
and an event out of order would release bookings as no-shows.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from chargemesh.infra.stack.bootstrap import ALL_DELEGATED_ROLES
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk import swap_mobile
from chargemesh.streams.sdk import wireless
from chargemesh.streams.envelope import SignedEvent, deterministic_event_ids
from chargemesh.streams.sdk.participant import Participant

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
SLOT_MS = 15 * MINUTE_MS
DEST_SLOT_MS = 4 * HOUR_MS  # overnight destination blocks
DEPOT_SLOT_MS = 2 * HOUR_MS  # multi-hour fleet depot windows
DAY0_MS = 1_790_035_200_000  # 2026-09-22T00:00Z: simulated time is station time, not wall time
STATIONS_MIN, STATIONS_MAX = 10, 500
VEHICLES_MIN, VEHICLES_MAX = 10, 20_000
HOURS_MIN, HOURS_MAX = 4, 72
VISITS_PER_VEHICLE_MAX = 2
READINGS_PER_SESSION_MAX = 6
SESSION_SLOTS_MAX = 16  # 4 h on 15-minute slots (inside the walk-up horizon)
PLACEMENT_TRIES_MAX = 6
ROAD_SEGMENTS = 6
ROAD_POWER_W = 200_000
PASS_MS = 18_000
SWAP_PACK_WH = 60_000
FLEET_ID = "fleet:sim-logistics"
NO_SHOW_PERCENT = 5
WALK_UP_PERCENT = 30
ROAMING_PERCENT = 20
# Arrival weight per hour of day (index 0 = midnight): a morning and an evening peak.
DIURNAL = (1, 1, 1, 1, 1, 2, 4, 7, 9, 8, 6, 5, 5, 5, 5, 6, 7, 9, 9, 7, 5, 3, 2, 1)


@dataclasses.dataclass(frozen=True)
class SimConfig:
    seed: int = 7
    stations: int = 40
    vehicles: int = 600
    hours: int = 24
    hostile_fraction: float = 0.05
    day_start_ms: int = DAY0_MS
    tag: str = ""  # distinguishes a second run of one seed on the same stack

    def checked(self) -> SimConfig:
        for name, value, low, high in (("stations", self.stations, STATIONS_MIN, STATIONS_MAX),
                                       ("vehicles", self.vehicles, VEHICLES_MIN, VEHICLES_MAX),
                                       ("hours", self.hours, HOURS_MIN, HOURS_MAX)):
            if not low <= value <= high:
                raise ValueError(f"{name} must be within {low}..{high}, got {value}")
        if not 0 <= self.hostile_fraction <= 0.5:
            raise ValueError("hostile fraction must be within 0..0.5")
        return self

    @property
    def secret(self) -> str:
        return f"sim-{self.seed}" + (f"-{self.tag}" if self.tag else "")

    @property
    def prefix(self) -> str:
        return f"s{self.seed}" + (self.tag or "")


@dataclasses.dataclass(frozen=True)
class Jurisdiction:
    code: str
    currency: str
    posted: str
    ceiling: str
    tax_percent: str
    congestion: str
    renewable: str
    rounding: str
    grid_zone: str
    reciprocity: bool  # with the root authority (the home of root-issued vehicles)


JURISDICTIONS = (
    Jurisdiction("US-CA", "USD", "0.42", "0.80", "7.25", "0.02", "0.015", "HALF_UP",
                 "caiso-sfbay", True),
    Jurisdiction("DE-BY", "EUR", "0.49", "0.89", "19", "0", "0.01", "HALF_EVEN",
                 "tennet-by", True),
    Jurisdiction("GB-LDN", "GBP", "0.55", "0.95", "20", "0.03", "0", "HALF_UP",
                 "ngrid-ldn", False),
)
V2G_ZONE = "caiso-v2g"
SPIKE_RATE = "0.61"
V2G_CLEARING = "0.183"


@dataclasses.dataclass(frozen=True)
class Phase:
    """Events to publish together, then ``barrier`` expectations to wait for before going on."""

    label: str
    until_ms: int  # simulated (station) time this phase reaches
    events: tuple[SignedEvent, ...]
    # ("decided", order id) | ("reprice", session id) | ("reevaluated", subject id)
    barrier: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class MarketPlan:
    config: SimConfig
    root: Participant
    phases: tuple[Phase, ...]
    walk_ups: dict[str, str]  # walk-up event id -> order id
    final_signatures: dict[str, str]  # session's last signature event id -> settlement id
    grid_events: dict[str, tuple[str, ...]]  # grid event id -> sessions it re-prices
    hostile: dict[str, str]  # event id -> kind (FORGED_SIGNATURE, REPLAYED_EVENT_ID, ...)
    refused: dict[str, str]  # honest events the mesh must refuse -> expected reason
    expected_settlements: frozenset[str]
    capabilities: dict[str, int]  # what the plan exercises, counted

    def events(self) -> list[SignedEvent]:
        return [e for phase in self.phases for e in phase.events]


@dataclasses.dataclass
class Station:
    participant: Participant
    kind: str  # AC_L2 | DC_FAST | MCS | DESTINATION | DEPOT | SWAP | MOBILE | V2G
    jurisdiction: Jurisdiction
    authority_id: str
    tariff_id: str
    grid_zone: str
    slot_ms: int
    connectors: list[tuple[str, int, str, bool]]  # id, power W, kind, bidirectional
    meters: dict[str, Participant]
    booked: dict[str, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)
    grid_coupled: bool = False
    window: tuple[int, int] = (0, 2**62)  # E5: where the truck is when (its leg)
    order_at_ms: int = 0  # 0: booked ahead; else when its leg opens (E5)

    @property
    def sid(self) -> str:
        return str(self.participant.subject_id)

    def free(self, connector_id: str, start: int, stop: int) -> bool:
        return all(stop <= a or start >= b for a, b in self.booked.get(connector_id, []))

    def book(self, connector_id: str, start: int, stop: int) -> None:
        self.booked.setdefault(connector_id, []).append((start, stop))


@dataclasses.dataclass
class Vehicle:
    participant: Participant
    kind: str  # CAR | TRUCK | VAN | V2G_CAR | SWAP_CAR
    home: Jurisdiction
    battery_wh: int
    power_w_max: int


@dataclasses.dataclass
class Visit:
    vehicle: Vehicle
    station: Station
    connector_id: str
    order_id: str
    kind: str  # posted | walk_up
    slot_start_ms: int
    slot_stop_ms: int
    start_ms: int  # plug-in (handshake) time
    close_ms: int
    energy_wh: int
    power_w: int
    fate: str = "SETTLE"  # SETTLE | NO_SHOW | DISPLACED | REVOKED | REFUSED
    arrived_ms: int = 0
    readings: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    evidence: list[SignedEvent] = dataclasses.field(default_factory=list)
    pinned: bool = False  # planned for a capability: never drawn as a no-show

    @property
    def session_id(self) -> str:
        return f"session:{self.order_id}"


class Timeline:
    """Events stamped with the simulated time they happen at; sorted stably when cut."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, SignedEvent]] = []

    def add(self, event: SignedEvent, at_ms: int | None = None) -> SignedEvent:
        at = event.body.occurred_at_ms if at_ms is None else at_ms
        self.items.append((at, len(self.items), event))
        return event

    def between(self, start_ms: int, stop_ms: int) -> list[SignedEvent]:
        return [e for at, _, e in sorted(self.items, key=lambda x: (x[0], x[1]))
                if start_ms <= at < stop_ms]


class Planner:
    """Builds the world and the day (one instance per plan; every choice drawn from ``rng``)."""

    def __init__(self, config: SimConfig) -> None:
        self.cfg = config.checked()
        self.rng = random.Random(config.seed)
        self.day0 = config.day_start_ms
        self.end = self.day0 + config.hours * HOUR_MS
        self.setup_at = self.day0 - 2 * HOUR_MS
        p = config.prefix
        self.root = self.participant(f"authority:{p}:root")
        self.issuer = self.participant(f"issuer:{p}:root-1")
        self.authorities: dict[str, Participant] = {}
        self.gb_issuer = self.participant(f"issuer:{p}:gb-1")
        self.operator = self.participant(f"grid-op:{p}:caiso")
        self.governance: list[SignedEvent] = []
        self.setup: list[SignedEvent] = []  # calendars, packs, first relocation
        self.bookings: list[SignedEvent] = []
        self.day = Timeline()
        self.stations: list[Station] = []
        self.vehicles: list[Vehicle] = []
        self.visits: list[Visit] = []
        self.walk_ups: dict[str, str] = {}
        self.final_signatures: dict[str, str] = {}
        self.grid_events: dict[str, tuple[str, ...]] = {}
        self.hostile: dict[str, str] = {}
        self.refused: dict[str, str] = {}
        self.settlements: set[str] = set()
        self.caps: dict[str, int] = {}
        self.order_events: dict[str, SignedEvent] = {}
        self.barriers: dict[int, tuple[tuple[str, str], ...]] = {}

    def participant(self, credential_id: str, subject_id: str | None = None) -> Participant:
        return Participant.seeded(credential_id, subject_id, secret=self.cfg.secret)

    def count(self, capability: str, n: int = 1) -> None:
        self.caps[capability] = self.caps.get(capability, 0) + n

    def jurisdiction(self, code: str) -> Jurisdiction:
        return next(j for j in JURISDICTIONS if j.code == code)

    # ---- governance ------------------------------------------------------------------------

    def credential_world(self) -> None:
        at, gov = self.setup_at, self.governance
        codes = [j.code for j in JURISDICTIONS]
        gov.append(self.root.declare_authority("simulated root authority", codes[0],
                                               ["AUTHORITY", "RATE_AUTHORITY"], "USD", at_ms=at))
        gov.append(self.root.delegate_issuer(self.issuer, ALL_DELEGATED_ROLES, codes, at_ms=at))
        for j in JURISDICTIONS:
            authority = self.root if j.code == "US-CA" else self.participant(
                f"authority:{self.cfg.prefix}:{j.code.lower()}")
            self.authorities[j.code] = authority
            if authority is not self.root:
                gov.append(authority.declare_authority(
                    f"rate authority {j.code}", j.code, ["AUTHORITY", "RATE_AUTHORITY"],
                    j.currency, at_ms=at))
                gov.append(self.root.recognise_authority(
                    authority, j.code, ["AUTHORITY", "RATE_AUTHORITY"], at_ms=at))
                if j.reciprocity:
                    gov.append(sdk.reciprocity_agreed(
                        self.root, authority, agreement_id=f"recip:{self.cfg.prefix}:{j.code}",
                        at_ms=at))
                    self.count("roaming_reciprocity_agreements")
            gov.append(self.tariff(j, f"tariff:{self.cfg.prefix}:{j.code}"))
            gov.append(sdk.rules_published(authority, rules_version=self.rules_of(j),
                                           jurisdiction=j.code, at_ms=at))
        gb = self.authorities["GB-LDN"]
        gov.append(gb.delegate_issuer(self.gb_issuer, ["VEHICLE"], ["GB-LDN"], at_ms=at))
        gov.append(self.tariff(self.jurisdiction("US-CA"), self.swap_tariff, swap_fee="5.00"))
        gov.append(self.issuer.issue_credential(
            self.operator, ["GRID_OPERATOR"], "US-CA",
            attributes={"grid_zones": f"{self.zone('caiso-sfbay')},{self.zone(V2G_ZONE)}"},
            at_ms=at))
        gov.append(sdk.grid_program(self.operator, grid_zone_id=self.zone("caiso-sfbay"),
                                    program="DEMAND_RESPONSE",
                                    operator_ids=[self.operator.credential_id], at_ms=at))
        gov.append(sdk.grid_program(self.operator, grid_zone_id=self.zone(V2G_ZONE),
                                    program="V2G", operator_ids=[self.operator.credential_id],
                                    at_ms=at))

    @property
    def swap_tariff(self) -> str:
        return f"tariff:{self.cfg.prefix}:US-CA:swap"

    def zone(self, name: str) -> str:
        return f"{self.cfg.prefix}-{name}"

    def rules_of(self, j: Jurisdiction) -> str:
        return f"rules:{self.cfg.prefix}:{j.code}"

    def tariff(self, j: Jurisdiction, tariff_id: str, swap_fee: str = "0",
               station_ids: list[str] | None = None, ceiling: str | None = None) -> SignedEvent:
        return sdk.tariff_filed(
            self.authorities[j.code], tariff_id=tariff_id, jurisdiction=j.code,
            currency=j.currency, ceiling_per_kwh=ceiling or j.ceiling, rounding=j.rounding,
            tax_percent=j.tax_percent, congestion_fee_per_kwh=j.congestion,
            renewable_adder_per_kwh=j.renewable, swap_fee=swap_fee, station_ids=station_ids,
            at_ms=self.setup_at)

    # ---- stations and vehicles -----------------------------------------------------------------

    SPECIAL_SITES = (("MCS", "US-CA"), ("DEPOT", "US-CA"), ("DESTINATION", "DE-BY"),
                     ("SWAP", "US-CA"), ("MOBILE", "US-CA"), ("V2G", "US-CA"), ("ROAD", "US-CA"))
    PUBLIC_CYCLE = ("US-CA", "DE-BY", "GB-LDN", "US-CA", "DE-BY", "US-CA")

    def build_stations(self) -> None:
        sites = list(self.SPECIAL_SITES)
        for i in range(self.cfg.stations - len(sites)):
            code = self.PUBLIC_CYCLE[i % len(self.PUBLIC_CYCLE)]
            sites.append(("DC_FAST" if i % 2 == 0 else "AC_L2", code))
        for i, (kind, code) in enumerate(sites):
            if kind == "ROAD":
                self.build_road()
            else:
                self.stations.append(self.build_station(i, kind, self.jurisdiction(code)))
        for kind in ("AC_L2", "DC_FAST", "MCS", "DESTINATION", "DEPOT", "SWAP", "MOBILE", "V2G"):
            self.count(f"station_{kind.lower()}", sum(s.kind == kind for s in self.stations))

    def _connectors(self, kind: str) -> tuple[list[tuple[str, int, str, bool]], int, str]:
        """(connectors, slot duration, grid zone name) of a station of ``kind``."""
        r = self.rng
        if kind == "DC_FAST":
            power = r.choice((50_000, 150_000, 150_000, 250_000, 350_000))
            return [(f"c{n}", power, "DC_FAST", False) for n in range(1, r.randint(2, 4) + 1)], \
                SLOT_MS, ""
        if kind == "AC_L2":
            power = r.choice((7_400, 11_000, 11_000, 22_000))
            return [(f"c{n}", power, "AC_L2", False) for n in range(1, r.randint(2, 4) + 1)], \
                SLOT_MS, ""
        table: dict[str, tuple[list[tuple[str, int, str, bool]], int, str]] = {
            "MCS": ([("c1", 1_000_000, "MCS", False), ("c2", 1_000_000, "MCS", False)], SLOT_MS,
                    ""),
            "DESTINATION": ([(f"c{n}", 11_000, "AC_L2", False) for n in range(1, 7)],
                            DEST_SLOT_MS, ""),
            "DEPOT": ([(f"c{n}", 50_000, "DC_FAST", False) for n in range(1, 5)], DEPOT_SLOT_MS,
                      "depot"),
            "SWAP": ([("bay1", 1_000_000, "SWAP_BAY", False), ("bay2", 1_000_000, "SWAP_BAY",
                                                              False)], SLOT_MS, "swap"),
            "MOBILE": ([("m1", 50_000, "MOBILE", False)], SLOT_MS, "mobile"),
            "V2G": ([(f"c{n}", 22_000, "AC_L2", True) for n in range(1, 4)], SLOT_MS, V2G_ZONE),
        }
        return table[kind]

    def build_station(self, i: int, kind: str, j: Jurisdiction) -> Station:
        sid = f"{self.cfg.prefix}-{kind.lower().replace('_', '')}-{i}"
        connectors, slot_ms, zone = self._connectors(kind)
        zone = self.zone(zone or j.grid_zone)
        roles, attributes = ["STATION"], None
        if kind == "DEPOT":
            attributes = {"fleet_id": FLEET_ID, "site_id": f"{sid}-site",
                          "renewable_share_permille": "800"}
        if kind == "MOBILE":
            roles, attributes = ["MOBILE_STATION"], {"operating_jurisdictions": "US-CA,DE-BY"}
        station = self.participant(f"station:{sid}", sid)
        self.governance.append(self.issuer.issue_credential(
            station, roles, j.code, attributes=attributes, at_ms=self.setup_at))
        meters = {}
        for cid, _, _, _ in connectors:
            meters[cid] = self.participant(f"meter:{sid}:{cid}")
            self.governance.append(self.issuer.issue_credential(meters[cid], ["METER"], j.code,
                                                                at_ms=self.setup_at))
        tariff = self.swap_tariff if kind == "SWAP" else f"tariff:{self.cfg.prefix}:{j.code}"
        st = Station(station, kind, j, self.authorities[j.code].credential_id, tariff, zone,
                     slot_ms, connectors, meters,
                     grid_coupled=zone in (self.zone("caiso-sfbay"), self.zone(V2G_ZONE)))
        horizon = -(-self.cfg.hours * HOUR_MS // slot_ms) * slot_ms
        self.setup.append(sdk.calendar_published(
            station, rate_authority_id=st.authority_id, jurisdiction=j.code, tariff_id=tariff,
            rules_version=self.rules_of(j),
            connectors=[sdk.connector(cid, power, ckind, meters[cid].credential_id, bidi)
                        for cid, power, ckind, bidi in connectors],
            slot_duration_ms=slot_ms, horizon_start_ms=self.day0,
            horizon_end_ms=self.day0 + horizon, posted_rate_per_kwh=j.posted,
            currency=j.currency, grid_zone_id=zone, at_ms=self.setup_at + 10 * MINUTE_MS))
        return st

    def build_road(self) -> None:
        p = self.cfg.prefix
        self.road_operator = self.participant(f"road-operator:{p}")
        self.road_segments: list[Participant] = []
        us = self.jurisdiction("US-CA")
        self.governance.append(self.root.delegate_issuer(self.road_operator, ["STATION"],
                                                         ["US-CA"], at_ms=self.setup_at))
        seg_ids = [f"{p}-road-seg-{i}" for i in range(ROAD_SEGMENTS)]
        self.governance.append(self.tariff(us, f"tariff:{p}:road", station_ids=seg_ids,
                                           ceiling="0.32"))
        for i, sid in enumerate(seg_ids):
            seg = self.participant(f"segment:{sid}", sid)
            self.road_segments.append(seg)
            self.governance.append(self.road_operator.issue_credential(
                seg, ["STATION"], "US-CA", attributes=wireless.segment_attributes(
                    geofence_id=f"gf-{sid}", box=road_box(i), power_w=ROAD_POWER_W,
                    tariff_id=f"tariff:{p}:road"), at_ms=self.setup_at))
        self.count("station_wireless_road")
        self.count("wireless_segments", ROAD_SEGMENTS)

    def build_vehicles(self) -> None:
        forced = ["TRUCK", "VAN", "V2G_CAR", "SWAP_CAR", "CAR", "CAR"]
        for i in range(self.cfg.vehicles):
            r = self.rng.random()
            kind = forced[i] if i < len(forced) else (
                "TRUCK" if r < 0.08 else "VAN" if r < 0.18 else "V2G_CAR" if r < 0.26
                else "SWAP_CAR" if r < 0.31 else "CAR")
            home = "US-CA"
            if kind == "CAR":
                h = self.rng.random()
                home = ("GB-LDN" if i == 4 else "US-CA" if i == 5 else "GB-LDN" if h < 0.15
                        else "DE-BY" if h < 0.45 else "US-CA")
            self.vehicles.append(self.build_vehicle(i, kind, self.jurisdiction(home)))

    def build_vehicle(self, i: int, kind: str, home: Jurisdiction) -> Vehicle:
        r = self.rng
        battery_wh, power_w = {
            "TRUCK": (r.randrange(300_000, 900_001, 1_000), r.choice((750_000, 1_000_000))),
            "VAN": (r.randrange(60_000, 110_001, 1_000), 50_000),
        }.get(kind, (r.randrange(40_000, 120_001, 1_000), r.choice((50_000, 150_000, 250_000))))
        vid = f"{self.cfg.prefix}-{kind.lower().replace('_', '')}-{i}"
        vehicle = self.participant(f"vehicle:{vid}", vid)
        issuer = self.gb_issuer if home.code == "GB-LDN" else self.issuer
        attributes = {"fleet_id": FLEET_ID} if kind == "VAN" else None
        self.governance.append(issuer.issue_credential(vehicle, ["VEHICLE"], home.code,
                                                       attributes=attributes,
                                                       at_ms=self.setup_at))
        return Vehicle(vehicle, kind, home, battery_wh, power_w)

    # ---- where and when vehicles charge ---------------------------------------------------------

    def arrival_ms(self, earliest_ms: int) -> int | None:
        first = max(1, -(-(earliest_ms - self.day0) // HOUR_MS))
        hours = list(range(first, self.cfg.hours - 1))
        if not hours:
            return None
        hour = self.rng.choices(hours, [DIURNAL[h % 24] for h in hours])[0]
        return self.day0 + hour * HOUR_MS + self.rng.randrange(60) * MINUTE_MS

    def of_kind(self, kind: str) -> list[Station]:
        return [s for s in self.stations if s.kind == kind]

    def station_for(self, v: Vehicle, arrival: int) -> Station | str:
        by_kind = {"TRUCK": "MCS", "VAN": "DEPOT", "V2G_CAR": "V2G", "SWAP_CAR": "SWAP"}
        if v.kind in by_kind:
            return self.rng.choice(self.of_kind(by_kind[v.kind]))
        public = self.of_kind("AC_L2") + self.of_kind("DC_FAST")
        home = [s for s in public if s.jurisdiction is v.home]
        if v.home.code == "GB-LDN":
            return self.rng.choice(home or public)
        r = self.rng.random()
        if r < 0.08:
            return self.of_kind("DESTINATION")[0]
        if r < 0.13:
            return self.mobile_at(arrival)
        if r < 0.18:
            return "ROAD"
        if self.rng.randrange(100) < ROAMING_PERCENT:
            foreign = [s for s in public if s.jurisdiction is not v.home]
            return self.rng.choice(foreign or public)
        return self.rng.choice(home or public)

    def mobile_at(self, at_ms: int) -> Station:
        return self.mobile_legs[0] if at_ms < self.relocate_ms else self.mobile_legs[1]

    def place(self, v: Vehicle, st: Station, arrival: int, walk_up: bool,
              slots_min: int = 1) -> Visit | None:
        """Books the first free connector from ``arrival`` on (a few slots later at most)."""
        slot, power = st.slot_ms, min(st.connectors[0][1], v.power_w_max)
        horizon_end = self.day0 + -(-self.cfg.hours * HOUR_MS // slot) * slot
        need_wh = v.battery_wh * self.rng.randint(30, 70) // 100
        slots = 1 if slot > SLOT_MS or st.kind == "SWAP" else max(slots_min, min(
            SESSION_SLOTS_MAX, -(-(need_wh * HOUR_MS // (power * 9 // 10) + 10 * MINUTE_MS)
                                 // slot)))
        for attempt in range(PLACEMENT_TRIES_MAX):
            at = arrival + attempt * slot
            start = self.day0 + (at - self.day0) // slot * slot
            limit = min(horizon_end, st.window[1])
            stop = start + max(1, min(slots, (limit - start) // slot)) * slot
            if stop > limit or start < st.window[0]:
                return None
            cids = [c[0] for c in st.connectors]
            self.rng.shuffle(cids)
            free = [c for c in cids if st.free(c, start, stop)]
            if not free:
                continue
            st.book(free[0], start, stop)
            plug = at + MINUTE_MS if walk_up else start + self.rng.randint(1, 5) * MINUTE_MS
            charge_ms = min(need_wh * HOUR_MS // (power * 9 // 10), stop - plug - 4 * MINUTE_MS)
            energy = min(need_wh, power * 9 // 10 * charge_ms // HOUR_MS)
            n = len(self.visits)
            return Visit(v, st, free[0], f"{self.cfg.prefix}-o{n}",
                         "walk_up" if walk_up else "posted", start, stop, plug,
                         plug + charge_ms + MINUTE_MS, energy, power, arrived_ms=at)
        return None

    def plan_visits(self) -> None:
        trips = 0
        for v in self.vehicles:
            earliest = self.day0
            for _ in range(self.rng.randint(1, VISITS_PER_VEHICLE_MAX)):
                arrival = self.arrival_ms(earliest)
                if arrival is None:
                    break
                st = self.station_for(v, arrival)
                if st == "ROAD":
                    self.trip(v, arrival, trips)
                    trips += 1
                    earliest = arrival + 2 * HOUR_MS
                    continue
                assert isinstance(st, Station)
                walk_up = st.kind in ("AC_L2", "DC_FAST", "MCS") and (
                    self.rng.randrange(100) < WALK_UP_PERCENT)
                visit = self.place(v, st, arrival, walk_up)
                if visit is None:
                    continue
                self.visits.append(visit)
                earliest = visit.slot_stop_ms + HOUR_MS
                if v.kind == "SWAP_CAR":
                    break  # one swap: the pack it brings back is its own
        if trips == 0:
            self.trip(self.vehicles[5], self.day0 + HOUR_MS, trips)
        self.force_every_site()

    def force_every_site(self) -> None:
        """At small scale, one visit at every kind of site that has none yet."""
        want = {"MCS": "TRUCK", "DEPOT": "VAN", "V2G": "V2G_CAR", "SWAP": "SWAP_CAR",
                "DESTINATION": "CAR", "DC_FAST": "CAR", "AC_L2": "CAR"}
        gb = [s for s in self.stations if s.jurisdiction.code == "GB-LDN"]
        if gb and not any(x.station in gb and x.vehicle.home.code != "GB-LDN"
                          for x in self.visits):  # roaming without reciprocity, at least once
            car = next(v for v in self.vehicles if v.kind == "CAR" and v.home.code == "US-CA")
            visit = self.place(car, gb[0], self.day0 + HOUR_MS, False)
            if visit is not None:
                self.visits.append(visit)
        sites = [s for s in self.stations if s.kind in want] + list(self.mobile_legs)
        for st in sites:
            if any(x.station is st for x in self.visits):
                continue
            kind = want.get(st.kind, "CAR")
            owners = [v for v in self.vehicles if v.kind == kind
                      and (v.home is st.jurisdiction or v.home.code != "GB-LDN")
                      and (st.jurisdiction.code != "GB-LDN" or v.home.code == "GB-LDN")]
            for hour in range(1, self.cfg.hours - 1):
                at = max(self.day0 + hour * HOUR_MS, st.window[0])
                visit = self.place(self.rng.choice(owners), st, at, False) if owners else None
                if visit is not None:
                    self.visits.append(visit)
                    break

    # ---- the signed events of a visit -----------------------------------------------------------

    def ident(self, visit: Visit) -> dict[str, Any]:
        st = visit.station
        ident: dict[str, Any] = sdk.identity(
            station_id=st.sid, vehicle=visit.vehicle.participant,
            rate_authority_id=st.authority_id, jurisdiction=st.jurisdiction.code,
            connector_id=visit.connector_id)
        return ident

    def order_of(self, visit: Visit) -> SignedEvent:
        st, j = visit.station, visit.station.jurisdiction
        extension = None
        if st.kind == "SWAP":
            extension = swap_mobile.swap_extension(chemistry="NMC",
                                                   min_state_of_health_permille=850,
                                                   pack_id=self.pack_for(visit))
        terms = sdk.claim(energy_wh=visit.energy_wh if st.kind != "SWAP" else 50_000,
                          start_ms=visit.slot_start_ms, stop_ms=visit.slot_stop_ms,
                          ceiling_rate_per_kwh=j.ceiling, currency=j.currency,
                          v2g_eligible=st.kind == "V2G", extension=extension)
        vehicle = visit.vehicle.participant
        if visit.kind == "walk_up":
            # The station's own clock (its heartbeat) says the vehicle is at the connector now.
            self.day.add(sdk.heartbeat(st.participant, visit.arrived_ms))
            order = sdk.order(vehicle, "walk_up", order_id=visit.order_id,
                              ident=self.ident(visit), terms=terms,
                              arrived_at_ms=visit.arrived_ms, at_ms=visit.arrived_ms)
            self.walk_ups[order.event_id] = visit.order_id
            self.count("walk_up")
            return self.day.add(order)
        at = st.order_at_ms or self.setup_at + 30 * MINUTE_MS
        order = sdk.order(vehicle, "posted", order_id=visit.order_id, ident=self.ident(visit),
                          terms=terms, rate_per_kwh=j.posted, at_ms=at)
        self.count("posted_reservation")
        if st.order_at_ms:
            return self.day.add(order)
        self.bookings.append(order)
        self.booking_ids.append(visit.order_id)
        return order

    def pack_for(self, visit: Visit) -> str:
        return f"{self.cfg.prefix}-pack-{visit.order_id}"

    def emit_visit(self, visit: Visit) -> None:
        self.order_events[visit.order_id] = self.order_of(visit)
        if visit.station.jurisdiction is not visit.vehicle.home:
            if visit.station.jurisdiction.reciprocity:
                self.count("roaming_with_reciprocity")
            else:
                self.count("roaming_without_reciprocity")
                self.refused[self.order_events[visit.order_id].event_id] = "NO_RECIPROCITY"
                visit.fate = "REFUSED"
        if visit.fate != "SETTLE":
            self.count(visit.fate.lower())
            return
        if visit.station.kind == "SWAP":
            self.emit_swap(visit)
        else:
            self.emit_session(visit)

    def no_shows(self) -> None:
        """Some booked drivers never come (at least one): the ledger releases their slots."""
        eligible = [v for v in self.visits if not v.pinned and v.fate == "SETTLE"
                    and v.kind == "posted" and v.station.kind in ("AC_L2", "DC_FAST")]
        chosen = [v for v in eligible if self.rng.randrange(100) < NO_SHOW_PERCENT]
        for v in chosen or eligible[:1]:
            v.fate = "NO_SHOW"

    def emit_swap(self, visit: Visit) -> None:
        st, pack = visit.station, self.pack_for(visit)
        self.setup.append(swap_mobile.pack_registered(
            st.participant, pack_id=pack, chemistry="NMC",
            state_of_health_permille=self.rng.randint(880, 990), capacity_wh=SWAP_PACK_WH,
            charge_wh=57_000, at_ms=self.setup_at + 20 * MINUTE_MS))
        swap = self.day.add(swap_mobile.pack_swapped(
            st.participant, visit.vehicle.participant, session_id=visit.session_id,
            reservation_id=f"res:{visit.order_id}", ident=self.ident(visit), pack_out_id=pack,
            pack_out_charge_wh=57_000, pack_in_id=f"{pack}-returned",
            pack_in_charge_wh=self.rng.randint(3_000, 15_000), swapped_at_ms=visit.start_ms,
            pack_in_chemistry="NMC", pack_in_state_of_health_permille=880))
        self.settled(visit, swap)
        self.count("battery_swap")

    def settled(self, visit: Visit, last_signature: SignedEvent) -> None:
        settlement_id = f"stl:{visit.session_id}"
        self.final_signatures[last_signature.event_id] = settlement_id
        self.settlements.add(settlement_id)

    def emit_session(self, visit: Visit) -> None:
        st, vehicle = visit.station, visit.vehicle.participant
        v2g = st.kind == "V2G"
        start_wh = self.rng.randrange(10_000, 5_000_000)
        export_start_wh = self.rng.randrange(10_000, 900_000) if v2g else 0
        export_wh = visit.energy_wh // 3 if v2g else 0
        if v2g:
            visit.energy_wh -= export_wh  # the connector moves at most its power, both ways
        visit.evidence.append(self.day.add(sdk.handshake(
            st.participant, vehicle, session_id=visit.session_id,
            reservation_id=f"res:{visit.order_id}", ident=self.ident(visit),
            started_at_ms=visit.start_ms, meter_start_wh=start_wh,
            meter_start_export_wh=export_start_wh)))
        span = visit.close_ms - visit.start_ms
        n = max(1, min(READINGS_PER_SESSION_MAX, span // (10 * MINUTE_MS)))
        for k in range(1, n + 1):
            at = visit.start_ms + k * span // (n + 1)
            wh = start_wh + visit.energy_wh * k // (n + 1)
            visit.readings.append((at, wh))
            visit.evidence.append(self.day.add(sdk.meter_reading(
                st.meters[visit.connector_id], session_id=visit.session_id, station_id=st.sid,
                connector_id=visit.connector_id, seq=k, import_wh=wh, at_ms=at,
                export_wh=export_start_wh + export_wh * k // (n + 1))))
        close = self.day.add(sdk.meter_closed_out(
            st.participant, session_id=visit.session_id, connector_id=visit.connector_id,
            closed_at_ms=visit.close_ms, final_import_wh=start_wh + visit.energy_wh,
            last_reading_seq=n, final_export_wh=export_start_wh + export_wh))
        visit.evidence.append(close)
        last = self.day.add(sdk.close_out_countersigned(vehicle, close,
                                                        visit.close_ms + MINUTE_MS))
        if st.grid_coupled:
            last = self.day.add(sdk.settlement_co_signed(
                self.operator, close, grid_zone_id=st.grid_zone,
                clearing_price_per_kwh=V2G_CLEARING if v2g else "0.183",
                at_ms=visit.close_ms + 2 * MINUTE_MS))
            self.count("grid_co_signed")
        self.settled(visit, last)
        self.count({"V2G": "v2g_session", "DEPOT": "fleet_internal_session",
                    "MOBILE": "mobile_session", "MCS": "megawatt_session",
                    "DESTINATION": "overnight_session"}.get(st.kind, "public_session"))

    def trip(self, v: Vehicle, at: int, n: int) -> None:
        """E1: a drive over every segment of the road; the trip settles when the vehicle closes it."""
        op, trip_id = self.road_operator, f"trip:{self.cfg.prefix}-{n}"
        self.day.add(wireless.trip_authorised(
            v.participant, trip_id=trip_id, road_operator_id=op.credential_id,
            rate_authority_id=self.root.credential_id, jurisdiction="US-CA",
            ceiling_rate_per_kwh="0.50", currency="USD", energy_wh_max=100_000, start_ms=at,
            stop_ms=at + 2 * HOUR_MS, at_ms=at))
        left = at
        for i, seg in enumerate(self.road_segments):
            entered = at + MINUTE_MS + i * PASS_MS
            left = entered + PASS_MS
            box = road_box(i)
            one = wireless.SegmentPass(
                pass_id=f"{trip_id}/{i}", trip_id=trip_id,
                vehicle_credential_id=v.participant.credential_id,
                geofence_id=f"gf-{seg.subject_id}", latitude_microdeg=(box[0] + box[2]) // 2,
                longitude_microdeg=(box[1] + box[3]) // 2, entered_at_ms=entered,
                left_at_ms=left, meter_seconds=PASS_MS // 1000,
                energy_wh=self.rng.randint(600, 950))
            self.day.add(wireless.segment_passes(seg, road_operator_id=op.credential_id,
                                                 batch_id=f"{seg.subject_id}@{trip_id}",
                                                 passes=[one], at_ms=left + 500))
        closed = self.day.add(wireless.trip_closed(v.participant, trip_id=trip_id,
                                                   road_operator_id=op.credential_id,
                                                   at_ms=left + 2 * MINUTE_MS))
        self.final_signatures[closed.event_id] = f"stl:{trip_id}"
        self.settlements.add(f"stl:{trip_id}")
        self.count("wireless_trip")

    # ---- disruption: a station fault, a revocation, a grid price spike, a dispute ---------------

    def mobile_legs_and_moves(self) -> None:
        """E5: the truck delivers in US-CA until mid-day, then relocates to DE-BY."""
        us = self.of_kind("MOBILE")[0]
        de_j = self.jurisdiction("DE-BY")
        self.relocate_ms = self.day0 + self.cfg.hours // 2 * HOUR_MS
        us.window = (self.day0, self.relocate_ms - 30 * MINUTE_MS)
        de = dataclasses.replace(us, jurisdiction=de_j, window=(
            self.relocate_ms + 30 * MINUTE_MS, 2**62), order_at_ms=self.relocate_ms + MINUTE_MS,
            authority_id=self.authorities["DE-BY"].credential_id,
            tariff_id=f"tariff:{self.cfg.prefix}:DE-BY")
        self.mobile_legs = (us, de)
        for leg, at in ((us, self.setup_at + 15 * MINUTE_MS), (de, self.relocate_ms)):
            event = swap_mobile.mobile_relocated(
                leg.participant, jurisdiction=leg.jurisdiction.code,
                rate_authority_id=leg.authority_id, tariff_id=leg.tariff_id,
                posted_rate_per_kwh=leg.jurisdiction.posted, latitude_microdeg=37_774_000,
                longitude_microdeg=-122_419_000, at_ms=at, dispatch_id=f"dispatch-{at}")
            (self.setup.append(event) if leg is us else self.day.add(event))
            self.count("mobile_relocation")

    def fault(self) -> None:
        """A connector fails for two hours; the booking on it is displaced by the rules."""
        st = (self.of_kind("DC_FAST") or self.of_kind("AC_L2"))[0]
        at = self.day0 + max(1, self.cfg.hours // 3) * HOUR_MS
        for cid, _, _, _ in st.connectors:
            st.book(cid, at, at + SLOT_MS)
        st.book("c1", at, at + 2 * HOUR_MS)
        victim = next(v for v in self.vehicles if v.kind == "CAR" and v.home.code != "GB-LDN")
        visit = Visit(victim, st, "c1", f"{self.cfg.prefix}-fault-victim", "posted", at,
                      at + SLOT_MS, at + MINUTE_MS, at + 10 * MINUTE_MS, 5_000,
                      st.connectors[0][1], fate="DISPLACED")
        self.visits.append(visit)
        self.day.add(sdk.capacity_changed(st.participant, connector_id="c1", available=False,
                                          from_ms=at, until_ms=at + 2 * HOUR_MS, cause="FAULT",
                                          at_ms=at - 30 * MINUTE_MS))
        self.count("station_fault")

    def revocation(self) -> None:
        """A vehicle's key is compromised mid-day: its later booking is cancelled by every
        ledger, and its next walk-up is refused."""
        self.revoke_ms = self.day0 + self.cfg.hours // 2 * HOUR_MS + 30 * MINUTE_MS
        car = self.build_vehicle(len(self.vehicles), "CAR", self.jurisdiction("US-CA"))
        us = [s for s in self.of_kind("DC_FAST") + self.of_kind("AC_L2")
              if s.jurisdiction.code == "US-CA"]
        self.revoked_order = ""
        for st in us:
            visit = self.place(car, st, self.revoke_ms + HOUR_MS, False)
            if visit is not None:
                visit.fate, visit.order_id = "REVOKED", f"{self.cfg.prefix}-revoked"
                self.visits.append(visit)
                self.revoked_order = visit.order_id
                break
        self.revoke_event = self.issuer.revoke(car.participant.credential_id,
                                               effective_at_ms=self.revoke_ms,
                                               reason_code="KEY_COMPROMISE",
                                               detail="simulated key compromise")
        at = self.revoke_ms + 20 * MINUTE_MS
        st = us[0]
        ident = sdk.identity(station_id=st.sid, vehicle=car.participant,
                             rate_authority_id=st.authority_id, jurisdiction="US-CA",
                             connector_id="c1")
        attempt = self.day.add(sdk.order(
            car.participant, "walk_up", order_id=f"{self.cfg.prefix}-revoked-walkup",
            ident=ident, terms=sdk.claim(energy_wh=5_000, start_ms=at, stop_ms=at + SLOT_MS,
                                         ceiling_rate_per_kwh="0.80", currency="USD"),
            arrived_at_ms=at, at_ms=at))
        self.refused[attempt.event_id] = "CREDENTIAL_REVOKED"
        self.count("revocation")

    def spike_session(self) -> None:
        """One session certain to be charging when the grid operator's price spike arrives."""
        self.spike_ms = self.day0 + 3 * self.cfg.hours // 4 * HOUR_MS
        car = next(v for v in self.vehicles if v.kind == "CAR" and v.home.code == "US-CA")
        for st in [s for s in self.stations if s.grid_zone == self.zone("caiso-sfbay")
                   and s.kind in ("DC_FAST", "AC_L2")]:
            visit = self.place(car, st, self.spike_ms - 30 * MINUTE_MS, False, slots_min=4)
            if visit is not None:
                visit.close_ms = max(visit.close_ms, min(visit.slot_stop_ms - 2 * MINUTE_MS,
                                                         self.spike_ms + 20 * MINUTE_MS))
                visit.pinned = True
                self.visits.append(visit)
                return

    def grid_spike(self) -> None:
        zone = self.zone("caiso-sfbay")
        event = sdk.grid_event(self.operator, grid_event_id=f"ge:{self.cfg.prefix}:spike",
                               grid_zone_id=zone, kind="PRICE_SIGNAL", from_ms=self.spike_ms,
                               until_ms=self.spike_ms + 2 * HOUR_MS, rate_per_kwh=SPIKE_RATE)
        self.spike_event = event
        active = [v for v in self.visits if v.fate == "SETTLE" and v.station.grid_zone == zone
                  and v.start_ms < self.spike_ms <= v.close_ms]
        for v in active:
            self.day.add(sdk.reprice_accepted(
                v.vehicle.participant, session_id=v.session_id, station_id=v.station.sid,
                grid_event_id=f"ge:{self.cfg.prefix}:spike",
                rate_per_kwh=SPIKE_RATE, at_ms=self.spike_ms + MINUTE_MS))
        self.grid_events[event.event_id] = tuple(sorted(v.session_id for v in active))
        self.count("grid_event")
        self.count("reprice", len(active))

    def dispute(self) -> None:
        """A meter dispute on a settled session, adjusted by the rate authority (the root)."""
        done = [v for v in self.visits if v.fate == "SETTLE" and v.evidence
                and v.station.jurisdiction.code == "US-CA"
                and v.station.kind in ("AC_L2", "DC_FAST", "MCS")
                and v.close_ms + 30 * MINUTE_MS < self.end]
        if not done:
            return
        v = min(done, key=lambda x: x.close_ms)
        at, dispute_id = v.close_ms + 20 * MINUTE_MS, f"{self.cfg.prefix}-dispute-1"
        where = {"session_id": v.session_id, "station_id": v.station.sid}
        self.day.add(sdk.dispute_opened(
            v.vehicle.participant, dispute_id=dispute_id, kind="METER_DISPUTE",
            claim="the meter over-read", settlement_id=f"stl:{v.session_id}",
            evidence_event_ids=[e.event_id for e in v.evidence[1:]], at_ms=at, **where))
        self.day.add(sdk.dispute_evidence(
            v.station.participant, dispute_id=dispute_id, evidence_event_ids=[
                v.evidence[0].event_id], statement="calibration certificate",
            at_ms=at + MINUTE_MS, **where))
        self.day.add(sdk.dispute_resolved(
            self.root, dispute_id=dispute_id, outcome="ADJUSTED", adjustment_amount="-1.00",
            currency="USD", reasoning="meter drift", at_ms=at + 5 * MINUTE_MS, **where))
        self.settlements.add(f"adj:{v.session_id}:{dispute_id}")
        self.count("dispute")

    # ---- the hostile fraction -------------------------------------------------------------------

    HOSTILE_KINDS = ("FORGED_SIGNATURE", "REPLAYED_EVENT_ID", "DOUBLE_BOOKING",
                     "METER_WENT_BACKWARDS")

    def hostile_events(self) -> None:
        sessions = [v for v in self.visits if v.fate == "SETTLE" and v.readings]
        booked = [v for v in self.visits if v.kind == "posted" and v.fate != "REFUSED"
                  and not v.station.order_at_ms and v.station.kind in ("AC_L2", "DC_FAST")]
        total = max(len(self.HOSTILE_KINDS),
                    round(self.cfg.hostile_fraction * (len(sessions) + len(self.walk_ups))))
        pools = {"FORGED_SIGNATURE": list(sessions), "METER_WENT_BACKWARDS": list(sessions),
                 "REPLAYED_EVENT_ID": list(booked), "DOUBLE_BOOKING": list(booked)}
        for pool in pools.values():
            self.rng.shuffle(pool)
        for k in range(total):
            kind = self.HOSTILE_KINDS[k % len(self.HOSTILE_KINDS)]
            if not pools[kind]:
                continue
            event = getattr(self, "_" + kind.lower())(pools[kind].pop(), k)
            if event is not None:
                self.hostile[event.event_id] = kind
                self.count(f"hostile_{kind.lower()}")

    def _forged_signature(self, v: Visit, k: int) -> SignedEvent:
        meter = v.station.meters[v.connector_id]
        impostor = Participant.seeded(meter.credential_id, meter.subject_id,
                                      secret=f"forger-{self.cfg.seed}")
        at, wh = v.readings[0]
        return self.day.add(sdk.meter_reading(
            impostor, session_id=v.session_id, station_id=v.station.sid,
            connector_id=v.connector_id, seq=len(v.readings) + 1, import_wh=wh + 50_000,
            at_ms=at + 20_000))

    def _meter_went_backwards(self, v: Visit, k: int) -> SignedEvent:
        at, wh = v.readings[0]
        return self.day.add(sdk.meter_reading(
            v.station.meters[v.connector_id], session_id=v.session_id, station_id=v.station.sid,
            connector_id=v.connector_id, seq=2, import_wh=wh - 250, at_ms=at + 30_000))

    def _replayed_event_id(self, v: Visit, k: int) -> SignedEvent:
        original = self.order_events[v.order_id]
        return self.day.add(original, at_ms=max(self.day0, v.slot_start_ms - 5 * MINUTE_MS))

    def _double_booking(self, v: Visit, k: int) -> SignedEvent | None:
        st = v.station
        rivals = [x for x in self.vehicles if x is not v.vehicle and x.kind == "CAR"
                  and (x.home.code == "GB-LDN") == (st.jurisdiction.code == "GB-LDN")]
        if not rivals:
            return None
        rival = self.rng.choice(rivals)
        ident = sdk.identity(station_id=st.sid, vehicle=rival.participant,
                             rate_authority_id=st.authority_id, jurisdiction=st.jurisdiction.code,
                             connector_id=v.connector_id)
        event = sdk.order(rival.participant, "posted", order_id=f"{self.cfg.prefix}-dbl-{k}",
                          ident=ident, terms=sdk.claim(
                              energy_wh=5_000, start_ms=v.slot_start_ms, stop_ms=v.slot_stop_ms,
                              ceiling_rate_per_kwh=st.jurisdiction.ceiling,
                              currency=st.jurisdiction.currency),
                          rate_per_kwh=st.jurisdiction.posted,
                          at_ms=self.setup_at + 40 * MINUTE_MS)
        self.late_bookings.append(event)
        self.booking_ids.append(f"{self.cfg.prefix}-dbl-{k}")
        return event

    # ---- phases ---------------------------------------------------------------------------------

    def heartbeats(self) -> None:
        for st in self.stations:
            for h in range(1, self.cfg.hours + 1):
                self.day.add(sdk.heartbeat(st.participant, self.day0 + h * HOUR_MS))

    def phases(self) -> tuple[Phase, ...]:
        out = [Phase("credentials and tariffs", self.setup_at, tuple(self.governance)),
               Phase("slot calendars and packs", self.setup_at + 20 * MINUTE_MS,
                     tuple(self.setup)),
               Phase("reservations", self.setup_at + 40 * MINUTE_MS,
                     tuple(self.bookings + self.late_bookings),
                     tuple(("decided", oid) for oid in self.booking_ids))]
        cuts = sorted({self.day0 + h * HOUR_MS for h in range(1, self.cfg.hours)}
                      | {self.spike_ms, self.revoke_ms})
        start = 0
        for stop in cuts + [2**62]:
            events = self.day.between(start, stop)
            barrier: tuple[tuple[str, str], ...] = ()
            if stop == self.spike_ms:
                events.append(self.spike_event)
                barrier = tuple(("reprice", sid)
                                for sid in self.grid_events[self.spike_event.event_id])
            elif stop == self.revoke_ms:
                events.append(self.revoke_event)
                if self.revoked_order:
                    barrier = (("reevaluated", f"res:{self.revoked_order}"),)
            until = min(stop, self.end + HOUR_MS)
            out.append(Phase(f"day {hhmm(until - self.day0)}", until, tuple(events), barrier))
            start = stop
        return tuple(out)

    def plan(self) -> MarketPlan:
        self.late_bookings: list[SignedEvent] = []
        self.booking_ids: list[str] = []
        self.credential_world()
        self.build_stations()
        self.mobile_legs_and_moves()
        self.build_vehicles()
        self.fault()
        self.revocation()
        self.plan_visits()
        self.spike_session()
        self.no_shows()
        for visit in self.visits:
            self.emit_visit(visit)
        self.grid_spike()
        self.dispute()
        self.hostile_events()
        self.heartbeats()
        return MarketPlan(self.cfg, self.root, self.phases(), dict(self.walk_ups),
                          dict(self.final_signatures), dict(self.grid_events),
                          dict(self.hostile), dict(self.refused),
                          frozenset(self.settlements), dict(sorted(self.caps.items())))


def hhmm(ms: int) -> str:
    return f"{ms // HOUR_MS:02d}:{ms % HOUR_MS // MINUTE_MS:02d}"


def plan_market(config: SimConfig) -> MarketPlan:
    """The whole simulated market as signed events in phases; pure in ``config``."""
    with deterministic_event_ids(config.secret):
        return Planner(config).plan()


def road_box(i: int) -> tuple[int, int, int, int]:
    lat0, lon0, step = 37_000_000, -122_000_000, 5_000
    return (lat0 + i * step, lon0 - 1_000, lat0 + (i + 1) * step - 1, lon0 + 1_000)
