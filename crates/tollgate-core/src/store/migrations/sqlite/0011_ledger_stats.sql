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
