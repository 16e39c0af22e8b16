//! Rolling-window rate limits, as pure arithmetic over a clock value.
//!
//! # Algorithm: a bucketed sliding window
//!
//! A limit of `L` requests per window `W` keeps its counts in buckets of
//! `g = W / 60` (at least 1 ms), each with the time of its newest request. At
//! time `t` a bucket is counted while its newest request is in the window
//! `(t - W, t]`; so it stops counting exactly when that request leaves. A
//! request is admitted when the counted requests plus its cost are at most `L`.
//!
//! Error bound, in both directions:
//! - **Never over-admits.** Every request in the window belongs to a bucket
//!   whose newest request is in the window too, so the counted requests
//!   include the whole rolling window: in every interval of length `W` at
//!   most `L` requests are admitted. A hard guarantee, checked by a property
//!   test against an exact log of timestamps.
//! - **Under-admits by at most one bucket.** Only the oldest counted bucket
//!   can hold requests that have left the window, all younger than `W + g`
//!   (the lookback). A refusal is therefore always justified by at least `L`
//!   requests within the lookback, and the time a refusal names (when the
//!   bucket that frees enough room loses its newest request) is at most `g`
//!   after the exact log would admit: at most one second for windows up to a
//!   minute. A burst that uses a minute's limit up at once is admitted again
//!   60 s after its last request, not 61 (issue 19).
//!
//! The classic "previous window weighted plus current" counter needs only two
//! numbers but can admit up to `2L` in a rolling window when traffic bunches at
//! a window edge; the seeds promise a rolling window, so keygate spends up to
//! 61 buckets per active limit (only the buckets that hold requests) to keep
//! that promise exactly.

use std::num::NonZeroU64;

/// Buckets per window: the granularity is 1/60 of the window.
pub const BUCKETS: u64 = 60;

/// The largest cost one request may spend (a route's `cost`, the verify
/// API's, an upstream's report): the largest integer every JSON client and
/// Redis's Lua (doubles) count exactly. Counts add up saturating, so even
/// many such costs in one window only fill a counter.
pub const MAX_COST: u64 = (1 << 53) - 1;

/// One limit, ready for arithmetic. The bucket size is derived once here:
/// divisions are the costliest part of a decision.
///
/// Two kinds share the counter and the decision:
/// - a **rolling** limit: `requests` per sliding `window_ms` (above);
/// - a **balance** (credits, crates/keygate-core/src/credits.rs): fixed
///   periods of `window_ms` counted from `origin_ms`, one bucket each. The
///   first period allows `requests`, every later one `refill` (the balance
///   is set to the refill amount; what was left does not roll over). A
///   balance that never refills has a period of `u64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    pub requests: u64,
    pub window_ms: u64,
    /// A rolling limit's bucket size; a balance's refill amount (its bucket
    /// is its period). One field for both keeps a rule at 40 bytes: rules are
    /// copied into every decision (BENCHMARKS.md, "Credits").
    bucket_or_refill: u64,
    /// Where a balance's periods start; 0 for a rolling limit.
    origin_ms: u64,
    /// Counted and reported, never refusing (`mode = "shadow"`).
    pub shadow: bool,
    balance: bool,
}

impl Rule {
    pub fn new(requests: u64, window_ms: u64) -> Self {
        let window_ms = window_ms.max(1);
        Self {
            requests,
            window_ms,
            bucket_or_refill: (window_ms / BUCKETS).max(1),
            origin_ms: 0,
            shadow: false,
            balance: false,
        }
    }

    /// A balance of `first` from `origin_ms`, set to `refill` at every
    /// `period_ms` after it (`u64::MAX`: never).
    pub fn balance(first: u64, origin_ms: u64, refill: u64, period_ms: u64) -> Self {
        let period_ms = period_ms.max(1);
        Self {
            requests: first,
            window_ms: period_ms,
            bucket_or_refill: refill,
            origin_ms,
            shadow: false,
            balance: true,
        }
    }

    /// The same limit in shadow mode.
    pub fn in_shadow(self) -> Self {
        Self { shadow: true, ..self }
    }

    /// Whether this is a balance (credits) rather than a rolling limit.
    pub fn is_balance(&self) -> bool {
        self.balance
    }

    /// A balance's origin and refill amount, for a backend that stores it.
    pub fn balance_terms(&self) -> Option<(u64, u64)> {
        self.balance.then_some((self.origin_ms, self.bucket_or_refill))
    }

    pub fn bucket_ms(&self) -> u64 {
        if self.balance {
            self.window_ms
        } else {
            self.bucket_or_refill
        }
    }

    /// How far back counted requests can lie: see the module's error bound.
    pub fn lookback_ms(&self) -> u64 {
        self.window_ms.saturating_add(self.bucket_ms())
    }

