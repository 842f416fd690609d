"""Issue 16 on the real stack: re-pricing binds in flight (M6, M3).

A zone's operator signals 1.20/kWh for minutes 12-20 under a tariff filed at a 0.80 ceiling that
caps: the running session is proposed 0.80 for the window, the vehicle's acceptance at 1.20 is
refused ``PRICE_MISMATCH`` (rejections topic and ClickHouse) and its acceptance at 0.80 admitted;
the settlement bills the booked rate, then 0.80 from minute 12 to 20, then the booked rate again.
A second session that starts at minute 15, inside the signal, is proposed the price from its
start. Under a tariff that refuses prices above its ceiling the routed signal is refused
``ABOVE_FILED_CEILING``. A vehicle that ignores a proposal past the rules' response deadline has
its session stopped by the station's ledger (``SessionStopped``, reason code
``REPRICE_UNANSWERED``); a reading after the stop is refused and the session settles up to the
stop.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from chargemesh.infra.stack.worker import TopicReader, event_ids, log_tail
from chargemesh.processors.records import decision_id
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.streams.topics import ADMITTED, DECISIONS, REJECTIONS, SETTLEMENTS
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, Market, open_market

pytestmark = pytest.mark.integration

METER_START_WH = 1_000


def wait_rejected(mesh: Mesh, refused: list[str], admitted: list[SignedEvent]) -> dict[str, str]:
    """The reason of each ``refused`` event id (rejections topic), once every ``admitted`` event
    is in the admitted log; none of ``admitted`` refused."""
    rejections, log = mesh.reader(REJECTIONS.name), mesh.reader(ADMITTED.name)
    try:
        rejections.wait_for(lambda rs: set(refused) <= {r.rejection()["event_id"] for r in rs},
                            timeout_s=60, workers=(mesh.worker,))
        log.wait_for(lambda rs: {e.event_id for e in admitted} <= event_ids(rs), timeout_s=60,
                     workers=(mesh.worker,))
    except TimeoutError:
        seen = {r.rejection()["event_id"]: r.rejection()["reason_code"]
                for r in rejections.records}
        pytest.fail(f"refused: {seen}\nworker log:\n" + log_tail(mesh.worker.log_path))
    finally:
        rejections.close()
        log.close()
    reasons = {r.rejection()["event_id"]: r.rejection()["reason_code"] for r in rejections.records}
    assert not {e.event_id for e in admitted} & set(reasons)
    return {event_id: reasons[event_id] for event_id in refused}


def decisions_of(mesh: Mesh, station_id: str, kind: str, count: int) -> list[dict[str, Any]]:
    reader = TopicReader(mesh.settings, DECISIONS.name)

    def found(rs: list[Any]) -> list[dict[str, Any]]:
        return [r.payload() for r in rs if r.key == station_id.encode()
                and r.event().event_type.rsplit(".", 1)[1] == kind]
    try:
        reader.wait_for(lambda rs: len(found(rs)) >= count, timeout_s=60, workers=(mesh.worker,))
        return found(reader.records)
    except TimeoutError:
        pytest.fail("worker log:\n" + log_tail(mesh.worker.log_path))
    finally:
        reader.close()


def settlement_of(mesh: Mesh, session_id: str) -> dict[str, Any]:
    reader = TopicReader(mesh.settings, SETTLEMENTS.name)

    def found(rs: list[Any]) -> list[dict[str, Any]]:
        return [r.payload() for r in rs if r.key == session_id.encode()
                and r.event().event_type.endswith("SettlementAdmitted")]
    try:
        reader.wait_for(lambda rs: bool(found(rs)), timeout_s=60, workers=(mesh.worker,))
        return found(reader.records)[0]
    except TimeoutError:
        pytest.fail("worker log:\n" + log_tail(mesh.worker.log_path))
    finally:
        reader.close()


def energy_lines(settlement: dict[str, Any]) -> list[tuple[str, int, Decimal, int, int]]:
    return [(ln["kind"], ln["quantity_wh"], Decimal(ln["unit_rate_per_kwh"]), ln["from_at_ms"],
             ln["until_at_ms"]) for ln in settlement["lines"] if ln["kind"].startswith("ENERGY")]


class Charge:
    """One vehicle's session on one connector, event by event (minutes from its slot's start)."""

    def __init__(self, market: Market, vehicle: Participant, name: str, connector_id: str,
                 start_ms: int) -> None:
        self.market, self.vehicle, self.connector_id = market, vehicle, connector_id
        self.session_id, self.start_ms, self.seq = f"{market.prefix}-{name}", start_ms, 0
        self.booking = market.posted_order(vehicle, name, start_ms, slots=4,
                                           connector_id=connector_id, energy_wh=30_000,
                                           ceiling="1.50")
        self.handshake = sdk.handshake(market.station, vehicle, session_id=self.session_id,
                                       reservation_id=f"res:{market.order_id(name)}",
                                       ident=market.ident(vehicle, connector_id),
                                       started_at_ms=start_ms, meter_start_wh=METER_START_WH)

    def at(self, minutes: int) -> int:
        return self.start_ms + minutes * MINUTE_MS

    def read(self, minutes: int, delivered_wh: int) -> SignedEvent:
        self.seq += 1
        return sdk.meter_reading(self.market.meters[self.connector_id],
                                 session_id=self.session_id, station_id=self.market.station_id,
                                 connector_id=self.connector_id, seq=self.seq,
                                 import_wh=METER_START_WH + delivered_wh,
                                 at_ms=self.at(minutes))

    def accept(self, grid_event_id: str, rate: str, minutes: int) -> SignedEvent:
        return sdk.reprice_accepted(self.vehicle, session_id=self.session_id,
                                    station_id=self.market.station_id,
                                    grid_event_id=grid_event_id, rate_per_kwh=rate,
                                    at_ms=self.at(minutes))

    def close(self, minutes: int, delivered_wh: int) -> SignedEvent:
        return sdk.meter_closed_out(self.market.station, session_id=self.session_id,
                                    connector_id=self.connector_id,
                                    closed_at_ms=self.at(minutes),
                                    final_import_wh=METER_START_WH + delivered_wh,
                                    last_reading_seq=self.seq)


def test_a_price_spike_is_capped_at_the_filed_ceiling_and_billed_only_in_its_window(
        mesh: Mesh) -> None:
    t = now_ms()
    zone = "m6-cap-zone"
    operator = mesh.world.grid_operator("m6-cap-op", zone)
    market = open_market(mesh, "m6cap", t, [sdk.connector("c1", 50_000),
                                            sdk.connector("c2", 50_000)],
                         grid_zone_id=zone, ceiling="0.80")
    start = market.start_ms + SLOT_MS
    s1 = Charge(market, market.vehicle("ev1"), "s1", "c1", start)
    s2 = Charge(market, market.vehicle("ev2"), "s2", "c2", start + SLOT_MS)  # minute 15
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    first = [s1.booking, s2.booking, s1.handshake, s1.read(4, 2_000), s1.read(8, 4_000)]
    mesh.publish(*first)
    wait_rejected(mesh, [], first)  # the station has joined its zone by now
    spike = sdk.grid_event(operator, grid_event_id="m6-spike", grid_zone_id=zone,
                           kind="PRICE_SIGNAL", from_ms=s1.at(12), until_ms=s1.at(20),
                           rate_per_kwh="1.20")
    mesh.publish(spike)
    [proposal] = decisions_of(mesh, market.station_id, "RepriceProposed", 1)
    assert (proposal["session_id"], Decimal(proposal["new_rate_per_kwh"]),
            proposal["effective_from_ms"], proposal["effective_until_ms"]) == (
        s1.session_id, Decimal("0.80"), s1.at(12), s1.at(20))  # capped; the window named

    above, capped = s1.accept("m6-spike", "1.20", 11), s1.accept("m6-spike", "0.80", 11)
    # s2 starts at minute 15, inside the signal: proposed the price from its own start
    s2_accept = s2.accept("m6-spike", "0.80", 1)
    rest = [s1.read(12, 6_000), s2.handshake, s2_accept, s1.read(16, 8_000), s2.read(3, 1_500),
            s1.read(20, 10_000), s2.read(5, 2_500), s1.read(24, 12_000), s2.read(10, 5_000)]
    mesh.publish(above, capped, *rest)
    assert wait_rejected(mesh, [above.event_id], [capped, *rest]) == {
        above.event_id: "PRICE_MISMATCH"}
    proposals = decisions_of(mesh, market.station_id, "RepriceProposed", 2)
    assert [(p["session_id"], p["effective_from_ms"], p["effective_until_ms"])
            for p in proposals][1] == (s2.session_id, s2.at(0), s1.at(20))

    mesh.publish(s1.close(28, 14_000), s2.close(15, 7_500))
    assert energy_lines(settlement_of(mesh, s1.session_id)) == [
        ("ENERGY", 6_000, Decimal("0.40"), s1.at(0), s1.at(12)),
        ("ENERGY_REPRICED", 4_000, Decimal("0.80"), s1.at(12), s1.at(20)),
        ("ENERGY", 4_000, Decimal("0.40"), s1.at(20), s1.at(28))]
    assert energy_lines(settlement_of(mesh, s2.session_id)) == [
        ("ENERGY_REPRICED", 2_500, Decimal("0.80"), s2.at(0), s2.at(5)),
        ("ENERGY", 5_000, Decimal("0.40"), s2.at(5), s2.at(15))]
    rows = mesh.wait_rows("SELECT reason_code FROM rejections FINAL WHERE event_id = %(e)s",
                          {"e": above.event_id})
    assert rows == [("PRICE_MISMATCH",)]


def test_a_tariff_that_refuses_prices_above_its_ceiling_refuses_the_signal(mesh: Mesh) -> None:
    t = now_ms()
    zone = "m6-refuse-zone"
    operator = mesh.world.grid_operator("m6-refuse-op", zone)
    market = open_market(mesh, "m6ref", t, [sdk.connector("c1", 50_000)], grid_zone_id=zone,
                         ceiling="0.80", tariff={"above_ceiling": "REFUSE"})
    s1 = Charge(market, market.vehicle("ev1"), "s1", "c1", market.start_ms + SLOT_MS)
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    first = [s1.booking, s1.handshake, s1.read(8, 4_000)]
    mesh.publish(*first)
    wait_rejected(mesh, [], first)
    spike = sdk.grid_event(operator, grid_event_id="m6r-spike", grid_zone_id=zone,
                           kind="PRICE_SIGNAL", from_ms=s1.at(12), until_ms=s1.at(20),
                           rate_per_kwh="1.20")
    within = sdk.grid_event(operator, grid_event_id="m6r-within", grid_zone_id=zone,
                            kind="PRICE_SIGNAL", from_ms=s1.at(12), until_ms=s1.at(20),
                            rate_per_kwh="0.61")
    mesh.publish(spike, within)
    routed = decision_id(spike.event_id, 0)  # its GridEventRouted to the zone's only station
    assert wait_rejected(mesh, [routed], []) == {routed: "ABOVE_FILED_CEILING"}
    [proposal] = decisions_of(mesh, market.station_id, "RepriceProposed", 1)
    assert (proposal["grid_event_id"], Decimal(proposal["new_rate_per_kwh"])) == (
        "m6r-within", Decimal("0.61"))
    rows = mesh.wait_rows("SELECT reason_code FROM rejections FINAL WHERE event_id = %(e)s",
                          {"e": routed})
    assert rows == [("ABOVE_FILED_CEILING",)]


def test_an_ignored_reprice_stops_the_session_at_the_deadline_and_it_settles_to_then(
        mesh: Mesh) -> None:
    t = now_ms()
    zone = "m6-ignore-zone"
    operator = mesh.world.grid_operator("m6-ignore-op", zone)
    market = open_market(mesh, "m6ign", t, [sdk.connector("c1", 50_000)], grid_zone_id=zone,
                         reprice_response_ms=2 * MINUTE_MS)
    s1 = Charge(market, market.vehicle("ev1"), "s1", "c1", market.start_ms + SLOT_MS)
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    first = [s1.booking, s1.handshake, s1.read(8, 4_000)]
    mesh.publish(*first)
    wait_rejected(mesh, [], first)
    mesh.publish(sdk.grid_event(operator, grid_event_id="m6i-spike", grid_zone_id=zone,
                                kind="PRICE_SIGNAL", from_ms=s1.at(10), until_ms=s1.at(40),
                                rate_per_kwh="0.61"))
    [proposal] = decisions_of(mesh, market.station_id, "RepriceProposed", 1)
    deadline = proposal["respond_by_ms"]
    assert deadline == s1.at(12)  # the ledger's clock (minute 10) + the rules' 2 minutes
    in_time = s1.read(11, 5_000)
    late = s1.read(14, 7_000)  # the station's clock passes the deadline: the ledger stops it
    too_late = s1.accept("m6i-spike", "0.61", 14)
    mesh.publish(in_time, late, too_late)
    assert wait_rejected(mesh, [late.event_id, too_late.event_id], [in_time]) == {
        late.event_id: "READING_OUTSIDE_SESSION", too_late.event_id: "SESSION_CLOSED"}
    [stop] = decisions_of(mesh, market.station_id, "SessionStopped", 1)
    assert (stop["session_id"], stop["stopped_at_ms"], stop["reason"], stop["reason_code"]) == (
        s1.session_id, deadline, "REPRICE_REFUSED", "REPRICE_UNANSWERED")

    s1.seq -= 1  # the refused reading is not the ledger's
    mesh.publish(s1.close(12, 5_800))
    settlement = settlement_of(mesh, s1.session_id)
    assert energy_lines(settlement) == [("ENERGY", 5_800, Decimal("0.40"), s1.at(0), deadline)]
    assert settlement["energy_import_wh"] == 5_800
    rows = mesh.wait_rows("SELECT reason_code FROM rejections FINAL WHERE event_id = %(e)s",
                          {"e": late.event_id})
    assert rows == [("READING_OUTSIDE_SESSION",)]
