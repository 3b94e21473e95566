-- The own spend and rate limits of keys, users and teams (JSON: budget_usd, budget_period,
-- rpm, tpm); NULL: none.
ALTER TABLE keys ADD COLUMN limits TEXT;
ALTER TABLE users ADD COLUMN limits TEXT;
ALTER TABLE teams ADD COLUMN limits TEXT;
