-- A delivery's claim: the token of the worker trying it, so only that worker's result is
-- recorded (a redelivery or an expired hold cannot race it); and where a redelivery restarts
-- the schedule, so one redelivered event gets the whole schedule again.
ALTER TABLE webhook_deliveries ADD COLUMN claim_token TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN schedule_base BIGINT NOT NULL DEFAULT 0;
