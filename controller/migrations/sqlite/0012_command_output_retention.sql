-- [retention] command_output_days: the output of commands that ended before then is
-- dropped (the row, its exit code and the SHA-256 of its output in the audit trail
-- stay); output_expired says so.
ALTER TABLE commands ADD COLUMN output_expired BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX commands_ended_at ON commands (ended_at);
