//! Usage recording off the request path.
//!
//! The request path only bumps a counter in the key's own cache entry (a
//! [`KeyTally`]); a background task flushes the totals every few seconds (and
//! at shutdown) in one store transaction. A
//! failed batch is kept and retried, with its id, before anything newer: the
//! store applies a batch id once, so a retry after a commit whose answer was
//! lost does not count twice, and nothing is lost while the store is down.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use keygate_core::ErrorCode;
use keygate_limiter::ArcStr;
use keygate_store::{LastUse, NewEvent, Store, StoreError, UsageBatch, UsageCount, UsageCutoffs};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::context::Context;
use crate::metrics::StoreOperation;
use crate::verifier::CachedKey;

/// The outcome recorded for an admitted request; rejections use their error code.
pub const ADMITTED: &str = "admitted";

/// What a request came to, as usage counts it. One byte, where the name
/// it is stored under (`as_str`) is a 16-byte reference: a tally keeps one
/// per entry (memory per cached key, BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Admitted,
    Refused(ErrorCode),
}

impl Outcome {
    /// `admitted`, or the refusal's error code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admitted => ADMITTED,
            Self::Refused(code) => code.as_str(),
        }
    }
}

/// How long usage counts are kept at each grain (`usage.keep_*`). Old
/// minutes go first; their hours and days stay for the longer views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRetention {
    pub minutes: chrono::Duration,
    pub hours: chrono::Duration,
    pub days: chrono::Duration,
}

impl Default for UsageRetention {
    fn default() -> Self {
        Self {
            minutes: chrono::Duration::days(7),
            hours: chrono::Duration::days(90),
            days: chrono::Duration::days(400),
        }
    }
}

impl UsageRetention {
    pub fn cutoffs(&self, now: DateTime<Utc>) -> UsageCutoffs {
        UsageCutoffs {
            minutes_before: now - self.minutes,
            hours_before: now - self.hours,
            days_before: now - self.days,
        }
    }
}

/// How often a node prunes old usage counts: deleting is cheap, but need not be frequent.
pub const PRUNE_EVERY_MS: i64 = 3_600_000;

/// A key's last use is written again only once it is this much later than
/// the last one written (by this node, or by any node before the key was
/// read), or from another address: a key in constant use costs one row
/// update a minute, not one per flush (the events benchmark, BENCHMARKS.md).
/// "Last used" is therefore exact to the minute.
pub const LAST_USE_PRECISION: chrono::Duration = chrono::Duration::seconds(60);

/// One key's usage since the last flush. It lives inline in the key's cache
/// entry, which the request already holds, so recording locks memory that
/// is in hand instead of hashing ids into a map shared by every key (174 ns
/// a request with 10,000 keys in turn, against 32 ns: docs/decisions.md),
/// and brings in no line of its own.
///
/// It also keeps what decides whether the key's last use is worth writing
/// (see [`LAST_USE_PRECISION`]), in bytes its layout had spare: a map of
/// what was written, beside the tallies, cost every key in use about 65
/// bytes more (memory per cached key, BENCHMARKS.md).
///
/// Its holder keeps it under a lock ([`Tallied::tally`]): a cached key
/// shares one with its memoized limit checks (one lock word less a key).
#[derive(Debug, Default)]
pub struct KeyTally {
    counts: Counts,
    /// The latest use known: the store's when the key was read, then each
    /// request's. The key's views show it too
    /// (crates/keygate-engine/src/verifier/cached_key.rs).
    last_use: Option<SeenUse>,
    /// When the last use written was, in Unix seconds (0: none known).
    written_at: u32,
    /// `last_use` came after the last flush, which has not judged it yet.
    unwritten: bool,
    /// A use came from another address than the one before it, since the
    /// last write: its address is news, whenever it came.
    moved: bool,
    /// In the recorder's list of tallies to flush.
    queued: bool,
}

/// A use: when, to the millisecond, and from where. 24 bytes where
/// `(DateTime<Utc>, IpAddr)` takes 32, in every cached key's tally (memory
/// per cached key, BENCHMARKS.md); a last use is written to the minute
/// anyway ([`LAST_USE_PRECISION`]). A request's always has an address; a
/// row read from the store might not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SeenUse {
    /// Unix seconds, as [`unix_seconds`] keeps them.
    seconds: u32,
    millis: u16,
    ip: Option<IpAddr>,
}

