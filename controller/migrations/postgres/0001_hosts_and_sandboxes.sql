-- Intent: the hosts the controller schedules onto, and the sandboxes it promised.

CREATE TABLE hosts (
    name            TEXT PRIMARY KEY,
    address         TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'UNKNOWN'
                    CHECK (state IN ('UNKNOWN', 'ONLINE', 'OFFLINE')),
    cpus_total      BIGINT NOT NULL DEFAULT 0,
    memory_mb_total BIGINT NOT NULL DEFAULT 0,
    images          JSONB NOT NULL DEFAULT '[]'::jsonb,
    agent_version   TEXT,
    last_seen       TIMESTAMPTZ,
    missed_beats    BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE sandboxes (
    id           TEXT PRIMARY KEY,
    job_id       TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    sandbox_name TEXT NOT NULL,
    base_image   TEXT NOT NULL,
    network      TEXT NOT NULL DEFAULT '',
    ip_address   TEXT,
    state        TEXT NOT NULL
                 CHECK (state IN ('CREATED', 'STARTING', 'RUNNING', 'STOPPED', 'DESTROYED', 'ERROR')),
    ttl_seconds  BIGINT,
    host_name    TEXT REFERENCES hosts (name),
    cpu          BIGINT NOT NULL,
    memory_mb    BIGINT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    error        TEXT
);

-- A VM name is unique among sandboxes that may still exist on a host.
CREATE UNIQUE INDEX sandboxes_live_name ON sandboxes (sandbox_name) WHERE state <> 'DESTROYED';
CREATE INDEX sandboxes_host_state ON sandboxes (host_name, state);
CREATE INDEX sandboxes_created_at ON sandboxes (created_at);
