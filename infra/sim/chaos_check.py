"""The chaos suite's pure and observing parts: its constants, the seeded fault schedule, what a
run leaves behind, reading topics and offsets, and the comparison with the fault-free run."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable
from typing import Any

from chargemesh.infra.config import Settings
from chargemesh.infra.sim.plan import MarketPlan, SimConfig
from chargemesh.infra.stack import supervisor as processes
from chargemesh.infra.stack.embedded import CLICKHOUSE, STATE_FILE
from chargemesh.infra.stack.worker import Record, TopicReader
from chargemesh.sinks.clickhouse_sink import GROUP_ID_DEFAULT, SINK_TOPICS
from chargemesh.streams.envelope import SignedEvent, open_envelope, open_payload
from chargemesh.streams.topics import (
    ADMITTED,
    DECISIONS,
    GOVERNANCE,
    GRID,
    MARKET,
    SETTLEMENTS,
)
from confluent_kafka import Consumer, TopicPartition

SCALES: dict[str, dict[str, int]] = {
    "small": {"stations": 10, "vehicles": 20, "hours": 4},
    "default": {"stations": SimConfig.stations, "vehicles": SimConfig.vehicles,
                "hours": SimConfig.hours},
}
FAULT_KINDS = ("worker_kill", "clickhouse_outage", "rebalance_kill")
# Where in the run (fraction of the market's events published) faults land.
FAULT_AT_MIN, FAULT_AT_MAX = 0.03, 0.9
OUTAGE_HOLD_S = (3.0, 8.0)  # how long ClickHouse stays down (seeded within)
SINK_FAILURE_WAIT_S_MAX = 30.0  # for the sink to notice the outage (if it has work pending)
CLICKHOUSE_GONE_WAIT_S_MAX = 20.0
QUIET_WAIT_S_MAX = 240.0
QUIET_POLL_S = 1.0
READ_WAIT_S_MAX = 60.0
SINK_STOP_S_MAX = 30.0
# A killed worker's partitions wait this long (plus 2 s) before anyone rejoins.
SESSION_TIMEOUT_MS = 6000
HOSTILE_REASON = {"FORGED_SIGNATURE": "BAD_SIGNATURE", "REPLAYED_EVENT_ID": "REPLAYED_EVENT_ID",
                  "DOUBLE_BOOKING": "SLOT_TAKEN", "METER_WENT_BACKWARDS": "METER_WENT_BACKWARDS"}
# ClickHouse content compared with the fault-free run: only columns that are a function of the
# events (no ingestion times, Kafka offsets or row versions).
TABLE_QUERIES = {
    "settlements": "SELECT settlement_id, session_id, kind, currency, adjusts_settlement_id, "
                   "toString(total_amount), energy_import_wh, energy_export_wh, line_count, "
                   "event_id FROM settlements FINAL",
    "settlement_lines": "SELECT settlement_id, line_no, kind, quantity_wh, "
                        "toString(unit_rate_per_kwh), toString(amount) FROM settlement_lines FINAL",
    "settlement_finality": "SELECT settlement_id, event_id FROM settlement_finality FINAL",
    "slot_ledger": "SELECT station_id, reservation_id, connector_id, order_id, slot_start_at_ms, "
                   "slot_stop_at_ms, status, reason_code, decided_by_event_id "
                   "FROM slot_ledger FINAL",
    "ledger_decisions": "SELECT event_id, decision_type FROM ledger_decisions FINAL",
    "events": "SELECT event_id, event_type, event_hash FROM events FINAL",
    "rejections": "SELECT DISTINCT event_id, reason_code FROM rejections FINAL",
    "meter_readings_valid": "SELECT event_id FROM meter_readings_valid",
}
# Each table's ReplacingMergeTree key: after OPTIMIZE FINAL, count() must equal its uniqExact.
TABLE_KEYS = {
    "settlements": "settlement_id", "settlement_lines": "settlement_id, line_no",
    "settlement_finality": "settlement_id", "slot_ledger": "station_id, reservation_id",
    "ledger_decisions": "station_id, occurred_at_ms, event_id", "events": "event_type, event_id",
    "rejections": "reason_code, rejection_id",
}
COMPARED_TOPICS = (SETTLEMENTS.name, DECISIONS.name, ADMITTED.name)
INPUT_TOPICS = (GOVERNANCE.name, MARKET.name, GRID.name)

Say = Callable[[str], None]


# ---- the fault schedule (pure, seeded) -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str  # worker_kill | clickhouse_outage | second_worker | rebalance_kill
    at: float  # fraction of the market's events published when it fires
    hold_s: float = 0.0  # clickhouse_outage: how long the server stays down
    signal: str = "SIGKILL"  # clickhouse_outage: how the server is stopped
    target: int = 0  # rebalance_kill: which of the two workers dies


def fault_schedule(seed: int, run: int, kills: int, outages: int = 1,
                   rebalances: int = 1) -> tuple[Fault, ...]:
    """The faults of run ``run`` of ``seed``, in firing order; pure in its arguments."""
    rng = random.Random(f"chaos-{seed}-{run}")

    def point() -> float:
        return round(rng.uniform(FAULT_AT_MIN, FAULT_AT_MAX), 3)

    faults = [Fault("worker_kill", point()) for _ in range(kills)]
    faults += [Fault("clickhouse_outage", point(), round(rng.uniform(*OUTAGE_HOLD_S), 1),
                     rng.choice(("SIGTERM", "SIGKILL"))) for _ in range(outages)]
    for _ in range(rebalances):
        start, kill = sorted((point(), point()))
        faults += [Fault("second_worker", start),
                   Fault("rebalance_kill", max(kill, start + 0.01), target=rng.randrange(2))]
    return tuple(sorted(faults, key=lambda f: (f.at, f.kind)))


# ---- what a run leaves behind ----------------------------------------------------------------


@dataclasses.dataclass
class Observed:
    """The outcome of one run, as its topics and ClickHouse hold it."""

    topics: dict[str, dict[str, list[bytes]]]  # topic -> event id -> every copy's bytes
    admitted_sources: dict[str, set[bytes]]  # event id -> source offsets it was admitted from
    rejected: set[tuple[str, str]]  # (event id, reason) on the rejections topic
    tables: dict[str, set[tuple[Any, ...]]]
    doubled: dict[str, int]  # table -> rows beyond one per key after OPTIMIZE FINAL
    outcomes: int  # what the watcher saw (decisions, finals, rejections, ...)
    events_published: int


@dataclasses.dataclass
class FaultRecord:
    kind: str
    planned_at: float
    fired_at: float  # fraction of the fault-free run's outcomes seen when it fired
    detail: str = ""
    violations: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RunResult:
    run: int
    seed: int
    faults: list[FaultRecord]
    events_checked: int
    records_checked: int
    lost: int
    extra: int
    differing: int
    duplicated: int
    redelivered: int
    forged_admitted: int
    hostile: int
    hostile_unrejected: int
    commits_during_outage: int
    wall_s: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["problems"] = self.problems[:50]
        return out


# ---- Kafka helpers ---------------------------------------------------------------------------


def _partitions(consumer: Consumer, topic: str) -> list[TopicPartition]:
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    return [TopicPartition(topic, p) for p in sorted(meta.partitions)]


def offsets(settings: Settings, group: str,
            topics: tuple[str, ...]) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    """(high watermarks, the group's committed offsets; -1 for none) of every partition."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group,
                         "enable.auto.commit": False})
    try:
        parts = [tp for t in topics for tp in _partitions(consumer, t)]
        highs = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, 10)[1]
                 for tp in parts}
        done = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(parts, 10)}
        return highs, done
    finally:
        consumer.close()


