-- The semantic cache's entries: the embedding of a request's last user turn, the answer, and
-- the partition (tenant, group, everything else in the request) it may answer within.
CREATE TABLE semantic_cache (
    id          TEXT PRIMARY KEY,
    partition   TEXT NOT NULL,
    route       TEXT NOT NULL,
    vector      BYTEA NOT NULL,
    entry       TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
CREATE INDEX semantic_cache_expires ON semantic_cache (expires_ms);
CREATE INDEX semantic_cache_created ON semantic_cache (created_ms);
