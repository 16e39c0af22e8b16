-- Usage batches already applied, so that a flush retried after a lost
-- answer is counted once. Ids older than a week are pruned by the flush.
CREATE TABLE usage_batches (
    id         TEXT PRIMARY KEY NOT NULL,
    applied_at BIGINT NOT NULL
);
CREATE INDEX usage_batches_by_time ON usage_batches (applied_at);
