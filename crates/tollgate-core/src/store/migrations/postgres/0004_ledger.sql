-- The spend ledger: one row per model request. The columns reports filter and group by are
-- real columns; the whole record is kept as JSON so new fields need no migration.
CREATE TABLE ledger (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time_ms           BIGINT NOT NULL,
    key_id            TEXT,
    user_id           TEXT,
    team_id           TEXT,
    model             TEXT NOT NULL,
    provider          TEXT,
    cost_usd          DOUBLE PRECISION NOT NULL,
    conversation_id   TEXT,
    agent             TEXT,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    record            TEXT NOT NULL
);
CREATE INDEX ledger_time ON ledger (time_ms);
CREATE INDEX ledger_key_time ON ledger (key_id, time_ms);
CREATE INDEX ledger_user_time ON ledger (user_id, time_ms);
CREATE INDEX ledger_team_time ON ledger (team_id, time_ms);
CREATE INDEX ledger_conversation_time ON ledger (conversation_id, time_ms);
CREATE INDEX ledger_agent_time ON ledger (agent, time_ms);
