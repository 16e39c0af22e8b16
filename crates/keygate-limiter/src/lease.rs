//! Leases: a node takes a block of a key's allowance from Redis and admits
//! from it locally, so most requests of a busy key make no round trip
//! (issue 18; the comparison with coalescing alone is in BENCHMARKS.md).
//!
//! # Exactness
//! A block is charged in Redis before any request is admitted from it, and
//! the script grants it only from the room every limit has left: the blocks
//! of all nodes never add up to more than a limit allows. It is charged to a
//! bucket with that bucket's last millisecond as its newest time, so it
//! counts for as long as a request admitted up to then must. A node admits
//! from a block only until that bucket ends, on its own monotonic clock
//! counted from before the call (so never later than Redis's clock): every
//! request admitted from a block counts in Redis at least as long as it
//! would had Redis decided it.
//!
//! # The block ahead
//! A block granted to a request is charged to the bucket of the moment. Once
//! a key has used half of its block, or half of the block's life has gone,
//! the node reserves the next block in the background ([`Leases::reserved`],
//! from the keeper task in redis.rs), charged to the *next* bucket and good
//! until that bucket ends. It takes over when the current block runs out or
//! its bucket ends, so a key in steady use never waits for Redis. The price
//! is holding that allowance up to a bucket early: under-admission, never
//! over-admission, since it is counted from the moment it is charged.
//!
//! # What it costs
//! What a block has left when its bucket ends is given back: with this
//! node's next call, or by the sweep ([`Leases::sweep`], every
//! [`SWEEP_EVERY`]). Until then another node may be refused an allowance
//! this one holds: under-admission, never over-admission. A block is at most
//! [`ROOM_SHARE`] of the room left, so a limit's last requests are decided in
//! Redis one at a time, and it grows only with use (after a block ran out
//! within its bucket, to twice its size or to what the key's rate over it
//! asks for, [`Block::next_size`]; halved after one ended with leftovers),
//! so a key seen now and then takes no block at all.
//!
//! Everything here is bookkeeping over `now` values; the Redis calls are in
//! `redis.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use keygate_core::ratelimit::Decision;
use parking_lot::Mutex;
use rustc_hash::FxBuildHasher;
use smallvec::SmallVec;
use tokio::sync::Notify;

use crate::LimitCheck;

/// A block is at most this share of the room its tightest limit has left
/// (the script's `ROOM_SHARE`).
pub const ROOM_SHARE: u64 = 16;

/// How often leftovers of blocks whose bucket has ended are given back.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// A lease whose bucket ended this long ago, and that nobody asks for, is dropped.
const IDLE_AFTER: Duration = Duration::from_secs(10);

/// A block used up sooner than this says nothing of its key's rate (a
/// burst): the next is only twice its size.
const RATE_AFTER: Duration = Duration::from_millis(10);

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

/// A block to reserve ahead for one set of checks ([`Leases::drain_reservations`]).
#[derive(Debug)]
pub struct Reservation {
    pub checks: Box<[LimitCheck]>,
    pub want: u64,
}

/// Which bucket a block is charged to: the one of the moment Redis decides,
/// or the one after it (a block reserved ahead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Current,
    Next,
}

impl Target {
    /// Buckets after the current one (the script's `ahead` argument).
    pub fn offset(self) -> u64 {
        match self {
            Self::Current => 0,
            Self::Next => 1,
        }
    }
}

/// Allowance charged in Redis, admitted from locally until `until`.
#[derive(Debug)]
struct Block {
    /// Admitted locally since it was granted.
    used: u64,
    /// Still to admit from it.
    left: u64,
    /// The bucket it was charged to, per check.
    buckets: SmallVec<[u64; 4]>,
    /// When the first of those buckets ends, on this node's clock.
    until: Instant,
    /// When it was granted, and the decision then (its remaining counts
    /// count the block as free).
    granted_at: Instant,
    decision: Decision,
}

