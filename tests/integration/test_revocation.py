"""P4 on the real stack: an issuer's revocation cascades to the sessions of the vehicles it
credentialed, arriving mid-session: the settled session is upheld, the active one is stopped by a
signed order (and cannot be closed out into a settlement), the future booking is cancelled, and a
vehicle of another issuer is untouched. Every outcome is a CredentialReevaluated decision in the
lineage and a row in ClickHouse. Prints the revocation-to-last-re-evaluation latency."""

from __future__ import annotations

import time

import pytest

from chargemesh.infra.stack.worker import Record, TopicReader
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.streams.topics import DECISIONS, REJECTIONS
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh
from tests.support.market import HOUR_MS, open_market
from tests.integration.test_sessions_pipeline import Session, settlement_records
from tests.support.world import T0_MS

pytestmark = pytest.mark.integration


def fleet_vehicle(issuer: Participant, name: str) -> tuple[Participant, object]:
    holder = Participant.seeded(f"{name}-cred", name, secret="tests")
    return holder, issuer.issue_credential(holder, ["VEHICLE"], "US-CA", at_ms=T0_MS)


def reevaluated(records: list[Record], station_id: str) -> dict[str, tuple[str, str]]:
    out = {}
    for r in records:
        event = r.event()
        if event.event_type.endswith("CredentialReevaluated"):
            p = r.payload()
            if p["station_id"] == station_id:
                out[p["subject_id"]] = (p["subject_kind"], p["outcome"])
    return out


def test_issuer_revocation_cascades_to_a_stations_sessions(mesh: Mesh) -> None:
    world = mesh.world
    fleet_issuer = Participant.seeded("issuer-fleet-p4", secret="tests")
    governance = [world.root.delegate_issuer(fleet_issuer, ["VEHICLE"], ["US-CA"], at_ms=T0_MS)]
    vehicles = {}
    for name in ("p4-v1", "p4-v2", "p4-v3"):
        vehicles[name], issued = fleet_vehicle(fleet_issuer, name)
        governance.append(issued)
    mesh.publish(*governance)
    t = now_ms()
    conns = [sdk.connector(f"c{i}", 50_000) for i in range(1, 5)]
    market = open_market(mesh, "revk", t, conns, hours=6, grid_zone_id="zone-revk")
    other = market.vehicle("independent")  # the root's own issuer: not in the cascade
    mesh.publish(*world.governance)
    world.governance.clear()

    start = market.start_ms
    settled = Session(market, vehicles["p4-v1"], "settled", start, connector_id="c1")
    active = Session(market, vehicles["p4-v2"], "active", start + 30 * MINUTE_MS,
                     connector_id="c2")
    future = market.posted_order(vehicles["p4-v3"], "future", start + 2 * HOUR_MS,
                                 connector_id="c3")
    untouched = market.posted_order(other, "untouched", start + 2 * HOUR_MS, connector_id="c4")
    reading = settled.read(10, 9_000)
    close = settled.close(25, 18_000)
    mesh.publish(settled.booking, active.booking, future, untouched,
                 settled.start(), reading, close,
                 sdk.close_out_countersigned(vehicles["p4-v1"], close,
                                             start + 26 * MINUTE_MS),
                 active.start(), active.read(10, 7_000))
    settlement_records(mesh, settled.session_id, {"SettlementFinalised"})

    effective = start + 45 * MINUTE_MS
    revocation = world.root.revoke(fleet_issuer.credential_id, effective_at_ms=effective,
                                   reason_code="KEY_COMPROMISE")
    decisions = TopicReader(mesh.settings, DECISIONS.name)
    decisions.poll(0.5)
    published_at = time.perf_counter()
    mesh.publish(revocation)
    decisions.wait_for(lambda rs: len(reevaluated(rs, market.station_id)) >= 3,
                       timeout_s=45, workers=(mesh.worker,))
    latency_ms = (time.perf_counter() - published_at) * 1000
    print(f"revocation published -> last re-evaluation consumed: {latency_ms:.1f} ms")
    decisions.poll(1.0)
    decisions.close()

    outcomes = reevaluated(decisions.records, market.station_id)
    assert outcomes == {
        f"stl:{settled.session_id}": ("SETTLEMENT", "UPHELD"),
        active.session_id: ("SESSION", "STOPPED"),
        f"res:{market.order_id('future')}": ("RESERVATION", "CANCELLED"),
    }
    stops = [r.payload() for r in decisions.records
             if r.event().event_type.endswith("SessionStopped")
             and r.payload()["session_id"] == active.session_id]
    assert stops == [{"session_id": active.session_id, "station_id": market.station_id,
                      "stopped_at_ms": effective, "reason": "REVOCATION", "reason_code": ""}]

    # The station's close-out of the stopped session cannot become a settlement any more.
    rejections = TopicReader(mesh.settings, REJECTIONS.name)
    late_close = active.close(50, 20_000)
    mesh.publish(late_close)
    rejections.wait_for(lambda rs: any(r.rejection()["event_id"] == late_close.event_id
                                       for r in rs), timeout_s=45, workers=(mesh.worker,))
    rejections.close()
    refused = [r.rejection() for r in rejections.records
               if r.rejection()["event_id"] == late_close.event_id]
    assert refused[0]["reason_code"] == "CREDENTIAL_REVOKED"

    rows = mesh.wait_rows(
        "SELECT subject_kind, subject_id, outcome FROM credential_reevaluations FINAL "
        "WHERE station_id = %(s)s ORDER BY subject_kind", {"s": market.station_id}, count=3)
    assert [(k, o) for k, _, o in rows] == [("RESERVATION", "CANCELLED"),
                                            ("SESSION", "STOPPED"), ("SETTLEMENT", "UPHELD")]
    assert all(r[1] != f"res:{market.order_id('untouched')}" for r in rows)
