//! The verify path: presented key -> decision.
//!
//! Steps 2 to 7 of the request flow. A cached key costs a SHA-256, one cache
//! lookup, the pure checks and the limiter, with no store round trip and no
//! lock held across an await.

mod cached_key;
mod changes;
mod forgotten;
pub(crate) mod limits;
mod refresh;
mod shares;
pub(crate) mod store_health;

pub use cached_key::CachedKey;
pub use changes::Hearing;
pub use limits::RateLimits;
use shares::Shares;
pub use store_health::StoreStatus;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use rustc_hash::FxHashSet;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use chrono::{DateTime, Utc};
use keygate_core::error::ErrorInstance;
use keygate_core::legacy::Shape;
use keygate_core::limits::DEFAULT_RESOURCE;
use keygate_core::model::{ApiKey, Workspace};
use keygate_core::prefetch::prefetch;
use keygate_core::role::Roles;
use keygate_core::throttle::{FailurePolicy, FailureWindow};
use keygate_core::{check_access, ErrorCode, KeyFormat, KeyHash};
use keygate_limiter::{Limiter, Permit};
use keygate_store::StoreError;
use moka::sync::Cache;
use std::sync::LazyLock;

use crate::context::Context;
use crate::credits::CreditLedger;
use crate::events::Events;
use crate::metrics::{CacheResult, ScrapeValues, StoreOperation, TargetSample};
use crate::plans::PlanBook;
use crate::usage::{Outcome, Usage};
use changes::HearingState;

/// What the verify path needs of the config.
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    pub key_format: KeyFormat,
    /// Most keys held in the positive cache.
    pub cache_capacity: u64,
    /// Safety net: a cached key is re-read from the store at least this often.
    pub cache_ttl: Duration,
    /// The same while this node cannot hear other nodes' changes: it bounds
    /// how late a revocation made elsewhere is seen.
    pub cache_ttl_unheard: Duration,
    /// How long a cached key keeps verifying after its last successful read,
    /// while the store does not answer.
    pub max_stale: Duration,
    /// The longest the verify path waits for the store.
    pub store_timeout: Duration,
    /// How long an unknown hash is remembered, so a flood of bad keys costs nothing.
    pub negative_cache_ttl: Duration,
    /// Look up credentials that are not in `key_format` by the hash of the
    /// whole string: imported keys of another system (`keys.legacy`,
    /// crates/keygate-core/src/legacy.rs).
    pub legacy_keys: bool,
    pub failed_attempts: FailurePolicy,
    /// The plans of the config. Read by [`Verifier::new`] only: from then on
    /// [`Verifier::plans`] holds them, and a config reload replaces them.
    pub plans: PlanBook,
    /// The config's roles; like `plans`, [`Verifier::roles`] holds them from
    /// [`Verifier::new`] on.
    pub roles: Roles,
}

impl Default for VerifierSettings {
    fn default() -> Self {
        Self {
            key_format: KeyFormat::default(),
            cache_capacity: 10_000,
            cache_ttl: Duration::from_secs(60),
            cache_ttl_unheard: Duration::from_secs(1),
            max_stale: Duration::from_secs(300),
            store_timeout: Duration::from_secs(2),
            negative_cache_ttl: Duration::from_secs(10),
            legacy_keys: false,
            failed_attempts: FailurePolicy {
                max_failures: 10,
                window: Duration::from_secs(60),
            },
            plans: PlanBook::default(),
            roles: Roles::default(),
        }
    }
}

/// `["default"]`: what most routes count against.
static DEFAULT_RESOURCES: LazyLock<[String; 1]> = LazyLock::new(|| [DEFAULT_RESOURCE.to_owned()]);

/// The resources of a request that names none.
pub fn default_resources() -> &'static [String] {
    &*DEFAULT_RESOURCES
}

/// An admitted request: who it is, how its limits stand, and the concurrency
/// permit it holds (if its resource has a concurrency limit) until dropped.
#[derive(Debug)]
pub struct Verified {
    pub key: Arc<CachedKey>,
    pub limits: Option<RateLimits>,
    pub permit: Option<Permit>,
}

