//! The hot path: `Engine::verify` for a cached valid key (without limits, and
//! with two memory-backed rate limits), an unknown key (answered by the
//! negative cache) and a malformed key (answered by the checksum, before any
//! hashing or lookup); and the gateway benchmark's decision (one limit, one
//! scope) with its CPU caches cold, over 10,000 keys and over one.
//!
//! Run: `cargo bench -p keygate-engine --bench verify`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use futures::executor::block_on;
use keygate_core::limits::{LimitScope, LimitSpec, Plan};
use keygate_core::throttle::FailurePolicy;
use keygate_core::KeyFormat;
use keygate_engine::admin::{NewKey, NewWorkspace};
use keygate_engine::{Actor, Engine, EngineSettings, SystemClock, VerifyRequest};
use keygate_limiter::memory::MemoryLimiter;
use keygate_limiter::ArcStr;
use keygate_store::sqlite::SqliteStore;

fn limit(requests: u64, per: &str) -> LimitSpec {
    LimitSpec {
        resource: "default".into(),
        requests,
        per: per.into(),
        scope: LimitScope::Key,
        mode: Default::default(),
    }
}

/// An engine with a key on a plan without limits and a key on a plan with
/// 1000/hour and 100/minute (never reached: the bench measures admitted requests).
fn engine(runtime: &tokio::runtime::Runtime, dir: &std::path::Path) -> (Engine, String, String) {
    runtime.block_on(async {
        let store = SqliteStore::open(&format!("sqlite://{}/bench.db", dir.display()))
            .await
            .unwrap();
        let plans = BTreeMap::from([
            ("unlimited".to_owned(), Plan::default()),
            (
                "team".to_owned(),
                Plan {
                    limits: vec![limit(u64::MAX / 2, "1h"), limit(u64::MAX / 4, "1m")],
                    ..Plan::default()
                },
            ),
            (
                "bench".to_owned(),
                Plan {
                    limits: vec![limit(u64::MAX / 2, "1h")],
                    ..Plan::default()
                },
            ),
        ]);
        let settings = EngineSettings {
            verifier: keygate_engine::VerifierSettings {
                key_format: KeyFormat::new("kg", &["live".into()]).unwrap(),
                cache_capacity: 100_000,
                cache_ttl: Duration::from_secs(600),
                cache_ttl_unheard: Duration::from_secs(1),
                max_stale: Duration::from_secs(300),
                store_timeout: Duration::from_secs(2),
                negative_cache_ttl: Duration::from_secs(600),
                legacy_keys: false,
                failed_attempts: FailurePolicy {
                    max_failures: 20,
                    window: Duration::from_secs(60),
                },
                plans: keygate_engine::plans::PlanBook::new(plans, None),
                roles: Default::default(),
            },
            admin: keygate_engine::admin::AdminSettings {
                default_rotation_grace: Duration::from_secs(3600),
                max_metadata_bytes: 4096,
                on_leak: keygate_core::model::OnLeak::Revoke,
                leak_grace: Duration::from_secs(3600),
            },
            usage: keygate_engine::usage::UsageSettings::default(),
            ..Default::default()
        };
        let limiter = Arc::new(MemoryLimiter::new(100_000));
        let engine = Engine::new(Arc::new(store), Arc::new(SystemClock), limiter, settings);
        let mut keys = Vec::new();
        for plan in ["unlimited", "team"] {
            let input = NewWorkspace {
                name: plan.into(),
                plan: Some(plan.into()),
                ..Default::default()
            };
            let ws = engine.admin().create_workspace(&Actor::cli(), input).await.unwrap();
            let input = NewKey {
                name: "bench".into(),
                scopes: vec!["invoices:*".into()],
                ..Default::default()
            };
            let (_, key) = engine.admin().create_key(&Actor::cli(), &ws.id, input).await.unwrap();
            keys.push(key.expose().to_owned());
        }
        (engine, keys.remove(0), keys.remove(0))
    })
}

/// `count` keys on the gateway benchmark's plan (one limit, never reached)
/// with its scope, as scripts/bench/common.sh makes them.
fn bench_keys(runtime: &tokio::runtime::Runtime, engine: &Engine, count: usize) -> Vec<String> {
    runtime.block_on(async {
        let input = NewWorkspace {
            name: "bench".into(),
            plan: Some("bench".into()),
            ..Default::default()
        };
        let ws = engine.admin().create_workspace(&Actor::cli(), input).await.unwrap();
        let mut keys = Vec::with_capacity(count);
        for i in 0..count {
            let input = NewKey {
                name: format!("k{i}"),
                scopes: vec!["bench:read".into()],
                ..Default::default()
            };
            let (_, key) = engine.admin().create_key(&Actor::cli(), &ws.id, input).await.unwrap();
            keys.push(key.expose().to_owned());
        }
        keys
    })
}

fn with_scopes<'a>(key: &'a str, scopes: &'a [String], ip: Option<std::net::IpAddr>) -> VerifyRequest<'a> {
    VerifyRequest {
        required_scopes: scopes,
        ..VerifyRequest::new(key, ip)
    }
}

