-- `jobs_held` keeps its ids in byte order (`COLLATE "C"`), and every walk of a tenant's held jobs
-- asks for that order (`Dialect::held_order`).
--
-- A lane's oldest held job is `ORDER BY id LIMIT n` within one tenant and lane. `jobs_queued`
-- and the primary key give id order too, and with some statistics (and in some generic plans)
-- the planner walked `jobs_queued` for it, filtering on the tenant, the lane and the held state:
-- for a lane that held nothing, that read every queued job, on every claim. In an order that only
-- `jobs_held` gives, any other plan must sort every match first, which no estimate makes cheaper.
-- Ids are UUID v7 in lowercase hex, so byte order is the order they were made in, as before.
DROP INDEX jobs_held;
CREATE INDEX jobs_held ON jobs (tenant, priority, id COLLATE "C") WHERE status = 'queued' AND rung_at = -1;
