"""Who may author which event: roles, subject binding, partition key and required co-signers.

This is data, not code paths: every event type a participant can publish has one entry, and the
ingress verifier applies it the same way for all of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from chargemesh.streams import topics


@dataclasses.dataclass(frozen=True)
class EventPolicy:
    topic: str
    author_roles: frozenset[str]
    # Payload field that must equal the envelope's subject_key (the partition key).
    key_path: str = ""
    # Payload field that must equal the author credential's subject_id ("" = not bound).
    author_subject_path: str = ""
    # Payload fields naming credentials that must also have signed the event.
    cosigner_paths: tuple[str, ...] = ()


STATION_ROLES = frozenset({"STATION", "MOBILE_STATION"})
VEHICLE_ROLES = frozenset({"VEHICLE", "FLEET_AGENT"})
PARTY_ROLES = STATION_ROLES | VEHICLE_ROLES
ARBITER_ROLES = frozenset({"ARBITER", "RATE_AUTHORITY"})
GOV = topics.GOVERNANCE.name
MKT = topics.MARKET.name
GRD = topics.GRID.name
DSP = topics.DISPUTES.name


def _p(topic: str, roles: frozenset[str], **kw: Any) -> EventPolicy:
    return EventPolicy(topic=topic, author_roles=roles, **kw)


POLICIES: dict[str, EventPolicy] = {
    # Governance: authors are authorities or issuers; the trust store checks the specifics.
    "chargemesh.governance.v1.AuthorityDeclared": _p(GOV, frozenset({"AUTHORITY"})),
    "chargemesh.governance.v1.AuthorityRecognised": _p(GOV, frozenset({"AUTHORITY"})),
    "chargemesh.governance.v1.IssuerDelegated": _p(GOV, frozenset({"AUTHORITY"})),
    "chargemesh.governance.v1.CredentialIssued": _p(GOV, frozenset({"ISSUER"})),
    "chargemesh.governance.v1.CredentialRevoked": _p(
        GOV, frozenset({"AUTHORITY", "ISSUER"}) | PARTY_ROLES | frozenset({"METER"})
    ),
    "chargemesh.governance.v1.ReciprocityAgreed": _p(
        GOV, frozenset({"AUTHORITY", "RATE_AUTHORITY"}),
        cosigner_paths=("authority_a_id", "authority_b_id"),
    ),
    "chargemesh.governance.v1.TariffFiled": _p(GOV, frozenset({"RATE_AUTHORITY"})),
    "chargemesh.governance.v1.AllocationRulesPublished": _p(
        GOV, frozenset({"RATE_AUTHORITY", "AUTHORITY"})
    ),
    # A zone belongs to a jurisdiction: registered by its authority, naming its operators
    # (governance.py checks the authority holds the jurisdiction).
    "chargemesh.governance.v1.GridZoneRegistered": _p(
        GOV, frozenset({"AUTHORITY"}), key_path="registered_by_authority_id",
        author_subject_path="registered_by_authority_id",
    ),
    # A registered operator of the zone, or the authority that registered it.
    "chargemesh.grid.v1.GridProgramDeclared": _p(GOV, frozenset({"GRID_OPERATOR", "AUTHORITY"})),
    # Capacity (station-authored, keyed by station)
    "chargemesh.capacity.v1.SlotCalendarPublished": _p(
        MKT, STATION_ROLES, key_path="station_id", author_subject_path="station_id"
    ),
    "chargemesh.capacity.v1.StationHeartbeat": _p(
        MKT, STATION_ROLES, key_path="station_id", author_subject_path="station_id"
    ),
    "chargemesh.capacity.v1.CapacityChanged": _p(
        MKT, STATION_ROLES, key_path="station_id", author_subject_path="station_id"
    ),
    # Orders (vehicle-authored, keyed by the station they target)
    "chargemesh.orders.v1.BidPlaced": _p(
        MKT, VEHICLE_ROLES, key_path="identity.station_id",
        author_subject_path="identity.vehicle_id",
    ),
    "chargemesh.orders.v1.PostedPriceAccepted": _p(
        MKT, VEHICLE_ROLES, key_path="identity.station_id",
        author_subject_path="identity.vehicle_id",
    ),
    "chargemesh.orders.v1.WalkUpRequested": _p(
        MKT, VEHICLE_ROLES, key_path="identity.station_id",
        author_subject_path="identity.vehicle_id",
    ),
    "chargemesh.orders.v1.ReservationCancelled": _p(MKT, VEHICLE_ROLES, key_path="station_id"),
    # Session evidence
    "chargemesh.session.v1.ConnectorHandshakeCompleted": _p(
        MKT, STATION_ROLES, key_path="identity.station_id",
        author_subject_path="identity.station_id",
        cosigner_paths=("identity.vehicle_credential_id",),
    ),
    "chargemesh.session.v1.MeterReadingRecorded": _p(
        MKT, frozenset({"METER"}), key_path="station_id"
    ),
    "chargemesh.session.v1.RepriceAccepted": _p(MKT, VEHICLE_ROLES, key_path="station_id"),
    "chargemesh.session.v1.SessionStopped": _p(MKT, PARTY_ROLES, key_path="station_id"),
    "chargemesh.session.v1.MeterClosedOut": _p(
        MKT, STATION_ROLES, key_path="station_id", author_subject_path="station_id"
    ),
    "chargemesh.session.v1.CloseOutCountersigned": _p(MKT, VEHICLE_ROLES, key_path="station_id"),
    # Grid
    "chargemesh.grid.v1.GridEventDeclared": _p(GRD, frozenset({"GRID_OPERATOR"}),
                                               key_path="grid_zone_id"),
    # The operator co-signs into the station's own ledger partition.
    "chargemesh.grid.v1.SettlementCoSigned": _p(MKT, frozenset({"GRID_OPERATOR"}),
                                                key_path="station_id"),
    # Processor records: routing a zone's grid events to its stations.
    "chargemesh.grid.v1.StationZoneJoined": _p(GRD, frozenset({"PROCESSOR"}),
                                               key_path="grid_zone_id"),
    "chargemesh.grid.v1.GridEventRouted": _p(MKT, frozenset({"PROCESSOR"}), key_path="station_id"),
    # P3 observers: the set is declared by an authority above the zone's operator, co-signed by
    # the operator; attestations are keyed by the decision's zone; quorums are routed per station.
    "chargemesh.grid.v1.ObserverSetDeclared": _p(
        GRD, frozenset({"AUTHORITY"}), key_path="grid_zone_id",
        author_subject_path="declared_by_authority_id",
        cosigner_paths=("grid_operator_credential_id",),
    ),
    "chargemesh.grid.v1.ObserverAttestation": _p(GRD, frozenset({"OBSERVER"}),
                                                 key_path="decision.grid_zone_id"),
    "chargemesh.grid.v1.ObserverDecisionRouted": _p(MKT, frozenset({"PROCESSOR"}),
                                                    key_path="station_id"),
    # P4: a revocation fanned out to every market partition.
    "chargemesh.ledger.v1.RevocationRouted": _p(MKT, frozenset({"PROCESSOR"}),
                                                key_path="routing_key"),
    # P5: signed Merkle checkpoints of the lineage logs, keyed by log_id (topic/partition), by a
    # CHECKPOINT credential: never the processors' key whose decisions they cover (hole 7).
    "chargemesh.audit.v1.LogCheckpoint": _p(topics.CHECKPOINTS.name, frozenset({"CHECKPOINT"}),
                                            key_path="log_id"),
    # E2 battery swap: the station's signed pack inventory, and the swap itself (pack out, pack
    # in), signed by the station and co-signed by the vehicle (processors/embodiments/swap.py).
    "chargemesh.capacity.v1.PackRegistered": _p(
        MKT, STATION_ROLES, key_path="station_id", author_subject_path="station_id"
    ),
    "chargemesh.session.v1.PackSwapCompleted": _p(
        MKT, STATION_ROLES, key_path="identity.station_id",
        author_subject_path="identity.station_id",
        cosigner_paths=("identity.vehicle_credential_id",),
    ),
    # E5 mobile charger: only an itinerant (MOBILE_STATION) credential moves (processors/embodiments/mobile.py).
    "chargemesh.capacity.v1.MobileStationRelocated": _p(
        MKT, frozenset({"MOBILE_STATION"}), key_path="station_id",
        author_subject_path="station_id",
    ),
    # Disputes (P2): decided by the station's ledger, which knows the session's parties and
    # settlement (processors/ledger/disputes.py checks who may act on which dispute).
    "chargemesh.dispute.v1.DisputeOpened": _p(MKT, PARTY_ROLES, key_path="station_id"),
    "chargemesh.dispute.v1.DisputeEvidenceSubmitted": _p(
        MKT, PARTY_ROLES | ARBITER_ROLES, key_path="station_id"
    ),
    "chargemesh.dispute.v1.DisputeResolved": _p(MKT, ARBITER_ROLES, key_path="station_id"),
    # Issue 16: a payment failure is reported by the vehicle's payment agent (a PAYMENT_AGENT
    # credential the vehicle credential names in its payment_agent attribute; disputes.py
    # checks the naming) and opens a PAYMENT_FAILURE dispute.
    "chargemesh.dispute.v1.PaymentFailed": _p(MKT, frozenset({"PAYMENT_AGENT"}),
                                              key_path="station_id"),
    # E1 wireless: keyed by the road operator, whose ledger aggregates trips (wireless.py); the
    # segment signs its own batch of passes, the vehicle its trip.
    "chargemesh.wireless.v1.TripAuthorised": _p(
        MKT, VEHICLE_ROLES, key_path="road_operator_id",
        author_subject_path="identity.vehicle_id",
    ),
    "chargemesh.wireless.v1.SegmentPassesRecorded": _p(
        MKT, STATION_ROLES, key_path="road_operator_id", author_subject_path="segment_id"
    ),
    "chargemesh.wireless.v1.TripClosed": _p(MKT, VEHICLE_ROLES, key_path="road_operator_id"),
}

PATH_DEPTH_MAX = 4


def field_at(payload: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a decoded payload, or None."""
    node: Any = payload
    for depth, part in enumerate(path.split(".")):
        if depth >= PATH_DEPTH_MAX or not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
