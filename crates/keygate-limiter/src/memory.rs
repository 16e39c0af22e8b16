//! The single-node limiter: a mutex per counter, taken in a fixed order when a
//! request has several limits, so the decision is atomic without a global lock.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, MutexGuard};

use async_trait::async_trait;
use dashmap::DashMap;
use keygate_core::prefetch::prefetch;
use keygate_core::ratelimit::{charge_anyway, decide, Bucket, Counter, Decision, Rule};
use rustc_hash::FxBuildHasher;
use smallvec::SmallVec;

use crate::{Charge, CounterKey, LimitCheck, Limiter, LimiterError, LimiterHealth, Permit, PermitKey};

type Shared = Arc<Node>;

/// A counter and the key the table finds it by, in one allocation: the
/// table's entries are one pointer each, where a key beside a pointer was
/// three. A hash table keeps room for up to twice its entries, so this is
/// about 17 bytes a key less at a million keys (memory per cached key,
/// BENCHMARKS.md).
#[derive(Debug)]
struct Node {
    key: CounterKey,
    slot: Mutex<Slot>,
}

impl Node {
    fn new(key: CounterKey, limiter: u32) -> Shared {
        Arc::new(Self {
            key,
            slot: Mutex::new(Slot::new(limiter)),
        })
    }
}

/// A node as the counter table holds it: found, hashed and compared by its key.
#[derive(Debug, Clone)]
struct Entry(Shared);

impl Borrow<CounterKey> for Entry {
    fn borrow(&self) -> &CounterKey {
        &self.0.key
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for Entry {}

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state);
    }
}

/// A counter in the table, or one taken out of it.
#[derive(Debug)]
struct Slot {
    counter: Counter,
    /// Set, under the slot's lock, when the table drops it (idle, or evicted
    /// when full): a [`CounterCell`] that still points here must look the
    /// counter up again, or it would count where no one else does.
    retired: bool,
    /// The [`MemoryLimiter`] whose table holds it. Kept here, in the
    /// counter's padding, rather than beside each cell's pointer (memory per
    /// cached key, BENCHMARKS.md).
    limiter: u32,
}

impl Slot {
    fn new(limiter: u32) -> Self {
        Self {
            counter: Counter::default(),
            retired: false,
            limiter,
        }
    }

    /// Whether `limiter` counts here: a cell may point into another
    /// limiter's table, or at a counter its table has dropped.
    fn counts_for(&self, limiter: u32) -> bool {
        !self.retired && self.limiter == limiter
    }
}

/// A check's handle on its counter in a [`MemoryLimiter`] (see
/// [`LimitCheck`]): empty until the first decision, then set for good. It
/// is read without a lock, a count or a store: a plain load of one pointer,
/// which lets a caller prefetch the counter ([`Self::touch`]) and a
/// decision lock it without an `Arc` count on its line. A counter its table
/// has dropped since (idle, or evicted when full), or one of another
/// limiter's table, is found out under the counter's lock; the decision
/// then looks its counter up in the table, as it does until the check is
/// made anew (a cached key's checks are at each re-read of the key,
/// crates/keygate-engine/src/verifier/limits.rs). A clone starts empty; it
/// is a cache, so every cell equals every other.
#[derive(Default)]
pub struct CounterCell(OnceLock<Shared>);

impl CounterCell {
    fn get(&self) -> Option<&Node> {
        self.0.get().map(|shared| &**shared)
    }

    fn set(&self, shared: Shared) {
        // Another decision may have set it first: both found the table's.
        let _ = self.0.set(shared);
    }

    /// Starts loading the counter's line, without waiting for it.
    pub(crate) fn touch(&self) {
        if let Some(node) = self.get() {
            prefetch(node);
        }
    }
}

/// A counter held for one decision: the check's own, or one the table found.
enum Held<'c> {
    Cell(&'c Node),
    Table(Shared),
}

