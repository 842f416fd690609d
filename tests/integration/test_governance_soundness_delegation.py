"""Issue 15 holes 1 and 5 on the real stack: nothing grants more than its grantor holds, and only
an anchored authority declares itself.

Hole 1, the attack: an authority the root recognised only as AUTHORITY for DE-BY delegates an
issuer GRID_OPERATOR for US-CA (``DELEGATION_EXCEEDS_AUTHORITY``) and recognises a sub-authority
for US-CA (``RECOGNITION_EXCEEDS_AUTHORITY``); the issuer then mints a grid operator with
``grid_zones=<zone>`` whose program would replace the legitimate operator's (both refused: the
chain does not exist). The twin: an authority recognised for DE-BY with GRID_OPERATOR delegates
and issues GRID_OPERATOR in DE-BY.

Hole 5, the attack: a key that chains to no trust anchor declares itself an authority, and a
foreign authority declares itself before anyone recognised it (``UNRECOGNISED_AUTHORITY``). The
twin: the same foreign authority declares itself once the root recognised it.

Each refusal is on ``chargemesh.rejections.v1`` and in ClickHouse ``rejections`` with its code,
none is in the admitted log nor in the trust store the governance topic folds into (rebuilt here
as every worker builds it), and the legitimate zone program stays in force.
"""

from __future__ import annotations

import pytest
from chargemesh.infra.stack.worker import TopicReader
from chargemesh.processors.governance import TrustStore
from chargemesh.processors.ingress import admit_governance
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import Participant, now_ms
from chargemesh.streams.topics import GOVERNANCE

from tests.conftest import Mesh
from tests.support.verdicts import await_verdicts

pytestmark = pytest.mark.integration

ZONE = "h1-zone-ca"


def governance_store(mesh: Mesh) -> TrustStore:
    """The trust store as every worker folds it: the governance topic, in order, from the
    deployment's anchors."""
    store = TrustStore(mesh.world.anchors())
    reader = TopicReader(mesh.settings, GOVERNANCE.name)
    try:
        reader.wait_for(lambda rs: len(rs) > 0, timeout_s=10)
        reader.wait_for(lambda rs: False, timeout_s=2)  # drain what is there
    except TimeoutError:
        pass
    for record in sorted(reader.records, key=lambda r: (r.partition, r.offset)):
        admit_governance(record.value, record.key, store)
    reader.close()
    return store


def assert_rejected_in_clickhouse(mesh: Mesh, expected: dict[str, str]) -> None:
    rows = mesh.wait_rows("SELECT event_id, reason_code FROM rejections FINAL "
                          "WHERE event_id IN %(ids)s", {"ids": tuple(expected)},
                          count=len(expected))
    assert dict(rows) == expected