    pub fn bucket_of(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.origin_ms) / self.bucket_ms()
    }

    /// What the limit allows at `now_ms`: `requests`, or for a balance after
    /// its first period, its refill.
    pub fn capacity_at(&self, now_ms: u64) -> u64 {
        if self.balance && self.bucket_of(now_ms) > 0 {
            self.bucket_or_refill
        } else {
            self.requests
        }
    }

    /// When a bucket whose newest request came at `newest_ms` stops
    /// counting: a window later, or for a balance when its period ends.
    fn leaves_at(&self, newest_ms: u64) -> u64 {
        if self.balance {
            (self.bucket_of(newest_ms).saturating_add(1))
                .saturating_mul(self.window_ms)
                .saturating_add(self.origin_ms)
        } else {
            newest_ms.saturating_add(self.window_ms)
        }
    }

    /// A balance's next refill after `now_ms`, if it refills.
    pub fn refills_at(&self, now_ms: u64) -> Option<u64> {
        let at = self.leaves_at(now_ms);
        (self.is_balance() && at != u64::MAX).then_some(at)
    }
}

/// One bucket's count and the time of its newest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub index: u64,
    pub count: u64,
    pub newest_ms: u64,
}

/// The counts of one limit: its live buckets, oldest first, plus their
/// running total, so a decision costs O(1) amortised instead of a scan. Only
/// buckets that hold requests are kept: a key seen a few times an hour holds
/// a few entries, not a slot for each of the window's buckets (memory per
/// cached key, issue 18; BENCHMARKS.md).
///
/// A counter's clock never runs backwards: a `now` earlier than the latest
/// time it has seen is treated as that time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counter {
    buckets: Buckets,
    /// The latest time seen.
    latest_ms: u64,
}

/// A counter's buckets, with indices and newest times increasing and every
/// count above zero, and their running total. At most 61 (a window's
/// buckets plus the one leaving), so dropping the oldest by moving the rest
/// down is cheap.
///
/// A key seen now and then holds one bucket: it is kept inline and is its
/// own total. More are boxed with their total. The one bucket's count is
/// never zero, which leaves room to tell it from the boxed kind: 24 bytes in
/// every counter, where a `SmallVec` of one and a total beside it took 40
/// (memory per cached key, BENCHMARKS.md). Each length has one form (none,
/// one, many), so two equal counters are equal as values.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Buckets {
    One(OneBucket),
    /// None (no allocation), or two buckets or more.
    Many(Option<Box<ManyBuckets>>),
}

impl Default for Buckets {
    fn default() -> Self {
        Self::Many(None)
    }
}

/// A [`Bucket`] whose count is known to be above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OneBucket {
    index: u64,
    count: NonZeroU64,
    newest_ms: u64,
}

impl OneBucket {
    fn bucket(self) -> Bucket {
        Bucket {
            index: self.index,
            count: self.count.get(),
            newest_ms: self.newest_ms,
        }
    }
}

/// Two buckets or more.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ManyBuckets {
    buckets: Vec<Bucket>,
    /// Sum of the counts, saturating.
    total: u64,
}

impl Buckets {
    /// From buckets in order, each count above zero.
    fn from_sorted(buckets: Vec<Bucket>) -> Self {
        match buckets[..] {
            [] => Self::Many(None),
            [only] => match NonZeroU64::new(only.count) {
                Some(count) => Self::One(OneBucket {
                    index: only.index,
                    count,
                    newest_ms: only.newest_ms,
                }),
                None => Self::Many(None),
            },
            _ => {
                let total = buckets.iter().fold(0u64, |sum, b| sum.saturating_add(b.count));
                Self::Many(Some(Box::new(ManyBuckets { buckets, total })))
            }
        }
    }

