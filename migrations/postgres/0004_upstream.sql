-- What an attempt knows of its upstream call: the handle it started (a prediction, prompt or
-- request id, persisted before waiting so a rescued job re-attaches instead of paying twice) and
-- what the call cost, in millionths of the configured currency unit.
ALTER TABLE attempts ADD COLUMN upstream_id TEXT;
ALTER TABLE attempts ADD COLUMN cost_micros BIGINT;

-- Terminal callbacks from upstreams that push their result (Cog's webhook): kept until the job
-- leaves `running`, so a worker that re-attaches after a rescue still finds a result that came
-- while nobody waited. The first callback for a handle wins; retries of it are ignored.
CREATE TABLE upstream_callbacks (
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    upstream_id TEXT NOT NULL,
    body        TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, upstream_id)
);
