-- E1 wireless dynamic charging for analysts: every segment pass (the micro-transaction) with the
-- road operator ledger's verdict, every settled trip, and energy / revenue per segment per hour.
-- Written by chargemesh.sinks.projections_wireless from the decisions topic
-- (SegmentPassesApplied: one per signed segment batch; TripSettled: one per trip). The trip's
-- billing record is an ordinary SettlementAdmitted in settlements / settlement_lines (0003),
-- keyed by the trip id as session_id and by the road operator as station_id.
-- Runs on ClickHouse 18.16 and on a current server (no DateTime64, no LowCardinality,
-- Decimal(18, 6) for money).

-- One row per pass of a batch, accepted or refused (reason_code, detail). A pass id refused as
-- DUPLICATE_PASS shows up once more, in the batch that repeated it: the key is the batch's event
-- id and the pass's index in it, so a redelivered record collapses and a repeated pass does not.
-- amount is energy x the segment's filed rate, before the trip's once-per-line rounding and tax.
CREATE TABLE IF NOT EXISTS wireless_passes
(
    batch_event_id String,
    pass_index UInt32,
    pass_id String,
    trip_id String,
    road_operator_id String,
    segment_id String,
    segment_credential_id String,
    vehicle_credential_id String,
    geofence_id String,
    entered_at_ms Int64,
    entered_at DateTime,
    left_at_ms Int64,
    meter_seconds Int64,
    energy_wh Int64,
    rate_per_kwh Decimal(18, 6),
    amount Decimal(18, 6),
    currency String,
    tariff_id String,
    accepted UInt8,
    reason_code String,
    detail String,
    applied_at_ms Int64
)
ENGINE = ReplacingMergeTree()
ORDER BY (road_operator_id, segment_id, batch_event_id, pass_index);

-- One row per settled trip (the vehicle closed it, or it idled out / its window ended as its
-- signed authorisation agreed); total_amount equals its settlement's total.
CREATE TABLE IF NOT EXISTS wireless_trips
(
    trip_id String,
    road_operator_id String,
    vehicle_credential_id String,
    settlement_id String,
    rate_authority_id String,
    jurisdiction String,
    tariff_id String,
    currency String,
    opened_at_ms Int64,
    closed_at_ms Int64,
    closed_at DateTime,
    close_reason String,
    passes_accepted Int64,
    passes_refused Int64,
    segments Int64,
    meter_seconds Int64,
    energy_wh Int64,
    total_amount Decimal(18, 6),
    event_id String
)
ENGINE = ReplacingMergeTree()
ORDER BY (road_operator_id, trip_id);

-- Energy, meter-seconds and revenue (before tax, unrounded) per segment and hour of entry,
-- from accepted passes only.
CREATE VIEW IF NOT EXISTS wireless_segment_hourly AS
SELECT
    road_operator_id,
    segment_id,
    toStartOfHour(entered_at) AS hour,
    currency,
    count() AS passes,
    sum(meter_seconds) AS meter_seconds,
    sum(energy_wh) AS energy_wh,
    sum(amount) AS revenue
FROM wireless_passes FINAL
WHERE accepted = 1
GROUP BY road_operator_id, segment_id, hour, currency;
