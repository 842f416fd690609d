"""P3 on the real stack: k-of-n observer quorums decide curtailment in a grid zone.

One zone, four observers (f = 1, k = 3). Interval 1 gets only k - 1 attestations and nothing
happens to it; interval 2 sees an equivocating observer, a non-member, a forged signature and an
attestation for another zone, and still reaches an honest quorum that curtails the station's
connector: the reservation on it is displaced, and ClickHouse holds the decision, the
equivocation with its evidence, and every refusal with its reason.
"""

from __future__ import annotations

import pytest
from chargemesh.infra.cli.grid import load_observer_view, observer_tables
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.observer_decision import decision_digest
from chargemesh.streams.sdk.participant import Participant, now_ms
from rich.console import Console

from tests.conftest import Mesh
from tests.support.market import SLOT_MS, open_market

pytestmark = pytest.mark.integration

ZONE = "p3-zone"


def test_observer_quorum_curtails_and_equivocation_is_recorded(mesh: Mesh) -> None:
    t = now_ms()
    world = mesh.world
    market = open_market(mesh, "p3", t, [sdk.connector("c1", 50_000), sdk.connector("c2", 50_000)],
                         grid_zone_id=ZONE)
    operator = world.grid_operator("p3-grid-op", ZONE)
    team = [world.credential(f"p3-observer-{i}", ["OBSERVER"],
                             attributes={"organisation": f"p3-org-{i}"}) for i in range(4)]
    outsider = world.credential("p3-observer-outsider", ["OBSERVER"],
                                attributes={"organisation": "p3-org-outsider"})
    v1, v2 = market.vehicle("v1"), market.vehicle("v2")
    mesh.publish(*world.governance)
    world.governance.clear()
    first, second = market.start_ms, market.start_ms + SLOT_MS
    mesh.publish(market.posted_order(v1, "o1", first, connector_id="c1"),
                 market.posted_order(v2, "o2", second, connector_id="c1"))
    # the station is in the zone's routing table before any decision is counted
    mesh.wait_rows("SELECT event_id FROM events WHERE subject_key = %(z)s AND event_type = "
                   "'chargemesh.grid.v1.StationZoneJoined'", {"z": ZONE})
    mesh.wait_rows("SELECT reservation_id FROM slot_ledger FINAL WHERE station_id = %(s)s",
                   {"s": market.station_id}, count=2)
    mesh.publish(sdk.observer_set_declared(
        world.root, operator, grid_zone_id=ZONE, version=1,
        observer_ids=[o.credential_id for o in team], threshold_k=3, faults_tolerated_f=1,
        interval_ms=SLOT_MS, effective_from_ms=market.start_ms, at_ms=t))

    def curtail(start_ms: int, order: list[tuple[str, str, int]],
                zone: str = ZONE) -> dict[str, object]:
        return sdk.observer_decision(grid_zone_id=zone, observer_set_version=1,
                                     interval_start_ms=start_ms, interval_end_ms=start_ms + SLOT_MS,
                                     curtailments=order, grid_event_id=f"p3-stress-{start_ms}")

    st = market.station_id
    d1 = curtail(first, [(st, "c1", 0)])
    honest = curtail(second, [(st, "c1", 0)])
    forged = curtail(second, [(st, "c2", 0)])  # would cut the other connector
    equivocation = [sdk.observer_attestation(team[3], forged, at_ms=t),
                    sdk.observer_attestation(team[3], honest, at_ms=t)]
    forger = Participant.seeded(team[2].credential_id, secret="stolen-name")
    hostile = {
        "non-member": sdk.observer_attestation(outsider, honest, at_ms=t),
        "forged signature": sdk.observer_attestation(forger, forged, at_ms=t),
        "other zone": sdk.observer_attestation(team[0], curtail(second, [], "p3-elsewhere"),
                                               at_ms=t),
    }
    mesh.publish(
        sdk.observer_attestation(team[0], d1, at_ms=t),   # interval 1: k - 1 attestations
        sdk.observer_attestation(team[1], d1, at_ms=t),
        sdk.observer_attestation(team[0], honest, at_ms=t),
        *equivocation,
        *hostile.values(),
        sdk.observer_attestation(team[1], honest, at_ms=t),  # 2 honest votes: no quorum yet
        sdk.observer_attestation(team[2], honest, at_ms=t),  # 3: quorum
    )

    [quorum] = mesh.wait_rows(
        "SELECT interval_start_at_ms, decision_digest, signer_credential_ids, curtailment_order, "
        "station_ids FROM grid_quorum_decisions FINAL WHERE grid_zone_id = %(z)s", {"z": ZONE})
    assert quorum == (second, decision_digest(honest).hex(),
                      ["p3-observer-0", "p3-observer-1", "p3-observer-2"],
                      [f"{st}/c1"], [st])
    # the station verified the quorum itself and curtailed c1: v2's booking moved to c2
    displaced = mesh.wait_rows(
        "SELECT reservation_id, decision_type, from_connector_id, connector_id FROM "
        "ledger_decisions "
        "FINAL WHERE station_id = %(s)s AND reason_code = 'DISPLACED_GRID_CURTAILMENT'",
        {"s": st})
    assert displaced == [(f"res:{market.order_id('o2')}", "SlotReallocated", "c1", "c2")]
    [equivocated] = mesh.wait_rows(
        "SELECT observer_credential_id, first_attestation_event_id, second_attestation_event_id, "
        "first_decision_digest, second_decision_digest FROM observer_equivocations FINAL "
        "WHERE grid_zone_id = %(z)s", {"z": ZONE})
    assert equivocated == ("p3-observer-3", equivocation[0].event_id, equivocation[1].event_id,
                           decision_digest(forged).hex(), decision_digest(honest).hex())
    expected = {equivocation[1].event_id: "OBSERVER_EQUIVOCATED",
                hostile["non-member"].event_id: "NOT_IN_OBSERVER_SET",
                hostile["forged signature"].event_id: "BAD_SIGNATURE",
                hostile["other zone"].event_id: "NO_OBSERVER_SET"}
    rows = mesh.wait_rows("SELECT event_id, reason_code FROM rejections FINAL "
                          "WHERE event_id IN %(ids)s", {"ids": tuple(expected)},
                          count=len(expected))
    assert dict(rows) == expected
    # interval 1 had k - 1 signatures: no decision, v1's booking untouched (its attestations
    # precede the interval-2 quorum on the zone's partition, so they were all counted by now)
    assert mesh.query("SELECT count() FROM grid_quorum_decisions FINAL WHERE grid_zone_id = "
                      "%(z)s AND interval_start_at_ms = %(t)s", {"z": ZONE, "t": first}) == [(0,)]
    assert mesh.query("SELECT status, connector_id FROM slot_ledger FINAL WHERE order_id = "
                      "%(o)s", {"o": market.order_id("o1")}) == [("RESERVED", "c1")]
    routed = mesh.query("SELECT count() FROM rejections FINAL WHERE event_type = "
                        "'chargemesh.grid.v1.ObserverDecisionRouted'")
    assert routed == [(0,)]  # the station did not refuse the routed quorum
    # what `chargemesh grid observers p3-zone` shows
    view = load_observer_view(mesh.settings, ZONE)
    assert view.observer_set is not None and view.observer_set["threshold_k"] == 3
    assert [d["interval_start_at_ms"] for d in view.decisions] == [second]
    assert [e["observer_credential_id"] for e in view.equivocations] == ["p3-observer-3"]
    assert view.refusals["NOT_IN_OBSERVER_SET"] >= 1
    console = Console(record=True, width=200)
    for table in observer_tables(view):
        console.print(table)
    text = console.export_text()
    assert "3 of 4 (1)" in text and "p3-observer-3" in text and f"{st}/c1" in text