impl SeenUse {
    fn new(at: DateTime<Utc>, ip: Option<IpAddr>) -> Self {
        Self::at_seconds(at.timestamp(), at.timestamp_subsec_millis(), ip)
    }

    /// From a time already taken apart, as the request path has it.
    fn at_seconds(seconds: i64, millis: u32, ip: Option<IpAddr>) -> Self {
        Self {
            seconds: unix_seconds(seconds),
            millis: u16::try_from(millis).unwrap_or(999),
            ip,
        }
    }

    fn is_before(self, other: Self) -> bool {
        (self.seconds, self.millis) < (other.seconds, other.millis)
    }

    fn at(self) -> DateTime<Utc> {
        DateTime::from_timestamp(i64::from(self.seconds), u32::from(self.millis) * 1_000_000).unwrap_or_default()
    }
}

impl KeyTally {
    /// The use a flush should write, if there is news worth a row update,
    /// taken as written.
    fn take_last_use(&mut self) -> Option<(DateTime<Utc>, IpAddr)> {
        if !std::mem::take(&mut self.unwritten) {
            return None;
        }
        let seen = self.last_use?;
        let ip = seen.ip?;
        let held_back = self.written_at != 0
            && !self.moved
            && i64::from(seen.seconds) - i64::from(self.written_at) < LAST_USE_PRECISION.num_seconds();
        if held_back {
            return None;
        }
        self.written_at = seen.seconds;
        self.moved = false;
        Some((seen.at(), ip))
    }

    /// The latest use known, and where it came from.
    pub fn last_use(&self) -> (Option<DateTime<Utc>>, Option<IpAddr>) {
        self.last_use.map_or((None, None), |seen| (Some(seen.at()), seen.ip))
    }
}

/// Unix seconds in 32 bits: 1970 to 2106, clamped, and never 0, which
/// stands for no use written.
fn unix_seconds(timestamp: i64) -> u32 {
    u32::try_from(timestamp.max(1)).unwrap_or(u32::MAX)
}

/// A tally's counts between flushes: usually one, held inline; more (the
/// minute turned, or a refusal came beside the admissions) boxed apart.
/// 16 bytes in every cached key where a `SmallVec` of one takes 24 (memory
/// per cached key, BENCHMARKS.md).
#[derive(Debug, Default)]
enum Counts {
    #[default]
    None,
    One(Tally),
    #[expect(clippy::box_collection, reason = "one pointer beside a tally, where a Vec is three")]
    Many(Box<Vec<Tally>>),
}

impl Counts {
    /// One more request of `minute` and `outcome`.
    fn count(&mut self, minute: i64, outcome: Outcome) {
        let same = |tally: &&mut Tally| tally.minute == minute && tally.outcome == outcome && tally.count < u32::MAX;
        match self.as_mut_slice().iter_mut().find(same) {
            Some(tally) => tally.count += 1,
            None => self.push(Tally {
                minute,
                outcome,
                count: 1,
            }),
        }
    }

    fn push(&mut self, tally: Tally) {
        *self = match std::mem::take(self) {
            Self::None => Self::One(tally),
            Self::One(first) => Self::Many(Box::new(vec![first, tally])),
            Self::Many(mut all) => {
                all.push(tally);
                Self::Many(all)
            }
        };
    }

    fn as_mut_slice(&mut self) -> &mut [Tally] {
        match self {
            Self::None => &mut [],
            Self::One(tally) => std::slice::from_mut(tally),
            Self::Many(all) => all,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::None => 0,
            Self::One(_) => 1,
            Self::Many(all) => all.len(),
        }
    }

    /// Every count, leaving none.
    fn take(&mut self) -> SmallVec<[Tally; 1]> {
        match std::mem::take(self) {
            Self::None => SmallVec::new(),
            Self::One(tally) => SmallVec::from_buf([tally]),
            Self::Many(all) => SmallVec::from_vec(*all),
        }
    }
}

