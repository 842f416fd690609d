"""Issue 15, hole 2: a grid zone belongs to a jurisdiction. Its authority registers it
(``GridZoneRegistered``) naming its operators; only they (or that authority) declare its program,
only they sign its grid events; a self-chosen ``grid_zones`` attribute grants nothing. Pure."""

from __future__ import annotations

from chargemesh.processors.governance import TrustAnchor, TrustStore
from chargemesh.processors.grid import zone_router
from chargemesh.processors.ingress import Admitted, Refused, admit_governance
from chargemesh.streams.envelope import SignedEvent
from chargemesh.streams.keys import Signer
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import Participant

from tests.support.world import T0_MS, World, make_world, verdict_of

ZONE = "zone-gz-1"


def fresh() -> tuple[World, Participant]:
    """A US-CA world with a second trust anchor beside its root: the DE-BY authority."""
    world = make_world(("US-CA",))
    de = Participant.seeded("auth-de", secret="tests")
    world.governance.append(de.declare_authority("DE-BY authority", "DE-BY",
                                                 ["AUTHORITY", "RATE_AUTHORITY", "GRID_OPERATOR"],
                                                 "EUR", at_ms=T0_MS))
    return world, de


def de_operator(world: World, de: Participant) -> Participant:
    """A GRID_OPERATOR credential of DE-BY, issued by the DE-BY authority's own issuer."""
    issuer = Participant.seeded("issuer-de", secret="tests")
    operator = Participant.seeded("gz-op-de", secret="tests")
    world.governance += [
        de.delegate_issuer(issuer, ["GRID_OPERATOR"], ["DE-BY"], at_ms=T0_MS),
        issuer.issue_credential(operator, ["GRID_OPERATOR"], "DE-BY", at_ms=T0_MS)]
    return operator


def store_of(world: World, de: Participant) -> TrustStore:
    store = TrustStore(world.anchors() + [TrustAnchor(de.credential_id, de.public_key)])
    for event in world.governance:
        verdict = admit_governance(event.encode(), event.body.subject_key.encode(), store)
        assert isinstance(verdict, Admitted), verdict
    return store


def refused(store: TrustStore, event: SignedEvent) -> str:
    verdict = verdict_of(store, event)
    assert isinstance(verdict, Refused), verdict
    return str(verdict.rejection.reason)


def admitted(store: TrustStore, event: SignedEvent) -> Admitted:
    verdict = verdict_of(store, event)
    assert isinstance(verdict, Admitted), verdict
    return verdict


def program(author: Participant, operators: list[str], at_ms: int = T0_MS) -> SignedEvent:
    return sdk.grid_program(author, grid_zone_id=ZONE, program="V2G", operator_ids=operators,
                            at_ms=at_ms)


def register(authority: Participant, operators: list[str], jurisdiction: str = "US-CA",
             at_ms: int = T0_MS) -> SignedEvent:
    return sdk.grid_zone_registered(authority, grid_zone_id=ZONE, jurisdiction=jurisdiction,
                                    operator_ids=operators, at_ms=at_ms)


def test_a_self_chosen_zone_attribute_grants_nothing() -> None:
    world, de = fresh()
    squatter = world.credential("gz-squatter", ["GRID_OPERATOR"],
                                attributes={"grid_zones": ZONE})
    store = store_of(world, de)
    attack = program(squatter, [squatter.credential_id])
    assert refused(store, attack) == "ZONE_NOT_REGISTERED"
    assert not store.operates_zone(squatter.credential_id, ZONE)
    assert ZONE not in store.grid_programs and attack.event_id not in store.applied_event_ids


