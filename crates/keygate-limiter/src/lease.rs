//! Leases: a node takes a block of a key's allowance from Redis and admits
//! from it locally, so most requests of a busy key make no round trip
//! (issue 18; the comparison with coalescing alone is in BENCHMARKS.md).
//!
//! # Exactness
//! A block is charged in Redis, to the bucket of the moment it is granted,
//! before any request is admitted from it, and the script grants it only
//! from the room every limit has left: the blocks of all nodes never add up
//! to more than a limit allows. A node admits from a block only until that
//! bucket ends, on its own monotonic clock counted from before the call (so
//! never later than Redis's clock): every request admitted from a block falls
//! in the bucket it was charged to, exactly as if Redis had decided it.
//!
//! # What it costs
//! What a block has left when its bucket ends is given back: with this
//! node's next call, or by the sweep ([`Leases::sweep`], every
//! [`SWEEP_EVERY`]). Until then another node may be refused an allowance
//! this one holds: under-admission, never over-admission. A block is at most
//! [`ROOM_SHARE`] of the room left, so a limit's last requests are decided in
//! Redis one at a time, and it grows only with use (doubled after a block ran
//! out within its bucket, halved after one ended with leftovers), so a key
//! seen now and then takes no block at all.
//!
//! Everything here is bookkeeping over `now` values; the Redis calls are in
//! `redis.rs`.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use keygate_core::ratelimit::Decision;
use parking_lot::Mutex;
use rustc_hash::FxBuildHasher;
use smallvec::SmallVec;

use crate::LimitCheck;

/// A block is at most this share of the room its tightest limit has left
/// (the script's `ROOM_SHARE`).
pub const ROOM_SHARE: u64 = 16;

/// How often leftovers of blocks whose bucket has ended are given back.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// A lease whose bucket ended this long ago, and that nobody asks for, is dropped.
const IDLE_AFTER: Duration = Duration::from_secs(10);

/// How long a request that asked for a block keeps others from asking too,
/// unless its answer comes first (a dropped request's claim runs out).
const ASKING_FOR: Duration = Duration::from_secs(1);

/// Allowance given back to one counter's bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Return {
    pub key: String,
    pub bucket: u64,
    pub amount: u64,
}

/// What the script granted one request: `grant` charged (its own cost
/// included), on Redis's clock (`decision.now_ms`).
#[derive(Debug)]
pub struct Grant<'a> {
    pub cost: u64,
    /// The request asked for a block ([`Leases::ask`] gave more than its cost).
    pub asked: bool,
    pub grant: u64,
    pub decision: &'a Decision,
    /// When the call was sent, on this node's clock.
    pub sent: Instant,
}

#[derive(Debug)]
struct Lease {
    /// Admitted locally from the current block since it was granted.
    used: u64,
    /// Still to admit from it.
    left: u64,
    /// The bucket the block was charged to, per check.
    buckets: SmallVec<[u64; 4]>,
    /// When the first of those buckets ends, on this node's clock.
    until: Instant,
    /// When it was granted, and the decision then (its remaining counts
    /// count the block as free).
    granted_at: Instant,
    decision: Decision,
    /// The block to ask for next.
    want: u64,
    asking_until: Option<Instant>,
}

impl Lease {
    fn new(now: Instant) -> Self {
        Self {
            used: 0,
            left: 0,
            buckets: SmallVec::new(),
            until: now,
            granted_at: now,
            decision: Decision {
                allowed: true,
                now_ms: 0,
                limits: Vec::new(),
                retry_at_ms: None,
            },
            want: 1,
            asking_until: None,
        }
    }

    /// The leftovers of a block whose bucket has ended, to give back.
    fn expire(&mut self, checks: &[LimitCheck], now: Instant, returns: &mut Vec<Return>) {
        if now >= self.until {
            self.give_back(checks, returns);
        }
    }

    /// Whatever the block has left, to be given back; the next block is smaller.
    fn give_back(&mut self, checks: &[LimitCheck], returns: &mut Vec<Return>) {
        if self.left == 0 {
            return;
        }
        returns.extend(checks.iter().zip(&self.buckets).map(|(check, &bucket)| Return {
            key: check.redis_key(),
            bucket,
            amount: self.left,
        }));
        self.left = 0;
        self.want = (self.want / 2).max(1);
    }

    /// A request admitted from the block: the decision as granted, less
    /// what the block has admitted since.
    fn admitted(&self, now: Instant) -> Decision {
        let elapsed = u64::try_from(now.saturating_duration_since(self.granted_at).as_millis()).unwrap_or(u64::MAX);
        let mut decision = self.decision.clone();
        decision.now_ms = decision.now_ms.saturating_add(elapsed);
        for limit in &mut decision.limits {
            limit.remaining = limit.remaining.saturating_sub(self.used);
        }
        decision
    }
}