/// A refused request: the error to answer, the key when one was identified
/// (so usage is attributed) and its limits (so the response carries the headers).
#[derive(Debug, Clone)]
pub struct Rejection {
    pub error: ErrorInstance,
    pub key: Option<Arc<CachedKey>>,
    pub limits: Option<RateLimits>,
}

impl Rejection {
    pub(crate) fn anonymous(code: ErrorCode) -> Self {
        Self {
            error: ErrorInstance::new(code),
            key: None,
            limits: None,
        }
    }
}

/// How a verification treats rate limits and concurrency permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitMode {
    /// A real request: charge the limits and take a permit.
    Enforce,
    /// Report what would happen without charging anything (verify `dry_run`).
    DryRun,
    /// No limits (admin API authentication).
    Skip,
}

/// What a caller asks of one verification.
#[derive(Debug, Clone, Copy)]
pub struct VerifyRequest<'a> {
    pub presented: &'a str,
    /// The client's address: checked against allowlists and used for throttling.
    pub client_ip: Option<IpAddr>,
    pub required_scopes: &'a [String],
    /// The rate-limit resources the request counts against (`default` for
    /// most routes; a route may stack several, decided as one).
    pub resources: &'a [String],
    /// What the request spends of each rate limit (a route's `cost`; 1 by default).
    pub cost: u64,
    pub limits: LimitMode,
    /// Record usage for this request (false for dry runs).
    pub record: bool,
}

impl<'a> VerifyRequest<'a> {
    /// A plain request: no scopes, the `default` resource, limits enforced.
    pub fn new(presented: &'a str, client_ip: Option<IpAddr>) -> Self {
        Self {
            presented,
            client_ip,
            required_scopes: &[],
            resources: default_resources(),
            cost: 1,
            limits: LimitMode::Enforce,
            record: true,
        }
    }
}

/// The verify path: a presented key to a decision, with the key cache, the
/// negative cache, the failed-attempt throttle, the limits and what this node
/// hears of other nodes' changes.
pub struct Verifier {
    context: Arc<Context>,
    settings: VerifierSettings,
    /// Swapped whole by a config reload ([`Verifier::replace_plans`]).
    plans: ArcSwap<PlanBook>,
    /// Swapped whole by a config reload ([`Verifier::replace_roles`]); read
    /// at each scope check, so a changed role applies from the next request.
    roles: ArcSwap<Roles>,
    limiter: Arc<dyn Limiter>,
    /// Every request reads it, so it is quick_cache (one shard read lock and
    /// a probe per hit) rather than moka, whose reads queue bookkeeping and
    /// cost about 1.3 µs a request in the gateway's profile (BENCHMARKS.md).
    /// Entries carry no time-to-live: freshness and `store.max_stale` are
    /// decided on the engine's clock (`age`, `reload`), and capacity
    /// bounds memory.
    cache: quick_cache::sync::Cache<CacheSlot, Arc<CachedKey>>,
    /// Workspaces and access lists, one copy each for the cached keys.
    shares: Shares,
    /// Bumped by every eviction, so a store read that raced with one is not cached.
    evictions: AtomicU64,
    /// What this cache dropped, numbered, for followers outside the node
    /// (`GET /v1/keys/changes`). Boxed: the verify path never reads it, and
    /// the fields it does read stay as close together as before.
    forgotten: Box<forgotten::ForgetLog>,
    unknown: Cache<KeyHash, ()>,
    failures: Cache<IpAddr, Arc<Mutex<FailureWindow>>>,
    usage: Arc<Usage>,
    events: Arc<Events>,
    hearing: HearingState,
    /// Credit balances kept in the store where the limiter forgets them.
    credits: CreditLedger,
    /// Keys being re-read ahead of their TTL (refresh.rs).
    refreshes: Arc<refresh::Refreshes>,
    /// This verifier, for the tasks that re-read keys ahead.
    me: Weak<Verifier>,
}

