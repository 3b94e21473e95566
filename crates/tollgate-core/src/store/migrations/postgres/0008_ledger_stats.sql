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
