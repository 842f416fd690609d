"""Issue 15, holes 1 and 5 (pure): nothing grants more than its grantor holds, and only an
anchored authority declares itself.

Hole 1: an authority recognised only as AUTHORITY for DE-BY delegated an issuer GRID_OPERATOR
for US-CA, whose grid operator then replaced the legitimate one's grid program. Hole 5: anyone's
self-declaration entered the lineage log and the trust store.
"""

from __future__ import annotations

import io
import json
from importlib import resources

import fastavro

from chargemesh.processors.governance import TrustStore
from chargemesh.processors.ingress import Admitted, Refused
from chargemesh.schemas.codec import catalog, load_schema_json
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.sdk.participant import Participant

from tests.support.world import T0_MS, World, make_world, verdict_of


def reason(verdict: Admitted | Refused) -> str:
    assert isinstance(verdict, Refused), "expected a rejection"
    return verdict.rejection.reason


def admitted(store: TrustStore, event: SignedEvent) -> None:
    verdict = verdict_of(store, event)
    assert isinstance(verdict, Admitted), verdict


def de_by_authority(world: World, roles: list[str], name: str = "auth-de") -> Participant:
    """An authority the root recognises for DE-BY with ``roles`` (AUTHORITY is implied)."""
    authority = Participant.seeded(name, secret="tests")
    world.governance.append(world.root.recognise_authority(authority, "DE-BY", roles,
                                                           at_ms=T0_MS))
    return authority


# ---- hole 1: delegation scope ------------------------------------------------------------------


def test_an_authority_delegates_no_role_or_jurisdiction_it_does_not_hold() -> None:
    world = make_world()
    de = de_by_authority(world, ["AUTHORITY"])
    store = world.store()
    rogue_issuer = Participant.seeded("issuer-de-rogue", secret="tests")
    attack = de.delegate_issuer(rogue_issuer, ["GRID_OPERATOR"], ["US-CA"], at_ms=T0_MS)
    assert reason(verdict_of(store, attack)) == "DELEGATION_EXCEEDS_AUTHORITY"
    assert "issuer-de-rogue" not in store.principals
    # each half of the excess alone is refused too
    for roles, jurisdictions in ((["GRID_OPERATOR"], ["DE-BY"]), ([], ["US-CA"])):
        half = de.delegate_issuer(rogue_issuer, roles, jurisdictions, at_ms=T0_MS)
        assert reason(verdict_of(store, half)) == "DELEGATION_EXCEEDS_AUTHORITY"
    # the rogue issuer's grid operator and its program then have nothing to stand on
    operator = Participant.seeded("grid-op-rogue", secret="tests")
    minted = rogue_issuer.issue_credential(operator, ["GRID_OPERATOR"], "US-CA",
                                           attributes={"grid_zones": "zone-ca"}, at_ms=T0_MS)
    assert reason(verdict_of(store, minted)) == "UNKNOWN_CREDENTIAL"
    assert "grid-op-rogue" not in store.principals


def test_the_legitimate_twin_delegates_within_what_it_was_recognised_for() -> None:
    world = make_world()
    de = de_by_authority(world, ["GRID_OPERATOR"])
    store = world.store()
    issuer = Participant.seeded("issuer-de", secret="tests")
    admitted(store, de.delegate_issuer(issuer, ["GRID_OPERATOR"], ["DE-BY"], at_ms=T0_MS))
    assert store.principals["issuer-de"].roles == {"GRID_OPERATOR", "ISSUER"}
    assert store.principals["issuer-de"].jurisdictions == {"DE-BY"}
    operator = Participant.seeded("grid-op-de", secret="tests")
    admitted(store, issuer.issue_credential(operator, ["GRID_OPERATOR"], "DE-BY", at_ms=T0_MS))
    out_of_scope = Participant.seeded("grid-op-ca", secret="tests")
    refused = issuer.issue_credential(out_of_scope, ["GRID_OPERATOR"], "US-CA", at_ms=T0_MS)
    assert reason(verdict_of(store, refused)) == "JURISDICTION_NOT_DELEGATED"


def test_authority_is_never_delegated_nor_issued() -> None:
    world = make_world()
    store = world.store()
    issuer = Participant.seeded("issuer-auth", secret="tests")
    grab = world.root.delegate_issuer(issuer, ["AUTHORITY", "STATION"], ["US-CA"], at_ms=T0_MS)
    assert reason(verdict_of(store, grab)) == "DELEGATION_EXCEEDS_AUTHORITY"
    holder = Participant.seeded("cred-auth", secret="tests")
    minted = world.issuer.issue_credential(holder, ["AUTHORITY"], "US-CA", at_ms=T0_MS)
    assert reason(verdict_of(store, minted)) == "ISSUANCE_EXCEEDS_DELEGATION"
    squat = world.issuer.issue_credential(Participant.seeded("auth-root", secret="squat"),
                                          ["STATION"], "US-CA", at_ms=T0_MS)
    assert reason(verdict_of(store, squat)) == "DUPLICATE_IDENTIFIER"


