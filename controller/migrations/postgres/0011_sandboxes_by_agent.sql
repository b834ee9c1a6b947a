-- An agent's sandboxes by state: its own listings, and the live ones its quota counts
-- ([quotas] sandboxes_per_agent) in every reservation.
CREATE INDEX sandboxes_agent_state ON sandboxes (agent_id, state);