/// This node's leases, one per set of checks.
pub struct Leases {
    max: u64,
    table: DashMap<Box<[LimitCheck]>, Mutex<Lease>, FxBuildHasher>,
    returns: Mutex<Vec<Return>>,
}

impl Leases {
    /// Blocks of at most `max` requests (at least 2: a block of one is a
    /// plain decision).
    pub fn new(max: u64) -> Self {
        Self {
            max: max.max(2),
            table: DashMap::with_hasher(FxBuildHasher),
            returns: Mutex::new(Vec::new()),
        }
    }

    /// Admits a request from a live block, without Redis; `None`: ask Redis.
    pub fn take(&self, checks: &[LimitCheck], cost: u64, now: Instant) -> Option<Decision> {
        let entry = self.table.get(checks)?;
        let mut lease = entry.lock();
        if now >= lease.until || lease.left < cost {
            return None;
        }
        lease.left -= cost;
        lease.used += cost;
        Some(lease.admitted(now))
    }

    /// What a request that goes to Redis asks for: its cost, or (the first
    /// to ask since the block ran out) a block. Gives back what an ended block
    /// has left, with this very call.
    pub fn ask(&self, checks: &[LimitCheck], cost: u64, now: Instant) -> u64 {
        let entry = self
            .table
            .entry(checks.into())
            .or_insert_with(|| Mutex::new(Lease::new(now)));
        let mut lease = entry.lock();
        if lease.asking_until.is_some_and(|until| now < until) {
            return cost;
        }
        if now < lease.until && lease.left < cost {
            // It ran out within its bucket: the key wants more.
            lease.want = lease.want.saturating_mul(2).min(self.max);
        }
        lease.expire(checks, now, &mut self.returns.lock());
        if lease.want <= cost {
            return cost;
        }
        lease.asking_until = Some(now + ASKING_FOR);
        lease.want
    }

    /// Records what the script granted an admitted request that asked
    /// with [`Leases::ask`].
    pub fn granted(&self, checks: &[LimitCheck], grant: Grant<'_>) {
        let Some(entry) = self.table.get(checks) else {
            return;
        };
        let mut lease = entry.lock();
        let extra = grant.grant.saturating_sub(grant.cost);
        if grant.asked {
            // Answered, with a block or without (too little room): another may ask.
            lease.asking_until = None;
        }
        if extra == 0 && grant.sent < lease.until && lease.left > 0 {
            // A plain decision while a block is live: the block stays.
            return;
        }
        // Whatever the block it replaces has left is given back.
        lease.give_back(checks, &mut self.returns.lock());
        let now_ms = grant.decision.now_ms;
        lease.buckets = checks.iter().map(|check| check.rule.bucket_of(now_ms)).collect();
        let ends_in_ms = checks
            .iter()
            .zip(&lease.buckets)
            .map(|(check, bucket)| (bucket + 1) * check.rule.bucket_ms() - now_ms)
            .min()
            .unwrap_or(0);
        lease.until = grant.sent + Duration::from_millis(ends_in_ms);
        lease.granted_at = grant.sent;
        lease.decision = grant.decision.clone();
        lease.used = 0;
        lease.left = extra;
    }

    /// A request that asked was refused, or its call failed: another may ask.
    pub fn not_granted(&self, checks: &[LimitCheck]) {
        if let Some(entry) = self.table.get(checks) {
            entry.lock().asking_until = None;
        }
    }

    /// Gives back what ended blocks have left, and forgets idle leases.
    pub fn sweep(&self, now: Instant) {
        let mut returns = Vec::new();
        self.table.retain(|checks, lease| {
            let lease = lease.get_mut();
            lease.expire(checks, now, &mut returns);
            let asking = lease.asking_until.is_some_and(|until| now < until);
            asking || now < lease.until + IDLE_AFTER
        });
        self.returns.lock().extend(returns);
    }

    /// Allowance a call could not take along (another slot's, on a
    /// cluster): the sweeper or a later call gives it back.
    pub fn give_back_later(&self, returns: Vec<Return>) {
        self.returns.lock().extend(returns);
    }

    /// The allowance to give back with the next call.
    pub fn drain_returns(&self) -> Vec<Return> {
        std::mem::take(&mut *self.returns.lock())
    }

    /// No lease held (idle ones are forgotten by the sweep).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keygate_core::ratelimit::{LimitState, Rule};

    use super::*;
    use crate::CounterKey;

    const MINUTE: u64 = 60_000;

    fn checks() -> Vec<LimitCheck> {
        vec![LimitCheck::new(
            CounterKey {
                owner: Arc::from("lineage"),
                resource: Arc::from("default"),
                window_ms: MINUTE,
            },
            Rule::new(1_000, MINUTE),
        )]
    }

