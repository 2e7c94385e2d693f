-- Upstream calls that a job left running when it ended while queued: its last attempt was lost
-- or released (its worker died or stopped) after the upstream had accepted the work, and then
-- the job was canceled or ran past its deadline before another attempt re-attached. Written in
-- the transaction that ends the job; workers tell the upstream to stop and delete the row.
CREATE TABLE upstream_stops (
    job_id        TEXT PRIMARY KEY REFERENCES jobs (id),
    model         TEXT NOT NULL,
    route         TEXT NOT NULL,
    upstream_id   TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    claimed_until BIGINT NOT NULL DEFAULT 0,
    tries         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX upstream_stops_due ON upstream_stops (claimed_until);
