-- P5 lineage audit. Runs on ClickHouse 18.16 and on a current server.

-- Every signed Merkle checkpoint (RFC 9162 tree head) of a lineage log partition, as published
-- on chargemesh.checkpoints.v1. Deduplicated on the checkpoint's event id (deterministic: a
-- re-signed identical tree head has the same id).
CREATE TABLE IF NOT EXISTS log_checkpoints
(
    event_id String,
    log_id String,
    log_topic String,
    log_partition Int32,
    tree_size Int64,
    root_hash String,
    first_offset Int64,
    last_offset Int64,
    previous_tree_size Int64,
    previous_root_hash String,
    consistency_proof_hashes UInt16,
    checkpointed_at_ms Int64,
    checkpointed_at DateTime,
    author_credential_id String
)
ENGINE = ReplacingMergeTree()
ORDER BY (log_id, tree_size, event_id);

-- Findings of `chargemesh audit --record`: one row per finding per audit run.
CREATE TABLE IF NOT EXISTS audit_findings
(
    audit_id String,
    authority_id String,
    audited_at_ms Int64,
    audited_at DateTime,
    source String,
    code String,
    event_id String,
    event_type String,
    location String,
    session_id String,
    detail String
)
ENGINE = ReplacingMergeTree()
ORDER BY (authority_id, audit_id, code, event_id, location);