def read_topic(settings: Settings, topic: str) -> list[Record]:
    """Every record of ``topic`` up to its current end."""
    reader = TopicReader(settings, topic)
    try:
        highs = {(tp.partition): reader.consumer.get_watermark_offsets(tp, 10)[1]
                 for tp in _partitions(reader.consumer, topic)}
        deadline = time.monotonic() + READ_WAIT_S_MAX
        while time.monotonic() < deadline:
            reached: dict[int, int] = {}
            for r in reader.records:
                reached[r.partition] = max(reached.get(r.partition, -1), r.offset + 1)
            if all(reached.get(p, 0) >= h for p, h in highs.items()):
                break
            reader.poll(0.3)
        return list(reader.records)
    finally:
        reader.close()


def wait_quiet(settings: Settings, say: Say) -> None:
    """Until the workers consumed every input and the sink committed every record of its topics,
    with nothing new appearing between two looks."""
    deadline = time.monotonic() + QUIET_WAIT_S_MAX
    from chargemesh.processors.runtime.app import APP_ID

    previous: dict[tuple[str, int], int] | None = None
    while time.monotonic() < deadline:
        highs, sunk = offsets(settings, GROUP_ID_DEFAULT, SINK_TOPICS)
        in_highs, consumed = offsets(settings, APP_ID, INPUT_TOPICS)
        caught_up = all(sunk.get(k, -1) >= h for k, h in highs.items() if h > 0) and all(
            consumed.get(k, -1) >= h for k, h in in_highs.items() if h > 0)
        if caught_up and previous == highs:
            return
        previous = highs if caught_up else None
        time.sleep(QUIET_POLL_S)
    say("warning: the stack did not go quiet in time; comparing what is there")


def clickhouse_record(settings: Settings) -> processes.ProcessRecord:
    raw = json.loads((settings.state_dir / STATE_FILE).read_text())
    return processes.ProcessRecord.from_json(raw["components"][CLICKHOUSE])


# ---- comparing a run with the fault-free one -----------------------------------------------------


