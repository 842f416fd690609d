"""E1 wireless dynamic charging, pure: trips on a road operator's ledger, segment pass batches
(plausibility, geofence, duplicates), aggregation into one settlement per trip. Every event goes
through the same admission and ledger step as the processors."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargemesh.processors.ledger import state as ledger

from chargemesh.processors.embodiments import wireless
from chargemesh.processors.ingress import Admitted, Refused, admit
from chargemesh.processors.ledger.step import Step, market_step
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.topics import MARKET, MESSAGE_BYTES_MAX
from chargemesh.units import MINUTE_MS

from tests.support.wireless_road import DELIVERED_WH, PASS_MS, RATES, Road, expected_total
from tests.support.world import T0_MS, make_world, pairs


class Drive:
    """One road operator's ledger fed event by event."""

    def __init__(self, name: str = "rd", segments: int = 10) -> None:
        self.world = make_world()
        self.road = Road(self.world, name, segments)
        self.ev = self.road.vehicle("ev1")
        self.other = self.road.vehicle("ev2")
        self.store = self.world.store()
        self.state = ledger.LedgerState(self.road.operator_id)
        self.offset = 0
        self.t0 = T0_MS + 60 * MINUTE_MS

    def feed(self, event: SignedEvent) -> Step:
        verdict = admit(event.encode(), event.body.subject_key.encode(), MARKET.name, self.store)
        assert isinstance(verdict, Admitted), verdict
        self.offset += 1
        return market_step(self.state, verdict, 0, self.offset, None, self.store)

    def open(self, trip_id: str = "trip-1", **kw: Any) -> Step:
        return self.feed(self.road.trip(self.ev, trip_id, self.t0, at_ms=self.t0, **kw))

    def traverse(self, trip_id: str, segments: range, start_ms: int) -> list[Step]:
        """One batch per segment, each signed as the vehicle leaves it."""
        steps = []
        for n, i in enumerate(segments):
            entered = start_ms + n * PASS_MS
            ps = self.road.pass_of(self.ev, trip_id, i, entered)
            steps.append(self.feed(self.road.batch(i, [ps], entered + PASS_MS + 1_000)))
        return steps


def outcomes(step: Step) -> list[dict[str, Any]]:
    [(_kind, applied)] = [d for d in pairs(step.decisions) if d[0] == "SegmentPassesApplied"]
    return applied["outcomes"]  # type: ignore[no-any-return]


def decision(step: Step, kind: str) -> dict[str, Any]:
    [payload] = [p for k, p in pairs(step.decisions) if k == kind]
    return payload


