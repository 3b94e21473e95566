-- The conversation list's rollup: per conversation, its first and last model call and its
-- totals, so listing the conversations active in a range reads one row per conversation, not
-- every ledger row of the range. Appends update it in the same transaction.
CREATE TABLE ledger_conversations (
    conversation_id TEXT PRIMARY KEY,
    first_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    requests BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0
);
INSERT INTO ledger_conversations (conversation_id, first_ms, last_ms, requests, failed,
    prompt_tokens, completion_tokens, cost_usd)
SELECT conversation_id, MIN(time_ms), MAX(time_ms), COUNT(*), SUM(failed), SUM(prompt_tokens),
       SUM(completion_tokens), SUM(cost_usd)
FROM ledger WHERE conversation_id IS NOT NULL GROUP BY conversation_id;
CREATE INDEX ledger_conversations_last ON ledger_conversations (last_ms);
