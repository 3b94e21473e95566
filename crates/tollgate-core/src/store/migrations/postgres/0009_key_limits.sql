-- A key's own spend and rate limits (JSON: budget_usd, budget_period, rpm, tpm); NULL: none.
ALTER TABLE keys ADD COLUMN limits TEXT;
