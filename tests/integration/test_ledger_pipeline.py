"""Issue 4 on the real stack: the slot ledger decides races, refusals, disruption and no-shows."""

from __future__ import annotations

from typing import Any

import pytest

from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import now_ms
from chargemesh.streams.topics import DECISIONS, REJECTIONS

from tests.conftest import Mesh
from tests.support.market import HOUR_MS, SLOT_MS, Market, open_market
from chargemesh.infra.stack.worker import Record, TopicReader

pytestmark = pytest.mark.integration


def decisions_for(records: list[Record], station_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Decisions of one station, deduplicated by event id, in publication order."""
    seen, out = set(), []
    for r in records:
        if r.key != station_id.encode():
            continue
        event = r.event()
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        out.append((event.event_type.rsplit(".", 1)[1], r.payload()))
    return out


def wait_decisions(mesh: Mesh, market: Market, predicate: Any,
                   timeout_s: float = 45) -> list[tuple[str, dict[str, Any]]]:
    reader = TopicReader(mesh.settings, DECISIONS.name)
    try:
        reader.wait_for(lambda rs: predicate(decisions_for(rs, market.station_id)),
                        timeout_s=timeout_s, workers=(mesh.worker,))
        return decisions_for(reader.records, market.station_id)
    finally:
        reader.close()


def by_order(decisions: list[tuple[str, dict[str, Any]]], order_id: str) -> list[tuple[str, dict]]:
    return [(k, p) for k, p in decisions if p.get("order_id") == order_id
            or p.get("reservation_id") == f"res:{order_id}"]


def test_two_vehicles_race_for_the_last_free_slot(mesh: Mesh) -> None:
    t = now_ms()
    market = open_market(mesh, "race", t, [sdk.connector("c1", 150_000)])
    a, b, c = market.vehicle("a"), market.vehicle("b"), market.vehicle("c")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    slot = market.start_ms + 4 * SLOT_MS
    mesh.publish(market.posted_order(c, "c-earlier", slot - SLOT_MS))  # other slot stays taken
    mesh.publish(market.posted_order(a, "a", slot), market.posted_order(b, "b", slot))
    decisions = wait_decisions(mesh, market, lambda ds: len(ds) >= 3)
    reserved = [p for k, p in decisions if k == "SlotReserved"]
    rejected = [p for k, p in decisions if k == "OrderRejected"]
    assert {p["order_id"] for p in reserved} == {market.order_id("c-earlier"),
                                                 market.order_id("a")}
    assert [(p["order_id"], p["reason_code"]) for p in rejected] == [
        (market.order_id("b"), "SLOT_TAKEN")]
    winner = next(p for p in reserved if p["order_id"] == market.order_id("a"))
    assert (winner["connector_id"], winner["slot_start_at_ms"]) == ("c1", slot)
    assert str(winner["rate_per_kwh"]) == "0.400000"
    # analysts see the same ledger in ClickHouse
    rows = mesh.wait_rows("SELECT reservation_id, connector_id, status FROM slot_ledger FINAL "
                          "WHERE station_id = %(s)s ORDER BY reservation_id",
                          {"s": market.station_id}, count=2)
    assert [(r[1], r[2]) for r in rows] == [("c1", "RESERVED"), ("c1", "RESERVED")]
    rejections = TopicReader(mesh.settings, REJECTIONS.name)
    rejections.wait_for(lambda rs: any(r.rejection()["reason_code"] == "SLOT_TAKEN"
                                       and r.rejection()["author_credential_id"] == b.credential_id
                                       for r in rs), timeout_s=20)
    rejections.close()


def test_refusals_each_carry_their_reason(mesh: Mesh) -> None:
    t = now_ms()
    market = open_market(mesh, "refuse", t, [sdk.connector("c1", 50_000),
                                              sdk.connector("c2", 50_000)], hours=4)
    v = market.vehicle("v")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    fault = sdk.capacity_changed(market.station, connector_id="c2", available=False,
                                 from_ms=market.start_ms, until_ms=market.start_ms + HOUR_MS,
                                 cause="FAULT", at_ms=t)
    mesh.publish(fault)
    mesh.publish(
        market.bid(v, "above-ceiling", market.start_ms + 8 * SLOT_MS, rate="0.95",
                   ceiling="1.00"),
        market.posted_order(v, "outside", market.start_ms + 5 * HOUR_MS),
        market.posted_order(v, "faulted", market.start_ms, connector_id="c2"),
        market.posted_order(v, "ok", market.start_ms, connector_id="c1"),
    )
    decisions = wait_decisions(mesh, market, lambda ds: len(ds) >= 4)
    outcome = {p["order_id"].split("-", 1)[1]: (k, p.get("reason_code")) for k, p in decisions}
    assert outcome == {
        "above-ceiling": ("OrderRejected", "ABOVE_FILED_CEILING"),
        "outside": ("OrderRejected", "SLOT_OUTSIDE_CALENDAR"),
        "faulted": ("OrderRejected", "CONNECTOR_UNAVAILABLE"),
        "ok": ("SlotReserved", None),
    }


def test_curtailment_reallocates_then_cancels_by_the_published_rules(mesh: Mesh) -> None:
    t = now_ms()
    market = open_market(mesh, "curtail", t, [sdk.connector("c1", 50_000),
                                               sdk.connector("c2", 50_000)],
                         reallocation="SAME_SLOT_OTHER_CONNECTOR")
    vip, flex = market.vehicle("vip"), market.vehicle("flex")
    late, other = market.vehicle("late"), market.vehicle("other")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    slot, later = market.start_ms + 2 * HOUR_MS, market.start_ms + 3 * HOUR_MS
    mesh.publish(
        market.posted_order(flex, "flex", slot, connector_id="c1", curtailable=True),
        market.posted_order(vip, "vip", slot, connector_id="c2", demand_response_priority=5),
        market.posted_order(late, "late", later, connector_id="c1"),
        market.posted_order(other, "other", later, connector_id="c2"),
    )
    wait_decisions(mesh, market, lambda ds: len(ds) >= 4)
    # The grid curtails c2 to 5 kW in `slot`: the VIP's 10 kWh no longer fits. The rules give it
    # first pick: it takes c1 from the curtailable booking, which has nowhere else to go.
    mesh.publish(sdk.capacity_changed(market.station, connector_id="c2", available=True,
                                      power_w=5_000, from_ms=slot, until_ms=slot + SLOT_MS,
                                      cause="CURTAILMENT", grid_event_id="ge-1", at_ms=t + 1))
    # Curtailing c1 in `later`: "late" may not bump "other" (not curtailable): cancelled.
    mesh.publish(sdk.capacity_changed(market.station, connector_id="c1", available=True,
                                      power_w=5_000, from_ms=later, until_ms=later + SLOT_MS,
                                      cause="CURTAILMENT", at_ms=t + 2))
    decisions = wait_decisions(mesh, market, lambda ds: len(ds) >= 7)
    after = [(k, p["reservation_id"].split("-", 1)[1], p.get("to_connector_id"), p["reason_code"])
             for k, p in decisions[4:]]
    assert after == [
        ("SlotReallocated", "vip", "c1", "DISPLACED_CURTAILMENT"),
        ("SlotReleased", "flex", None, "DISPLACED_CURTAILMENT"),
        ("SlotReleased", "late", None, "DISPLACED_CURTAILMENT"),
    ]


def test_no_show_frees_the_slot_for_a_walk_up(mesh: Mesh) -> None:
    t = now_ms()
    market = open_market(mesh, "noshow", t, [sdk.connector("c1", 22_000, kind="AC_L2")],
                         no_show_grace_ms=10 * 60_000)
    sleeper, walker = market.vehicle("sleeper"), market.vehicle("walker")
    mesh.publish(*mesh.world.governance)
    mesh.world.governance.clear()
    slot = market.start_ms + HOUR_MS
    mesh.publish(market.posted_order(sleeper, "booked", slot, slots=2, energy_wh=5_000))
    arrived = slot + 12 * 60_000  # past the 10-minute grace, nobody plugged in
    mesh.publish(sdk.heartbeat(market.station, arrived))  # the station's clock says so
    mesh.publish(market.walk_up(walker, "walk", arrived, connector_id="c1", energy_wh=5_000))
    decisions = wait_decisions(mesh, market, lambda ds: len(ds) >= 3)
    kinds = [(k, p.get("reason_code"), p.get("walk_up")) for k, p in decisions]
    assert kinds == [("SlotReserved", None, False), ("SlotReleased", "NO_SHOW", None),
                     ("SlotReserved", None, True)]
    walk = decisions[2][1]
    assert walk["order_id"] == market.order_id("walk")
    assert walk["slot_start_at_ms"] == slot  # the slot the walker arrived in
