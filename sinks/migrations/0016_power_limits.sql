-- Issue 16 (M5, M7, P3): the power limits the station ledgers hold active sessions to.
-- Written by chargemesh.sinks.projections.power_limits from the decisions topic: one row per
-- PowerLimitSet (a zone operator's CAPACITY_LIMIT or CURTAILMENT where no observer set governs
-- the zone, an observer quorum's curtailment step, or RESTORED lifting the operator's limit).
-- Readings above the limit in force are rows of `rejections` (IMPLAUSIBLE_READING).
-- Runs on ClickHouse 18.16 and current servers: DateTime plus Int64 *_ms, no LowCardinality.
-- Keyed by session and event id, so a redelivered message collapses into its row.

CREATE TABLE IF NOT EXISTS power_limits
(
    session_id String,
    station_id String,
    connector_id String,
    grid_zone_id String,
    grid_event_id String,
    kind String,
    power_limit_w Int64,
    effective_from_ms Int64,
    until_at_ms Int64,
    decided_at_ms Int64,
    event_id String,
    effective_from DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (station_id, session_id, event_id);
