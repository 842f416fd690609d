"""Issue 15 hole 6 on the real stack: an observer set must span independent organisations and
its quorum counts organisations.

The attack: the zone's operator and its authority declare a k-of-n set whose four observers are
credentials of one organisation (``organisation=acme``); with it one party alone would decide
curtailment ordering. It is refused ``OBSERVERS_NOT_INDEPENDENT`` (rejections topic and
ClickHouse), is absent from the admitted log and from ``observer_sets``, and its legitimate twin
(four organisations) is admitted. Then a set of six observers, two of them acme's: four
attestations of one digest from three organisations (acme twice) reach no quorum, four
organisations do.
"""

from __future__ import annotations

import pytest
from chargemesh.infra.stack.worker import event_ids, log_tail
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.observer_decision import decision_digest
from chargemesh.streams.sdk.participant import now_ms
from chargemesh.streams.topics import ADMITTED, REJECTIONS
from chargemesh.units import MINUTE_MS

from tests.conftest import Mesh

pytestmark = pytest.mark.integration

ZONE = "h6-zone"
INTERVAL_MS = 15 * MINUTE_MS
ORGS = {"h6-acme-1": "acme", "h6-acme-2": "acme", "h6-acme-3": "acme", "h6-acme-4": "acme",
        "h6-volt": "volt", "h6-gridco": "gridco", "h6-ohm": "ohm", "h6-watt": "watt"}


def test_an_observer_set_of_one_organisation_is_refused_and_quorums_count_organisations(
        mesh: Mesh) -> None:
    t = now_ms()
    world = mesh.world
    operator = world.grid_operator("h6-grid-op", ZONE)
    team = {name: world.credential(name, ["OBSERVER"], attributes={"organisation": org})
            for name, org in ORGS.items()}
    mesh.publish(*world.governance)
    world.governance.clear()

    def declare(version: int, names: list[str], k: int, f: int):  # type: ignore[no-untyped-def]
        return sdk.observer_set_declared(
            world.root, operator, grid_zone_id=ZONE, version=version, observer_ids=names,
            threshold_k=k, faults_tolerated_f=f, interval_ms=INTERVAL_MS,
            effective_from_ms=t, at_ms=now_ms())

    attack = declare(1, ["h6-acme-1", "h6-acme-2", "h6-acme-3", "h6-acme-4"], k=3, f=1)
    twin = declare(1, ["h6-acme-1", "h6-volt", "h6-gridco", "h6-ohm"], k=3, f=1)
    six = ["h6-acme-1", "h6-acme-2", "h6-volt", "h6-gridco", "h6-ohm", "h6-watt"]
    wider = declare(2, six, k=4, f=1)  # 5 organisations >= k + f

    def decision(start_ms: int) -> dict[str, object]:
        return sdk.observer_decision(grid_zone_id=ZONE, observer_set_version=2,
                                     interval_start_ms=start_ms,
                                     interval_end_ms=start_ms + INTERVAL_MS,
                                     rate_per_kwh="0.700000", grid_event_id=f"h6-{start_ms}")

    first, second = t + INTERVAL_MS, t + 2 * INTERVAL_MS
    # interval 1: four credentials, three organisations -> no quorum (k = 4 organisations)
    same_org = [sdk.observer_attestation(team[n], decision(first), at_ms=now_ms())
                for n in ("h6-acme-1", "h6-acme-2", "h6-volt", "h6-gridco")]
    # interval 2: four organisations -> quorum
    honest = [sdk.observer_attestation(team[n], decision(second), at_ms=now_ms())
              for n in ("h6-acme-1", "h6-volt", "h6-gridco", "h6-ohm")]
    mesh.publish(attack, twin, wider, *same_org, *honest)

    rejections, admitted = mesh.reader(REJECTIONS.name), mesh.reader(ADMITTED.name)
    try:
        refused = rejections.wait_for(
            lambda rs: any(r.rejection()["event_id"] == attack.event_id for r in rs),
            timeout_s=60, workers=(mesh.worker,))
        wanted = {twin.event_id, wider.event_id} | {e.event_id for e in same_org}
        admitted.wait_for(lambda rs: wanted <= event_ids(rs), timeout_s=60,
                          workers=(mesh.worker,))
    except TimeoutError:
        pytest.fail("worker log:\n" + log_tail(mesh.worker.log_path))
    [record] = [r.rejection() for r in refused if r.rejection()["event_id"] == attack.event_id]
    assert record["reason_code"] == "OBSERVERS_NOT_INDEPENDENT", record
    assert "from 1 organisations (acme)" in record["detail"]
    assert attack.event_id not in event_ids(admitted.records)
    ours = {twin.event_id, wider.event_id} | {e.event_id for e in same_org + honest}
    assert not [r.rejection() for r in rejections.records if r.rejection()["event_id"] in ours]
    rejections.close()
    admitted.close()

    # ClickHouse: the refusal with its reason; only the independent sets are in force
    rows = mesh.wait_rows("SELECT reason_code FROM rejections FINAL WHERE event_id = %(e)s",
                          {"e": attack.event_id})
    assert rows == [("OBSERVERS_NOT_INDEPENDENT",)]
    sets = mesh.wait_rows("SELECT observer_set_version, event_id FROM observer_sets FINAL "
                          "WHERE grid_zone_id = %(z)s ORDER BY observer_set_version",
                          {"z": ZONE}, count=2)
    assert sets == [(1, twin.event_id), (2, wider.event_id)]
    [quorum] = mesh.wait_rows(
        "SELECT interval_start_at_ms, decision_digest, signer_credential_ids FROM "
        "grid_quorum_decisions FINAL WHERE grid_zone_id = %(z)s", {"z": ZONE})
    assert quorum == (second, decision_digest(decision(second)).hex(),
                      ["h6-acme-1", "h6-gridco", "h6-ohm", "h6-volt"])
    # the zone's partition is ordered: interval 1's votes were counted before interval 2's
    # quorum, and four credentials of three organisations decided nothing
    assert mesh.query("SELECT count() FROM grid_quorum_decisions FINAL WHERE grid_zone_id = "
                      "%(z)s AND interval_start_at_ms = %(t)s", {"z": ZONE, "t": first}) == [(0,)]
