"""Issue 15 hole 3 on the real stack: an event is judged at the time of the log that admits it.

The attack: a vehicle with a booking is revoked for KEY_COMPROMISE (the revocation cancels its
booking); whoever holds its key signs a new order dated before the revocation. The station's
ledger, which learnt of the revocation in its own order, refuses it ``CREDENTIAL_REVOKED`` (on
the rejections topic and in ClickHouse ``rejections``), nothing of it is in the admitted log or
booked, while an unrevoked vehicle's order claiming the very same time is admitted and booked.
Then the station itself claims a time a month ahead of its ledger's clock, and a month behind:
both are refused ``CLOCK_SKEW`` and its heartbeat a minute later is admitted.
"""

from __future__ import annotations

import uuid

import pytest
from chargemesh.infra.stack.worker import event_ids, log_tail
from chargemesh.processors.log_clock import CLOCK_SKEW_MS_MAX
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import now_ms
from chargemesh.streams.topics import ADMITTED, DECISIONS, REJECTIONS
from chargemesh.units import DAY_MS, HOUR_MS, MINUTE_MS

from tests.conftest import Mesh
from tests.support.market import open_market

pytestmark = pytest.mark.integration


def test_a_revoked_vehicle_backdating_and_a_skewed_station_are_refused_at_log_time(
        mesh: Mesh) -> None:
    t = now_ms()
    world = mesh.world
    tag = f"h3-{uuid.uuid4().hex[:6]}"
    world.grid_operator(f"{tag}-grid-op", f"{tag}-zone")
    market = open_market(mesh, tag, t, [sdk.connector("c1", 150_000),
                                        sdk.connector("c2", 150_000)], hours=6,
                         grid_zone_id=f"{tag}-zone")
    compromised, twin = market.vehicle("compromised"), market.vehicle("twin")
    mesh.publish(*world.governance)
    world.governance.clear()
    station, start = market.station, market.start_ms
    booked = market.posted_order(compromised, "booked", start + HOUR_MS, connector_id="c1",
                                 at_ms=t + MINUTE_MS)
    mesh.publish(sdk.heartbeat(station, t), booked)

    decisions, rejections = mesh.reader(DECISIONS.name), mesh.reader(REJECTIONS.name)
    admitted = mesh.reader(ADMITTED.name)
    revoked_at = t + 2 * MINUTE_MS
    revocation = world.issuer.revoke(compromised.credential_id, effective_at_ms=revoked_at,
                                     reason_code="KEY_COMPROMISE", at_ms=revoked_at)
    mesh.publish(revocation)

    def cancelled(records: list) -> bool:  # type: ignore[type-arg]
        return any(r.event().event_type.endswith("CredentialReevaluated")
                   and r.payload()["subject_id"] == f"res:{market.order_id('booked')}"
                   for r in records)

    try:
        decisions.wait_for(cancelled, timeout_s=60, workers=(mesh.worker,))
    except TimeoutError:
        pytest.fail("worker log:\n" + log_tail(mesh.worker.log_path))

    # The revocation is in the station's ledger: the stolen key signs "before" it, in vain.
    backdated_ms = revoked_at - MINUTE_MS
    attack = market.posted_order(compromised, "attack", start + 2 * HOUR_MS, connector_id="c1",
                                 at_ms=backdated_ms)
    legit = market.posted_order(twin, "legit", start + 2 * HOUR_MS, connector_id="c2",
                                at_ms=backdated_ms)
    ahead = sdk.heartbeat(station, t + 30 * DAY_MS)
    behind = sdk.heartbeat(station, t - 30 * DAY_MS)
    on_time = sdk.heartbeat(station, t + 3 * MINUTE_MS)
    assert 30 * DAY_MS > CLOCK_SKEW_MS_MAX
    mesh.publish(attack, legit, ahead, behind, on_time)

    refused_ids = {attack.event_id, ahead.event_id, behind.event_id}
    try:
        rejections.wait_for(lambda rs: refused_ids <= {r.rejection()["event_id"] for r in rs},
                            timeout_s=60, workers=(mesh.worker,))
        admitted.wait_for(lambda rs: {legit.event_id, on_time.event_id} <= event_ids(rs),
                          timeout_s=60, workers=(mesh.worker,))
        decisions.wait_for(lambda rs: any(
            r.event().event_type.endswith("SlotReserved")
            and r.payload()["order_id"] == market.order_id("legit") for r in rs),
            timeout_s=60, workers=(mesh.worker,))
    except TimeoutError:
        pytest.fail("worker log:\n" + log_tail(mesh.worker.log_path))
    admitted.poll(1.0)
    decisions.poll(0.5)
    reasons = {r.rejection()["event_id"]: r.rejection()["reason_code"]
               for r in rejections.records if r.rejection()["event_id"] in refused_ids}
    assert reasons == {attack.event_id: "CREDENTIAL_REVOKED", ahead.event_id: "CLOCK_SKEW",
                       behind.event_id: "CLOCK_SKEW"}
    # nothing of the refused in the admitted log; no decision caused by them
    assert not refused_ids & event_ids(admitted.records)
    assert not [r for r in decisions.records
                if r.payload().get("order_id") == market.order_id("attack")]
    ours = {legit.event_id, on_time.event_id, revocation.event_id, booked.event_id}
    assert not [r.rejection() for r in rejections.records
                if r.rejection()["event_id"] in ours]
    for reader in (decisions, rejections, admitted):
        reader.close()

    rows = mesh.wait_rows("SELECT event_id, reason_code FROM rejections FINAL "
                          "WHERE event_id IN %(e)s ORDER BY reason_code, event_id",
                          {"e": tuple(sorted(refused_ids))}, count=3)
    assert sorted(rows) == sorted([(attack.event_id, "CREDENTIAL_REVOKED"),
                                   (ahead.event_id, "CLOCK_SKEW"),
                                   (behind.event_id, "CLOCK_SKEW")])
    # the slot ledger: the compromised vehicle's booking released by the revocation, the twin's
    # booked, and no trace of the backdated order
    mesh.wait_rows("SELECT reservation_id FROM slot_ledger FINAL WHERE station_id = %(s)s AND "
                   "status = 'RELEASED'", {"s": market.station_id})
    live = mesh.wait_rows("SELECT reservation_id, status, reason_code FROM slot_ledger FINAL "
                          "WHERE station_id = %(s)s ORDER BY reservation_id",
                          {"s": market.station_id}, count=2)
    assert live == [(f"res:{market.order_id('booked')}", "RELEASED", "CREDENTIAL_REVOKED"),
                    (f"res:{market.order_id('legit')}", "RESERVED", "")]
