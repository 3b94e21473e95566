-- Agents registered through the admin API (config agents are not stored).
CREATE TABLE a2a_agents (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
