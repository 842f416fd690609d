"""A small credentialed world for tests: one root authority, issuers, stations, vehicles, meters."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from chargemesh.processors.decisions import Decision
from chargemesh.processors.governance import TrustAnchor, TrustStore
from chargemesh.processors.governance import GOVERNANCE_EVENT_TYPES
from chargemesh.processors.ingress import Admitted, Refused, admit, admit_governance
from chargemesh.infra.stack.bootstrap import DEPLOYMENT_ROLES, DeploymentIdentity, deployment_identity
from chargemesh.ports import ProcessorSettings
from chargemesh.streams.envelope import SignedEvent, open_payload
from chargemesh.streams.sdk import participant as sdk
from chargemesh.streams.sdk.participant import Participant, topic_for

T0_MS = 1_790_000_000_000  # 2026-09-21, an arbitrary fixed epoch for reproducible tests


@dataclasses.dataclass
class World:
    root: Participant
    issuer: Participant
    governance: list[SignedEvent]

    def anchors(self) -> list[TrustAnchor]:
        return [TrustAnchor(self.root.credential_id, self.root.public_key)]

    def store(self) -> TrustStore:
        store = TrustStore(self.anchors())
        for event in self.governance:
            verdict = admit_governance(event.encode(), event.body.subject_key.encode(), store)
            assert isinstance(verdict, Admitted), verdict
        return store

    def credential(self, credential_id: str, roles: list[str], jurisdiction: str = "US-CA",
                   subject_id: str | None = None, valid_from_ms: int = 0,
                   valid_until_ms: int = 2**62,
                   attributes: dict[str, str] | None = None) -> Participant:
        holder = Participant.seeded(credential_id, subject_id, secret="tests")
        self.governance.append(self.issuer.issue_credential(
            holder, roles, jurisdiction, valid_from_ms=valid_from_ms,
            valid_until_ms=valid_until_ms, attributes=attributes, at_ms=T0_MS))
        return holder

    def processor_credential(self, credential_id: str = "mesh:processor",
                             role: str = "PROCESSOR") -> Participant:
        """A seeded PROCESSOR (or CHECKPOINT) credential, issued by a deployment issuer the root
        delegates those roles only (the pure twin of :meth:`deploy_identity`)."""
        issuer = Participant.seeded("deployment-issuer", secret="tests")
        if not any(e.event_type.endswith("IssuerDelegated") and e.body.subject_key ==
                   self.root.credential_id and open_payload(e)["issuer_id"] ==
                   issuer.credential_id for e in self.governance):
            self.governance.append(self.root.delegate_issuer(
                issuer, list(DEPLOYMENT_ROLES), ["US-CA"], at_ms=T0_MS))
        holder = Participant.seeded(credential_id, secret="tests")
        self.governance.append(issuer.issue_credential(holder, [role], "US-CA", at_ms=T0_MS))
        return holder

    def deploy_identity(self, settings: ProcessorSettings) -> DeploymentIdentity:
        """The deployment's PROCESSOR and CHECKPOINT credentials under the root (their key
        files where ``settings`` say), appended to the governance to publish."""
        identity = deployment_identity(settings, self.root, "US-CA", T0_MS)  # type: ignore[arg-type]
        self.governance.extend(identity.events)
        return identity

    def grid_operator(self, credential_id: str, zone: str, subject_id: str | None = None,
                      jurisdiction: str = "US-CA") -> Participant:
        """A GRID_OPERATOR credential, and ``zone`` registered to it by the root authority."""
        operator = self.credential(credential_id, ["GRID_OPERATOR"], jurisdiction, subject_id)
        self.register_zone(zone, [operator.credential_id], jurisdiction)
        return operator

    def register_zone(self, zone: str, operator_ids: list[str],
                      jurisdiction: str = "US-CA") -> SignedEvent:
        """The root authority registers ``zone`` (in force from the start) to its operators."""
        registered = sdk.grid_zone_registered(self.root, grid_zone_id=zone,
                                              jurisdiction=jurisdiction, operator_ids=operator_ids,
                                              at_ms=T0_MS, effective_from_ms=0)
        self.governance.append(registered)
        return registered


def make_world(jurisdictions: tuple[str, ...] = ("US-CA", "DE-BY")) -> World:
    root = Participant.seeded("auth-root", secret="tests")
    issuer = Participant.seeded("issuer-1", secret="tests")
    delegated = ["STATION", "VEHICLE", "FLEET_AGENT", "METER", "GRID_OPERATOR", "OBSERVER",
                 "ARBITER", "MOBILE_STATION", "RATE_AUTHORITY", "PAYMENT_AGENT"]
    governance = [  # the root holds (declares) every role and jurisdiction it delegates
        root.declare_authority("Root charging authority", "US-CA",
                               ["AUTHORITY", *delegated, *DEPLOYMENT_ROLES],
                               "USD", at_ms=T0_MS, jurisdictions=list(jurisdictions)),
        root.delegate_issuer(issuer, delegated, list(jurisdictions), at_ms=T0_MS),
    ]
    return World(root, issuer, governance)


def verdict_of(store: TrustStore, event: SignedEvent | bytes, topic: str | None = None,
               key: str | None = None) -> Admitted | Refused:
    if isinstance(event, SignedEvent):
        raw, topic, key = event.encode(), topic or topic_for(event.event_type), (
            key if key is not None else event.body.subject_key)
    else:
        raw = event
    assert topic is not None
    if isinstance(event, SignedEvent) and event.event_type in GOVERNANCE_EVENT_TYPES:
        return admit_governance(raw, key.encode() if key is not None else None, store)
    return admit(raw, key.encode() if key is not None else None, topic, store)


def pairs(decisions: Iterable[Decision]) -> list[tuple[str, Mapping[str, Any]]]:
    """(short event type, payload) of each decision, in order: what stories assert on."""
    return [(d.name, d.payload) for d in decisions]
