-- The spend ledger: one row per model request. The columns reports filter and group by are
-- real columns; the whole record is kept as JSON so new fields need no migration.
CREATE TABLE ledger (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms   INTEGER NOT NULL,
    key_id    TEXT,
    user_id   TEXT,
    team_id   TEXT,
    model     TEXT NOT NULL,
    provider  TEXT,
    cost_usd  REAL NOT NULL,
    record    TEXT NOT NULL
);
CREATE INDEX ledger_time ON ledger (time_ms);
CREATE INDEX ledger_key_time ON ledger (key_id, time_ms);