def test_a_recognition_is_bounded_by_the_recogniser_and_given_once() -> None:
    world = make_world()
    de = de_by_authority(world, ["RATE_AUTHORITY"])
    store = world.store()
    regional = Participant.seeded("auth-de-regional", secret="tests")
    for jurisdiction, roles in (("US-CA", ["RATE_AUTHORITY"]), ("DE-BY", ["GRID_OPERATOR"])):
        wider = de.recognise_authority(regional, jurisdiction, roles, at_ms=T0_MS)
        assert reason(verdict_of(store, wider)) == "RECOGNITION_EXCEEDS_AUTHORITY"
    extra = de.recognise_authority(regional, "DE-BY", ["RATE_AUTHORITY"], at_ms=T0_MS,
                                   jurisdictions=["GB-LDN"])
    assert reason(verdict_of(store, extra)) == "RECOGNITION_EXCEEDS_AUTHORITY"
    assert "auth-de-regional" not in store.principals
    admitted(store, de.recognise_authority(regional, "DE-BY", ["RATE_AUTHORITY"], at_ms=T0_MS))
    again = world.root.recognise_authority(regional, "DE-BY", ["RATE_AUTHORITY"], at_ms=T0_MS)
    assert reason(verdict_of(store, again)) == "DUPLICATE_IDENTIFIER"  # no re-parenting
    anchor = de.recognise_authority(world.root, "DE-BY", [], at_ms=T0_MS)
    assert reason(verdict_of(store, anchor)) == "DUPLICATE_IDENTIFIER"  # anchors are configured
    assert store.principals["auth-root"].parent_id == ""


def test_a_root_covers_the_jurisdictions_it_declares() -> None:
    world = make_world(("US-CA", "DE-BY", "GB-LDN"))
    store = world.store()
    assert store.principals["auth-root"].jurisdictions == {"US-CA", "DE-BY", "GB-LDN"}
    assert store.principals["issuer-1"].jurisdictions == {"US-CA", "DE-BY", "GB-LDN"}


# ---- hole 5: unanchored declarations ----------------------------------------------------------


def test_an_unanchored_declaration_is_refused_and_stored_nowhere() -> None:
    world = make_world()
    store = world.store()
    rogue = Participant.seeded("auth-self-made", secret="tests")
    declared = rogue.declare_authority("Self made", "US-CA", ["AUTHORITY"], at_ms=T0_MS)
    assert reason(verdict_of(store, declared)) == "UNRECOGNISED_AUTHORITY"
    assert "auth-self-made" not in store.principals
    assert declared.event_id not in store.applied_event_ids
    # an anchor's id with another key is not the anchor
    impostor = Participant.seeded("auth-root", secret="impostor")
    forged = impostor.declare_authority("Root", "US-CA", ["AUTHORITY"], at_ms=T0_MS)
    assert reason(verdict_of(store, forged)) == "DUPLICATE_IDENTIFIER"


def test_a_recognised_authority_declares_itself_within_its_recognition() -> None:
    world = make_world()
    de = de_by_authority(world, ["RATE_AUTHORITY"])
    store = world.store()
    wider = de.declare_authority("DE", "DE-BY", ["AUTHORITY", "GRID_OPERATOR"], at_ms=T0_MS)
    assert reason(verdict_of(store, wider)) == "RECOGNITION_EXCEEDS_AUTHORITY"
    admitted(store, de.declare_authority("DE", "DE-BY", ["AUTHORITY", "RATE_AUTHORITY"], "EUR",
                                         at_ms=T0_MS))
    assert store.principals["auth-de"].roles == {"AUTHORITY", "RATE_AUTHORITY"}
    assert store.principals["auth-de"].parent_id == "auth-root"
    # revoked: its recognition no longer holds, so neither does its declaration
    admitted(store, world.root.revoke("auth-de", T0_MS + 10, at_ms=T0_MS + 10))
    late = de.declare_authority("DE", "DE-BY", ["AUTHORITY"], at_ms=T0_MS + 20)
    assert reason(verdict_of(store, late)) in ("UNRECOGNISED_AUTHORITY", "CREDENTIAL_REVOKED")


def test_a_trust_anchor_may_widen_its_declaration_never_narrow_it() -> None:
    world = make_world()
    store = world.store()
    root, held = world.root, store.principals["auth-root"]
    wider = root.declare_authority("Root", "US-CA", sorted(held.roles), at_ms=T0_MS + 1,
                                   jurisdictions=[*sorted(held.jurisdictions), "GB-LDN"])
    admitted(store, wider)
    assert "GB-LDN" in store.principals["auth-root"].jurisdictions
    narrower = root.declare_authority("Root", "US-CA", ["AUTHORITY"], at_ms=T0_MS + 2)
    assert reason(verdict_of(store, narrower)) == "DUPLICATE_IDENTIFIER"
    assert "GB-LDN" in store.principals["auth-root"].jurisdictions


def test_a_declaration_written_before_the_jurisdictions_field_still_decodes() -> None:
    """Lineage is kept for years: an AuthorityDeclared of the schema's first revision decodes
    through the current reader with ``jurisdictions`` empty (the root holds just its
    ``jurisdiction``)."""
    name = "chargemesh.governance.v1.AuthorityDeclared"
    root_dir = resources.files("chargemesh.schemas").joinpath("avro", "history")
    old = load_schema_json(json.loads(root_dir.joinpath(f"{name}.0.avsc").read_text()))
    world = make_world()
    record = {"authority_id": "auth-root", "name": "Root", "jurisdiction": "US-CA",
              "public_key": world.root.public_key, "roles": ["AUTHORITY", "STATION"],
              "currency": "USD", "declared_at_ms": T0_MS}
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, old.parsed, record)
    decoded_name, decoded = catalog().decode(old.fingerprint, buffer.getvalue())
    assert decoded_name == name and decoded == dict(record, jurisdictions=[])
    store = TrustStore(world.anchors())
    admitted(store, world.root.sign(name, decoded, subject_key="auth-root", occurred_at_ms=T0_MS))
    assert store.principals["auth-root"].jurisdictions == {"US-CA"}
