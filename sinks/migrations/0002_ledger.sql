-- The slot ledger for analysts: every reservation's current state, the full decision history
-- and hourly utilisation. Written by chargemesh.sinks.projections from the decisions topic.
-- Runs on the embedded ClickHouse 18.16 and on a current server: DateTime plus Int64 *_at_ms
-- columns instead of DateTime64, no LowCardinality, Decimal(18, 6) for money.

-- Current state of each reservation: the row with the highest `version` per
-- (station_id, reservation_id) wins (read with FINAL, or argMax(..., version)).
-- version = decision occurred_at_ms * 1000 + lifecycle rank (RESERVED 0, REALLOCATED 1,
-- RELEASED 2). A decision's occurred_at_ms is its station's ledger clock, which never goes
-- back, so a later decision wins; the rank orders decisions of the same millisecond. The
-- version is derived from the event alone (never from Kafka offsets), so a replay or a
-- re-publication of old decisions cannot overwrite a newer state.
-- Rows hold what their decision carries: a RELEASED row has no order, vehicle, rate or
-- energy and a REALLOCATED row has no order, vehicle or rate (empty / 0). Those stay on the
-- reservation's SlotReserved row in ledger_decisions: join on (station_id, reservation_id).
-- No PARTITION BY: rows only collapse within one partition, and a reallocation moves the slot.
CREATE TABLE IF NOT EXISTS slot_ledger
(
    reservation_id String,
    station_id String,
    connector_id String,
    order_id String,
    vehicle_credential_id String,
    slot_start_at_ms Int64,
    slot_stop_at_ms Int64,
    slot_start DateTime,
    rate_per_kwh Decimal(18, 6),
    energy_wh Int64,
    walk_up UInt8,
    status String,
    reason_code String,
    rules_version String,
    decided_at_ms Int64,
    decided_by_event_id String,
    version Int64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (station_id, reservation_id);

-- One row per ledger decision event (SlotReserved, SlotReleased, SlotReallocated,
-- OrderRejected): the decision history. decision_type is the record name without namespace;
-- events.event_type (joined on event_id) has the versioned full name. For a reallocation,
-- connector_id and the slot columns are the new place, from_* the old one.
CREATE TABLE IF NOT EXISTS ledger_decisions
(
    event_id String,
    decision_type String,
    station_id String,
    reservation_id String,
    order_id String,
    connector_id String,
    vehicle_credential_id String,
    from_connector_id String,
    from_slot_start_at_ms Int64,
    slot_start_at_ms Int64,
    slot_stop_at_ms Int64,
    rate_per_kwh Decimal(18, 6),
    energy_wh Int64,
    reason_code String,
    detail String,
    rules_version String,
    occurred_at_ms Int64,
    occurred_at DateTime
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (station_id, occurred_at_ms, event_id);

-- Booked time per station, connector and UTC hour, from the current state of every live
-- (RESERVED or REALLOCATED) reservation. A slot is split over the hours it spans: reserved_ms
-- is the part of the slot inside that hour, energy_wh the reservation's energy pro rata
-- (integer Wh, rounded down per hour). Energy comes from the SlotReserved decision, because a
-- REALLOCATED row does not carry it. Slots longer than 7 days (604800000 ms) are left out: they
-- cannot come from the ledger, and the bound keeps the per-slot hour list small. The joined
-- subqueries carry aliases: a current server refuses a JOIN of unaliased subqueries.
CREATE VIEW IF NOT EXISTS slot_utilisation_hourly AS
SELECT
    station_id,
    connector_id,
    toDateTime(hour_index * 3600) AS hour_start,
    count() AS reservations,
    sum(least(slot_stop_at_ms, (hour_index + 1) * 3600000)
        - greatest(slot_start_at_ms, hour_index * 3600000)) AS reserved_ms,
    sum(intDiv(reserved_energy_wh
        * (least(slot_stop_at_ms, (hour_index + 1) * 3600000)
           - greatest(slot_start_at_ms, hour_index * 3600000)),
        slot_stop_at_ms - slot_start_at_ms)) AS energy_wh
FROM
(
    SELECT
        station_id,
        reservation_id,
        connector_id,
        slot_start_at_ms,
        slot_stop_at_ms,
        arrayJoin(arrayMap(i -> intDiv(slot_start_at_ms, 3600000) + i,
            range(toUInt64(intDiv(slot_stop_at_ms - 1, 3600000)
                - intDiv(slot_start_at_ms, 3600000) + 1)))) AS hour_index
    FROM slot_ledger FINAL
    WHERE status IN ('RESERVED', 'REALLOCATED')
        AND slot_stop_at_ms > slot_start_at_ms
        AND slot_stop_at_ms - slot_start_at_ms <= 604800000
) AS live_hours
ANY LEFT JOIN
(
    SELECT station_id, reservation_id, energy_wh AS reserved_energy_wh
    FROM ledger_decisions
    WHERE decision_type = 'SlotReserved'
) AS reserved USING (station_id, reservation_id)
GROUP BY station_id, connector_id, hour_index;
