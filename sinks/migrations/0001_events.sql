-- Runs on the embedded ClickHouse 18.16 and on a current server: DateTime plus an Int64
-- milliseconds column instead of DateTime64, no LowCardinality, no JSON type.
-- ReplacingMergeTree keyed by the event / rejection id: a replayed batch collapses into one row
-- (read with FINAL, or GROUP BY the id, for exact counts before a background merge).

-- Every admitted signed event; payload_json is the human-readable view of the Avro payload,
-- envelope_bytes the exact signed envelope as it was on the topic.
CREATE TABLE IF NOT EXISTS events
(
    event_id String,
    event_type String,
    topic String,
    kafka_partition Int32,
    kafka_offset Int64,
    subject_key String,
    author_credential_id String,
    occurred_at_ms Int64,
    occurred_at DateTime,
    schema_fingerprint String,
    prev_hash String,
    event_hash String,
    payload_json String,
    envelope_bytes String,
    ingested_at DateTime
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (event_type, event_id);

-- Every input that was not admitted, with its reason code and the original bytes.
CREATE TABLE IF NOT EXISTS rejections
(
    rejection_id String,
    source_topic String,
    source_partition Int32,
    source_offset Int64,
    reason_code String,
    detail String,
    event_id String,
    event_type String,
    author_credential_id String,
    rejected_at_ms Int64,
    rejected_at DateTime,
    raw_bytes String
)
ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(rejected_at)
ORDER BY (reason_code, rejection_id);
