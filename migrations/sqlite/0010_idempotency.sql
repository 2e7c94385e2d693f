-- Idempotency keys (Stripe's semantics), scoped to the API key that sent them. A row is in
-- flight while `locked_until` is set and no response is stored; `resource_id` is written in
-- the same transaction as the job or pipeline the request created, so a request whose process
-- died after committing is answered with that resource instead of creating a second one.
CREATE TABLE idempotency_keys (
    key_id           TEXT NOT NULL,
    idem_key         TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    locked_until     BIGINT,
    resource_id      TEXT,
    status_code      BIGINT,
    response_headers TEXT,
    response_body    TEXT,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
