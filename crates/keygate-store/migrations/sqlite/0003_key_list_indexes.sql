-- The key list filters by status and environment, newest first. Without these,
-- a filter that matches few keys (revoked, expired, deleted) walks every key of
-- the workspace: about 35 ms per page at 100,000 keys on SQLite
-- (scripts/bench/dashboard.sh). Each partial index holds only the keys its
-- filter can match; the planner sees that the list query implies its WHERE.
CREATE INDEX api_keys_revoked ON api_keys (workspace_id, id) WHERE revoked_at IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX api_keys_deleted ON api_keys (workspace_id, id) WHERE deleted_at IS NOT NULL;
CREATE INDEX api_keys_expiring ON api_keys (workspace_id, id) WHERE expires_at IS NOT NULL AND revoked_at IS NULL AND deleted_at IS NULL;
CREATE INDEX api_keys_by_environment ON api_keys (workspace_id, environment, id);
