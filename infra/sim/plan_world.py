"""The simulator's world planning: credentials and tariffs, stations and vehicles, and the
visits of the day (where and when each vehicle charges)."""

from __future__ import annotations

import random

from chargemesh.infra.sim.plan_model import (
    DEPOT_SLOT_MS,
    DEST_SLOT_MS,
    DIURNAL,
    FINALITY_WINDOW_MS,
    FLEET_ID,
    HOUR_MS,
    JURISDICTIONS,
    Jurisdiction,
    MINUTE_MS,
    PLACEMENT_TRIES_MAX,
    PASS_MS,
    ROAD_POWER_W,
    ROAD_SEGMENTS,
    ROAMING_PERCENT,
    SESSION_SLOTS_MAX,
    SLOT_MS,
    SimConfig,
    Station,
    Timeline,
    V2G_ZONE,
    VISITS_PER_VEHICLE_MAX,
    Vehicle,
    Visit,
    WALK_UP_PERCENT,
    road_box,
)
from chargemesh.infra.stack.bootstrap import ALL_DELEGATED_ROLES, ROOT_ROLES
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk import wireless
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant
from chargemesh.units import SECOND_MS

# A foreign rate authority is recognised to file its rates and credential its own vehicles (GB-LDN
# delegates a VEHICLE issuer): no more, since a recognition bounds what it may delegate.
FOREIGN_AUTHORITY_ROLES = ["AUTHORITY", "RATE_AUTHORITY", "VEHICLE"]


class WorldPlanner:
    """The planner's world: governance, stations, vehicles and where and when they charge
    (one instance per plan; every choice drawn from ``rng``). ``Planner`` adds the events."""

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
        self.late_bookings: list[SignedEvent] = []  # the hostile double bookings
        self.booking_ids: list[str] = []  # orders of bookings and late_bookings
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
        """The simulated market's governance: three jurisdictions (GB-LDN with its own vehicle
        issuer), a swap tariff, and the grid operator's demand-response and V2G programs."""
        self.govern(JURISDICTIONS)
        at, gov = self.setup_at, self.governance
        gb = self.authorities["GB-LDN"]
        gov.append(gb.delegate_issuer(self.gb_issuer, ["VEHICLE"], ["GB-LDN"], at_ms=at))
        gov.append(self.tariff(self.jurisdiction("US-CA"), self.swap_tariff, swap_fee="5.00"))
        self.grid_operator((("caiso-sfbay", "DEMAND_RESPONSE"), (V2G_ZONE, "V2G")))

    def govern(self, jurisdictions: tuple[Jurisdiction, ...]) -> None:
        """The root authority (the first jurisdiction's rate authority) and its issuer; for every
        other jurisdiction a rate authority the root recognises (with reciprocity where agreed);
        each jurisdiction's tariff and rules."""
        at, gov = self.setup_at, self.governance
        codes = [j.code for j in jurisdictions]
        gov.append(self.root.declare_authority("simulated root authority", codes[0], ROOT_ROLES,
                                               "USD", at_ms=at, jurisdictions=codes[1:]))
        gov.append(self.root.delegate_issuer(self.issuer, ALL_DELEGATED_ROLES, codes, at_ms=at))
        for j in jurisdictions:
            authority = self.root if j.code == "US-CA" else self.participant(
                f"authority:{self.cfg.prefix}:{j.code.lower()}")
            self.authorities[j.code] = authority
            if authority is not self.root:  # recognised first: it may then declare itself
                gov.append(self.root.recognise_authority(
                    authority, j.code, FOREIGN_AUTHORITY_ROLES, at_ms=at))
                gov.append(authority.declare_authority(
                    f"rate authority {j.code}", j.code, FOREIGN_AUTHORITY_ROLES,
                    j.currency, at_ms=at))
                if j.reciprocity:
                    gov.append(sdk.reciprocity_agreed(
                        self.root, authority, agreement_id=f"recip:{self.cfg.prefix}:{j.code}",
                        at_ms=at))
                    self.count("roaming_reciprocity_agreements")
            gov.append(self.tariff(j, f"tariff:{self.cfg.prefix}:{j.code}"))
            gov.append(sdk.rules_published(authority, rules_version=self.rules_of(j),
                                           jurisdiction=j.code, at_ms=at,
                                           finality_window_ms=FINALITY_WINDOW_MS))

    def grid_operator(self, programs: tuple[tuple[str, str], ...]) -> None:
        """The grid operator, credentialed in US-CA; each zone of its ``(zone name, program)``s
        registered to it by the US-CA authority, then its program declared."""
        self.governance.append(self.issuer.issue_credential(
            self.operator, ["GRID_OPERATOR"], "US-CA", at_ms=self.setup_at))
        for name, program in programs:
            self.governance.append(sdk.grid_zone_registered(
                self.authorities["US-CA"], grid_zone_id=self.zone(name), jurisdiction="US-CA",
                operator_ids=[self.operator.credential_id], at_ms=self.setup_at))
            self.governance.append(sdk.grid_program(
                self.operator, grid_zone_id=self.zone(name), program=program,
                operator_ids=[self.operator.credential_id], at_ms=self.setup_at))

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

    def build_station(self, i: int, kind: str, j: Jurisdiction, site: str = "",
                      layout: list[tuple[str, int, str, bool]] | None = None) -> Station:
        """A credentialed station of ``kind``, its meters and slot calendar; ``site`` names it
        and ``layout`` fixes its connectors (else drawn for the kind)."""
        sid = f"{self.cfg.prefix}-{site or kind.lower().replace('_', '') + f'-{i}'}"
        connectors, slot_ms, zone = (layout, SLOT_MS, "") if layout else self._connectors(kind)
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
                left_at_ms=left, meter_seconds=PASS_MS // SECOND_MS,
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
