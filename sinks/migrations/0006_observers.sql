-- P3 Byzantine-robust grid observers. Written by chargemesh.sinks.projections_observers from
-- the admitted topic (ObserverSetDeclared, ObserverAttestation) and the decisions topic
-- (ObserverQuorumReached, ObserverEquivocation). Refused attestations (non-members, forged
-- signatures, equivocating second signatures...) are rows of `rejections` with their reason.
-- Runs on ClickHouse 18.16 and current servers: DateTime plus Int64 *_at_ms, no
-- LowCardinality, Decimal(18, 6). Every table is a ReplacingMergeTree keyed by the event id (or
-- zone and version), so a redelivered message collapses into its row: query with FINAL.

CREATE TABLE IF NOT EXISTS observer_sets
(
    grid_zone_id String,
    observer_set_version Int64,
    observer_credential_ids Array(String),
    threshold_k Int32,
    faults_tolerated_f Int32,
    interval_ms Int64,
    effective_from_ms Int64,
    declared_by_authority_id String,
    grid_operator_credential_id String,
    event_id String,
    declared_at_ms Int64,
    declared_at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (grid_zone_id, observer_set_version);

-- Admitted attestations (the router may still refuse one afterwards: see rejections by
-- event_id, e.g. OBSERVER_EQUIVOCATED, NOT_IN_OBSERVER_SET, DUPLICATE_ATTESTATION).
CREATE TABLE IF NOT EXISTS observer_attestations
(
    event_id String,
    grid_zone_id String,
    observer_credential_id String,
    observer_set_version Int64,
    interval_start_at_ms Int64,
    interval_end_at_ms Int64,
    decision_digest String,
    curtailment_order Array(String),
    rate_per_kwh Decimal(18, 6),
    attested_at_ms Int64,
    attested_at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (grid_zone_id, interval_start_at_ms, observer_credential_id, event_id);

CREATE TABLE IF NOT EXISTS grid_quorum_decisions
(
    event_id String,
    grid_zone_id String,
    interval_start_at_ms Int64,
    interval_end_at_ms Int64,
    observer_set_version Int64,
    threshold_k Int32,
    decision_digest String,
    grid_event_id String,
    zone_capacity_limit_w Int64,
    rate_per_kwh Decimal(18, 6),
    curtailment_order Array(String),
    signer_credential_ids Array(String),
    station_ids Array(String),
    decided_at_ms Int64,
    decided_at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (grid_zone_id, interval_start_at_ms, event_id);

CREATE TABLE IF NOT EXISTS observer_equivocations
(
    event_id String,
    grid_zone_id String,
    observer_credential_id String,
    observer_set_version Int64,
    interval_start_at_ms Int64,
    first_decision_digest String,
    second_decision_digest String,
    first_attestation_event_id String,
    second_attestation_event_id String,
    interval_decided UInt8,
    detected_at_ms Int64,
    detected_at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (grid_zone_id, interval_start_at_ms, observer_credential_id, event_id);
