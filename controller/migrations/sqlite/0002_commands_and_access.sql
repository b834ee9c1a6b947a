-- Audit of commands and file operations run in sandboxes, SSH certificates issued to
-- people, and each host-agent's SSH key for exec.

ALTER TABLE hosts ADD COLUMN ssh_public_key TEXT;

CREATE TABLE commands (
    id          TEXT PRIMARY KEY NOT NULL,
    sandbox_id  TEXT NOT NULL REFERENCES sandboxes (id),
    agent_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    command     TEXT NOT NULL,
    user_name   TEXT NOT NULL,
    workdir     TEXT,
    env_json    TEXT NOT NULL,
    status      TEXT NOT NULL
                CHECK (status IN ('running', 'completed', 'failed', 'lost', 'interrupted', 'denied')),
    stdout      TEXT NOT NULL DEFAULT '',
    stderr      TEXT NOT NULL DEFAULT '',
    exit_code   INTEGER,
    timed_out   BOOLEAN NOT NULL DEFAULT FALSE,
    truncated   BOOLEAN NOT NULL DEFAULT FALSE,
    error       TEXT,
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    duration_ms INTEGER
);

CREATE INDEX commands_sandbox_started ON commands (sandbox_id, started_at);
CREATE INDEX commands_status ON commands (status);

CREATE TABLE access_certificates (
    id          TEXT PRIMARY KEY NOT NULL,
    sandbox_id  TEXT NOT NULL REFERENCES sandboxes (id),
    user_id     TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    principals  TEXT NOT NULL DEFAULT '[]',
    serial      INTEGER NOT NULL,
    valid_after TEXT NOT NULL,
    valid_until TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);

CREATE INDEX access_certificates_sandbox ON access_certificates (sandbox_id);