/// Requests of one minute and outcome. A count stops at `u32::MAX` and
/// the next request starts another entry, which the flush adds up.
#[derive(Debug, Clone, Copy)]
struct Tally {
    /// Unix seconds at the start of the minute.
    minute: i64,
    outcome: Outcome,
    count: u32,
}

impl KeyTally {
    /// The tally of a key as read from the store, with the last use the
    /// store has: a use from the same address less than a minute after it
    /// is not written again, whichever node wrote it.
    pub fn known(last_used_at: Option<DateTime<Utc>>, last_used_ip: Option<IpAddr>) -> Self {
        Self {
            last_use: last_used_at.map(|at| SeenUse::new(at, last_used_ip)),
            written_at: last_used_at.map_or(0, |at| unix_seconds(at.timestamp())),
            ..Self::default()
        }
    }
}

/// What holds a key's tally, with the ids its rows are written under: the
/// key's cache entry (crates/keygate-engine/src/verifier/cached_key.rs).
/// The flush list keeps the holder alive until the flush, even if the key
/// has left the cache meanwhile.
pub trait Tallied: std::fmt::Debug + Send + Sync + 'static {
    /// The tally, locked.
    fn tally(&self) -> MappedMutexGuard<'_, KeyTally>;
    fn key_id(&self) -> &ArcStr;
    fn workspace_id(&self) -> &ArcStr;
}

/// A tally with its ids and nothing else, for usage recorded outside the
/// key cache: the recorder's tests and benchmark.
#[derive(Debug)]
pub struct LoneTally {
    key_id: ArcStr,
    workspace_id: ArcStr,
    tally: Mutex<KeyTally>,
}

impl LoneTally {
    pub fn new(key_id: ArcStr, workspace_id: ArcStr) -> Arc<Self> {
        Arc::new(Self {
            key_id,
            workspace_id,
            tally: Mutex::default(),
        })
    }
}

impl Tallied for LoneTally {
    fn tally(&self) -> MappedMutexGuard<'_, KeyTally> {
        MutexGuard::map(self.tally.lock(), |tally| tally)
    }

    fn key_id(&self) -> &ArcStr {
        &self.key_id
    }

    fn workspace_id(&self) -> &ArcStr {
        &self.workspace_id
    }
}

