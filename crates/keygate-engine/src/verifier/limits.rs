//! Step 7 of the request flow: which limits apply to a request, the
//! concurrency permit, and the one atomic decision over every rate limit.

use chrono::{DateTime, Utc};
use keygate_core::duration::format_duration;
use keygate_core::error::ErrorInstance;
use keygate_core::limits::{effective_limits, Enforcement, LimitScope, Plan, DEFAULT_RESOURCE};
use keygate_core::model::{ApiKey, Workspace};
use keygate_core::ratelimit::{Decision, Describe, Rule};
use keygate_core::ErrorCode;
use keygate_limiter::{ArcStr, Charge, CounterKey, CounterLimit, LimitCheck, LimiterError, Permit, PermitKey};

use crate::credits::CreditLedger;
use crate::metrics::Stopwatch;
use crate::plans::PlanBook;
use smallvec::SmallVec;
use std::sync::Arc;

use super::shares::Shares;
use super::{default_resources, CachedKey, LimitMode, Verifier, VerifyRequest};

/// A key's credits as they stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditBalance {
    pub remaining: u64,
    /// When they are next set back to the refill amount; `None`: never.
    pub refill_at: Option<DateTime<Utc>>,
}

impl CreditBalance {
    /// The balance among `decision`'s limits, if the request has one.
    pub fn of(decision: &Decision) -> Option<Self> {
        let balance = decision.balance()?;
        Some(Self {
            remaining: balance.remaining,
            refill_at: balance
                .rule
                .refills_at(decision.now_ms)
                .and_then(|ms| DateTime::<Utc>::from_timestamp_millis(i64::try_from(ms).ok()?)),
        })
    }
}

/// How a request's rate limits stand, with the checks decided (same order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    pub decision: Decision,
    pub checks: Arc<[LimitCheck]>,
    /// The plan's header policy, if it sets one (else `headers.describe`).
    pub describe: Option<Describe>,
}

/// A request's limit checks, and its plan's header policy.
#[derive(Debug, Clone)]
pub(crate) struct LimitSet {
    checks: Arc<[LimitCheck]>,
    describe: Option<Describe>,
}

impl RateLimits {
    /// Takes the set's checks rather than a second reference to them: each
    /// reference is a write to the checks' counts, a line of the key's own
    /// that a request would otherwise touch twice more.
    fn new(decision: Decision, set: LimitSet) -> Self {
        Self {
            decision,
            checks: set.checks,
            describe: set.describe,
        }
    }

    /// The resource of the limit a refusal names (the refusing limit that
    /// admits last), or the first checked.
    pub fn refusing_resource(&self) -> &str {
        self.checks
            .get(self.decision.refusing_index().unwrap_or(0))
            .map_or(DEFAULT_RESOURCE, |check| &**check.key.resource())
    }
}

/// Appended to a shadow limit's resource in its counter's name (never a
/// resource name character, so it cannot collide with a configured one).
pub const SHADOW_SUFFIX: &str = "~shadow";

/// Resource lists remembered per cached key; routes name a handful.
const MAX_MEMOIZED_RESOURCES: usize = 16;

/// A cached key's limit checks per resource list, computed on first use
/// for one generation of plans. Most keys only ever see the default list:
/// it has a field of its own, and the lists routes name are boxed apart, so
/// a key that sees no other pays one empty pointer. The plan's header
/// policy is not kept here: a request reads it from its plan, one lookup
/// among a few plans, where keeping it cost every cached key 8 bytes
/// (memory per cached key, BENCHMARKS.md).
#[derive(Debug, Default)]
pub(crate) struct MemoizedLimits {
    generation: u64,
    default: Option<Checks>,
    #[expect(
        clippy::box_collection,
        reason = "one pointer in every cached key, where a Vec is three"
    )]
    named: Option<Box<Vec<NamedLimits>>>,
}

/// The checks of one resource list, shared by its requests.
type Checks = Arc<[LimitCheck]>;

/// A resource list a route names, and its checks.
type NamedLimits = (Box<[Box<str>]>, Checks);

impl MemoizedLimits {
    /// The checks for `resources`, if computed under this `generation` of
    /// plans; what an older generation computed is forgotten.
    fn get(&mut self, generation: u64, resources: &[String]) -> Option<Checks> {
        if self.generation != generation {
            *self = Self {
                generation,
                ..Self::default()
            };
        }
        if resources == default_resources() {
            return self.default.clone();
        }
        let same = |names: &[Box<str>]| names.iter().map(|n| &**n).eq(resources.iter().map(String::as_str));
        let named = self.named.as_deref()?;
        named
            .iter()
            .find(|(names, _)| same(names))
            .map(|(_, checks)| checks.clone())
    }

