-- What the human-in-the-loop needs: API tokens (the SHA-256 of each secret, never the
-- secret), approval requests, the append-only hash-chained audit trail, and a
-- sandbox's read-only flag.

CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    role          TEXT NOT NULL
                  CHECK (role IN ('admin', 'operator', 'agent', 'readonly')),
    agent_id      TEXT,
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL,
    revoked_at    TIMESTAMPTZ
);

-- No foreign key on sandbox_id: a pending over-commit create's sandbox does not exist
-- yet.
CREATE TABLE approvals (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL
                 CHECK (kind IN ('custom', 'overcommit', 'egress', 'production_apply')),
    requested_by TEXT NOT NULL,
    agent_id     TEXT,
    sandbox_id   TEXT,
    summary      TEXT NOT NULL,
    details      JSONB NOT NULL DEFAULT '{}'::jsonb,
    status       TEXT NOT NULL
                 CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
    decided_by   TEXT,
    comment      TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    decided_at   TIMESTAMPTZ,
    expires_at   TIMESTAMPTZ NOT NULL
);

CREATE INDEX approvals_status_expires ON approvals (status, expires_at);
CREATE INDEX approvals_agent ON approvals (agent_id);
CREATE INDEX approvals_created_at ON approvals (created_at);

-- The store assigns seq (the last one's plus one, under the chain lock), never the
-- database. details is the compact JSON text exactly as hashed: TEXT, not JSONB, which
-- would reorder and respace it.
CREATE TABLE audit_events (
    seq        BIGINT PRIMARY KEY CHECK (seq > 0),
    at         TIMESTAMPTZ NOT NULL,
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
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();

ALTER TABLE sandboxes ADD COLUMN read_only BOOLEAN NOT NULL DEFAULT FALSE;
