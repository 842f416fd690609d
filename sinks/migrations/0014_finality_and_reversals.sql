-- Issue 16, finality and the billing feed (M6, P4).
--
-- settlement_expiries: one row per SettlementExpired: a settlement whose required signatures
-- were not all in within the rate authority's finality window after its close-out (the missing
-- signers named). It never becomes final and is owed by nobody.
CREATE TABLE IF NOT EXISTS settlement_expiries
(
    settlement_id String,
    session_id String,
    station_id String,
    required_signers Array(String),
    signer_ids Array(String),
    missing_signer_ids Array(String),
    closed_at_ms Int64,
    finality_window_ms Int64,
    expired_at_ms Int64,
    expired_at DateTime,
    event_id String
)
ENGINE = ReplacingMergeTree()
ORDER BY settlement_id;

-- A SettlementReversed (a settlement judged INADMISSIBLE after a revocation) is a settlements
-- row of its own, kind REVERSAL, naming the one it voids in adjusts_settlement_id, with its
-- negated lines in settlement_lines and a finality row (final at once). The views follow it.
DROP TABLE IF EXISTS settlements_status;

-- Each settlement with its status: REVERSED once a REVERSAL names it, else FINAL once its
-- SettlementFinalised is in, else EXPIRED once its SettlementExpired is in, else PENDING.
-- pending_age_ms is how long it was pending: up to finality, up to expiry, or up to now() while
-- PENDING. reversed_by_settlement_id names the reversal; missing_signer_ids the signers an
-- expired settlement waited for.
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
    multiIf(reversed_by != '', 'REVERSED', is_final = 1, 'FINAL', is_expired = 1, 'EXPIRED',
        'PENDING') AS status,
    finalised_at_ms,
    signer_ids,
    multiIf(is_final = 1, finalised_at_ms, is_expired = 1, expired_at_ms,
        toInt64(toUnixTimestamp(now())) * 1000) - admitted_at_ms AS pending_age_ms,
    reversed_by AS reversed_by_settlement_id,
    expired_at_ms,
    missing_signer_ids
FROM
(
    SELECT *
    FROM
    (
        SELECT settlement_id, session_id, station_id, jurisdiction, currency, kind,
            total_amount, admitted_at_ms, admitted_at, required_signers, is_final,
            finalised_at_ms, signer_ids
        FROM settlements FINAL
        ANY LEFT JOIN
        (
            SELECT settlement_id, toUInt8(1) AS is_final, finalised_at_ms, signer_ids
            FROM settlement_finality FINAL
        ) AS finality USING (settlement_id)
    ) AS with_finality
    ANY LEFT JOIN
    (
        SELECT settlement_id, toUInt8(1) AS is_expired, expired_at_ms, missing_signer_ids
        FROM settlement_expiries FINAL
    ) AS expiries USING (settlement_id)
) AS with_expiry
ANY LEFT JOIN
(
    SELECT reversed_id AS settlement_id, reversed_by
    FROM
    (
        SELECT adjusts_settlement_id AS reversed_id, settlement_id AS reversed_by
        FROM settlements FINAL
        WHERE kind = 'REVERSAL'
    ) AS reversal_rows
) AS reversals USING (settlement_id);

DROP TABLE IF EXISTS revenue_daily;

-- Energy and revenue per UTC day, jurisdiction, currency and station (see 0003): every kind as
-- issued except INTERNAL_ACCOUNTING (a REVERSAL counts on its own day with its negative sign, so
-- a reversed settlement nets to 0), and no EXPIRED settlement (never final, owed by nobody).
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
        AND settlement_id NOT IN (SELECT settlement_id FROM settlement_expiries)
) AS admitted
GROUP BY day, jurisdiction, currency, station_id;

DROP TABLE IF EXISTS settlements_net;

-- Each charged settlement with what its corrections add up to (see 0004): a REVERSAL voids it
-- like a dispute's credit note (voided = 1, net 0); expired = 1 for an EXPIRED one.
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
    voided,
    toUInt8(settlement_id IN (SELECT settlement_id FROM settlement_expiries)) AS expired
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
        count() AS corrections, toUInt8(countIf(kind IN ('CREDIT', 'REVERSAL')) > 0) AS voided
    FROM settlements FINAL
    WHERE adjusts_settlement_id != ''
    GROUP BY adjusts_settlement_id
) AS adjustments USING (settlement_id);
