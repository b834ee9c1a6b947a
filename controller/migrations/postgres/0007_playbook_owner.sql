-- Playbooks have an owner: the agent id of the token that created them (NULL: an
-- operator or admin). A scoped token reads, edits, runs and deletes only its own.
-- Existing generated playbooks belong to their source sandbox's agent; the others,
-- whose creator is unknown, to operators and admins.
ALTER TABLE playbooks ADD COLUMN owner_agent_id TEXT;
ALTER TABLE playbooks ADD COLUMN created_by TEXT;

UPDATE playbooks
   SET owner_agent_id = (SELECT s.agent_id FROM sandboxes s
                          WHERE s.id = (playbooks.source_json::jsonb ->> 'sandbox_id'))
 WHERE source_json IS NOT NULL;

CREATE INDEX playbooks_owner ON playbooks (owner_agent_id);