impl std::ops::Deref for Held<'_> {
    type Target = Node;

    fn deref(&self) -> &Node {
        match self {
            Self::Cell(node) => node,
            Self::Table(shared) => shared,
        }
    }
}

impl Clone for CounterCell {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for CounterCell {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for CounterCell {}

impl Hash for CounterCell {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

impl std::fmt::Debug for CounterCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CounterCell")
    }
}

/// Names each [`MemoryLimiter`] for the cells that point into it.
static NEXT_LIMITER_ID: AtomicU32 = AtomicU32::new(1);

/// Requests have a handful of limits: keep them on the stack.
type Few<T> = SmallVec<[T; 4]>;

/// Sweep idle counters after at least this many new ones.
const SWEEP_EVERY: u64 = 1024;

pub struct MemoryLimiter {
    /// Process-wide unique: which limiter a [`CounterCell`] points into.
    id: u32,
    /// FxHash: counter keys are server-generated ids and configured resource
    /// names, not attacker-chosen strings, so HashDoS resistance buys nothing here.
    counters: DashMap<Entry, (), FxBuildHasher>,
    max_counters: usize,
    created: AtomicU64,
    permits: Arc<DashMap<PermitKey, Arc<AtomicU32>>>,
}

impl MemoryLimiter {
    /// `max_counters` bounds memory. Idle counters (nothing left in their
    /// window) are swept after as many new counters as the table holds, and
    /// whenever it is full; if it is still full, an arbitrary counter is
    /// dropped, which forgets its counts (logged).
    pub fn new(max_counters: u64) -> Self {
        Self {
            id: NEXT_LIMITER_ID.fetch_add(1, Ordering::Relaxed),
            counters: DashMap::with_hasher(FxBuildHasher),
            max_counters: usize::try_from(max_counters).unwrap_or(usize::MAX).max(1),
            created: AtomicU64::new(0),
            permits: Arc::new(DashMap::new()),
        }
    }

    /// Counters currently held.
    pub fn counters(&self) -> usize {
        self.counters.len()
    }

    /// Whether the table holds `key`'s counter, without making one.
    pub fn holds(&self, key: &CounterKey) -> bool {
        self.counters.contains_key(key)
    }

    /// Drops every counter with nothing left in its window at `now_ms`.
    pub fn sweep(&self, now_ms: u64) {
        self.counters.retain(|Entry(node), ()| {
            let rule = Rule::new(1, node.key.window_ms());
            let mut slot = node.slot.lock();
            slot.retired = slot.counter.is_idle(&rule, now_ms);
            !slot.retired
        });
    }

