//! Prometheus metrics, served as `/metrics` on the control plane.
//!
//! No label ever carries a key or a key id: keys are secrets and would make
//! one series per key. Per-key detail is the usage API's. The series are
//! bounded by the error catalog, the configured routes and the workspaces.
//! Recording is a few atomic increments; the text is built only when scraped.

use std::fmt;
use std::time::Duration;

use keygate_limiter::ArcStr;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A label value shared with the data it names (a workspace id, a route path),
/// so recording a request does not allocate.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct LabelText(pub ArcStr);

impl EncodeLabelValue for LabelText {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, &self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `admitted`, `unauthenticated` (a route with `auth = false`), or the error code.
    pub outcome: &'static str,
    /// The matched route's path, `/v1/whoami`, or empty when no route matched.
    pub route: LabelText,
    /// Empty when no key was identified.
    pub workspace: LabelText,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    /// `delivered`, `failed` (will be retried) or `gave_up`.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// What a key lookup found in this node's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    /// Cached but past its TTL: read again (or served stale while the store is down).
    Stale,
    Miss,
}

impl CacheResult {
    const ALL: [Self; 3] = [Self::Hit, Self::Stale, Self::Miss];

    fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Stale => "stale",
            Self::Miss => "miss",
        }
    }
}

/// Store calls the metrics time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOperation {
    FindKey,
    /// Keys in use re-read ahead of their TTL, many in one call.
    FindKeys,
    RecordUsage,
    Ping,
}

impl StoreOperation {
    fn as_str(self) -> &'static str {
        match self {
            Self::FindKey => "find_key",
            Self::FindKeys => "find_keys",
            Self::RecordUsage => "record_usage",
            Self::Ping => "ping",
        }
    }
}

/// Times what the latency histograms show. It reads the CPU's time-stamp
/// counter through quanta: about 12 ns a read on the benchmark machine, where
/// `std::time::Instant` (the vDSO's `clock_gettime`) takes about 24, and a
/// request with a key reads it four times (BENCHMARKS.md, "Fewer clock reads
/// and one plan read per decision"). Where the counter cannot be trusted,
/// quanta reads the monotonic clock instead. Its first read calibrates the
/// counter (well under a millisecond), so [`Metrics`] makes one at start.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(quanta::Instant);

impl Stopwatch {
    pub fn start() -> Self {
        Self(quanta::Instant::now())
    }

    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Latency buckets from 50 µs to about 0.8 s: a cached verify takes
/// microseconds, a store or Redis round trip milliseconds.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 15))
}

#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    verify_seconds: Histogram,
    cache: Family<CacheLabels, Counter>,
    /// The cache family's three counters, held so a lookup costs one increment.
    cache_results: [Counter; 3],
    limiter_seconds: Histogram,
    store_seconds: Family<OperationLabels, Histogram>,
    store_errors: Family<OperationLabels, Counter>,
    webhook_attempts: Family<WebhookLabels, Counter>,
    webhook_seconds: Histogram,
    shadow_refusals: Counter,
    legacy_key_requests: Counter,
    fast_path_requests: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let cache = Family::<CacheLabels, Counter>::default();
        let cache_results = CacheResult::ALL.map(|result| {
            cache
                .get_or_create(&CacheLabels {
                    result: result.as_str(),
                })
                .clone()
        });
        let store_errors = Family::<OperationLabels, Counter>::default();
        // Known label sets start at 0, so a rate over them exists from the first scrape.
        for operation in [
            StoreOperation::FindKey,
            StoreOperation::RecordUsage,
            StoreOperation::Ping,
        ] {
            let _ = store_errors.get_or_create(&OperationLabels {
                operation: operation.as_str(),
            });
        }
        // Calibrated here, not on the first request.
        let _ = Stopwatch::start();
        let webhook_attempts = Family::<WebhookLabels, Counter>::default();
        for result in ["delivered", "failed", "gave_up"] {
            let _ = webhook_attempts.get_or_create(&WebhookLabels { result });
        }
        Self {
            webhook_attempts,
            // A receiver answers in milliseconds to seconds; the timeout caps it.
            webhook_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            requests: Family::default(),
            verify_seconds: latency_histogram(),
            cache,
            cache_results,
            limiter_seconds: latency_histogram(),
            store_seconds: Family::new_with_constructor(latency_histogram),
            store_errors,
            shadow_refusals: Counter::default(),
            legacy_key_requests: Counter::default(),
            fast_path_requests: Counter::default(),
        }
    }
}

/// Values read from other parts at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScrapeValues<'a> {
    pub limiter_fallbacks: u64,
    /// The gateway's upstream targets (the server owns them).
    pub targets: &'a [TargetSample],
}

