"""Sessions, meter evidence, re-prices and settlements in ClickHouse (sinks/migrations/0003).

The story, on the real broker and the real ClickHouse 18.16: a station runs three sessions, one
closed out, one stopped and one still charging. Its meter sends readings; one goes backwards,
and the ledger refuses it after ingress admitted it. Another party's handshake for a running
session, and a fourth session's handshake, are admitted and refused too. A grid event re-prices
two sessions; one vehicle accepts at the proposed rate, the other at a wrong rate (refused).
The ledger admits four settlements (a charge delivered twice, and again after the sink had
committed it) and finalises one. The sink copies it all; the views then show each session's
lifecycle, only the readings the ledger accepted, each settlement once with FINAL or PENDING,
line items that add up exactly, and daily revenue that counts the redelivered charge once.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import Producer

from chargemesh.infra.config import Settings
from chargemesh.processors.reasons import Reason
from chargemesh.schemas.codec import catalog
from chargemesh.sinks.clickhouse_sink import ClickHouseSink
from chargemesh.sinks.migrate import clickhouse_client, load_migrations
from chargemesh.sinks.projections import TABLES, project
from chargemesh.sinks.projections.core import (
    EVENTS,
    REJECTIONS,
    SINK_PROJECTION_FAILED,
    Rows,
    SourceMessage,
)
from chargemesh.sinks.projections.sessions import SESSION_LIFECYCLE
from chargemesh.sinks.projections.settlements import SETTLEMENT_LINES, SETTLEMENTS
from chargemesh.streams.envelope import REJECTED_SCHEMA, SignedEvent, open_payload, seal
from chargemesh.streams.keys import Signer
from chargemesh.streams.topics import ADMITTED, DECISIONS, MARKET
from chargemesh.streams.topics import REJECTIONS as REJECTIONS_TOPIC
from chargemesh.streams.topics import SETTLEMENTS as SETTLEMENTS_TOPIC
from chargemesh.units import DAY_MS, MINUTE_MS

SESSION = "chargemesh.session.v1."
SETTLEMENT = "chargemesh.settlement.v1."
# 2023-11-14T22:13:20Z: in the past, so a PENDING settlement's age is positive.
BASE_MS = 1_700_000_000_000
FLUSH_TIMEOUT_S = 10.0
# One sink cycle lasts about FLUSH_INTERVAL_S (1 s); a fresh group's join takes a few.
DRAIN_CYCLES_MAX = 90


# ---- the participants and their events -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Station:
    """A station with its meter, three vehicles and the processor, with ids no other test uses."""

    station_id: str
    station: Signer
    meter: Signer
    processor: Signer
    vehicles: tuple[Signer, ...]

    @classmethod
    def fresh(cls) -> Station:
        tag = uuid.uuid4().hex[:12]
        return cls(f"station-{tag}", Signer.generate(f"station:{tag}"),
                   Signer.generate(f"meter:{tag}"), Signer.generate("mesh:processor"),
                   tuple(Signer.generate(f"vehicle-{i}:{tag}") for i in range(4)))

    def identity(self, vehicle: Signer, connector_id: str) -> dict[str, Any]:
        return {
            "station_id": self.station_id, "connector_id": connector_id,
            "connector_hardware_id": f"EVSE-{connector_id}",
            "vehicle_id": f"VIN-{vehicle.credential_id}", "vehicle_id_kind": "VIN",
            "vehicle_credential_id": vehicle.credential_id,
            "rate_authority_id": "cpuc", "jurisdiction": "US-CA",
        }

    def signed(self, author: Signer, kind: str, payload: dict[str, Any], at_ms: int,
               key: str | None = None) -> SignedEvent:
        return seal(kind, payload, author=author, subject_key=key or self.station_id,
                    occurred_at_ms=at_ms)

    def handshake(self, session_id: str, vehicle: Signer, connector_id: str,
                  at_ms: int) -> SignedEvent:
        return self.signed(vehicle, SESSION + "ConnectorHandshakeCompleted", {
            "session_id": session_id, "reservation_id": f"res-{session_id}",
            "identity": self.identity(vehicle, connector_id), "started_at_ms": at_ms,
            "meter_start_wh": 0,
        }, at_ms)

    def reading(self, session_id: str, seq: int, import_wh: int, at_ms: int) -> SignedEvent:
        return self.signed(self.meter, SESSION + "MeterReadingRecorded", {
            "session_id": session_id, "station_id": self.station_id, "connector_id": "c1",
            "reading_seq": seq, "cumulative_import_wh": import_wh, "cumulative_export_wh": 0,
            "read_at_ms": at_ms,
        }, at_ms)

    def stopped(self, session_id: str, by: Signer, reason: str, at_ms: int) -> SignedEvent:
        return self.signed(by, SESSION + "SessionStopped", {
            "session_id": session_id, "station_id": self.station_id, "stopped_at_ms": at_ms,
            "reason": reason,
        }, at_ms)

    def closed_out(self, session_id: str, final_wh: int, last_seq: int,
                   at_ms: int) -> SignedEvent:
        return self.signed(self.station, SESSION + "MeterClosedOut", {
            "session_id": session_id, "station_id": self.station_id, "connector_id": "c1",
            "closed_at_ms": at_ms, "final_import_wh": final_wh, "final_export_wh": 0,
            "last_reading_seq": last_seq,
        }, at_ms)

    def reprice_proposed(self, session_id: str, rate: str, at_ms: int) -> SignedEvent:
        return self.signed(self.processor, SESSION + "RepriceProposed", {
            "session_id": session_id, "station_id": self.station_id, "grid_event_id": "g-1",
            "effective_from_ms": at_ms, "new_rate_per_kwh": Decimal(rate), "power_limit_w": 0,
        }, at_ms)

    def reprice_accepted(self, session_id: str, vehicle: Signer, rate: str,
                         at_ms: int) -> SignedEvent:
        return self.signed(vehicle, SESSION + "RepriceAccepted", {
            "session_id": session_id, "station_id": self.station_id, "grid_event_id": "g-1",
            "accepted_rate_per_kwh": Decimal(rate),
        }, at_ms)

    def settlement(self, session_id: str, vehicle: Signer, kind: str,
                   lines: list[tuple[str, int, str, str]], energy_wh: int, at_ms: int,
                   adjusts: str = "") -> SignedEvent:
        """SettlementAdmitted; ``lines`` are (kind, quantity_wh, unit rate, amount)."""
        items: list[dict[str, Any]] = [
            {"kind": k, "description": f"{k} line", "quantity_wh": wh,
             "unit_rate_per_kwh": Decimal(rate), "amount": Decimal(amount),
             "from_at_ms": 0, "until_at_ms": 0}
            for k, wh, rate, amount in lines
        ]
        return self.signed(self.processor, SETTLEMENT + "SettlementAdmitted", {
            "settlement_id": f"stl:{session_id}:{kind}", "session_id": session_id,
            "identity": self.identity(vehicle, "c1"), "tariff_id": "tariff-1",
            "currency": "USD", "rounding": "HALF_UP", "lines": items,
            "total_amount": sum((item["amount"] for item in items), Decimal(0)),
            "energy_import_wh": energy_wh, "energy_export_wh": 0,
            "evidence_event_ids": [f"ev-{session_id}"],
            "required_signer_ids": [self.station.credential_id, vehicle.credential_id],
            "kind": kind, "adjusts_settlement_id": adjusts, "admitted_at_ms": at_ms,
        }, at_ms, key=session_id)

    def finalised(self, settlement: SignedEvent, vehicle: Signer, at_ms: int) -> SignedEvent:
        body = open_payload(settlement)
        return self.signed(self.processor, SETTLEMENT + "SettlementFinalised", {
            "settlement_id": body["settlement_id"], "session_id": body["session_id"],
            "signer_ids": [self.station.credential_id, vehicle.credential_id],
            "finalised_at_ms": at_ms,
        }, at_ms, key=body["session_id"])


def session_of(event: SignedEvent) -> str:
    return str(open_payload(event)["session_id"])


def refusal(event: SignedEvent, reason: str) -> bytes:
    """The ledger's (or ingress's) rejection record naming ``event``."""
    return bytes(catalog().single_object_encode(REJECTED_SCHEMA, {
        "rejection_id": str(uuid.uuid4()), "source_topic": MARKET.name, "source_partition": 0,
        "source_offset": 1, "reason_code": reason, "detail": f"{reason} in a test",
        "event_id": event.event_id, "event_type": event.event_type,
        "author_credential_id": event.body.author_credential_id,
        "rejected_at_ms": event.body.occurred_at_ms + 1, "raw_bytes": event.encode(),
    }))


# ---- pure: the rows a message stands for -----------------------------------------------------


def rows_of(topic: str, event: SignedEvent) -> Rows:
    message = SourceMessage(topic, 0, 5, event.encode(), timestamp_ms=BASE_MS)
    rows = project(message, REJECTIONS_TOPIC.name, BASE_MS)
    for table, table_rows in rows.items():
        assert all(len(row) == len(TABLES[table]) for row in table_rows), table
    return rows


def as_dict(table: str, row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(TABLES[table], row, strict=True))


def test_lifecycle_rows_carry_what_their_event_says_and_later_steps_rank_higher() -> None:
    st = Station.fresh()
    started = as_dict(SESSION_LIFECYCLE, rows_of(ADMITTED.name, st.handshake(
        "s-1", st.vehicles[0], "c2", BASE_MS))[SESSION_LIFECYCLE][0])
    assert (started["stage"], started["connector_id"], started["jurisdiction"]) == (
        "STARTED", "c2", "US-CA")
    assert started["vehicle_credential_id"] == st.vehicles[0].credential_id
    assert (started["started_at_ms"], started["started_at"]) == (BASE_MS, BASE_MS // 1000)
    stopped = as_dict(SESSION_LIFECYCLE, rows_of(ADMITTED.name, st.stopped(
        "s-1", st.vehicles[0], "COMPLETED", BASE_MS))[SESSION_LIFECYCLE][0])
    assert (stopped["stage"], stopped["stop_reason"], stopped["vehicle_id"]) == (
        "STOPPED", "COMPLETED", "")
    closed = as_dict(SESSION_LIFECYCLE, rows_of(ADMITTED.name, st.closed_out(
        "s-1", 900, 3, BASE_MS))[SESSION_LIFECYCLE][0])
    assert started["version"] < stopped["version"] < closed["version"]


def test_settlement_rows_add_up_and_fall_on_the_utc_day() -> None:
    st = Station.fresh()
    near_midnight_ms = BASE_MS // DAY_MS * DAY_MS + DAY_MS - 1
    event = st.settlement("s-1", st.vehicles[0], "CHARGE", [
        ("ENERGY", 1_000, "0.100000", "0.100000"), ("TAX", 0, "0.000000", "0.200000")],
        1_000, near_midnight_ms)
    rows = rows_of(SETTLEMENTS_TOPIC.name, event)
    assert sorted(rows) == [EVENTS, SETTLEMENT_LINES, SETTLEMENTS]
    settlement = as_dict(SETTLEMENTS, rows[SETTLEMENTS][0])
    lines = [as_dict(SETTLEMENT_LINES, row) for row in rows[SETTLEMENT_LINES]]
    assert [line["line_no"] for line in lines] == [0, 1]
    assert sum(line["amount"] for line in lines) == settlement["total_amount"] == Decimal("0.3")
    utc_day = datetime.datetime.fromtimestamp(near_midnight_ms / 1000, datetime.UTC).date()
    assert settlement["day"] == utc_day == lines[1]["day"]
    assert settlement["line_count"] == 2


def test_a_settlement_too_large_for_the_table_keeps_its_event_and_rejects_the_projection() -> None:
    st = Station.fresh()
    event = st.settlement("s-1", st.vehicles[0], "CHARGE", [
        ("ENERGY", 1, "0.100000", "10000000000000.000000")], 1, BASE_MS)
    rows = rows_of(SETTLEMENTS_TOPIC.name, event)
    assert sorted(rows) == [EVENTS, REJECTIONS]
    assert as_dict(REJECTIONS, rows[REJECTIONS][0])["reason_code"] == SINK_PROJECTION_FAILED


# Ingress refuses an input with these before admitting it: such a rejection concerns another copy
# of an event (forged, replayed, malformed), never the admitted one, so it must not hide it.
PRE_ADMISSION_REASONS = (
    Reason.MALFORMED_ENVELOPE, Reason.MALFORMED_PAYLOAD, Reason.UNKNOWN_SCHEMA, Reason.OVERSIZED,
    Reason.WRONG_TOPIC, Reason.KEY_MISMATCH, Reason.MISSING_SIGNATURE, Reason.BAD_SIGNATURE,
    Reason.UNKNOWN_CREDENTIAL, Reason.UNRECOGNISED_AUTHORITY, Reason.CREDENTIAL_NOT_YET_VALID,
    Reason.CREDENTIAL_EXPIRED, Reason.CREDENTIAL_REVOKED, Reason.ROLE_NOT_PERMITTED,
    Reason.SUBJECT_MISMATCH, Reason.JURISDICTION_NOT_DELEGATED,
    Reason.ISSUANCE_EXCEEDS_DELEGATION, Reason.DUPLICATE_IDENTIFIER, Reason.REPLAYED_EVENT_ID,
)


def test_only_pre_admission_reasons_are_kept_from_hiding_an_admitted_event() -> None:
    """The view's list of reasons that concern another copy of an event: the pre-admission ones
    (Reason members, so a renamed code breaks this test, not the view)."""
    (migration,) = [m for m in load_migrations() if m.name == "0003_sessions.sql"]
    (view,) = [s for s in migration.statements if "VIEW IF NOT EXISTS refused_event_ids" in s]
    listed = set(re.findall(r"'([A-Z_]+)'", view.split("NOT IN", 1)[1]))
    assert listed == {reason.value for reason in PRE_ADMISSION_REASONS}


# ---- the story on the real stack -------------------------------------------------------------


@dataclasses.dataclass
class Story:
    settings: Settings
    station: Station
    ids: dict[str, SignedEvent]


def produce(settings: Settings, messages: list[tuple[str, str, bytes]]) -> None:
    producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True})
    failures: list[Any] = []
    for topic, key, value in messages:
        producer.produce(topic, key=key.encode(), value=value,
                         on_delivery=lambda err, _msg: failures.append(err) if err else None)
    assert producer.flush(FLUSH_TIMEOUT_S) == 0 and failures == []


def query(settings: Settings, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    client = clickhouse_client(settings)
    try:
        return list(client.execute(sql, params))
    finally:
        client.disconnect()


def drain(sink: ClickHouseSink, done: Callable[[], bool], handled_min: int = 0) -> None:
    """Cycle until ``done()`` and a cycle found nothing more (so every message was read)."""
    handled = 0
    for _ in range(DRAIN_CYCLES_MAX):
        count = sink.drain_once()
        handled += count
        if count == 0 and handled >= handled_min and done():
            return
    raise AssertionError(f"the sink did not catch up in {DRAIN_CYCLES_MAX} cycles")


def session_events(st: Station, sid: dict[str, str]) -> dict[str, SignedEvent]:
    v = st.vehicles
    t = BASE_MS
    return {
        "hs1": st.handshake(sid["s1"], v[0], "c1", t),
        # Another vehicle's handshake for s1, dated earlier: only its refusal keeps it out.
        "hs1_forged": st.handshake(sid["s1"], v[3], "c1", t - MINUTE_MS),
        "hs2": st.handshake(sid["s2"], v[1], "c2", t),
        "hs3": st.handshake(sid["s3"], v[2], "c3", t),
        "hs4": st.handshake(sid["s4"], v[3], "c4", t),  # refused: UNKNOWN_RESERVATION
        "r0": st.reading(sid["s1"], 0, 1_000, t + 5 * MINUTE_MS),
        "r1": st.reading(sid["s1"], 1, 2_000, t + 10 * MINUTE_MS),
        "r2": st.reading(sid["s1"], 2, 1_500, t + 15 * MINUTE_MS),  # backwards: refused
        "stop1": st.stopped(sid["s1"], v[0], "COMPLETED", t + 20 * MINUTE_MS),
        "close1": st.closed_out(sid["s1"], 2_500, 1, t + 21 * MINUTE_MS),
        "stop2": st.stopped(sid["s2"], st.station, "FAULT", t + 30 * MINUTE_MS),
        "rp2": st.reprice_proposed(sid["s2"], "0.450000", t + 12 * MINUTE_MS),
        "ra2": st.reprice_accepted(sid["s2"], v[1], "0.400000", t + 13 * MINUTE_MS),  # refused
        "rp3": st.reprice_proposed(sid["s3"], "0.450000", t + 12 * MINUTE_MS),
        "ra3": st.reprice_accepted(sid["s3"], v[2], "0.450000", t + 13 * MINUTE_MS),
    }


def settlement_events(st: Station, sid: dict[str, str]) -> dict[str, SignedEvent]:
    v, t = st.vehicles, BASE_MS + 22 * MINUTE_MS
    charge = st.settlement(sid["s1"], v[0], "CHARGE", [
        ("ENERGY", 2_500, "0.404000", "1.010000"),
        ("CONGESTION_FEE", 2_500, "0.008000", "0.020000"),
        ("TAX", 0, "0.000000", "0.200000")], 2_500, t)  # 19 % of 1.03, to the cent
    return {
        "charge": charge,
        "final": st.finalised(charge, v[0], t + 3 * MINUTE_MS),
        "pending": st.settlement(sid["s2"], v[1], "CHARGE", [
            ("ENERGY", 1_200, "0.375000", "0.450000")], 1_200, t + MINUTE_MS),
        "internal": st.settlement(sid["s2"], v[1], "INTERNAL_ACCOUNTING", [
            ("ADJUSTMENT", 0, "0.000000", "0.300000")], 0, t + 2 * MINUTE_MS),
        # The next UTC day: restates the charge's energy, which revenue does not count twice.
        "adjustment": st.settlement(sid["s1"], v[0], "ADJUSTMENT", [
            ("ADJUSTMENT", 0, "0.000000", "-0.100000")], 2_500, t + DAY_MS,
            adjusts=open_payload(charge)["settlement_id"]),
    }


@pytest.fixture(scope="module")
def story(stack_settings: Settings) -> Iterator[Story]:
    st = Station.fresh()
    sid = {name: f"{name}-{uuid.uuid4()}" for name in ("s1", "s2", "s3", "s4")}
    sessions, settled = session_events(st, sid), settlement_events(st, sid)
    ev = {**sessions, **settled}
    decided = {"rp2", "rp3"}  # the ledger's proposals; the rest are participants' events
    messages = [(DECISIONS.name if name in decided else ADMITTED.name, st.station_id,
                 e.encode()) for name, e in sessions.items()]
    messages.append((ADMITTED.name, st.station_id, sessions["r0"].encode()))  # redelivered
    # The charge twice in a row: a redelivery.
    messages += [(SETTLEMENTS_TOPIC.name, session_of(e), e.encode())
                 for e in (settled["charge"], *settled.values())]
    refused = {"hs1_forged": "DUPLICATE_SESSION", "hs4": "UNKNOWN_RESERVATION",
               "r2": "METER_WENT_BACKWARDS", "ra2": "PRICE_MISMATCH",
               # A replay of r1 at another offset: it must not hide the admitted r1.
               "r1": "REPLAYED_EVENT_ID"}
    messages += [(REJECTIONS_TOPIC.name, MARKET.name, refusal(ev[n], reason))
                 for n, reason in refused.items()]
    produce(stack_settings, messages)
    ids = tuple(e.event_id for e in ev.values())
    refused_ids = tuple(ev[n].event_id for n in refused)

    def all_in() -> bool:
        events = query(stack_settings, "SELECT uniqExact(event_id) FROM events "
                       "WHERE event_id IN %(ids)s", {"ids": ids})[0][0]
        rejected = query(stack_settings, "SELECT uniqExact(event_id) FROM rejections "
                         "WHERE event_id IN %(ids)s", {"ids": refused_ids})[0][0]
        return bool(events == len(ids) and rejected == len(refused_ids))

    with ClickHouseSink(stack_settings, group_id=f"test-settle-{uuid.uuid4()}") as sink:
        drain(sink, all_in)
        # Delivered once more after the sink committed them: separate inserts of the same rows.
        again = [(SETTLEMENTS_TOPIC.name, sid["s1"], ev["charge"].encode()),
                 (ADMITTED.name, st.station_id, ev["r0"].encode()),
                 (ADMITTED.name, st.station_id, ev["stop1"].encode())]
        produce(stack_settings, again)
        drain(sink, lambda: True, handled_min=len(again))
    yield Story(stack_settings, st, ev)


def test_sessions_current_shows_each_accepted_lifecycle(story: Story) -> None:
    rows = query(story.settings, "SELECT session_id, status, vehicle_credential_id, "
                 "connector_id, started_at_ms, toUnixTimestamp(started_at), stopped_at_ms, "
                 "stop_reason, closed_at_ms, final_import_wh, jurisdiction "
                 "FROM sessions_current WHERE station_id = %(s)s ORDER BY status",
                 {"s": story.station.station_id})
    ev, v = story.ids, story.station.vehicles
    hs1 = session_of(ev["hs1"])
    assert rows == [
        (session_of(ev["hs3"]), "ACTIVE", v[2].credential_id, "c3", BASE_MS,
         BASE_MS // 1000, 0, "", 0, 0, "US-CA"),
        (hs1, "CLOSED_OUT", v[0].credential_id, "c1", BASE_MS, BASE_MS // 1000,
         BASE_MS + 20 * MINUTE_MS, "COMPLETED", BASE_MS + 21 * MINUTE_MS, 2_500, "US-CA"),
        (session_of(ev["hs2"]), "STOPPED", v[1].credential_id, "c2", BASE_MS,
         BASE_MS // 1000, BASE_MS + 30 * MINUTE_MS, "FAULT", 0, 0, "US-CA"),
    ], "the forged handshake and the refused session s4 are not there"
    versions = query(story.settings, "SELECT session_id, version FROM sessions_current "
                     "WHERE session_id = %(s)s", {"s": hs1})
    assert versions == [(hs1, (BASE_MS + 21 * MINUTE_MS) * 1000 + 2)]


def test_meter_readings_valid_leaves_out_what_the_ledger_refused(story: Story) -> None:
    station = {"s": story.station.station_id}
    admitted = query(story.settings, "SELECT reading_seq, cumulative_import_wh FROM "
                     "meter_readings FINAL WHERE station_id = %(s)s ORDER BY reading_seq",
                     station)
    assert admitted == [(0, 1_000), (1, 2_000), (2, 1_500)], "each admitted reading, once"
    valid = query(story.settings, "SELECT reading_seq, cumulative_import_wh, event_id, "
                  "read_at_ms, toUnixTimestamp(read_at) FROM meter_readings_valid "
                  "WHERE station_id = %(s)s ORDER BY reading_seq", station)
    r0, r1 = story.ids["r0"], story.ids["r1"]
    assert valid == [
        (0, 1_000, r0.event_id, BASE_MS + 5 * MINUTE_MS, (BASE_MS + 5 * MINUTE_MS) // 1000),
        (1, 2_000, r1.event_id, BASE_MS + 10 * MINUTE_MS, (BASE_MS + 10 * MINUTE_MS) // 1000),
    ], "the backwards reading is out; a replay's rejection does not hide the original"


def test_reprices_current_counts_only_acceptances_the_ledger_took(story: Story) -> None:
    rows = query(story.settings, "SELECT session_id, rate_per_kwh, effective_from_ms, accepted "
                 "FROM reprices_current WHERE station_id = %(s)s ORDER BY accepted",
                 {"s": story.station.station_id})
    s2, s3 = (session_of(story.ids[n]) for n in ("hs2", "hs3"))
    assert rows == [(s2, Decimal("0.45"), BASE_MS + 12 * MINUTE_MS, 0),
                    (s3, Decimal("0.45"), BASE_MS + 12 * MINUTE_MS, 1)]


def test_each_settlement_is_there_once_with_lines_that_add_up(story: Story) -> None:
    station = {"s": story.station.station_id}
    counts = query(story.settings, "SELECT kind, count() FROM settlements FINAL "
                   "WHERE station_id = %(s)s GROUP BY kind ORDER BY kind", station)
    assert counts == [("ADJUSTMENT", 1), ("CHARGE", 2), ("INTERNAL_ACCOUNTING", 1)]
    sums = query(story.settings, "SELECT s.settlement_id, s.total_amount, s.line_count, "
                 "l.lines, l.amount FROM (SELECT settlement_id, total_amount, line_count "
                 "FROM settlements FINAL WHERE station_id = %(s)s) AS s ANY INNER JOIN "
                 "(SELECT settlement_id, count() AS lines, sum(amount) AS amount "
                 "FROM settlement_lines FINAL WHERE station_id = %(s)s "
                 "GROUP BY settlement_id) AS l USING (settlement_id) ORDER BY settlement_id",
                 station)
    assert len(sums) == 4
    for settlement_id, total, line_count, lines, amount in sums:
        assert (lines, amount) == (line_count, total), settlement_id
    charge = open_payload(story.ids["charge"])
    assert [row[1] for row in sums if row[0] == charge["settlement_id"]] == [
        Decimal("1.230000")]


def test_settlements_status_tells_final_from_pending(story: Story) -> None:
    asked_at_ms = time.time_ns() // 1_000_000
    rows = query(story.settings, "SELECT kind, status, finalised_at_ms, signer_ids, "
                 "admitted_at_ms, pending_age_ms FROM settlements_status "
                 "WHERE station_id = %(s)s ORDER BY admitted_at_ms",
                 {"s": story.station.station_id})
    st = story.station
    charged_at_ms = BASE_MS + 22 * MINUTE_MS
    assert [row[:2] for row in rows] == [("CHARGE", "FINAL"), ("CHARGE", "PENDING"),
                                         ("INTERNAL_ACCOUNTING", "PENDING"),
                                         ("ADJUSTMENT", "PENDING")]
    final = rows[0]
    assert final[2:] == (charged_at_ms + 3 * MINUTE_MS,
                         [st.station.credential_id, st.vehicles[0].credential_id],
                         charged_at_ms, 3 * MINUTE_MS)
    pending = rows[1]
    assert (pending[2], pending[3]) == (0, [])
    # now() has whole seconds: the age is at least the time since admission, less 1 s.
    assert pending[5] >= asked_at_ms - pending[4] - 1_000


def test_revenue_daily_counts_the_redelivered_charge_once(story: Story) -> None:
    rows = query(story.settings, "SELECT day, jurisdiction, currency, settlements, "
                 "energy_import_wh, total_amount FROM revenue_daily "
                 "WHERE station_id = %(s)s ORDER BY day", {"s": story.station.station_id})
    day = datetime.datetime.fromtimestamp(BASE_MS / 1000, datetime.UTC).date()
    assert rows == [
        # The charge (1.23, delivered three times) and the pending charge (0.45); the
        # internal accounting entry is no revenue.
        (day, "US-CA", "USD", 2, 2_500 + 1_200, Decimal("1.680000")),
        # The adjustment: its amount counts, its restated energy does not.
        (day + datetime.timedelta(days=1), "US-CA", "USD", 1, 0, Decimal("-0.100000")),
    ]
