//! Limiter decisions: the memory backend with two limits on one key, and the
//! Redis backend (one Lua round trip) sequentially and with 32 in flight.
//!
//! Run: `cargo bench -p keygate-limiter --bench limiter`
//! (the Redis cases need Redis on 127.0.0.1:6379, or `KEYGATE_REDIS_URL`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keygate_core::ratelimit::Rule;
use keygate_limiter::memory::MemoryLimiter;
use keygate_limiter::redis::RedisLimiter;
use keygate_limiter::{ArcStr, Charge, CounterKey, LimitCheck, Limiter};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// 1000/hour and 100/minute with limits high enough never to refuse, so
/// every iteration is a full admit-and-charge decision.
fn two_limits(owner: &str) -> Vec<LimitCheck> {
    let owner = ArcStr::from(owner);
    [(3_600_000, u64::MAX / 2), (60_000, u64::MAX / 4)]
        .into_iter()
        .map(|(window_ms, requests)| {
            LimitCheck::new(
                CounterKey::new(owner.clone(), "default", window_ms),
                Rule::new(requests, window_ms),
            )
        })
        .collect()
}

fn limiter(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let memory = MemoryLimiter::new(100_000);
    let checks = two_limits(&format!("bench-{:x}", rand::random::<u64>()));
    let now = now_ms();
    let mut group = c.benchmark_group("limiter");
    group.bench_function("memory_two_limits", |b| {
        b.iter(|| memory.decide_now(&checks, 1, Charge::Consume, now))
    });

    let url = std::env::var("KEYGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = Arc::new(RedisLimiter::new(&url, Duration::from_secs(2)).unwrap());
    if runtime.block_on(redis.ping()).is_err() {
        eprintln!("Redis unreachable at {url}: skipping the Redis benchmarks");
        group.finish();
        return;
    }
    group.bench_function("redis_two_limits_sequential", |b| {
        b.iter(|| runtime.block_on(redis.check(&checks, 1, Charge::Consume, 0)).unwrap())
    });
    const IN_FLIGHT: u64 = 32;
    group.throughput(Throughput::Elements(IN_FLIGHT));
    group.bench_function("redis_two_limits_32_in_flight", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let tasks: Vec<_> = (0..IN_FLIGHT)
                    .map(|i| {
                        let (redis, checks) = (redis.clone(), two_limits(&format!("bench-concurrent-{i}")));
                        tokio::spawn(async move { redis.check(&checks, 1, Charge::Consume, 0).await.unwrap() })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(2));
    targets = limiter
}
criterion_main!(benches);
