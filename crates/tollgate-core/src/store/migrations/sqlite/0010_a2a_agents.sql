-- Agents registered through the admin API (config agents are not stored).
CREATE TABLE a2a_agents (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
