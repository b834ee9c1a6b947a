-- How a sandbox's first start went, as its agent reports it: 'boot' (cold boot),
-- 'restore' (from a memory template) or 'pool' (from a warm pool). NULL while
-- unknown: before its first start, and for sandboxes started before this column.
ALTER TABLE sandboxes ADD COLUMN start_path TEXT;