    /// Oldest first.
    fn iter(&self) -> impl Iterator<Item = Bucket> + '_ {
        let (one, many) = match self {
            Self::One(one) => (Some(one.bucket()), &[][..]),
            Self::Many(None) => (None, &[][..]),
            Self::Many(Some(many)) => (None, &many.buckets[..]),
        };
        one.into_iter().chain(many.iter().copied())
    }

    /// Sum of the counts.
    fn total(&self) -> u64 {
        match self {
            Self::One(one) => one.count.get(),
            Self::Many(None) => 0,
            Self::Many(Some(many)) => many.total,
        }
    }

    /// Adds `cost` (above zero) requests at `now_ms`, in bucket `index`.
    fn add(&mut self, index: u64, cost: u64, now_ms: u64) {
        let fresh = Bucket {
            index,
            count: cost,
            newest_ms: now_ms,
        };
        match self {
            Self::One(one) if one.index == index => {
                one.count = one.count.saturating_add(cost);
                one.newest_ms = one.newest_ms.max(now_ms);
            }
            Self::Many(Some(many)) => {
                let buckets = &mut many.buckets;
                // The bucket of now is almost always the last (or a new one
                // after it); only a counter rebuilt from a store that holds a
                // bucket charged ahead of now (`from_buckets_at`) has one
                // after it.
                let at = match buckets.last() {
                    Some(last) if last.index < index => buckets.len(),
                    Some(last) if last.index == index => buckets.len() - 1,
                    _ => buckets.partition_point(|b| b.index < index),
                };
                match buckets.get_mut(at) {
                    Some(bucket) if bucket.index == index => {
                        bucket.count = bucket.count.saturating_add(cost);
                        bucket.newest_ms = bucket.newest_ms.max(now_ms);
                    }
                    _ => buckets.insert(at, fresh),
                }
                many.total = many.total.saturating_add(cost);
            }
            Self::One(_) | Self::Many(None) => {
                let mut buckets: Vec<Bucket> = self.iter().collect();
                let at = buckets.partition_point(|b| b.index < index);
                buckets.insert(at, fresh);
                *self = Self::from_sorted(buckets);
            }
        }
    }

    /// Drops the `gone` oldest buckets.
    fn drop_oldest(&mut self, gone: usize) {
        if gone == 0 {
            return;
        }
        match self {
            Self::One(_) | Self::Many(None) => *self = Self::Many(None),
            Self::Many(Some(many)) => {
                for bucket in many.buckets.drain(..gone.min(many.buckets.len())) {
                    many.total = many.total.saturating_sub(bucket.count);
                }
                if many.buckets.len() < 2 {
                    *self = Self::from_sorted(std::mem::take(&mut many.buckets));
                }
            }
        }
    }
}

impl Counter {
    /// Rebuilds a counter from its buckets, its clock at their newest request.
    pub fn from_buckets(rule: &Rule, buckets: impl IntoIterator<Item = Bucket>) -> Self {
        let buckets: Vec<Bucket> = buckets.into_iter().collect();
        let latest = buckets.iter().map(|b| b.newest_ms).max().unwrap_or(0);
        Self::from_buckets_at(rule, buckets, latest)
    }

    /// Rebuilds a counter from its buckets as a shared store returns them
    /// at `now_ms`, its clock. A bucket stamped later than that (a leased
    /// block, charged with its bucket's last millisecond:
    /// crates/keygate-limiter/src/lease.rs) does not move the clock, so the
    /// counter counts at `now_ms` exactly what the store counted.
    pub fn from_buckets_at(rule: &Rule, buckets: impl IntoIterator<Item = Bucket>, now_ms: u64) -> Self {
        let mut buckets: Vec<Bucket> = buckets.into_iter().filter(|b| b.count > 0).collect();
        buckets.sort_unstable_by_key(|b| b.index);
        let mut counter = Self {
            buckets: Buckets::from_sorted(buckets),
            latest_ms: now_ms,
        };
        counter.advance(rule, now_ms);
        counter
    }

    fn now(&self, now_ms: u64) -> u64 {
        now_ms.max(self.latest_ms)
    }

    /// Requests counted against the limit at `now_ms`, by scanning every bucket.
    /// [`Counter::live`] gives the same answer in O(1) amortised.
    pub fn count(&self, rule: &Rule, now_ms: u64) -> u64 {
        self.live_buckets(rule, now_ms)
            .fold(0, |sum, b| sum.saturating_add(b.count))
    }

    /// Drops the buckets whose newest request has left the window.
    fn advance(&mut self, rule: &Rule, now_ms: u64) {
        let now = self.now(now_ms);
        let gone = self
            .buckets
            .iter()
            .take_while(|bucket| rule.leaves_at(bucket.newest_ms) <= now)
            .count();
        self.buckets.drop_oldest(gone);
        self.latest_ms = now;
    }

    /// Requests counted at `now_ms`; the same as [`Counter::count`].
    pub fn live(&mut self, rule: &Rule, now_ms: u64) -> u64 {
        self.advance(rule, now_ms);
        self.buckets.total()
    }

    pub fn add(&mut self, rule: &Rule, now_ms: u64, cost: u64) {
        self.advance(rule, now_ms);
        if cost == 0 {
            return;
        }
        let now = self.latest_ms;
        self.buckets.add(rule.bucket_of(now), cost, now);
    }

    fn live_buckets<'a>(&'a self, rule: &'a Rule, now_ms: u64) -> impl Iterator<Item = Bucket> + 'a {
        let now = self.now(now_ms);
        self.buckets.iter().filter(move |b| rule.leaves_at(b.newest_ms) > now)
    }

