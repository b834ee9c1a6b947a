-- What the human-in-the-loop needs: API tokens (the SHA-256 of each secret, never the
-- secret), approval requests, the append-only hash-chained audit trail, and a
-- sandbox's read-only flag. Timestamps are RFC 3339 text (chrono).

CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL
                  CHECK (role IN ('admin', 'operator', 'agent', 'readonly')),
    agent_id      TEXT,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL,
    revoked_at    TEXT
);

-- No foreign key on sandbox_id: a pending over-commit create's sandbox does not exist
-- yet.
CREATE TABLE approvals (
    id           TEXT PRIMARY KEY NOT NULL,
    kind         TEXT NOT NULL
                 CHECK (kind IN ('custom', 'overcommit', 'egress', 'production_apply')),
    requested_by TEXT NOT NULL,
    agent_id     TEXT,
    sandbox_id   TEXT,
    summary      TEXT NOT NULL,
    details      TEXT NOT NULL DEFAULT '{}',
    status       TEXT NOT NULL
                 CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
    decided_by   TEXT,
    comment      TEXT,
    created_at   TEXT NOT NULL,
    decided_at   TEXT,
    expires_at   TEXT NOT NULL
);

CREATE INDEX approvals_status_expires ON approvals (status, expires_at);
CREATE INDEX approvals_agent ON approvals (agent_id);
CREATE INDEX approvals_created_at ON approvals (created_at);

-- The store assigns seq (the last one's plus one, under the chain lock), never the
-- database. details is the compact JSON text exactly as hashed.
CREATE TABLE audit_events (
    seq        INTEGER PRIMARY KEY NOT NULL CHECK (seq > 0),
    at         TEXT NOT NULL,
    actor      TEXT NOT NULL,
    role       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    sandbox_id TEXT,
    outcome    TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);

CREATE INDEX audit_events_sandbox ON audit_events (sandbox_id);
CREATE INDEX audit_events_actor ON audit_events (actor);
CREATE INDEX audit_events_kind ON audit_events (kind);
CREATE INDEX audit_events_at ON audit_events (at);

-- Append-only: the database refuses edits; the hash chain shows any that get past.
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

ALTER TABLE sandboxes ADD COLUMN read_only BOOLEAN NOT NULL DEFAULT FALSE;
