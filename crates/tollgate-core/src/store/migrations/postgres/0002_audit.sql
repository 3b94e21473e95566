-- The audit chain: append-only, each record hashing its predecessor. The head (last seq and
-- hash) is also kept in tollgate_meta so that deleting records at the tail is detected.
CREATE TABLE audit_log (
    seq             BIGINT PRIMARY KEY,   -- 1, 2, 3, ... with no gaps
    time_ms         BIGINT NOT NULL,
    request_id      TEXT,
    trace_id        TEXT,
    conversation_id TEXT,
    principal       TEXT,
    action          TEXT NOT NULL,
    target          TEXT,
    decision        TEXT,
    rule            TEXT,
    outcome         TEXT NOT NULL,
    detail          TEXT NOT NULL,        -- JSON text, hashed exactly as stored
    prev_hash       TEXT NOT NULL,        -- hex SHA-256 of the previous record (zeros for the first)
    hash            TEXT NOT NULL         -- hex SHA-256 of this record's canonical encoding
);
CREATE INDEX audit_log_time ON audit_log (time_ms);
CREATE INDEX audit_log_conversation ON audit_log (conversation_id, seq);
