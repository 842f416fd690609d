-- E3 V2G and E4 fleet depot for analysts. Written by chargemesh.sinks.projections_v2g_fleet
-- (fleet_accounting); the views read tables of 0003. Runs on ClickHouse 18.16 and current
-- servers: DateTime plus Int64 *_at_ms, Decimal(18, 6) money, no LowCardinality, tuples for
-- IN. Replays cannot double a row: fleet_accounting is a ReplacingMergeTree keyed by the
-- settlement id and every view reads with FINAL or folds with aggregates.

-- E4: one row per internal accounting entry (FleetAccountingRecorded): a fleet charged its own
-- vehicle at its own depot; the settlement (kind INTERNAL_ACCOUNTING, total 0) is in
-- settlements / settlement_lines with its full lineage. month is the UTC 'YYYY-MM' of
-- delivered_until_ms (the close-out), computed by the sink.
CREATE TABLE IF NOT EXISTS fleet_accounting
(
    settlement_id String,
    session_id String,
    fleet_id String,
    site_id String,
    station_id String,
    connector_id String,
    station_credential_id String,
    vehicle_credential_id String,
    rate_authority_id String,
    jurisdiction String,
    currency String,
    energy_import_wh Int64,
    energy_export_wh Int64,
    renewable_wh Int64,
    internal_amount Decimal(18, 6),
    delivered_from_ms Int64,
    delivered_until_ms Int64,
    delivered_at DateTime,
    month String,
    recorded_at_ms Int64,
    event_id String
)
ENGINE = ReplacingMergeTree()
ORDER BY (fleet_id, settlement_id);

-- E4 tax/ESG report: energy, renewable share and internal cost per fleet, depot site, month
-- and currency. final_sessions counts the entries whose settlement is final (all signatures
-- in); the others are still waiting for a signature but their energy was delivered.
-- renewable_share is renewable_wh / energy_import_wh (0 without import).
CREATE VIEW IF NOT EXISTS fleet_esg_monthly AS
SELECT
    fleet_id,
    site_id,
    month,
    currency,
    count() AS sessions,
    sum(is_final) AS final_sessions,
    sum(import_wh) AS energy_import_wh,
    sum(export_wh) AS energy_export_wh,
    sum(green_wh) AS renewable_wh,
    if(sum(import_wh) > 0, sum(green_wh) / sum(import_wh), 0) AS renewable_share,
    sum(amount) AS internal_amount
FROM
(
    SELECT settlement_id, fleet_id, site_id, month, currency, energy_import_wh AS import_wh,
        energy_export_wh AS export_wh, renewable_wh AS green_wh, internal_amount AS amount
    FROM fleet_accounting FINAL
) AS entries
ANY LEFT JOIN
(
    SELECT settlement_id, toUInt8(1) AS is_final
    FROM settlement_finality FINAL
) AS finality USING (settlement_id)
GROUP BY fleet_id, site_id, month, currency;

-- E3: each two-sided (V2G) settlement: what the vehicle was charged for import, what it was
-- paid for export at the grid operator's clearing price, and the net (negative: a payout).
CREATE VIEW IF NOT EXISTS v2g_settlements AS
SELECT
    settlement_id,
    session_id,
    station_id,
    vehicle_credential_id,
    jurisdiction,
    currency,
    kind,
    energy_import_wh,
    energy_export_wh,
    import_amount,
    export_credit,
    clearing_price_per_kwh,
    total_amount,
    admitted_at_ms
FROM settlements FINAL
ANY INNER JOIN
(
    SELECT
        settlement_id,
        sumIf(amount, kind != 'V2G_EXPORT_CREDIT' AND kind != 'ADJUSTMENT') AS import_amount,
        sumIf(amount, kind = 'V2G_EXPORT_CREDIT') AS export_credit,
        anyIf(unit_rate_per_kwh, kind = 'V2G_EXPORT_CREDIT') AS clearing_price_per_kwh
    FROM settlement_lines FINAL
    GROUP BY settlement_id
    HAVING countIf(kind = 'V2G_EXPORT_CREDIT') > 0
) AS v2g USING (settlement_id);

-- Sessions closed out with no settlement yet: a V2G session that exported energy waits for
-- the zone's grid operator to co-sign it with the clearing price (E3); it stays here, visible
-- and not final, until then. waiting_ms is the time since close-out at query time.
CREATE VIEW IF NOT EXISTS sessions_awaiting_settlement AS
SELECT
    station_id,
    session_id,
    vehicle_credential_id,
    jurisdiction,
    closed_at_ms,
    final_import_wh,
    final_export_wh,
    'AWAITING_CLEARING_PRICE' AS waiting_for,
    toInt64(toUnixTimestamp(now())) * 1000 - closed_at_ms AS waiting_ms
FROM sessions_current
WHERE status = 'CLOSED_OUT'
    AND (station_id, session_id) NOT IN
    (
        SELECT station_id, session_id
        FROM settlements FINAL
    );
