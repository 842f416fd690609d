"""Governance trust (M2, M3): authorities, delegated issuers, credentials, revocations.

Pure and synchronous: no Kafka, no clock. The store is built by applying the governance topic in
order; every worker holds its own copy. Trust anchors (root authorities and their keys) are
configured per deployment; everything else must chain up to one of them.

Chain: credential -> issuer (IssuerDelegated) -> authority -> ... -> trust anchor. A revocation of
any link revokes everything below it from its effective time (P4).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

from chargemesh.processors import currencies
from chargemesh.processors.log_clock import (
    GOVERNANCE_CLOCK_SKEW_MS_MAX,
    revoked_problem,
    skew_problem,
)
from chargemesh.processors.policy import POLICIES, field_at
from chargemesh.processors.reasons import Reason, Rejection
from chargemesh.streams.envelope import SignedEvent

CHAIN_DEPTH_MAX = 8
# A zone names at most this many operators; the store keeps this many registrations per zone.
ZONE_OPERATORS_MAX = 16
ZONE_REGISTRATIONS_KEPT_MAX = 16
# Versions of one tariff id (a tariff changed every day for ten years stays under it).
TARIFF_VERSIONS_MAX = 4_096
# A credential attribute naming the organisation behind it (observer independence, P3).
ORGANISATION_ATTRIBUTE = "organisation"
FOREVER_MS = 2**62
# The deployment's own duties (hole 7): the processors sign what they decide; a separate
# credential signs the checkpoints over those decisions. Never one key for both.
PROCESSOR_ROLE = "PROCESSOR"
CHECKPOINT_ROLE = "CHECKPOINT"
SEPARATED_ROLES = frozenset({PROCESSOR_ROLE, CHECKPOINT_ROLE})


@dataclasses.dataclass(frozen=True)
class TrustAnchor:
    authority_id: str
    public_key: bytes

    @classmethod
    def load_file(cls, path: Path) -> list["TrustAnchor"]:
        """JSON: [{"authority_id": ..., "public_key_hex": ...}, ...]."""
        data = json.loads(path.read_text())
        return [cls(item["authority_id"], bytes.fromhex(item["public_key_hex"])) for item in data]


@dataclasses.dataclass(frozen=True)
class Principal:
    """Anything that signs: an authority, an issuer or a participant credential."""

    principal_id: str
    kind: str  # "authority" | "issuer" | "credential"
    public_key: bytes
    roles: frozenset[str]
    jurisdictions: frozenset[str]
    valid_from_ms: int
    valid_until_ms: int
    parent_id: str  # who vouches for it ("" for an anchor or an unrecognised authority)
    subject_id: str
    recognised: bool = True
    attributes: tuple[tuple[str, str], ...] = ()

    def attribute(self, name: str) -> str:
        for key, value in self.attributes:
            if key == name:
                return value
        return ""


@dataclasses.dataclass(frozen=True)
class Revocation:
    principal_id: str
    effective_at_ms: int
    reason_code: str
    event_id: str


@dataclasses.dataclass(frozen=True)
class ChainOk:
    principal: Principal
    chain: tuple[str, ...]  # principal first, trust anchor last
    root_authority_id: str


class TrustStore:
    """The governance state at some offset of the governance topic."""

    def __init__(self, anchors: list[TrustAnchor]) -> None:
        self.anchors = {a.authority_id: a.public_key for a in anchors}
        # The mesh's own processors are no special principal: they sign derived records (routing,
        # decisions) under a governance-issued PROCESSOR credential, shared by every worker of
        # the deployment, which chains to an anchor and is revoked like any other (hole 7).
        self.principals: dict[str, Principal] = {}
        self.grid_programs: dict[str, dict[str, Any]] = {}
        # Each zone's GridZoneRegistered payloads in log order (the last few: see the limit).
        self.zone_registrations: dict[str, list[dict[str, Any]]] = {}
        self.revocations: dict[str, Revocation] = {}
        self.reciprocity: dict[frozenset[str], list[tuple[int, int, str]]] = {}
        self.tariffs: dict[str, dict[str, Any]] = {}  # the first filing of each tariff id
        self.tariff_versions: dict[str, list[dict[str, Any]]] = {}  # every version, in order
        self.rules: dict[str, dict[str, Any]] = {}
        self.applied_event_ids: set[str] = set()
        # The governance log's clock (issue 15, hole 3): the latest time an admitted governance
        # event claimed; derived from the log alone, so a replay rebuilds it.
        self.log_clock_ms = 0

    # ---- queries -------------------------------------------------------------------------

    def resolve(self, principal_id: str, at_ms: int) -> ChainOk | Rejection:
        """Walk the chain of ``principal_id`` up to a trust anchor, as it stood at ``at_ms``."""
        first = self.principals.get(principal_id)
        if first is None:
            return Rejection.of(Reason.UNKNOWN_CREDENTIAL, f"{principal_id} is not known")
        chain: list[str] = []
        current: Principal | None = first
        for _ in range(CHAIN_DEPTH_MAX):
            if current is None:
                return Rejection.of(Reason.UNKNOWN_CREDENTIAL, f"{chain[-1]}'s parent is unknown")
            chain.append(current.principal_id)
            problem = self._link_problem(current, at_ms)
            if problem is not None:
                return problem
            if current.kind == "authority" and current.principal_id in self.anchors:
                return ChainOk(first, tuple(chain), current.principal_id)
            if current.kind == "authority" and not current.recognised:
                return Rejection.of(
                    Reason.UNRECOGNISED_AUTHORITY,
                    f"authority {current.principal_id} is not recognised by this deployment",
                )
            current = self.principals.get(current.parent_id)
        return Rejection.of(Reason.UNRECOGNISED_AUTHORITY, f"chain longer than {CHAIN_DEPTH_MAX}")

    def _link_problem(self, link: Principal, at_ms: int) -> Rejection | None:
        revoked = self.revocations.get(link.principal_id)
        if revoked is not None and revoked.effective_at_ms <= at_ms:
            return Rejection.of(
                Reason.CREDENTIAL_REVOKED,
                f"{link.principal_id} revoked from {revoked.effective_at_ms} "
                f"({revoked.reason_code})",
            )
        if at_ms < link.valid_from_ms:
            return Rejection.of(
                Reason.CREDENTIAL_NOT_YET_VALID,
                f"{link.principal_id} valid from {link.valid_from_ms}",
            )
        if at_ms >= link.valid_until_ms:
            return Rejection.of(
                Reason.CREDENTIAL_EXPIRED, f"{link.principal_id} expired at {link.valid_until_ms}"
            )
        return None

    def verify_signer(
        self, event: SignedEvent, signer_id: str, at_ms: int
    ) -> ChainOk | Rejection:
        """A signature by ``signer_id`` is present, valid, and its chain holds at ``at_ms``."""
        principal = self.principals.get(signer_id)
        if principal is None:
            return Rejection.of(Reason.UNKNOWN_CREDENTIAL, f"signer {signer_id} is not known")
        if event.signature_by(signer_id) is None:
            return Rejection.of(Reason.MISSING_SIGNATURE, f"no signature by {signer_id}")
        if not event.verify_by(signer_id, principal.public_key):
            return Rejection.of(Reason.BAD_SIGNATURE, f"signature by {signer_id} does not verify")
        return self.resolve(signer_id, at_ms)

    def check_event(self, event: SignedEvent, payload: dict[str, Any]) -> ChainOk | Rejection:
        """Apply the event type's policy: author signature, chain, role, subject, co-signers."""
        policy = POLICIES.get(event.event_type)
        if policy is None:
            return Rejection.of(Reason.ROLE_NOT_PERMITTED, f"{event.event_type} is not publishable")
        at_ms = event.body.occurred_at_ms
        author = self.verify_signer(event, event.body.author_credential_id, at_ms)
        if isinstance(author, Rejection):
            return author
        if not (author.principal.roles & policy.author_roles):
            return Rejection.of(
                Reason.ROLE_NOT_PERMITTED,
                f"{author.principal.principal_id} has roles {sorted(author.principal.roles)}; "
                f"{event.event_type} needs one of {sorted(policy.author_roles)}",
            )
        if policy.key_path and field_at(payload, policy.key_path) != event.body.subject_key:
            return Rejection.of(
                Reason.KEY_MISMATCH, f"subject_key is not the payload's {policy.key_path}"
            )
        if policy.author_subject_path:
            claimed = field_at(payload, policy.author_subject_path)
            if claimed != author.principal.subject_id:
                return Rejection.of(
                    Reason.SUBJECT_MISMATCH,
                    f"{policy.author_subject_path}={claimed!r} is not the author's subject "
                    f"{author.principal.subject_id!r}",
                )
        for path in policy.cosigner_paths:
            cosigner = field_at(payload, path)
            if not isinstance(cosigner, str):
                return Rejection.of(Reason.MISSING_SIGNATURE, f"no co-signer named at {path}")
            verdict = self.verify_signer(event, cosigner, at_ms)
            if isinstance(verdict, Rejection):
                return verdict
        return author

    def has_reciprocity(self, authority_a: str, authority_b: str, at_ms: int) -> bool:
        if authority_a == authority_b:
            return True
        for start, end, _ in self.reciprocity.get(frozenset({authority_a, authority_b}), []):
            if start <= at_ms < end:
                return True
        return False

    def home_authority(self, credential_id: str, at_ms: int) -> str | None:
        """The authority a credential was issued under: the first authority on its chain
        (itself, for an authority). None if the chain does not hold at ``at_ms``."""
        verdict = self.resolve(credential_id, at_ms)
        if isinstance(verdict, Rejection):
            return None
        for link in verdict.chain:
            principal = self.principals.get(link)
            if principal is not None and principal.kind == "authority":
                return link
        return None

    def organisation(self, credential_id: str, at_ms: int) -> str | None:
        """Who stands behind a credential, for counting independent parties (P3 observers):
        its ``organisation`` attribute (written by its issuer in ``CredentialIssued``, which
        vouches for it as for its roles), else its home authority. None if the chain does not
        hold at ``at_ms``. Two credentials with the same answer are one organisation."""
        verdict = self.resolve(credential_id, at_ms)
        if isinstance(verdict, Rejection):
            return None
        return verdict.principal.attribute(ORGANISATION_ATTRIBUTE) or self.home_authority(
            credential_id, at_ms)

    def key_holds_role(self, public_key: bytes, role: str) -> bool:
        """Some credential with this public key was issued ``role`` (revoked or not: a key
        that ever signed as the processors stays theirs)."""
        return any(p.public_key == public_key and role in p.roles
                   for p in self.principals.values())

    def is_rate_authority(self, authority_id: str, at_ms: int) -> bool:
        """``authority_id`` is recognised (chains to an anchor) and is a RATE_AUTHORITY."""
        verdict = self.resolve(authority_id, at_ms)
        return isinstance(verdict, ChainOk) and "RATE_AUTHORITY" in verdict.principal.roles

    def zone_registration(self, grid_zone_id: str,
                          at_ms: int | None = None) -> dict[str, Any] | None:
        """The zone's registration in force at ``at_ms`` (the latest in log order whose
        ``effective_from_ms`` has come; ``at_ms=None``: the latest). None: not registered."""
        for registration in reversed(self.zone_registrations.get(grid_zone_id, [])):
            if at_ms is None or registration["effective_from_ms"] <= at_ms:
                return registration
        return None

    def operates_zone(self, credential_id: str, grid_zone_id: str,
                      at_ms: int | None = None) -> bool:
        """A GRID_OPERATOR credential named by the zone's registration in force (never a
        self-chosen attribute: the zone's jurisdiction's authority names its operators)."""
        registration = self.zone_registration(grid_zone_id, at_ms)
        principal = self.principals.get(credential_id)
        if registration is None or principal is None or "GRID_OPERATOR" not in principal.roles:
            return False
        return credential_id in registration["operator_credential_ids"]

    def zone_problem(self, credential_id: str, grid_zone_id: str, at_ms: int | None = None,
                     authority_too: bool = False) -> Rejection | None:
        """Why ``credential_id`` may not act for the zone (None: it may): the zone is not
        registered, or it is not a registered operator (nor, with ``authority_too``, the
        authority that registered it)."""
        registration = self.zone_registration(grid_zone_id, at_ms)
        if registration is None:
            return Rejection.of(Reason.ZONE_NOT_REGISTERED,
                                f"grid zone {grid_zone_id} is not registered")
        if self.operates_zone(credential_id, grid_zone_id, at_ms) or (
                authority_too and credential_id == registration["registered_by_authority_id"]):
            return None
        return Rejection.of(Reason.NOT_THE_ZONES_OPERATOR, f"{credential_id} is not a registered "
                            f"operator of grid zone {grid_zone_id}")

    def grid_program(self, grid_zone_id: str, at_ms: int) -> dict[str, Any] | None:
        """The zone's V2G / demand-response program in force at ``at_ms`` (None: bilateral)."""
        program = self.grid_programs.get(grid_zone_id)
        if program is None or program["program"] == "NONE" or program["effective_from_ms"] > at_ms:
            return None
        return program

    def tariff(self, tariff_id: str) -> dict[str, Any] | None:
        return self.tariffs.get(tariff_id)

    def tariff_schedule(self, tariff_id: str) -> list[dict[str, Any]]:
        """Every filed version of ``tariff_id``, by ``effective_from_ms`` (M3): a version is in
        force from its ``effective_from_ms`` until the next one's, or its own
        ``effective_until_ms`` if earlier. Empty: never filed."""
        return list(self.tariff_versions.get(tariff_id, ()))

    def descendants(self, principal_id: str) -> list[str]:
        """Everything that chains through ``principal_id`` (itself first); for P4 cascades."""
        children: dict[str, list[str]] = {}
        for p in self.principals.values():
            children.setdefault(p.parent_id, []).append(p.principal_id)
        out, stack = [], [principal_id]
        while stack and len(out) <= len(self.principals):
            current = stack.pop()
            out.append(current)
            stack.extend(children.get(current, []))
        return out

    # ---- applying governance events ---------------------------------------------------------

    def apply(self, event: SignedEvent, payload: dict[str, Any]) -> Rejection | None:
        """Check a governance event and, if admissible, fold it into the store."""
        if event.event_id in self.applied_event_ids:
            return Rejection.of(Reason.REPLAYED_EVENT_ID, f"{event.event_id} already applied")
        handler = _HANDLERS.get(event.event_type)
        if handler is None:
            return Rejection.of(Reason.WRONG_TOPIC, f"{event.event_type} is not a governance event")
        problem = self._untimely(event, payload) or handler(self, event, payload)
        if problem is None:
            self.applied_event_ids.add(event.event_id)
            self.log_clock_ms = max(self.log_clock_ms, event.body.occurred_at_ms)
        return problem

    def _untimely(self, event: SignedEvent, payload: dict[str, Any]) -> Rejection | None:
        """Issue 15, hole 3: a governance event is judged at the governance log's time. It may
        claim a time at most GOVERNANCE_CLOCK_SKEW_MS_MAX ahead of the log's clock, and each
        signer (author, co-signers) known to the store must still hold, unrevoked and
        unexpired, at ``max(claimed, log clock)``: a backdated act does not get round a
        revocation in the log or its author's expiry. (Behind the clock is not refused: the
        SDK's governance builders sign at time 0 unless told otherwise.)"""
        claimed = event.body.occurred_at_ms
        if claimed > self.log_clock_ms:
            problem = skew_problem(self.log_clock_ms, claimed, GOVERNANCE_CLOCK_SKEW_MS_MAX,
                                   "the governance log")
            if problem is not None:
                return problem
        policy = POLICIES.get(event.event_type)
        signers = [event.body.author_credential_id] + [
            cosigner for path in (policy.cosigner_paths if policy is not None else ())
            if isinstance(cosigner := field_at(payload, path), str)]
        judged_at = max(claimed, self.log_clock_ms)
        for signer in signers:
            problem = revoked_problem(self.lineage(signer), self._revoked_from, judged_at)
            if problem is None and signer in self.principals:
                verdict = self.resolve(signer, judged_at)
                expired = (isinstance(verdict, Rejection)
                           and verdict.reason == Reason.CREDENTIAL_EXPIRED)
                problem = verdict if expired and isinstance(verdict, Rejection) else None
            if problem is not None:
                return problem
        return None

    def _revoked_from(self, principal_id: str) -> int | None:
        revoked = self.revocations.get(principal_id)
        return None if revoked is None else revoked.effective_at_ms

    def lineage(self, principal_id: str) -> tuple[str, ...]:
        """``principal_id`` and what it chains through (parent links, at most CHAIN_DEPTH_MAX),
        whatever their validity: a revocation of any of them reaches it."""
        chain: list[str] = []
        current = self.principals.get(principal_id)
        while current is not None and len(chain) < CHAIN_DEPTH_MAX:
            chain.append(current.principal_id)
            current = self.principals.get(current.parent_id) if current.parent_id else None
        return tuple(chain) or (principal_id,)

    def _check_author(
        self, event: SignedEvent, payload: dict[str, Any], expected_author: str | None = None
    ) -> ChainOk | Rejection:
        if expected_author is not None and event.body.author_credential_id != expected_author:
            return Rejection.of(
                Reason.SUBJECT_MISMATCH,
                f"must be signed by {expected_author}, not {event.body.author_credential_id}",
            )
        return self.check_event(event, payload)


