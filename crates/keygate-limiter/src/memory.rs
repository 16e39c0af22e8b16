//! The single-node limiter: a mutex per counter, taken in a fixed order when a
//! request has several limits, so the decision is atomic without a global lock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use keygate_core::ratelimit::{decide, Counter, Decision, Rule};
use moka::sync::Cache;
use moka::Expiry;
use smallvec::SmallVec;

use crate::{Charge, CounterKey, LimitCheck, Limiter, LimiterError, LimiterHealth, Permit, PermitKey};

type Shared = Arc<Mutex<Counter>>;
/// Requests have a handful of limits: keep them on the stack.
type Few<T> = SmallVec<[T; 4]>;

/// Drops a counter once nothing in it can count any more.
struct IdleAfterLookback;

impl Expiry<CounterKey, Shared> for IdleAfterLookback {
    fn expire_after_create(&self, key: &CounterKey, _: &Shared, _: Instant) -> Option<Duration> {
        Some(lookback(key))
    }

    fn expire_after_read(
        &self,
        key: &CounterKey,
        _: &Shared,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(lookback(key))
    }
}

fn lookback(key: &CounterKey) -> Duration {
    let rule = Rule::new(1, key.window_ms);
    Duration::from_millis(rule.lookback_ms())
}

pub struct MemoryLimiter {
    counters: Cache<CounterKey, Shared>,
    permits: Arc<DashMap<PermitKey, Arc<AtomicU32>>>,
}

impl MemoryLimiter {
    /// `max_counters` bounds memory; under pressure the least recently used
    /// counters are dropped first (a dropped counter forgets its counts).
    pub fn new(max_counters: u64) -> Self {
        let counters = Cache::builder()
            .max_capacity(max_counters)
            .expire_after(IdleAfterLookback)
            .build();
        Self {
            counters,
            permits: Arc::new(DashMap::new()),
        }
    }

    /// Counters currently held (approximate).
    pub fn counters(&self) -> u64 {
        self.counters.run_pending_tasks();
        self.counters.entry_count()
    }

    pub fn decide_now(&self, checks: &[LimitCheck], cost: u64, charge: Charge, now_ms: u64) -> Decision {
        // A counter may appear once per decision; locking it twice would deadlock.
        // Callers pass distinct counters (limits are validated), so this is a cheap check.
        let distinct = checks
            .iter()
            .enumerate()
            .all(|(i, a)| checks[..i].iter().all(|b| a.key != b.key));
        if !distinct {
            let mut unique: Vec<LimitCheck> = Vec::with_capacity(checks.len());
            for check in checks {
                if !unique.iter().any(|u| u.key == check.key) {
                    unique.push(check.clone());
                }
            }
            return self.decide_now(&unique, cost, charge, now_ms);
        }
        let shared: Few<Shared> = checks
            .iter()
            .map(|check| self.counters.get_with_by_ref(&check.key, Default::default))
            .collect();
        // Lock in address order so concurrent multi-limit decisions never deadlock.
        let mut order: Few<usize> = (0..shared.len()).collect();
        order.sort_unstable_by_key(|&i| Arc::as_ptr(&shared[i]) as usize);
        let mut guards: Few<Option<MutexGuard<'_, Counter>>> = (0..shared.len()).map(|_| None).collect();
        for i in order {
            guards[i] = Some(shared[i].lock().unwrap_or_else(|p| p.into_inner()));
        }
        let mut limits: Few<(Rule, &mut Counter)> = checks
            .iter()
            .zip(guards.iter_mut())
            .filter_map(|(check, guard)| guard.as_deref_mut().map(|counter| (check.rule, counter)))
            .collect();
        decide(&mut limits, now_ms, cost, charge == Charge::Consume)
    }

    pub fn acquire_now(&self, key: &PermitKey, max: u32) -> Option<Permit> {
        let slot = self.permits.entry(key.clone()).or_default().clone();
        let taken = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            (held < max).then_some(held + 1)
        });
        taken.ok()?;
        Some(Permit::new(move || {
            slot.fetch_sub(1, Ordering::AcqRel);
        }))
    }

    /// Permits held for a key, for tests and `/readyz`.
    pub fn held(&self, key: &PermitKey) -> u32 {
        self.permits.get(key).map_or(0, |slot| slot.load(Ordering::Acquire))
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    async fn check(
        &self,
        checks: &[LimitCheck],
        cost: u64,
        charge: Charge,
        now_ms: u64,
    ) -> Result<Decision, LimiterError> {
        Ok(self.decide_now(checks, cost, charge, now_ms))
    }

    async fn acquire(&self, key: &PermitKey, max: u32) -> Result<Option<Permit>, LimiterError> {
        Ok(self.acquire_now(key, max))
    }

    fn health(&self) -> LimiterHealth {
        LimiterHealth {
            backend: "memory",
            state: "up",
            detail: None,
        }
    }
}
