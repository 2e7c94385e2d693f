-- Priority lanes, per-tenant dispatch windows, and per-key limits.
--
-- A job's `priority` is its dispatch lane. `rung_at = -1` marks a job held back by its tenant's
-- dispatch window: at most `dispatch.tenant_window` of a tenant's queued jobs are admitted to the
-- shared queue at once, so one tenant's burst cannot bury another tenant's job. A claim admits
-- the same tenant's next held job in its own transaction; the reconciler admits the rest, fairly
-- across tenants. (`rung_at = 0` still means admitted and due to be rung.)
ALTER TABLE jobs ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal';
CREATE INDEX jobs_held ON jobs (tenant, id) WHERE status = 'queued' AND rung_at = -1;
CREATE INDEX jobs_admitted ON jobs (tenant) WHERE status = 'queued' AND rung_at >= 0;
CREATE INDEX jobs_key_active ON jobs (key_id) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_key_created ON jobs (key_id, created_at);

-- Per-key limits; null means the configured default.
ALTER TABLE api_keys ADD COLUMN rate_per_second BIGINT;
ALTER TABLE api_keys ADD COLUMN max_active_jobs BIGINT;
ALTER TABLE api_keys ADD COLUMN daily_spend_micros BIGINT;
ALTER TABLE api_keys ADD COLUMN max_priority TEXT;