/// Where a cached key stands in its TTL.
enum Age {
    Fresh,
    /// Fresh, and due to be re-read ahead of its TTL (refresh.rs).
    DueForRefresh,
    Stale,
}

/// Where the key cache keeps a key: the first 128 bits of its hash. The
/// cache's slab holds every key it has, so half the hash is 16 bytes less
/// per cached key (memory per cached key, BENCHMARKS.md). Only a secret
/// whose SHA-256 shares those 128 bits with a cached key's could be taken
/// for it: a second preimage of 128 bits, as hard as guessing a 128-bit
/// secret. The store is still read by the whole hash. Two `u64`s, not a
/// `u128`, whose 16-byte alignment would pad every slab entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CacheSlot(u64, u64);

impl CacheSlot {
    fn of(hash: &KeyHash) -> Self {
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&hash.as_bytes()[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        Self(word(0), word(8))
    }
}

/// Holds up to `capacity` keys; memory for the first few thousand is set
/// aside up front, the rest as keys arrive.
fn key_cache(capacity: u64) -> quick_cache::sync::Cache<CacheSlot, Arc<CachedKey>> {
    const PREALLOCATED: u64 = 4096;
    let estimated = usize::try_from(capacity.min(PREALLOCATED)).unwrap_or(4096);
    quick_cache::sync::Cache::with(
        estimated,
        capacity,
        quick_cache::UnitWeighter,
        quick_cache::DefaultHashBuilder::default(),
        quick_cache::sync::DefaultLifecycle::default(),
    )
}

impl Verifier {
    /// `me` is the `Arc` this verifier is made in (`Arc::new_cyclic`).
    pub(crate) fn new(
        me: Weak<Verifier>,
        context: Arc<Context>,
        limiter: Arc<dyn Limiter>,
        mut settings: VerifierSettings,
        usage: Arc<Usage>,
        events: Arc<Events>,
    ) -> Self {
        let plans = ArcSwap::from_pointee(std::mem::take(&mut settings.plans));
        let roles = ArcSwap::from_pointee(std::mem::take(&mut settings.roles));
        let cache = key_cache(settings.cache_capacity);
        let unknown = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(settings.negative_cache_ttl)
            .build();
        let failures = Cache::builder()
            .max_capacity(100_000)
            .time_to_idle(settings.failed_attempts.window)
            .build();
        Self {
            context,
            settings,
            plans,
            roles,
            credits: CreditLedger::new(!limiter.keeps_counts()),
            limiter,
            cache,
            shares: Shares::default(),
            evictions: AtomicU64::new(0),
            forgotten: Box::new(forgotten::ForgetLog::new()),
            unknown,
            failures,
            usage,
            events,
            hearing: HearingState::new(),
            refreshes: Arc::default(),
            me,
        }
    }

    /// The format keys are made and read in.
    /// The rate limiter, for counters that are not a key's (crates/keygate-engine/src/admin/leaks.rs).
    pub(crate) fn limiter(&self) -> &dyn Limiter {
        self.limiter.as_ref()
    }

    pub fn key_format(&self) -> &KeyFormat {
        &self.settings.key_format
    }

    /// The plans now in force.
    pub fn plans(&self) -> Guard<Arc<PlanBook>> {
        self.plans.load()
    }

    /// A config reload's plans: requests from now on are limited by them
    /// (each cached key recomputes its checks on its next request); requests
    /// already past their limit check are not.
    pub fn replace_plans(&self, plans: PlanBook) {
        self.plans.rcu(|current| current.succeeded_by(plans.clone()));
    }

    /// The roles now in force.
    pub fn roles(&self) -> Guard<Arc<Roles>> {
        self.roles.load()
    }

    /// A config reload's roles: every key holding a role is checked against
    /// them from the next request on.
    pub fn replace_roles(&self, roles: Roles) {
        self.roles.store(Arc::new(roles));
    }

