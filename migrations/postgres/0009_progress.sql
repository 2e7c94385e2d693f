-- Progress and queue position. An attempt's progress is the percentage its generator last
-- reported (Replicate and Cog logs, the demo generators); null where the upstream says nothing.
-- The partial index lets a queued job count the queued jobs ahead of it without reading the
-- rest of the table.
ALTER TABLE attempts ADD COLUMN progress BIGINT;
CREATE INDEX jobs_queued ON jobs (id) WHERE status = 'queued';
