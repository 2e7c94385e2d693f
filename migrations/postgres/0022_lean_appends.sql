-- Two index entries fewer per job on the hot path, neither serving any read.
--
-- `jobs_running_owner` took an entry on every claim, for one statement: a worker's release of
-- its own running jobs as it leaves (or its slot is taken over). That statement now walks
-- `jobs_lease_expiry` (every running job, as few as the workers' slots) and filters on the owner.
--
-- `job_transitions` was keyed by `seq` alone, an index no statement reads: transitions are read by
-- job, in order, through `job_transitions_job (job_id, seq)`. Three transitions per job each wrote
-- both. The key is now (job_id, seq), the index the reads use; `seq` is still drawn from its
-- identity, so it stays unique and ordered.
DROP INDEX jobs_running_owner;
CREATE UNIQUE INDEX job_transitions_job_seq ON job_transitions (job_id, seq);
ALTER TABLE job_transitions DROP CONSTRAINT job_transitions_pkey;
ALTER TABLE job_transitions ADD CONSTRAINT job_transitions_pkey PRIMARY KEY USING INDEX job_transitions_job_seq;
DROP INDEX job_transitions_job;
