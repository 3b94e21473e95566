-- Teams and users as first-class records, and role assignments to either. Keys refer to them
-- by id (keys.team_id, keys.user_id).
CREATE TABLE teams (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    metadata   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    email      TEXT,
    team_id    TEXT REFERENCES teams (id),
    metadata   TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE role_assignments (
    subject_kind TEXT NOT NULL,  -- 'team' or 'user'
    subject_id   TEXT NOT NULL,
    role         TEXT NOT NULL,
    PRIMARY KEY (subject_kind, subject_id, role)
);
