-- A sandbox's egress allow-list: intent, like the rest of the row. The JSON text of
-- `{"allow": [...]}` in the REST API's entry shape, normalised and sorted; the
-- controller compares it as text (compare-and-set) and pushes it to the agent.
ALTER TABLE sandboxes ADD COLUMN egress_json TEXT NOT NULL DEFAULT '{"allow":[]}';