def _declare_authority(store: TrustStore, event: SignedEvent,
                       p: dict[str, Any]) -> Rejection | None:
    """Only a configured trust anchor (its scope: what it declares, which may widen but never
    narrow) or an authority recognised by one (its scope stays what it was recognised for)
    declares itself: nothing unanchored enters the log or the store (issue 15, hole 5)."""
    authority_id = p["authority_id"]
    if event.body.author_credential_id != authority_id:
        return Rejection.of(Reason.SUBJECT_MISMATCH, "an authority declares itself")
    if not event.verify_by(authority_id, p["public_key"]):
        return Rejection.of(Reason.BAD_SIGNATURE, f"self-signature of {authority_id} fails")
    existing = store.principals.get(authority_id)
    if existing is not None and (existing.public_key != p["public_key"]
                                 or existing.kind != "authority"):
        return Rejection.of(Reason.DUPLICATE_IDENTIFIER,
                            f"{authority_id} exists as another {existing.kind} or key")
    roles = frozenset(p["roles"]) | frozenset({"AUTHORITY"})
    jurisdictions = _jurisdictions_of(p)
    if store.anchors.get(authority_id) != p["public_key"]:
        return _recognised_declaration(store, event, roles, jurisdictions)
    if existing is not None and _scope_excess(existing.roles, existing.jurisdictions,
                                              roles, jurisdictions) is not None:
        return Rejection.of(Reason.DUPLICATE_IDENTIFIER, f"trust anchor {authority_id} declared "
                            "a wider scope before (narrow it by revoking what it granted)")
    store.principals[authority_id] = Principal(
        principal_id=authority_id,
        kind="authority",
        public_key=p["public_key"],
        roles=roles,
        jurisdictions=jurisdictions,
        valid_from_ms=0,
        valid_until_ms=FOREVER_MS,
        parent_id="",
        subject_id=authority_id,
        recognised=True,
    )
    return None


