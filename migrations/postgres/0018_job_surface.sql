-- Which API a job was created through, where it is not Kiln's own (issue 18): 'replicate' for a
-- prediction. A job is the same row whatever its surface; the surface only decides the shape
-- its webhooks are posted in (a Replicate client's webhook handler expects the prediction
-- itself as the body, not Kiln's event envelope). NULL, Kiln's own API, is what every job
-- written before this column and every job of `/v1/jobs` carries, so adding it rewrites nothing.
ALTER TABLE jobs ADD COLUMN surface TEXT CHECK (surface IN ('replicate'));