def test_the_registered_operator_declares_and_an_unnamed_one_is_refused() -> None:
    world, de = fresh()
    operator = world.grid_operator("gz-op", ZONE)
    squatter = world.credential("gz-squatter", ["GRID_OPERATOR"],
                                attributes={"grid_zones": ZONE})
    store = store_of(world, de)
    assert refused(store, program(squatter, [squatter.credential_id])) == "NOT_THE_ZONES_OPERATOR"
    # a registered operator cannot name an outsider as the co-signer of the zone's sessions
    assert refused(store, program(operator, [squatter.credential_id])) == "NOT_THE_ZONES_OPERATOR"
    admitted(store, program(operator, [operator.credential_id]))
    assert store.grid_program(ZONE, T0_MS)["grid_operator_credential_ids"] == ["gz-op"]
    # the authority that registered the zone may replace its program too
    admitted(store, sdk.grid_program(world.root, grid_zone_id=ZONE, program="NONE",
                                     operator_ids=[operator.credential_id], at_ms=T0_MS + 1))
    assert store.grid_program(ZONE, T0_MS + 1) is None


def test_only_the_zones_jurisdiction_registers_it_and_re_registration_replaces() -> None:
    world, de = fresh()
    first = world.credential("gz-op-1", ["GRID_OPERATOR"])
    second = world.credential("gz-op-2", ["GRID_OPERATOR"])
    de_op = de_operator(world, de)
    meter = world.credential("gz-meter", ["METER"])
    store = store_of(world, de)
    # another jurisdiction's authority can neither register a US-CA zone nor take one over
    assert refused(store, register(de, [first.credential_id])) == "ZONE_JURISDICTION_NOT_HELD"
    assert refused(store, register(world.root, [meter.credential_id])) == (
        "INVALID_ZONE_REGISTRATION")
    assert refused(store, register(world.root, [de_op.credential_id])) == (
        "INVALID_ZONE_REGISTRATION")
    assert refused(store, register(world.root, [])) == "INVALID_ZONE_REGISTRATION"
    admitted(store, register(world.root, [first.credential_id]))
    assert refused(store, register(de, [de_op.credential_id], "DE-BY")) == (
        "ZONE_REGISTERED_ELSEWHERE")
    assert store.operates_zone(first.credential_id, ZONE)
    # the US-CA authority re-registers the zone to another operator: the first loses it
    admitted(store, register(world.root, [second.credential_id], at_ms=T0_MS + 10))
    assert refused(store, program(first, [first.credential_id], T0_MS + 20)) == (
        "NOT_THE_ZONES_OPERATOR")
    admitted(store, program(second, [second.credential_id], T0_MS + 20))
    # as of a time before the replacement took effect, the first was the zone's operator
    assert store.operates_zone(first.credential_id, ZONE, T0_MS + 5)
    assert not store.operates_zone(first.credential_id, ZONE, T0_MS + 10)


def test_the_router_routes_only_a_registered_operators_grid_events() -> None:
    world, de = fresh()
    operator = world.grid_operator("gz-op", ZONE)
    squatter = world.credential("gz-squatter", ["GRID_OPERATOR"],
                                attributes={"grid_zones": ZONE})
    store = store_of(world, de)
    signer = Signer.from_seed("mesh:processor", bytes(range(32)))
    zone = zone_router.new_zone()
    zone["stations"] = ["st-a"]

    def route(author: Participant, zone_id: str = ZONE) -> tuple[Admitted | Refused, int]:
        event = sdk.grid_event(author, grid_event_id=f"ge-{author.credential_id}-{zone_id}",
                               grid_zone_id=zone_id, kind="PRICE_SIGNAL", from_ms=T0_MS + 60_000,
                               until_ms=T0_MS + 120_000, rate_per_kwh="0.90", at_ms=T0_MS)
        verdict, outputs = zone_router.route(zone, admitted(store, event), store, signer)
        return verdict, len(outputs)

    spoofed, routed = route(squatter)
    assert isinstance(spoofed, Refused) and routed == 0
    assert spoofed.rejection.reason == "NOT_THE_ZONES_OPERATOR"
    unregistered, routed = route(operator, "zone-nobody")
    assert isinstance(unregistered, Refused) and routed == 0
    assert unregistered.rejection.reason == "ZONE_NOT_REGISTERED"
    legitimate, routed = route(operator)
    assert isinstance(legitimate, Admitted) and routed == 1
