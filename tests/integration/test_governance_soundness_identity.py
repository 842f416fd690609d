"""Issue 15 hole 4 on the real stack: jurisdiction and identity are bound to the station.

The attack: a station credentialed for US-CA records a session whose identity says jurisdiction
``ZZ-NOWHERE`` and a connector hardware id that is not its own (and, in its variants, a VIN id
kind for a pseudonymous vehicle; a calendar of its own in ``ZZ-NOWHERE``). Each is refused with
its reason (``JURISDICTION_MISMATCH``, ``UNKNOWN_CONNECTOR_HARDWARE``,
``VEHICLE_ID_KIND_MISMATCH``) on the rejections topic and in ClickHouse ``rejections``, is absent
from the admitted log and from ``session_lifecycle``; the legitimate twin, built with the SDK's
defaults, is admitted and settles under US-CA.
"""

from __future__ import annotations

from typing import Any

import pytest
from chargemesh.infra.stack.worker import event_ids, log_tail
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import now_ms
from chargemesh.streams.topics import ADMITTED, REJECTIONS
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, open_market

pytestmark = pytest.mark.integration


def test_a_session_outside_the_stations_jurisdiction_and_hardware_is_refused(
        mesh: Mesh) -> None:
    t = now_ms()
    m = open_market(mesh, "h4", t, [sdk.connector("c1", 150_000)])
    car = m.vehicle("car")
    rogue_calendar = sdk.calendar_published(
        m.station, rate_authority_id=m.authority_id, jurisdiction="ZZ-NOWHERE",
        tariff_id=m.tariff_id, rules_version=m.rules_version,
        connectors=[sdk.connector("c1", 150_000, meter_credential_id=m.meters["c1"].credential_id)],
        slot_duration_ms=SLOT_MS, horizon_start_ms=m.start_ms,
        horizon_end_ms=m.start_ms + 4 * SLOT_MS, posted_rate_per_kwh=m.posted,
        currency="USD", calendar_version=2, at_ms=t + 1)
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    booking = m.posted_order(car, "o1", m.start_ms, slots=4, connector_id="c1", at_ms=t + 2)

    def shake(session: str, **overrides: Any) -> SignedEvent:
        ident = dict(m.ident(car, "c1"), **overrides)
        return sdk.handshake(m.station, car, session_id=f"h4-{session}",
                             reservation_id=f"res:{m.order_id('o1')}", ident=ident,
                             started_at_ms=m.start_ms)

    attacks = {
        "JURISDICTION_MISMATCH": shake("nowhere", jurisdiction="ZZ-NOWHERE",
                                       connector_hardware_id="hw-not-mine"),
        "UNKNOWN_CONNECTOR_HARDWARE": shake("foreign-hw", connector_hardware_id="hw-not-mine"),
        "VEHICLE_ID_KIND_MISMATCH": shake("vin", vehicle_id_kind="VIN"),
    }
    twin = shake("legit")
    mesh.publish(rogue_calendar, booking, *attacks.values(), twin)
    meter = m.meters["c1"]
    reading = sdk.meter_reading(meter, session_id="h4-legit", station_id=m.station_id,
                                connector_id="c1", seq=1, import_wh=10_000,
                                at_ms=m.start_ms + 20 * MINUTE_MS)
    close = sdk.meter_closed_out(m.station, session_id="h4-legit", connector_id="c1",
                                 closed_at_ms=m.start_ms + 30 * MINUTE_MS,
                                 final_import_wh=12_000, last_reading_seq=1)
    mesh.publish(reading, close,
                 sdk.close_out_countersigned(car, close, m.start_ms + 31 * MINUTE_MS))

    refused_ids = {rogue_calendar.event_id} | {e.event_id for e in attacks.values()}
    wanted = {booking.event_id, twin.event_id, reading.event_id, close.event_id}
    rejections, admitted = mesh.reader(REJECTIONS.name), mesh.reader(ADMITTED.name)
    try:
        rejections.wait_for(
            lambda rs: refused_ids <= {r.rejection()["event_id"] for r in rs},
            timeout_s=60, workers=(mesh.worker,))
        admitted.wait_for(lambda rs: wanted <= event_ids(rs), timeout_s=60,
                          workers=(mesh.worker,))
    except TimeoutError:
        pytest.fail("worker log:\n" + log_tail(mesh.worker.log_path))
    codes = {r.rejection()["event_id"]: r.rejection()["reason_code"] for r in rejections.records}
    assert codes[rogue_calendar.event_id] == "JURISDICTION_MISMATCH"
    for code, attack in attacks.items():
        assert codes[attack.event_id] == code
    assert not refused_ids & event_ids(admitted.records)
    assert not wanted & set(codes)
    rejections.close()
    admitted.close()

    # ClickHouse: every refusal with its reason; only the legitimate session, under US-CA
    rows = mesh.wait_rows("SELECT event_id, reason_code FROM rejections FINAL "
                          "WHERE event_id IN %(e)s", {"e": tuple(sorted(refused_ids))},
                          count=len(refused_ids))
    assert dict(rows) == {rogue_calendar.event_id: "JURISDICTION_MISMATCH",
                          **{a.event_id: code for code, a in attacks.items()}}
    [settled] = mesh.wait_rows("SELECT jurisdiction, total_amount > 0 FROM settlements FINAL "
                               "WHERE session_id = 'h4-legit'")
    assert settled == ("US-CA", 1)
    lifecycle = "FROM session_lifecycle FINAL WHERE station_id = %(s)s"
    assert mesh.query(f"SELECT DISTINCT session_id {lifecycle}", {"s": m.station_id}) == [
        ("h4-legit",)]
    assert mesh.query(f"SELECT DISTINCT jurisdiction, connector_hardware_id {lifecycle} "
                      "AND jurisdiction != ''", {"s": m.station_id}) == [("US-CA", "hw-c1")]
