-- The tool layer: pinned tool definitions (and a drifted one awaiting approval) and the
-- approval queue for held tool calls.
CREATE TABLE mcp_tool_pins (
    server             TEXT NOT NULL,
    tool               TEXT NOT NULL,
    sha256             TEXT NOT NULL,
    definition         TEXT NOT NULL,
    pinned_ms          BIGINT NOT NULL,
    pending_sha256     TEXT,
    pending_definition TEXT,
    pending_ms         BIGINT,
    PRIMARY KEY (server, tool)
);
CREATE TABLE mcp_approvals (
    id             TEXT PRIMARY KEY,
    principal      TEXT NOT NULL,
    server         TEXT NOT NULL,
    tool           TEXT NOT NULL,
    args_sha256    TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    rule           TEXT NOT NULL,
    session        TEXT NOT NULL,
    arguments      TEXT NOT NULL,
    status         TEXT NOT NULL,
    created_ms     BIGINT NOT NULL,
    expires_ms     BIGINT NOT NULL,
    decided_ms     BIGINT,
    decided_by     TEXT,
    note           TEXT,
    used_ms        BIGINT
);
CREATE INDEX mcp_approvals_binding ON mcp_approvals (principal, server, tool, args_sha256, status);
CREATE INDEX mcp_approvals_created ON mcp_approvals (created_ms);
