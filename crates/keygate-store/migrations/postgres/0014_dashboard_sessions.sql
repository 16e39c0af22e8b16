-- Dashboard sessions, what a session shows once, and portal links (issue
-- 18): in the store, so that any node serves any browser and a restart
-- signs nobody out. The browser's secrets (the session cookie, the portal
-- link's token) are kept as SHA-256 hex only; a secret shown once (a new
-- key, a webhook's signing secret) is sealed with the secrets key until it
-- is shown, then deleted.
CREATE TABLE dashboard_sessions (
    secret_hash TEXT PRIMARY KEY,
    id TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    workspace_id TEXT,
    environment TEXT,
    signed_in_with TEXT,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_last_seen ON dashboard_sessions (last_seen_at);

CREATE TABLE session_reveals (
    secret_hash TEXT NOT NULL,
    object_id TEXT NOT NULL,
    sealed TEXT NOT NULL,
    PRIMARY KEY (secret_hash, object_id)
);

CREATE TABLE portal_links (
    token_hash TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