def _recognised_declaration(store: TrustStore, event: SignedEvent, roles: frozenset[str],
                            jurisdictions: frozenset[str]) -> Rejection | None:
    """A non-anchor's declaration: admitted only if a recognition chaining to an anchor holds
    at its time, and only within that recognition's scope; it changes nothing in the store."""
    authority_id = event.body.author_credential_id
    chain = store.resolve(authority_id, event.body.occurred_at_ms)
    if isinstance(chain, Rejection) or chain.principal.kind != "authority":
        detail = chain.detail if isinstance(chain, Rejection) else "not an authority"
        return Rejection.of(Reason.UNRECOGNISED_AUTHORITY,
                            f"{authority_id} is neither a trust anchor nor recognised by one "
                            f"({detail})")
    excess = _scope_excess(roles, jurisdictions, chain.principal.roles,
                           chain.principal.jurisdictions)
    if excess is not None:
        return Rejection.of(Reason.RECOGNITION_EXCEEDS_AUTHORITY,
                            f"{authority_id} declares {excess} it was not recognised for")
    return None


# Roles only recognition confers (AUTHORITY) or that delegation adds by itself (ISSUER): never
# delegated to an issuer, never issued to a credential.
AUTHORITY_ONLY_ROLES = frozenset({"AUTHORITY", "ISSUER"})


