-- Hours and days are rolled up from complete minutes once a minute by one
-- statement per grain, instead of by every flush (a flush of 10,000 keys
-- wrote 20,000 rollup rows every few seconds). Minutes before
-- `rolled_until` (Unix seconds) are in the rollups; reads add the minutes
-- from it on, so hours and days stay exact and current.
CREATE TABLE usage_rollup_progress (
    id           BIGINT PRIMARY KEY NOT NULL,
    rolled_until BIGINT NOT NULL
);
-- Every minute stored so far was rolled up by the flushes that wrote it.
INSERT INTO usage_rollup_progress (id, rolled_until)
SELECT 1, COALESCE(MAX(minute) + 60, 0) FROM usage_minutes;
