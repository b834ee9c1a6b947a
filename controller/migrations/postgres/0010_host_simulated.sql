-- True for a simulated host (the agent's [simulated], control-plane scale tests), as
-- its last heartbeat reported it: its sandboxes exist only in its agent's memory.
ALTER TABLE hosts ADD COLUMN simulated BOOLEAN NOT NULL DEFAULT FALSE;