def _jurisdictions_of(p: dict[str, Any]) -> frozenset[str]:
    """An authority's declared or recognised jurisdictions: ``jurisdiction`` plus the optional
    ``jurisdictions`` (empty in events written before the field existed)."""
    return frozenset({p["jurisdiction"], *p.get("jurisdictions", [])})


def _scope_excess(roles: frozenset[str], jurisdictions: frozenset[str],
                  held_roles: frozenset[str], held_jurisdictions: frozenset[str]) -> str | None:
    """What of ``roles``/``jurisdictions`` lies outside the held scope (None: nothing)."""
    extra_roles, extra_jurisdictions = roles - held_roles, jurisdictions - held_jurisdictions
    if not extra_roles and not extra_jurisdictions:
        return None
    return f"roles {sorted(extra_roles)} and jurisdictions {sorted(extra_jurisdictions)}"


def _recognise_authority(store: TrustStore, event: SignedEvent,
                         p: dict[str, Any]) -> Rejection | None:
    """An authority recognises another within its own roles and jurisdictions, once; a trust
    anchor is configured, never recognised."""
    verdict = store._check_author(event, p, p["recognised_by_authority_id"])
    if isinstance(verdict, Rejection):
        return verdict
    recogniser, authority_id = verdict.principal, p["authority_id"]
    if recogniser.kind != "authority":
        return Rejection.of(Reason.ROLE_NOT_PERMITTED, f"{recogniser.principal_id} is no authority")
    existing = store.principals.get(authority_id)
    if existing is not None or authority_id in store.anchors:
        return Rejection.of(Reason.DUPLICATE_IDENTIFIER,
                            f"{authority_id} is already a trust anchor or recognised")
    roles = frozenset(p["roles"]) | frozenset({"AUTHORITY"})
    jurisdictions = _jurisdictions_of(p)
    excess = _scope_excess(roles, jurisdictions, recogniser.roles, recogniser.jurisdictions)
    if excess is not None:
        return Rejection.of(Reason.RECOGNITION_EXCEEDS_AUTHORITY,
                            f"{recogniser.principal_id} may not recognise {excess}")
    store.principals[authority_id] = Principal(
        principal_id=authority_id,
        kind="authority",
        public_key=p["public_key"],
        roles=roles,
        jurisdictions=jurisdictions,
        valid_from_ms=p["valid_from_ms"],
        valid_until_ms=p["valid_until_ms"],
        parent_id=p["recognised_by_authority_id"],
        subject_id=authority_id,
        recognised=True,
    )
    return None


