-- Worker identities: `{base}-{n}` slots, each held by one live process that renews it. A
-- process takes the lowest free slot, so identities are unique and come back after a restart.
CREATE TABLE worker_slots (
    identity   TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX jobs_lease_owner ON jobs (lease_owner);