fn verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (engine, unlimited, limited) = engine(&runtime, dir.path());
    let scopes = vec!["invoices:write".to_owned()];
    let ip = Some([203, 0, 113, 7].into());
    let unknown = KeyFormat::new("kg", &["live".into()])
        .unwrap()
        .generate("live", &mut rand::thread_rng())
        .unwrap();
    let mut malformed = unlimited.clone();
    malformed.pop();
    malformed.push('!');
    let request = |key| with_scopes(key, &scopes, ip);

    // Warm the caches: the benchmarks measure the steady state.
    runtime.block_on(async {
        engine.verifier().verify(request(&unlimited)).await.unwrap();
        engine.verifier().verify(request(&limited)).await.unwrap();
        let _ = engine
            .verifier()
            .verify(VerifyRequest::new(unknown.expose(), None))
            .await;
    });

    let mut group = c.benchmark_group("verify");
    group.bench_function("cached_valid_key", |b| {
        b.iter(|| block_on(engine.verifier().verify(request(&unlimited))).unwrap())
    });
    group.bench_function("cached_valid_key_two_limits", |b| {
        b.iter(|| block_on(engine.verifier().verify(request(&limited))).unwrap())
    });
    group.bench_function("unknown_key", |b| {
        b.iter(|| block_on(engine.verifier().verify(VerifyRequest::new(unknown.expose(), None))).unwrap_err())
    });
    group.bench_function("malformed_key", |b| {
        b.iter(|| block_on(engine.verifier().verify(VerifyRequest::new(&malformed, None))).unwrap_err())
    });
    group.bench_function("sha256_of_a_key", |b| {
        b.iter(|| keygate_core::KeyHash::of(std::hint::black_box(&unlimited)))
    });
    group.finish();
}

/// Five lines apart, so a walk spans pages without a TLB miss on each line.
const STRIDE: usize = 320;

/// Reads `lines` lines of `buffer` from `at`, as the kernel's work between
/// two requests through the gateway (about 20 µs of it) evicts the CPU's
/// caches.
fn pollute(buffer: &[u8], at: &mut usize, lines: usize) {
    for _ in 0..lines {
        *at = (*at + STRIDE) % buffer.len();
        std::hint::black_box(buffer[*at]);
    }
}

/// The gateway benchmark's decision (case 4: a scope, one limit) with cold
/// caches: each verify, of a random key among 10,000 or of one key, follows
/// a walk of `COLD_LINES` lines (1,024 unless set) over a 16 MiB buffer
/// that evicts most of what the last one left in the CPU's caches. Only
/// the verify is timed. The difference between the two key counts is what
/// the keys' own state misses; one key's figure less a hot verify's is what
/// the path's code and shared data miss (BENCHMARKS.md, "Misses overlapped").
fn cold(c: &mut Criterion) {
    let lines: usize = std::env::var("COLD_LINES").map_or(1024, |v| v.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (engine, _, _) = engine(&runtime, dir.path());
    let keys = bench_keys(&runtime, &engine, 10_000);
    let scopes = vec!["bench:read".to_owned()];
    let ip = Some([203, 0, 113, 7].into());
    runtime.block_on(async {
        for key in &keys {
            engine.verifier().verify(with_scopes(key, &scopes, ip)).await.unwrap();
        }
    });
    let buffer = vec![1u8; 16 << 20];
    let mut at = 0;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut presented = String::new();
    let mut group = c.benchmark_group("cold");
    for among in [keys.len(), 1] {
        group.bench_function(format!("verify_among_{among}_keys"), |b| {
            b.iter_custom(|iterations| {
                let mut took = Duration::ZERO;
                for _ in 0..iterations {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    pollute(&buffer, &mut at, lines);
                    // Copied as the kernel copies a request: hot when verified.
                    presented.clear();
                    presented.push_str(&keys[(state % among as u64) as usize]);
                    let started = Instant::now();
                    block_on(engine.verifier().verify(with_scopes(&presented, &scopes, ip))).unwrap();
                    took += started.elapsed();
                }
                took
            })
        });
    }
    group.finish();
}

/// Recording a request's usage, with 10,000 keys in turn as in the gateway
/// benchmark: every key's counter is touched again before the next flush.
fn usage(c: &mut Criterion) {
    use keygate_engine::usage::{LoneTally, Outcome, UsageRecorder};
    let recorder = UsageRecorder::default();
    let workspace = ArcStr::from("ws_01J9ZK3Q4W8X2V5N7M0000AAAA");
    let tallies: Vec<Arc<LoneTally>> = (0..10_000)
        .map(|i| LoneTally::new(ArcStr::from(format!("key_01J9ZK3Q4W8X2V5N7M{i:08}")), workspace.clone()))
        .collect();
    let ip = Some([203, 0, 113, 7].into());
    let now = chrono::Utc::now();
    let mut next = tallies.iter().cycle();
    let mut group = c.benchmark_group("usage");
    group.bench_function("record_10000_keys_in_turn", |b| {
        b.iter(|| recorder.record(next.next().unwrap(), Outcome::Admitted, ip, now))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(2));
    targets = verify, cold, usage
}
criterion_main!(benches);
