//! Throttling of clients that send invalid keys (`TOO_MANY_FAILED_ATTEMPTS`).
//!
//! A fixed window per client IP: after `max_failures` invalid keys within
//! `window`, the IP is refused until the window ends. Exactness is not the
//! goal here; making a key-guessing flood cheap to refuse is.

use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    pub max_failures: u32,
    pub window: Duration,
}

/// Failures of one client IP in the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureWindow {
    started: DateTime<Utc>,
    failures: u32,
}

impl FailureWindow {
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            started: now,
            failures: 0,
        }
    }

    /// Returns true for the failure that reaches the threshold: the moment
    /// a client becomes a key-guessing burst (`auth.failure_burst`).
    pub fn record_failure(&mut self, policy: &FailurePolicy, now: DateTime<Utc>) -> bool {
        if self.window_end(policy) <= now {
            *self = Self::new(now);
        }
        self.failures = self.failures.saturating_add(1);
        self.failures == policy.max_failures
    }

    pub fn started(&self) -> DateTime<Utc> {
        self.started
    }

    /// Seconds until the client may try again, or `None` if it may now.
    pub fn blocked_for(&self, policy: &FailurePolicy, now: DateTime<Utc>) -> Option<u64> {
        let end = self.window_end(policy);
        if self.failures < policy.max_failures || end <= now {
            return None;
        }
        let millis = (end - now).num_milliseconds().max(0) as u64;
        Some(millis.div_ceil(1000).max(1))
    }

    fn window_end(&self, policy: &FailurePolicy) -> DateTime<Utc> {
        self.started + chrono::Duration::from_std(policy.window).unwrap_or(chrono::Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_until_window_ends() {
        let policy = FailurePolicy {
            max_failures: 3,
            window: Duration::from_secs(60),
        };
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut w = FailureWindow::new(t0);
        for _ in 0..2 {
            assert!(!w.record_failure(&policy, t0));
        }
        assert_eq!(w.blocked_for(&policy, t0), None);
        assert!(w.record_failure(&policy, t0), "the third failure reaches the threshold");
        assert!(!w.record_failure(&policy, t0), "and only the third");
        assert_eq!(w.blocked_for(&policy, t0 + chrono::Duration::seconds(10)), Some(50));
        assert_eq!(w.blocked_for(&policy, t0 + chrono::Duration::seconds(60)), None);
        assert!(!w.record_failure(&policy, t0 + chrono::Duration::seconds(61)));
        assert_eq!(w.started(), t0 + chrono::Duration::seconds(61));
        assert_eq!(w.blocked_for(&policy, t0 + chrono::Duration::seconds(61)), None);
    }
}
