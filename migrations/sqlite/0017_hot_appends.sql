-- The deliverer claims the oldest due deliveries: with the due index ordered as the claim is,
-- (next_try_at, id), the claim can walk it in order and stop at the batch. (The Postgres
-- ledger's migration of the same number also drops the foreign keys of the hot path's appends;
-- here a foreign-key check is an in-process index probe, and they stay.)
DROP INDEX webhook_deliveries_due;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_try_at, id) WHERE status = 'pending';
