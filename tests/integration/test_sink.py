"""The ClickHouse sink on the real broker and the real ClickHouse 18.16.

A station's decisions, an input the processors rejected and one garbage message go through the
sink; ClickHouse then holds each of them once, the slot ledger shows each reservation's latest
state, and delivering everything again (re-published, and re-read by a fresh group) adds nothing.
A ClickHouse outage stalls the sink without a crash or a commit, and after the restart every
event arrives exactly once.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from clickhouse_driver import errors as ch_errors
from confluent_kafka import OFFSET_INVALID, Consumer, Message, Producer, TopicPartition

from chargemesh.infra.config import Settings
from chargemesh.infra.stack.supervisor import ProcessRecord, pid_alive
from chargemesh.infra.stack.embedded import CLICKHOUSE, EmbeddedStack
from chargemesh.schemas.codec import catalog
from chargemesh.sinks.clickhouse_sink import ClickHouseSink, ClickHouseUnavailableError
from chargemesh.sinks.migrate import clickhouse_client
from chargemesh.sinks.projections.core import SINK_UNDECODABLE, sink_rejection_id
from chargemesh.streams.envelope import REJECTED_SCHEMA, SignedEvent, seal
from chargemesh.streams.keys import Signer
from chargemesh.streams.topics import DECISIONS, MARKET, REJECTIONS
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.conftest import external_stack

pytestmark = pytest.mark.integration

LEDGER = "chargemesh.ledger.v1."
BASE_MS = 1_790_000_000_000
FLUSH_TIMEOUT_S = 10.0
# The sink stops once nothing arrived for this long after its last message or group join.
IDLE_EXIT_S = 4.0
OUTAGE_CYCLES = 2
OUTAGE_RUN_S = 5.0
OUTAGE_EVENTS = 40
JOIN_CYCLES_MAX = 30
GONE_POLLS_MAX = 100
GONE_POLL_S = 0.1
RUN_JOIN_TIMEOUT_S = 60.0


# ---- making events ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Station:
    """One station's decisions, signed by the processor, with ids no other test uses."""

    station_id: str
    signer: Signer

    @classmethod
    def fresh(cls) -> Station:
        return cls(f"station-{uuid.uuid4()}", Signer.generate("mesh:processor"))

    def decide(self, kind: str, payload: dict[str, Any], at_ms: int) -> SignedEvent:
        return seal(LEDGER + kind, {"station_id": self.station_id, **payload},
                    author=self.signer, subject_key=self.station_id, occurred_at_ms=at_ms)

    def reserved(self, reservation_id: str, connector_id: str, at_ms: int) -> SignedEvent:
        return self.decide("SlotReserved", {
            "reservation_id": reservation_id, "order_id": f"order-{reservation_id}",
            "vehicle_credential_id": "vehicle-1", "connector_id": connector_id,
            "slot_start_at_ms": BASE_MS + HOUR_MS, "slot_stop_at_ms": BASE_MS + 2 * HOUR_MS,
            "rate_per_kwh": Decimal("0.350000"), "energy_wh": 22_000,
            "rules_version": "rules-1", "walk_up": False,
        }, at_ms)

    def released(self, reservation_id: str, connector_id: str, at_ms: int) -> SignedEvent:
        return self.decide("SlotReleased", {
            "reservation_id": reservation_id, "connector_id": connector_id,
            "slot_start_at_ms": BASE_MS + HOUR_MS, "slot_stop_at_ms": BASE_MS + 2 * HOUR_MS,
            "reason_code": "CANCELLED_BY_VEHICLE", "detail": "",
        }, at_ms)

    def reallocated(self, reservation_id: str, to_connector_id: str, at_ms: int) -> SignedEvent:
        return self.decide("SlotReallocated", {
            "reservation_id": reservation_id, "from_connector_id": "c1",
            "from_slot_start_at_ms": BASE_MS + HOUR_MS, "to_connector_id": to_connector_id,
            "to_slot_start_at_ms": BASE_MS + HOUR_MS + 30 * MINUTE_MS,
            "to_slot_stop_at_ms": BASE_MS + 2 * HOUR_MS + 30 * MINUTE_MS,
            "reason_code": "CAPACITY_LOST", "rules_version": "rules-1",
        }, at_ms)

    def order_rejected(self, order_id: str, at_ms: int) -> SignedEvent:
        return self.decide("OrderRejected", {
            "order_id": order_id, "vehicle_credential_id": "vehicle-2",
            "reason_code": "SLOT_TAKEN", "detail": "every capable connector is booked",
        }, at_ms)

    def reevaluated(self, at_ms: int) -> SignedEvent:
        """A decision type no projector handles yet: it only gets its ``events`` row."""
        return self.decide("CredentialReevaluated", {
            "revoked_credential_id": "vehicle-1", "subject_kind": "reservation",
            "subject_id": "r-x", "outcome": "KEPT", "revoked_at_ms": at_ms,
        }, at_ms)


