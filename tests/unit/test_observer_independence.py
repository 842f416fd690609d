"""Issue 15 hole 6, pure: an observer set's members come from distinct organisations and a
quorum counts organisations, not credentials. No broker.

Organisation (``TrustStore.organisation``): the credential's issuer-written ``organisation``
attribute, else its home authority (the first authority on its chain)."""

from __future__ import annotations

import functools
from typing import Any

from chargemesh.processors.governance import TrustAnchor, TrustStore
from chargemesh.processors.grid import observers
from chargemesh.processors.ingress import Admitted
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.observer_decision import decision_digest
from chargemesh.streams.sdk.participant import Participant
from chargemesh.units import HOUR_MS, MINUTE_MS

from tests.support.world import T0_MS, World, make_world, verdict_of

ZONE = "zone-orgs"
INTERVAL_MS = 15 * MINUTE_MS
START_MS = T0_MS + HOUR_MS
DECISION = sdk.observer_decision(grid_zone_id=ZONE, observer_set_version=1,
                                 interval_start_ms=START_MS,
                                 interval_end_ms=START_MS + INTERVAL_MS,
                                 curtailments=[("st-a", "c1", 0), ("st-b", "c1", 0)])
# observer -> its organisation attribute ("": none, its home authority counts)
MEMBERS = {"acme-1": "acme", "acme-2": "acme", "acme-3": "acme", "acme-4": "acme",
           "volt-1": "volt", "grid-1": "gridco", "ohm-1": "ohm", "bare-1": "", "bare-2": ""}


@functools.lru_cache(maxsize=1)
def world() -> tuple[World, TrustStore, Participant, dict[str, Participant]]:
    w = make_world()
    operator = w.grid_operator("orgs-operator", ZONE)
    team = {name: w.credential(name, ["OBSERVER"],
                               attributes={"organisation": org} if org else None)
            for name, org in MEMBERS.items()}
    return w, w.store(), operator, team


def declare(ids: list[str], k: int, f: int) -> tuple[dict[str, Any], Any]:
    """Declare a set of ``ids`` in a fresh zone state: (state, the router's refusal or None)."""
    w, store, operator, _ = world()
    event = sdk.observer_set_declared(
        w.root, operator, grid_zone_id=ZONE, version=1, observer_ids=ids, threshold_k=k,
        faults_tolerated_f=f, interval_ms=INTERVAL_MS, effective_from_ms=T0_MS, at_ms=T0_MS)
    verdict = verdict_of(store, event)
    assert isinstance(verdict, Admitted), verdict  # ingress: signatures and roles are fine
    ostate = observers.new_state()
    return ostate, observers.declare_set(ostate, verdict.event, verdict.payload, store)


@functools.cache
def attestation(name: str) -> SignedEvent:
    return sdk.observer_attestation(world()[3][name], DECISION, at_ms=START_MS)


def vote(ostate: dict[str, Any], name: str) -> observers.Outcome:
    store = world()[1]
    verdict = verdict_of(store, attestation(name))
    assert isinstance(verdict, Admitted), verdict
    return observers.attest(ostate, ["st-a", "st-b"], verdict.event, verdict.payload)


def test_organisation_is_the_issuers_attribute_else_the_home_authority() -> None:
    store = world()[1]
    assert store.organisation("acme-1", T0_MS) == store.organisation("acme-4", T0_MS) == "acme"
    assert store.organisation("volt-1", T0_MS) == "volt"
    assert store.organisation("bare-1", T0_MS) == store.organisation("bare-2", T0_MS) == "auth-root"
    assert store.organisation("nobody", T0_MS) is None


def test_credentials_of_distinct_anchors_are_distinct_organisations_without_an_attribute() -> None:
    w = make_world()
    other_root = Participant.seeded("auth-b", secret="tests")
    other_issuer = Participant.seeded("issuer-b", secret="tests")
    holders = [Participant.seeded(n, secret="tests") for n in ("obs-a", "obs-b")]
    events = [*w.governance,
              other_root.declare_authority("Second root", "US-CA", ["AUTHORITY", "OBSERVER"],
                                          at_ms=T0_MS),
              other_root.delegate_issuer(other_issuer, ["OBSERVER"], ["US-CA"], at_ms=T0_MS),
              w.issuer.issue_credential(holders[0], ["OBSERVER"], "US-CA", at_ms=T0_MS),
              other_issuer.issue_credential(holders[1], ["OBSERVER"], "US-CA", at_ms=T0_MS)]
    store = TrustStore(w.anchors() + [TrustAnchor("auth-b", other_root.public_key)])
    for event in events:
        assert isinstance(verdict_of(store, event), Admitted)
    assert store.organisation("obs-a", T0_MS) == "auth-root"
    assert store.organisation("obs-b", T0_MS) == "auth-b"


