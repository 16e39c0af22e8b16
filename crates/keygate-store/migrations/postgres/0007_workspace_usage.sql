-- A workspace's usage per minute, hour and day (grains 60, 3600, 86400),
-- filled by the roll-up job from complete minutes with the per-key
-- rollups: a workspace's series reads one row per bucket and outcome,
-- however many keys it has.
CREATE TABLE usage_workspace_rollups (
    workspace_id TEXT NOT NULL,
    grain        BIGINT NOT NULL, -- bucket size in seconds
    start        BIGINT NOT NULL, -- Unix seconds at the start of the bucket
    outcome      TEXT NOT NULL,
    count        BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, grain, start, outcome)
);
CREATE INDEX usage_workspace_rollups_by_age ON usage_workspace_rollups (grain, start);

-- The minutes the job has rolled up so far, and their hours and days.
INSERT INTO usage_workspace_rollups (workspace_id, grain, start, outcome, count)
SELECT workspace_id, 60, minute, outcome, SUM(count) FROM usage_minutes
WHERE minute < (SELECT rolled_until FROM usage_rollup_progress WHERE id = 1)
GROUP BY workspace_id, minute, outcome;
INSERT INTO usage_workspace_rollups (workspace_id, grain, start, outcome, count)
SELECT workspace_id, grain, start, outcome, SUM(count) FROM usage_rollups
GROUP BY workspace_id, grain, start, outcome;