    /// Decides one request. Never touches the store for a cached key or a
    /// malformed one.
    ///
    /// The store's paths (a miss, a stale key) are boxed: they are rare,
    /// and their futures (about 2 KB) would otherwise be part of every
    /// request's future, which is moved as it is built (BENCHMARKS.md,
    /// "Smaller request futures").
    pub async fn verify(&self, request: VerifyRequest<'_>) -> Result<Verified, Rejection> {
        let now = self.context.clock_now();
        let (hash, own) = match Shape::of(&self.settings.key_format, request.presented) {
            Shape::Own(own) => (own.hash(), Some(own)),
            Shape::Legacy(key) if self.settings.legacy_keys => (key.hash(), None),
            _ => return Err(self.invalid_key(request.client_ip, now)),
        };
        let found = self
            .cache
            .get(&CacheSlot::of(&hash))
            .inspect(|cached| cached.prefetch());
        let cached = match found {
            Some(cached) => match self.age(&hash, &cached, now) {
                Age::Fresh => {
                    self.context.metrics().cache_lookup(CacheResult::Hit);
                    cached
                }
                Age::DueForRefresh => {
                    self.context.metrics().cache_lookup(CacheResult::Hit);
                    self.refresh_in_background(hash);
                    cached
                }
                Age::Stale => {
                    self.context.metrics().cache_lookup(CacheResult::Stale);
                    Box::pin(self.reload(hash, cached, now)).await?
                }
            },
            None => {
                // The checksum, only now: a cached key's held when it was read
                // (no other key is read), and a typo of one has another hash.
                if own.is_some_and(|own| own.check().is_err()) {
                    return Err(self.invalid_key(request.client_ip, now));
                }
                self.context.metrics().cache_lookup(CacheResult::Miss);
                Box::pin(self.load(hash, request.client_ip, now)).await?
            }
        };
        if own.is_none() {
            self.context.metrics().legacy_key_request();
        }
        self.decide(cached, &request, now).await
    }

    /// Whether credentials outside the key format are looked up (`keys.legacy`).
    pub fn takes_legacy_keys(&self) -> bool {
        self.settings.legacy_keys
    }

    /// Fresh while read from the store less than a TTL ago: `cache.ttl`
    /// while this node hears other nodes' changes (or needs not),
    /// `cache.ttl_unheard` otherwise. Due for a re-read from a point late
    /// in the TTL that depends on the key (refresh.rs).
    fn age(&self, hash: &KeyHash, cached: &CachedKey, now: DateTime<Utc>) -> Age {
        let ttl_ms = millis_of(self.current_cache_ttl());
        let age_ms = now.timestamp_millis() - cached.loaded_at_ms();
        if age_ms >= ttl_ms {
            Age::Stale
        } else if age_ms >= refresh::refresh_from_ms(hash, ttl_ms) {
            Age::DueForRefresh
        } else {
            Age::Fresh
        }
    }

