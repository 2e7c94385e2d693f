-- A delivery's successful try is kept on its own row (issue 17, fourteenth pass). The try that
-- delivers it was a row of `webhook_tries` of its own (a heap record and an index entry on
-- Postgres) written beside the delivery's update, which already records when it was delivered
-- and how many tries it took; these two columns hold the rest of that try (the receiver's
-- status and the latency). Tries that do not deliver are still rows of `webhook_tries`, and a
-- redelivery writes the kept try there before it starts again. Deliveries delivered before
-- this migration keep their try as a row, and these columns stay empty for them.
ALTER TABLE webhook_deliveries ADD COLUMN delivered_status BIGINT;
ALTER TABLE webhook_deliveries ADD COLUMN delivered_latency_ms BIGINT;