def test_a_trip_over_ten_segments_settles_at_each_segments_filed_rate() -> None:
    drive = Drive()
    assert drive.open().rejection is None
    steps = drive.traverse("trip-1", range(10), drive.t0 + MINUTE_MS)
    assert all(o["accepted"] for s in steps for o in outcomes(s))
    closed = drive.feed(drive.road.close(drive.ev, "trip-1", drive.t0 + 10 * MINUTE_MS))
    assert closed.rejection is None
    trip = decision(closed, "TripSettled")
    assert (trip["passes_accepted"], trip["segments"], trip["energy_wh"],
            trip["meter_seconds"]) == (10, 10, 10 * DELIVERED_WH, 10 * PASS_MS // 1000)
    settlement = decision(closed, "SettlementAdmitted")
    energy = [ln for ln in settlement["lines"] if ln["kind"] == "ENERGY"]
    assert [ln["unit_rate_per_kwh"] for ln in energy] == [Decimal(RATES[i % 2]) for i in range(10)]
    assert sum(ln["amount"] for ln in settlement["lines"]) == settlement["total_amount"]
    assert settlement["total_amount"] == expected_total(
        [(DELIVERED_WH, RATES[i % 2]) for i in range(10)]) == trip["total_amount"]
    assert decision(closed, "SettlementFinalised")["signer_ids"] == [drive.ev.credential_id]
    assert settlement["identity"]["station_id"] == drive.road.operator_id


def test_many_passes_of_many_trips_in_one_signed_batch() -> None:
    drive = Drive()
    drive.open("trip-1")
    drive.feed(drive.road.trip(drive.other, "trip-2", drive.t0, at_ms=drive.t0))
    entered = drive.t0 + MINUTE_MS
    batch = [drive.road.pass_of(drive.ev, "trip-1", 3, entered),
             drive.road.pass_of(drive.other, "trip-2", 3, entered + 2_000)]
    step = drive.feed(drive.road.batch(3, batch, entered + PASS_MS + 3_000))
    assert [(o["trip_id"], o["accepted"]) for o in outcomes(step)] == [
        ("trip-1", True), ("trip-2", True)]
    trips = wireless.wireless(drive.state)["trips"]
    assert trips["trip-1"]["energy_wh"] == trips["trip-2"]["energy_wh"] == DELIVERED_WH


def test_a_duplicated_pass_is_refused_by_pass_id_in_the_same_and_a_later_batch() -> None:
    drive = Drive()
    drive.open()
    entered = drive.t0 + MINUTE_MS
    ps = drive.road.pass_of(drive.ev, "trip-1", 0, entered)
    first = drive.feed(drive.road.batch(0, [ps, ps], entered + PASS_MS + 1_000))
    assert [(o["accepted"], o["reason_code"]) for o in outcomes(first)] == [
        (True, ""), (False, "DUPLICATE_PASS")]
    later = drive.feed(drive.road.batch(0, [ps], entered + PASS_MS + 2_000, batch_id="again"))
    assert [o["reason_code"] for o in outcomes(later)] == ["DUPLICATE_PASS"]
    trip = wireless.wireless(drive.state)["trips"]["trip-1"]
    assert (trip["accepted"], trip["refused"], trip["energy_wh"]) == (1, 2, DELIVERED_WH)


def test_redelivered_batch_changes_nothing() -> None:
    drive = Drive()
    drive.open()
    entered = drive.t0 + MINUTE_MS
    event = drive.road.batch(0, [drive.road.pass_of(drive.ev, "trip-1", 0, entered)],
                             entered + PASS_MS + 1_000)
    drive.feed(event)
    verdict = admit(event.encode(), event.body.subject_key.encode(), MARKET.name, drive.store)
    assert isinstance(verdict, Admitted)
    again = market_step(drive.state, verdict, 0, drive.offset, None, drive.store)
    assert again.applied is False
    assert wireless.wireless(drive.state)["trips"]["trip-1"]["accepted"] == 1


def test_implausible_energy_and_meter_seconds_are_refused() -> None:
    drive = Drive()
    drive.open()
    entered = drive.t0 + MINUTE_MS
    too_much = drive.road.pass_of(drive.ev, "trip-1", 2, entered, energy_wh=1_200)  # > 1050 Wh
    step = drive.feed(drive.road.batch(2, [too_much], entered + PASS_MS + 1_000))
    assert [o["reason_code"] for o in outcomes(step)] == ["IMPLAUSIBLE_ENERGY"]
    padded = drive.road.pass_of(drive.ev, "trip-1", 3, entered + PASS_MS)
    padded = type(padded)(**dict(padded.record(), meter_seconds=60, pass_id="padded"))
    step = drive.feed(drive.road.batch(3, [padded], entered + 2 * PASS_MS + 1_000))
    assert [o["reason_code"] for o in outcomes(step)] == ["IMPLAUSIBLE_METER_SECONDS"]
    backwards = type(padded)(**dict(padded.record(), left_at_ms=entered, pass_id="backwards"))
    step = drive.feed(drive.road.batch(3, [backwards], entered + 3 * PASS_MS))
    assert [o["reason_code"] for o in outcomes(step)] == ["IMPLAUSIBLE_PASS"]


def test_geofence_is_checked_by_id_and_position() -> None:
    drive = Drive()
    drive.open()
    entered = drive.t0 + MINUTE_MS
    wrong_fence = drive.road.pass_of(drive.ev, "trip-1", 4, entered, geofence_id="gf-elsewhere")
    outside = drive.road.pass_of(drive.ev, "trip-1", 4, entered + 1, pass_id="outside",
                                 lat=Road.box(7)[0] + 10)
    step = drive.feed(drive.road.batch(4, [wrong_fence, outside], entered + PASS_MS + 1_000))
    assert [o["reason_code"] for o in outcomes(step)] == ["OUTSIDE_GEOFENCE"] * 2
    assert all("geofence" in o["detail"] for o in outcomes(step))


def test_trip_terms_bound_the_passes() -> None:
    drive = Drive()
    drive.open(ceiling="0.32", energy_wh_max=1_500)
    entered = drive.t0 + MINUTE_MS
    passes = [drive.road.pass_of(drive.ev, "trip-1", 1, entered),  # tariff B 0.36 > 0.32
              drive.road.pass_of(drive.ev, "trip-1", 0, entered + PASS_MS),  # 0.30, accepted
              drive.road.pass_of(drive.ev, "trip-1", 2, entered + 2 * PASS_MS)]  # budget gone
    steps = [drive.feed(drive.road.batch(i, [p], p.left_at_ms + 500))
             for i, p in zip((1, 0, 2), passes)]
    assert [outcomes(s)[0]["reason_code"] for s in steps] == ["ABOVE_CEILING", "", "ENERGY_LIMIT"]
    stranger = drive.road.pass_of(drive.other, "trip-1", 3, entered + 3 * PASS_MS)
    unknown = drive.road.pass_of(drive.ev, "no-such-trip", 3, entered + 4 * PASS_MS)
    step = drive.feed(drive.road.batch(3, [stranger, unknown], entered + 5 * PASS_MS))
    assert [o["reason_code"] for o in outcomes(step)] == ["NOT_THE_TRIPS_VEHICLE", "UNKNOWN_TRIP"]


def test_a_segment_of_another_operator_is_refused_whole() -> None:
    drive = Drive()
    other_road = Road(drive.world, "other", segments=2)
    drive.store = drive.world.store()
    drive.open()
    entered = drive.t0 + MINUTE_MS
    foreign = other_road.segments[0]
    from chargemesh.streams.sdk import wireless as sdk_wireless
    event = sdk_wireless.segment_passes(
        foreign, road_operator_id=drive.road.operator_id, batch_id="b",
        passes=[drive.road.pass_of(drive.ev, "trip-1", 0, entered)], at_ms=entered + PASS_MS)
    step = drive.feed(event)
    assert step.rejection is not None and step.rejection.reason == "SEGMENT_NOT_OF_OPERATOR"
    assert step.decisions == []


def test_a_forged_batch_is_refused_at_the_door() -> None:
    drive = Drive()
    drive.open()
    entered = drive.t0 + MINUTE_MS
    impostor = type(drive.road.segments[0]).seeded(drive.road.segments[0].credential_id,
                                                     drive.road.segment_ids[0], secret="forger")
    from chargemesh.streams.sdk import wireless as sdk_wireless
    forged = sdk_wireless.segment_passes(
        impostor, road_operator_id=drive.road.operator_id, batch_id="forged",
        passes=[drive.road.pass_of(drive.ev, "trip-1", 0, entered)], at_ms=entered + PASS_MS)
    verdict = admit(forged.encode(), forged.body.subject_key.encode(), MARKET.name, drive.store)
    assert isinstance(verdict, Refused) and verdict.rejection.reason == "BAD_SIGNATURE"


def test_an_idle_trip_settles_after_its_period_and_late_passes_are_refused() -> None:
    drive = Drive()
    drive.open(idle_close_ms=5 * MINUTE_MS)
    drive.traverse("trip-1", range(3), drive.t0 + MINUTE_MS)
    # another vehicle's pass moves the road's clock well past the idle period
    drive.feed(drive.road.trip(drive.other, "trip-2", drive.t0 + 20 * MINUTE_MS,
                               at_ms=drive.t0 + 20 * MINUTE_MS))
    late_at = drive.t0 + 20 * MINUTE_MS
    step = drive.feed(drive.road.batch(5, [
        drive.road.pass_of(drive.other, "trip-2", 5, late_at),
        drive.road.pass_of(drive.ev, "trip-1", 5, late_at - PASS_MS)], late_at + PASS_MS + 500))
    settled = decision(step, "TripSettled")
    assert (settled["trip_id"], settled["close_reason"], settled["passes_accepted"]) == (
        "trip-1", "IDLE_TIMEOUT", 3)
    assert settled["closed_at_ms"] == drive.t0 + MINUTE_MS + 3 * PASS_MS + 5 * MINUTE_MS
    assert decision(step, "SettlementAdmitted")["total_amount"] == expected_total(
        [(DELIVERED_WH, RATES[i % 2]) for i in range(3)])
    assert [o["reason_code"] for o in outcomes(step)] == ["", "TRIP_CLOSED"]
    closed = drive.feed(drive.road.close(drive.ev, "trip-1", late_at + MINUTE_MS))
    assert closed.rejection is not None and closed.rejection.reason == "TRIP_CLOSED"


def test_bad_trip_authorisations_are_refused_with_a_reason() -> None:
    drive = Drive()
    assert drive.open().rejection is None
    again = drive.open("trip-9")
    assert again.rejection is not None and again.rejection.reason == "TRIP_ALREADY_OPEN"
    dup = drive.feed(drive.road.trip(drive.other, "trip-1", drive.t0, at_ms=drive.t0))
    assert dup.rejection is not None and dup.rejection.reason == "DUPLICATE_TRIP"
    closer = drive.feed(drive.road.close(drive.other, "trip-1", drive.t0 + MINUTE_MS))
    assert closer.rejection is not None and closer.rejection.reason == "NOT_YOUR_TRIP"


def test_state_survives_a_save_and_restore_between_passes() -> None:
    drive = Drive()
    drive.open()
    drive.traverse("trip-1", range(2), drive.t0 + MINUTE_MS)
    drive.state = ledger.load_state(ledger.dump_state(drive.state))
    drive.traverse("trip-1", range(2, 4), drive.t0 + MINUTE_MS + 2 * PASS_MS)
    closed = drive.feed(drive.road.close(drive.ev, "trip-1", drive.t0 + 10 * MINUTE_MS))
    assert decision(closed, "SettlementAdmitted")["total_amount"] == expected_total(
        [(DELIVERED_WH, RATES[i % 2]) for i in range(4)])


def test_the_roads_ledger_stays_within_its_state_budget() -> None:
    """Open trips and their passes are refused LEDGER_FULL before the ledger's state record
    could outgrow the state topic's message limit; settling trips frees the room."""
    drive = Drive()
    vehicles = [drive.road.vehicle(f"v{n}") for n in range(200)]
    drive.store = drive.world.store()
    refused = []
    for n, v in enumerate(vehicles):
        step = drive.feed(drive.road.trip(v, f"t{n}", drive.t0, at_ms=drive.t0))
        if step.rejection is not None:
            refused.append(step.rejection.reason)
            continue
        entered = drive.t0 + MINUTE_MS
        passes = [drive.road.pass_of(v, f"t{n}", i, entered + i * PASS_MS) for i in range(10)]
        for i, ps in enumerate(passes):
            drive.feed(drive.road.batch(i, [ps], ps.left_at_ms + 500, batch_id=f"{n}/{i}"))
    assert refused and set(refused) == {"LEDGER_FULL"}
    assert len(ledger.dump_state(drive.state)) < MESSAGE_BYTES_MAX
    first = drive.feed(drive.road.close(vehicles[0], "t0", drive.t0 + 30 * MINUTE_MS))
    assert first.rejection is None
    again = drive.feed(drive.road.trip(vehicles[-1], "t-late", drive.t0 + 30 * MINUTE_MS,
                                       at_ms=drive.t0 + 30 * MINUTE_MS))
    assert again.rejection is None