def test_an_authority_delegates_and_recognises_only_within_what_it_holds(mesh: Mesh) -> None:
    t, world = now_ms(), mesh.world
    operator = world.grid_operator("h1-grid-op", ZONE)
    legitimate_program = sdk.grid_program(operator, grid_zone_id=ZONE, program="V2G",
                                          operator_ids=[operator.credential_id], at_ms=t)
    de = Participant.seeded("h1-auth-de", secret="tests")
    de_grid = Participant.seeded("h1-auth-de-grid", secret="tests")
    world.governance += [
        world.root.recognise_authority(de, "DE-BY", ["AUTHORITY"], at_ms=t),
        world.root.recognise_authority(de_grid, "DE-BY", ["GRID_OPERATOR"], at_ms=t)]
    mesh.publish(*world.governance, legitimate_program)
    world.governance.clear()

    rogue_issuer = Participant.seeded("h1-issuer-rogue", secret="tests")
    rogue_operator = Participant.seeded("h1-grid-op-rogue", secret="tests")
    sub = Participant.seeded("h1-auth-sub", secret="tests")
    delegation = de.delegate_issuer(rogue_issuer, ["GRID_OPERATOR"], ["US-CA"], at_ms=t + 1)
    recognition = de.recognise_authority(sub, "US-CA", ["AUTHORITY"], at_ms=t + 1)
    minted = rogue_issuer.issue_credential(rogue_operator, ["GRID_OPERATOR"], "US-CA",
                                           attributes={"grid_zones": ZONE}, at_ms=t + 2)
    takeover = sdk.grid_program(rogue_operator, grid_zone_id=ZONE, program="DEMAND_RESPONSE",
                                operator_ids=[rogue_operator.credential_id], at_ms=t + 3)
    # the legitimate twin: recognised for GRID_OPERATOR in DE-BY, it delegates and issues that
    issuer = Participant.seeded("h1-issuer-de", secret="tests")
    de_operator = Participant.seeded("h1-grid-op-de", secret="tests")
    twins = [de_grid.delegate_issuer(issuer, ["GRID_OPERATOR"], ["DE-BY"], at_ms=t + 1),
             issuer.issue_credential(de_operator, ["GRID_OPERATOR"], "DE-BY", at_ms=t + 2)]
    mesh.publish(delegation, recognition, minted, takeover, *twins)

    attacks = {delegation.event_id: "DELEGATION_EXCEEDS_AUTHORITY",
               recognition.event_id: "RECOGNITION_EXCEEDS_AUTHORITY",
               minted.event_id: "UNKNOWN_CREDENTIAL",  # its issuer was never delegated
               takeover.event_id: "UNKNOWN_CREDENTIAL"}  # nor was its grid operator minted
    records = await_verdicts(mesh, [delegation, recognition, minted, takeover],
                             [legitimate_program, *twins])
    assert {e: r["reason_code"] for e, r in records.items()} == attacks
    assert "h1-auth-de may not delegate roles ['GRID_OPERATOR'] and jurisdictions ['US-CA']" in (
        str(records[delegation.event_id]["detail"]))
    assert_rejected_in_clickhouse(mesh, attacks)

    store = governance_store(mesh)
    for principal_id in ("h1-issuer-rogue", "h1-grid-op-rogue", "h1-auth-sub"):
        assert principal_id not in store.principals
    assert store.principals["h1-auth-de"].jurisdictions == {"DE-BY"}
    assert store.principals["h1-issuer-de"].roles == {"GRID_OPERATOR", "ISSUER"}
    assert store.principals["h1-grid-op-de"].jurisdictions == {"DE-BY"}
    program = store.grid_program(ZONE, now_ms())
    assert program is not None and program["program"] == "V2G"
    [(in_force,)] = mesh.wait_rows("SELECT program_in_force FROM grid_zones_current "
                                   "WHERE grid_zone_id = %(z)s AND program_in_force != ''",
                                   {"z": ZONE})
    assert in_force == "V2G"


def test_only_an_anchored_or_recognised_authority_declares_itself(mesh: Mesh) -> None:
    t, world = now_ms(), mesh.world
    self_made = Participant.seeded("h5-self-made", secret="tests")
    foreign = Participant.seeded("h5-auth-de", secret="tests")
    unanchored = self_made.declare_authority("Self made", "US-CA",
                                             ["AUTHORITY", "RATE_AUTHORITY"], at_ms=t)
    too_early = foreign.declare_authority("DE rate authority", "DE-BY",
                                          ["AUTHORITY", "RATE_AUTHORITY"], "EUR", at_ms=t)
    recognised = world.root.recognise_authority(foreign, "DE-BY",
                                                ["AUTHORITY", "RATE_AUTHORITY"], at_ms=t + 1)
    declared = foreign.declare_authority("DE rate authority", "DE-BY",
                                         ["AUTHORITY", "RATE_AUTHORITY"], "EUR", at_ms=t + 2)
    mesh.publish(unanchored, too_early, recognised, declared)

    attacks = {unanchored.event_id: "UNRECOGNISED_AUTHORITY",
               too_early.event_id: "UNRECOGNISED_AUTHORITY"}
    records = await_verdicts(mesh, [unanchored, too_early], [recognised, declared])
    assert {e: r["reason_code"] for e, r in records.items()} == attacks
    assert_rejected_in_clickhouse(mesh, attacks)
    assert mesh.wait_rows("SELECT count() FROM events WHERE event_id = %(e)s",
                          {"e": declared.event_id}) == [(1,)]
    assert mesh.query("SELECT count() FROM events WHERE event_id IN %(ids)s",
                      {"ids": tuple(attacks)}) == [(0,)]

    store = governance_store(mesh)
    assert "h5-self-made" not in store.principals
    assert unanchored.event_id not in store.applied_event_ids
    assert store.principals["h5-auth-de"].parent_id == world.root.credential_id
    assert declared.event_id in store.applied_event_ids
