-- Charging sessions, meter evidence, re-prices and settlements for analysts. Written by
-- chargemesh.sinks.projections from the admitted, decisions and settlements topics.
-- Runs on the embedded ClickHouse 18.16 and on a current server: DateTime plus Int64 *_at_ms
-- columns instead of DateTime64, no LowCardinality, Decimal(18, 6) for money, no Nullable
-- (a LEFT JOIN fills missing right-hand columns with 0 / '' / []).
--
-- How a replay cannot double a row: every table is a ReplacingMergeTree keyed by an id taken
-- from the event (event_id, settlement_id, (settlement_id, line_no)), so a redelivered
-- message collapses into the row it already wrote. The views below never count raw rows:
-- they read with FINAL, or fold with aggregates (countIf(...) > 0, argMinIf) that give the
-- same answer whether a row is there once or twice.
--
-- No PARTITION BY: rows only collapse within one partition, and the times in these payloads
-- are chosen by participants and not bounded at ingress (a reading's read_at_ms, a station's
-- clock), so one batch spanning more than max_partitions_per_insert_block (100) months would
-- fail its insert and stall the sink.
--
-- Admitted is not accepted: ingress admits a participant's event once its signature and
-- credential check out, and the station's ledger may refuse it afterwards (a meter reading
-- that goes backwards, a second handshake for a session, a re-price accepted at the wrong
-- rate). The refusal is a record on the rejections topic carrying the same event_id. The
-- tables keep every admitted event (lineage); the *_valid / *_current views leave the refused
-- ones out. Events the processors sign themselves (decisions, settlements) are not refused.

-- Admitted events that the ledger refused afterwards: rejections that name an event id,
-- except those given before admission. Those reasons (the ingress, signature, trust and
-- replay codes of chargemesh.processors.reasons.Reason, all but INTERNAL_ERROR) concern
-- another copy of the event (a replay at another offset, a tampered copy, a copy on the wrong
-- partition), so they must not hide the admitted original. SINK_* rows are the sink's own
-- (the event's rows were not written). tests/test_settlement_projections.py pins this list
-- to Reason; a new pre-admission reason needs a new migration that re-creates this view.
-- SUBJECT_MISMATCH is also the ledger's reason for an order whose identity is not its author;
-- orders are not in these views, so such a refused order is simply not listed here.
-- An exact match would need the admitted copy's source topic/partition/offset (its Kafka
-- headers), which the events table does not keep yet.
CREATE VIEW IF NOT EXISTS refused_event_ids AS
SELECT
    event_id,
    event_type,
    reason_code,
    rejected_at_ms
FROM rejections
WHERE event_id != ''
    AND substring(reason_code, 1, 5) != 'SINK_'
    AND reason_code NOT IN (
        'MALFORMED_ENVELOPE', 'MALFORMED_PAYLOAD', 'UNKNOWN_SCHEMA', 'OVERSIZED',
        'WRONG_TOPIC', 'KEY_MISMATCH', 'MISSING_SIGNATURE', 'BAD_SIGNATURE',
        'UNKNOWN_CREDENTIAL', 'UNRECOGNISED_AUTHORITY', 'CREDENTIAL_NOT_YET_VALID',
        'CREDENTIAL_EXPIRED', 'CREDENTIAL_REVOKED', 'ROLE_NOT_PERMITTED', 'SUBJECT_MISMATCH',
        'JURISDICTION_NOT_DELEGATED', 'ISSUANCE_EXCEEDS_DELEGATION', 'DUPLICATE_IDENTIFIER',
        'REPLAYED_EVENT_ID');