/// A usage row's identity: key, minute and outcome.
type Slot = (ArcStr, i64, &'static str);

/// A key's last use: when, and from where.
type LastUses = FxHashMap<ArcStr, (DateTime<Utc>, IpAddr)>;

/// Usage recorded since the last flush, of tallies held by `T`: a cached
/// key on the verify path (crates/keygate-engine/src/verifier/cached_key.rs).
/// One kind of holder, not `dyn Tallied`: its list holds every key in use
/// between flushes, and a plain `Arc` is half a `dyn` one (memory per
/// cached key, BENCHMARKS.md).
#[derive(Debug)]
pub struct UsageRecorder<T> {
    /// Tallies with something recorded since the last flush, each once.
    queued: Mutex<Vec<Arc<T>>>,
    /// Events the gateway decided, stored with the next flush.
    events: Mutex<Vec<NewEvent>>,
    /// The batch whose write failed, retried as it is. The lock also keeps
    /// two flushes (the ticker and shutdown) from running at once.
    unsent: tokio::sync::Mutex<Option<UsageBatch>>,
    unsent_rows: AtomicUsize,
}

impl<T> Default for UsageRecorder<T> {
    fn default() -> Self {
        Self {
            queued: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            unsent: tokio::sync::Mutex::new(None),
            unsent_rows: AtomicUsize::new(0),
        }
    }
}

impl<T: Tallied> UsageRecorder<T> {
    /// Counts one request of the tally's key. The tally joins the flush list
    /// on its first count since the last flush, under its own lock, so a
    /// flush taking the list either sees the count or leaves it queued.
    pub fn record(&self, holder: &Arc<T>, outcome: Outcome, client_ip: Option<IpAddr>, now: DateTime<Utc>) {
        let seconds = now.timestamp();
        let minute = seconds.div_euclid(60) * 60;
        let mut state = holder.tally();
        state.counts.count(minute, outcome);
        if let Some(ip) = client_ip {
            let seen = SeenUse::at_seconds(seconds, now.timestamp_subsec_millis(), Some(ip));
            if state.last_use.is_none_or(|last| !seen.is_before(last)) {
                state.moved |= state.last_use.is_none_or(|last| last.ip != Some(ip));
                state.last_use = Some(seen);
                state.unwritten = true;
            }
        }
        if !state.queued {
            state.queued = true;
            self.queued_tallies().push(Arc::clone(holder));
        }
    }

    fn queued_tallies(&self) -> MutexGuard<'_, Vec<Arc<T>>> {
        self.queued.lock()
    }

    fn events(&self) -> MutexGuard<'_, Vec<NewEvent>> {
        self.events.lock()
    }

    pub fn record_event(&self, event: NewEvent) {
        self.events().push(event);
    }

    /// Takes everything recorded so far. Counts racing with this call land
    /// either in this batch or the next, never nowhere. A key re-read into
    /// the cache has a second tally; their counts are added up here, so the
    /// batch has one row per key, minute and outcome.
    pub(crate) fn take(&self, id: String, at: DateTime<Utc>) -> UsageBatch {
        let tallies = std::mem::take(&mut *self.queued_tallies());
        // (key, minute, outcome) -> (workspace, count)
        let mut counts: FxHashMap<Slot, (ArcStr, u64)> =
            FxHashMap::with_capacity_and_hasher(tallies.len(), Default::default());
        let mut last_uses: LastUses = FxHashMap::with_capacity_and_hasher(tallies.len(), Default::default());
        for holder in tallies {
            let mut state = holder.tally();
            for Tally { minute, outcome, count } in state.counts.take() {
                let key = (holder.key_id().clone(), minute, outcome.as_str());
                counts
                    .entry(key)
                    .or_insert_with(|| (holder.workspace_id().clone(), 0))
                    .1 += u64::from(count);
            }
            if let Some(last_use) = state.take_last_use() {
                // On a tie the tally queued later wins: it is the newer cache
                // entry of the key (a re-read replaces the entry, and the new
                // one is queued on its first request), so its use came last.
                let latest = last_uses.entry(holder.key_id().clone()).or_insert(last_use);
                if last_use.0 >= latest.0 {
                    *latest = last_use;
                }
            }
            state.queued = false;
        }
        let counts = counts
            .into_iter()
            .map(|((key_id, minute, outcome), (workspace_id, count))| UsageCount {
                key_id: key_id.to_string(),
                workspace_id: workspace_id.to_string(),
                minute,
                outcome: outcome.to_owned(),
                count,
            })
            .collect();
        let last_uses = last_uses
            .into_iter()
            .map(|(key_id, (at, ip))| LastUse {
                key_id: key_id.to_string(),
                at,
                ip: ip.to_string(),
            })
            .collect();
        let events = std::mem::take(&mut *self.events());
        UsageBatch {
            id,
            at,
            counts,
            last_uses,
            events,
        }
    }

    /// Writes the batch that failed last time (if any), then what was recorded
    /// since, as a new batch named by `new_id`. Returns the rows written. On
    /// failure the failed batch is kept for the next call.
    pub async fn flush(
        &self,
        store: &dyn Store,
        now: DateTime<Utc>,
        new_id: impl FnOnce() -> String,
    ) -> Result<usize, StoreError> {
        let mut unsent = self.unsent.lock().await;
        let mut rows = 0;
        if let Some(batch) = unsent.as_ref() {
            store.record_usage(batch).await?;
            rows += batch.counts.len() + batch.events.len();
            *unsent = None;
            self.unsent_rows.store(0, Ordering::Release);
        }
        let batch = self.take(new_id(), now);
        if batch.is_empty() {
            return Ok(rows);
        }
        match store.record_usage(&batch).await {
            Ok(()) => Ok(rows + batch.counts.len() + batch.events.len()),
            Err(err) => {
                self.unsent_rows
                    .store(batch.counts.len() + batch.events.len(), Ordering::Release);
                *unsent = Some(batch);
                Err(err)
            }
        }
    }

    /// Rows not yet written: recorded since the last flush, plus a failed batch.
    pub fn pending(&self) -> usize {
        let events = self.events().len();
        // A copy of the list, so that no tally is locked under the list's
        // lock (`record` takes them the other way round).
        let tallies = self.queued_tallies().clone();
        let counts: usize = tallies.iter().map(|holder| holder.tally().counts.len()).sum();
        counts + events + self.unsent_rows.load(Ordering::Acquire)
    }
}

