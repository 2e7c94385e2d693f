-- Kiln ledger, Postgres flavour. The same shape as the SQLite schema, so one implementation serves
-- both: times are Unix milliseconds (BIGINT), every number is BIGINT (the rows decode alike).

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    prefix       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL,
    model            TEXT NOT NULL,
    input            TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('queued','running','succeeded','failed','canceled')),
    error_code       TEXT,
    error_message    TEXT,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    completed_at     BIGINT,
    run_after        BIGINT NOT NULL,
    rung_at          BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_token      TEXT,
    lease_expires_at BIGINT,
    attempt_count    BIGINT NOT NULL DEFAULT 0,
    rescue_count     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_tenant_id ON jobs (tenant, id);
CREATE INDEX jobs_status_due ON jobs (status, run_after);
CREATE INDEX jobs_running_lease ON jobs (status, lease_expires_at);

CREATE TABLE attempts (
    job_id        TEXT NOT NULL REFERENCES jobs (id),
    number        BIGINT NOT NULL,
    id            TEXT NOT NULL UNIQUE,
    route         TEXT NOT NULL,
    worker        TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    finished_at   BIGINT,
    outcome       TEXT,
    error_code    TEXT,
    error_message TEXT,
    PRIMARY KEY (job_id, number)
);

CREATE TABLE outputs (
    job_id        TEXT NOT NULL REFERENCES jobs (id),
    idx           BIGINT NOT NULL,
    object_key    TEXT NOT NULL,
    content_type  TEXT NOT NULL,
    bytes         BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    deleted_at    BIGINT,
    PRIMARY KEY (job_id, idx)
);
CREATE INDEX outputs_expiry ON outputs (deleted_at, expires_at);

CREATE TABLE job_transitions (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       TEXT NOT NULL REFERENCES jobs (id),
    from_status  TEXT,
    to_status    TEXT NOT NULL,
    reason       TEXT,
    at           BIGINT NOT NULL
);
CREATE INDEX job_transitions_job ON job_transitions (job_id, seq);