-- One row per session lifecycle event: stage STARTED (ConnectorHandshakeCompleted), STOPPED
-- (SessionStopped, by a party or by the ledger's order) or CLOSED_OUT (MeterClosedOut). Each
-- row fills the columns its event carries and leaves the others empty / 0: a stop or a
-- close-out does not repeat the handshake's identity, and the sink never reads before it
-- writes. sessions_current folds them into one row per session.
-- version = occurred_at_ms * 1000 + stage rank (STARTED 0, STOPPED 1, CLOSED_OUT 2), as in
-- slot_ledger: the latest lifecycle step has the highest version.
CREATE TABLE IF NOT EXISTS session_lifecycle
(
    event_id String,
    station_id String,
    session_id String,
    stage String,
    reservation_id String,
    connector_id String,
    connector_hardware_id String,
    vehicle_id String,
    vehicle_id_kind String,
    vehicle_credential_id String,
    rate_authority_id String,
    jurisdiction String,
    started_at_ms Int64,
    started_at DateTime,
    meter_start_wh Int64,
    stopped_at_ms Int64,
    stop_reason String,
    closed_at_ms Int64,
    final_import_wh Int64,
    final_export_wh Int64,
    last_reading_seq Int64,
    author_credential_id String,
    occurred_at_ms Int64,
    version Int64
)
ENGINE = ReplacingMergeTree()
ORDER BY (station_id, session_id, stage, event_id);

-- One row per session (station_id, session_id: session ids are unique per station ledger),
-- from its lifecycle events that the ledger did not refuse. Only sessions whose handshake was
-- accepted appear. status: CLOSED_OUT if a close-out is in, else STOPPED if a stop is, else
-- ACTIVE (a session may be closed out without a separate stop: stopped_at_ms is 0 then).
-- The ledger accepts one event of each stage per session; should two be in (a refusal not yet
-- sunk), the earliest is shown (first_key: occurred_at_ms, then event_id, so all columns come
-- from one event, whatever order the rows arrived in). version: the highest lifecycle version.
-- Redelivered rows change nothing: every column is argMinIf / countIf / max over the rows.
CREATE VIEW IF NOT EXISTS sessions_current AS
SELECT
    station_id,
    session_id,
    argMinIf(reservation_id, first_key, stage = 'STARTED') AS reservation_id,
    argMinIf(connector_id, first_key, stage = 'STARTED') AS connector_id,
    argMinIf(connector_hardware_id, first_key, stage = 'STARTED') AS connector_hardware_id,
    argMinIf(vehicle_id, first_key, stage = 'STARTED') AS vehicle_id,
    argMinIf(vehicle_id_kind, first_key, stage = 'STARTED') AS vehicle_id_kind,
    argMinIf(vehicle_credential_id, first_key, stage = 'STARTED') AS vehicle_credential_id,
    argMinIf(rate_authority_id, first_key, stage = 'STARTED') AS rate_authority_id,
    argMinIf(jurisdiction, first_key, stage = 'STARTED') AS jurisdiction,
    argMinIf(started_at_ms, first_key, stage = 'STARTED') AS started_at_ms,
    argMinIf(started_at, first_key, stage = 'STARTED') AS started_at,
    argMinIf(meter_start_wh, first_key, stage = 'STARTED') AS meter_start_wh,
    argMinIf(stopped_at_ms, first_key, stage = 'STOPPED') AS stopped_at_ms,
    argMinIf(stop_reason, first_key, stage = 'STOPPED') AS stop_reason,
    argMinIf(closed_at_ms, first_key, stage = 'CLOSED_OUT') AS closed_at_ms,
    argMinIf(final_import_wh, first_key, stage = 'CLOSED_OUT') AS final_import_wh,
    argMinIf(final_export_wh, first_key, stage = 'CLOSED_OUT') AS final_export_wh,
    multiIf(countIf(stage = 'CLOSED_OUT') > 0, 'CLOSED_OUT',
            countIf(stage = 'STOPPED') > 0, 'STOPPED', 'ACTIVE') AS status,
    max(version) AS version
FROM
(
    SELECT *, (occurred_at_ms, event_id) AS first_key
    FROM session_lifecycle
    WHERE event_id NOT IN
    (
        SELECT event_id
        FROM refused_event_ids
        WHERE event_type IN ('chargemesh.session.v1.ConnectorHandshakeCompleted',
            'chargemesh.session.v1.SessionStopped', 'chargemesh.session.v1.MeterClosedOut')
    )
) AS accepted
GROUP BY station_id, session_id
HAVING countIf(stage = 'STARTED') > 0;

-- Every admitted meter reading, accepted by the ledger or not (see meter_readings_valid).
-- Keyed by event_id: a redelivered reading collapses; two different readings with the same
-- reading_seq both stay (the ledger refuses the second one, READING_OUT_OF_ORDER).
CREATE TABLE IF NOT EXISTS meter_readings
(
    event_id String,
    session_id String,
    station_id String,
    connector_id String,
    reading_seq Int64,
    cumulative_import_wh Int64,
    cumulative_export_wh Int64,
    read_at_ms Int64,
    read_at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (station_id, session_id, reading_seq, event_id);

-- The meter readings the ledger accepted: meter_readings without the refused ones
-- (METER_WENT_BACKWARDS, READING_OUT_OF_ORDER, IMPLAUSIBLE_READING, ...). A refusal reaches
-- the sink after its reading, so a reading may show here until its refusal is sunk.
CREATE VIEW IF NOT EXISTS meter_readings_valid AS
SELECT
    event_id,
    session_id,
    station_id,
    connector_id,
    reading_seq,
    cumulative_import_wh,
    cumulative_export_wh,
    read_at_ms,
    read_at
FROM meter_readings FINAL
WHERE event_id NOT IN
(
    SELECT event_id
    FROM refused_event_ids
    WHERE event_type = 'chargemesh.session.v1.MeterReadingRecorded'
);

-- Re-prices of running sessions: stage PROPOSED rows are the ledger's RepriceProposed
-- decisions (rate_per_kwh = the new rate, from effective_from_ms on), stage ACCEPTED rows the
-- vehicles' RepriceAccepted events (rate_per_kwh = the accepted rate; effective_from_ms and
-- power_limit_w 0). Keyed by event_id.
CREATE TABLE IF NOT EXISTS reprices
(
    event_id String,
    stage String,
    station_id String,
    session_id String,
    grid_event_id String,
    effective_from_ms Int64,
    rate_per_kwh Decimal(18, 6),
    power_limit_w Int64,
    author_credential_id String,
    occurred_at_ms Int64,
    occurred_at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (station_id, session_id, grid_event_id, stage, event_id);

-- One row per proposed re-price (station_id, session_id, grid_event_id): accepted = 1 once a
-- RepriceAccepted the ledger did not refuse is in (PRICE_MISMATCH, ABOVE_CEILING and
-- NO_SUCH_REPRICE are left out). A proposal that is never accepted stays accepted = 0 (the
-- ledger counts it refused when the session stops).
CREATE VIEW IF NOT EXISTS reprices_current AS
SELECT
    station_id,
    session_id,
    grid_event_id,
    argMinIf(effective_from_ms, first_key, stage = 'PROPOSED') AS effective_from_ms,
    argMinIf(rate_per_kwh, first_key, stage = 'PROPOSED') AS rate_per_kwh,
    argMinIf(power_limit_w, first_key, stage = 'PROPOSED') AS power_limit_w,
    minIf(occurred_at_ms, stage = 'PROPOSED') AS proposed_at_ms,
    toUInt8(countIf(stage = 'ACCEPTED') > 0) AS accepted,
    minIf(occurred_at_ms, stage = 'ACCEPTED') AS accepted_at_ms
FROM
(
    SELECT *, (occurred_at_ms, event_id) AS first_key
    FROM reprices
    WHERE event_id NOT IN
    (
        SELECT event_id
        FROM refused_event_ids
        WHERE event_type = 'chargemesh.session.v1.RepriceAccepted'
    )
) AS accepted
GROUP BY station_id, session_id, grid_event_id
HAVING countIf(stage = 'PROPOSED') > 0;

-- One row per admitted settlement (SettlementAdmitted, the ledger's decision). Keyed by
-- settlement_id alone: the Kafka record delivered twice writes the same row twice, and the
-- two collapse (read with FINAL for exact counts before a background merge). day is the UTC
-- day of admitted_at_ms, computed by the sink (toDate(admitted_at) would use the server's
-- time zone). An adjustment or credit is a settlement of its own, naming adjusts_settlement_id.
CREATE TABLE IF NOT EXISTS settlements
(
    settlement_id String,
    session_id String,
    station_id String,
    connector_id String,
    vehicle_id String,
    vehicle_credential_id String,
    rate_authority_id String,
    jurisdiction String,
    tariff_id String,
    currency String,
    rounding String,
    kind String,
    adjusts_settlement_id String,
    total_amount Decimal(18, 6),
    energy_import_wh Int64,
    energy_export_wh Int64,
    line_count UInt32,
    admitted_at_ms Int64,
    admitted_at DateTime,
    day Date,
    required_signers Array(String),
    evidence_event_ids Array(String),
    event_id String
)
ENGINE = ReplacingMergeTree()
ORDER BY settlement_id;

-- The line items of each settlement, line_no counting from 0 in the record's order; they sum
-- exactly to settlements.total_amount (the ledger rounds each line, the total is their sum).
-- currency, jurisdiction, station_id and day are copied from the settlement for grouping.
CREATE TABLE IF NOT EXISTS settlement_lines
(
    settlement_id String,
    line_no UInt32,
    kind String,
    description String,
    quantity_wh Int64,
    unit_rate_per_kwh Decimal(18, 6),
    amount Decimal(18, 6),
    from_at_ms Int64,
    until_at_ms Int64,
    currency String,
    jurisdiction String,
    station_id String,
    day Date
)
ENGINE = ReplacingMergeTree()
ORDER BY (settlement_id, line_no);

-- Finality (SettlementFinalised): every required signature is in. One row per settlement.
CREATE TABLE IF NOT EXISTS settlement_finality
(
    settlement_id String,
    session_id String,
    signer_ids Array(String),
    finalised_at_ms Int64,
    finalised_at DateTime,
    event_id String
)
ENGINE = ReplacingMergeTree()
ORDER BY settlement_id;

-- Each settlement with its status: FINAL once its SettlementFinalised is in, else PENDING.
-- pending_age_ms is how long it was pending: for FINAL, finalised_at_ms - admitted_at_ms; for
-- PENDING, the time since admission at query time (now()). finalised_at_ms is 0 and
-- signer_ids empty while PENDING.
CREATE VIEW IF NOT EXISTS settlements_status AS
SELECT
    settlement_id,
    session_id,
    station_id,
    jurisdiction,
    currency,
    kind,
    total_amount,
    admitted_at_ms,
    admitted_at,
    required_signers,
    if(is_final = 1, 'FINAL', 'PENDING') AS status,
    finalised_at_ms,
    signer_ids,
    if(is_final = 1, finalised_at_ms, toInt64(toUnixTimestamp(now())) * 1000)
        - admitted_at_ms AS pending_age_ms
FROM settlements FINAL
ANY LEFT JOIN
(
    SELECT settlement_id, toUInt8(1) AS is_final, finalised_at_ms, signer_ids
    FROM settlement_finality FINAL
) AS finality USING (settlement_id);

-- Energy and revenue per UTC day, jurisdiction, currency and station, from admitted
-- settlements (FINAL or PENDING; see settlements_status). A plain view over settlements FINAL,
-- not a SummingMergeTree materialized view: a materialized view sums every inserted block,
-- and the sink inserts a settlement again whenever its record is redelivered (at-least-once),
-- so the sums would count it twice; FINAL collapses the duplicates before summing.
-- total_amount sums every kind as issued (CHARGE, ADJUSTMENT, CREDIT with their own signs)
-- except INTERNAL_ACCOUNTING, which is no revenue; energy_import_wh counts CHARGE settlements
-- only, so an adjustment that restates a charge's energy does not add it twice.
CREATE VIEW IF NOT EXISTS revenue_daily AS
SELECT
    day,
    jurisdiction,
    currency,
    station_id,
    count() AS settlements,
    sumIf(charged_import_wh, kind = 'CHARGE') AS energy_import_wh,
    sum(amount) AS total_amount
FROM
(
    SELECT day, jurisdiction, currency, station_id, kind,
        energy_import_wh AS charged_import_wh, total_amount AS amount
    FROM settlements FINAL
    WHERE kind != 'INTERNAL_ACCOUNTING'
) AS admitted
GROUP BY day, jurisdiction, currency, station_id;
