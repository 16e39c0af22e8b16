-- Keys imported from another system in a format not keygate's own (issue 21):
-- 1 marks them for the API, the dashboard's rotation nudge and /metrics.
ALTER TABLE api_keys ADD COLUMN legacy INTEGER NOT NULL DEFAULT 0;
