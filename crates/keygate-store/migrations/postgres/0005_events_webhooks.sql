-- The outbox: every event keygate publishes, written in the same transaction
-- as the change (or the usage flush) that caused it, and delivered from here.
CREATE TABLE events (
    id           TEXT PRIMARY KEY NOT NULL, -- msg_<ulid>: also the deliveries' webhook-id
    type         TEXT NOT NULL,
    at           BIGINT NOT NULL,
    workspace_id TEXT,
    subject      TEXT,        -- the key id, or the client IP for auth.failure_burst
    dedup_key    TEXT UNIQUE, -- events that may happen once (per window) name themselves
    body         TEXT NOT NULL, -- exactly what every delivery sends and signs
    fanned_out   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX events_to_fan_out ON events (id) WHERE fanned_out = 0;
CREATE INDEX events_by_subject ON events (subject, type, at);
CREATE INDEX events_by_workspace ON events (workspace_id, id);

CREATE TABLE webhook_endpoints (
    id           TEXT PRIMARY KEY NOT NULL,
    workspace_id TEXT,          -- NULL: every workspace's events
    url          TEXT NOT NULL,
    secret       TEXT NOT NULL, -- whsec_...: signing needs the secret itself
    events       TEXT NOT NULL DEFAULT '[]', -- the filter; empty is every type
    description  TEXT,
    created_at   BIGINT NOT NULL,
    created_by   TEXT,
    deleted_at   BIGINT
);
CREATE INDEX webhook_endpoints_live ON webhook_endpoints (workspace_id) WHERE deleted_at IS NULL;

-- One row per event and endpoint: the unit that is delivered exactly once.
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY NOT NULL,
    endpoint_id     TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    status          TEXT NOT NULL, -- pending, delivered, failed
    attempts        BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_until     BIGINT,  -- a node is sending it until then
    lease_token     TEXT,
    delivered_at    BIGINT,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id);

CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    status_code BIGINT,  -- NULL when no answer came
    error       TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- The lifecycle scan (key.expiring, key.expired, key.max_age_exceeded) reads
-- live, unrotated keys by expiry and by age.
CREATE INDEX api_keys_by_expiry ON api_keys (expires_at)
    WHERE expires_at IS NOT NULL AND revoked_at IS NULL AND deleted_at IS NULL AND rotated_to IS NULL;
CREATE INDEX api_keys_live_by_age ON api_keys (created_at)
    WHERE revoked_at IS NULL AND deleted_at IS NULL AND rotated_to IS NULL;
