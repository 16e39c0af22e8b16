//! Rate limiters behind one [`Limiter`] trait.
//!
//! - [`memory::MemoryLimiter`]: one node; a mutex per counter, bounded memory,
//!   idle counters evicted.
//! - [`redis::RedisLimiter`]: many nodes; every limit of a request decided in one
//!   Lua round trip, on Redis's clock, or admitted from a block of the key's
//!   allowance that Redis leased to this node ([`lease`]).
//! - [`resilient::ResilientLimiter`]: Redis with a short timeout and a circuit
//!   breaker, falling back to the `on_failure` policy when Redis is unreachable.
//!
//! Both backends run the same arithmetic (`keygate_core::ratelimit`): Redis
//! only stores and returns bucket counts, and the decision's details (remaining,
//! reset, retry) are computed here from them.

mod coalesce;
pub mod lease;
pub mod memory;
pub mod redis;
pub mod resilient;
#[cfg(feature = "testsuite")]
pub mod testsuite;

use std::fmt;
use std::sync::Arc;

pub use arcstr::ArcStr;
use async_trait::async_trait;
use keygate_core::ratelimit::{Bucket, Decision, Rule};

/// Whose counter a limit charges, for which resource and window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// A key lineage id (limits per key) or a workspace id (`scope = "workspace"`).
    pub owner: ArcStr,
    /// The same for every key a limit applies to: one pointer to a shared
    /// copy rather than a name and a window in each check and each entry of
    /// the counter table (memory per cached key, BENCHMARKS.md).
    limit: Arc<CounterLimit>,
}

/// A counter's resource and window, whoever owns it. An `Arc` of it
/// compares and hashes as what it holds, so a shared copy and a new one
/// name the same counter
/// (crates/keygate-engine/src/verifier/shares.rs keeps the shared copies).
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterLimit {
    resource: Arc<str>,
    window_ms: u64,
}

impl CounterLimit {
    pub fn new(resource: impl Into<Arc<str>>, window_ms: u64) -> Self {
        Self {
            resource: resource.into(),
            window_ms,
        }
    }
}

impl CounterKey {
    pub fn new(owner: impl Into<ArcStr>, resource: impl Into<Arc<str>>, window_ms: u64) -> Self {
        Self::of(owner.into(), Arc::new(CounterLimit::new(resource, window_ms)))
    }

    /// `owner`'s counter of a shared resource and window.
    pub fn of(owner: ArcStr, limit: Arc<CounterLimit>) -> Self {
        Self { owner, limit }
    }

    /// The resource and window, shared with every counter of the same limit.
    pub fn limit(&self) -> &Arc<CounterLimit> {
        &self.limit
    }

    pub fn resource(&self) -> &Arc<str> {
        &self.limit.resource
    }

    pub fn window_ms(&self) -> u64 {
        self.limit.window_ms
    }

    /// The counter's name in Redis, in the hash slot of `{tag}` (Redis
    /// Cluster puts every key with the same braced tag on one node, so a
    /// script may touch them all at once).
    pub fn redis_key_in(&self, tag: &str) -> String {
        format!(
            "kg:rl:{{{tag}}}:{}:{}:{}",
            self.owner,
            self.resource(),
            self.window_ms()
        )
    }
}

/// One limit to decide: its counter and its rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitCheck {
    pub key: CounterKey,
    /// Shared by the checks of every key with the same limit (memory per
    /// cached key: crates/keygate-engine/src/verifier/shares.rs).
    pub rule: Arc<Rule>,
    /// Where [`memory::MemoryLimiter`] last found this check's counter: a
    /// check memoized with a cached key goes straight to it, without hashing
    /// `key` into the counter table (a cold table slot and a cold owner
    /// string on every request). Not part of the check's identity.
    counter: memory::CounterCell,
    /// What puts this check's counter in the same Redis Cluster hash slot as
    /// the other checks of its decisions; its owner when not set.
    slot: Option<ArcStr>,
}

impl LimitCheck {
    pub fn new(key: CounterKey, rule: impl Into<Arc<Rule>>) -> Self {
        Self {
            key,
            rule: rule.into(),
            counter: memory::CounterCell::default(),
            slot: None,
        }
    }

