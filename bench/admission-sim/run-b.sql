BEGIN;
WITH h AS (DELETE FROM queue_held WHERE (tenant, priority, id) = (SELECT tenant, priority, id FROM queue_held WHERE tenant = 'bench' AND priority = 'normal' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, tenant, priority) INSERT INTO queue_admitted (id, tenant, priority, rung_at) SELECT id, tenant, priority, 2 FROM h RETURNING id \gset
WITH a AS (DELETE FROM queue_admitted WHERE id = :id RETURNING id) UPDATE jobs SET status = 'running', started_at = 3, lease_owner = 'w1', lease_token = 'tok', lease_expires_at = 100, attempt_count = attempt_count + 1 WHERE id = (SELECT id FROM a) AND CASE WHEN status = 'queued' AND run_after <= 5 THEN TRUE ELSE FALSE END;
COMMIT;
UPDATE jobs SET status = 'succeeded', completed_at = 4, lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL WHERE id = :id AND CASE WHEN status = 'running' AND lease_token = 'tok' THEN TRUE ELSE FALSE END;
