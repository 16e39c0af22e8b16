-- What each credit balance has spent in its latest refill period (issue
-- 19), written by nodes whose limiter counts in memory so that a restart
-- does not hand spent credits back. `counter` names the balance (its
-- origin and spec); `period` counts refill periods from its origin.
CREATE TABLE credit_spend (
    owner TEXT NOT NULL,
    counter TEXT NOT NULL,
    period BIGINT NOT NULL,
    spent BIGINT NOT NULL,
    newest_ms BIGINT NOT NULL,
    PRIMARY KEY (owner, counter)
);
