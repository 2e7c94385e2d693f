-- A pipeline's priority: the dispatch lane of each of its steps.
ALTER TABLE pipelines ADD COLUMN priority TEXT NOT NULL DEFAULT 'normal';
