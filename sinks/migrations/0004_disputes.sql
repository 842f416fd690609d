-- Disputes (P2) for analysts: every accepted dispute change, the current state of each dispute
-- (open / resolved and how), and the correcting settlements they issued. Written by
-- chargemesh.sinks.projections_disputes from the disputes topic (DisputeRecorded, the station
-- ledger's signed record of each accepted change); corrections are ordinary settlements
-- (kind ADJUSTMENT or CREDIT, naming adjusts_settlement_id) in the settlements table of 0003.
-- Runs on ClickHouse 18.16 and on a current server (no DateTime64, no LowCardinality,
-- Decimal(18, 6) for money).
--
-- Only accepted changes are here: a dispute event the ledger refused (a party not in the
-- session, a resolution by someone who is not the arbiter, a second resolution) produces no
-- DisputeRecorded, only a row in rejections with its reason code and event_id.

-- One row per dispute change (OPENED, EVIDENCE_ADDED, RESOLVED). seq counts a dispute's
-- changes from 0 and is its version: a redelivered record has the same key and collapses.
CREATE TABLE IF NOT EXISTS disputes
(
    event_id String,
    dispute_id String,
    session_id String,
    station_id String,
    settlement_id String,
    kind String,
    change String,
    status String,
    seq Int64,
    opened_by_credential_id String,
    actor_credential_id String,
    cause_event_id String,
    rate_authority_id String,
    evidence_event_ids Array(String),
    statement String,
    outcome String,
    adjustment_settlement_id String,
    adjustment_total Decimal(18, 6),
    currency String,
    opened_at_ms Int64,
    opened_at DateTime,
    recorded_at_ms Int64,
    recorded_at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (station_id, session_id, dispute_id, seq);

-- One row per dispute, as its latest change left it: status OPEN or RESOLVED, the outcome
-- (empty while open), the correcting settlement if one was issued. Every column is an
-- aggregate over the dispute's rows (argMax by seq, min, max), so a row written twice changes
-- nothing. Query open ones with WHERE status = 'OPEN'.
CREATE VIEW IF NOT EXISTS disputes_current AS
SELECT
    station_id,
    session_id,
    dispute_id,
    argMax(settlement_id, seq) AS settlement_id,
    argMin(kind, seq) AS kind,
    argMax(status, seq) AS status,
    argMax(outcome, seq) AS outcome,
    argMin(opened_by_credential_id, seq) AS opened_by_credential_id,
    argMax(rate_authority_id, seq) AS rate_authority_id,
    length(argMax(evidence_event_ids, seq)) AS evidence_count,
    max(seq) + 1 AS changes,
    argMin(statement, seq) AS claim,
    min(opened_at_ms) AS opened_at_ms,
    min(opened_at) AS opened_at,
    maxIf(recorded_at_ms, change = 'RESOLVED') AS resolved_at_ms,
    argMaxIf(actor_credential_id, seq, change = 'RESOLVED') AS resolved_by_credential_id,
    argMaxIf(statement, seq, change = 'RESOLVED') AS reasoning,
    argMax(adjustment_settlement_id, seq) AS adjustment_settlement_id,
    argMax(adjustment_total, seq) AS adjustment_total,
    argMax(currency, seq) AS currency
FROM disputes
GROUP BY station_id, session_id, dispute_id;

-- Each correcting settlement (ADJUSTMENT or CREDIT) with the settlement it corrects and the
-- dispute whose resolution issued it (dispute_id is '' until that record is sunk).
CREATE VIEW IF NOT EXISTS settlement_adjustments AS
SELECT
    adjustment_settlement_id,
    adjusts_settlement_id,
    session_id,
    station_id,
    jurisdiction,
    kind,
    currency,
    total_amount,
    admitted_at_ms,
    day,
    decided_by,
    dispute_id,
    outcome
FROM
(
    SELECT settlement_id AS adjustment_settlement_id, adjusts_settlement_id, session_id,
        station_id, jurisdiction, kind, currency, total_amount, admitted_at_ms, day,
        required_signers AS decided_by
    FROM settlements FINAL
    WHERE adjusts_settlement_id != ''
) AS corrections
ANY LEFT JOIN
(
    SELECT adjustment_settlement_id, dispute_id, outcome
    FROM disputes FINAL
    WHERE change = 'RESOLVED' AND adjustment_settlement_id != ''
) AS resolutions USING (adjustment_settlement_id);

-- Each charged settlement with what its corrections add up to: net_amount = charged_amount +
-- adjusted_amount (a VOIDED dispute's credit note brings it to 0; voided = 1). The original
-- settlement row is never changed. Revenue: revenue_daily (0003) already sums every kind as
-- issued, so a correction counts on the day it was admitted, with its own sign.
CREATE VIEW IF NOT EXISTS settlements_net AS
SELECT
    settlement_id,
    session_id,
    station_id,
    jurisdiction,
    currency,
    charged_amount,
    adjusted_amount,
    charged_amount + adjusted_amount AS net_amount,
    corrections,
    voided
FROM
(
    SELECT settlement_id, session_id, station_id, jurisdiction, currency,
        total_amount AS charged_amount
    FROM settlements FINAL
    WHERE adjusts_settlement_id = ''
) AS charged
ANY LEFT JOIN
(
    SELECT adjusts_settlement_id AS settlement_id, sum(total_amount) AS adjusted_amount,
        count() AS corrections, toUInt8(countIf(kind = 'CREDIT') > 0) AS voided
    FROM settlements FINAL
    WHERE adjusts_settlement_id != ''
    GROUP BY adjusts_settlement_id
) AS adjustments USING (settlement_id);
