-- Simulator runs (chargemesh simulate) and the latencies it measured from the participants'
-- side (request published -> decision consumed), for the HTML report and analysts.
CREATE TABLE IF NOT EXISTS simulation_runs
(
    run_id String,
    seed Int64,
    started_at_ms Int64,
    finished_at_ms Int64,
    started_at DateTime,
    params_json String,
    summary_json String
)
ENGINE = ReplacingMergeTree()
ORDER BY run_id;

-- kind: 'walk_up_authorisation' | 'settlement_finality' | 'reprice' | 'order_decision' | ...
CREATE TABLE IF NOT EXISTS simulation_latencies
(
    run_id String,
    kind String,
    subject_id String,
    latency_ms Float64,
    measured_at_ms Int64,
    measured_at DateTime
)
ENGINE = ReplacingMergeTree()
ORDER BY (run_id, kind, subject_id);
