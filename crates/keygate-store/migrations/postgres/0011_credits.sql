-- Usage credits (issue 19): a key's own and a workspace's, as JSON like
-- `{"remaining": 1000, "refill": {"amount": 1000, "every": "30d"}}`; NULL
-- falls back to the workspace's, then the plan's. `credits_set_at` (ms) is
-- when a key's credits were last set, where its refill periods count from;
-- NULL means its creation (a rotated key carries its predecessor's).
ALTER TABLE api_keys ADD COLUMN credits TEXT;
ALTER TABLE api_keys ADD COLUMN credits_set_at BIGINT;
ALTER TABLE workspaces ADD COLUMN credits TEXT;
