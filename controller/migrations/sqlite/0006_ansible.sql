-- Ansible: playbooks and their tasks (intent the user edits), and jobs that run a
-- playbook against a sandbox or a production target (with their output, capped, and
-- the production-apply approval they waited for). Timestamps are RFC 3339 text.

CREATE TABLE playbooks (
    id                TEXT PRIMARY KEY NOT NULL,
    name              TEXT NOT NULL UNIQUE,
    hosts             TEXT NOT NULL,
    become            BOOLEAN NOT NULL DEFAULT TRUE,
    -- PlaybookSource of a generated playbook (JSON), else NULL.
    source_json       TEXT,
    -- The last Verification (JSON), else NULL.
    verification_json TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);

CREATE TABLE playbook_tasks (
    id           TEXT PRIMARY KEY NOT NULL,
    playbook_id  TEXT NOT NULL REFERENCES playbooks (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,
    name         TEXT NOT NULL,
    module       TEXT NOT NULL,
    params_json  TEXT NOT NULL DEFAULT '{}',
    options_json TEXT NOT NULL DEFAULT '{}',
    handler      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   TEXT NOT NULL
);

CREATE INDEX playbook_tasks_playbook ON playbook_tasks (playbook_id, position);

-- No foreign key on playbook: a job keeps its record (and the exact YAML it ran) after
-- the playbook is deleted.
CREATE TABLE ansible_jobs (
    id                TEXT PRIMARY KEY NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('run', 'verify')),
    playbook          TEXT NOT NULL,
    vm_name           TEXT NOT NULL,
    target_kind       TEXT NOT NULL CHECK (target_kind IN ('sandbox', 'production')),
    -- The sandbox a sandbox job runs against (a verify: the fresh sandbox), once known.
    sandbox_id        TEXT,
    check_mode        BOOLEAN NOT NULL DEFAULT FALSE,
    status            TEXT NOT NULL
                      CHECK (status IN ('pending', 'running', 'finished', 'failed')),
    phase             TEXT NOT NULL,
    approval_id       TEXT,
    -- The playbook as the job runs it, fixed when the job is created.
    playbook_yaml     TEXT NOT NULL,
    playbook_sha256   TEXT NOT NULL,
    check_output      TEXT,
    output            TEXT NOT NULL DEFAULT '',
    exit_code         INTEGER,
    error             TEXT,
    verification_json TEXT,
    created_by        TEXT NOT NULL,
    -- The agent id the creator's token is scoped to (scoped callers see only these).
    agent_id          TEXT,
    created_at        TEXT NOT NULL,
    started_at        TEXT,
    finished_at       TEXT
);

CREATE INDEX ansible_jobs_created_at ON ansible_jobs (created_at);
CREATE INDEX ansible_jobs_status ON ansible_jobs (status);
CREATE INDEX ansible_jobs_playbook ON ansible_jobs (playbook);
CREATE INDEX ansible_jobs_agent ON ansible_jobs (agent_id);
