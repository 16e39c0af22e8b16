-- Usage rolled up to hours (grain 3600) and days (grain 86400), written in the
-- same transaction as the per-minute counts, so that each grain can be kept
-- for its own time (`usage.keep_*`) and long ranges read few rows.
CREATE TABLE usage_rollups (
    key_id       TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    grain        INTEGER NOT NULL, -- bucket size in seconds
    start        INTEGER NOT NULL, -- Unix seconds at the start of the bucket
    outcome      TEXT NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (key_id, grain, start, outcome)
) WITHOUT ROWID;

-- Pruning deletes by age.
CREATE INDEX usage_rollups_by_age ON usage_rollups (grain, start);
CREATE INDEX usage_minutes_by_age ON usage_minutes (minute);

-- The counts recorded before this migration.
INSERT INTO usage_rollups (key_id, workspace_id, grain, start, outcome, count)
SELECT key_id, workspace_id, 3600, minute - minute % 3600, outcome, SUM(count)
FROM usage_minutes GROUP BY key_id, workspace_id, minute - minute % 3600, outcome;
INSERT INTO usage_rollups (key_id, workspace_id, grain, start, outcome, count)
SELECT key_id, workspace_id, 86400, minute - minute % 86400, outcome, SUM(count)
FROM usage_minutes GROUP BY key_id, workspace_id, minute - minute % 86400, outcome;