def _delegate_issuer(store: TrustStore, event: SignedEvent, p: dict[str, Any]) -> Rejection | None:
    """An authority delegates an issuer at most the roles it holds (never AUTHORITY) in at most
    the jurisdictions it holds."""
    verdict = store._check_author(event, p, p["authority_id"])
    if isinstance(verdict, Rejection):
        return verdict
    authority = verdict.principal
    if authority.kind != "authority":
        return Rejection.of(Reason.ROLE_NOT_PERMITTED, f"{authority.principal_id} is no authority")
    if p["issuer_id"] in store.principals or p["issuer_id"] in store.anchors:
        return Rejection.of(Reason.DUPLICATE_IDENTIFIER, f"{p['issuer_id']} already exists")
    roles, jurisdictions = frozenset(p["roles"]) - {"ISSUER"}, frozenset(p["jurisdictions"])
    excess = _scope_excess(roles, jurisdictions, authority.roles - AUTHORITY_ONLY_ROLES,
                           authority.jurisdictions)
    if excess is not None:
        return Rejection.of(Reason.DELEGATION_EXCEEDS_AUTHORITY,
                            f"{authority.principal_id} may not delegate {excess}")
    store.principals[p["issuer_id"]] = Principal(
        principal_id=p["issuer_id"],
        kind="issuer",
        public_key=p["public_key"],
        roles=roles | frozenset({"ISSUER"}),
        jurisdictions=jurisdictions,
        valid_from_ms=p["valid_from_ms"],
        valid_until_ms=p["valid_until_ms"],
        parent_id=p["authority_id"],
        subject_id=p["issuer_id"],
    )
    return None


