"""``chargemesh demo``'s scenario, planned by the simulator's planner: a small scripted market
day, pure in its ``DemoConfig`` like ``plan_market`` is in ``SimConfig``.

Two jurisdictions with their own rate authorities, currencies and taxes (US-CA's is the root;
DE-BY's is recognised by it under reciprocity, so the root-issued vehicles charging there are
roaming), three stations with metered connectors, six vehicles, a grid operator running a
demand-response program in the US-CA zone. Five sessions: four booked ahead at the posted
price and one walk-up; a price spike while the US-CA sessions charge, re-priced and accepted;
close-outs countersigned by the vehicles and co-signed by the grid operator in its zone. Each
phase carries the sentence the demo says once its barrier has been observed.
"""

from __future__ import annotations

import dataclasses

from chargemesh.infra.sim.plan import (
    SLOT_MS,
    SPIKE_RATE,
    MarketPlan,
    Phase,
    Planner,
    SimConfig,
    Station,
    Visit,
)
from chargemesh.streams.envelope import deterministic_event_ids
from chargemesh.units import HOUR_MS, MINUTE_MS

JURISDICTION_CODES = ("US-CA", "DE-BY")
VEHICLES_PER_JURISDICTION = 3
# site, jurisdiction, station kind, connectors (id, power W, kind, bidirectional)
SITES = (
    ("sf-mission", "US-CA", "DC_FAST", [("c1", 150_000, "DC_FAST", False),
                                        ("c2", 11_000, "AC_L2", False)]),
    ("oakland-port", "US-CA", "MCS", [("c1", 1_000_000, "MCS", False)]),
    ("muenchen-ost", "DE-BY", "DC_FAST", [("c1", 300_000, "DC_FAST", False),
                                          ("c2", 22_000, "AC_L2", False)]),
)
# (home, n-th vehicle there), site, connector, kind, energy Wh, power W
DRIVES = (
    (("US-CA", 0), "sf-mission", "c1", "posted", 40_000, 120_000),
    (("US-CA", 1), "sf-mission", "c2", "posted", 6_000, 10_000),
    (("US-CA", 2), "oakland-port", "c1", "posted", 320_000, 900_000),
    (("DE-BY", 0), "muenchen-ost", "c1", "walk_up", 30_000, 150_000),
    (("DE-BY", 1), "muenchen-ost", "c2", "posted", 12_000, 20_000),
)
SESSION_SLOTS = 4  # each session's booking: one hour from the first hour of the day
PLUG_AFTER_MS = MINUTE_MS  # a booked vehicle plugs in a minute into its slot
WALK_UP_AFTER_MS = 5 * MINUTE_MS  # the walk-up arrives five minutes in
CHARGE_MS = 40 * MINUTE_MS
SPIKE_AFTER_MS = 21 * MINUTE_MS  # the grid price spike, while every session charges


@dataclasses.dataclass(frozen=True)
class DemoConfig(SimConfig):
    """The demo's fixed small world; ``tag`` ("", "-r1", ...) sets its ids apart per run."""

    stations: int = len(SITES)
    vehicles: int = VEHICLES_PER_JURISDICTION * len(JURISDICTION_CODES)
    hours: int = 24
    hostile_fraction: float = 0.0

    def checked(self) -> DemoConfig:
        return self  # the demo's sizes are its script's, below the simulator's minimums

    @property
    def secret(self) -> str:
        return f"demo{self.tag}"

    @property
    def prefix(self) -> str:
        return f"demo{self.tag}"

    @property
    def station_ids(self) -> tuple[str, ...]:
        return tuple(f"{self.prefix}-{site}" for site, _, _, _ in SITES)


