"""Issue 15 (property): for random delegation chains, no credential ever holds a role or a
jurisdiction its chain did not grant, and the store never holds an unanchored authority.

Hypothesis draws a trust anchor's declared scope and a sequence of governance steps over a small
universe of keys (so that steps meet: recognitions of recognised authorities, delegations by
unrecognised ones, issuances by issuers that were refused, self-declarations by anyone), each
with random roles and jurisdictions. Every step goes through the real ingress (codec, signature,
policy, store); whatever the store admits must stay inside what its grantor held.
"""

from __future__ import annotations

import functools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargemesh.processors.governance import TrustAnchor, TrustStore
from chargemesh.processors.ingress import admit_governance
from chargemesh.streams.sdk.participant import Participant

AT_MS = 1_790_000_000_000
ROLES = ("AUTHORITY", "ISSUER", "RATE_AUTHORITY", "STATION", "VEHICLE", "GRID_OPERATOR",
         "ARBITER")
JURISDICTIONS = ("US-CA", "DE-BY", "GB-LDN", "FR-IDF")
AUTHORITIES = ("auth-anchor", "auth-a", "auth-b", "auth-c")  # auth-anchor is the only anchor
ISSUERS = ("iss-a", "iss-b", "iss-c")
CREDENTIALS = ("cred-a", "cred-b", "cred-c")
STEPS_MAX = 24
AUTHORITY_ONLY = frozenset({"AUTHORITY", "ISSUER"})


@functools.cache
def key(principal_id: str) -> Participant:
    return Participant.seeded(principal_id, secret="property")


roles = st.lists(st.sampled_from(ROLES), max_size=3, unique=True)
# The anchor usually holds much (so that chains grow deep), sometimes little or nothing declared.
anchor_roles = st.lists(st.sampled_from(ROLES), min_size=2, max_size=len(ROLES), unique=True)
anchor_places = st.lists(st.sampled_from(JURISDICTIONS), min_size=1, max_size=4, unique=True)
KINDS = ("recognise", "declare", "delegate", "issue")
ACTORS = {"recognise": AUTHORITIES, "declare": AUTHORITIES, "delegate": AUTHORITIES,
          "issue": ISSUERS + AUTHORITIES}
TARGETS = {"recognise": AUTHORITIES, "declare": AUTHORITIES, "delegate": ISSUERS,
           "issue": CREDENTIALS}


def draw_step(data: st.DataObject, store: TrustStore) -> tuple[str, str, str, list[str],
                                                               list[str]]:
    """A step whose actor usually exists and whose scope is usually near the actor's: mostly
    within it, sometimes one role or jurisdiction beyond (the attacks)."""
    kind = data.draw(st.sampled_from(KINDS))
    known = [a for a in ACTORS[kind] if a in store.principals]
    actor = data.draw(st.sampled_from(known) if known and data.draw(st.integers(0, 4))
                      else st.sampled_from(ACTORS[kind]))
    target = data.draw(st.sampled_from(TARGETS[kind]))
    held = store.principals.get(actor)
    held_roles = sorted(held.roles) if held else list(ROLES)
    held_places = sorted(held.jurisdictions) if held else list(JURISDICTIONS)
    role_list = data.draw(st.lists(st.sampled_from(held_roles), max_size=3, unique=True))
    places = data.draw(st.lists(st.sampled_from(held_places), min_size=1, max_size=2,
                                unique=True))
    if data.draw(st.integers(0, 3)) == 0:  # reach beyond
        role_list = sorted({*role_list, data.draw(st.sampled_from(ROLES))})
        places = [*places, *[p for p in [data.draw(st.sampled_from(JURISDICTIONS))]
                             if p not in places]]
    return kind, actor, target, role_list, places


def event_of(kind: str, actor: str, target: str, role_list: list[str],
             places: list[str]) -> object:
    author, other = key(actor), key(target)
    first, rest = places[0], places[1:]
    if kind == "recognise":
        return author.recognise_authority(other, first, role_list, at_ms=AT_MS,
                                          jurisdictions=rest)
    if kind == "declare":  # ``target`` ignored: an authority declares itself
        return author.declare_authority(actor, first, role_list, at_ms=AT_MS, jurisdictions=rest)
    if kind == "delegate":
        return author.delegate_issuer(other, role_list, places, at_ms=AT_MS)
    return author.issue_credential(other, role_list, first, at_ms=AT_MS)


def check_store(store: TrustStore) -> None:
    anchor = store.principals.get("auth-anchor")
    for principal in store.principals.values():
        if principal.kind == "authority":
            assert principal.recognised
            if principal.principal_id == "auth-anchor":
                assert principal.parent_id == ""
                continue
            # an authority is in the store only under a recognition chaining to the anchor
            chain, current = [], principal
            while current.parent_id and len(chain) <= len(store.principals):
                chain.append(current.principal_id)
                current = store.principals[current.parent_id]
            assert current.principal_id == "auth-anchor", chain
        if principal.kind not in ("authority", "issuer", "credential"):
            continue  # the processors' own deployment keys are configured, not granted
        parent = store.principals[principal.parent_id]
        if principal.kind == "authority":  # recognised by an authority, within its scope
            assert parent.kind == "authority"
            assert principal.roles <= parent.roles
            assert principal.jurisdictions <= parent.jurisdictions
        elif principal.kind == "issuer":  # delegated by an authority, never AUTHORITY
            assert parent.kind == "authority"
            assert principal.roles - {"ISSUER"} <= parent.roles - AUTHORITY_ONLY
            assert principal.jurisdictions <= parent.jurisdictions
        else:  # issued by an issuer (or an authority holding ISSUER), never AUTHORITY
            assert not principal.roles & AUTHORITY_ONLY
            assert principal.roles <= parent.roles
            assert principal.jurisdictions <= parent.jurisdictions
        # whatever the chain: nothing beyond the anchor's declared scope
        assert anchor is not None
        assert principal.roles - {"ISSUER"} <= anchor.roles
        assert principal.jurisdictions <= anchor.jurisdictions


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anchor_roles=anchor_roles, anchor_places=anchor_places,
       anchor_declares=st.sampled_from((True,) * 9 + (False,)),
       steps=st.integers(4, STEPS_MAX), data=st.data())
def test_no_credential_holds_what_its_chain_did_not_grant(
        anchor_roles: list[str], anchor_places: list[str], anchor_declares: bool, steps: int,
        data: st.DataObject) -> None:
    anchor = key("auth-anchor")
    store = TrustStore([TrustAnchor("auth-anchor", anchor.public_key)])
    governed = ("authority", "issuer", "credential")
    if anchor_declares:
        declared = event_of("declare", "auth-anchor", "", anchor_roles, anchor_places)
        admit_governance(declared.encode(), declared.body.subject_key.encode(), store)
    for _ in range(steps):
        event = event_of(*draw_step(data, store))
        admit_governance(event.encode(), event.body.subject_key.encode(), store)
        if "auth-anchor" in store.principals:
            check_store(store)
        else:  # before the anchor declares itself nothing can chain to it
            assert not [p for p in store.principals.values() if p.kind in governed]