    /// The decision the script's reply gives a request, at Redis time `now_ms`.
    fn decision(now_ms: u64, remaining: u64) -> Decision {
        Decision {
            allowed: true,
            now_ms,
            limits: vec![LimitState {
                rule: Rule::new(1_000, MINUTE),
                shadow_refused: false,
                refused: false,
                remaining,
                reset_ms: now_ms + MINUTE,
            }],
            retry_at_ms: None,
        }
    }

    fn grant(leases: &Leases, checks: &[LimitCheck], sent: Instant, now_ms: u64, grant: u64) {
        let decision = decision(now_ms, 900);
        leases.granted(
            checks,
            Grant {
                cost: 1,
                asked: grant > 1,
                grant,
                decision: &decision,
                sent,
            },
        );
    }

    #[test]
    fn a_block_grows_only_when_a_key_uses_it_up_within_its_bucket() {
        let leases = Leases::new(64);
        let checks = checks();
        let t0 = Instant::now();
        // The first request of a key asks for itself only.
        assert_eq!(leases.ask(&checks, 1, t0), 1);
        grant(&leases, &checks, t0, 10_000, 1);
        assert_eq!(leases.take(&checks, 1, t0), None, "no block yet");
        // A second request in the same bucket: the key is busy, ask for 2.
        assert_eq!(leases.ask(&checks, 1, t0), 2);
        assert_eq!(leases.ask(&checks, 1, t0), 1, "one request asks at a time");
        grant(&leases, &checks, t0, 10_000, 2);
        assert!(leases.take(&checks, 1, t0).is_some());
        assert_eq!(leases.take(&checks, 1, t0), None, "the block of 2 held one more");
        assert_eq!(leases.ask(&checks, 1, t0), 4);
    }

    #[test]
    fn a_block_admits_only_until_its_bucket_ends_and_then_gives_back_its_leftovers() {
        let leases = Leases::new(64);
        let checks = checks();
        let t0 = Instant::now();
        leases.ask(&checks, 1, t0);
        grant(&leases, &checks, t0, 10_000, 1);
        leases.ask(&checks, 1, t0);
        // Granted 300 ms into a 1 s bucket (a minute's buckets are 1 s).
        grant(&leases, &checks, t0, 10_300, 2);
        let admitted = leases.take(&checks, 1, t0 + Duration::from_millis(100)).unwrap();
        assert_eq!(admitted.now_ms, 10_400);
        assert_eq!(admitted.limits[0].remaining, 899, "the block's use counts down");
        leases.ask(&checks, 1, t0);
        grant(&leases, &checks, t0, 10_300, 4);
        let end = t0 + Duration::from_millis(700);
        assert!(leases.take(&checks, 1, end - Duration::from_millis(1)).is_some());
        assert_eq!(leases.take(&checks, 1, end), None, "not past the bucket's end");
        leases.sweep(end);
        assert_eq!(
            leases.drain_returns(),
            vec![Return {
                key: checks[0].redis_key(),
                bucket: 10,
                amount: 2
            }],
            "3 were granted beyond the request, 1 was used"
        );
        assert!(leases.drain_returns().is_empty(), "given back once");
        // It ended with leftovers: the next block is smaller.
        assert_eq!(leases.ask(&checks, 1, end), 2);
    }

    #[test]
    fn blocks_are_bounded_and_idle_leases_are_forgotten() {
        let leases = Leases::new(8);
        let checks = checks();
        let t0 = Instant::now();
        leases.ask(&checks, 1, t0);
        grant(&leases, &checks, t0, 10_000, 1);
        for _ in 0..10 {
            let want = leases.ask(&checks, 1, t0);
            assert!(want <= 8, "{want}");
            grant(&leases, &checks, t0, 10_000, want);
            while leases.take(&checks, 1, t0).is_some() {}
        }
        assert_eq!(leases.ask(&checks, 1, t0), 8);
        leases.not_granted(&checks);
        leases.sweep(t0 + Duration::from_secs(12));
        assert!(leases.is_empty());
    }

    #[test]
    fn a_plain_decision_leaves_a_live_block_alone() {
        let leases = Leases::new(64);
        let checks = checks();
        let t0 = Instant::now();
        leases.ask(&checks, 1, t0);
        grant(&leases, &checks, t0, 10_000, 1);
        leases.ask(&checks, 1, t0);
        grant(&leases, &checks, t0, 10_000, 3);
        // A request that went to Redis while the block was asked for.
        grant(&leases, &checks, t0, 10_000, 1);
        assert!(leases.take(&checks, 1, t0).is_some());
        assert!(leases.take(&checks, 1, t0).is_some());
        assert_eq!(leases.take(&checks, 1, t0), None);
    }
}