impl Block {
    fn none(now: Instant) -> Self {
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
        }
    }

    /// `amount` granted by Redis at `decision.now_ms` to the bucket `target`,
    /// for the call sent at `sent`.
    fn granted(checks: &[LimitCheck], amount: u64, target: Target, decision: &Decision, sent: Instant) -> Self {
        let now_ms = decision.now_ms;
        let buckets: SmallVec<[u64; 4]> = checks
            .iter()
            .map(|check| check.rule.bucket_of(now_ms) + target.offset())
            .collect();
        let ends_in_ms = checks
            .iter()
            .zip(&buckets)
            .map(|(check, bucket)| ((bucket + 1) * check.rule.bucket_ms()).saturating_sub(now_ms))
            .min()
            .unwrap_or(0);
        Self {
            used: 0,
            left: amount,
            buckets,
            until: sent + Duration::from_millis(ends_in_ms),
            granted_at: sent,
            decision: decision.clone(),
        }
    }

    /// The block to ask for after this one ran out within its bucket: twice
    /// `want`, or what the key would use at its rate over this block in
    /// half of the life this block had, whichever is larger, and at most
    /// `max`. A key in steady use so reaches its size in a step or two,
    /// where doubling alone took a call per doubling (1, 2, 4, ... 64: the
    /// first minute of every key, BENCHMARKS.md).
    fn next_size(&self, want: u64, now: Instant, max: u64) -> u64 {
        let doubled = want.saturating_mul(2);
        let elapsed = now.saturating_duration_since(self.granted_at);
        let at_rate = if elapsed < RATE_AFTER {
            0
        } else {
            let life = self.until.saturating_duration_since(self.granted_at);
            let size = u128::from(self.used) * life.as_millis() / (2 * elapsed.as_millis());
            u64::try_from(size).unwrap_or(u64::MAX)
        };
        doubled.max(at_rate).min(max)
    }

    fn fits(&self, cost: u64, now: Instant) -> bool {
        now < self.until && self.left >= cost
    }

    /// Half of it admitted, or half of its life gone: time to reserve the next.
    fn half_spent(&self, now: Instant) -> bool {
        let life = self.until.saturating_duration_since(self.granted_at);
        self.used >= self.left || now >= self.granted_at + life / 2
    }

    /// Whatever it has left, to be given back; whether there was any.
    fn give_back(&mut self, checks: &[LimitCheck], returns: &mut Vec<Return>) -> bool {
        if self.left == 0 {
            return false;
        }
        returns.extend(checks.iter().zip(&self.buckets).map(|(check, &bucket)| Return {
            key: check.redis_key(),
            bucket,
            amount: self.left,
        }));
        self.left = 0;
        true
    }

    /// Admits a request: the decision as granted, less what the block has
    /// admitted since.
    fn admit(&mut self, cost: u64, now: Instant) -> Decision {
        self.left -= cost;
        self.used += cost;
        let elapsed = u64::try_from(now.saturating_duration_since(self.granted_at).as_millis()).unwrap_or(u64::MAX);
        let mut decision = self.decision.clone();
        decision.now_ms = decision.now_ms.saturating_add(elapsed);
        for limit in &mut decision.limits {
            limit.remaining = limit.remaining.saturating_sub(self.used);
        }
        decision
    }
}

#[derive(Debug)]
struct Lease {
    block: Block,
    /// The block reserved ahead, charged to the bucket after `block`'s.
    ahead: Option<Block>,
    /// The block to ask for next.
    want: u64,
    /// A block ahead was asked for since `block` was granted (granted or
    /// not: one reservation per block).
    reserved: bool,
    asking_until: Option<Instant>,
}

impl Lease {
    fn new(now: Instant) -> Self {
        Self {
            block: Block::none(now),
            ahead: None,
            want: 1,
            reserved: false,
            asking_until: None,
        }
    }

    fn asking(&self, now: Instant) -> bool {
        self.asking_until.is_some_and(|until| now < until)
    }

    /// When the last of its blocks ends.
    fn until(&self) -> Instant {
        self.ahead
            .as_ref()
            .map_or(self.block.until, |ahead| ahead.until.max(self.block.until))
    }

    /// Replaces the current block, giving back what it has left; the next
    /// block asked for grows if it ran out within its bucket
    /// ([`Block::next_size`]) and halves if it ended with leftovers.
    fn replace(&mut self, block: Block, checks: &[LimitCheck], now: Instant, max: u64, returns: &mut Vec<Return>) {
        let ran_out = now < self.block.until;
        let leftovers = self.block.give_back(checks, returns);
        if ran_out {
            self.want = self.block.next_size(self.want, now, max);
        } else if leftovers {
            self.want = (self.want / 2).max(1);
        }
        self.block = block;
        self.reserved = false;
    }

    /// Gives back what the current block has left; a block that ended with
    /// leftovers was too large, so the next one is half the size.
    fn retire_block(&mut self, checks: &[LimitCheck], returns: &mut Vec<Return>) {
        if self.block.give_back(checks, returns) {
            self.want = (self.want / 2).max(1);
        }
    }