def duties_problem(store: TrustStore, roles: frozenset[str], public_key: bytes) -> Rejection | None:
    """A PROCESSOR credential and a CHECKPOINT credential never share a credential or a key: a
    checkpoint must not be signed by the key whose decisions it covers."""
    if SEPARATED_ROLES <= roles:
        return Rejection.of(Reason.DUTIES_NOT_SEPARATED,
                            "one credential may not hold both PROCESSOR and CHECKPOINT")
    for duty in roles & SEPARATED_ROLES:
        other = next(iter(SEPARATED_ROLES - {duty}))
        if store.key_holds_role(public_key, other):
            return Rejection.of(Reason.DUTIES_NOT_SEPARATED,
                                f"this key already signs as a {other} credential; a {duty} "
                                "credential needs a key of its own")
    return None


def _issue_credential(store: TrustStore, event: SignedEvent, p: dict[str, Any]) -> Rejection | None:
    verdict = store._check_author(event, p, p["issuer_id"])
    if isinstance(verdict, Rejection):
        return verdict
    issuer = verdict.principal
    if p["credential_id"] in store.principals or p["credential_id"] in store.anchors:
        return Rejection.of(Reason.DUPLICATE_IDENTIFIER, f"{p['credential_id']} already exists")
    roles = frozenset(p["roles"])
    delegated = issuer.roles - AUTHORITY_ONLY_ROLES
    if not roles <= delegated:
        return Rejection.of(
            Reason.ISSUANCE_EXCEEDS_DELEGATION,
            f"roles {sorted(roles - delegated)} were not delegated to {issuer.principal_id}",
        )
    if p["jurisdiction"] not in issuer.jurisdictions:
        return Rejection.of(
            Reason.JURISDICTION_NOT_DELEGATED,
            f"{issuer.principal_id} may not issue in {p['jurisdiction']}",
        )
    separation = duties_problem(store, roles, p["public_key"])
    if separation is not None:
        return separation
    store.principals[p["credential_id"]] = Principal(
        principal_id=p["credential_id"],
        kind="credential",
        public_key=p["public_key"],
        roles=roles,
        jurisdictions=frozenset({p["jurisdiction"]}),
        valid_from_ms=p["valid_from_ms"],
        valid_until_ms=min(p["valid_until_ms"], issuer.valid_until_ms),
        parent_id=p["issuer_id"],
        subject_id=p["subject_id"],
        attributes=tuple((a["name"], a["value"]) for a in p["attributes"]),
    )
    return None