    /// Starts loading the counters of `resources`' checks, each a line of
    /// its own that 10,000 keys in turn rarely find in the CPU's caches, so
    /// that their misses overlap the access checks rather than follow them
    /// (BENCHMARKS.md, "Misses overlapped" and "Prefetched lines"). The
    /// checks themselves are read here. Only the default list: a named one
    /// would need the search it saves.
    pub(crate) fn touch(&self, resources: &[String]) {
        if resources != default_resources() {
            return;
        }
        for check in self.default.as_deref().unwrap_or_default() {
            check.touch();
        }
    }

    /// Keeps the checks for `resources`, up to [`MAX_MEMOIZED_RESOURCES`] lists.
    fn keep(&mut self, resources: &[String], checks: Checks) {
        if resources == default_resources() {
            self.default = Some(checks);
            return;
        }
        let named = self.named.get_or_insert_with(Box::default);
        if named.len() < MAX_MEMOIZED_RESOURCES {
            named.push((resources.iter().map(|r| Box::from(r.as_str())).collect(), checks));
        }
    }
}

/// The resources of a request that its plan caps, with each cap; most
/// requests name one resource, and most plans cap none.
type Caps<'r> = SmallVec<[(&'r str, u32); 2]>;

fn concurrency_caps<'r>(plan: &Plan, resources: &'r [String]) -> Caps<'r> {
    resources
        .iter()
        .filter_map(|resource| Some((resource.as_str(), plan.concurrency_for(resource)?)))
        .collect()
}

fn millis(now: DateTime<Utc>) -> u64 {
    u64::try_from(now.timestamp_millis()).unwrap_or(0)
}

impl Verifier {
    /// The checks for `resources` (every limit of each, once), computed once
    /// per cached key and plan generation: plans come from the config (a
    /// reload bumps the generation) and overrides from the cached rows, which
    /// change only when the key leaves the cache.
    pub(crate) fn limit_checks(&self, cached: &CachedKey, resources: &[String]) -> LimitSet {
        let plans = self.plans();
        let plan = plans.of(cached.workspace().plan.as_ref());
        self.checks_under(&plans, plan, cached, resources)
    }

    /// [`Self::limit_checks`] with the plans already read: a decision reads
    /// them once for its checks and its concurrency caps.
    fn checks_under(
        &self,
        plans: &PlanBook,
        plan: Option<&Plan>,
        cached: &CachedKey,
        resources: &[String],
    ) -> LimitSet {
        let describe = plan.and_then(|plan| plan.describe);
        let mut memo = cached.limit_checks();
        if let Some(checks) = memo.get(plans.generation(), resources) {
            return LimitSet { checks, describe };
        }
        let mut checks: Vec<LimitCheck> = Vec::new();
        for resource in resources {
            for check in compute_limit_checks(plan, cached, resource, &self.shares) {
                // A resource without limits of its own falls back to
                // `default`'s: stacked with `default`, they count once.
                if !checks.iter().any(|c| c.key == check.key) {
                    checks.push(check);
                }
            }
        }
        if let Some(slot) = shared_slot(plan, cached) {
            checks = checks.into_iter().map(|check| check.in_slot_of(slot.clone())).collect();
        }
        checks.extend(credits_check(plan, cached));
        let checks: Checks = checks.into();
        memo.keep(resources, checks.clone());
        LimitSet { checks, describe }
    }