class DemoPlanner(Planner):
    """The demo's world and day from the planner's parts (governance, stations, vehicles,
    orders, sessions, the grid spike), cut into narrated phases."""

    def plan(self) -> MarketPlan:
        self.govern(tuple(self.jurisdiction(code) for code in JURISDICTION_CODES))
        self.grid_operator((("caiso-sfbay", "DEMAND_RESPONSE"),))
        sites = {site: self.build_station(i, kind, self.jurisdiction(code), site, layout)
                 for i, (site, code, kind, layout) in enumerate(SITES)}
        self.stations = list(sites.values())
        for code in JURISDICTION_CODES:
            for _ in range(VEHICLES_PER_JURISDICTION):
                self.vehicles.append(self.build_vehicle(len(self.vehicles), "CAR",
                                                        self.jurisdiction(code)))
        self.plan_drives(sites)
        for visit in self.visits:
            self.emit_visit(visit)
        self.spike_ms = self.day0 + HOUR_MS + SPIKE_AFTER_MS
        self.grid_spike()
        return MarketPlan(self.cfg, self.root, self.phases(), dict(self.walk_ups),
                          dict(self.final_signatures), dict(self.grid_events), {}, {},
                          frozenset(self.settlements), dict(sorted(self.caps.items())))

    def plan_drives(self, sites: dict[str, Station]) -> None:
        slot = self.day0 + HOUR_MS
        for n, ((home, k), name, connector, kind, energy_wh, power_w) in enumerate(DRIVES):
            vehicle = [v for v in self.vehicles if v.home.code == home][k]
            arrived = slot + (WALK_UP_AFTER_MS if kind == "walk_up" else 0)
            plug = arrived + PLUG_AFTER_MS
            order_id = f"{self.cfg.prefix}-{kind.replace('_', '')}-{n}"
            self.visits.append(Visit(vehicle, sites[name], connector, order_id, kind, slot,
                                     slot + SESSION_SLOTS * SLOT_MS, plug, plug + CHARGE_MS,
                                     energy_wh, power_w, arrived_ms=arrived, pinned=True))

    def phases(self) -> tuple[Phase, ...]:
        walk_up = next(v for v in self.visits if v.kind == "walk_up")
        arrived = walk_up.arrived_ms + 1
        repriced = self.grid_events[self.spike_event.event_id]
        zone = self.zone("caiso-sfbay")
        grid_coupled = sum(v.station.grid_coupled for v in self.visits)
        return (
            Phase("credentials and tariffs", self.setup_at, tuple(self.governance),
                  narration=f"credentialed {len(self.stations)} stations, {len(self.vehicles)} "
                            f"vehicles, 1 grid operator under {len(self.authorities)} rate "
                            "authorities"),
            Phase("slot calendars", self.setup_at + 20 * MINUTE_MS, tuple(self.setup),
                  narration=f"published {len(self.setup)} slot calendars "
                            f"({SLOT_MS // MINUTE_MS}-minute slots, {self.cfg.hours} h)"),
            Phase("reservations", self.setup_at + 40 * MINUTE_MS, tuple(self.bookings),
                  tuple(("reserved", order) for order in self.booking_ids),
                  f"{len(self.bookings)} reservations on the slot ledgers (posted-price "
                  "acceptances)"),
            Phase("walk-up arrival", arrived, tuple(self.day.between(0, arrived)),
                  (("reserved", walk_up.order_id),), "1 walk-up authorised on arrival"),
            Phase("charging", self.spike_ms,
                  tuple(self.day.between(arrived, self.spike_ms)) + (self.spike_event,),
                  tuple(("reprice", session) for session in repriced),
                  f"grid price spike in {zone}: {len(repriced)} active sessions re-priced to "
                  f"{SPIKE_RATE} USD/kWh; their vehicles accept (below their ceilings)"),
            Phase("close-out and settlement", self.end,
                  tuple(self.day.between(self.spike_ms, 2**62)),
                  tuple(("final", settlement) for settlement in sorted(self.settlements)),
                  f"{len(self.settlements)} settlements final: each vehicle countersigned its "
                  f"close-out, the grid operator co-signed the {grid_coupled} in its "
                  "demand-response zone"),
        )


def plan_demo(config: DemoConfig) -> MarketPlan:
    """The demo's market day as signed events in narrated phases; pure in ``config``."""
    with deterministic_event_ids(config.secret):
        return DemoPlanner(config).plan()
