//! Redis with a short timeout and a circuit breaker.
//!
//! Every Redis call is bounded by `timeout`. After `FAILURES_TO_OPEN`
//! consecutive failures the breaker opens: for `COOL_DOWN` no request waits on
//! Redis at all, and each is answered by the `on_failure` policy. After the
//! cool-down the next request tries Redis again; one success closes the
//! breaker. So while Redis is down a request costs at most one timeout every
//! few seconds, not one per request, and enforcement returns to Redis by itself.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keygate_core::ratelimit::Decision;

use crate::memory::MemoryLimiter;
use crate::redis::RedisLimiter;
use crate::{Charge, LimitCheck, Limiter, LimiterError, LimiterHealth, Permit, PermitKey};

pub const FAILURES_TO_OPEN: u32 = 3;
/// Default time the breaker stays open before Redis is tried again.
pub const COOL_DOWN: Duration = Duration::from_secs(2);

/// What to do when the shared limiter cannot be reached (`limiter.on_failure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Enforce the same limits with this node's own counters; a credit
    /// balance spends only what Redis last said was left.
    #[default]
    Local,
    /// Admit everything (no rate-limit headers) until Redis is back.
    Allow,
    /// Refuse with `SERVICE_UNAVAILABLE` until Redis is back.
    Deny,
}

struct Breaker {
    started: Instant,
    cool_down: Duration,
    failures: AtomicU32,
    /// Milliseconds since `started` until which the breaker is open.
    open_until: AtomicU64,
}

impl Breaker {
    fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn is_open(&self) -> bool {
        self.elapsed_ms() < self.open_until.load(Ordering::Acquire)
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Release);
    }

    fn failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= FAILURES_TO_OPEN {
            self.open_until
                .store(self.elapsed_ms() + self.cool_down.as_millis() as u64, Ordering::Release);
        }
    }

    fn degraded(&self) -> bool {
        self.is_open() || self.failures.load(Ordering::Acquire) > 0
    }
}

pub struct ResilientLimiter {
    primary: RedisLimiter,
    local: Arc<MemoryLimiter>,
    policy: OnFailure,
    timeout: Duration,
    breaker: Breaker,
    fallbacks: AtomicU64,
}

impl ResilientLimiter {
    pub fn new(primary: RedisLimiter, local: Arc<MemoryLimiter>, policy: OnFailure, timeout: Duration) -> Self {
        Self {
            primary,
            local,
            policy,
            timeout,
            breaker: Breaker {
                started: Instant::now(),
                cool_down: COOL_DOWN,
                failures: AtomicU32::new(0),
                open_until: AtomicU64::new(0),
            },
            fallbacks: AtomicU64::new(0),
        }
    }

    pub fn with_cool_down(mut self, cool_down: Duration) -> Self {
        self.breaker.cool_down = cool_down;
        self
    }

    async fn bounded<T>(&self, call: impl std::future::Future<Output = Result<T, LimiterError>>) -> Option<T> {
        if self.breaker.is_open() {
            return None;
        }
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                self.breaker.success();
                Some(value)
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "redis limiter failed; using on_failure policy");
                self.breaker.failure();
                None
            }
            Err(_) => {
                tracing::warn!(timeout_ms = self.timeout.as_millis() as u64, "redis limiter timed out");
                self.breaker.failure();
                None
            }
        }
    }

    fn fell_back(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps the local copy of a credit balance at what Redis last said it
    /// had spent (the larger count wins), so that while Redis is away this
    /// node spends only what was left, not the whole balance again
    /// (docs/decisions.md, "Credits while Redis is away").
    fn mirror_balance(&self, checks: &[LimitCheck], decision: &Decision) {
        let Some((index, bucket)) = decision.balance_bucket() else {
            return;
        };
        if let Some(check) = checks.get(index) {
            self.local.restore(check, bucket, decision.now_ms);
        }
    }

    /// `on_failure = "local"`: this node's counters decide. A rate limit
    /// counts from zero; a credit balance from its mirror, and one this node
    /// has never seen from Redis is not decided at all: nothing here says
    /// how much of it is left.
    fn decide_locally(
        &self,
        checks: &[LimitCheck],
        cost: u64,
        charge: Charge,
        now_ms: u64,
    ) -> Result<Decision, LimiterError> {
        let unseen_balance = checks
            .iter()
            .any(|check| check.rule.is_balance() && !self.local.holds(&check.key));
        if unseen_balance {
            return Err(LimiterError::Unavailable(
                "redis is unreachable and this node has not seen the key's credit balance".into(),
            ));
        }
        Ok(self.local.decide_now(checks, cost, charge, now_ms))
    }
}

#[async_trait]
impl Limiter for ResilientLimiter {
    async fn check(
        &self,
        checks: &[LimitCheck],
        cost: u64,
        charge: Charge,
        now_ms: u64,
    ) -> Result<Decision, LimiterError> {
        if let Some(decision) = self.bounded(self.primary.check(checks, cost, charge, now_ms)).await {
            self.mirror_balance(checks, &decision);
            return Ok(decision);
        }
        self.fell_back();
        match self.policy {
            OnFailure::Local => self.decide_locally(checks, cost, charge, now_ms),
            OnFailure::Allow => Ok(Decision {
                allowed: true,
                now_ms,
                limits: vec![],
                retry_at_ms: None,
            }),
            OnFailure::Deny => Err(LimiterError::Unavailable(
                "redis is unreachable and on_failure = \"deny\"".into(),
            )),
        }
    }

    /// A block Redis leased to this node stays good while Redis is away:
    /// it was charged there before any request was admitted from it.
    fn check_now(&self, checks: &[LimitCheck], cost: u64, charge: Charge, now_ms: u64) -> Option<Decision> {
        self.primary.check_now(checks, cost, charge, now_ms)
    }

    async fn acquire(&self, key: &PermitKey, max: u32) -> Result<Option<Permit>, LimiterError> {
        if let Some(permit) = self.bounded(self.primary.acquire(key, max)).await {
            return Ok(permit);
        }
        self.fell_back();
        match self.policy {
            OnFailure::Local => Ok(self.local.acquire_now(key, max)),
            OnFailure::Allow => Ok(Some(Permit::new(|| {}))),
            OnFailure::Deny => Err(LimiterError::Unavailable(
                "redis is unreachable and on_failure = \"deny\"".into(),
            )),
        }
    }

    /// Redis keeps them; what the local fallback counts while Redis is away
    /// is the degraded mode's, and is not kept either way.
    fn keeps_counts(&self) -> bool {
        true
    }

    fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    async fn readiness(&self) -> LimiterHealth {
        // Counts towards the breaker like any call, so an idle node notices too.
        let _ = self.bounded(self.primary.ping()).await;
        self.health()
    }

    fn health(&self) -> LimiterHealth {
        if self.breaker.degraded() {
            let policy = match self.policy {
                OnFailure::Local => "local",
                OnFailure::Allow => "allow",
                OnFailure::Deny => "deny",
            };
            LimiterHealth {
                backend: "redis",
                state: "degraded",
                detail: Some(format!("redis unreachable; on_failure = \"{policy}\"")),
            }
        } else {
            LimiterHealth {
                backend: "redis",
                state: "up",
                detail: None,
            }
        }
    }
}
