"""Projections without Kafka or ClickHouse: which rows a message stands for.

The integration story (tests/integration/test_sink.py) runs these through the real broker and ClickHouse;
here the edge cases: ordering of ledger versions, bytes that do not decode, an amount that does
not fit Decimal(18, 6), a decision type nobody projects yet.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from chargemesh.schemas.codec import catalog
from chargemesh.sinks.projections import PROJECTORS, TABLES, project
from chargemesh.sinks.projections.core import (
    EVENTS,
    REJECTIONS,
    SINK_PROJECTION_FAILED,
    SINK_UNDECODABLE,
    Rows,
    SourceMessage,
    seconds,
    sink_rejection_id,
)
from chargemesh.sinks.projections.ledger import LEDGER_DECISIONS, SLOT_LEDGER, ledger_version
from chargemesh.streams.envelope import SignedEvent, seal
from chargemesh.streams.keys import Signer
from chargemesh.streams.topics import DECISIONS
from chargemesh.streams.topics import REJECTIONS as REJECTIONS_TOPIC

BASE_MS = 1_790_000_000_000
INGESTED_MS = BASE_MS + 5_000
SIGNER = Signer.generate("mesh:processor")


def reserved(rate: Decimal = Decimal("0.350000"), at_ms: int = BASE_MS) -> SignedEvent:
    payload: dict[str, Any] = {
        "reservation_id": "res-1", "order_id": "order-1", "vehicle_credential_id": "vehicle-1",
        "station_id": "station-1", "connector_id": "c1", "slot_start_at_ms": BASE_MS,
        "slot_stop_at_ms": BASE_MS + 3_600_000, "rate_per_kwh": rate, "energy_wh": 22_000,
        "rules_version": "rules-1", "walk_up": True,
    }
    return seal("chargemesh.ledger.v1.SlotReserved", payload, author=SIGNER,
                subject_key="station-1", occurred_at_ms=at_ms)


def on_decisions(value: bytes, offset: int = 41) -> SourceMessage:
    return SourceMessage(DECISIONS.name, 2, offset, value, timestamp_ms=BASE_MS + 1_000)


def rows_of(message: SourceMessage) -> Rows:
    rows = project(message, REJECTIONS_TOPIC.name, INGESTED_MS)
    for table, table_rows in rows.items():
        assert all(len(row) == len(TABLES[table]) for row in table_rows), table
    return rows


def as_dict(table: str, row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(TABLES[table], row, strict=True))


def test_a_reservation_gives_an_events_row_a_slot_state_and_a_decision() -> None:
    event = reserved()
    rows = rows_of(on_decisions(event.encode()))
    assert sorted(rows) == [EVENTS, LEDGER_DECISIONS, SLOT_LEDGER]
    stored = as_dict(EVENTS, rows[EVENTS][0])
    assert stored["event_id"] == event.event_id
    assert (stored["kafka_partition"], stored["kafka_offset"]) == (2, 41)
    assert stored["occurred_at"] == BASE_MS // 1000
    assert stored["envelope_bytes"] == event.encode()
    assert '"rate_per_kwh":"0.350000"' in stored["payload_json"]
    slot = as_dict(SLOT_LEDGER, rows[SLOT_LEDGER][0])
    assert (slot["status"], slot["walk_up"], slot["rate_per_kwh"]) == ("RESERVED", 1,
                                                                       Decimal("0.350000"))
    assert slot["version"] == ledger_version(BASE_MS, "RESERVED")


def test_later_decisions_win_and_same_millisecond_ones_follow_the_lifecycle() -> None:
    assert ledger_version(BASE_MS, "RELEASED") > ledger_version(BASE_MS, "REALLOCATED")
    assert ledger_version(BASE_MS, "REALLOCATED") > ledger_version(BASE_MS, "RESERVED")
    assert ledger_version(BASE_MS + 1, "RESERVED") > ledger_version(BASE_MS, "RELEASED")


def test_garbage_becomes_an_undecodable_rejection_with_an_id_from_its_place() -> None:
    rows = rows_of(on_decisions(b"\x00garbage", offset=7))
    assert list(rows) == [REJECTIONS]
    rejection = as_dict(REJECTIONS, rows[REJECTIONS][0])
    assert rejection["reason_code"] == SINK_UNDECODABLE
    assert rejection["rejection_id"] == sink_rejection_id(DECISIONS.name, 2, 7)
    assert rejection["rejected_at_ms"] == BASE_MS + 1_000  # the record time, not the clock
    assert rows_of(on_decisions(b"\x00garbage", offset=7)) == rows  # a redelivery is the same


def test_an_empty_value_and_a_signed_event_on_the_rejections_topic_are_undecodable() -> None:
    tombstone = rows_of(on_decisions(b""))
    assert as_dict(REJECTIONS, tombstone[REJECTIONS][0])["reason_code"] == SINK_UNDECODABLE
    misplaced = SourceMessage(REJECTIONS_TOPIC.name, 0, 3, reserved().encode(), BASE_MS)
    rows = rows_of(misplaced)
    assert as_dict(REJECTIONS, rows[REJECTIONS][0])["detail"].startswith("WRONG_SCHEMA")


def test_a_rejection_record_is_copied_as_it_is() -> None:
    rejection_id = str(uuid.uuid4())
    record = {
        "rejection_id": rejection_id, "source_topic": "chargemesh.market.v1",
        "source_partition": 1, "source_offset": 9, "reason_code": "BAD_SIGNATURE",
        "detail": "x" * 5_000, "event_id": "e-1", "event_type": "t", "author_credential_id": "a",
        "rejected_at_ms": BASE_MS, "raw_bytes": b"\xc3\x01raw",
    }
    value = catalog().single_object_encode("chargemesh.envelope.v1.EventRejected", record)
    rows = rows_of(SourceMessage(REJECTIONS_TOPIC.name, 0, 3, value, BASE_MS))
    stored = as_dict(REJECTIONS, rows[REJECTIONS][0])
    assert stored["rejection_id"] == rejection_id
    assert (stored["source_offset"], stored["raw_bytes"]) == (9, b"\xc3\x01raw")
    assert len(stored["detail"]) == 1_000  # bounded


def test_an_amount_too_large_for_the_table_keeps_the_event_and_rejects_the_projection() -> None:
    event = reserved(rate=Decimal("10000000000000.000000"))  # fits Avro (20, 6), not (18, 6)
    rows = rows_of(on_decisions(event.encode()))
    assert sorted(rows) == [EVENTS, REJECTIONS]
    rejection = as_dict(REJECTIONS, rows[REJECTIONS][0])
    assert rejection["reason_code"] == SINK_PROJECTION_FAILED
    assert rejection["event_id"] == event.event_id


def test_a_type_without_projector_only_gets_its_events_row() -> None:
    event = seal("chargemesh.capacity.v1.StationHeartbeat", {
        "station_id": "station-1", "at_ms": BASE_MS,
    }, author=SIGNER, subject_key="station-1", occurred_at_ms=BASE_MS)
    assert event.event_type not in PROJECTORS
    assert list(rows_of(on_decisions(event.encode()))) == [EVENTS]


def test_datetime_columns_are_clamped_but_the_ms_columns_keep_the_exact_time() -> None:
    assert seconds(-5) == 0
    assert seconds(2**62) == 2**32 - 1
    assert seconds(BASE_MS + 999) == BASE_MS // 1000
