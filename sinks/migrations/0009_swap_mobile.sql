-- E2 battery swap and E5 mobile charger for analysts. Written by
-- chargemesh.sinks.projections_swap_mobile from the admitted topic (the settlements of both land
-- in settlements / settlement_lines like any other session's).
-- Runs on the embedded ClickHouse 18.16 and on a current server: DateTime plus Int64 *_at_ms
-- columns, no LowCardinality, Decimal(18, 6) for money, ReplacingMergeTree keyed by ids taken
-- from the event, so a redelivered message collapses into the row it wrote.
-- Admitted is not accepted (see 0003): the station's ledger may refuse a registration, a swap or
-- a relocation after ingress admitted it; the *_valid views leave those (refused_event_ids) out.

-- One row per step in a pack's life: REGISTERED (the station signed it into its inventory, with
-- chemistry, state of health and charge), SWAPPED_OUT (fitted to a vehicle in a swap) or
-- RETURNED (handed back by a vehicle in a swap). A swap gives two rows, one per pack.
CREATE TABLE IF NOT EXISTS pack_history
(
    pack_id String,
    event_id String,
    action String,
    station_id String,
    session_id String,
    reservation_id String,
    vehicle_credential_id String,
    vehicle_id String,
    chemistry String,
    state_of_health_permille Int32,
    capacity_wh Int64,
    charge_wh Int64,
    counterpart_pack_id String,
    author_credential_id String,
    at_ms Int64,
    at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (pack_id, at_ms, event_id, action);

CREATE VIEW IF NOT EXISTS pack_history_valid AS
SELECT *
FROM pack_history FINAL
WHERE event_id NOT IN (SELECT event_id FROM refused_event_ids);

-- One row per signed location update of a mobile charger (MOBILE_STATION credential).
CREATE TABLE IF NOT EXISTS mobile_station_locations
(
    event_id String,
    station_id String,
    dispatch_id String,
    latitude_microdeg Int64,
    longitude_microdeg Int64,
    jurisdiction String,
    rate_authority_id String,
    tariff_id String,
    posted_rate_per_kwh Decimal(18, 6),
    author_credential_id String,
    relocated_at_ms Int64,
    relocated_at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (station_id, relocated_at_ms, event_id);

CREATE VIEW IF NOT EXISTS mobile_station_locations_valid AS
SELECT *
FROM mobile_station_locations FINAL
WHERE event_id NOT IN (SELECT event_id FROM refused_event_ids);