def rejection_bytes(rejection_id: str) -> bytes:
    record = {
        "rejection_id": rejection_id, "source_topic": MARKET.name, "source_partition": 0,
        "source_offset": 7, "reason_code": "BAD_SIGNATURE", "detail": "signature does not verify",
        "event_id": str(uuid.uuid4()), "event_type": "chargemesh.orders.v1.BidPlaced",
        "author_credential_id": "vehicle-9", "rejected_at_ms": BASE_MS,
        "raw_bytes": b"\xc3\x01tampered",
    }
    return catalog().single_object_encode(REJECTED_SCHEMA, record)


# ---- Kafka and ClickHouse helpers ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Placed:
    topic: str
    partition: int
    offset: int


def produce(settings: Settings, messages: list[tuple[str, str, bytes]]) -> list[Placed]:
    """Send (topic, key, value) messages; returns where each one landed, in order."""
    placed: dict[int, Placed] = {}
    producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True})

    def delivered(index: int) -> Callable[[Any, Message], None]:
        def report(err: Any, msg: Message) -> None:
            assert err is None, err
            placed[index] = Placed(str(msg.topic()), int(msg.partition() or 0),
                                   int(msg.offset() or 0))
        return report

    for index, (topic, key, value) in enumerate(messages):
        producer.produce(topic, key=key.encode(), value=value, on_delivery=delivered(index))
    assert producer.flush(FLUSH_TIMEOUT_S) == 0
    return [placed[index] for index in range(len(messages))]