    /// The check's counter: from its cell, or from the table (and then kept
    /// in the cell if it is empty). `from_table` when the cell's counter
    /// does not count here (see [`CounterCell`]).
    fn resolve<'c>(&self, check: &'c LimitCheck, from_table: bool, now_ms: u64) -> Held<'c> {
        if !from_table {
            if let Some(node) = check.counter.get() {
                return Held::Cell(node);
            }
        }
        let shared = self.counter(&check.key, now_ms);
        if !from_table {
            check.counter.set(shared.clone());
        }
        Held::Table(shared)
    }

    fn counter(&self, key: &CounterKey, now_ms: u64) -> Shared {
        if let Some(entry) = self.counters.get(key) {
            return entry.key().0.clone();
        }
        // Sweep after as many new counters as the table holds (at least 1024):
        // each sweep is O(table), so this keeps it O(1) per new counter.
        let created = self.created.fetch_add(1, Ordering::Relaxed) + 1;
        let due = created >= (self.counters.len() as u64).max(SWEEP_EVERY);
        if due || self.counters.len() >= self.max_counters {
            self.created.store(0, Ordering::Relaxed);
            self.sweep(now_ms);
        }
        if self.counters.len() >= self.max_counters {
            let victim = self.counters.iter().next().map(|entry| entry.key().0.key.clone());
            if let Some(victim) = victim {
                tracing::warn!(
                    max = self.max_counters,
                    "rate-limit counters full; dropping one (raise limiter.max_counters)"
                );
                // Retired while the table's shard is locked, as a sweep does:
                // no holder charges it between its removal and the mark.
                self.counters.remove_if(&victim, |Entry(node), ()| {
                    node.slot.lock().retired = true;
                    true
                });
            }
        }
        // Another request may have added it since the look above: the
        // table keeps the first, and this one's new node is dropped.
        let entry = self.counters.entry(Entry(Node::new(key.clone(), self.id)));
        entry.or_insert(()).key().0.clone()
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
        let mut from_table: Few<bool> = Few::from_elem(false, checks.len());
        loop {
            let held: Few<Held<'_>> = checks
                .iter()
                .zip(&from_table)
                .map(|(check, &from_table)| self.resolve(check, from_table, now_ms))
                .collect();
            // Lock in address order so concurrent multi-limit decisions never deadlock.
            let mut order: Few<usize> = (0..held.len()).collect();
            order.sort_unstable_by_key(|&i| std::ptr::from_ref::<Node>(&held[i]) as usize);
            let mut guards: Few<Option<MutexGuard<'_, Slot>>> = (0..held.len()).map(|_| None).collect();
            for i in order {
                guards[i] = Some(held[i].slot.lock());
            }
            let mut elsewhere = false;
            for (from_table, guard) in from_table.iter_mut().zip(&guards) {
                if guard.as_ref().is_some_and(|slot| !slot.counts_for(self.id)) {
                    *from_table = true;
                    elsewhere = true;
                }
            }
            if elsewhere {
                // Dropped from the table since the cell was filled, or
                // another limiter's: look again, in this one's table.
                continue;
            }
            return decide_locked(checks, &mut guards, cost, charge, now_ms);
        }
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
}

/// The decision over counters locked in the checks' order.
fn decide_locked(
    checks: &[LimitCheck],
    guards: &mut [Option<MutexGuard<'_, Slot>>],
    cost: u64,
    charge: Charge,
    now_ms: u64,
) -> Decision {
    let mut limits: Few<(Rule, &mut Counter)> = checks
        .iter()
        .zip(guards.iter_mut())
        .filter_map(|(check, guard)| guard.as_deref_mut().map(|slot| (*check.rule, &mut slot.counter)))
        .collect();
    match charge {
        Charge::Force => charge_anyway(&mut limits, now_ms, cost),
        Charge::Consume | Charge::DryRun => decide(&mut limits, now_ms, cost, charge == Charge::Consume),
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

    fn check_now(&self, checks: &[LimitCheck], cost: u64, charge: Charge, now_ms: u64) -> Option<Decision> {
        Some(self.decide_now(checks, cost, charge, now_ms))
    }

    fn restore(&self, check: &LimitCheck, bucket: Bucket, now_ms: u64) {
        let mut from_table = false;
        loop {
            let held = self.resolve(check, from_table, now_ms);
            let mut slot = held.slot.lock();
            if !slot.counts_for(self.id) {
                from_table = true;
                continue;
            }
            slot.counter.merge(&check.rule, bucket);
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every limit of every cached key has one (memory per cached key,
    /// BENCHMARKS.md): its allocation is the key, the lock, the counter and
    /// 16 bytes of reference counts; the table holds a pointer to it.
    #[test]
    fn a_counter_stays_small() {
        assert!(std::mem::size_of::<Node>() <= 64);
        assert_eq!(std::mem::size_of::<Entry>(), 8);
    }

    #[test]
    fn the_table_finds_a_counter_by_its_key_and_keeps_one_per_key() {
        let limiter = MemoryLimiter::new(10);
        let key = || CounterKey::new("key_1", "default", 60_000);
        let first = limiter.counter(&key(), 0);
        let again = limiter.counter(&key(), 0);
        assert!(Arc::ptr_eq(&first, &again));
        let other = limiter.counter(&CounterKey::new("key_2", "default", 60_000), 0);
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(limiter.counters(), 2);
    }
}