    /// Gives back the leftovers of blocks whose bucket has ended; the block
    /// ahead takes over from an ended one.
    fn expire(&mut self, checks: &[LimitCheck], now: Instant, returns: &mut Vec<Return>) {
        if now < self.block.until {
            return;
        }
        self.retire_block(checks, returns);
        if let Some(mut ahead) = self.ahead.take() {
            if now < ahead.until {
                self.block = ahead;
                self.reserved = false;
            } else if ahead.give_back(checks, returns) {
                self.want = (self.want / 2).max(1);
            }
        }
    }

    /// When a sweep next has work on this lease: its block or the block
    /// ahead ends (leftovers to give back), or it is forgotten.
    fn next_sweep(&self, now: Instant) -> Instant {
        let forgotten = (self.until() + IDLE_AFTER).max(self.asking_until.unwrap_or(now));
        [Some(self.block.until), self.ahead.as_ref().map(|ahead| ahead.until)]
            .into_iter()
            .flatten()
            .filter(|&until| until > now)
            .fold(forgotten, Instant::min)
    }

    /// Whether to reserve the next block now.
    fn wants_ahead(&self, now: Instant) -> bool {
        !self.reserved && self.ahead.is_none() && self.want > 1 && !self.asking(now) && self.block.half_spent(now)
    }
}

/// This node's leases, one per set of checks.
pub struct Leases {
    max: u64,
    table: DashMap<Box<[LimitCheck]>, Mutex<Lease>, FxBuildHasher>,
    returns: Mutex<Vec<Return>>,
    reservations: Mutex<Vec<Reservation>>,
    /// When [`Leases::sweep`] next has work (`None`: no lease). Blocks of a
    /// rule end together, at its buckets' ends, so most sweeps have none,
    /// and visiting every lease took 0.45 ms at 10,000 keys, on the thread
    /// that serves requests (BENCHMARKS.md).
    next_sweep: Mutex<Option<Instant>>,
    /// Wakes the keeper task (redis.rs) when a reservation is queued.
    wake: Arc<Notify>,
}

impl Leases {
    /// Blocks of at most `max` requests (at least 2: a block of one is a
    /// plain decision).
    pub fn new(max: u64) -> Self {
        Self {
            max: max.max(2),
            table: DashMap::with_hasher(FxBuildHasher),
            returns: Mutex::new(Vec::new()),
            reservations: Mutex::new(Vec::new()),
            next_sweep: Mutex::new(None),
            wake: Arc::default(),
        }
    }

    /// Admits a request from a live block, without Redis; `None`: ask
    /// Redis. May queue the reservation of the next block.
    pub fn take(&self, checks: &[LimitCheck], cost: u64, now: Instant) -> Option<Decision> {
        let entry = self.table.get(checks)?;
        let mut lease = entry.lock();
        if !lease.block.fits(cost, now) {
            let ahead = lease.ahead.take_if(|ahead| ahead.fits(cost, now))?;
            lease.replace(ahead, checks, now, self.max, &mut self.returns.lock());
        }
        let decision = lease.block.admit(cost, now);
        if lease.wants_ahead(now) {
            lease.reserved = true;
            lease.asking_until = Some(now + ASKING_FOR);
            self.reservations.lock().push(Reservation {
                checks: checks.into(),
                want: lease.want,
            });
            self.wake.notify_one();
        }
        Some(decision)
    }