def committed(settings: Settings, group_id: str, places: list[Placed]) -> dict[Placed, int]:
    """The group's committed offset (OFFSET_INVALID = none) for the partition of each place."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group_id})
    try:
        asked = [TopicPartition(p.topic, p.partition) for p in places]
        answer = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(asked, 10)}
    finally:
        consumer.close()
    return {p: answer[(p.topic, p.partition)] for p in places}


def drain(settings: Settings, group_id: str) -> int:
    with ClickHouseSink(settings, group_id=group_id) as sink:
        return sink.run(idle_exit_s=IDLE_EXIT_S)


def query(settings: Settings, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    client = clickhouse_client(settings)
    try:
        return list(client.execute(sql, params))
    finally:
        client.disconnect()


def new_group() -> str:
    return f"test-sink-{uuid.uuid4()}"


# ---- the story: decisions, a rejection and garbage, delivered twice --------------------------


@dataclasses.dataclass(frozen=True)
class Scenario:
    station: Station
    events: list[SignedEvent]
    rejection_id: str
    messages: list[tuple[str, str, bytes]]


@pytest.fixture
def scenario() -> Scenario:
    station = Station.fresh()
    released_id, moved_id = f"res-{uuid.uuid4()}", f"res-{uuid.uuid4()}"
    events = [
        station.reserved(released_id, "c1", BASE_MS),
        station.reserved(moved_id, "c1", BASE_MS),
        station.order_rejected(f"order-{uuid.uuid4()}", BASE_MS + MINUTE_MS),
        station.reallocated(moved_id, "c2", BASE_MS + 2 * MINUTE_MS),
        station.released(released_id, "c1", BASE_MS + 3 * MINUTE_MS),
        station.reevaluated(BASE_MS + 4 * MINUTE_MS),
    ]
    rejection_id = str(uuid.uuid4())
    messages = [(DECISIONS.name, station.station_id, event.encode()) for event in events]
    messages.append((REJECTIONS.name, MARKET.name, rejection_bytes(rejection_id)))
    messages.append((DECISIONS.name, station.station_id, b"\x00not an envelope"))
    return Scenario(station, events, rejection_id, messages)


def counts_of(settings: Settings, scenario: Scenario, garbage: list[Placed]) -> dict[str, int]:
    # A tuple renders as (a, b); a list renders as an Array, which 18.16 refuses after IN.
    ids = tuple(event.event_id for event in scenario.events)
    station = {"s": scenario.station.station_id}
    undecodable = [sink_rejection_id(p.topic, p.partition, p.offset) for p in garbage]
    return {
        "events": query(settings, "SELECT count() FROM events FINAL WHERE event_id IN %(ids)s",
                        {"ids": ids})[0][0],
        "slot_ledger": query(settings, "SELECT count() FROM slot_ledger FINAL "
                             "WHERE station_id = %(s)s", station)[0][0],
        "ledger_decisions": query(settings, "SELECT count() FROM ledger_decisions FINAL "
                                  "WHERE station_id = %(s)s", station)[0][0],
        "rejections": query(settings, "SELECT count() FROM rejections FINAL "
                            "WHERE rejection_id IN %(ids)s",
                            {"ids": (scenario.rejection_id, *undecodable)})[0][0],
    }


def test_sink_writes_each_event_once_and_the_latest_slot_state(
    stack_settings: Settings, scenario: Scenario
) -> None:
    group = new_group()
    placed = produce(stack_settings, scenario.messages)
    garbage = placed[-1]
    assert drain(stack_settings, group) >= len(scenario.messages)

    first = counts_of(stack_settings, scenario, [garbage])
    assert first == {"events": 6, "slot_ledger": 2, "ledger_decisions": 5, "rejections": 2}
    station = {"s": scenario.station.station_id}
    states = query(stack_settings, "SELECT reservation_id, status, connector_id, "
                   "slot_start_at_ms, reason_code FROM slot_ledger FINAL "
                   "WHERE station_id = %(s)s ORDER BY status", station)
    assert [row[1:] for row in states] == [
        ("REALLOCATED", "c2", BASE_MS + HOUR_MS + 30 * MINUTE_MS, "CAPACITY_LOST"),
        ("RELEASED", "c1", BASE_MS + HOUR_MS, "CANCELLED_BY_VEHICLE"),
    ]
    kinds = query(stack_settings, "SELECT decision_type, count() FROM ledger_decisions FINAL "
                  "WHERE station_id = %(s)s GROUP BY decision_type ORDER BY decision_type",
                  station)
    assert kinds == [("OrderRejected", 1), ("SlotReallocated", 1), ("SlotReleased", 1),
                     ("SlotReserved", 2)]
    bad = query(stack_settings, "SELECT reason_code, source_offset, raw_bytes FROM rejections "
                "FINAL WHERE rejection_id = %(id)s",
                {"id": sink_rejection_id(garbage.topic, garbage.partition, garbage.offset)})
    assert bad == [(SINK_UNDECODABLE, garbage.offset, b"\x00not an envelope".decode())]
    offsets = committed(stack_settings, group, placed)
    assert all(offsets[p] > p.offset for p in placed), "the sink committed what it inserted"

    # Delivered again: re-published (new offsets) and re-read from the start by a fresh group.
    again = produce(stack_settings, scenario.messages[:-1])
    assert drain(stack_settings, group) >= len(again)
    assert drain(stack_settings, new_group()) >= len(scenario.messages) + len(again)
    assert counts_of(stack_settings, scenario, [garbage]) == first


def test_utilisation_view_splits_live_slots_over_hours(
    stack_settings: Settings, scenario: Scenario
) -> None:
    produce(stack_settings, scenario.messages)
    drain(stack_settings, new_group())
    rows = query(stack_settings, "SELECT connector_id, toUnixTimestamp(hour_start) * 1000, "
                 "reservations, reserved_ms, energy_wh FROM slot_utilisation_hourly "
                 "WHERE station_id = %(s)s ORDER BY connector_id, hour_start",
                 {"s": scenario.station.station_id})
    first_hour_ms = (BASE_MS + HOUR_MS) // HOUR_MS * HOUR_MS
    slot_start_ms = BASE_MS + HOUR_MS + 30 * MINUTE_MS
    in_first_ms = first_hour_ms + HOUR_MS - slot_start_ms
    # Only the reallocated reservation is live (the other was released): one hour's worth of
    # slot, split over the hours it spans, with its 22 kWh pro rata.
    assert [row[0] for row in rows] == ["c2"] * len(rows)
    assert sum(row[3] for row in rows) == HOUR_MS
    assert rows[0][1:4] == (first_hour_ms, 1, in_first_ms)
    assert sum(row[4] for row in rows) in (21_999, 22_000)


# ---- a ClickHouse outage ---------------------------------------------------------------------


def _wait_until_gone(record: ProcessRecord) -> None:
    for _ in range(GONE_POLLS_MAX):
        if not pid_alive(record):
            return
        time.sleep(GONE_POLL_S)
    raise AssertionError(f"pid {record.pid} still alive after SIGKILL")


@pytest.fixture
def outage_stack(new_stack_settings: Callable[[], Settings]) -> Iterator[EmbeddedStack]:
    if external_stack():
        pytest.skip("kills a ClickHouse server of its own")
    stack = EmbeddedStack(new_stack_settings())
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


def _run_in_thread(sink: ClickHouseSink, stop: threading.Event) -> tuple[threading.Thread,
                                                                          list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            sink.run(stop_event=stop)
        except BaseException as exc:  # noqa: BLE001 - the test asserts there was none
            errors.append(exc)

    thread = threading.Thread(target=target, name="sink", daemon=True)
    thread.start()
    return thread, errors


def test_sink_survives_a_clickhouse_outage_and_loses_nothing(
    outage_stack: EmbeddedStack,
) -> None:
    settings = outage_stack.settings
    station, group = Station.fresh(), new_group()
    events = [station.reserved(f"res-{i}", f"c{i % 4}", BASE_MS + i) for i in range(OUTAGE_EVENTS)]
    events += [station.released(f"res-{i}", f"c{i % 4}", BASE_MS + HOUR_MS + i)
               for i in range(0, OUTAGE_EVENTS, 2)]
    record = outage_stack.up().processes[CLICKHOUSE]
    os.kill(record.pid, signal.SIGKILL)
    _wait_until_gone(record)

    placed = produce(settings, [(DECISIONS.name, station.station_id, e.encode()) for e in events])
    with ClickHouseSink(settings, group_id=group) as sink:
        for _ in range(OUTAGE_CYCLES):  # every cycle reads the same batch again, then gives up
            failed = _cycle_until_unavailable(sink)
            assert failed.retry_after_s > 0
        stop = threading.Event()
        thread, errors = _run_in_thread(sink, stop)
        time.sleep(OUTAGE_RUN_S)
        assert thread.is_alive() and errors == [], "run() rides out the outage"
        nothing = {OFFSET_INVALID}
        assert set(committed(settings, group, placed).values()) == nothing, "no commit yet"

        restarted = outage_stack.up()
        assert restarted.started == (CLICKHOUSE,)
        assert restarted.processes[CLICKHOUSE].pid != record.pid
        _wait_for_count(settings, station.station_id, len(events))
        stop.set()
        thread.join(RUN_JOIN_TIMEOUT_S)
        assert not thread.is_alive() and errors == []

    ids = {"ids": tuple(event.event_id for event in events)}
    assert query(settings, "SELECT count(), uniqExact(event_id) FROM events FINAL "
                 "WHERE event_id IN %(ids)s", ids) == [(len(events), len(events))]
    states = query(settings, "SELECT status, count() FROM slot_ledger FINAL WHERE station_id = "
                   "%(s)s GROUP BY status ORDER BY status", {"s": station.station_id})
    assert states == [("RELEASED", OUTAGE_EVENTS // 2), ("RESERVED", OUTAGE_EVENTS // 2)]
    offsets = committed(settings, group, placed)
    assert all(offsets[p] > p.offset for p in placed), "committed once ClickHouse took it"


def _cycle_until_unavailable(sink: ClickHouseSink) -> ClickHouseUnavailableError:
    """Cycles read nothing until the group join assigns partitions; then the insert fails."""
    for _ in range(JOIN_CYCLES_MAX):
        try:
            assert sink.drain_once() == 0, "nothing is handled while ClickHouse is down"
        except ClickHouseUnavailableError as exc:
            return exc
    raise AssertionError(f"no ClickHouseUnavailableError in {JOIN_CYCLES_MAX} cycles")


def _wait_for_count(settings: Settings, station_id: str, wanted: int) -> None:
    """Poll (bounded) until the sink has written ``wanted`` decisions of the station."""
    deadline = time.monotonic() + RUN_JOIN_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            got = query(settings, "SELECT count() FROM ledger_decisions FINAL "
                        "WHERE station_id = %(s)s", {"s": station_id})[0][0]
        except (ch_errors.Error, OSError, EOFError):
            got = -1
        if got == wanted:
            return
        time.sleep(IDLE_EXIT_S / 4)
    raise AssertionError(f"the sink did not write {wanted} decisions in {RUN_JOIN_TIMEOUT_S} s")
