-- Indexes shaped to the lookups that use them, so that their cost follows the active jobs and
-- not the backlog or the history.
--
-- A held job is looked for per tenant and lane (`ORDER BY id LIMIT 1` within one priority). The
-- index on (tenant, id) made a lane with no held job walk every held job of the tenant to learn
-- so: with a backlog of thousands, every claim paid for all of them. With the priority in the
-- key, each lane's lookup is one index probe.
--
-- Every status change writes a new version of the job's row, and a full index gains an entry for
-- each version, so the three full indexes below were written on every claim and every
-- completion although no query looks past the queued or running jobs in them. As partial
-- indexes they are written only while a job is queued (due) or running (lease, owner), and they
-- stay as small as the active set instead of growing with the history.
DROP INDEX jobs_held;
CREATE INDEX jobs_held ON jobs (tenant, priority, id) WHERE status = 'queued' AND rung_at = -1;
DROP INDEX jobs_status_due;
DROP INDEX jobs_running_lease;
DROP INDEX jobs_lease_owner;
CREATE INDEX jobs_due ON jobs (run_after) WHERE status = 'queued';
CREATE INDEX jobs_lease_expiry ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_running_owner ON jobs (lease_owner) WHERE status = 'running';
