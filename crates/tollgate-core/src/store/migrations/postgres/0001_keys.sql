-- Virtual keys. A key may have several secrets at once: the current one and, after a rotation,
-- old ones that keep working until their expires_at (the grace period).
CREATE TABLE tollgate_meta (
    k TEXT PRIMARY KEY,
    v TEXT NOT NULL
);

CREATE TABLE keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    user_id       TEXT,
    team_id       TEXT,
    models        TEXT NOT NULL,   -- JSON array of glob patterns; empty means every model
    expires_at    BIGINT,          -- unix seconds
    enabled       BOOLEAN NOT NULL,
    revoked_at    BIGINT,
    metadata      TEXT NOT NULL,   -- JSON object
    secret_prefix TEXT NOT NULL,   -- the first characters of the current secret, for display
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX keys_created ON keys (created_at, id);

CREATE TABLE key_secrets (
    hash       BYTEA PRIMARY KEY,  -- SHA-256 of the secret; the secret itself is never stored
    key_id     TEXT NOT NULL REFERENCES keys (id),
    expires_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX key_secrets_key ON key_secrets (key_id);
