"""Statuses and kinds of the domain, one ``StrEnum`` per concept.

Each member's value is the exact string the ledger persists in its state and publishes on the
wire (where a schema declares an Avro enum, the values are its symbols). A ``StrEnum`` member
compares equal to, hashes like, formats and serialises (JSON, Avro) as that string, so state
written before these enums existed loads and compares unchanged. ``tests/unit/test_reason_codes.py``
pins every value.
"""

from __future__ import annotations

import enum


class ReservationStatus(enum.StrEnum):
    """A booking on the slot ledger (``Reservation.status``)."""

    ACTIVE = "ACTIVE"
    ARRIVED = "ARRIVED"  # its vehicle completed the handshake: a session runs on it
    RELEASED = "RELEASED"
    COMPLETED = "COMPLETED"
    DISPLACED = "DISPLACED"  # only inside one displacement step, never persisted


class SessionStatus(enum.StrEnum):
    """A charging session (or a swap) on the station's ledger."""

    ACTIVE = "ACTIVE"
    STOPPED = "STOPPED"
    CLOSED_OUT = "CLOSED_OUT"
    FINAL = "FINAL"
    VOID = "VOID"
    INADMISSIBLE = "INADMISSIBLE"  # closed out at or after a party's revocation (P4)
    EXPIRED = "EXPIRED"  # not signed by every required signer within the finality window (M6)


class RepriceStatus(enum.StrEnum):
    """A mid-session re-price offered to the session's vehicle."""

    PROPOSED = "PROPOSED"
    ACCEPTED = "ACCEPTED"
    REFUSED = "REFUSED"


class AboveCeiling(enum.StrEnum):
    """``TariffFiled.above_ceiling``: what a grid price above the filed ceiling does (M3, M6)."""

    CAP = "CAP"  # proposed to sessions at the filed ceiling
    REFUSE = "REFUSE"  # the routed price signal is refused ABOVE_FILED_CEILING


class StopReason(enum.StrEnum):
    """``SessionStopped.reason`` (the schema's enum)."""

    COMPLETED = "COMPLETED"
    VEHICLE_REQUEST = "VEHICLE_REQUEST"
    REPRICE_REFUSED = "REPRICE_REFUSED"
    FAULT = "FAULT"
    REVOCATION = "REVOCATION"
    INTERRUPTED = "INTERRUPTED"
    UNKNOWN = "UNKNOWN"


class CapacityCause(enum.StrEnum):
    """Why a connector's capacity changed (``CapacityChanged.cause`` and the ledger's own)."""

    FAULT = "FAULT"
    CURTAILMENT = "CURTAILMENT"
    MAINTENANCE = "MAINTENANCE"
    RESTORED = "RESTORED"
    UNKNOWN = "UNKNOWN"
    GRID_CURTAILMENT = "GRID_CURTAILMENT"  # an observer quorum's decision (P3)
    METER_REVOKED = "METER_REVOKED"  # the connector's meter credential was revoked (P4)


class GridEventKind(enum.StrEnum):
    """``GridEventDeclared.kind``."""

    PRICE_SIGNAL = "PRICE_SIGNAL"
    CAPACITY_LIMIT = "CAPACITY_LIMIT"
    CURTAILMENT = "CURTAILMENT"
    RESTORED = "RESTORED"
    UNKNOWN = "UNKNOWN"


class ConnectorKind(enum.StrEnum):
    """``SlotCalendarPublished.connectors[].kind``."""

    AC_L1 = "AC_L1"
    AC_L2 = "AC_L2"
    DC_FAST = "DC_FAST"
    MCS = "MCS"
    WIRELESS_SEGMENT = "WIRELESS_SEGMENT"
    SWAP_BAY = "SWAP_BAY"
    MOBILE = "MOBILE"
    UNKNOWN = "UNKNOWN"


class BidResolution(enum.StrEnum):
    """``AllocationRulesPublished.bid_resolution``."""

    HIGHEST_RATE_THEN_EARLIEST = "HIGHEST_RATE_THEN_EARLIEST"
    EARLIEST = "EARLIEST"
    UNKNOWN = "UNKNOWN"


