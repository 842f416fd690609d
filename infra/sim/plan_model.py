"""The simulator's market model: its limits, ``SimConfig``, jurisdictions, the plan's phases and
the world's stations, vehicles, visits and timeline (plain data, no planning)."""

from __future__ import annotations

import dataclasses

from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant
from chargemesh.units import HOUR_MS, MINUTE_MS

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
FINALITY_WINDOW_MS = HOUR_MS  # the sim's rules: an unsigned settlement expires within the day
REPRICE_RESPONSE_MS = 5 * MINUTE_MS  # the rules' default deadline to answer a re-price
CURTAILMENT_LIMIT_W = 5_000_000  # the operator's night curtailment: above every connector
V2G_CLEARING = "0.183"


@dataclasses.dataclass(frozen=True)
class Phase:
    """Events to publish together, then ``barrier`` expectations to wait for before going on."""

    label: str
    until_ms: int  # simulated (station) time this phase reaches
    events: tuple[SignedEvent, ...]
    # ("decided" | "reserved", order id) | ("reprice", session id) | ("reevaluated", subject id)
    # | ("final", settlement id)
    barrier: tuple[tuple[str, str], ...] = ()
    narration: str = ""  # said once the barrier is met (the demo's steps)


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
    market_rule: str = ""  # "" | IGNORE_REPRICE | EXPIRE | REVERSE (issue 16's rules in the day)

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


def hhmm(ms: int) -> str:
    return f"{ms // HOUR_MS:02d}:{ms % HOUR_MS // MINUTE_MS:02d}"


def road_box(i: int) -> tuple[int, int, int, int]:
    lat0, lon0, step = 37_000_000, -122_000_000, 5_000
    return (lat0 + i * step, lon0 - 1_000, lat0 + (i + 1) * step - 1, lon0 + 1_000)
