-- Spend reports and budgets group and filter by these too; tokens are summed in reports.
ALTER TABLE ledger ADD COLUMN conversation_id TEXT;
ALTER TABLE ledger ADD COLUMN agent TEXT;
ALTER TABLE ledger ADD COLUMN prompt_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ledger ADD COLUMN completion_tokens INTEGER NOT NULL DEFAULT 0;
UPDATE ledger SET
    conversation_id = json_extract(record, '$.conversation_id'),
    agent = json_extract(record, '$.agent'),
    prompt_tokens = COALESCE(json_extract(record, '$.prompt_tokens'), 0),
    completion_tokens = COALESCE(json_extract(record, '$.completion_tokens'), 0);
CREATE INDEX ledger_user_time ON ledger (user_id, time_ms);
CREATE INDEX ledger_team_time ON ledger (team_id, time_ms);
CREATE INDEX ledger_conversation_time ON ledger (conversation_id, time_ms);
CREATE INDEX ledger_agent_time ON ledger (agent, time_ms);
