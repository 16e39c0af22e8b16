-- The nodes of a deployment (issue 18): each registers itself and
-- heartbeats, so `GET /v1/nodes` lists the live ones and a change can wait
-- for every live node to confirm it (revocation receipts).
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    gateway_addr TEXT NOT NULL,
    admin_addr TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    last_heartbeat BIGINT NOT NULL,
    hearing TEXT NOT NULL,
    cache_size BIGINT NOT NULL
);

-- One row per node that heard a receipt's announcement, which it hears only
-- after every change committed before it (crates/keygate-store/src/changes.rs).
CREATE TABLE receipt_confirmations (
    receipt_id TEXT NOT NULL,
    node_id TEXT NOT NULL,
    confirmed_at BIGINT NOT NULL,
    PRIMARY KEY (receipt_id, node_id)
);
CREATE INDEX receipt_confirmations_at ON receipt_confirmations (confirmed_at);
