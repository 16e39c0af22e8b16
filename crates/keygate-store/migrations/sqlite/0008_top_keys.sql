-- Each key's requests and rejections over trailing windows of whole UTC days
-- (1, 7 and 30 days: today and the days before it), so the top keys of a
-- workspace are read from an index instead of summed over 30 days of rows.
-- A row holds the key's rolled-up minutes from the day `since` on: the
-- roll-up job adds each minute once and moves `since` forward as days pass,
-- subtracting the days that leave the window.
CREATE TABLE usage_key_windows (
    key_id       TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    days         INTEGER NOT NULL,
    since        INTEGER NOT NULL, -- Unix seconds: the first day counted
    requests     INTEGER NOT NULL,
    rejected     INTEGER NOT NULL,
    PRIMARY KEY (key_id, days)
);
CREATE INDEX usage_key_windows_by_requests ON usage_key_windows (workspace_id, days, requests, key_id);
CREATE INDEX usage_key_windows_by_rejected ON usage_key_windows (workspace_id, days, rejected, key_id);
CREATE INDEX usage_key_windows_to_roll ON usage_key_windows (days, since);

-- The days rolled up so far, from day 0: the first roll forward subtracts
-- the days before each window.
INSERT INTO usage_key_windows (key_id, workspace_id, days, since, requests, rejected)
SELECT r.key_id, r.workspace_id, w.days, 0, SUM(r.count),
       SUM(CASE WHEN r.outcome <> 'admitted' THEN r.count ELSE 0 END)
FROM usage_rollups r, (SELECT 1 AS days UNION ALL SELECT 7 UNION ALL SELECT 30) w
WHERE r.grain = 86400
GROUP BY r.key_id, r.workspace_id, w.days;
