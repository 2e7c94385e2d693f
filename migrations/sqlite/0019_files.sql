-- Uploads (issue 18): files a client stores with `POST /v1/files` (Replicate's upload route)
-- to pass as job inputs by URL, kept in the object store with the outputs' expiry and deleted
-- by the janitor (or by their owner) like outputs. A deleted file's row stays, marked, so the
-- janitor's pass and a `DELETE` can race without either losing track of the object.
CREATE TABLE files (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    object_key TEXT NOT NULL,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE INDEX files_tenant_id ON files (tenant, id);
CREATE INDEX files_expiry ON files (expires_at) WHERE deleted_at IS NULL;
