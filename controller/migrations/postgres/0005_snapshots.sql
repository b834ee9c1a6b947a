-- Snapshots (the controller's record of each qcow2 internal snapshot a sandbox's agent
-- holds) and the diffs computed between disk states (the review record). JSON is kept
-- as text (jsonb cannot hold the \u0000 a text file may contain).

CREATE TABLE snapshots (
    id          TEXT PRIMARY KEY,
    sandbox_id  TEXT NOT NULL REFERENCES sandboxes (id),
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('INTERNAL', 'EXTERNAL')),
    ref         TEXT NOT NULL,
    host_name   TEXT NOT NULL,
    memory      BOOLEAN NOT NULL DEFAULT FALSE,
    meta_json   TEXT NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (sandbox_id, name)
);

CREATE TABLE diffs (
    id               TEXT PRIMARY KEY,
    sandbox_id       TEXT NOT NULL REFERENCES sandboxes (id),
    from_snapshot    TEXT NOT NULL,
    to_snapshot      TEXT NOT NULL,
    diff_json        TEXT NOT NULL,
    text_diffs_json  TEXT NOT NULL DEFAULT '[]',
    detail_json      TEXT NOT NULL DEFAULT '{}',
    created_at       TIMESTAMPTZ NOT NULL
);

CREATE INDEX diffs_sandbox_created ON diffs (sandbox_id, created_at);
