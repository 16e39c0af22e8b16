//! The hot path: `Engine::verify` for a cached valid key, an unknown key
//! (answered by the negative cache) and a malformed key (answered by the
//! checksum, before any hashing or lookup).
//!
//! Run: `cargo bench -p keygate-engine --bench verify`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures::executor::block_on;
use keygate_core::throttle::FailurePolicy;
use keygate_core::KeyFormat;
use keygate_engine::admin::{NewKey, NewWorkspace};
use keygate_engine::{Actor, Engine, EngineSettings, SystemClock, VerifyRequest};
use keygate_store::sqlite::SqliteStore;

fn engine(runtime: &tokio::runtime::Runtime, dir: &std::path::Path) -> (Engine, String) {
    runtime.block_on(async {
        let store = SqliteStore::open(&format!("sqlite://{}/bench.db", dir.display()))
            .await
            .unwrap();
        let settings = EngineSettings {
            key_format: KeyFormat::new("kg", &["live".into()]).unwrap(),
            cache_capacity: 100_000,
            cache_ttl: Duration::from_secs(600),
            negative_cache_ttl: Duration::from_secs(600),
            failed_attempts: FailurePolicy {
                max_failures: 20,
                window: Duration::from_secs(60),
            },
            default_rotation_grace: Duration::from_secs(3600),
            max_metadata_bytes: 4096,
            plans: Default::default(),
        };
        let engine = Engine::new(Arc::new(store), Arc::new(SystemClock), settings);
        let ws = engine
            .create_workspace(
                &Actor::cli(),
                NewWorkspace {
                    name: "bench".into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let input = NewKey {
            name: "bench".into(),
            scopes: vec!["invoices:*".into()],
            ..Default::default()
        };
        let (_, key) = engine.create_key(&Actor::cli(), &ws.id, input).await.unwrap();
        (engine, key.expose().to_owned())
    })
}

fn verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (engine, key) = engine(&runtime, dir.path());
    let scopes = vec!["invoices:write".to_owned()];
    let ip = Some([203, 0, 113, 7].into());
    let unknown = KeyFormat::new("kg", &["live".into()])
        .unwrap()
        .generate("live", &mut rand::thread_rng())
        .unwrap();
    let mut malformed = key.clone();
    malformed.pop();
    malformed.push('!');

    // Warm the caches: the benchmarks measure the steady state.
    runtime.block_on(async {
        engine
            .verify(VerifyRequest {
                presented: &key,
                client_ip: ip,
                required_scopes: &scopes,
                record: true,
            })
            .await
            .unwrap();
        let _ = engine
            .verify(VerifyRequest {
                presented: unknown.expose(),
                client_ip: None,
                required_scopes: &[],
                record: true,
            })
            .await;
    });

    let mut group = c.benchmark_group("verify");
    group.bench_function("cached_valid_key", |b| {
        b.iter(|| {
            let request = VerifyRequest {
                presented: &key,
                client_ip: ip,
                required_scopes: &scopes,
                record: true,
            };
            block_on(engine.verify(request)).unwrap()
        })
    });
    group.bench_function("unknown_key", |b| {
        b.iter(|| {
            let request = VerifyRequest {
                presented: unknown.expose(),
                client_ip: None,
                required_scopes: &[],
                record: true,
            };
            block_on(engine.verify(request)).unwrap_err()
        })
    });
    group.bench_function("malformed_key", |b| {
        b.iter(|| {
            let request = VerifyRequest {
                presented: &malformed,
                client_ip: None,
                required_scopes: &[],
                record: true,
            };
            block_on(engine.verify(request)).unwrap_err()
        })
    });
    group.bench_function("sha256_of_a_key", |b| {
        b.iter(|| keygate_core::KeyHash::of(std::hint::black_box(&key)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(2));
    targets = verify
}
criterion_main!(benches);
