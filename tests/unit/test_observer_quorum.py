"""P3 observers, pure: the quorum rule, the decision digest, the zone router's counting,
equivocation, and independent verification of a quorum. No broker."""

from __future__ import annotations

import functools
import itertools
from typing import Any

import pytest
from chargemesh.processors.grid import observers
from chargemesh.processors.governance import TrustStore
from chargemesh.processors.ingress import Admitted, Refused
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.observer_decision import decision_digest
from chargemesh.streams.sdk.participant import Participant
from chargemesh.streams.topics import MARKET
from chargemesh.units import HOUR_MS, MINUTE_MS
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.world import T0_MS, make_world, verdict_of

ZONE = "zone-p3"
INTERVAL_MS = 15 * MINUTE_MS
START_MS = T0_MS + HOUR_MS
STATIONS = ["st-a", "st-b", "st-c"]
F_MAX = 3


@functools.lru_cache(maxsize=1)
def observer_world() -> tuple[TrustStore, Participant, Participant, list[Participant]]:
    world = make_world()
    operator = world.grid_operator("p3-operator", ZONE)
    team = [world.credential(f"p3-obs-{i}", ["OBSERVER"], attributes={"organisation": f"org-{i}"})
            for i in range(3 * F_MAX + 1)]
    world.credential("p3-outsider", ["OBSERVER"], attributes={"organisation": "org-outsider"})
    return world.store(), world.root, operator, team


def admitted(store: TrustStore, event: SignedEvent) -> Admitted:
    verdict = verdict_of(store, event)
    assert isinstance(verdict, Admitted), verdict
    return verdict


def zone_with_set(f: int, version: int = 1) -> tuple[dict[str, Any], list[Participant]]:
    store, root, operator, team = observer_world()
    members = team[:3 * f + 1]
    declared = sdk.observer_set_declared(
        root, operator, grid_zone_id=ZONE, version=version,
        observer_ids=[m.credential_id for m in members], threshold_k=2 * f + 1,
        faults_tolerated_f=f, interval_ms=INTERVAL_MS, effective_from_ms=T0_MS, at_ms=T0_MS)
    verdict = admitted(store, declared)
    ostate = observers.new_state()
    assert observers.declare_set(ostate, verdict.event, verdict.payload, store) is None
    return ostate, members


def decision(order: tuple[str, ...] = ("st-a", "st-b"), rate: str = "0.650000",
             start_ms: int = START_MS, version: int = 1) -> dict[str, Any]:
    return sdk.observer_decision(
        grid_zone_id=ZONE, observer_set_version=version, interval_start_ms=start_ms,
        interval_end_ms=start_ms + INTERVAL_MS, rate_per_kwh=rate,
        curtailments=[(s, "c1", 0) for s in order])


HONEST = decision()
FORGED = decision(order=("st-b", "st-a"))  # the same decision but another curtailment order
FORGED_2 = decision(rate="2.000000")


@functools.cache
def signed(observer_index: int, which: str) -> SignedEvent:
    _, _, _, team = observer_world()
    content = {"honest": HONEST, "forged": FORGED, "forged2": FORGED_2}[which]
    return sdk.observer_attestation(team[observer_index], content, at_ms=START_MS)


def vote(ostate: dict[str, Any], event: SignedEvent) -> observers.Outcome:
    store = observer_world()[0]
    return observers.attest(ostate, STATIONS, event, admitted(store, event).payload)


def quorums(outcome: observers.Outcome) -> list[dict[str, Any]]:
    return [dict(d.payload) for d in outcome.decisions
            if d.event_type == observers.QUORUM_REACHED]


# ---- the rule and the digest -----------------------------------------------------------------


@pytest.mark.parametrize("n,k,f,ok", [
    (4, 3, 1, True), (7, 5, 2, True), (1, 1, 0, True), (10, 7, 3, True),
    (4, 2, 1, False),  # two quorums of 2 out of 4 may share nobody: forgeable
    (3, 3, 1, False),  # one faulty observer withholding blocks it
    (4, 4, 1, False), (4, 3, -1, False), (0, 0, 0, False),
])
def test_quorum_rule_accepts_exactly_byzantine_quorum_systems(n: int, k: int, f: int,
                                                              ok: bool) -> None:
    assert (observers.quorum_problem(n, k, f) is None) is ok


def test_every_accepted_rule_makes_two_quorums_share_more_than_f_observers() -> None:
    checked = 0
    for n in range(1, 8):
        for k, f in itertools.product(range(1, n + 1), range(n)):
            if observers.quorum_problem(n, k, f) is not None:
                continue
            members = range(n)
            overlap = min(len(set(a) & set(b)) for a in itertools.combinations(members, k)
                          for b in itertools.combinations(members, k))
            assert overlap > f and n - f >= k  # safety and liveness
            checked += 1
    assert checked > 10


def test_the_digest_covers_the_curtailment_order_and_nothing_else_changes_it() -> None:
    assert decision_digest(HONEST) == decision_digest(decision())
    assert decision_digest(HONEST) != decision_digest(FORGED)
    assert decision_digest(HONEST) != decision_digest(FORGED_2)
    assert len(decision_digest(HONEST)) == 32


