-- `jobs_running_owner` took an entry on every claim, for one statement: a worker's release of its
-- own running jobs as it leaves. That statement now walks `jobs_lease_expiry` (every running job,
-- as few as the workers' slots) and filters on the owner. `job_transitions` is keyed by its rowid
-- (`seq`) on SQLite, which costs no index of its own: it stays as it is.
DROP INDEX jobs_running_owner;