/// One upstream target of a route as `/metrics` shows it. The labels come
/// from config, so the series are bounded by it.
#[derive(Debug, Clone)]
pub struct TargetSample {
    pub route: LabelText,
    /// `host:port`.
    pub target: LabelText,
    /// In rotation (not left out after failures).
    pub up: bool,
    /// Requests the target answered.
    pub answered: u64,
    /// Connections it refused and requests that timed out.
    pub failed: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    route: LabelText,
    target: LabelText,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetResultLabels {
    route: LabelText,
    target: LabelText,
    result: &'static str,
}

/// The targets' gauges and counters, made from their samples at scrape time.
fn target_families(targets: &[TargetSample]) -> (Family<TargetLabels, Gauge>, Family<TargetResultLabels, Counter>) {
    let up = Family::<TargetLabels, Gauge>::default();
    let requests = Family::<TargetResultLabels, Counter>::default();
    for sample in targets {
        let labels = TargetLabels {
            route: sample.route.clone(),
            target: sample.target.clone(),
        };
        up.get_or_create(&labels).set(i64::from(sample.up));
        for (result, count) in [("answered", sample.answered), ("failed", sample.failed)] {
            requests
                .get_or_create(&TargetResultLabels {
                    route: labels.route.clone(),
                    target: labels.target.clone(),
                    result,
                })
                .inc_by(count);
        }
    }
    (up, requests)
}

impl Metrics {
    pub fn request(&self, labels: &RequestLabels) {
        self.requests.get_or_create(labels).inc();
    }

    pub fn verify_took(&self, took: Duration) {
        self.verify_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn cache_lookup(&self, result: CacheResult) {
        self.cache_results[result as usize].inc();
    }

    pub(crate) fn limiter_took(&self, took: Duration) {
        self.limiter_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn store_call(&self, operation: StoreOperation, took: Duration, failed: bool) {
        let labels = OperationLabels {
            operation: operation.as_str(),
        };
        self.store_seconds.get_or_create(&labels).observe(took.as_secs_f64());
        if failed {
            self.store_errors.get_or_create(&labels).inc();
        }
    }

    /// One delivery attempt: `delivered`, `failed` (retried later) or `gave_up`.
    pub(crate) fn webhook_attempt(&self, result: &'static str, took: Duration) {
        self.webhook_attempts.get_or_create(&WebhookLabels { result }).inc();
        self.webhook_seconds.observe(took.as_secs_f64());
    }

    /// A request a shadow limit would have refused (it was admitted).
    pub(crate) fn shadow_refusal(&self) {
        self.shadow_refusals.inc();
    }

    /// A request that presented an imported key in another system's format
    /// (crates/keygate-core/src/legacy.rs): how much traffic still needs
    /// rotating before `keys.legacy` can be turned off.
    pub(crate) fn legacy_key_request(&self) {
        self.legacy_key_requests.inc();
    }

    /// A request the data plane's fast path answered
    /// (crates/keygate-server/src/http/gateway/raw.rs), not hyper's.
    pub fn fast_path_request(&self) {
        self.fast_path_requests.inc();
    }

    /// The text format, as Prometheus scrapes it.
    pub fn encode(&self, values: ScrapeValues) -> Result<String, fmt::Error> {
        let mut registry = Registry::with_prefix("keygate");
        registry.register(
            "requests",
            "Data-plane requests by outcome (admitted or error code), route and workspace",
            self.requests.clone(),
        );
        registry.register(
            "verify_duration_seconds",
            "Time to decide a request: key, cache or store, checks and limits",
            self.verify_seconds.clone(),
        );
        registry.register(
            "cache_lookups",
            "Key lookups in this node's cache: hit, stale (read again) or miss",
            self.cache.clone(),
        );
        registry.register(
            "limiter_duration_seconds",
            "Time of one rate-limit decision by the limiter backend",
            self.limiter_seconds.clone(),
        );
        registry.register(
            "limiter_fallbacks",
            "Limiter calls answered by limiter.on_failure because Redis did not answer",
            ConstCounter::new(values.limiter_fallbacks),
        );
        registry.register(
            "store_duration_seconds",
            "Time of store calls by operation",
            self.store_seconds.clone(),
        );
        registry.register(
            "store_errors",
            "Store calls that failed or timed out, by operation",
            self.store_errors.clone(),
        );
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts by result: delivered, failed (retried later) or gave_up",
            self.webhook_attempts.clone(),
        );
        registry.register(
            "webhook_attempt_duration_seconds",
            "Time from sending a webhook to the receiver's answer (or the error)",
            self.webhook_seconds.clone(),
        );
        registry.register(
            "shadow_refusals",
            "Requests a limit in shadow mode would have refused; they were admitted",
            self.shadow_refusals.clone(),
        );
        registry.register(
            "legacy_key_requests",
            "Requests with an imported key in another system's format (keys.legacy); rotate them to retire the setting",
            self.legacy_key_requests.clone(),
        );
        registry.register(
            "fast_path_requests",
            "Requests the data plane answered on its hand-written HTTP/1.1 path; the rest went through hyper",
            self.fast_path_requests.clone(),
        );
        let (target_up, target_requests) = target_families(values.targets);
        registry.register(
            "upstream_target_up",
            "1 while an upstream target is in rotation, 0 while it is left out after failures",
            target_up,
        );
        registry.register(
            "upstream_target_requests",
            "Requests to an upstream target by result: answered, or failed (connection refused or timed out)",
            target_requests,
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }
}
