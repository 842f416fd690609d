-- ClickHouse 18.16 stores a view whose aliased sub-query shares its alias with one of the view's
-- column aliases badly: 0003's reprices_current named its sub-query `accepted`, and the server
-- wrote the view back as `FROM accepted` (the sub-query replaced by its alias), so after a server
-- restart the view no longer resolved (`Table chargemesh.accepted doesn't exist`). The same view,
-- with a sub-query alias that is no column's name. Rule (README, ClickHouse): in a view, a
-- sub-query alias never equals a column alias; tests/test_views_sql.py checks every view.
DROP TABLE IF EXISTS reprices_current;

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
) AS reprice_stages
GROUP BY station_id, session_id, grid_event_id
HAVING countIf(stage = 'PROPOSED') > 0;