# ---- counting --------------------------------------------------------------------------------


def test_k_attestations_reach_quorum_and_route_to_every_station() -> None:
    ostate, _ = zone_with_set(f=1)
    assert vote(ostate, signed(0, "honest")).decisions == []
    assert vote(ostate, signed(1, "honest")).decisions == []  # k - 1: nothing takes effect
    outcome = vote(ostate, signed(2, "honest"))
    assert outcome.rejection is None
    [quorum] = quorums(outcome)
    assert quorum["signer_credential_ids"] == ["p3-obs-0", "p3-obs-1", "p3-obs-2"]
    assert quorum["curtailment_order"] == ["st-a/c1", "st-b/c1"]
    assert quorum["decision_digest"] == decision_digest(HONEST)
    routed = [(d.event_type, d.key, d.topic) for d in outcome.decisions
              if d.event_type == observers.DECISION_ROUTED]
    assert routed == [(observers.DECISION_ROUTED, s, MARKET.name) for s in STATIONS]
    late = vote(ostate, signed(3, "honest"))  # a late co-signature changes nothing
    assert late.rejection is None and late.decisions == []


def test_an_equivocating_observer_is_recorded_with_both_signatures_and_loses_its_vote() -> None:
    ostate, _ = zone_with_set(f=1)
    vote(ostate, signed(0, "honest"))
    vote(ostate, signed(1, "honest"))
    outcome = vote(ostate, signed(0, "forged"))
    assert outcome.rejection is not None and outcome.rejection.reason == "OBSERVER_EQUIVOCATED"
    [decision] = outcome.decisions
    assert (decision.event_type, decision.key) == (observers.EQUIVOCATION, ZONE)
    evidence = decision.payload
    assert evidence["first_attestation"] == signed(0, "honest").encode()
    assert evidence["second_attestation"] == signed(0, "forged").encode()
    assert evidence["observer_credential_id"] == "p3-obs-0"
    assert vote(ostate, signed(0, "honest")).rejection.reason == "OBSERVER_EQUIVOCATED"
    # obs-0's earlier honest vote no longer counts: obs-1 and obs-2 are still only 2 of 3
    assert quorums(vote(ostate, signed(2, "honest"))) == []
    assert quorums(vote(ostate, signed(3, "honest")))[0]["signer_credential_ids"] == [
        "p3-obs-1", "p3-obs-2", "p3-obs-3"]


def test_non_members_stale_sets_bad_digests_and_bad_intervals_are_refused_with_reasons() -> None:
    team = observer_world()[3]
    ostate, _ = zone_with_set(f=1)
    outsider = Participant.seeded("p3-outsider", secret="tests")
    cases = [
        (sdk.observer_attestation(outsider, HONEST, at_ms=START_MS), "NOT_IN_OBSERVER_SET"),
        (sdk.observer_attestation(team[4], HONEST, at_ms=START_MS), "NOT_IN_OBSERVER_SET"),
        (sdk.observer_attestation(team[0], decision(version=7), at_ms=START_MS),
         "STALE_OBSERVER_SET"),
        (sdk.observer_attestation(team[0], HONEST, at_ms=START_MS,
                                  digest=decision_digest(FORGED)), "DIGEST_MISMATCH"),
        (sdk.observer_attestation(team[0], decision(start_ms=START_MS + 1), at_ms=START_MS),
         "INVALID_DECISION"),
    ]
    for event, reason in cases:
        outcome = vote(ostate, event)
        assert outcome.rejection is not None and outcome.rejection.reason == reason, event
    assert vote(ostate, signed(0, "honest")).rejection is None
    assert vote(ostate, signed(0, "honest")).rejection.reason == "DUPLICATE_ATTESTATION"


def test_a_forged_observer_signature_never_reaches_the_router() -> None:
    store = observer_world()[0]
    forger = Participant.seeded("p3-obs-0", secret="not-the-key")
    verdict = verdict_of(store, sdk.observer_attestation(forger, HONEST, at_ms=START_MS))
    assert isinstance(verdict, Refused) and verdict.rejection.reason == "BAD_SIGNATURE"


def test_a_revoked_observer_is_refused_and_its_old_quorum_no_longer_verifies() -> None:
    world = make_world()
    operator = world.grid_operator("rv-operator", ZONE)
    team = [world.credential(f"rv-obs-{i}", ["OBSERVER"], attributes={"organisation": f"o{i}"})
            for i in range(4)]
    declared = sdk.observer_set_declared(
        world.root, operator, grid_zone_id=ZONE, version=1,
        observer_ids=[m.credential_id for m in team], threshold_k=3, faults_tolerated_f=1,
        interval_ms=INTERVAL_MS, effective_from_ms=T0_MS, at_ms=T0_MS)
    attestations = [sdk.observer_attestation(m, HONEST, at_ms=START_MS) for m in team[:3]]
    digest = decision_digest(HONEST)
    before = world.store()
    assert isinstance(observers.verify_certificate(declared.encode(),
                                                   [a.encode() for a in attestations], digest,
                                                   before), observers.Certificate)
    world.governance.append(world.issuer.revoke("rv-obs-0", effective_at_ms=START_MS - 1))
    after = world.store()
    refused = verdict_of(after, attestations[0])
    assert isinstance(refused, Refused) and refused.rejection.reason == "CREDENTIAL_REVOKED"
    replayed = observers.verify_certificate(declared.encode(), [a.encode() for a in attestations],
                                            digest, after)
    assert not isinstance(replayed, observers.Certificate) and "revoked" in replayed.detail