    /// The earliest time at which `cost` more requests fit. `now_ms` if they
    /// fit now; `u64::MAX` if they never will.
    pub fn admits_at(&self, rule: &Rule, now_ms: u64, cost: u64) -> u64 {
        let mut count = self.count(rule, now_ms);
        if count.saturating_add(cost) <= rule.capacity_at(now_ms) {
            return now_ms;
        }
        // Oldest first: the first buckets to leave the window.
        for bucket in self.live_buckets(rule, now_ms) {
            count = count.saturating_sub(bucket.count);
            let at = rule.leaves_at(bucket.newest_ms);
            if count.saturating_add(cost) <= rule.capacity_at(at) {
                return at;
            }
        }
        if rule.is_balance() {
            // Nothing left to free: only the next period can make room.
            return match rule.refills_at(now_ms) {
                Some(at) if cost <= rule.capacity_at(at) => at,
                _ => u64::MAX,
            };
        }
        if cost > rule.requests {
            u64::MAX
        } else {
            now_ms
        }
    }

    /// When the oldest counted bucket stops counting (the limit regains
    /// capacity), or `now_ms` if nothing is counted.
    pub fn next_release(&mut self, rule: &Rule, now_ms: u64) -> u64 {
        if self.live(rule, now_ms) == 0 {
            return now_ms;
        }
        match self.buckets.iter().next() {
            Some(oldest) => rule.leaves_at(oldest.newest_ms),
            None => now_ms,
        }
    }

    /// Takes in a bucket saved elsewhere (a credit balance's spend, kept in
    /// the store across a restart): the bucket of that index keeps the
    /// larger count, and one that has left the window is dropped.
    pub fn merge(&mut self, rule: &Rule, saved: Bucket) {
        let mut buckets: Vec<Bucket> = self.buckets.iter().collect();
        match buckets.iter_mut().find(|b| b.index == saved.index) {
            Some(bucket) => {
                bucket.count = bucket.count.max(saved.count);
                bucket.newest_ms = bucket.newest_ms.max(saved.newest_ms);
            }
            None => buckets.push(saved),
        }
        let latest_ms = self.latest_ms;
        *self = Self::from_buckets(rule, buckets);
        self.advance(rule, latest_ms);
    }

    /// True when nothing is counted any more: the counter can be dropped.
    pub fn is_idle(&self, rule: &Rule, now_ms: u64) -> bool {
        self.count(rule, now_ms) == 0
    }
}

/// How one limit stands after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    pub rule: Rule,
    /// A shadow limit that would have refused this request (and was not charged).
    pub shadow_refused: bool,
    /// An enforced limit that had no room for this request.
    pub refused: bool,
    /// Requests that still fit now.
    pub remaining: u64,
    /// When the limit next admits a request (if exhausted) or regains capacity.
    pub reset_ms: u64,
}

/// The decision on one request across every limit that applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The time of the decision on the deciding clock (Redis's for the Redis backend).
    pub now_ms: u64,
    /// One per limit, in the order given.
    pub limits: Vec<LimitState>,
    /// When refused: the time at which every refusing limit admits again.
    pub retry_at_ms: Option<u64>,
}

impl Decision {
    /// The refusing limit that admits last: the one a 429 names.
    pub fn refusing(&self) -> Option<&LimitState> {
        self.refusing_index().map(|i| &self.limits[i])
    }

    /// Where [`Decision::refusing`] is among the limits (the checks' order).
    pub fn refusing_index(&self) -> Option<usize> {
        self.limits
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.rule.shadow && !l.rule.is_balance() && l.remaining == 0)
            .max_by_key(|(_, l)| l.reset_ms)
            .map(|(i, _)| i)
    }

    /// The rolling limits that refuse, which the `X-RateLimit-*` headers
    /// describe: every one but the shadow ones and the credit balance.
    pub fn enforced(&self) -> impl Iterator<Item = &LimitState> {
        self.limits.iter().filter(|l| !l.rule.shadow && !l.rule.is_balance())
    }

    /// The credit balance, if the request has one.
    pub fn balance(&self) -> Option<&LimitState> {
        self.limits.iter().find(|l| l.rule.is_balance())
    }

    /// The credit balance's counter as this decision left it, with its
    /// place among the limits (the checks' order): the bucket of the
    /// current period and what that period has spent. A backend that keeps
    /// a copy of the balance (the credit ledger, the Redis fallback) merges
    /// this bucket into it.
    pub fn balance_bucket(&self) -> Option<(usize, Bucket)> {
        let (index, state) = self.limits.iter().enumerate().find(|(_, l)| l.rule.is_balance())?;
        let bucket = Bucket {
            index: state.rule.bucket_of(self.now_ms),
            count: state.rule.capacity_at(self.now_ms).saturating_sub(state.remaining),
            newest_ms: self.now_ms,
        };
        Some((index, bucket))
    }

    /// Whether the request was refused because its credits ran out (whatever
    /// the rolling limits said: waiting for them would not help).
    pub fn out_of_credits(&self) -> bool {
        !self.allowed && self.balance().is_some_and(|b| b.refused)
    }

    /// The shadow limits that would have refused this request.
    pub fn shadow_refusals(&self) -> impl Iterator<Item = &LimitState> {
        self.limits.iter().filter(|l| l.shadow_refused)
    }

    /// Whole seconds to wait, rounded up so a client never retries too early;
    /// `None` when waiting will not help (credits that never refill).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_at_ms
            .filter(|at| *at != u64::MAX)
            .map(|at| at.saturating_sub(self.now_ms).div_ceil(1000).max(1))
    }

    /// The limit closest to exhaustion: the one the `X-RateLimit-*` headers
    /// describe by default.
    pub fn tightest(&self) -> Option<&LimitState> {
        tightest_of(self.enforced())
    }

    /// The shadow limit closest to exhaustion, for `headers.shadow`.
    pub fn tightest_shadow(&self) -> Option<&LimitState> {
        tightest_of(self.limits.iter().filter(|l| l.rule.shadow))
    }

    /// The limit the `X-RateLimit-*` headers describe under `describe`: the
    /// tightest, the longest window (the tightest of those), or the limit of
    /// one window (the tightest if none has it).
    pub fn described(&self, describe: Describe) -> Option<&LimitState> {
        match describe {
            Describe::Tightest => self.tightest(),
            Describe::Longest => {
                let longest = self.enforced().map(|l| l.rule.window_ms).max()?;
                tightest_of(self.enforced().filter(|l| l.rule.window_ms == longest))
            }
            Describe::Window(window_ms) => {
                tightest_of(self.enforced().filter(|l| l.rule.window_ms == window_ms)).or_else(|| self.tightest())
            }
        }
    }
}

