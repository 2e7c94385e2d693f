-- The due index holds admitted queued jobs only: its two readers (the reconciler's unrung sweep
-- and the queue gauges) look only at admitted jobs, and a lookup of a tenant's held jobs must
-- not find it usable. A planner whose statistics predate a burst (every queued-only partial
-- index then looks nearly empty) chose this index, walked every queued job and sorted them,
-- for each held-job lookup: 1,600 buffer reads per admission mid-burst instead of a few.
DROP INDEX jobs_due;
CREATE INDEX jobs_due ON jobs (run_after) WHERE status = 'queued' AND rung_at >= 0;
