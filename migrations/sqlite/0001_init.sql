-- Kiln ledger, SQLite flavour. Times are Unix milliseconds (INTEGER) so that range scans and
-- lease comparisons are plain integer comparisons; the Rust side converts at the edge.

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    -- SHA-256 of the plaintext key; the plaintext is shown once and never stored.
    key_hash     TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,          -- UUIDv7: sorts by creation time
    tenant           TEXT NOT NULL,
    model            TEXT NOT NULL,
    input            TEXT NOT NULL,             -- JSON
    status           TEXT NOT NULL CHECK (status IN ('queued','running','succeeded','failed','canceled')),
    error_code       TEXT,
    error_message    TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    completed_at     INTEGER,
    run_after        INTEGER NOT NULL,          -- a queued job is due from this time (retry backoff)
    rung_at          INTEGER NOT NULL,          -- last time the doorbell was rung for it
    lease_owner      TEXT,
    lease_token      TEXT,                      -- fences results: unique per claim
    lease_expires_at INTEGER,
    attempt_count    INTEGER NOT NULL DEFAULT 0,
    rescue_count     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_tenant_id ON jobs (tenant, id);
CREATE INDEX jobs_status_due ON jobs (status, run_after);
CREATE INDEX jobs_running_lease ON jobs (status, lease_expires_at);

CREATE TABLE attempts (
    job_id        TEXT NOT NULL REFERENCES jobs (id),
    number        INTEGER NOT NULL,
    id            TEXT NOT NULL UNIQUE,
    route         TEXT NOT NULL,
    worker        TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    outcome       TEXT,
    error_code    TEXT,
    error_message TEXT,
    PRIMARY KEY (job_id, number)
);

CREATE TABLE outputs (
    job_id        TEXT NOT NULL REFERENCES jobs (id),
    idx           INTEGER NOT NULL,
    object_key    TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    bytes         INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    deleted_at    INTEGER,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX outputs_expiry ON outputs (deleted_at, expires_at);

-- Every status transition, written in the same transaction as the compare-and-set that made it.
-- It is the job's audit trail (and, later, the outbox that webhooks are delivered from).
CREATE TABLE job_transitions (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       TEXT NOT NULL REFERENCES jobs (id),
    from_status  TEXT,
    to_status    TEXT NOT NULL,
    reason       TEXT,
    at           INTEGER NOT NULL
);
CREATE INDEX job_transitions_job ON job_transitions (job_id, seq);