    /// Queues a key for a re-read (refresh.rs); the request goes on with the
    /// cached key. When no reader is at work, starts one in a task of its
    /// own: it lets keys gather for a moment, then reads them many at a time
    /// until none is left. Outside a Tokio runtime nothing is queued, and
    /// the key is re-read at its TTL.
    fn refresh_in_background(&self, hash: KeyHash) {
        let (Some(verifier), Ok(runtime)) = (self.me.upgrade(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let Some(mut turn) = self.refreshes.queue(hash) else {
            return;
        };
        runtime.spawn(async move {
            tokio::time::sleep(refresh::GATHER).await;
            while let Some(batch) = turn.next_batch() {
                verifier.reread_keys(batch).await;
            }
        });
    }

    /// Re-reads cached keys in one store call (bounded by `store.timeout`)
    /// and caches each as [`Self::read_key`] does. A key the store no
    /// longer has is forgotten; a failed read leaves the cached keys as
    /// they are, for the TTL and `store.max_stale`.
    async fn reread_keys(&self, hashes: &[KeyHash]) {
        let now = self.context.clock_now();
        let now_ms = now.timestamp_millis();
        if !self.context.store_health().may_try(now_ms) {
            return;
        }
        let evictions = self.evictions.load(Ordering::SeqCst);
        let read = self.context.store().find_keys_by_hashes(hashes);
        let Ok(found) = self
            .ask_store(StoreOperation::FindKeys, read, now_ms, &hashes.len())
            .await
        else {
            return;
        };
        let mut gone: FxHashSet<KeyHash> = hashes.iter().copied().collect();
        for (key, workspace) in found {
            gone.remove(&key.hash);
            self.cache_read(key, workspace, evictions, now).await;
        }
        // Keys are never removed from the store, so this is a hand-edited database.
        for hash in gone {
            self.forget_key(&hash);
        }
    }

    pub(crate) fn current_cache_ttl(&self) -> Duration {
        match self.hearing.get() {
            Hearing::NotListening => self.settings.cache_ttl_unheard.min(self.settings.cache_ttl),
            Hearing::Listening | Hearing::NotNeeded => self.settings.cache_ttl,
        }
    }

    /// Steps 4 to 7 for an identified key: state, address and scopes, then
    /// the concurrency permit, then every rate limit as one decision.
    async fn decide(
        &self,
        cached: Arc<CachedKey>,
        request: &VerifyRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Verified, Rejection> {
        // The counters and the key's id (which the gateway writes in the
        // identity headers) are lines of their own, rarely in the CPU's
        // caches with many keys: their loads start now and overlap the
        // access checks (BENCHMARKS.md, "Misses overlapped", "Prefetched lines").
        cached.limit_checks().touch(request.resources);
        prefetch(&**cached.id());
        // Most keys hold no roles: they skip loading the config's.
        let loaded;
        let roles = if cached.roles().is_empty() {
            &Roles::NONE
        } else {
            loaded = self.roles.load();
            &**loaded
        };
        let checked = check_access(
            cached.access(),
            cached.workspace(),
            request.client_ip,
            request.required_scopes,
            roles,
            now,
        );
        if let Err(denial) = checked {
            self.record(&cached, request, Outcome::Refused(denial.code()), now);
            let mut error = ErrorInstance::new(denial.code());
            error.scope = denial.missing_scope().map(str::to_owned);
            let limits = self.peek_limits(&cached, request.resources, now).await;
            return Err(Rejection {
                error,
                key: Some(cached),
                limits,
            });
        }
        match self.apply_limits(&cached, request, now).await {
            Ok((limits, permit)) => {
                self.record(&cached, request, Outcome::Admitted, now);
                if let Some(limits) = limits.as_ref().filter(|_| request.limits == LimitMode::Enforce) {
                    self.report_shadow_refusals(&cached, limits, now);
                }
                Ok(Verified {
                    key: cached,
                    limits,
                    permit,
                })
            }
            Err((error, limits)) => {
                self.record(&cached, request, Outcome::Refused(error.code), now);
                let announce = error.code == ErrorCode::RateLimitExceeded
                    && request.record
                    && request.limits == LimitMode::Enforce;
                if let Some(limits) = limits.as_ref().filter(|_| announce) {
                    self.events
                        .rate_limit_exceeded(&cached, limits.refusing_resource(), &limits.decision, now);
                }
                Err(Rejection {
                    error,
                    key: Some(cached),
                    limits,
                })
            }
        }
    }

    fn record(&self, cached: &Arc<CachedKey>, request: &VerifyRequest<'_>, outcome: Outcome, now: DateTime<Utc>) {
        if request.record {
            self.usage.record(cached, outcome, request.client_ip, now);
        }
    }

    /// A cache miss: refuse throttled clients and remembered unknown hashes
    /// before asking the store.
    async fn load(
        &self,
        hash: KeyHash,
        client_ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) -> Result<Arc<CachedKey>, Rejection> {
        if let Some(rejection) = self.throttled(client_ip, now) {
            return Err(rejection);
        }
        if self.unknown.contains_key(&hash) {
            return Err(self.invalid_key(client_ip, now));
        }
        match self.read_key(hash, now).await {
            Ok(Some(cached)) => Ok(cached),
            Ok(None) => {
                self.unknown.insert(hash, ());
                Err(self.invalid_key(client_ip, now))
            }
            Err(Unanswered) => Err(Rejection::anonymous(ErrorCode::ServiceUnavailable)),
        }
    }

    /// A cached key past its TTL: re-read it, or keep using it for up to
    /// `store.max_stale` while the store does not answer.
    async fn reload(
        &self,
        hash: KeyHash,
        stale: Arc<CachedKey>,
        now: DateTime<Utc>,
    ) -> Result<Arc<CachedKey>, Rejection> {
        match self.read_key(hash, now).await {
            Ok(Some(fresh)) => Ok(fresh),
            // Keys are never removed from the store, so this is a hand-edited database.
            Ok(None) => {
                self.forget_key(&hash);
                Err(Rejection::anonymous(ErrorCode::InvalidApiKey))
            }
            Err(Unanswered) if now.timestamp_millis() - stale.loaded_at_ms() <= millis_of(self.settings.max_stale) => {
                Ok(stale)
            }
            Err(Unanswered) => Err(Rejection::anonymous(ErrorCode::ServiceUnavailable)),
        }
    }

    /// Reads a key from the store (bounded by `store.timeout`) and caches it,
    /// unless an eviction raced with the read. `Err` when the store did not
    /// answer or is known to be down and this is not the request that probes it.
    async fn read_key(&self, hash: KeyHash, now: DateTime<Utc>) -> Result<Option<Arc<CachedKey>>, Unanswered> {
        let now_ms = now.timestamp_millis();
        if !self.context.store_health().may_try(now_ms) {
            return Err(Unanswered);
        }
        let evictions = self.evictions.load(Ordering::SeqCst);
        let read = self.context.store().find_key_by_hash(&hash);
        let found = self.ask_store(StoreOperation::FindKey, read, now_ms, &hash).await?;
        let Some((key, workspace)) = found else {
            return Ok(None);
        };
        Ok(Some(self.cache_read(key, workspace, evictions, now).await))
    }

    /// One key read from the store, bounded by `store.timeout`, timed for
    /// `/metrics` and counted in the store's health; `about` (the key's
    /// hash, or how many keys) goes to the log when it fails.
    async fn ask_store<T>(
        &self,
        operation: StoreOperation,
        read: impl std::future::Future<Output = Result<T, StoreError>>,
        now_ms: i64,
        about: &(dyn std::fmt::Debug + Sync),
    ) -> Result<T, Unanswered> {
        let started = std::time::Instant::now();
        let read = tokio::time::timeout(self.settings.store_timeout, read).await;
        let failed = !matches!(read, Ok(Ok(_)));
        self.context.metrics().store_call(operation, started.elapsed(), failed);
        match read {
            Ok(Ok(found)) => {
                self.context.store_health().succeeded();
                return Ok(found);
            }
            Ok(Err(err)) => tracing::warn!(error = %err, ?operation, keys = ?about, "key read failed"),
            Err(_) => {
                let timeout = self.settings.store_timeout;
                tracing::warn!(?operation, keys = ?about, ?timeout, "key read timed out");
            }
        }
        self.context.store_health().failed(now_ms);
        Err(Unanswered)
    }

    /// Caches a key read from the store, unless an eviction since the read
    /// began (`evictions` then) may have been for it: the read may predate
    /// the change, so it must not stay cached.
    async fn cache_read(
        &self,
        key: ApiKey,
        workspace: Workspace,
        evictions: u64,
        now: DateTime<Utc>,
    ) -> Arc<CachedKey> {
        let slot = CacheSlot::of(&key.hash);
        let cached = Arc::new(CachedKey::new(key, workspace, &self.shares, now));
        // Before the key is cached, so no request spends from a balance
        // that is not back yet.
        self.restore_credits(&cached, now).await;
        self.cache.insert(slot, cached.clone());
        if self.evictions.load(Ordering::SeqCst) != evictions {
            self.cache.remove(&slot);
        }
        cached
    }

    /// Counts a failure against the client and answers `INVALID_API_KEY`, or
    /// `TOO_MANY_FAILED_ATTEMPTS` once the client is over the threshold.
    fn invalid_key(&self, client_ip: Option<IpAddr>, now: DateTime<Utc>) -> Rejection {
        if let Some(rejection) = self.throttled(client_ip, now) {
            return rejection;
        }
        if let Some(ip) = client_ip {
            let policy = self.settings.failed_attempts;
            let window = self
                .failures
                .get_with(ip, || Arc::new(Mutex::new(FailureWindow::new(now))));
            let mut window = window.lock();
            if window.record_failure(&policy, now) {
                self.events
                    .failure_burst(ip, policy.max_failures, policy.window, window.started(), now);
            }
        }
        Rejection::anonymous(ErrorCode::InvalidApiKey)
    }

    /// A credential that could not even be read (not UTF-8, oversized) counts
    /// as a failed attempt like any other invalid key.
    pub fn reject_unreadable(&self, client_ip: Option<IpAddr>) -> Rejection {
        self.invalid_key(client_ip, self.context.clock_now())
    }

    fn throttled(&self, client_ip: Option<IpAddr>, now: DateTime<Utc>) -> Option<Rejection> {
        let window = self.failures.get(&client_ip?)?;
        let blocked_for = window.lock().blocked_for(&self.settings.failed_attempts, now)?;
        Some(Rejection {
            error: ErrorInstance::new(ErrorCode::TooManyFailedAttempts).with_data("retry_after", blocked_for),
            key: None,
            limits: None,
        })
    }

    /// Drops a key from this node's cache so its next request reads the store.
    pub(crate) fn forget_key(&self, hash: &KeyHash) {
        self.evictions.fetch_add(1, Ordering::SeqCst);
        self.cache.remove(&CacheSlot::of(hash));
        self.unknown.invalidate(hash);
        self.forgotten.key(*hash);
    }

    /// Workspace changes affect every cached key of the workspace; they are rare,
    /// so the whole cache is dropped rather than indexed by workspace.
    pub(crate) fn forget_all_keys(&self) {
        self.evictions.fetch_add(1, Ordering::SeqCst);
        self.cache.clear();
        self.forgotten.all();
    }

    /// The keys dropped after `after` (crates/keygate-engine/src/verifier/forgotten.rs).
    pub(crate) async fn forgotten_since(
        &self,
        after: Option<u64>,
        wait: std::time::Duration,
    ) -> forgotten::ForgottenSince {
        self.forgotten.wait_since(after, wait).await
    }

    /// Keys in this node's cache now.
    pub(crate) fn cached_keys(&self) -> u64 {
        self.cache.len() as u64
    }

    /// `/metrics` in the Prometheus text format.
    pub fn encode_metrics(&self, targets: &[TargetSample]) -> Result<String, std::fmt::Error> {
        self.context.metrics().encode(ScrapeValues {
            limiter_fallbacks: self.limiter.fallbacks(),
            targets,
        })
    }
}

/// The store did not answer a key read (or is known to be down and this
/// request is not the one that probes it).
struct Unanswered;

fn millis_of(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `F` that `_f` returns, without calling it.
    fn future_size<A, B, F: std::future::Future>(_f: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// `verify` is part of every authenticated request's future; the
    /// store's paths are boxed out of it (2,344 bytes before, 680 after, a
    /// debug build; crates/keygate-server/src/http/gateway.rs,
    /// `a_requests_future_stays_small`).
    #[test]
    fn the_verify_future_stays_small() {
        let verify = future_size(Verifier::verify);
        assert!(verify <= 800, "verify's future is {verify} bytes");
    }
}
