"""Issue 16 on the real stack: curtailment and capacity limits bind in flight (M5, M7, P3, M8).

A zone with no observer set, registered to its operator. A session runs on a 50 kW connector;
the operator curtails the zone to 3 kW per connector: the station's ledger gives the session a
signed ``PowerLimitSet`` (decisions topic, ClickHouse ``power_limits``) and displaces a later
booking that no longer fits; a meter reporting 40 kW under the 3 kW limit is refused
``IMPLAUSIBLE_READING`` (rejections topic and ClickHouse), its honest twin admitted; the
operator's ``RESTORED`` lifts the limit (a second ``PowerLimitSet``) and the session settles on
the readings admitted. A calendar declaring 5 MW on an AC Level 2 connector is refused
``CONNECTOR_POWER_ABOVE_KIND``; its 22 kW twin is admitted.
"""

from __future__ import annotations

from typing import Any

import pytest
from chargemesh.infra.stack.worker import TopicReader, event_ids, log_tail
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import now_ms
from chargemesh.streams.topics import ADMITTED, DECISIONS, REJECTIONS, SETTLEMENTS
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, open_market

pytestmark = pytest.mark.integration

ZONE = "m5-zone"
POWER_W = 50_000
METER_START_WH = 1_000


def wait_rejected(mesh: Mesh, refused: list[SignedEvent],
                  admitted: list[SignedEvent]) -> dict[str, str]:
    """The reason of each ``refused`` event (rejections topic), once every ``admitted`` one is
    in the admitted log (where the ledger's refusals are kept too); none of ``admitted``
    refused."""
    rejections, log = mesh.reader(REJECTIONS.name), mesh.reader(ADMITTED.name)
    wanted = {e.event_id for e in refused}
    try:
        rejections.wait_for(lambda rs: wanted <= {r.rejection()["event_id"] for r in rs},
                            timeout_s=60, workers=(mesh.worker,))
        log.wait_for(lambda rs: {e.event_id for e in admitted} <= event_ids(rs), timeout_s=60,
                     workers=(mesh.worker,))
    except TimeoutError:
        pytest.fail("worker log:\n" + log_tail(mesh.worker.log_path))
    finally:
        rejections.close()
        log.close()
    reasons = {r.rejection()["event_id"]: r.rejection()["reason_code"] for r in rejections.records}
    assert not {e.event_id for e in admitted} & set(reasons)
    return {event_id: reasons[event_id] for event_id in wanted}


def decisions_of(mesh: Mesh, station_id: str, kinds: tuple[str, ...], count: int,
                 reservation_id: str = "") -> list[dict[str, Any]]:
    """The station's decisions of ``kinds`` (of ``reservation_id`` if given), once ``count``."""
    reader = TopicReader(mesh.settings, DECISIONS.name)

    def found(rs: list[Any]) -> list[dict[str, Any]]:
        return [r.payload() for r in rs if r.key == station_id.encode()
                and r.event().event_type.rsplit(".", 1)[1] in kinds
                and reservation_id in ("", r.payload().get("reservation_id"))]
    try:
        reader.wait_for(lambda rs: len(found(rs)) >= count, timeout_s=60,
                        workers=(mesh.worker,))
        return found(reader.records)
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
    finally:
        reader.close()