fn tightest_of<'a>(limits: impl Iterator<Item = &'a LimitState>) -> Option<&'a LimitState> {
    limits.min_by(|a, b| a.remaining.cmp(&b.remaining).then(b.reset_ms.cmp(&a.reset_ms)))
}

/// Which limit `X-RateLimit-Limit`, `-Remaining` and `-Reset` describe when a
/// request has several (`headers.describe`, and per plan): `"tightest"` (the
/// closest to exhaustion, the default), `"longest"` (the longest window), or
/// a window such as `"1h"` (a page that documents its hourly figure).
/// `Retry-After` always tells when the request would be admitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Describe {
    #[default]
    Tightest,
    Longest,
    /// Window length in milliseconds.
    Window(u64),
}

impl TryFrom<String> for Describe {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "tightest" => Ok(Self::Tightest),
            "longest" => Ok(Self::Longest),
            window => crate::duration::parse_duration(window)
                .ok()
                .and_then(|d| u64::try_from(d.as_millis()).ok())
                .filter(|ms| *ms >= 1000)
                .map(Self::Window)
                .ok_or_else(|| format!("`{text}` must be \"tightest\", \"longest\" or a window such as \"1h\"")),
        }
    }
}

impl From<Describe> for String {
    fn from(describe: Describe) -> Self {
        match describe {
            Describe::Tightest => "tightest".into(),
            Describe::Longest => "longest".into(),
            Describe::Window(ms) => crate::duration::format_duration(std::time::Duration::from_millis(ms)),
        }
    }
}

/// Decides a request against several limits as one: either every enforced
/// limit admits and (when `charge`) every counter is charged, or nothing is
/// charged. A shadow limit never refuses: it is charged with the request
/// when it would have admitted it alone, and otherwise marked
/// `shadow_refused` and left uncharged, so its counts are exactly those of
/// the limit enforced. Without `charge` it only reports, for dry runs and for
/// the headers of requests refused for another reason.
pub fn decide(limits: &mut [(Rule, &mut Counter)], now_ms: u64, cost: u64, charge: bool) -> Decision {
    let fits: SmallFits = limits
        .iter_mut()
        .map(|(rule, counter)| counter.live(rule, now_ms).saturating_add(cost) <= rule.capacity_at(now_ms))
        .collect();
    let allowed = limits.iter().zip(&fits).all(|((rule, _), fits)| rule.shadow || *fits);
    if allowed && charge {
        for ((rule, counter), fits) in limits.iter_mut().zip(&fits) {
            if *fits {
                counter.add(rule, now_ms, cost);
            }
        }
    }
    let retry_at_ms = if allowed {
        None
    } else {
        limits
            .iter()
            .filter(|(rule, _)| !rule.shadow)
            .map(|(rule, counter)| counter.admits_at(rule, now_ms, cost))
            .max()
    };
    let states = limits
        .iter_mut()
        .zip(&fits)
        .map(|((rule, counter), fits)| {
            let remaining = rule.capacity_at(now_ms).saturating_sub(counter.live(rule, now_ms));
            let reset_ms = if remaining == 0 {
                counter.admits_at(rule, now_ms, 1)
            } else {
                counter.next_release(rule, now_ms)
            };
            LimitState {
                rule: *rule,
                shadow_refused: rule.shadow && allowed && !fits,
                refused: !rule.shadow && !fits,
                remaining,
                reset_ms,
            }
        })
        .collect();
    Decision {
        allowed,
        now_ms,
        limits: states,
        retry_at_ms,
    }
}