/// `[usage]` of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageSettings {
    /// Off (`usage.enabled = false`): no usage counts and no last use.
    pub enabled: bool,
    /// How often the background pass rolls complete minutes up (whole
    /// minutes; at the multiples of it since the epoch, so every node rolls
    /// up at the same moments and the first one does the work). Reads add
    /// the minutes not rolled up yet, so this is a cost, not a delay: the
    /// roll-up's writes are per key and bucket, whatever the span, so ten
    /// minutes at once cost little more than one minute does (docs/decisions.md,
    /// "Usage rolled up every ten minutes, and keys re-read in batches").
    pub rollup_every: std::time::Duration,
    pub retention: UsageRetention,
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            rollup_every: std::time::Duration::from_secs(600),
            retention: UsageRetention::default(),
        }
    }
}

/// The latest multiple of `every` (whole minutes, at least one; Unix
/// seconds) at or before `now`: a roll-up is due when it is later than the
/// last one's.
fn rollup_due(every: std::time::Duration, now: DateTime<Utc>) -> i64 {
    let every = i64::try_from(every.as_secs() / 60 * 60).unwrap_or(i64::MAX).max(60);
    now.timestamp().div_euclid(every) * every
}

/// Usage of this node: what the verify path records, and the background
/// passes that write it, roll it up and prune it.
pub struct Usage {
    context: Arc<Context>,
    settings: UsageSettings,
    recorder: UsageRecorder<CachedKey>,
    /// When this node last pruned old usage counts (Unix ms, engine clock).
    last_prune_ms: AtomicI64,
    /// The multiple of `rollup_every` this node last rolled usage up at (Unix seconds).
    last_roll_at: AtomicI64,
}

impl Usage {
    pub(crate) fn new(context: Arc<Context>, settings: UsageSettings) -> Self {
        Self {
            context,
            settings,
            recorder: UsageRecorder::default(),
            last_prune_ms: AtomicI64::new(i64::MIN),
            last_roll_at: AtomicI64::new(i64::MIN),
        }
    }

    /// Counts one request of a cached key, unless usage is off.
    pub(crate) fn record(
        &self,
        holder: &Arc<CachedKey>,
        outcome: Outcome,
        client_ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) {
        if self.settings.enabled {
            self.recorder.record(holder, outcome, client_ip, now);
        }
    }

    /// An event the gateway decided, stored with the next flush.
    pub(crate) fn record_event(&self, event: NewEvent) {
        self.recorder.record_event(event);
    }

    /// Counts not yet written to the store.
    pub fn pending(&self) -> usize {
        self.recorder.pending()
    }