def compare(plan: MarketPlan, base: Observed, got: Observed) -> dict[str, Any]:
    """Counts and the first problems: lost, invented, differing, doubled, hostile admitted."""
    problems: list[str] = []
    lost = extra = differing = redelivered = records = 0
    for topic in COMPARED_TOPICS:
        want, have = base.topics[topic], got.topics[topic]
        missing, invented = set(want) - set(have), set(have) - set(want)
        lost += len(missing)
        extra += len(invented)
        problems += [f"{topic}: lost {e}" for e in sorted(missing)[:5]]
        problems += [f"{topic}: not in the fault-free run {e}" for e in sorted(invented)[:5]]
        for event_id, copies in have.items():
            records += len(copies)
            redelivered += len(copies) - 1
            if event_id in want and any(c != want[event_id][0] for c in copies):
                differing += 1
                problems.append(f"{topic}: {event_id} differs from the fault-free record"
                                + _payload_difference(want[event_id][0], copies[0]))
    lost_rej, extra_rej = base.rejected - got.rejected, got.rejected - base.rejected
    lost += len(lost_rej)
    extra += len(extra_rej)
    problems += [f"rejection lost {r}" for r in sorted(lost_rej)[:5]]
    problems += [f"rejection not in the fault-free run {r}" for r in sorted(extra_rej)[:5]]
    for table, rows in base.tables.items():
        gone, new = rows - got.tables[table], got.tables[table] - rows
        lost += len(gone)
        extra += len(new)
        problems += [f"ClickHouse {table}: missing {r}" for r in sorted(gone, key=str)[:3]]
        problems += [f"ClickHouse {table}: unexpected {r}" for r in sorted(new, key=str)[:3]]
        records += len(got.tables[table])
    duplicated = sum(got.doubled.values())
    problems += [f"ClickHouse {t}: {n} row(s) doubled" for t, n in got.doubled.items() if n]
    for event_id, copies in got.topics[SETTLEMENTS.name].items():
        if len(set(copies)) > 1:
            duplicated += 1
            problems.append(f"settlement record {event_id} exists with different bytes")
    forged, unrejected = hostile_check(plan, got)
    problems += forged + unrejected
    return {"lost": lost, "extra": extra, "differing": differing, "duplicated": duplicated,
            "redelivered": redelivered, "records": records, "forged_admitted": len(forged),
            "hostile_unrejected": len(unrejected), "problems": problems}


def hostile_check(plan: MarketPlan, got: Observed) -> tuple[list[str], list[str]]:
    """(hostile events admitted or with an effect, hostile/refused events not rejected)."""
    events = {e.event_id: e for e in plan.events()}
    admitted = got.topics[ADMITTED.name]
    ch_events = {row[0] for row in got.tables["events"]}
    ch_rejected = got.tables["rejections"]
    valid_readings = {row[0] for row in got.tables["meter_readings_valid"]}
    reserved_orders = {row[3] for row in got.tables["slot_ledger"]}
    forged: list[str] = []
    unrejected: list[str] = []
    for event_id, kind in sorted(plan.hostile.items()):
        reason = HOSTILE_REASON[kind]
        if (event_id, reason) not in got.rejected or (event_id, reason) not in ch_rejected:
            unrejected.append(f"hostile {kind} {event_id} not rejected with {reason}")
        if kind == "FORGED_SIGNATURE" and (event_id in admitted or event_id in ch_events):
            forged.append(f"forged {event_id} admitted")
        elif kind == "METER_WENT_BACKWARDS" and event_id in valid_readings:
            forged.append(f"backwards reading {event_id} counted as valid")
        elif kind == "DOUBLE_BOOKING":
            order_id = _order_id(events[event_id])
            if order_id in reserved_orders:
                forged.append(f"double booking {order_id} reserved a slot")
        elif kind == "REPLAYED_EVENT_ID" and len(got.admitted_sources.get(event_id, ())) > 1:
            forged.append(f"replayed {event_id} admitted from "
                          f"{sorted(got.admitted_sources[event_id])}")
    for event_id, reason in sorted(plan.refused.items()):
        if (event_id, reason) not in got.rejected:
            unrejected.append(f"refused {event_id} not rejected with {reason}")
    return forged, unrejected


def _order_id(event: SignedEvent) -> str:
    return str(open_payload(event).get("order_id", ""))


def _payload_difference(want: bytes, have: bytes) -> str:
    """Which payload fields of two records with one id differ (for the problem's line)."""
    try:
        a, b = open_payload(open_envelope(want)), open_payload(open_envelope(have))
    except Exception:  # noqa: BLE001 - a record that does not open is shown as bytes only
        return ""
    fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    shown = ", ".join(f"{k}: {str(a.get(k))[:60]} != {str(b.get(k))[:60]}" for k in fields[:4])
    return f" ({shown})" if shown else " (envelope only)"