    /// The permit first (a refusal there charges nothing), then every rate
    /// limit as one decision; a refused rate limit releases the permit.
    pub(crate) async fn apply_limits(
        &self,
        cached: &CachedKey,
        request: &VerifyRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<(Option<RateLimits>, Option<Permit>), (ErrorInstance, Option<RateLimits>)> {
        let charge = match request.limits {
            LimitMode::Skip => return Ok((None, None)),
            LimitMode::DryRun => Charge::DryRun,
            LimitMode::Enforce => Charge::Consume,
        };
        // One read of the plans: the guard is let go before any wait.
        let (set, caps) = {
            let plans = self.plans();
            let plan = plans.of(cached.workspace().plan.as_ref());
            let caps = match (charge, plan) {
                (Charge::Consume, Some(plan)) => concurrency_caps(plan, request.resources),
                _ => Caps::new(),
            };
            (self.checks_under(&plans, plan, cached, request.resources), caps)
        };
        let permit = self.take_permits(cached, &caps).await?;
        if set.checks.is_empty() {
            return Ok((None, permit));
        }
        let started = Stopwatch::start();
        let decided = self.decide_limits(&set.checks, request.cost, charge, now).await;
        self.context.metrics().limiter_took(started.elapsed());
        let decision = match decided {
            Ok(decision) => decision,
            Err(err) => {
                tracing::warn!(error = %err, "rate limits could not be checked");
                return Err((ErrorInstance::new(ErrorCode::ServiceUnavailable), None));
            }
        };
        if decision.allowed && charge == Charge::Consume {
            self.credits.record(&set.checks, &decision);
        }
        if decision.allowed {
            Ok((Some(RateLimits::new(decision, set)), permit))
        } else if decision.out_of_credits() {
            Err((usage_exceeded(&decision), Some(RateLimits::new(decision, set))))
        } else {
            Err((rate_limited(&decision), Some(RateLimits::new(decision, set))))
        }
    }

    /// A permit of every capped resource, held as one: all or none.
    async fn take_permits(
        &self,
        cached: &CachedKey,
        caps: &[(&str, u32)],
    ) -> Result<Option<Permit>, (ErrorInstance, Option<RateLimits>)> {
        let mut held = Vec::new();
        for &(resource, max) in caps {
            // A refusal drops (releases) the permits taken before it.
            held.push(self.take_permit(cached, resource, max).await?);
        }
        Ok(match held.len() {
            0 => None,
            1 => held.pop(),
            _ => Some(Permit::new(move || drop(held))),
        })
    }

    async fn take_permit(
        &self,
        cached: &CachedKey,
        resource: &str,
        max: u32,
    ) -> Result<Permit, (ErrorInstance, Option<RateLimits>)> {
        let key = PermitKey {
            owner: cached.lineage_id().clone(),
            resource: Arc::from(resource),
        };
        match self.limiter.acquire(&key, max).await {
            Ok(Some(permit)) => Ok(permit),
            Ok(None) => Err((
                ErrorInstance::new(ErrorCode::ConcurrencyLimitExceeded)
                    .with_data("limit", max)
                    .with_data("resource", resource),
                None,
            )),
            Err(err) => {
                tracing::warn!(error = %err, "concurrency permit could not be taken");
                Err((ErrorInstance::new(ErrorCode::ServiceUnavailable), None))
            }
        }
    }

    /// How the limits stand without charging them: for the headers of a
    /// request refused for another reason. Failures just mean no headers.
    pub(crate) async fn peek_limits(
        &self,
        cached: &CachedKey,
        resources: &[String],
        now: DateTime<Utc>,
    ) -> Option<RateLimits> {
        let set = self.limit_checks(cached, resources);
        if set.checks.is_empty() {
            return None;
        }
        let decision = self.decide_limits(&set.checks, 1, Charge::DryRun, now).await.ok()?;
        Some(RateLimits::new(decision, set))
    }

    /// One decision over `checks`; a backend that decides without waiting
    /// is called without a boxed future.
    async fn decide_limits(
        &self,
        checks: &[LimitCheck],
        cost: u64,
        charge: Charge,
        now: DateTime<Utc>,
    ) -> Result<Decision, LimiterError> {
        match self.limiter.check_now(checks, cost, charge, millis(now)) {
            Some(decision) => Ok(decision),
            None => self.limiter.check(checks, cost, charge, millis(now)).await,
        }
    }

    /// Charges a cost the upstream reported for an admitted request
    /// (`cost_header`) to every limit the request counted against, whatever
    /// room they have: it was spent. Later requests see it; the request
    /// itself was already answered (docs/decisions.md: the race it allows).
    pub async fn charge_reported_cost(&self, cached: &CachedKey, resources: &[String], cost: u64) {
        let set = self.limit_checks(cached, resources);
        if set.checks.is_empty() || cost == 0 {
            return;
        }
        let now = self.context.clock_now();
        match self.decide_limits(&set.checks, cost, Charge::Force, now).await {
            Ok(decision) => self.credits.record(&set.checks, &decision),
            Err(err) => tracing::warn!(error = %err, cost, "a reported cost could not be charged"),
        }
    }

    /// Shadow limits that would have refused an admitted request: counted
    /// in `/metrics`, announced once per limit and window.
    pub(crate) fn report_shadow_refusals(&self, cached: &CachedKey, limits: &RateLimits, now: DateTime<Utc>) {
        let decision = &limits.decision;
        for (state, check) in decision.limits.iter().zip(limits.checks.iter()) {
            if !state.shadow_refused {
                continue;
            }
            self.context.metrics().shadow_refusal();
            let counter = check.key.resource();
            let resource = counter.strip_suffix(SHADOW_SUFFIX).unwrap_or(counter);
            self.events
                .shadow_limit_exceeded(cached, (counter, resource), state, decision, now);
        }
    }

    /// Brings a key's credit balance back from the store, once per process,
    /// where the limiter does not keep counts (crates/keygate-engine/src/credits.rs).
    /// A store that does not answer leaves it for the next load: the
    /// balance then counts from what this node has seen.
    pub(crate) async fn restore_credits(&self, cached: &CachedKey, now: DateTime<Utc>) {
        let plans = self.plans();
        let Some(check) = credits_check(plans.of(cached.workspace().plan.as_ref()), cached) else {
            return;
        };
        if !self.credits.needs_restore(&check) {
            return;
        }
        let read = tokio::time::timeout(
            self.settings.store_timeout,
            self.context
                .store()
                .credit_spend(&check.key.owner, check.key.resource()),
        )
        .await;
        match read {
            Ok(Ok(saved)) => {
                if let Some(saved) = saved {
                    self.limiter
                        .restore(&check, CreditLedger::bucket_of(&saved), millis(now));
                }
                self.credits.mark_restored(&check);
            }
            Ok(Err(err)) => tracing::warn!(error = %err, key_id = %cached.id(), "a credit balance could not be read"),
            Err(_) => tracing::warn!(key_id = %cached.id(), "reading a credit balance timed out"),
        }
    }

    /// A key's credit balance now, without spending it: for the dashboard's
    /// key page. `None` for a key without credits, or when the limiter did
    /// not answer.
    pub async fn credit_balance(&self, key: ApiKey, workspace: Workspace) -> Option<CreditBalance> {
        let now = self.context.clock_now();
        let cached = CachedKey::new(key, workspace, &self.shares, now);
        let check = credits_check(self.plans().of(cached.workspace().plan.as_ref()), &cached)?;
        self.restore_credits(&cached, now).await;
        let decision = self
            .decide_limits(std::slice::from_ref(&check), 1, Charge::DryRun, now)
            .await
            .ok()?;
        CreditBalance::of(&decision)
    }

    /// Writes what credit balances have spent since the last flush; kept
    /// for the next one if the store does not take it.
    pub async fn flush_credits(&self) {
        let spends = self.credits.drain();
        if spends.is_empty() {
            return;
        }
        if let Err(err) = self.context.store().save_credit_spends(&spends).await {
            tracing::warn!(error = %err, balances = spends.len(), "credit balances could not be saved; will retry");
            self.credits.put_back(spends);
        }
    }

    /// Readiness of the rate-limit backend, for `/readyz`.
    pub async fn limiter_readiness(&self) -> keygate_limiter::LimiterHealth {
        self.limiter.readiness().await
    }
}

/// `RATE_LIMIT_EXCEEDED` naming the limit that admits last and when.
fn rate_limited(decision: &Decision) -> ErrorInstance {
    let mut error = ErrorInstance::new(ErrorCode::RateLimitExceeded);
    if let Some(seconds) = decision.retry_after_secs() {
        error = error.with_data("retry_after", seconds);
    }
    if let Some(limit) = decision.refusing() {
        let window = std::time::Duration::from_millis(limit.rule.window_ms);
        error = error
            .with_data("limit", limit.rule.requests)
            .with_data("window", format_duration(window));
    }
    error
}

/// `USAGE_EXCEEDED`: the key's credits are spent. `data` says when they
/// refill, if they do.
fn usage_exceeded(decision: &Decision) -> ErrorInstance {
    let mut error = ErrorInstance::new(ErrorCode::UsageExceeded).with_data("remaining", 0);
    if let Some(at) = CreditBalance::of(decision).and_then(|balance| balance.refill_at) {
        error = error.with_data("refill_at", at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    if let Some(seconds) = decision.retry_after_secs() {
        error = error.with_data("retry_after", seconds);
    }
    error
}

/// Counter names of credit balances start with this (never a resource name
/// character); the origin and the spec follow, so credits set again, or
/// changed in the workspace or plan, start a new count (docs/decisions.md).
pub const CREDITS_RESOURCE: &str = "~credits@";

/// The Redis Cluster hash tag of every counter of the key, when it is not
/// the key's lineage: a key that any per-workspace limit applies to (for
/// any resource) keeps all its counters in its workspace's slot, so that
/// one script can decide its own and the workspace's counters together,
/// and each counter has one name whichever resource is asked.
fn shared_slot(plan: Option<&Plan>, cached: &CachedKey) -> Option<ArcStr> {
    let plan_limits = plan.map_or(&[][..], |plan| &plan.limits[..]);
    let mut every = plan_limits
        .iter()
        .chain(&cached.workspace().limits)
        .chain(cached.limits());
    every
        .any(|spec| spec.scope == LimitScope::Workspace)
        .then(|| cached.workspace_id().clone())
}

/// The key's credit balance, if it has credits: its own, else its
/// workspace's, else its plan's. One balance per key lineage (rotation
/// keeps it), whatever the resource.
fn credits_check(plan: Option<&Plan>, cached: &CachedKey) -> Option<LimitCheck> {
    let spec = cached
        .own_credits()
        .or(cached.workspace().credits.as_ref())
        .or_else(|| plan.and_then(|plan| plan.credits.as_ref()))?;
    let origin_ms = cached.credits_origin_ms();
    let rule = spec.rule(origin_ms);
    let check = LimitCheck::new(
        CounterKey::new(
            cached.lineage_id().clone(),
            format!("{CREDITS_RESOURCE}{origin_ms}:{}", spec.tag()),
            rule.window_ms,
        ),
        rule,
    );
    Some(match shared_slot(plan, cached) {
        Some(slot) => check.in_slot_of(slot),
        None => check,
    })
}

/// The counters a request to `resource` charges: per key lineage (so
/// rotation keeps them) or per workspace for `scope = "workspace"` limits.
/// Their rules come from `shares`: the keys of a plan hold one copy.
fn compute_limit_checks(plan: Option<&Plan>, cached: &CachedKey, resource: &str, shares: &Shares) -> Vec<LimitCheck> {
    let plan_limits = plan.map_or(&[][..], |plan| &plan.limits[..]);
    effective_limits(plan_limits, &cached.workspace().limits, cached.limits(), resource)
        .into_iter()
        .filter_map(|spec| {
            let window = spec.window().ok()?;
            let owner = match spec.scope {
                LimitScope::Key => cached.lineage_id().clone(),
                LimitScope::Workspace => cached.workspace_id().clone(),
            };
            let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
            let rule = Rule::new(spec.requests, window_ms);
            // A shadow limit counts on a counter of its own: beside an
            // enforced limit of the same window, sharing would mix their counts.
            let (resource, rule) = match spec.mode {
                Enforcement::Enforce => (Arc::from(spec.resource.as_str()), rule),
                Enforcement::Shadow => (Arc::from(format!("{}{SHADOW_SUFFIX}", spec.resource)), rule.in_shadow()),
            };
            let limit = shares.counter_limit(CounterLimit::new(resource, window_ms));
            Some(LimitCheck::new(CounterKey::of(owner, limit), shares.rule(rule)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> Checks {
        Arc::from(Vec::new())
    }

    fn same(a: &Option<Checks>, b: &Checks) -> bool {
        a.as_ref().is_some_and(|a| Arc::ptr_eq(a, b))
    }

    #[test]
    fn checks_are_kept_per_resource_list_for_one_generation_of_plans() {
        let mut memo = MemoizedLimits::default();
        let (default, search) = (set(), set());
        let searches = ["search".to_owned()];
        assert!(memo.get(1, default_resources()).is_none());
        memo.keep(default_resources(), default.clone());
        memo.keep(&searches, search.clone());
        assert!(same(&memo.get(1, default_resources()), &default));
        assert!(same(&memo.get(1, &searches), &search));
        assert!(memo.get(1, &["other".to_owned()]).is_none());
        assert!(memo.get(2, &searches).is_none(), "a reload's plans start over");
        assert!(memo.get(2, default_resources()).is_none());
    }

    #[test]
    fn a_key_keeps_at_most_a_few_named_lists() {
        let mut memo = MemoizedLimits::default();
        let lists: Vec<[String; 1]> = (0..=MAX_MEMOIZED_RESOURCES).map(|n| [format!("r{n}")]).collect();
        for list in &lists {
            memo.get(1, list);
            memo.keep(list, set());
        }
        assert!(memo.get(1, &lists[MAX_MEMOIZED_RESOURCES - 1]).is_some());
        assert!(memo.get(1, &lists[MAX_MEMOIZED_RESOURCES]).is_none());
    }

    /// Every cached key holds one (memory per cached key, BENCHMARKS.md).
    #[test]
    fn memoized_limits_stay_small() {
        assert!(std::mem::size_of::<MemoizedLimits>() <= 32);
    }
}
