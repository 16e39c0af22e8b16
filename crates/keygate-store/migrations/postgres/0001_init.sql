-- The same schema as SQLite's, so both stores share their SQL: timestamps
-- are Unix milliseconds (BIGINT), lists and objects are JSON text.
CREATE TABLE workspaces (
    id           TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    plan         TEXT,
    ip_allowlist TEXT NOT NULL DEFAULT '[]',
    limits       TEXT NOT NULL DEFAULT '[]',
    disabled     BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    deleted_at   BIGINT
);

-- The built-in workspace whose keys administer every workspace.
INSERT INTO workspaces (id, name, created_at, updated_at)
VALUES ('ws_admin', 'Administrators',
        (extract(epoch FROM now()) * 1000)::BIGINT, (extract(epoch FROM now()) * 1000)::BIGINT);

CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY NOT NULL,
    workspace_id   TEXT NOT NULL REFERENCES workspaces (id),
    lineage_id     TEXT NOT NULL,
    name           TEXT NOT NULL,
    environment    TEXT NOT NULL,
    key_hash       BYTEA NOT NULL UNIQUE,
    hint           TEXT NOT NULL,
    scopes         TEXT NOT NULL DEFAULT '[]',
    ip_allowlist   TEXT NOT NULL DEFAULT '[]',
    expires_at     BIGINT,
    metadata       TEXT NOT NULL DEFAULT '{}',
    limits         TEXT NOT NULL DEFAULT '[]',
    created_at     BIGINT NOT NULL,
    created_by     TEXT,
    last_used_at   BIGINT,
    last_used_ip   TEXT,
    revoked_at     BIGINT,
    revoked_reason TEXT,
    rotated_from   TEXT,
    rotated_to     TEXT,
    deleted_at     BIGINT
);

CREATE INDEX api_keys_by_workspace ON api_keys (workspace_id, id);

CREATE TABLE audit_events (
    id           TEXT PRIMARY KEY NOT NULL,
    at           BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    actor_ip     TEXT,
    action       TEXT NOT NULL,
    object_type  TEXT NOT NULL,
    object_id    TEXT NOT NULL,
    workspace_id TEXT,
    details      TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_events_by_workspace ON audit_events (workspace_id, id);
CREATE INDEX audit_events_by_object ON audit_events (object_id, id);

-- Requests per key per minute, by outcome (`admitted` or a rejection code).
CREATE TABLE usage_minutes (
    key_id       TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    minute       BIGINT NOT NULL, -- Unix seconds at the start of the minute
    outcome      TEXT NOT NULL,
    count        BIGINT NOT NULL,
    PRIMARY KEY (key_id, minute, outcome)
);