    /// Puts the counter in the hash slot of `tag`: every check decided
    /// together must share one, and a counter must keep it in every decision
    /// it is part of (crates/keygate-engine/src/verifier/limits.rs chooses it).
    pub fn in_slot_of(mut self, tag: ArcStr) -> Self {
        self.slot = Some(tag);
        self
    }

    /// Starts loading the counter a memory limiter found for this check
    /// (a prefetch: nothing waits for it), so that its line arrives while
    /// the caller does other work before the decision
    /// (crates/keygate-engine/src/verifier/limits.rs, `MemoizedLimits::touch`).
    pub fn touch(&self) {
        self.counter.touch();
    }

    /// The hash tag of this check's counter in Redis.
    pub fn slot_tag(&self) -> &str {
        self.slot.as_deref().unwrap_or(&self.key.owner)
    }

    /// The counter's name in Redis.
    pub fn redis_key(&self) -> String {
        self.key.redis_key_in(self.slot_tag())
    }
}

/// Charge the counters (a real request) or only look (a dry run, or headers
/// for a request refused for another reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    Consume,
    DryRun,
    /// Charge every counter whatever room it has: a cost the upstream
    /// reported after the request was admitted (`cost_header`).
    Force,
}

/// Whose permits a concurrency limit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PermitKey {
    pub owner: ArcStr,
    pub resource: Arc<str>,
}

impl PermitKey {
    pub fn redis_key(&self) -> String {
        format!("kg:cc:{}:{}", self.owner, self.resource)
    }
}

/// A held concurrency permit; dropping it releases the slot.
pub struct Permit {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Permit {
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Permit")
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LimiterError {
    #[error("rate-limit backend unavailable: {0}")]
    Unavailable(String),
}

/// What `/readyz` says about the limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimiterHealth {
    pub backend: &'static str,
    /// `up`, or `degraded` while a fallback is in use.
    pub state: &'static str,
    pub detail: Option<String>,
}

#[async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// Decides every check as one: all admit and all are charged, or nothing is
    /// charged. `now_ms` is the caller's clock; the Redis backend uses Redis's.
    async fn check(
        &self,
        checks: &[LimitCheck],
        cost: u64,
        charge: Charge,
        now_ms: u64,
    ) -> Result<Decision, LimiterError>;

    /// [`Limiter::check`] for a backend that decides without waiting (the
    /// memory one): the verify path then polls no boxed future. `None` means
    /// "call `check`".
    fn check_now(&self, _checks: &[LimitCheck], _cost: u64, _charge: Charge, _now_ms: u64) -> Option<Decision> {
        None
    }

    /// Takes a concurrency slot if fewer than `max` are held.
    async fn acquire(&self, key: &PermitKey, max: u32) -> Result<Option<Permit>, LimiterError>;

    /// The state as last seen, without I/O.
    fn health(&self) -> LimiterHealth;

    /// Probes the backend (bounded) and reports, for `/readyz`.
    async fn readiness(&self) -> LimiterHealth {
        self.health()
    }

    /// Calls answered by a fallback policy since start, for `/metrics`.
    fn fallbacks(&self) -> u64 {
        0
    }

    /// Whether counts outlive this process (Redis keeps them). Where they do
    /// not, the engine keeps credit balances in the store and hands them
    /// back with [`Limiter::restore`] (crates/keygate-engine/src/credits.rs).
    fn keeps_counts(&self) -> bool {
        false
    }

    /// Brings back one bucket of a check's counter, saved before a restart:
    /// the counter keeps the larger count of that bucket. Nothing to do for
    /// a backend that keeps its counts.
    fn restore(&self, _check: &LimitCheck, _bucket: Bucket, _now_ms: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached key holds one per limit (memory per cached key,
    /// BENCHMARKS.md): a field added here should be worth its bytes.
    #[test]
    fn a_limit_check_stays_small() {
        assert!(std::mem::size_of::<LimitCheck>() <= 72);
    }
}
