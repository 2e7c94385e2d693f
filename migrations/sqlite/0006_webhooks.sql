-- Webhooks. Each API key has a signing secret (made on first use) and, during a rotation, the
-- previous one until its overlap ends. A job remembers the key that submitted it, its webhook
-- URL and the events it wants. A delivery is written in the same transaction as the state
-- change that causes it, so no crash can lose it; its id is the `webhook-id` of every try.
ALTER TABLE api_keys ADD COLUMN webhook_secret TEXT;
ALTER TABLE api_keys ADD COLUMN previous_webhook_secret TEXT;
ALTER TABLE api_keys ADD COLUMN previous_secret_until BIGINT;
-- A key's default webhook: used by its jobs that name none.
ALTER TABLE api_keys ADD COLUMN default_webhook TEXT;
ALTER TABLE jobs ADD COLUMN key_id TEXT;
ALTER TABLE jobs ADD COLUMN webhook_url TEXT;
ALTER TABLE jobs ADD COLUMN webhook_events TEXT;

CREATE TABLE webhook_deliveries (
    id           TEXT PRIMARY KEY,
    job_id       TEXT NOT NULL REFERENCES jobs (id),
    event_type   TEXT NOT NULL,
    url          TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('pending','delivered','failed','gone')),
    tries        BIGINT NOT NULL DEFAULT 0,
    next_try_at  BIGINT,
    delivered_at BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_try_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);

CREATE TABLE webhook_tries (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id),
    number      BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    status_code BIGINT,
    latency_ms  BIGINT NOT NULL,
    error       TEXT,
    PRIMARY KEY (delivery_id, number)
);
