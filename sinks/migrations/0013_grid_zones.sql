-- Issue 15 (hole 2): which grid zones exist, whose they are, and which program is in force.
-- Written by chargemesh.sinks.projections.grid_zones from the admitted topic: one row per
-- admitted GridZoneRegistered (a jurisdiction's authority names the zone's operators) and per
-- admitted GridProgramDeclared (the zone's V2G / demand-response program). Refused ones are rows
-- of `rejections` with their reason (ZONE_NOT_REGISTERED, NOT_THE_ZONES_OPERATOR, ...).
-- Runs on ClickHouse 18.16 and current servers: DateTime plus Int64 *_ms, no LowCardinality.
-- Keyed by zone and event id, so a redelivered message collapses into its row.

CREATE TABLE IF NOT EXISTS grid_zones
(
    grid_zone_id String,
    change Enum8('REGISTERED' = 1, 'PROGRAM_DECLARED' = 2),
    jurisdiction String,
    registered_by_authority_id String,
    operator_credential_ids Array(String),
    program String,
    declared_by_credential_id String,
    effective_from_ms Int64,
    event_id String,
    occurred_at_ms Int64,
    occurred_at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (grid_zone_id, event_id);

-- One row per zone: its latest registration (jurisdiction, authority, operators) and latest
-- program. Aliases differ from the column names (18.16 substitutes an alias inside aggregates).
CREATE VIEW IF NOT EXISTS grid_zones_current AS
SELECT
    grid_zone_id,
    argMaxIf(jurisdiction, occurred_at_ms, change = 'REGISTERED') AS zone_jurisdiction,
    argMaxIf(registered_by_authority_id, occurred_at_ms, change = 'REGISTERED') AS registered_by,
    argMaxIf(operator_credential_ids, occurred_at_ms, change = 'REGISTERED') AS operators,
    argMaxIf(effective_from_ms, occurred_at_ms, change = 'REGISTERED') AS registered_from_ms,
    argMaxIf(program, occurred_at_ms, change = 'PROGRAM_DECLARED') AS program_in_force,
    argMaxIf(declared_by_credential_id, occurred_at_ms, change = 'PROGRAM_DECLARED')
        AS program_declared_by,
    argMaxIf(effective_from_ms, occurred_at_ms, change = 'PROGRAM_DECLARED') AS program_from_ms,
    uniqExactIf(event_id, change = 'REGISTERED') AS registrations
FROM grid_zones
GROUP BY grid_zone_id;