def _revoke(store: TrustStore, event: SignedEvent, p: dict[str, Any]) -> Rejection | None:
    target = store.principals.get(p["credential_id"])
    if target is None:
        return Rejection.of(Reason.UNKNOWN_CREDENTIAL, f"{p['credential_id']} is not known")
    author_id = event.body.author_credential_id
    if author_id != p["revoked_by_id"]:
        return Rejection.of(Reason.SUBJECT_MISMATCH, "revoked_by_id must be the author")
    # The holder itself, or anything above it in its chain, may revoke it.
    allowed = set(store.descendants(author_id))
    if p["credential_id"] not in allowed:
        return Rejection.of(
            Reason.ROLE_NOT_PERMITTED, f"{author_id} is not above {p['credential_id']}"
        )
    verdict = store.verify_signer(event, author_id, event.body.occurred_at_ms)
    if isinstance(verdict, Rejection):
        return verdict
    earlier = store.revocations.get(p["credential_id"])
    if earlier is None or p["effective_at_ms"] < earlier.effective_at_ms:
        store.revocations[p["credential_id"]] = Revocation(
            p["credential_id"], p["effective_at_ms"], p["reason_code"], event.event_id
        )
    return None


def _agree_reciprocity(store: TrustStore, event: SignedEvent,
                       p: dict[str, Any]) -> Rejection | None:
    verdict = store.check_event(event, p)
    if isinstance(verdict, Rejection):
        return verdict
    key = frozenset({p["authority_a_id"], p["authority_b_id"]})
    store.reciprocity.setdefault(key, []).append(
        (p["valid_from_ms"], p["valid_until_ms"], p["agreement_id"])
    )
    return None


def _file_tariff(store: TrustStore, event: SignedEvent, p: dict[str, Any]) -> Rejection | None:
    verdict = store.check_event(event, p)
    if isinstance(verdict, Rejection):
        return verdict
    if p["rate_authority_id"] not in verdict.chain:
        return Rejection.of(
            Reason.SUBJECT_MISMATCH,
            f"{event.body.author_credential_id} does not act for {p['rate_authority_id']}",
        )
    problem = currencies.filing_problem(p["currency"], int(p["currency_minor_units"]),
                                        p["rounding"])
    if problem is not None:
        return problem
    if p["effective_until_ms"] <= p["effective_from_ms"]:
        return Rejection.of(Reason.INVALID_TARIFF_VERSION, "effective_until_ms must be after "
                            "effective_from_ms")
    versions = store.tariff_versions.setdefault(p["tariff_id"], [])
    if versions:
        problem = _version_problem(versions[-1], p, event.body.occurred_at_ms)
        if problem is not None:
            return problem
        if len(versions) >= TARIFF_VERSIONS_MAX:
            return Rejection.of(Reason.INVALID_TARIFF_VERSION,
                                f"{TARIFF_VERSIONS_MAX} versions of {p['tariff_id']} filed")
    else:
        store.tariffs[p["tariff_id"]] = p  # the first filing: what calendars name and check
    versions.append(p)
    return None


def _version_problem(last: dict[str, Any], p: dict[str, Any], at_ms: int) -> Rejection | None:
    """A tariff id filed again is a new version: by the same authority, in the same currency and
    rounding, in force from after the latest version's start and not before it is filed (a
    settled session never changes price). It supersedes the previous versions from then on."""
    if (p["rate_authority_id"] != last["rate_authority_id"]
            or p["effective_from_ms"] <= last["effective_from_ms"]):
        return Rejection.of(Reason.DUPLICATE_IDENTIFIER, f"tariff {p['tariff_id']} already filed")
    if p["effective_from_ms"] < at_ms:
        return Rejection.of(Reason.INVALID_TARIFF_VERSION, f"a new version of {p['tariff_id']} "
                            f"cannot take effect ({p['effective_from_ms']}) before it is filed "
                            f"({at_ms})")
    for field in ("currency", "currency_minor_units", "rounding", "jurisdiction", "station_ids"):
        if p[field] != last[field]:
            return Rejection.of(Reason.INVALID_TARIFF_VERSION, f"a new version of "
                                f"{p['tariff_id']} changes its {field}: file a new tariff id")
    return None


