-- The roles a key holds (issue 19): names of the config's `[roles]`, as a
-- JSON array like `scopes`. What a role grants stays in the config, so a
-- changed role applies to every key that holds it.
ALTER TABLE api_keys ADD COLUMN roles TEXT NOT NULL DEFAULT '[]';
