-- Teams and users as first-class records, and role assignments to either. Keys refer to them
-- by id (keys.team_id, keys.user_id). A team belongs to at most one tenant.
CREATE TABLE teams (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    tenant     TEXT,
    metadata   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    email      TEXT,
    team_id    TEXT REFERENCES teams (id),
    metadata   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE role_assignments (
    subject_kind TEXT NOT NULL,  -- 'team' or 'user'
    subject_id   TEXT NOT NULL,
    role         TEXT NOT NULL,
    PRIMARY KEY (subject_kind, subject_id, role)
);