def _publish_rules(store: TrustStore, event: SignedEvent, p: dict[str, Any]) -> Rejection | None:
    verdict = store.check_event(event, p)
    if isinstance(verdict, Rejection):
        return verdict
    if p["rules_version"] in store.rules:
        return Rejection.of(Reason.DUPLICATE_IDENTIFIER, f"rules {p['rules_version']} exist")
    store.rules[p["rules_version"]] = p
    return None


def _declare_grid_program(store: TrustStore, event: SignedEvent,
                          p: dict[str, Any]) -> Rejection | None:
    """Only a registered operator of the zone, or the authority that registered it, declares
    (or replaces) its program; the co-signers it names are registered operators."""
    verdict = store.check_event(event, p)
    if isinstance(verdict, Rejection):
        return verdict
    at_ms, zone = event.body.occurred_at_ms, p["grid_zone_id"]
    problem = store.zone_problem(event.body.author_credential_id, zone, at_ms, authority_too=True)
    if problem is not None:
        return problem
    for operator in p["grid_operator_credential_ids"]:
        if not store.operates_zone(operator, zone, at_ms):
            return Rejection.of(Reason.NOT_THE_ZONES_OPERATOR,
                                f"the program names {operator}, not an operator of {zone}")
    store.grid_programs[zone] = p
    return None


def _register_grid_zone(store: TrustStore, event: SignedEvent,
                        p: dict[str, Any]) -> Rejection | None:
    """A zone belongs to a jurisdiction: registered by an authority holding it, naming its
    GRID_OPERATOR credentials; a re-registration (same jurisdiction) replaces the operators."""
    verdict = store.check_event(event, p)
    if isinstance(verdict, Rejection):
        return verdict
    authority, zone, jurisdiction = verdict.principal, p["grid_zone_id"], p["jurisdiction"]
    if authority.kind != "authority" or jurisdiction not in authority.jurisdictions:
        return Rejection.of(Reason.ZONE_JURISDICTION_NOT_HELD,
                            f"{authority.principal_id} is not an authority of {jurisdiction}")
    current = store.zone_registration(zone)
    if current is not None and current["jurisdiction"] != jurisdiction:
        return Rejection.of(Reason.ZONE_REGISTERED_ELSEWHERE,
                            f"grid zone {zone} belongs to {current['jurisdiction']}")
    problem = _zone_operators_problem(store, p, event.body.occurred_at_ms)
    if problem is not None:
        return Rejection.of(Reason.INVALID_ZONE_REGISTRATION, problem)
    history = store.zone_registrations.setdefault(zone, [])
    history.append(p)
    del history[:-ZONE_REGISTRATIONS_KEPT_MAX]
    return None


def _zone_operators_problem(store: TrustStore, p: dict[str, Any], at_ms: int) -> str | None:
    operators = list(p["operator_credential_ids"])
    if not 0 < len(operators) <= ZONE_OPERATORS_MAX or len(set(operators)) != len(operators):
        return f"1 to {ZONE_OPERATORS_MAX} distinct operators, not {operators[:4]}"
    for operator in operators:
        chain = store.resolve(operator, at_ms)
        if isinstance(chain, Rejection) or "GRID_OPERATOR" not in chain.principal.roles:
            return f"{operator} is not a valid GRID_OPERATOR credential"
        if p["jurisdiction"] not in chain.principal.jurisdictions:
            return f"{operator} is not credentialed in {p['jurisdiction']}"
    return None


_Handler = Callable[[TrustStore, SignedEvent, dict[str, Any]], "Rejection | None"]
_HANDLERS: dict[str, _Handler] = {
    "chargemesh.governance.v1.AuthorityDeclared": _declare_authority,
    "chargemesh.governance.v1.AuthorityRecognised": _recognise_authority,
    "chargemesh.governance.v1.IssuerDelegated": _delegate_issuer,
    "chargemesh.governance.v1.CredentialIssued": _issue_credential,
    "chargemesh.governance.v1.CredentialRevoked": _revoke,
    "chargemesh.governance.v1.ReciprocityAgreed": _agree_reciprocity,
    "chargemesh.governance.v1.TariffFiled": _file_tariff,
    "chargemesh.governance.v1.AllocationRulesPublished": _publish_rules,
    "chargemesh.grid.v1.GridProgramDeclared": _declare_grid_program,
    "chargemesh.governance.v1.GridZoneRegistered": _register_grid_zone,
}
GOVERNANCE_EVENT_TYPES = frozenset(_HANDLERS)