    /// What a request that goes to Redis asks for: its cost, or (the first
    /// to ask since the block ran out) a block. Gives back what an ended block
    /// has left, with this very call.
    pub fn ask(&self, checks: &[LimitCheck], cost: u64, now: Instant) -> u64 {
        let entry = self.table.entry(checks.into()).or_insert_with(|| {
            self.sweep_at(now + IDLE_AFTER);
            Mutex::new(Lease::new(now))
        });
        let mut lease = entry.lock();
        if lease.asking(now) {
            return cost;
        }
        if now < lease.block.until && lease.block.left < cost {
            // It ran out within its bucket: the key wants more.
            lease.want = lease.block.next_size(lease.want, now, self.max);
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
        if extra == 0 && grant.sent < lease.block.until && lease.block.left > 0 {
            // A plain decision while a block is live: the block stays.
            return;
        }
        // Whatever the block it replaces has left is given back.
        lease.retire_block(checks, &mut self.returns.lock());
        lease.block = Block::granted(checks, extra, Target::Current, grant.decision, grant.sent);
        lease.reserved = false;
        self.sweep_at(lease.block.until);
    }

    /// Records the block reserved ahead (`grant` of it, perhaps none),
    /// decided by Redis at `decision.now_ms` for the call sent at `sent`.
    pub fn reserved(&self, checks: &[LimitCheck], grant: u64, decision: &Decision, sent: Instant) {
        let Some(entry) = self.table.get(checks) else {
            // Forgotten meanwhile: the grant goes straight back.
            if grant > 0 {
                let mut returns = self.returns.lock();
                Block::granted(checks, grant, Target::Next, decision, sent).give_back(checks, &mut returns);
            }
            return;
        };
        let mut lease = entry.lock();
        lease.asking_until = None;
        if grant == 0 {
            return;
        }
        let block = Block::granted(checks, grant, Target::Next, decision, sent);
        self.sweep_at(block.until);
        let mut returns = self.returns.lock();
        if let Some(mut old) = lease.ahead.replace(block) {
            old.give_back(checks, &mut returns);
        }
    }

    /// A request that asked was refused, or its call failed: another may ask.
    pub fn not_granted(&self, checks: &[LimitCheck]) {
        if let Some(entry) = self.table.get(checks) {
            entry.lock().asking_until = None;
        }
    }

    /// Gives back what ended blocks have left, and forgets idle leases;
    /// returns at once while no block has ended and no lease is idle.
    pub fn sweep(&self, now: Instant) {
        if self.next_sweep.lock().take_if(|at| *at <= now).is_none() {
            return;
        }
        let mut returns = Vec::new();
        self.table.retain(|checks, lease| {
            let lease = lease.get_mut();
            lease.expire(checks, now, &mut returns);
            let kept = lease.asking(now) || now < lease.until() + IDLE_AFTER;
            if kept {
                self.sweep_at(lease.next_sweep(now));
            }
            kept
        });
        self.returns.lock().extend(returns);
    }

    /// A sweep has work at `at` (or earlier, if another lease's is). Taken
    /// under a table shard's lock too (in `ask` and `sweep`), never the
    /// other way round.
    fn sweep_at(&self, at: Instant) {
        let mut next = self.next_sweep.lock();
        *next = Some(next.map_or(at, |next| next.min(at)));
    }

    /// When the next sweep has work.
    #[cfg(test)]
    fn sweep_due(&self) -> Option<Instant> {
        *self.next_sweep.lock()
    }

    /// Allowance a call could not take along (another slot's, on a
    /// cluster): the keeper or a later call gives it back.
    pub fn give_back_later(&self, returns: Vec<Return>) {
        self.returns.lock().extend(returns);
    }

    /// The allowance to give back with the next call.
    pub fn drain_returns(&self) -> Vec<Return> {
        std::mem::take(&mut *self.returns.lock())
    }

    /// The blocks to reserve ahead, queued since the last call.
    pub fn drain_reservations(&self) -> Vec<Reservation> {
        std::mem::take(&mut *self.reservations.lock())
    }

    /// What the keeper waits on: notified when a reservation is queued
    /// (it holds this, not the leases, so they go when the limiter does).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// No lease held (idle ones are forgotten by the sweep).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use keygate_core::ratelimit::{LimitState, Rule};

    use super::*;
    use crate::CounterKey;

    const MINUTE: u64 = 60_000;

    fn checks() -> Vec<LimitCheck> {
        checks_of("lineage", 1_000, MINUTE)
    }

    /// One limit of `limit` per `window_ms` on `owner`'s default resource.
    fn checks_of(owner: &str, limit: u64, window_ms: u64) -> Vec<LimitCheck> {
        vec![LimitCheck::new(
            CounterKey::new(owner, "default", window_ms),
            Rule::new(limit, window_ms),
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

    /// A key that asked twice in second 10: a plain decision, then a block
    /// of `granted` (its own request included) at Redis time `now_ms`.
    fn leased(granted: u64, now_ms: u64) -> (Leases, Vec<LimitCheck>, Instant) {
        let leases = Leases::new(64);
        let checks = checks();
        let t0 = Instant::now();
        leases.ask(&checks, 1, t0);
        grant(&leases, &checks, t0, 10_000, 1);
        assert_eq!(
            leases.ask(&checks, 1, t0),
            2,
            "a second request in its bucket asks for a block"
        );
        grant(&leases, &checks, t0, now_ms, granted);
        (leases, checks, t0)
    }

    /// Answers every queued reservation: `amount` granted at Redis time `now_ms`.
    fn answer_reservations(leases: &Leases, sent: Instant, now_ms: u64, amount: u64) -> Vec<u64> {
        let reservations = leases.drain_reservations();
        for reservation in &reservations {
            leases.reserved(&reservation.checks, amount, &decision(now_ms, 800), sent);
        }
        reservations.iter().map(|reservation| reservation.want).collect()
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
        // Half of the block is used: the next one is reserved ahead.
        assert_eq!(answer_reservations(&leases, t0, 10_000, 0), [2], "no room for it");
        assert_eq!(leases.take(&checks, 1, t0), None, "the block of 2 held one more");
        assert_eq!(leases.ask(&checks, 1, t0), 4);
    }

    #[test]
    fn a_block_admits_only_until_its_bucket_ends_and_then_gives_back_its_leftovers() {
        // Granted 300 ms into a 1 s bucket (a minute's buckets are 1 s).
        let (leases, checks, t0) = leased(2, 10_300);
        let admitted = leases.take(&checks, 1, t0 + Duration::from_millis(100)).unwrap();
        assert_eq!(admitted.now_ms, 10_400);
        assert_eq!(admitted.limits[0].remaining, 899, "the block's use counts down");
        answer_reservations(&leases, t0, 10_300, 0);
        leases.ask(&checks, 1, t0);
        grant(&leases, &checks, t0, 10_300, 4);
        let end = t0 + Duration::from_millis(700);
        assert!(leases.take(&checks, 1, end - Duration::from_millis(1)).is_some());
        answer_reservations(&leases, t0, 10_300, 0);
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
    fn a_key_in_steady_use_reaches_its_block_size_in_one_step() {
        const HOUR: u64 = 60 * MINUTE;
        // An hour's limit: buckets of a minute.
        let checks = checks_of("steady", 100_000, HOUR);
        let leases = Leases::new(64);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        leases.ask(&checks, 1, t0);
        grant(&leases, &checks, t0, 10_000, 1);
        assert_eq!(leases.ask(&checks, 1, at(200)), 2, "nothing was used yet: it doubles");
        grant(&leases, &checks, at(200), 10_200, 2);
        assert!(leases.take(&checks, 1, at(300)).is_some());
        answer_reservations(&leases, at(300), 10_300, 0);
        // Used up in 200 ms, 49.8 s before its bucket ends: half of that at
        // 5 a second would be about 124; blocks are at most 64.
        assert_eq!(leases.ask(&checks, 1, at(400)), 64);
        // Another key, used up after 20 s: a rate that small only doubles.
        let slow = checks_of("slow", 100_000, HOUR);
        leases.ask(&slow, 1, t0);
        grant(&leases, &slow, t0, 10_000, 1);
        assert_eq!(leases.ask(&slow, 1, at(100)), 2);
        grant(&leases, &slow, at(100), 10_100, 2);
        assert!(leases.take(&slow, 1, at(10_000)).is_some());
        answer_reservations(&leases, at(10_000), 20_000, 0);
        assert_eq!(leases.ask(&slow, 1, at(20_100)), 4);
    }

    #[test]
    fn a_sweep_has_work_only_once_a_block_has_ended_or_a_lease_is_idle() {
        // Granted 300 ms into a 1 s bucket: the block ends 700 ms later.
        let (leases, checks, t0) = leased(2, 10_300);
        let end = t0 + Duration::from_millis(700);
        assert_eq!(leases.sweep_due(), Some(end));
        leases.sweep(end - Duration::from_millis(1));
        assert_eq!(leases.sweep_due(), Some(end), "nothing had ended");
        assert!(leases.drain_returns().is_empty());
        leases.sweep(end);
        assert_eq!(leases.drain_returns().len(), 1, "the block's leftover");
        assert_eq!(leases.sweep_due(), Some(end + IDLE_AFTER), "then the lease is idle");
        // A block ahead for another key is due at its own end.
        let other = checks_of("other", 1_000, MINUTE);
        leases.ask(&other, 1, end);
        leases.reserved(&other, 3, &decision(11_000, 800), end);
        assert_eq!(leases.sweep_due(), Some(end + Duration::from_millis(2_000)));
        leases.sweep(end + IDLE_AFTER);
        assert!(
            leases.table.get(checks.as_slice()).is_none(),
            "the idle lease is forgotten"
        );
        assert_eq!(leases.drain_returns().len(), 1, "the ended block ahead's 3");
        leases.sweep(end + Duration::from_millis(2_000) + IDLE_AFTER);
        assert!(leases.is_empty());
        assert_eq!(leases.sweep_due(), None, "no lease, no sweep");
    }

    #[test]
    fn the_block_reserved_ahead_takes_over_when_the_bucket_ends() {
        // A block of 7 beyond the request, 300 ms into second 10.
        let (leases, checks, t0) = leased(8, 10_300);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(leases.take(&checks, 1, at(100)).is_some());
        assert!(
            leases.drain_reservations().is_empty(),
            "a quarter used, a third of its life gone"
        );
        assert!(leases.take(&checks, 1, at(350)).is_some());
        // Half of its life is gone: a block ahead is asked for, once.
        assert!(leases.take(&checks, 1, at(360)).is_some());
        assert_eq!(answer_reservations(&leases, at(360), 10_660, 8), [2]);
        assert!(leases.take(&checks, 1, at(400)).is_some());
        assert!(leases.drain_reservations().is_empty(), "one reservation per block");
        // Second 10 ends 700 ms after the grant; the block ahead (charged to
        // second 11) takes over, and its figures are those of its grant.
        let admitted = leases.take(&checks, 1, at(700)).unwrap();
        assert_eq!(admitted.now_ms, 11_000);
        assert_eq!(admitted.limits[0].remaining, 799);
        assert_eq!(
            leases.drain_returns(),
            vec![Return {
                key: checks[0].redis_key(),
                bucket: 10,
                amount: 3
            }],
            "the block of second 10 admitted 4 of 7"
        );
        // It lives until second 11 ends: 1,340 ms after its call was sent.
        for _ in 0..7 {
            assert!(leases.take(&checks, 1, at(1_699)).is_some());
        }
        assert_eq!(leases.take(&checks, 1, at(1_699)), None, "all 8 admitted");
        assert!(
            leases.drain_reservations().is_empty(),
            "second 10's block ended with leftovers: the next is 1, a plain decision"
        );
        assert_eq!(
            leases.ask(&checks, 1, at(1_699)),
            4,
            "this one ran out early: 8 used over its 1.34 s, so 4 in half of that, more than twice 1"
        );
        leases.not_granted(&checks);
        leases.sweep(at(1_700));
        assert!(leases.drain_returns().is_empty(), "nothing left to give back");
    }

    #[test]
    fn a_block_used_up_early_hands_over_to_the_one_ahead_and_the_next_is_larger() {
        let (leases, checks, t0) = leased(5, 10_000);
        for _ in 0..2 {
            assert!(leases.take(&checks, 1, t0).is_some());
        }
        assert_eq!(answer_reservations(&leases, t0, 10_000, 2), [2]);
        for _ in 0..4 {
            assert!(
                leases.take(&checks, 1, t0).is_some(),
                "4 of the first block, then the one ahead"
            );
        }
        assert!(leases.drain_returns().is_empty(), "the first block was used up");
        assert_eq!(leases.take(&checks, 1, t0), None);
        assert_eq!(
            answer_reservations(&leases, t0, 10_000, 0),
            [4],
            "it ran out early: twice the size"
        );
        assert_eq!(leases.ask(&checks, 1, t0), 8);
    }

    #[test]
    fn a_block_reserved_for_a_forgotten_lease_is_given_back() {
        let leases = Leases::new(64);
        let checks = checks();
        let t0 = Instant::now();
        leases.reserved(&checks, 5, &decision(10_000, 900), t0);
        assert_eq!(
            leases.drain_returns(),
            vec![Return {
                key: checks[0].redis_key(),
                bucket: 11,
                amount: 5
            }]
        );
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
            for reservation in leases.drain_reservations() {
                assert!(reservation.want <= 8, "{}", reservation.want);
                leases.not_granted(&reservation.checks);
            }
        }
        assert_eq!(leases.ask(&checks, 1, t0), 8);
        leases.not_granted(&checks);
        leases.sweep(t0 + Duration::from_secs(12));
        assert!(leases.is_empty());
    }

    #[test]
    fn a_plain_decision_leaves_a_live_block_alone() {
        let (leases, checks, t0) = leased(3, 10_000);
        // A request that went to Redis while the block was asked for.
        grant(&leases, &checks, t0, 10_000, 1);
        assert!(leases.take(&checks, 1, t0).is_some());
        assert!(leases.take(&checks, 1, t0).is_some());
        assert_eq!(leases.take(&checks, 1, t0), None);
    }
}
