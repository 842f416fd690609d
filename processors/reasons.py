"""Reason codes: every input that is not admitted, every booking released or moved, every pass
refused and every audit finding carries exactly one of these.

Each member's value is its wire string (the ``reason_code`` of ``EventRejected``,
``OrderRejected``, ``SlotReleased``, ``SlotReallocated``, ``SegmentPassesApplied`` outcomes, the
``rejections`` table, audit findings). ``Reason`` is a ``StrEnum``: a member compares equal to,
hashes like, formats and serialises (JSON, Avro) as its string, so persisted state and payloads
keep their bytes. ``tests/unit/test_reason_codes.py`` pins every value.
"""

from __future__ import annotations

import dataclasses
import enum


class Reason(enum.StrEnum):
    # ---- wire and schema (ingress; raised as DecodeError codes by schemas/ and streams/) -------
    MALFORMED_ENVELOPE = "MALFORMED_ENVELOPE"
    MALFORMED_PAYLOAD = "MALFORMED_PAYLOAD"
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
    WRONG_SCHEMA = "WRONG_SCHEMA"
    OVERSIZED = "OVERSIZED"
    WRONG_TOPIC = "WRONG_TOPIC"
    KEY_MISMATCH = "KEY_MISMATCH"
    # ---- signatures and trust --------------------------------------------------------------------
    MISSING_SIGNATURE = "MISSING_SIGNATURE"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    UNKNOWN_CREDENTIAL = "UNKNOWN_CREDENTIAL"
    UNRECOGNISED_AUTHORITY = "UNRECOGNISED_AUTHORITY"
    CREDENTIAL_NOT_YET_VALID = "CREDENTIAL_NOT_YET_VALID"
    CREDENTIAL_EXPIRED = "CREDENTIAL_EXPIRED"
    CREDENTIAL_REVOKED = "CREDENTIAL_REVOKED"
    ROLE_NOT_PERMITTED = "ROLE_NOT_PERMITTED"
    SUBJECT_MISMATCH = "SUBJECT_MISMATCH"
    JURISDICTION_NOT_DELEGATED = "JURISDICTION_NOT_DELEGATED"
    ISSUANCE_EXCEEDS_DELEGATION = "ISSUANCE_EXCEEDS_DELEGATION"
    DUPLICATE_IDENTIFIER = "DUPLICATE_IDENTIFIER"
    # ---- delegation scope (issue 15, hole 1): nothing grants more than its grantor holds ------
    DELEGATION_EXCEEDS_AUTHORITY = "DELEGATION_EXCEEDS_AUTHORITY"
    RECOGNITION_EXCEEDS_AUTHORITY = "RECOGNITION_EXCEEDS_AUTHORITY"
    # ---- log time (issue 15, hole 3): an event is judged at the time of the log admitting it ---
    # Its claimed time lies more than a skew bound from the clock of the log it is ordered in.
    CLOCK_SKEW = "CLOCK_SKEW"
    # ---- replay, processor faults, the ledger's own limits ---------------------------------------
    REPLAYED_EVENT_ID = "REPLAYED_EVENT_ID"
    # A processor bug met this event: it is rejected (and logged) instead of stopping the stream
    INTERNAL_ERROR = "INTERNAL_ERROR"
    UNSUPPORTED_EVENT = "UNSUPPORTED_EVENT"
    LEDGER_FULL = "LEDGER_FULL"
    # ---- the sink (rows of the rejections table it writes itself) --------------------------------
    SINK_UNDECODABLE = "SINK_UNDECODABLE"
    SINK_PROJECTION_FAILED = "SINK_PROJECTION_FAILED"
    # ---- calendar and capacity (M4, M5) ----------------------------------------------------------
    NO_CALENDAR = "NO_CALENDAR"
    STALE_CALENDAR = "STALE_CALENDAR"
    INVALID_CALENDAR = "INVALID_CALENDAR"
    UNRECOGNISED_RATE_AUTHORITY = "UNRECOGNISED_RATE_AUTHORITY"
    UNKNOWN_TARIFF = "UNKNOWN_TARIFF"
    UNKNOWN_RULES = "UNKNOWN_RULES"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    ABOVE_FILED_CEILING = "ABOVE_FILED_CEILING"
    UNKNOWN_CONNECTOR = "UNKNOWN_CONNECTOR"
    INVALID_WINDOW = "INVALID_WINDOW"
    # A connector declares more power than its kind delivers (issue 16: ledger/power.py bounds).
    CONNECTOR_POWER_ABOVE_KIND = "CONNECTOR_POWER_ABOVE_KIND"
    # A grid operator's limit that cannot be applied (a negative capacity_limit_w).
    INVALID_GRID_EVENT = "INVALID_GRID_EVENT"
    # ---- orders ----------------------------------------------------------------------------------
    SLOT_OUTSIDE_CALENDAR = "SLOT_OUTSIDE_CALENDAR"
    SLOT_MISALIGNED = "SLOT_MISALIGNED"
    WINDOW_TOO_LONG = "WINDOW_TOO_LONG"
    SLOT_IN_PAST = "SLOT_IN_PAST"
    SLOT_TAKEN = "SLOT_TAKEN"
    CONNECTOR_UNAVAILABLE = "CONNECTOR_UNAVAILABLE"
    RATE_AUTHORITY_MISMATCH = "RATE_AUTHORITY_MISMATCH"
    STATION_REVOKED = "STATION_REVOKED"
    NO_RECIPROCITY = "NO_RECIPROCITY"
    INVALID_ENERGY = "INVALID_ENERGY"
    DUPLICATE_ORDER = "DUPLICATE_ORDER"
    PRICE_MISMATCH = "PRICE_MISMATCH"
    ABOVE_CEILING = "ABOVE_CEILING"
    BID_ABOVE_OWN_CEILING = "BID_ABOVE_OWN_CEILING"
    INVALID_RATE = "INVALID_RATE"
    BIDDING_CLOSED = "BIDDING_CLOSED"
    OUTBID = "OUTBID"
    INVALID_ARRIVAL = "INVALID_ARRIVAL"
    UNKNOWN_RESERVATION = "UNKNOWN_RESERVATION"
    NOT_YOUR_RESERVATION = "NOT_YOUR_RESERVATION"
    SESSION_IN_PROGRESS = "SESSION_IN_PROGRESS"
    # ---- why a booking was released or moved (SlotReleased, SlotReallocated) --------------------
    NO_SHOW = "NO_SHOW"
    CANCELLED_BY_VEHICLE = "CANCELLED_BY_VEHICLE"
    CONNECTOR_WITHDRAWN = "CONNECTOR_WITHDRAWN"
    CONNECTOR_DERATED = "CONNECTOR_DERATED"
    # DISPLACED_<cause>: a capacity change of that cause (CapacityChanged.cause, or the observer
    # quorum's GRID_CURTAILMENT) left the booking no room
    DISPLACED_FAULT = "DISPLACED_FAULT"
    DISPLACED_CURTAILMENT = "DISPLACED_CURTAILMENT"
    DISPLACED_MAINTENANCE = "DISPLACED_MAINTENANCE"
    DISPLACED_RESTORED = "DISPLACED_RESTORED"
    DISPLACED_UNKNOWN = "DISPLACED_UNKNOWN"
    DISPLACED_GRID_CURTAILMENT = "DISPLACED_GRID_CURTAILMENT"
    METER_REVOKED = "METER_REVOKED"
    STATION_RELOCATED = "STATION_RELOCATED"
    # ---- sessions (M6, C3, C4) -------------------------------------------------------------------
    UNKNOWN_SESSION = "UNKNOWN_SESSION"
    NOT_YOUR_SESSION = "NOT_YOUR_SESSION"
    WRONG_CONNECTOR = "WRONG_CONNECTOR"
    OUTSIDE_RESERVATION = "OUTSIDE_RESERVATION"
    DUPLICATE_SESSION = "DUPLICATE_SESSION"
    SESSION_CLOSED = "SESSION_CLOSED"
    SESSION_FULL = "SESSION_FULL"
    NOT_THE_CONNECTORS_METER = "NOT_THE_CONNECTORS_METER"
    READING_OUT_OF_ORDER = "READING_OUT_OF_ORDER"
    METER_WENT_BACKWARDS = "METER_WENT_BACKWARDS"
    READING_OUTSIDE_SESSION = "READING_OUTSIDE_SESSION"
    IMPLAUSIBLE_READING = "IMPLAUSIBLE_READING"
    NO_SUCH_REPRICE = "NO_SUCH_REPRICE"
    # The vehicle did not answer a RepriceProposed by the rules' reprice_response_ms: the ledger
    # stopped the session at the deadline (SessionStopped.reason_code; issue 16).
    REPRICE_UNANSWERED = "REPRICE_UNANSWERED"
    MISSING_READINGS = "MISSING_READINGS"
    NOT_THE_ZONES_OPERATOR = "NOT_THE_ZONES_OPERATOR"
    UNKNOWN_SETTLEMENT = "UNKNOWN_SETTLEMENT"
    NOT_CLOSED_OUT = "NOT_CLOSED_OUT"
    CLOSE_OUT_MISMATCH = "CLOSE_OUT_MISMATCH"
    ALREADY_SIGNED = "ALREADY_SIGNED"
    # A signature after the rate authority's finality window: the settlement expired (issue 16).
    SETTLEMENT_EXPIRED = "SETTLEMENT_EXPIRED"
    # ---- V2G (E3) --------------------------------------------------------------------------------
    INVALID_METER_START = "INVALID_METER_START"
    NOT_BIDIRECTIONAL = "NOT_BIDIRECTIONAL"
    NO_GRID_PROGRAM = "NO_GRID_PROGRAM"
    INVALID_CLEARING_PRICE = "INVALID_CLEARING_PRICE"
    # ---- identity binding (issue 15, hole 4) -----------------------------------------------------
    JURISDICTION_MISMATCH = "JURISDICTION_MISMATCH"
    UNKNOWN_CONNECTOR_HARDWARE = "UNKNOWN_CONNECTOR_HARDWARE"
    VEHICLE_ID_KIND_MISMATCH = "VEHICLE_ID_KIND_MISMATCH"
    # ---- grid zones (issue 15, hole 2): registered by their jurisdiction's authority -----------
    ZONE_NOT_REGISTERED = "ZONE_NOT_REGISTERED"
    ZONE_JURISDICTION_NOT_HELD = "ZONE_JURISDICTION_NOT_HELD"
    ZONE_REGISTERED_ELSEWHERE = "ZONE_REGISTERED_ELSEWHERE"
    INVALID_ZONE_REGISTRATION = "INVALID_ZONE_REGISTRATION"
    # ---- disputes (P2) ---------------------------------------------------------------------------
    INVALID_DISPUTE = "INVALID_DISPUTE"
    DUPLICATE_DISPUTE = "DUPLICATE_DISPUTE"
    UNKNOWN_DISPUTE = "UNKNOWN_DISPUTE"
    NOT_A_SESSION_PARTY = "NOT_A_SESSION_PARTY"
    INVALID_TIME = "INVALID_TIME"
    NO_SETTLEMENT = "NO_SETTLEMENT"
    SETTLEMENT_VOIDED = "SETTLEMENT_VOIDED"
    # Opened after the rate authority's dispute window (issue 16).
    DISPUTE_WINDOW_CLOSED = "DISPUTE_WINDOW_CLOSED"
    DISPUTE_ALREADY_OPEN = "DISPUTE_ALREADY_OPEN"
    DISPUTE_ALREADY_RESOLVED = "DISPUTE_ALREADY_RESOLVED"
    DISPUTE_CLOSED = "DISPUTE_CLOSED"
    TOO_MANY_DISPUTES = "TOO_MANY_DISPUTES"
    TOO_MUCH_EVIDENCE = "TOO_MUCH_EVIDENCE"
    STATEMENT_TOO_LONG = "STATEMENT_TOO_LONG"
    UNKNOWN_EVIDENCE = "UNKNOWN_EVIDENCE"
    NOT_THE_ARBITER = "NOT_THE_ARBITER"
    NOT_THE_PAYMENT_AGENT = "NOT_THE_PAYMENT_AGENT"  # issue 16: not the vehicle's named agent
    INVALID_OUTCOME = "INVALID_OUTCOME"
    INVALID_ADJUSTMENT = "INVALID_ADJUSTMENT"
    ADJUSTMENT_EXCEEDS_SETTLEMENT = "ADJUSTMENT_EXCEEDS_SETTLEMENT"
    ADJUSTMENT_TOO_LARGE = "ADJUSTMENT_TOO_LARGE"
    # ---- grid observers (P3) ---------------------------------------------------------------------
    NO_OBSERVER_SET = "NO_OBSERVER_SET"
    STALE_OBSERVER_SET = "STALE_OBSERVER_SET"
    INVALID_OBSERVER_SET = "INVALID_OBSERVER_SET"
    OBSERVERS_NOT_INDEPENDENT = "OBSERVERS_NOT_INDEPENDENT"
    NOT_IN_OBSERVER_SET = "NOT_IN_OBSERVER_SET"
    INVALID_DECISION = "INVALID_DECISION"
    INTERVAL_CLOSED = "INTERVAL_CLOSED"
    DIGEST_MISMATCH = "DIGEST_MISMATCH"
    OBSERVER_EQUIVOCATED = "OBSERVER_EQUIVOCATED"
    DUPLICATE_ATTESTATION = "DUPLICATE_ATTESTATION"
    INVALID_QUORUM = "INVALID_QUORUM"
    WRONG_GRID_ZONE = "WRONG_GRID_ZONE"
    DECISION_ALREADY_APPLIED = "DECISION_ALREADY_APPLIED"
    # ---- mobile charger (E5) ---------------------------------------------------------------------
    NOT_THE_STATIONS_CREDENTIAL = "NOT_THE_STATIONS_CREDENTIAL"
    STALE_LOCATION = "STALE_LOCATION"
    INVALID_LOCATION = "INVALID_LOCATION"
    NOT_THE_JURISDICTIONS_AUTHORITY = "NOT_THE_JURISDICTIONS_AUTHORITY"
    NO_TARIFF_IN_JURISDICTION = "NO_TARIFF_IN_JURISDICTION"
    JURISDICTION_NOT_PERMITTED = "JURISDICTION_NOT_PERMITTED"
    WRONG_DISPATCH = "WRONG_DISPATCH"
    # ---- battery swap (E2) -----------------------------------------------------------------------
    NOT_A_SWAP_STATION = "NOT_A_SWAP_STATION"
    NOT_A_SWAP_BOOKING = "NOT_A_SWAP_BOOKING"
    SWAP_BAY_MISMATCH = "SWAP_BAY_MISMATCH"
    SWAP_AT_POSTED_PRICE = "SWAP_AT_POSTED_PRICE"
    CONNECTOR_REQUIRED = "CONNECTOR_REQUIRED"
    INVALID_PACK = "INVALID_PACK"
    INVALID_SWAP_CLAIM = "INVALID_SWAP_CLAIM"
    UNKNOWN_PACK = "UNKNOWN_PACK"
    WRONG_PACK = "WRONG_PACK"
    PACK_ON_VEHICLE = "PACK_ON_VEHICLE"
    PACK_NOT_ON_VEHICLE = "PACK_NOT_ON_VEHICLE"
    PACK_NOT_HELD_BY_VEHICLE = "PACK_NOT_HELD_BY_VEHICLE"
    PACK_NOT_AVAILABLE = "PACK_NOT_AVAILABLE"
    PACK_CHEMISTRY_INCOMPATIBLE = "PACK_CHEMISTRY_INCOMPATIBLE"
    PACK_BELOW_MIN_SOH = "PACK_BELOW_MIN_SOH"
    NO_COMPATIBLE_PACK = "NO_COMPATIBLE_PACK"
    RETURNED_PACK_MISMATCH = "RETURNED_PACK_MISMATCH"
    IMPLAUSIBLE_CHARGE = "IMPLAUSIBLE_CHARGE"
    # ---- wireless dynamic charging (E1) ----------------------------------------------------------
    NOT_A_WIRELESS_SEGMENT = "NOT_A_WIRELESS_SEGMENT"
    SEGMENT_NOT_OF_OPERATOR = "SEGMENT_NOT_OF_OPERATOR"
    UNKNOWN_ROAD_OPERATOR = "UNKNOWN_ROAD_OPERATOR"
    WRONG_EMBODIMENT = "WRONG_EMBODIMENT"
    INVALID_TRIP = "INVALID_TRIP"
    DUPLICATE_TRIP = "DUPLICATE_TRIP"
    UNKNOWN_TRIP = "UNKNOWN_TRIP"
    NOT_YOUR_TRIP = "NOT_YOUR_TRIP"
    TRIP_ALREADY_OPEN = "TRIP_ALREADY_OPEN"
    TRIP_CLOSED = "TRIP_CLOSED"
    TRIP_FULL = "TRIP_FULL"
    INVALID_BATCH = "INVALID_BATCH"
    INVALID_PASS = "INVALID_PASS"
    DUPLICATE_PASS = "DUPLICATE_PASS"
    NOT_THE_TRIPS_VEHICLE = "NOT_THE_TRIPS_VEHICLE"
    OUTSIDE_GEOFENCE = "OUTSIDE_GEOFENCE"
    OUTSIDE_TRIP_WINDOW = "OUTSIDE_TRIP_WINDOW"
    OVERLAPPING_PASS = "OVERLAPPING_PASS"
    IMPLAUSIBLE_PASS = "IMPLAUSIBLE_PASS"
    IMPLAUSIBLE_METER_SECONDS = "IMPLAUSIBLE_METER_SECONDS"
    IMPLAUSIBLE_ENERGY = "IMPLAUSIBLE_ENERGY"
    OTHER_RATE_AUTHORITY = "OTHER_RATE_AUTHORITY"
    TARIFF_MISMATCH = "TARIFF_MISMATCH"
    ENERGY_LIMIT = "ENERGY_LIMIT"
    METER_SECONDS_LIMIT = "METER_SECONDS_LIMIT"
    # ---- audit findings (the regulator's replay) -------------------------------------------------
    ARCHIVE_MISMATCH = "ARCHIVE_MISMATCH"
    BROKEN_HASH_LINK = "BROKEN_HASH_LINK"
    GOVERNANCE_NOT_REPLAYED = "GOVERNANCE_NOT_REPLAYED"
    MISSING_EVIDENCE = "MISSING_EVIDENCE"
    IDENTITY_MISMATCH = "IDENTITY_MISMATCH"
    TARIFF_NOT_FILED = "TARIFF_NOT_FILED"
    TARIFF_OF_ANOTHER_AUTHORITY = "TARIFF_OF_ANOTHER_AUTHORITY"
    FINAL_WITHOUT_SIGNATURES = "FINAL_WITHOUT_SIGNATURES"
    EVIDENCE_NOT_VERIFIABLE = "EVIDENCE_NOT_VERIFIABLE"
    EVIDENCE_OF_ANOTHER_SESSION = "EVIDENCE_OF_ANOTHER_SESSION"
    EVIDENCE_INCONSISTENT = "EVIDENCE_INCONSISTENT"
    SETTLEMENT_MISMATCH = "SETTLEMENT_MISMATCH"
    RATE_ABOVE_FILED_CEILING = "RATE_ABOVE_FILED_CEILING"
    REPRICE_NOT_PROPOSED = "REPRICE_NOT_PROPOSED"
    CHECKPOINT_INCONSISTENT = "CHECKPOINT_INCONSISTENT"
    CHECKPOINT_BEYOND_LOG = "CHECKPOINT_BEYOND_LOG"
    CHECKPOINT_MISMATCH = "CHECKPOINT_MISMATCH"
    # ---- the audit of issue 16's billing records -------------------------------------------------
    # A SettlementExpired whose finality window is not the rules', whose close-out or expiry time
    # is not the session's, that expired before the window passed, or that names as missing a
    # signer whose signature the ledger had admitted (or a finalised settlement).
    EXPIRY_NOT_DUE = "EXPIRY_NOT_DUE"
    EXPIRED_SIGNER_NOT_MISSING = "EXPIRED_SIGNER_NOT_MISSING"
    # A SettlementReversed with no revocation of a credential the settlement rested on, or whose
    # lines are not the exact negation of what it voids.
    REVERSAL_WITHOUT_REVOCATION = "REVERSAL_WITHOUT_REVOCATION"
    REVERSAL_MISMATCH = "REVERSAL_MISMATCH"
    # A ledger stop over the price (SessionStopped with reason_code REPRICE_UNANSWERED or
    # ABOVE_CEILING) that was not due (an unanswered proposal's deadline had not passed, or it was
    # answered), or a settlement billing readings or a close-out after it.
    REPRICE_STOP_NOT_DUE = "REPRICE_STOP_NOT_DUE"
    BILLED_AFTER_STOP = "BILLED_AFTER_STOP"
    # ---- the deployment's own identity (issue 15, hole 7) ----------------------------------------
    # A PROCESSOR and a CHECKPOINT credential share a credential or a key (governance refusal), or
    # a checkpoint is signed by a processors' key (audit finding).
    DUTIES_NOT_SEPARATED = "DUTIES_NOT_SEPARATED"
    # ---- tariffs and claims (issue 16, M3 and C2) ------------------------------------------------
    # A filing's currency is no ISO 4217 code, its minor units are not the currency's, or it
    # declares no rounding rule.
    UNKNOWN_CURRENCY = "UNKNOWN_CURRENCY"
    MINOR_UNITS_MISMATCH = "MINOR_UNITS_MISMATCH"
    UNKNOWN_ROUNDING = "UNKNOWN_ROUNDING"
    # A re-filing of a tariff id that is no later version of it (retroactive, not after the
    # version in force, another currency or rounding), or a window no version is in force over.
    INVALID_TARIFF_VERSION = "INVALID_TARIFF_VERSION"
    TARIFF_NOT_IN_FORCE = "TARIFF_NOT_IN_FORCE"
    # The claim's adders are not the filed tariff's.
    ADDERS_MISMATCH = "ADDERS_MISMATCH"


def displaced(cause: str) -> Reason:
    """Why a capacity change of ``cause`` released a booking: ``DISPLACED_<cause>``."""
    return Reason(f"DISPLACED_{cause}")


@dataclasses.dataclass(frozen=True)
class Rejection:
    reason: Reason
    detail: str

    def __post_init__(self) -> None:
        # A code from below processors/ (a DecodeError's) becomes its member; an unknown one
        # raises here, where it is made, not where it is compared.
        if not isinstance(self.reason, Reason):
            object.__setattr__(self, "reason", Reason(self.reason))

    @classmethod
    def of(cls, reason: Reason, detail: str) -> Rejection:
        return cls(reason, detail)
