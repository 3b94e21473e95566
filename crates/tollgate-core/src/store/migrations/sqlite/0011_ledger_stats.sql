-- The console's request statistics: whether a record failed, and its latency class (see
-- `ledger::LATENCY_BOUNDS_MS`; older records are backfilled from their JSON).
ALTER TABLE ledger ADD COLUMN failed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ledger ADD COLUMN latency_class INTEGER;
UPDATE ledger SET
    failed = CASE WHEN json_extract(record, '$.outcome') IN ('error', 'stream_failed') THEN 1 ELSE 0 END,
    latency_class = CASE
        WHEN json_extract(record, '$.latency_ms') IS NULL THEN NULL
        WHEN json_extract(record, '$.latency_ms') < 1 THEN 0
        WHEN json_extract(record, '$.latency_ms') < 2 THEN 1
        WHEN json_extract(record, '$.latency_ms') < 5 THEN 2
        WHEN json_extract(record, '$.latency_ms') < 10 THEN 3
        WHEN json_extract(record, '$.latency_ms') < 20 THEN 4
        WHEN json_extract(record, '$.latency_ms') < 50 THEN 5
        WHEN json_extract(record, '$.latency_ms') < 100 THEN 6
        WHEN json_extract(record, '$.latency_ms') < 200 THEN 7
        WHEN json_extract(record, '$.latency_ms') < 500 THEN 8
        WHEN json_extract(record, '$.latency_ms') < 1000 THEN 9
        WHEN json_extract(record, '$.latency_ms') < 2000 THEN 10
        WHEN json_extract(record, '$.latency_ms') < 5000 THEN 11
        WHEN json_extract(record, '$.latency_ms') < 10000 THEN 12
        WHEN json_extract(record, '$.latency_ms') < 30000 THEN 13
        WHEN json_extract(record, '$.latency_ms') < 60000 THEN 14
        ELSE 15 END;
CREATE INDEX ledger_model_time ON ledger (model, time_ms);
-- The console's audit search.
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_principal ON audit_log (principal, seq);

-- The hourly rollup reports over long ranges read (see `ledger::HOUR_MS`): per hour and
-- (key, user, team, model, provider), '' standing for a missing one. Appends update it in the
-- same transaction.
CREATE TABLE ledger_hourly (
    hour_ms INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    team_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    l0 INTEGER NOT NULL DEFAULT 0,
    l1 INTEGER NOT NULL DEFAULT 0,
    l2 INTEGER NOT NULL DEFAULT 0,
    l3 INTEGER NOT NULL DEFAULT 0,
    l4 INTEGER NOT NULL DEFAULT 0,
    l5 INTEGER NOT NULL DEFAULT 0,
    l6 INTEGER NOT NULL DEFAULT 0,
    l7 INTEGER NOT NULL DEFAULT 0,
    l8 INTEGER NOT NULL DEFAULT 0,
    l9 INTEGER NOT NULL DEFAULT 0,
    l10 INTEGER NOT NULL DEFAULT 0,
    l11 INTEGER NOT NULL DEFAULT 0,
    l12 INTEGER NOT NULL DEFAULT 0,
    l13 INTEGER NOT NULL DEFAULT 0,
    l14 INTEGER NOT NULL DEFAULT 0,
    l15 INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour_ms, key_id, user_id, team_id, model, provider)
) WITHOUT ROWID;
INSERT INTO ledger_hourly (hour_ms, key_id, user_id, team_id, model, provider, requests, failed,
    prompt_tokens, completion_tokens, cost_usd, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15)
SELECT (time_ms / 3600000) * 3600000 - CASE WHEN time_ms < 0 AND time_ms % 3600000 != 0 THEN 3600000 ELSE 0 END,
       COALESCE(key_id, ''), COALESCE(user_id, ''), COALESCE(team_id, ''), model,
       COALESCE(provider, ''), COUNT(*), SUM(failed), SUM(prompt_tokens), SUM(completion_tokens),
       SUM(cost_usd),
       SUM(CASE WHEN latency_class = 0 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 1 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 2 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 3 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 4 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 5 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 6 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 7 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 8 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 9 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 10 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 11 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 12 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 13 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 14 THEN 1 ELSE 0 END),
       SUM(CASE WHEN latency_class = 15 THEN 1 ELSE 0 END)
FROM ledger GROUP BY 1, 2, 3, 4, 5, 6;
