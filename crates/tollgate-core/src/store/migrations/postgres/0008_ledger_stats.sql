-- The console's request statistics: whether a record failed, and its latency class (see
-- `ledger::LATENCY_BOUNDS_MS`; older records are backfilled from their JSON).
ALTER TABLE ledger ADD COLUMN failed SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE ledger ADD COLUMN latency_class SMALLINT;
UPDATE ledger SET
    failed = CASE WHEN (record::jsonb ->> 'outcome') IN ('error', 'stream_failed') THEN 1 ELSE 0 END,
    latency_class = CASE
        WHEN (record::jsonb ->> 'latency_ms') IS NULL THEN NULL
        ELSE width_bucket((record::jsonb ->> 'latency_ms')::double precision,
            ARRAY[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000]::double precision[])
        END;
CREATE INDEX ledger_model_time ON ledger (model, time_ms);
-- The console's audit search.
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_principal ON audit_log (principal, seq);

-- The hourly rollup reports over long ranges read (see `ledger::HOUR_MS`): per hour and
-- (key, user, team, model, provider), '' standing for a missing one. Appends update it in the
-- same transaction.
CREATE TABLE ledger_hourly (
    hour_ms BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    team_id TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    l0 BIGINT NOT NULL DEFAULT 0,
    l1 BIGINT NOT NULL DEFAULT 0,
    l2 BIGINT NOT NULL DEFAULT 0,
    l3 BIGINT NOT NULL DEFAULT 0,
    l4 BIGINT NOT NULL DEFAULT 0,
    l5 BIGINT NOT NULL DEFAULT 0,
    l6 BIGINT NOT NULL DEFAULT 0,
    l7 BIGINT NOT NULL DEFAULT 0,
    l8 BIGINT NOT NULL DEFAULT 0,
    l9 BIGINT NOT NULL DEFAULT 0,
    l10 BIGINT NOT NULL DEFAULT 0,
    l11 BIGINT NOT NULL DEFAULT 0,
    l12 BIGINT NOT NULL DEFAULT 0,
    l13 BIGINT NOT NULL DEFAULT 0,
    l14 BIGINT NOT NULL DEFAULT 0,
    l15 BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (hour_ms, key_id, user_id, team_id, model, provider)
);
INSERT INTO ledger_hourly (hour_ms, key_id, user_id, team_id, model, provider, requests, failed,
    prompt_tokens, completion_tokens, cost_usd, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15)
SELECT floor(time_ms / 3600000.0)::BIGINT * 3600000,
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
