-- The hot path's appends, cheaper (issue 17, third pass).
--
-- The rows a job's lifecycle appends (its attempts, transitions, outputs, webhook deliveries and
-- their tries) are written only by the ledger's own statements, in the same statement or
-- transaction that reads or updates the row they belong to, and jobs are never deleted. Their
-- foreign keys could not fail, yet each appended row paid for a trigger that looked the parent
-- up again and share-locked it: six per job, the most frequent statement Postgres ran. The
-- tables that other statements may write later (pipeline steps, job inputs, upstream callbacks
-- and stops) keep theirs. The embedded SQLite ledger keeps all of its foreign keys: there the
-- check is an in-process index probe.
ALTER TABLE attempts DROP CONSTRAINT attempts_job_id_fkey;
ALTER TABLE job_transitions DROP CONSTRAINT job_transitions_job_id_fkey;
ALTER TABLE outputs DROP CONSTRAINT outputs_job_id_fkey;
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_job_id_fkey;
ALTER TABLE webhook_tries DROP CONSTRAINT webhook_tries_delivery_id_fkey;

-- The deliverer claims the oldest due deliveries, now choosing its batch before it joins jobs
-- and keys (it used to join and sort every due delivery: ~600 buffers per claim mid-burst).
-- With the due index ordered as the claim is, (next_try_at, id), a planner that knows of a
-- backlog walks the index in order and stops at the batch, and a plain index scan marks the
-- dead entries it passes so the next claim skips them.
DROP INDEX webhook_deliveries_due;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_try_at, id) WHERE status = 'pending';
