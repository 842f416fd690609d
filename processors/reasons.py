"""Rejection reason codes: every input that is not admitted carries exactly one of these."""

from __future__ import annotations

import dataclasses
import enum


class Reason(str, enum.Enum):
    # Wire and schema
    MALFORMED_ENVELOPE = "MALFORMED_ENVELOPE"
    MALFORMED_PAYLOAD = "MALFORMED_PAYLOAD"
    UNKNOWN_SCHEMA = "UNKNOWN_SCHEMA"
    OVERSIZED = "OVERSIZED"
    WRONG_TOPIC = "WRONG_TOPIC"
    KEY_MISMATCH = "KEY_MISMATCH"
    # Signatures and trust
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
    # Replay
    REPLAYED_EVENT_ID = "REPLAYED_EVENT_ID"
    # A processor bug met this event: it is rejected (and logged) instead of stopping the stream
    INTERNAL_ERROR = "INTERNAL_ERROR"
    # Market (ledger, sessions, settlement) reasons are added by their processors.


@dataclasses.dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str

    @classmethod
    def of(cls, reason: Reason | str, detail: str) -> "Rejection":
        return cls(reason.value if isinstance(reason, Reason) else reason, detail)
