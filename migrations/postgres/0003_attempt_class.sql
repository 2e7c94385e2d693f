-- How an attempt's failure was classified (retry, fall_back, fail): the executor derives the
-- route of the next attempt from this history, so route choice needs no state of its own.
ALTER TABLE attempts ADD COLUMN error_class TEXT;
