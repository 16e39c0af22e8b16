//! Whether the store answers, as this node last saw it.
//!
//! While it does not, the verify path asks it at most once per
//! [`PROBE_INTERVAL_MS`]: every other request is answered at once, from the
//! cache (up to `store.max_stale`) or with 503, instead of each waiting for a
//! timeout. Any success (a probe, a usage flush, `/readyz`) closes it again.

use std::sync::atomic::{AtomicI64, Ordering};

/// How often a store that is down is tried again.
pub const PROBE_INTERVAL_MS: i64 = 1_000;

const UP: i64 = i64::MIN;

#[derive(Debug)]
pub(crate) struct StoreHealth {
    /// Unix ms of the first failure of the current outage, or [`UP`].
    down_since_ms: AtomicI64,
    next_probe_ms: AtomicI64,
}

impl Default for StoreHealth {
    fn default() -> Self {
        Self {
            down_since_ms: AtomicI64::new(UP),
            next_probe_ms: AtomicI64::new(0),
        }
    }
}

impl StoreHealth {
    /// True when a request may ask the store: it is up, or this request is
    /// the one probe of the current interval.
    pub fn may_try(&self, now_ms: i64) -> bool {
        if self.down_since_ms.load(Ordering::Acquire) == UP {
            return true;
        }
        let next = self.next_probe_ms.load(Ordering::Acquire);
        now_ms >= next
            && self
                .next_probe_ms
                .compare_exchange(next, now_ms + PROBE_INTERVAL_MS, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    pub fn succeeded(&self) {
        let was = self.down_since_ms.swap(UP, Ordering::AcqRel);
        if was != UP {
            tracing::info!("the store answers again");
        }
    }

    pub fn failed(&self, now_ms: i64) {
        self.next_probe_ms.store(now_ms + PROBE_INTERVAL_MS, Ordering::Release);
        if self
            .down_since_ms
            .compare_exchange(UP, now_ms, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(
                "the store does not answer: cached keys keep verifying up to store.max_stale, \
                 others get 503, admin writes get 503"
            );
        }
    }

    /// Unix ms since when the store has been failing.
    pub fn down_since_ms(&self) -> Option<i64> {
        Some(self.down_since_ms.load(Ordering::Acquire)).filter(|&ms| ms != UP)
    }
}

/// What `/readyz` reports about the store and the cache in front of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// The ping's result: its latency, or why it failed.
    pub ping: Result<std::time::Duration, String>,
    /// Since when requests have been failing to reach the store.
    pub down_since: Option<chrono::DateTime<chrono::Utc>>,
    pub hearing: crate::Hearing,
    /// How long a cached key is trusted now (shorter while not hearing).
    pub cache_ttl: std::time::Duration,
    pub max_stale: std::time::Duration,
}

impl super::Verifier {
    /// Pings the store (bounded by `store.timeout`), which also tells the
    /// verify path that a store that was down answers again.
    pub async fn store_status(&self) -> StoreStatus {
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(self.settings.store_timeout, self.context.store().ping()).await;
        self.context.metrics().store_call(
            crate::metrics::StoreOperation::Ping,
            started.elapsed(),
            !matches!(answer, Ok(Ok(()))),
        );
        let ping = match answer {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!(
                "no answer within {:?} (store.timeout)",
                self.settings.store_timeout
            )),
        };
        match &ping {
            Ok(_) => self.context.store_health().succeeded(),
            Err(_) => self
                .context
                .store_health()
                .failed(self.context.now().timestamp_millis()),
        }
        let hearing = self.hearing();
        StoreStatus {
            ping,
            down_since: self
                .context
                .store_health()
                .down_since_ms()
                .and_then(chrono::DateTime::from_timestamp_millis),
            hearing,
            cache_ttl: self.current_cache_ttl(),
            max_stale: self.settings.max_stale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_always_tries_and_down_probes_once_per_interval() {
        let health = StoreHealth::default();
        assert!(health.may_try(0) && health.may_try(0));
        health.failed(10_000);
        assert_eq!(health.down_since_ms(), Some(10_000));
        assert!(
            !health.may_try(10_500),
            "the failure itself was the probe of this interval"
        );
        assert!(health.may_try(11_000), "one probe when the interval ends");
        assert!(!health.may_try(11_000), "and only one");
        health.failed(11_200);
        assert_eq!(
            health.down_since_ms(),
            Some(10_000),
            "the outage started at the first failure"
        );
        assert!(!health.may_try(12_000));
        assert!(health.may_try(12_200));
        health.succeeded();
        assert_eq!(health.down_since_ms(), None);
        assert!(health.may_try(12_200) && health.may_try(12_200));
    }
}