class Reallocation(enum.StrEnum):
    """``AllocationRulesPublished.reallocation``."""

    SAME_SLOT_OTHER_CONNECTOR_THEN_NEXT_SLOT = "SAME_SLOT_OTHER_CONNECTOR_THEN_NEXT_SLOT"
    SAME_SLOT_OTHER_CONNECTOR = "SAME_SLOT_OTHER_CONNECTOR"
    CANCEL = "CANCEL"
    UNKNOWN = "UNKNOWN"


class CurtailmentOrder(enum.StrEnum):
    """``AllocationRulesPublished.curtailment_order``."""

    CURTAILABLE_FIRST_LOWEST_PRIORITY_FIRST = "CURTAILABLE_FIRST_LOWEST_PRIORITY_FIRST"
    LATEST_BOOKED_FIRST = "LATEST_BOOKED_FIRST"
    UNKNOWN = "UNKNOWN"


class SettlementKind(enum.StrEnum):
    """``SettlementAdmitted.kind``."""

    CHARGE = "CHARGE"
    ADJUSTMENT = "ADJUSTMENT"
    CREDIT = "CREDIT"
    INTERNAL_ACCOUNTING = "INTERNAL_ACCOUNTING"


class LineKind(enum.StrEnum):
    """``SettlementAdmitted.lines[].kind``."""

    ENERGY = "ENERGY"
    ENERGY_REPRICED = "ENERGY_REPRICED"
    TAX = "TAX"
    CONGESTION_FEE = "CONGESTION_FEE"
    RENEWABLE_CONTENT = "RENEWABLE_CONTENT"
    V2G_EXPORT_CREDIT = "V2G_EXPORT_CREDIT"
    SWAP_FEE = "SWAP_FEE"
    ADJUSTMENT = "ADJUSTMENT"


class DisputeKind(enum.StrEnum):
    """``DisputeOpened.kind``."""

    INTERRUPTED_CHARGE = "INTERRUPTED_CHARGE"
    METER_DISPUTE = "METER_DISPUTE"
    PAYMENT_FAILURE = "PAYMENT_FAILURE"


class DisputeStatus(enum.StrEnum):
    OPEN = "OPEN"
    RESOLVED = "RESOLVED"


class DisputeOutcome(enum.StrEnum):
    """``DisputeResolved.outcome``."""

    UPHELD = "UPHELD"
    ADJUSTED = "ADJUSTED"
    VOIDED = "VOIDED"
    DISMISSED = "DISMISSED"


class DisputeChange(enum.StrEnum):
    """``DisputeRecorded.change``: what one dispute event did."""

    OPENED = "OPENED"
    EVIDENCE_ADDED = "EVIDENCE_ADDED"
    RESOLVED = "RESOLVED"


class ReevaluationSubject(enum.StrEnum):
    """``CredentialReevaluated.subject_kind``: what a revocation re-evaluated (P4)."""

    RESERVATION = "RESERVATION"
    SESSION = "SESSION"
    SETTLEMENT = "SETTLEMENT"


class ReevaluationOutcome(enum.StrEnum):
    """``CredentialReevaluated.outcome``."""

    CANCELLED = "CANCELLED"
    REALLOCATED = "REALLOCATED"
    UPHELD = "UPHELD"
    STOPPED = "STOPPED"
    CLOSE_OUT_INADMISSIBLE = "CLOSE_OUT_INADMISSIBLE"
    INADMISSIBLE = "INADMISSIBLE"


class TripStatus(enum.StrEnum):
    """A wireless trip on the road operator's ledger (E1)."""

    OPEN = "OPEN"
    CLOSED = "CLOSED"


class TripCloseReason(enum.StrEnum):
    """``TripSettled.close_reason``."""

    VEHICLE_CLOSED = "VEHICLE_CLOSED"
    IDLE_TIMEOUT = "IDLE_TIMEOUT"
    WINDOW_ENDED = "WINDOW_ENDED"


class PackStatus(enum.StrEnum):
    """A swap station's battery pack (E2)."""

    IN_STOCK = "IN_STOCK"
    ON_VEHICLE = "ON_VEHICLE"
    RETURNED = "RETURNED"  # back at the station, waiting to be recharged and registered again


class SettlementShape(enum.StrEnum):
    """How the regulator's replay recomputed (or counted) a settlement."""

    SESSION = "SESSION"
    V2G = "V2G"
    SWAP = "SWAP"
    WIRELESS_TRIP = "WIRELESS_TRIP"
    INTERNAL_ACCOUNTING = "INTERNAL_ACCOUNTING"
