-- Pipelines: a DAG of steps, each an ordinary job once its inputs exist. A step's input keeps
-- its `$steps.NAME.outputs[N]` references until the step starts; then they become
-- `kiln://jobs/{id}/outputs/{n}` storage references to the steps it depends on.
CREATE TABLE pipelines (
    id             TEXT PRIMARY KEY,
    tenant         TEXT NOT NULL,
    key_id         TEXT,
    status         TEXT NOT NULL CHECK (status IN ('queued','running','succeeded','failed','canceled')),
    webhook_url    TEXT,
    webhook_events TEXT,
    error_code     TEXT,
    error_message  TEXT,
    created_at     BIGINT NOT NULL,
    completed_at   BIGINT
);
CREATE INDEX pipelines_tenant_id ON pipelines (tenant, id);
CREATE INDEX pipelines_active ON pipelines (status) WHERE status IN ('queued', 'running');

CREATE TABLE pipeline_steps (
    pipeline_id TEXT NOT NULL REFERENCES pipelines (id),
    name        TEXT NOT NULL,
    position    BIGINT NOT NULL,
    model       TEXT NOT NULL,
    input       TEXT NOT NULL,
    depends_on  TEXT NOT NULL,
    job_id      TEXT REFERENCES jobs (id),
    PRIMARY KEY (pipeline_id, name)
);

ALTER TABLE jobs ADD COLUMN pipeline_id TEXT;