def test_an_operators_curtailment_binds_the_running_session_and_restored_lifts_it(
        mesh: Mesh) -> None:
    t = now_ms()
    operator = mesh.world.grid_operator("m5-grid-op", ZONE)
    market = open_market(mesh, "m5", t, [sdk.connector("c1", POWER_W)], grid_zone_id=ZONE)
    vehicle, later = market.vehicle("ev"), market.vehicle("later")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    start = market.start_ms + SLOT_MS
    session_id = "m5-s1"
    booking = market.posted_order(vehicle, "o1", start, slots=4, connector_id="c1",
                                  energy_wh=30_000)
    # a later booking on c1 that a 3 kW limit leaves no room for (10 kWh in 15 minutes)
    later_booking = market.posted_order(later, "o2", start + 60 * MINUTE_MS, slots=1,
                                        connector_id="c1", energy_wh=10_000)
    handshake = sdk.handshake(market.station, vehicle, session_id=session_id,
                              reservation_id=f"res:{market.order_id('o1')}",
                              ident=market.ident(vehicle, "c1"), started_at_ms=start,
                              meter_start_wh=METER_START_WH)
    meter = market.meters["c1"]

    def reading(seq: int, minutes: int, import_wh: int) -> SignedEvent:
        return sdk.meter_reading(meter, session_id=session_id, station_id=market.station_id,
                                 connector_id="c1", seq=seq, import_wh=import_wh,
                                 at_ms=start + minutes * MINUTE_MS)

    first = reading(1, 10, METER_START_WH + 5_000)  # 30 kW before any limit
    mesh.publish(booking, later_booking, handshake, first)
    wait_rejected(mesh, [], [first])  # the station has joined its zone by now
    curtailment = sdk.grid_event(operator, grid_event_id="m5-curtail", grid_zone_id=ZONE,
                                 kind="CURTAILMENT", from_ms=start + 15 * MINUTE_MS,
                                 until_ms=start + 90 * MINUTE_MS, capacity_limit_w=3_000)
    mesh.publish(curtailment)
    [limit] = decisions_of(mesh, market.station_id, ("PowerLimitSet",), 1)
    assert (limit["session_id"], limit["grid_event_id"], limit["kind"], limit["power_limit_w"],
            limit["effective_from_ms"], limit["until_at_ms"]) == (
        session_id, "m5-curtail", "CURTAILMENT", 3_000, start + 15 * MINUTE_MS,
        start + 90 * MINUTE_MS)
    displaced = decisions_of(mesh, market.station_id, ("SlotReallocated", "SlotReleased"), 1,
                             reservation_id=f"res:{market.order_id('o2')}")
    assert [d["reason_code"] for d in displaced] == ["DISPLACED_CURTAILMENT"]

    # 40 kW from minute 10 to 30 on a connector curtailed to 3 kW from minute 15: refused
    forty_kw = reading(2, 30, METER_START_WH + 5_000 + 13_333)
    # the honest meter: 48 kW to minute 15, then 2.8 kW
    honest = reading(2, 30, METER_START_WH + 5_000 + 4_000 + 700)
    mesh.publish(forty_kw, honest)
    assert wait_rejected(mesh, [forty_kw], [honest]) == {forty_kw.event_id: "IMPLAUSIBLE_READING"}

    restored = sdk.grid_event(operator, grid_event_id="m5-restored", grid_zone_id=ZONE,
                              kind="RESTORED", from_ms=start + 40 * MINUTE_MS,
                              until_ms=start + 90 * MINUTE_MS)
    mesh.publish(restored)
    limits = decisions_of(mesh, market.station_id, ("PowerLimitSet",), 2)
    assert [(d["kind"], d["power_limit_w"], d["effective_from_ms"]) for d in limits][1] == (
        "RESTORED", POWER_W, start + 40 * MINUTE_MS)
    # 3 kW to minute 40, then 40 kW: plausible once the limit is lifted
    final_wh = METER_START_WH + 5_000 + 4_000 + 700 + 500 + 6_600
    third = reading(3, 50, final_wh)
    close = sdk.meter_closed_out(market.station, session_id=session_id, connector_id="c1",
                                 closed_at_ms=start + 51 * MINUTE_MS, final_import_wh=final_wh,
                                 last_reading_seq=3)
    mesh.publish(third, close)
    settlement = settlement_of(mesh, session_id)
    assert settlement["energy_import_wh"] == final_wh - METER_START_WH
    assert forty_kw.event_id not in settlement["evidence_event_ids"]
    assert {honest.event_id, third.event_id} <= set(settlement["evidence_event_ids"])

    rows = mesh.wait_rows("SELECT reason_code FROM rejections FINAL WHERE event_id = %(e)s",
                          {"e": forty_kw.event_id})
    assert rows == [("IMPLAUSIBLE_READING",)]
    rows = mesh.wait_rows(
        "SELECT kind, power_limit_w, effective_from_ms, until_at_ms FROM power_limits FINAL "
        "WHERE session_id = %(s)s ORDER BY decided_at_ms, kind", {"s": session_id}, count=2)
    assert rows == [("CURTAILMENT", 3_000, start + 15 * MINUTE_MS, start + 90 * MINUTE_MS),
                    ("RESTORED", POWER_W, start + 40 * MINUTE_MS, start + 90 * MINUTE_MS)]


def test_a_connectors_declared_power_is_bounded_by_its_kind(mesh: Mesh) -> None:
    t = now_ms()
    market = open_market(mesh, "m8kind", t, [sdk.connector("c1", 11_000, kind="AC_L2")])
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()

    def calendar(version: int, power_w: int) -> SignedEvent:
        connector = sdk.connector("c1", power_w, kind="AC_L2",
                                  meter_credential_id=market.meters["c1"].credential_id)
        return sdk.calendar_published(
            market.station, rate_authority_id=market.authority_id, jurisdiction="US-CA",
            tariff_id=market.tariff_id, rules_version=market.rules_version,
            connectors=[connector], slot_duration_ms=SLOT_MS, horizon_start_ms=market.start_ms,
            horizon_end_ms=market.start_ms + 24 * 3_600_000, posted_rate_per_kwh="0.40",
            currency="USD", calendar_version=version, at_ms=t + version)

    five_mw, twin = calendar(2, 5_000_000), calendar(3, 22_000)
    mesh.publish(five_mw, twin)
    assert wait_rejected(mesh, [five_mw], [twin]) == {five_mw.event_id:
                                                      "CONNECTOR_POWER_ABOVE_KIND"}
    rows = mesh.wait_rows("SELECT reason_code FROM rejections FINAL WHERE event_id = %(e)s",
                          {"e": five_mw.event_id})
    assert rows == [("CONNECTOR_POWER_ABOVE_KIND",)]
