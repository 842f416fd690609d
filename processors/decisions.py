"""What the processors decide: one frozen record per decision, carrying its full event type, the
topic it is published on and its partition key. Pure.

Every decision type is routed once, in :data:`ROUTES`: the station ledger's decisions stay on
the decisions topic keyed by station (E1: by road operator), settlements and fleet accounting
go to the billing feed keyed by session, disputes to the disputes topic keyed by session; the
zone router's quorum and equivocation records are keyed by zone, and a quorum decision routed to
a station goes back to the market topic on that station's key.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from chargemesh.streams import topics


class DecisionType(enum.StrEnum):
    """The event type of every decision a processor publishes (a ``.avsc`` each)."""

    SLOT_RESERVED = "chargemesh.ledger.v1.SlotReserved"
    SLOT_RELEASED = "chargemesh.ledger.v1.SlotReleased"
    SLOT_REALLOCATED = "chargemesh.ledger.v1.SlotReallocated"
    ORDER_REJECTED = "chargemesh.ledger.v1.OrderRejected"
    CREDENTIAL_REEVALUATED = "chargemesh.ledger.v1.CredentialReevaluated"
    REPRICE_PROPOSED = "chargemesh.session.v1.RepriceProposed"
    SESSION_STOPPED = "chargemesh.session.v1.SessionStopped"
    POWER_LIMIT_SET = "chargemesh.session.v1.PowerLimitSet"
    SETTLEMENT_ADMITTED = "chargemesh.settlement.v1.SettlementAdmitted"
    SETTLEMENT_FINALISED = "chargemesh.settlement.v1.SettlementFinalised"
    SETTLEMENT_EXPIRED = "chargemesh.settlement.v1.SettlementExpired"
    SETTLEMENT_REVERSED = "chargemesh.settlement.v1.SettlementReversed"
    FLEET_ACCOUNTING_RECORDED = "chargemesh.settlement.v1.FleetAccountingRecorded"
    DISPUTE_RECORDED = "chargemesh.dispute.v1.DisputeRecorded"
    SEGMENT_PASSES_APPLIED = "chargemesh.wireless.v1.SegmentPassesApplied"
    TRIP_SETTLED = "chargemesh.wireless.v1.TripSettled"
    OBSERVER_QUORUM_REACHED = "chargemesh.grid.v1.ObserverQuorumReached"
    OBSERVER_EQUIVOCATION = "chargemesh.grid.v1.ObserverEquivocation"
    OBSERVER_DECISION_ROUTED = "chargemesh.grid.v1.ObserverDecisionRouted"


@dataclasses.dataclass(frozen=True)
class Route:
    """Where a decision type is published: its topic, and the payload field that keys it."""

    topic: str
    key_field: str


ROUTES: Mapping[DecisionType, Route] = MappingProxyType({
    DecisionType.SLOT_RESERVED: Route(topics.DECISIONS.name, "station_id"),
    DecisionType.SLOT_RELEASED: Route(topics.DECISIONS.name, "station_id"),
    DecisionType.SLOT_REALLOCATED: Route(topics.DECISIONS.name, "station_id"),
    DecisionType.ORDER_REJECTED: Route(topics.DECISIONS.name, "station_id"),
    DecisionType.CREDENTIAL_REEVALUATED: Route(topics.DECISIONS.name, "station_id"),
    DecisionType.REPRICE_PROPOSED: Route(topics.DECISIONS.name, "station_id"),
    DecisionType.SESSION_STOPPED: Route(topics.DECISIONS.name, "station_id"),
    DecisionType.POWER_LIMIT_SET: Route(topics.DECISIONS.name, "station_id"),
    DecisionType.SETTLEMENT_ADMITTED: Route(topics.SETTLEMENTS.name, "session_id"),
    DecisionType.SETTLEMENT_FINALISED: Route(topics.SETTLEMENTS.name, "session_id"),
    DecisionType.SETTLEMENT_EXPIRED: Route(topics.SETTLEMENTS.name, "session_id"),
    DecisionType.SETTLEMENT_REVERSED: Route(topics.SETTLEMENTS.name, "session_id"),
    DecisionType.FLEET_ACCOUNTING_RECORDED: Route(topics.SETTLEMENTS.name, "session_id"),
    DecisionType.DISPUTE_RECORDED: Route(topics.DISPUTES.name, "session_id"),
    # E1: one record per segment pass batch and one per trip, on the road operator's key.
    DecisionType.SEGMENT_PASSES_APPLIED: Route(topics.DECISIONS.name, "road_operator_id"),
    DecisionType.TRIP_SETTLED: Route(topics.DECISIONS.name, "road_operator_id"),
    # P3: the zone router's records by zone; a quorum routed to a station on the market topic.
    DecisionType.OBSERVER_QUORUM_REACHED: Route(topics.DECISIONS.name, "grid_zone_id"),
    DecisionType.OBSERVER_EQUIVOCATION: Route(topics.DECISIONS.name, "grid_zone_id"),
    DecisionType.OBSERVER_DECISION_ROUTED: Route(topics.MARKET.name, "station_id"),
})


@dataclasses.dataclass(frozen=True)
class Decision:
    """One decision: ``payload`` is exactly what is signed and published (``event_type`` on
    ``topic``, partition key ``key``); ``private`` is what folding it into the ledger's state
    needs beyond the payload (never published)."""

    event_type: DecisionType
    payload: Mapping[str, Any]
    topic: str
    key: str
    private: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # When it was decided, where that is not the ledger's clock (None: the clock at sealing).
    at_ms: int | None = None

    @property
    def name(self) -> str:
        """The event type's short name (``SlotReserved``)."""
        return self.event_type.rsplit(".", 1)[1]


def decided(event_type: DecisionType, payload: dict[str, Any],
            private: Mapping[str, Any] | None = None) -> Decision:
    """A decision of ``event_type``, routed by :data:`ROUTES`."""
    route = ROUTES[event_type]
    return Decision(event_type, payload, route.topic, str(payload[route.key_field]),
                    private if private is not None else {})
