-- Each host's warm pool as its last heartbeat reported it: a JSON array with one
-- object per image and shape ({image, cpus, memory_mb, size, ready, filling, hits,
-- misses}); NULL when the host has no pool (and for hosts not heard from since this
-- column). Pool members are not sandboxes; the scheduler counts what they hold.
ALTER TABLE hosts ADD COLUMN pools TEXT;
