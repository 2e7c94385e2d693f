-- A job's own time limits: `deadline_at` (from `cancel_after`: the job fails as
-- `deadline_exceeded` if it has not finished by then) and `start_by` (from `max_queue_wait`: it
-- fails as `queue_timeout` if no attempt has started by then). Partial indexes, so the
-- reconciler's sweep reads only the jobs that have a limit.
ALTER TABLE jobs ADD COLUMN deadline_at BIGINT;
ALTER TABLE jobs ADD COLUMN start_by BIGINT;
CREATE INDEX jobs_deadline ON jobs (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX jobs_start_by ON jobs (start_by) WHERE start_by IS NOT NULL;