def test_a_set_of_one_organisation_is_refused_observers_not_independent() -> None:
    _, problem = declare(["acme-1", "acme-2", "acme-3", "acme-4"], k=3, f=1)  # the attack
    assert problem is not None and problem.reason == "OBSERVERS_NOT_INDEPENDENT"
    assert "from 1 organisations (acme)" in problem.detail
    _, problem = declare(["bare-1", "bare-2", "acme-1", "volt-1"], k=3, f=1)  # 3 < k + f
    assert problem is not None and problem.reason == "OBSERVERS_NOT_INDEPENDENT"
    ostate, problem = declare(["acme-1", "volt-1", "grid-1", "ohm-1"], k=3, f=1)  # the twin
    assert problem is None
    assert ostate["set"]["organisations"] == {"acme-1": "acme", "grid-1": "gridco",
                                              "ohm-1": "ohm", "volt-1": "volt"}


def test_a_refused_set_leaves_the_zone_as_it_was() -> None:
    ostate, problem = declare(["acme-1", "acme-2", "acme-3", "acme-4"], k=3, f=1)
    assert problem is not None and ostate == observers.new_state()


def test_k_plus_f_organisations_suffice_and_two_votes_of_one_organisation_count_once() -> None:
    # five observers, four organisations; k = 3, f = 0 needs 3 distinct ones
    ostate, problem = declare(["acme-1", "acme-2", "volt-1", "grid-1", "ohm-1"], k=3, f=0)
    assert problem is None
    for name in ("acme-1", "acme-2", "volt-1"):  # three credentials, two organisations
        outcome = vote(ostate, name)
        assert outcome.rejection is None and outcome.decisions == [], name
    outcome = vote(ostate, "grid-1")  # the third organisation: quorum
    [quorum] = [d.payload for d in outcome.decisions
                if d.event_type == observers.QUORUM_REACHED]
    assert quorum["signer_credential_ids"] == ["acme-1", "acme-2", "grid-1", "volt-1"]


def test_a_certificate_counts_organisations_too() -> None:
    w, store, operator, _ = world()
    declared = sdk.observer_set_declared(
        w.root, operator, grid_zone_id=ZONE, version=1,
        observer_ids=["acme-1", "acme-2", "volt-1", "grid-1", "ohm-1"], threshold_k=3,
        faults_tolerated_f=0, interval_ms=INTERVAL_MS, effective_from_ms=T0_MS, at_ms=T0_MS)
    digest = decision_digest(DECISION)
    same_org = [attestation(n).encode() for n in ("acme-1", "acme-2", "volt-1")]
    short = observers.verify_certificate(declared.encode(), same_org, digest, store)
    assert not isinstance(short, observers.Certificate)
    assert short.reason == "INVALID_QUORUM" and "2 of 3 observer organisations" in short.detail
    full = same_org + [attestation("grid-1").encode()]
    cert = observers.verify_certificate(declared.encode(), full, digest, store)
    assert isinstance(cert, observers.Certificate)
    one_org = sdk.observer_set_declared(
        w.root, operator, grid_zone_id=ZONE, version=1,
        observer_ids=["acme-1", "acme-2", "acme-3", "acme-4"], threshold_k=3,
        faults_tolerated_f=1, interval_ms=INTERVAL_MS, effective_from_ms=T0_MS, at_ms=T0_MS)
    forged = observers.verify_certificate(
        one_org.encode(), [attestation(n).encode() for n in ("acme-1", "acme-2", "acme-3")],
        digest, store)  # a station never applies a quorum of a set of one organisation
    assert not isinstance(forged, observers.Certificate)
    assert forged.reason == "INVALID_QUORUM" and "from 1 organisations" in forged.detail