/// Charges `cost` to every counter whatever room it has (a cost reported
/// after the request was admitted: it happened), then reports how they stand.
pub fn charge_anyway(limits: &mut [(Rule, &mut Counter)], now_ms: u64, cost: u64) -> Decision {
    for (rule, counter) in limits.iter_mut() {
        counter.add(rule, now_ms, cost);
    }
    decide(limits, now_ms, 0, false)
}

/// Whether each limit fits the request: a handful, on the stack.
type SmallFits = smallvec::SmallVec<[bool; 8]>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_stays_small() {
        assert_eq!(std::mem::size_of::<Rule>(), 40, "copied into every decision");
    }

    #[test]
    fn a_counter_holds_its_one_bucket_inline() {
        let rule = Rule::new(10, MINUTE);
        let mut counter = Counter::default();
        counter.add(&rule, 1_000, 1);
        counter.add(&rule, 1_001, 2);
        assert!(
            matches!(counter.buckets, Buckets::One(_)),
            "no allocation for a key seen now and then"
        );
        assert_eq!(counter.live(&rule, 1_001), 3);
        assert_eq!(std::mem::size_of::<Counter>(), 32);
    }

    #[test]
    fn a_counter_back_to_one_bucket_is_the_counter_of_that_bucket() {
        let rule = Rule::new(10, MINUTE);
        let mut counter = Counter::default();
        counter.add(&rule, 1_000, 1);
        counter.add(&rule, 1_000 + MINUTE / 2, 2);
        assert!(matches!(counter.buckets, Buckets::Many(Some(_))));
        assert_eq!(counter.live(&rule, 1_000 + MINUTE / 2), 3);
        let later = 1_000 + MINUTE + 1;
        assert_eq!(counter.live(&rule, later), 2, "the first bucket left the window");
        let mut alone = Counter::default();
        alone.add(&rule, 1_000 + MINUTE / 2, 2);
        alone.advance(&rule, later);
        assert_eq!(counter, alone);
        assert_eq!(counter.live(&rule, later + MINUTE), 0);
        assert_eq!(counter.buckets, Buckets::Many(None));
    }
    use proptest::prelude::*;
    use std::collections::VecDeque;

    const MINUTE: u64 = 60_000;

    /// Costs an upstream reports are charged whatever room is left; however
    /// large, the counter fills up and refuses, and never wraps to empty.
    #[test]
    fn huge_costs_fill_a_counter_and_never_wrap() {
        let rule = Rule::new(i64::MAX as u64, MINUTE);
        let mut counter = Counter::default();
        let t0 = 1_700_000_000_000;
        for at in [t0, t0 + 1, t0 + MINUTE / 2] {
            charge_anyway(&mut [(rule, &mut counter)], at, u64::MAX);
        }
        assert_eq!(counter.live(&rule, t0 + MINUTE / 2), u64::MAX);
        assert!(!decide(&mut [(rule, &mut counter)], t0 + MINUTE / 2, 1, true).allowed);
        assert!(counter.admits_at(&rule, t0 + MINUTE / 2, 1) > t0 + MINUTE / 2);
    }

    #[test]
    fn admits_exactly_the_limit_then_refuses() {
        let rule = Rule::new(100, MINUTE);
        let mut counter = Counter::default();
        let t0 = 1_700_000_000_300;
        for i in 0..100 {
            assert!(decide(&mut [(rule, &mut counter)], t0 + i, 1, true).allowed);
        }
        let refused = decide(&mut [(rule, &mut counter)], t0 + 100, 1, true);
        assert!(!refused.allowed);
        assert_eq!(refused.limits[0].remaining, 0);
        // The burst's newest request came at t0 + 99: it leaves a window later.
        let retry = refused.retry_at_ms.unwrap();
        assert_eq!(retry, t0 + 99 + MINUTE);
        assert_eq!(refused.retry_after_secs(), Some(60), "60 for a 60 s window, never 61");
        assert!(!decide(&mut [(rule, &mut counter)], retry - 1, 1, true).allowed);
        assert!(decide(&mut [(rule, &mut counter)], retry, 1, true).allowed);
    }

    #[test]
    fn the_header_policy_picks_tightest_longest_or_a_window() {
        let state = |requests, window_ms, remaining| LimitState {
            rule: Rule::new(requests, window_ms),
            shadow_refused: false,
            refused: false,
            remaining,
            reset_ms: 0,
        };
        let decision = Decision {
            allowed: true,
            now_ms: 0,
            limits: vec![state(1000, 60 * MINUTE, 950), state(100, MINUTE, 50)],
            retry_at_ms: None,
        };
        let requests = |describe| decision.described(describe).map(|l| l.rule.requests);
        assert_eq!(requests(Describe::Tightest), Some(100));
        assert_eq!(requests(Describe::Longest), Some(1000));
        assert_eq!(requests(Describe::Window(60 * MINUTE)), Some(1000));
        assert_eq!(requests(Describe::Window(MINUTE)), Some(100));
        assert_eq!(
            requests(Describe::Window(24 * 60 * MINUTE)),
            Some(100),
            "no such window: the tightest"
        );
        for (text, parsed) in [
            ("tightest", Describe::Tightest),
            ("longest", Describe::Longest),
            ("1h", Describe::Window(60 * MINUTE)),
        ] {
            assert_eq!(Describe::try_from(text.to_owned()), Ok(parsed));
            assert_eq!(String::from(parsed), text);
        }
        for bad in ["widest", "0", "500ms", ""] {
            assert!(Describe::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_counter_rebuilt_from_its_buckets_counts_the_same() {
        let rule = Rule::new(10, MINUTE);
        let mut counter = Counter::default();
        counter.add(&rule, 5_000, 2);
        counter.add(&rule, 30_000, 3);
        let bucket = |index, count, newest_ms| Bucket {
            index,
            count,
            newest_ms,
        };
        let rebuilt = Counter::from_buckets(&rule, [bucket(5, 2, 5_000), bucket(30, 3, 30_000)]);
        for now in [30_000, 61_000, 64_999, 65_000, 89_999, 90_000, 91_000] {
            assert_eq!(rebuilt.count(&rule, now), counter.count(&rule, now), "{now}");
        }
    }

    /// A store may hold a bucket charged ahead of now (a leased block
    /// reserved for the next bucket): rebuilt at the store's `now`, the
    /// counter counts what the store counts then, and a request charged now
    /// goes in its own bucket, in order.
    #[test]
    fn a_counter_rebuilt_at_now_counts_a_bucket_charged_ahead_and_keeps_order() {
        let rule = Rule::new(10, MINUTE);
        let bucket = |index, count, newest_ms| Bucket {
            index,
            count,
            newest_ms,
        };
        // At 60.5 s: 4 requests of second 1 (they leave at 61 s), 3 of
        // second 59, and a block of 2 charged ahead to second 61.
        let now = 60_500;
        let held = [bucket(1, 4, 1_000), bucket(59, 3, 59_999), bucket(61, 2, 61_999)];
        let mut at_now = Counter::from_buckets_at(&rule, held, now);
        assert_eq!(at_now.live(&rule, now), 9, "the block ahead counts from now");
        let mut limits = [(rule, &mut at_now)];
        let admitted = decide(&mut limits, now, 1, true);
        assert!(admitted.allowed);
        assert_eq!(admitted.limits[0].remaining, 0);
        let refused = decide(&mut limits, now, 1, false);
        assert!(!refused.allowed, "as full as the store says");
        assert_eq!(refused.retry_at_ms, Some(61_000), "when second 1 leaves");
        let indices: Vec<u64> = at_now.buckets.iter().map(|b| b.index).collect();
        assert_eq!(indices, [1, 59, 60, 61], "the charge of now sits between");
        // Rebuilt with its clock at the newest stamp, the counter would
        // skip ahead and miss the 4 that the store still counts at 60.5 s.
        assert_eq!(Counter::from_buckets(&rule, held).count(&rule, now), 5);
    }

    #[test]
    fn a_decision_names_its_balance_bucket_as_spent_so_far() {
        let rolling = Rule::new(100, MINUTE);
        let balance = Rule::balance(10, 1_000, 4, MINUTE);
        let spent = |index, count, newest_ms| Bucket {
            index,
            count,
            newest_ms,
        };
        let (mut r, mut b) = (Counter::default(), Counter::default());
        let first = decide(&mut [(rolling, &mut r), (balance, &mut b)], 2_000, 3, true);
        assert_eq!(
            first.balance_bucket(),
            Some((1, spent(0, 3, 2_000))),
            "second of the limits, 3 of 10 spent in the first period"
        );
        // A later period is set to the refill: spent counts from it.
        let later = decide(&mut [(rolling, &mut r), (balance, &mut b)], 62_000, 1, true);
        assert_eq!(later.balance_bucket(), Some((1, spent(1, 1, 62_000))));
        let none = decide(&mut [(rolling, &mut r)], 62_000, 1, true);
        assert_eq!(none.balance_bucket(), None);
    }

    #[test]
    fn lookback_is_one_bucket_past_the_window() {
        assert_eq!(Rule::new(1, MINUTE).lookback_ms(), MINUTE + 1_000);
        assert_eq!(Rule::new(1, 60 * MINUTE).lookback_ms(), 61 * MINUTE);
    }

    #[test]
    fn a_shadow_limit_never_refuses_and_counts_as_if_enforced() {
        let enforced = Rule::new(100, MINUTE);
        let shadow = Rule::new(3, MINUTE).in_shadow();
        let (mut e, mut s) = (Counter::default(), Counter::default());
        let t = 5 * 60 * MINUTE;
        let mut would_refuse = 0;
        for _ in 0..10 {
            let decision = decide(&mut [(enforced, &mut e), (shadow, &mut s)], t, 1, true);
            assert!(decision.allowed);
            would_refuse += decision.shadow_refusals().count();
            assert_eq!(
                decision.tightest().unwrap().rule,
                enforced,
                "headers never describe a shadow limit"
            );
        }
        assert_eq!(would_refuse, 7);
        assert_eq!(s.count(&shadow, t), 3, "charged only when it would have admitted");
        assert_eq!(e.count(&enforced, t), 10);
        // Refused by an enforced limit: the shadow one is neither charged nor marked.
        let tight = Rule::new(10, MINUTE);
        let refused = decide(&mut [(tight, &mut e), (shadow, &mut s)], t, 1, true);
        assert!(!refused.allowed);
        assert_eq!(refused.shadow_refusals().count(), 0);
        assert_eq!(refused.refusing().unwrap().rule, tight);
    }

    #[test]
    fn a_refusal_by_one_limit_charges_no_other() {
        let burst = Rule::new(2, MINUTE);
        let hourly = Rule::new(1000, 60 * MINUTE);
        let (mut b, mut h) = (Counter::default(), Counter::default());
        let t = 5 * 60 * MINUTE;
        for _ in 0..2 {
            assert!(decide(&mut [(burst, &mut b), (hourly, &mut h)], t, 1, true).allowed);
        }
        let refused = decide(&mut [(burst, &mut b), (hourly, &mut h)], t, 1, true);
        assert!(!refused.allowed);
        assert_eq!(h.count(&hourly, t), 2);
        assert_eq!(refused.tightest().unwrap().rule, burst);
    }

    /// The exact reference: a log of admitted timestamps.
    struct Log(VecDeque<u64>);

    impl Log {
        fn in_window(&self, window: u64, end: u64) -> usize {
            self.0.iter().filter(|&&t| t + window > end && t <= end).count()
        }

        /// When one more request fits in a window of `limit`, exactly.
        fn admits_at(&self, window: u64, limit: u64, now: u64) -> u64 {
            let inside: Vec<u64> = self
                .0
                .iter()
                .copied()
                .filter(|&t| t + window > now && t <= now)
                .collect();
            let excess = (inside.len() as u64 + 1).saturating_sub(limit) as usize;
            match excess {
                0 => now,
                n => inside[n - 1] + window,
            }
        }
    }

    proptest! {
        /// Never more than `L` admitted in any rolling window, and every refusal
        /// is justified by `L` requests within the lookback.
        #[test]
        fn never_over_admits_and_names_a_retry_time_never_early_and_at_most_a_bucket_late(
            requests in 1u64..20,
            window_s in 1u64..120,
            gaps in proptest::collection::vec(0u64..5_000, 1..400),
        ) {
            let rule = Rule::new(requests, window_s * 1000);
            let mut counter = Counter::default();
            let mut log = Log(VecDeque::new());
            let mut now = 1_000_000_000u64;
            for gap in gaps {
                now += gap;
                let decision = decide(&mut [(rule, &mut counter)], now, 1, true);
                prop_assert_eq!(counter.live(&rule, now), counter.count(&rule, now), "running total = full scan");
                let oldest_live = counter.live_buckets(&rule, now).next();
                let expected_release = oldest_live.map_or(now, |b| rule.leaves_at(b.newest_ms));
                prop_assert_eq!(counter.next_release(&rule, now), expected_release, "first_live = oldest live bucket");
                if decision.allowed {
                    log.0.push_back(now);
                    // Check every rolling window ending at an admitted request.
                    prop_assert!(log.in_window(rule.window_ms, now) as u64 <= requests);
                } else {
                    let justified = log.in_window(rule.lookback_ms(), now) as u64;
                    prop_assert!(justified >= requests, "refused with only {justified} in the lookback");
                    prop_assert!(rule.lookback_ms() < rule.window_ms + 2 * rule.bucket_ms());
                    let retry = decision.retry_at_ms.unwrap();
                    prop_assert!(retry > now);
                    let mut probe = counter.clone();
                    prop_assert!(decide(&mut [(rule, &mut probe)], retry, 1, true).allowed, "retry time admits");
                    let mut early = counter.clone();
                    prop_assert!(!decide(&mut [(rule, &mut early)], retry - 1, 1, false).allowed, "never early");
                    // The exact log admits once enough of its in-window
                    // entries have left; the named time is at most a bucket later.
                    let exact = log.admits_at(rule.window_ms, requests, now);
                    prop_assert!(retry <= exact + rule.bucket_ms(), "retry {retry} vs exact {exact}");
                    let seconds = decision.retry_after_secs().unwrap();
                    prop_assert!(seconds * 1000 >= retry - now && seconds * 1000 < retry - now + 1000);
                }
            }
        }
    }
}