def test_set_declarations_need_a_valid_rule_observer_credentials_and_the_operator() -> None:
    store, root, operator, team = observer_world()
    ids = [m.credential_id for m in team[:4]]

    def declare(**kw: Any) -> str | None:
        args: dict[str, Any] = {"grid_zone_id": ZONE, "version": 2, "observer_ids": ids,
                                "threshold_k": 3, "faults_tolerated_f": 1,
                                "interval_ms": INTERVAL_MS, "effective_from_ms": T0_MS,
                                "at_ms": T0_MS}
        args.update(kw)
        verdict = verdict_of(store, sdk.observer_set_declared(root, operator, **args))
        if isinstance(verdict, Refused):
            return verdict.rejection.reason
        problem = observers.declare_set(zone_with_set(1)[0], verdict.event, verdict.payload,
                                        store)
        return None if problem is None else problem.reason

    assert declare() is None
    assert declare(threshold_k=2) == "INVALID_OBSERVER_SET"
    assert declare(observer_ids=ids[:3] + ["p3-operator"]) == "INVALID_OBSERVER_SET"
    assert declare(version=1) == "STALE_OBSERVER_SET"
    assert declare(grid_zone_id="zone-elsewhere") == "NOT_THE_ZONES_OPERATOR"
    alone = sdk.observer_set_declared(operator, operator, grid_zone_id=ZONE, version=2,
                                      observer_ids=ids, threshold_k=3, faults_tolerated_f=1,
                                      interval_ms=INTERVAL_MS, effective_from_ms=T0_MS,
                                      at_ms=T0_MS)
    refused = verdict_of(store, alone)  # the operator alone cannot choose its own observers
    assert isinstance(refused, Refused) and refused.rejection.reason == "ROLE_NOT_PERMITTED"


def test_a_quorum_verifies_on_its_own_and_k_minus_1_or_a_tampered_one_does_not() -> None:
    store = observer_world()[0]
    ostate, _ = zone_with_set(f=1)
    for i in range(3):
        outcome = vote(ostate, signed(i, "honest"))
    [quorum] = quorums(outcome)
    digest, set_raw = quorum["decision_digest"], quorum["observer_set_event"]
    cert = observers.verify_certificate(set_raw, quorum["attestations"], digest, store)
    assert isinstance(cert, observers.Certificate)
    assert cert.signers == ("p3-obs-0", "p3-obs-1", "p3-obs-2")
    short = observers.verify_certificate(set_raw, quorum["attestations"][:2], digest, store)
    assert not isinstance(short, observers.Certificate) and "2 of 3" in short.detail
    doubled = quorum["attestations"][:2] + quorum["attestations"][:1]
    assert not isinstance(observers.verify_certificate(set_raw, doubled, digest, store),
                          observers.Certificate)
    tampered = bytearray(quorum["attestations"][0])
    tampered[-5] ^= 0x01
    bad = observers.verify_certificate(set_raw, [bytes(tampered)] + quorum["attestations"][1:],
                                       digest, store)
    assert not isinstance(bad, observers.Certificate)


# ---- any mix of at most f faulty observers ---------------------------------------------------

BEHAVIOURS = ("honest", "silent", "forged", "equivocate", "equivocate_reversed", "forged_both")


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[str], list[tuple[int, str]]]:
    f = draw(st.integers(0, F_MAX))
    n = 3 * f + 1
    faulty = draw(st.integers(0, f))
    roles = ["honest"] * (n - faulty) + [draw(st.sampled_from(BEHAVIOURS[1:]))
                                         for _ in range(faulty)]
    roles = draw(st.permutations(roles))
    votes: list[tuple[int, str]] = []
    for i, role in enumerate(roles):
        votes += {"honest": [(i, "honest")], "silent": [], "forged": [(i, "forged")],
                  "equivocate": [(i, "honest"), (i, "forged")],
                  "equivocate_reversed": [(i, "forged"), (i, "honest")],
                  "forged_both": [(i, "forged"), (i, "forged2")]}[role]
    return f, roles, draw(st.permutations(votes))


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_with_at_most_f_faulty_the_honest_decision_and_only_it_reaches_quorum(
        scenario: tuple[int, list[str], list[tuple[int, str]]]) -> None:
    f, roles, votes = scenario
    ostate, _ = zone_with_set(f)
    decided = []
    for observer, which in votes:
        decided += quorums(vote(ostate, signed(observer, which)))
    assert [q["decision_digest"] for q in decided] == [decision_digest(HONEST)]
    honest = {f"p3-obs-{i}" for i, r in enumerate(roles) if r == "honest"}
    assert len(set(decided[0]["signer_credential_ids"]) & honest) >= f + 1
