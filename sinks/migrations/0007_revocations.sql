-- P4: what each credential revocation did. One row per CredentialReevaluated decision: a
-- station ledger re-evaluated a reservation, session or settlement that rested on a revoked
-- credential (or on one that chained through it) and names the outcome:
--   RESERVATION: CANCELLED | REALLOCATED | UPHELD
--   SESSION:     STOPPED (a signed SessionStopped order follows in ledger_decisions/sessions)
--                | CLOSE_OUT_INADMISSIBLE (already stopped; no settlement can follow)
--   SETTLEMENT:  INADMISSIBLE (closed out at/after the effective time) | UPHELD (before it)
-- Deduplicated on the decision's event id (deterministic across redeliveries).
CREATE TABLE IF NOT EXISTS credential_reevaluations
(
    event_id String,
    revoked_credential_id String,
    subject_kind String,
    subject_id String,
    station_id String,
    outcome String,
    revoked_at_ms Int64,
    reevaluated_at_ms Int64,
    reevaluated_at DateTime,
    ingested_at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (revoked_credential_id, station_id, subject_kind, subject_id, event_id);