    /// Writes recorded usage to the store; see [`UsageRecorder::flush`].
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let context = &self.context;
        let now = context.now();
        let started = std::time::Instant::now();
        let flushed = self
            .recorder
            .flush(context.background_store(), now, || context.new_id("ub", now))
            .await;
        match &flushed {
            // Ok(0) may mean there was nothing to write, so the store was not asked.
            Ok(0) => {}
            Ok(_) => {
                context.store_health().succeeded();
                context
                    .metrics()
                    .store_call(StoreOperation::RecordUsage, started.elapsed(), false);
            }
            Err(_) => {
                context.store_health().failed(now.timestamp_millis());
                context
                    .metrics()
                    .store_call(StoreOperation::RecordUsage, started.elapsed(), true);
            }
        }
        flushed
    }

    /// One background pass: the flush, then the roll-up once every
    /// `rollup_every` and the pruning once an hour. Failures are logged and
    /// retried by a later pass.
    pub(crate) async fn flush_logged(&self) {
        // How long each pass took is logged (debug) so a benchmark can line
        // the data plane's latency up with it (scripts/bench/tail.sh).
        let started = std::time::Instant::now();
        match self.flush().await {
            Ok(0) => {}
            Ok(rows) => tracing::debug!(rows, took_us = started.elapsed().as_micros() as u64, "usage flushed"),
            Err(err) => tracing::warn!(error = %err, pending = self.pending(), "usage flush failed; will retry"),
        }
        let due = rollup_due(self.settings.rollup_every, self.context.now());
        if due > self.last_roll_at.load(Ordering::Relaxed) {
            let started = std::time::Instant::now();
            match self.roll_up().await {
                Ok(rows) => {
                    self.last_roll_at.store(due, Ordering::Relaxed);
                    let took_us = started.elapsed().as_micros() as u64;
                    tracing::debug!(rows, took_us, "usage rolled up to hours and days");
                }
                Err(err) => tracing::warn!(error = %err, "rolling usage up failed; will retry"),
            }
        }
        let now_ms = self.context.now().timestamp_millis();
        let last = self.last_prune_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= PRUNE_EVERY_MS {
            self.last_prune_ms.store(now_ms, Ordering::Relaxed);
            match self.prune().await {
                Ok(rows) => tracing::debug!(rows, "old usage counts pruned"),
                Err(err) => tracing::warn!(error = %err, "pruning old usage counts failed; will retry in an hour"),
            }
        }
    }

    /// Rolls the complete minutes not rolled up yet into hours and days (any
    /// node; the store does it once). Reads never wait for it: they add the
    /// minutes not rolled up. Returns the rollup rows written.
    pub async fn roll_up(&self) -> Result<u64, StoreError> {
        let until = self.context.now().timestamp().div_euclid(60) * 60;
        self.context.background_store().roll_up_usage(until).await
    }

    /// Deletes usage counts older than `usage.keep_*`; returns how many rows.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let cutoffs = self.settings.retention.cutoffs(self.context.now());
        self.context.background_store().prune_usage(&cutoffs).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const OUTCOMES: [Outcome; 3] = [
        Outcome::Admitted,
        Outcome::Refused(ErrorCode::InsufficientScope),
        Outcome::Refused(ErrorCode::RateLimitExceeded),
    ];

    /// A new cache entry's tally of `key_id` in workspace `ws_1`.
    fn entry(key_id: &str) -> Arc<LoneTally> {
        LoneTally::new(ArcStr::from(key_id), ArcStr::from("ws_1"))
    }

    /// Two client addresses, 192.0.2.1 and 192.0.2.2.
    fn here_and_there() -> (IpAddr, IpAddr) {
        ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap())
    }

    /// The last uses a batch writes: when, and from where.
    fn uses_in(batch: &UsageBatch) -> Vec<(DateTime<Utc>, String)> {
        batch.last_uses.iter().map(|u| (u.at, u.ip.clone())).collect()
    }

    /// Roll-ups fall at the multiples of the interval, the same on every node.
    #[test]
    fn a_rollup_is_due_at_each_multiple_of_its_interval() {
        let at = |secs| DateTime::from_timestamp(secs, 0).unwrap();
        let ten = std::time::Duration::from_secs(600);
        assert_eq!(rollup_due(ten, at(1_800_000_000)), 1_800_000_000);
        assert_eq!(rollup_due(ten, at(1_800_000_599)), 1_800_000_000);
        assert_eq!(rollup_due(ten, at(1_800_000_600)), 1_800_000_600);
        let minute = std::time::Duration::from_secs(60);
        assert_eq!(rollup_due(minute, at(1_800_000_119)), 1_800_000_060);
        // Less than a minute, or not whole minutes: rounded down, never below one.
        assert_eq!(
            rollup_due(std::time::Duration::from_secs(5), at(1_800_000_119)),
            1_800_000_060
        );
        assert_eq!(
            rollup_due(std::time::Duration::from_secs(90), at(1_800_000_119)),
            1_800_000_060
        );
    }

    /// No count is lost to an overflow: a full entry makes room for another.
    #[test]
    fn a_count_past_u32_starts_another_entry_and_the_batch_adds_them_up() {
        let recorder = UsageRecorder::default();
        let tally = entry("key_1");
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        recorder.record(&tally, Outcome::Admitted, None, t0);
        tally.tally().counts.as_mut_slice()[0].count = u32::MAX - 1;
        recorder.record(&tally, Outcome::Admitted, None, t0);
        recorder.record(&tally, Outcome::Admitted, None, t0);
        assert_eq!(tally.tally().counts.len(), 2);
        let batch = recorder.take("ub".into(), t0);
        let counts: Vec<(&str, u64)> = batch.counts.iter().map(|c| (c.outcome.as_str(), c.count)).collect();
        assert_eq!(counts, [(ADMITTED, u64::from(u32::MAX) + 1)]);
    }

    /// A tally keeps a use in seconds and milliseconds (`SeenUse`): what a
    /// flush writes is the request's time to the millisecond, and a use a
    /// millisecond older does not replace it.
    #[test]
    fn a_last_use_is_written_to_the_millisecond() {
        let recorder = UsageRecorder::default();
        let tally = entry("key_1");
        let at = DateTime::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let (here, there) = here_and_there();
        recorder.record(&tally, Outcome::Admitted, Some(here), at);
        recorder.record(
            &tally,
            Outcome::Admitted,
            Some(there),
            at - chrono::Duration::milliseconds(1),
        );
        let written = DateTime::from_timestamp(1_700_000_000, 123_000_000).unwrap();
        assert_eq!(
            uses_in(&recorder.take("ub".into(), at)),
            [(written, "192.0.2.1".to_owned())]
        );
    }

    /// Every cached key holds one (memory per cached key, BENCHMARKS.md).
    #[test]
    fn a_tally_stays_small() {
        assert!(std::mem::size_of::<KeyTally>() <= 48);
    }

    proptest! {
        /// Against a plain map of every request: the batches together hold
        /// each request once, and each batch has one row per key, minute and
        /// outcome, however the requests fall on tallies (a key re-read into
        /// the cache has a new one) and between flushes.
        #[test]
        fn batches_add_up_to_every_request(
            steps in proptest::collection::vec((0usize..4, 0usize..2, 0usize..3, 0i64..3, any::<bool>()), 1..200)
        ) {
            let recorder = UsageRecorder::default();
            let tallies: Vec<Vec<Arc<LoneTally>>> = (0..4)
                .map(|key| (0..2).map(|_| entry(&format!("key_{key}"))).collect())
                .collect();
            let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
            let mut expected: BTreeMap<(String, i64, String), u64> = BTreeMap::new();
            let mut flushed: BTreeMap<(String, i64, String), u64> = BTreeMap::new();
            let take = |recorder: &UsageRecorder<LoneTally>, flushed: &mut BTreeMap<_, _>| {
                let batch = recorder.take("ub".into(), t0);
                let mut slots = std::collections::BTreeSet::new();
                for count in batch.counts {
                    let slot = (count.key_id, count.minute, count.outcome);
                    assert!(slots.insert(slot.clone()), "one row per slot in a batch");
                    *flushed.entry(slot).or_insert(0) += count.count;
                }
            };
            for (key, generation, outcome, minute, flush) in steps {
                let at = t0 + chrono::Duration::minutes(minute);
                recorder.record(&tallies[key][generation], OUTCOMES[outcome], None, at);
                let slot = (format!("key_{key}"), at.timestamp().div_euclid(60) * 60, OUTCOMES[outcome].as_str().to_owned());
                *expected.entry(slot).or_insert(0) += 1;
                if flush {
                    take(&recorder, &mut flushed);
                }
            }
            take(&recorder, &mut flushed);
            prop_assert_eq!(flushed, expected);
            prop_assert_eq!(recorder.pending(), 0);
        }
    }

    #[test]
    fn the_latest_last_use_of_a_key_wins_across_its_tallies() {
        let recorder = UsageRecorder::default();
        let old = entry("key_1");
        let new = entry("key_1");
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let (here, there) = here_and_there();
        recorder.record(&new, Outcome::Admitted, Some(there), t0 + chrono::Duration::seconds(2));
        recorder.record(&old, Outcome::Admitted, Some(here), t0);
        let batch = recorder.take("ub".into(), t0);
        assert_eq!(batch.counts.len(), 1);
        assert_eq!(batch.counts[0].count, 2);
        let uses: Vec<_> = batch.last_uses.iter().map(|u| (u.at, u.ip.as_str())).collect();
        assert_eq!(uses, [(t0 + chrono::Duration::seconds(2), "192.0.2.2")]);
    }

    #[test]
    fn at_the_same_instant_the_newer_tally_of_a_key_wins() {
        let recorder = UsageRecorder::default();
        let old = entry("key_1");
        let new = entry("key_1");
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let (before, after): (IpAddr, IpAddr) = ("203.0.113.9".parse().unwrap(), "127.0.0.1".parse().unwrap());
        recorder.record(&old, Outcome::Admitted, Some(before), t0);
        recorder.record(&new, Outcome::Admitted, Some(after), t0);
        let batch = recorder.take("ub".into(), t0);
        let uses: Vec<_> = batch.last_uses.iter().map(|u| u.ip.as_str()).collect();
        assert_eq!(uses, ["127.0.0.1"]);
    }

    #[test]
    fn a_use_the_store_already_has_is_not_written_again() {
        let recorder = UsageRecorder::default();
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let (here, there) = here_and_there();
        // As a key is read: another node wrote its use from `here` at t0.
        let tally = Arc::new(LoneTally {
            key_id: ArcStr::from("key_1"),
            workspace_id: ArcStr::from("ws_1"),
            tally: Mutex::new(KeyTally::known(Some(t0), Some(here))),
        });
        let written = |at: DateTime<Utc>, ip: IpAddr| {
            recorder.record(&tally, Outcome::Admitted, Some(ip), at);
            uses_in(&recorder.take("ub".into(), at))
        };
        assert_eq!(
            written(t0 + chrono::Duration::seconds(30), here),
            [],
            "within the minute"
        );
        let moved = t0 + chrono::Duration::seconds(40);
        assert_eq!(
            written(moved, there),
            [(moved, "192.0.2.2".to_owned())],
            "another address"
        );
        let back = t0 + chrono::Duration::seconds(50);
        assert_eq!(written(back, here), [(back, "192.0.2.1".to_owned())], "and back");
        assert!(
            recorder.take("ub".into(), back).last_uses.is_empty(),
            "nothing new, nothing written"
        );
    }

    /// The tally keeps no address written, only that one changed since: a
    /// use from another address and back, between two flushes, costs one
    /// write more than needed, never one less.
    #[test]
    fn a_flush_after_the_address_moved_and_came_back_writes_the_latest_use() {
        let recorder = UsageRecorder::default();
        let tally = entry("key_1");
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let (here, there) = here_and_there();
        recorder.record(&tally, Outcome::Admitted, Some(here), t0);
        assert_eq!(recorder.take("ub".into(), t0).last_uses.len(), 1, "the first use");
        let back = t0 + chrono::Duration::seconds(2);
        recorder.record(
            &tally,
            Outcome::Admitted,
            Some(there),
            t0 + chrono::Duration::seconds(1),
        );
        recorder.record(&tally, Outcome::Admitted, Some(here), back);
        assert_eq!(
            uses_in(&recorder.take("ub".into(), back)),
            [(back, "192.0.2.1".to_owned())],
            "the latest use, since the address moved meanwhile"
        );
    }

    #[test]
    fn a_last_use_is_written_when_a_minute_later_or_from_another_address() {
        let recorder = UsageRecorder::default();
        let tally = entry("key_1");
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let (here, there) = here_and_there();
        let written = |at: DateTime<Utc>, ip: IpAddr| {
            recorder.record(&tally, Outcome::Admitted, Some(ip), at);
            let batch = recorder.take("ub".into(), at);
            assert_eq!(batch.counts.len(), 1, "every request is counted");
            uses_in(&batch)
        };
        assert_eq!(written(t0, here), [(t0, "192.0.2.1".to_owned())], "the first use");
        assert_eq!(written(t0 + chrono::Duration::seconds(59), here), [], "59 s later");
        let moved = t0 + chrono::Duration::seconds(70);
        assert_eq!(
            written(moved, there),
            [(moved, "192.0.2.2".to_owned())],
            "another address"
        );
        let later = moved + chrono::Duration::seconds(60);
        assert_eq!(
            written(later, there),
            [(later, "192.0.2.2".to_owned())],
            "a minute later"
        );
    }
}
