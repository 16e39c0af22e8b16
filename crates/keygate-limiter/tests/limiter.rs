//! Both backends against the contract: exact under concurrency, atomic across
//! limits, shared between instances, and resilient when Redis is cut. Redis
//! tests use the real local Redis (`KEYGATE_REDIS_URL`, default
//! `redis://127.0.0.1:6379`) and a TCP proxy the test can cut.

// Test code: a failed expectation should panic where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keygate_core::ratelimit::Rule;
use keygate_limiter::memory::MemoryLimiter;
use keygate_limiter::redis::RedisLimiter;
use keygate_limiter::resilient::{OnFailure, ResilientLimiter};
use keygate_limiter::{ArcStr, Charge, CounterKey, LimitCheck, Limiter, PermitKey};
use tokio::net::{TcpListener, TcpStream};

const MINUTE: u64 = 60_000;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The local Redis, or `None` (skip) unless KEYGATE_REQUIRE_SERVICES=1 demands it.
async fn redis_url() -> Option<String> {
    let url = std::env::var("KEYGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let probe = RedisLimiter::new(&url, Duration::from_secs(2)).unwrap();
    match probe.ping().await {
        Ok(()) => Some(url),
        Err(err) if std::env::var("KEYGATE_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("Redis is required (KEYGATE_REQUIRE_SERVICES=1) but unreachable at {url}: {err}")
        }
        Err(err) => {
            eprintln!("skipped: Redis unreachable at {url}: {err}");
            None
        }
    }
}

/// A fresh owner per test run, so runs never share counters.
fn owner(name: &str) -> ArcStr {
    ArcStr::from(format!("test-{name}-{:x}", rand::random::<u64>()))
}

fn check(owner: &ArcStr, requests: u64, window_ms: u64) -> LimitCheck {
    LimitCheck::new(
        CounterKey::new(owner.clone(), "default", window_ms),
        Rule::new(requests, window_ms),
    )
}

/// 64 tasks hammer the same limits; returns how many requests were admitted.
async fn hammer(limiters: Vec<Arc<dyn Limiter>>, checks: Vec<LimitCheck>, attempts_per_task: usize) -> usize {
    let checks = Arc::new(checks);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let limiter = limiters[i % limiters.len()].clone();
            let checks = checks.clone();
            tokio::spawn(async move {
                let mut admitted = 0;
                for _ in 0..attempts_per_task {
                    if limiter
                        .check(&checks, 1, Charge::Consume, now_ms())
                        .await
                        .unwrap()
                        .allowed
                    {
                        admitted += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total
}

async fn exact_under_concurrency(limiter: Arc<dyn Limiter>) {
    let owner = owner("exact");
    assert_eq!(
        hammer(vec![limiter.clone()], vec![check(&owner, 100, MINUTE)], 4).await,
        100
    );

    let two = owner.to_string() + "-two";
    let two = ArcStr::from(two);
    let checks = vec![check(&two, 100, MINUTE), check(&two, 1000, 60 * MINUTE)];
    assert_eq!(
        hammer(vec![limiter.clone()], checks.clone(), 4).await,
        100,
        "the tighter limit decides"
    );
    let after = limiter.check(&checks, 1, Charge::DryRun, now_ms()).await.unwrap();
    assert_eq!(
        after.limits[1].remaining, 900,
        "refused requests consumed nothing from the hourly limit"
    );
    assert_eq!(after.tightest().unwrap().rule.window_ms, MINUTE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_is_exact_under_concurrency() {
    exact_under_concurrency(Arc::new(MemoryLimiter::new(10_000))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_is_exact_under_concurrency() {
    let Some(url) = redis_url().await else { return };
    exact_under_concurrency(Arc::new(RedisLimiter::new(&url, Duration::from_secs(2)).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_redis_decisions_share_calls_and_stay_exact() {
    let Some(url) = redis_url().await else { return };
    let redis = Arc::new(RedisLimiter::new(&url, Duration::from_secs(2)).unwrap());
    let limiter: Arc<dyn Limiter> = redis.clone();
    let owner = owner("coalesced");
    // 64 tasks, 1,280 requests against a limit of 1,000: exactly 1,000 pass.
    let admitted = hammer(vec![limiter], vec![check(&owner, 1000, MINUTE)], 20).await;
    assert_eq!(admitted, 1000);
    assert!(
        redis.calls() < 1280,
        "requests in flight together share a script call: {} calls for 1,280 requests",
        redis.calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_dropped_while_it_waits_or_calls_stalls_no_other() {
    let Some(url) = redis_url().await else { return };
    let limiter = Arc::new(RedisLimiter::new(&url, Duration::from_secs(2)).unwrap());
    let owner = owner("dropped");
    let checks = Arc::new(vec![check(&owner, 1_000_000, MINUTE)]);
    // Many requests given no time to finish: some drop while queued, some
    // while making the call for others.
    let impatient: Vec<_> = (0..200)
        .map(|_| {
            let (limiter, checks) = (limiter.clone(), checks.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_micros(50),
                    limiter.check(&checks, 1, Charge::Consume, now_ms()),
                )
                .await;
            })
        })
        .collect();
    for task in impatient {
        task.await.unwrap();
    }
    // Whoever was left waiting, the next requests are decided promptly.
    for _ in 0..10 {
        let decided = tokio::time::timeout(
            Duration::from_secs(1),
            limiter.check(&checks, 1, Charge::Consume, now_ms()),
        )
        .await
        .expect("a request after dropped ones is decided within a second");
        assert!(decided.unwrap().allowed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_redis_limiters_share_one_limit() {
    let Some(url) = redis_url().await else { return };
    let a: Arc<dyn Limiter> = Arc::new(RedisLimiter::new(&url, Duration::from_secs(2)).unwrap());
    let b: Arc<dyn Limiter> = Arc::new(RedisLimiter::new(&url, Duration::from_secs(2)).unwrap());
    let owner = owner("shared");
    assert_eq!(hammer(vec![a, b], vec![check(&owner, 100, MINUTE)], 4).await, 100);
}

/// Redis with leases of at most 64 requests a key, as `limiter.lease_max` defaults to.
fn leasing(url: &str) -> RedisLimiter {
    RedisLimiter::new(url, Duration::from_secs(2)).unwrap().with_leases(64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_with_leases_is_exact_under_concurrency() {
    let Some(url) = redis_url().await else { return };
    exact_under_concurrency(Arc::new(leasing(&url))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_leasing_limiters_share_one_limit_exactly() {
    let Some(url) = redis_url().await else { return };
    let a = Arc::new(leasing(&url));
    let b = Arc::new(leasing(&url));
    let owner = owner("leased");
    let limiters: Vec<Arc<dyn Limiter>> = vec![a.clone(), b.clone()];
    // 64 tasks over two nodes, 1,920 requests against a limit of 1,000.
    assert_eq!(hammer(limiters, vec![check(&owner, 1000, MINUTE)], 30).await, 1000);
}

#[tokio::test]
async fn a_busy_key_is_admitted_mostly_without_a_call() {
    let Some(url) = redis_url().await else { return };
    let limiter = leasing(&url);
    let checks = vec![check(&owner("busy"), 1_000_000, MINUTE)];
    for _ in 0..1000 {
        let decision = limiter.check(&checks, 1, Charge::Consume, now_ms()).await.unwrap();
        assert!(decision.allowed);
    }
    assert!(
        limiter.calls() <= 100,
        "blocks of up to 64: {} calls for 1,000 requests",
        limiter.calls()
    );
    let after = limiter.check(&checks, 1, Charge::DryRun, now_ms()).await.unwrap();
    assert!(
        after.limits[0].remaining <= 1_000_000 - 1000,
        "every admitted request was charged in Redis: {after:?}"
    );
}

/// Issue 18, the tail: a key in steady use is admitted from blocks reserved
/// ahead, across its buckets' ends, without waiting for Redis; what was
/// admitted is still all charged there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_steady_use_crosses_buckets_without_waiting_for_redis() {
    let Some(url) = redis_url().await else { return };
    let limiter = leasing(&url);
    let plain = RedisLimiter::new(&url, Duration::from_secs(2)).unwrap();
    let checks = vec![check(&owner("steady"), 100_000, MINUTE)];
    let mut waited = [0u32; 2];
    // 40 requests a second for 3 seconds: the first second ramps the block
    // up; the last two cross two buckets' ends.
    for sent in 0..120 {
        let second = usize::from(sent >= 40);
        let decision = match limiter.check_now(&checks, 1, Charge::Consume, now_ms()) {
            Some(decision) => decision,
            None => {
                waited[second] += 1;
                limiter.check(&checks, 1, Charge::Consume, now_ms()).await.unwrap()
            }
        };
        assert!(decision.allowed);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(waited[0] >= 1, "the key's first request goes to Redis");
    assert!(
        waited[1] <= 2,
        "after the ramp, blocks reserved ahead admit (waited per phase: {waited:?})"
    );
    let seen = plain.check(&checks, 1, Charge::DryRun, now_ms()).await.unwrap();
    assert!(
        seen.limits[0].remaining <= 100_000 - 120,
        "every admitted request was charged in Redis: {seen:?}"
    );
}

#[tokio::test]
async fn a_block_left_unused_is_given_back_when_its_bucket_ends() {
    let Some(url) = redis_url().await else { return };
    let leasing = leasing(&url);
    let plain = RedisLimiter::new(&url, Duration::from_secs(2)).unwrap();
    let checks = vec![check(&owner("given-back"), 1000, MINUTE)];
    // A minute's buckets are 1 s: start early in one, so the blocks below
    // are all taken in it.
    let into_second = now_ms() % 1000;
    if into_second > 300 {
        tokio::time::sleep(Duration::from_millis(1010 - into_second)).await;
    }
    for _ in 0..20 {
        assert!(
            leasing
                .check(&checks, 1, Charge::Consume, now_ms())
                .await
                .unwrap()
                .allowed
        );
    }
    let held = plain.check(&checks, 1, Charge::DryRun, now_ms()).await.unwrap();
    assert!(
        held.limits[0].remaining < 980,
        "the leasing node holds a block beyond the 20 it admitted: {held:?}"
    );
    // The bucket ends within a second; the sweep gives back within 250 ms more.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = plain.check(&checks, 1, Charge::DryRun, now_ms()).await.unwrap();
        if now.limits[0].remaining == 980 {
            break;
        }
        assert!(Instant::now() < deadline, "not given back: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A shadow limit decided the same way by both backends: never refusing,
/// charged only when it would have admitted.
#[tokio::test]
async fn backends_agree_on_shadow_limits() {
    let Some(url) = redis_url().await else { return };
    let owner = owner("shadow");
    let memory = MemoryLimiter::new(100);
    let redis = leasing(&url);
    let enforced = check(&owner, 100, MINUTE);
    let mut shadow = check(&owner, 3, MINUTE);
    shadow.key = CounterKey::new(owner.clone(), "default~shadow", MINUTE);
    shadow.rule = shadow.rule.in_shadow().into();
    let checks = vec![enforced, shadow];
    for limiter in [&memory as &dyn Limiter, &redis] {
        let mut would_refuse = 0;
        for _ in 0..10 {
            let decision = limiter.check(&checks, 1, Charge::Consume, now_ms()).await.unwrap();
            assert!(decision.allowed);
            would_refuse += decision.shadow_refusals().count();
        }
        assert_eq!(would_refuse, 7);
        let after = limiter.check(&checks, 1, Charge::DryRun, now_ms()).await.unwrap();
        assert_eq!(
            (after.limits[0].remaining, after.limits[1].remaining),
            (90, 0),
            "10 charged to the enforced limit, 3 to the shadow one"
        );
    }
}

/// A forced charge (a cost the upstream reported) is charged whatever room
/// is left, on both backends.
#[tokio::test]
async fn backends_agree_on_forced_charges() {
    let Some(url) = redis_url().await else { return };
    let memory = MemoryLimiter::new(100);
    let redis = leasing(&url);
    for limiter in [&memory as &dyn Limiter, &redis] {
        let checks = vec![check(&owner("forced"), 10, MINUTE)];
        for _ in 0..3 {
            assert!(
                limiter
                    .check(&checks, 1, Charge::Consume, now_ms())
                    .await
                    .unwrap()
                    .allowed
            );
        }
        limiter.check(&checks, 5, Charge::Force, now_ms()).await.unwrap();
        let after = limiter.check(&checks, 1, Charge::DryRun, now_ms()).await.unwrap();
        assert_eq!(after.limits[0].remaining, 2);
        limiter.check(&checks, 5, Charge::Force, now_ms()).await.unwrap();
        let over = limiter.check(&checks, 1, Charge::Consume, now_ms()).await.unwrap();
        assert!(!over.allowed, "charged past the limit: nothing fits");
    }
}

#[tokio::test]
async fn backends_agree_on_the_details() {
    let Some(url) = redis_url().await else { return };
    let owner = owner("agree");
    let memory = MemoryLimiter::new(100);
    let redis = RedisLimiter::new(&url, Duration::from_secs(2)).unwrap();
    let checks = vec![check(&owner, 3, MINUTE)];
    for _ in 0..3 {
        assert!(
            redis
                .check(&checks, 1, Charge::Consume, now_ms())
                .await
                .unwrap()
                .allowed
        );
        assert!(
            memory
                .check(&checks, 1, Charge::Consume, now_ms())
                .await
                .unwrap()
                .allowed
        );
    }
    let (r, m) = (
        redis.check(&checks, 1, Charge::Consume, now_ms()).await.unwrap(),
        memory.check(&checks, 1, Charge::Consume, now_ms()).await.unwrap(),
    );
    assert!(!r.allowed && !m.allowed);
    assert_eq!((r.limits[0].remaining, m.limits[0].remaining), (0, 0));
    let (r_retry, m_retry) = (r.retry_at_ms.unwrap(), m.retry_at_ms.unwrap());
    assert!(
        r_retry.abs_diff(m_retry) <= 2_000,
        "both retry about a minute later: {r_retry} vs {m_retry}"
    );
}

async fn permits_are_bounded_and_released(limiter: Arc<dyn Limiter>) {
    let key = PermitKey {
        owner: owner("permits"),
        resource: Arc::from("websocket"),
    };
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(limiter.acquire(&key, 5).await.unwrap().expect("a slot"));
    }
    assert!(
        limiter.acquire(&key, 5).await.unwrap().is_none(),
        "the sixth is refused"
    );
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(50)).await; // Redis releases asynchronously.
    let again = limiter.acquire(&key, 5).await.unwrap();
    assert!(again.is_some(), "a released slot is reusable");
}

#[tokio::test]
async fn memory_permits() {
    permits_are_bounded_and_released(Arc::new(MemoryLimiter::new(100))).await;
}

#[tokio::test]
async fn redis_permits() {
    let Some(url) = redis_url().await else { return };
    permits_are_bounded_and_released(Arc::new(RedisLimiter::new(&url, Duration::from_secs(2)).unwrap())).await;
}

/// A TCP proxy in front of Redis that the test can cut: while cut, it accepts
/// connections and forwards nothing, like a hung network.
struct CuttableProxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl CuttableProxy {
    async fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
        // Let every connection task see the change before the test goes on.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn hang_forever() {
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

async fn cuttable_proxy(target: &str) -> CuttableProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, watch) = tokio::sync::watch::channel(false);
    let target = target.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let (mut watch, target) = (watch.clone(), target.clone());
            tokio::spawn(async move {
                let already_cut = *watch.borrow_and_update();
                if already_cut {
                    return hang_forever().await;
                }
                let Ok(mut upstream) = TcpStream::connect(&target).await else {
                    return;
                };
                let cut = async move {
                    let _ = watch.wait_for(|cut| *cut).await;
                };
                let forwarding_ended = tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => true,
                    () = cut => false,
                };
                if !forwarding_ended {
                    hang_forever().await;
                }
            });
        }
    });
    CuttableProxy { addr, cut }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_redis_falls_back_quickly_and_recovers() {
    let Some(url) = redis_url().await else { return };
    let target = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let proxy = cuttable_proxy(&target).await;
    let through_proxy = format!("redis://{}", proxy.addr);
    let timeout = Duration::from_millis(50);
    let local = Arc::new(MemoryLimiter::new(1_000));
    let limiter = ResilientLimiter::new(
        RedisLimiter::new(&through_proxy, timeout).unwrap(),
        local,
        OnFailure::Local,
        timeout,
    )
    .with_cool_down(Duration::from_millis(300));
    let owner = owner("cut");
    let checks = vec![check(&owner, 10, MINUTE)];
    let direct = RedisLimiter::new(&url, Duration::from_secs(2)).unwrap();

    for _ in 0..3 {
        assert!(
            limiter
                .check(&checks, 1, Charge::Consume, now_ms())
                .await
                .unwrap()
                .allowed
        );
    }
    assert_eq!(limiter.fallbacks(), 0);
    assert_eq!(limiter.readiness().await.state, "up");
    let in_redis = direct.check(&checks, 1, Charge::DryRun, now_ms()).await.unwrap();
    assert_eq!(in_redis.limits[0].remaining, 7, "enforced in Redis before the cut");

    proxy.set_cut(true).await;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut admitted = 0;
    for _ in 0..20 {
        let call = Instant::now();
        let decision = limiter
            .check(&checks, 1, Charge::Consume, now_ms())
            .await
            .expect("never an error with on_failure = local");
        slowest = slowest.max(call.elapsed());
        admitted += usize::from(decision.allowed);
    }
    assert_eq!(admitted, 10, "local enforcement of the same limit during the cut");
    assert!(
        slowest < Duration::from_secs(1),
        "each answer is bounded by the timeout, not the TCP timeout: {slowest:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the breaker stops waiting on Redis: {:?}",
        started.elapsed()
    );
    assert_eq!(limiter.health().state, "degraded");
    assert!(limiter.fallbacks() >= 20);

    proxy.set_cut(false).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(350)).await;
        let _ = limiter.check(&checks, 1, Charge::DryRun, now_ms()).await;
        if limiter.readiness().await.state == "up" {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery after Redis came back");
    }
    let before = direct.check(&checks, 1, Charge::DryRun, now_ms()).await.unwrap().limits[0].remaining;
    assert!(
        limiter
            .check(&checks, 1, Charge::Consume, now_ms())
            .await
            .unwrap()
            .allowed
    );
    let after = direct.check(&checks, 1, Charge::DryRun, now_ms()).await.unwrap().limits[0].remaining;
    assert_eq!(after + 1, before, "enforcement is back in Redis");
}

/// A balance of `credits` that never refills, as a key's credits are.
fn balance(owner: &ArcStr, credits: u64) -> LimitCheck {
    let rule = Rule::balance(credits, 0, 0, u64::MAX);
    LimitCheck::new(
        CounterKey::new(owner.clone(), format!("~credits@0:{credits}"), rule.window_ms),
        rule,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_redis_spends_only_what_was_left_of_a_balance() {
    let Some(url) = redis_url().await else { return };
    let target = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let proxy = cuttable_proxy(&target).await;
    // Generous: a call timed out before the cut would be decided locally
    // and spoil the count (a loaded CI machine has taken over 50 ms).
    let timeout = Duration::from_millis(500);
    let limiter = ResilientLimiter::new(
        RedisLimiter::new(&format!("redis://{}", proxy.addr), timeout).unwrap(),
        Arc::new(MemoryLimiter::new(1_000)),
        OnFailure::Local,
        timeout,
    );
    let key = owner("seen");
    let seen = vec![check(&key, 1_000, MINUTE), balance(&key, 10)];
    let unseen = vec![balance(&owner("unseen"), 10)];
    for _ in 0..7 {
        let decision = limiter.check(&seen, 1, Charge::Consume, now_ms()).await.unwrap();
        assert!(decision.allowed);
    }
    assert_eq!(limiter.fallbacks(), 0, "spent in Redis");

    proxy.set_cut(true).await;
    let mut admitted = 0;
    for _ in 0..10 {
        let decision = limiter.check(&seen, 1, Charge::Consume, now_ms()).await.unwrap();
        admitted += usize::from(decision.allowed);
        assert_eq!(
            decision.out_of_credits(),
            !decision.allowed,
            "refused for its credits only"
        );
    }
    assert_eq!(admitted, 3, "only what Redis said was left, not the balance again");
    let unknown = limiter.check(&unseen, 1, Charge::Consume, now_ms()).await;
    assert!(
        unknown.is_err(),
        "a balance this node never saw is not decided from zero: {unknown:?}"
    );
    assert!(limiter.fallbacks() >= 11);
}

#[tokio::test]
async fn allow_and_deny_policies() {
    let Some(_) = redis_url().await else { return };
    let dead = "redis://127.0.0.1:1";
    let checks = vec![check(&owner("policy"), 1, MINUTE)];
    let timeout = Duration::from_millis(50);
    let allow = ResilientLimiter::new(
        RedisLimiter::new(dead, timeout).unwrap(),
        Arc::new(MemoryLimiter::new(10)),
        OnFailure::Allow,
        timeout,
    );
    for _ in 0..3 {
        let decision = allow.check(&checks, 1, Charge::Consume, now_ms()).await.unwrap();
        assert!(decision.allowed && decision.limits.is_empty());
    }
    let deny = ResilientLimiter::new(
        RedisLimiter::new(dead, timeout).unwrap(),
        Arc::new(MemoryLimiter::new(10)),
        OnFailure::Deny,
        timeout,
    );
    assert!(deny.check(&checks, 1, Charge::Consume, now_ms()).await.is_err());
    assert_eq!(deny.readiness().await.state, "degraded");
}

#[tokio::test]
async fn idle_counters_are_swept() {
    let limiter = MemoryLimiter::new(10_000);
    let owner = owner("idle");
    let now = now_ms();
    for i in 0..50 {
        let checks = vec![check(&ArcStr::from(format!("{owner}-{i}")), 10, MINUTE)];
        limiter.check(&checks, 1, Charge::Consume, now).await.unwrap();
    }
    limiter.sweep(now + MINUTE - 1);
    assert_eq!(limiter.counters(), 50, "still counting inside the window");
    limiter.sweep(now + MINUTE);
    assert_eq!(limiter.counters(), 0, "the newest request has left the window: dropped");
}

#[tokio::test]
async fn memory_is_bounded() {
    let limiter = MemoryLimiter::new(100);
    for i in 0..1_000 {
        let checks = vec![check(&ArcStr::from(format!("bounded-{i}")), 10, MINUTE)];
        limiter.check(&checks, 1, Charge::Consume, now_ms()).await.unwrap();
    }
    assert!(limiter.counters() <= 100, "{}", limiter.counters());
}

/// A check keeps a handle on its counter (a cached key's memoized checks).
/// When the table drops that counter, the handle must not go on counting
/// alone: a second holder of the same counter key has to see its counts.
#[test]
fn a_kept_check_follows_its_counter_after_a_sweep() {
    let limiter = MemoryLimiter::new(10_000);
    let owner = owner("kept-swept");
    let kept = [check(&owner, 2, MINUTE)];
    let now = now_ms();
    assert!(limiter.decide_now(&kept, 1, Charge::Consume, now).allowed);
    limiter.sweep(now + MINUTE);
    assert_eq!(limiter.counters(), 0, "idle: dropped from the table");
    let later = now + MINUTE + 1;
    let fresh = [check(&owner, 2, MINUTE)];
    assert!(limiter.decide_now(&fresh, 1, Charge::Consume, later).allowed);
    assert!(limiter.decide_now(&kept, 1, Charge::Consume, later).allowed);
    let third = limiter.decide_now(&fresh, 1, Charge::Consume, later);
    assert!(!third.allowed, "both holders count on one counter: 2 of 2 used");
}

/// A kept handle is set once (crates/keygate-limiter/src/memory.rs,
/// `CounterCell`): after its counter is dropped, each of its decisions finds
/// the table's counter again, and they add up there exactly.
#[test]
fn a_kept_check_whose_counter_was_dropped_counts_exactly_from_then_on() {
    let limiter = MemoryLimiter::new(10_000);
    let owner = owner("kept-dropped-exact");
    let kept = [check(&owner, 3, MINUTE)];
    let now = now_ms();
    assert!(limiter.decide_now(&kept, 1, Charge::Consume, now).allowed);
    limiter.sweep(now + MINUTE);
    let later = now + MINUTE + 1;
    for n in 1..=3 {
        let decision = limiter.decide_now(&kept, 1, Charge::Consume, later);
        assert!(decision.allowed, "request {n} of 3 in the new window");
        assert_eq!(decision.limits[0].remaining, 3 - n);
    }
    assert!(!limiter.decide_now(&kept, 1, Charge::Consume, later).allowed);
    let fresh = [check(&owner, 3, MINUTE)];
    assert!(
        !limiter.decide_now(&fresh, 1, Charge::DryRun, later).allowed,
        "a new holder sees the kept handle's counts"
    );
    assert_eq!(limiter.counters(), 1, "one counter in the table, not one per decision");
}

#[test]
fn a_kept_check_follows_its_counter_after_an_eviction() {
    let limiter = MemoryLimiter::new(1);
    let (first, second) = (owner("kept-evicted-1"), owner("kept-evicted-2"));
    let kept = [check(&first, 1, MINUTE)];
    let now = now_ms();
    // Not yet counted: the kept handle points at an empty counter.
    assert!(limiter.decide_now(&kept, 1, Charge::DryRun, now).allowed);
    // The table is full: the first owner's counter is dropped for the second's.
    limiter.decide_now(&[check(&second, 1, MINUTE)], 1, Charge::Consume, now);
    assert!(
        limiter
            .decide_now(&[check(&first, 1, MINUTE)], 1, Charge::Consume, now)
            .allowed
    );
    assert!(
        !limiter.decide_now(&kept, 1, Charge::Consume, now).allowed,
        "the kept handle sees the count made through the table"
    );
}

/// Two limiters given the same check value count apart: a handle one of
/// them kept in the check is not the other's counter.
#[test]
fn two_memory_limiters_sharing_a_check_count_apart() {
    let (one, two) = (MemoryLimiter::new(100), MemoryLimiter::new(100));
    let shared = [check(&owner("two-limiters"), 1, MINUTE)];
    let now = now_ms();
    assert!(one.decide_now(&shared, 1, Charge::Consume, now).allowed);
    assert!(
        two.decide_now(&shared, 1, Charge::Consume, now).allowed,
        "its own counter is empty"
    );
    assert!(
        !one.decide_now(&shared, 1, Charge::Consume, now).allowed,
        "and the first still has its count"
    );
}

/// Issue 18: on a real 3-master Redis Cluster, keys in different hash slots
/// decided in the same batches are each admitted exactly their limit, by a
/// leasing limiter and a non-leasing one sharing them; a key's and its
/// workspace's counters, tagged into one slot, are decided atomically.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_cluster_is_exact_across_slots_and_limiters() {
    let Some(cluster) = keygate_limiter::testsuite::RedisCluster::start() else {
        return;
    };
    let url = cluster.url();
    let leasing: Arc<dyn Limiter> = Arc::new(RedisLimiter::new(&url, Duration::from_secs(2)).unwrap().with_leases(64));
    let plain: Arc<dyn Limiter> = Arc::new(RedisLimiter::new(&url, Duration::from_secs(2)).unwrap());
    let owners: Vec<ArcStr> = (0..12).map(|i| owner(&format!("slot{i}"))).collect();
    let tasks: Vec<_> = (0..48)
        .map(|task| {
            let limiter = [&leasing, &plain][task % 2].clone();
            let owner = owners[task % owners.len()].clone();
            tokio::spawn(async move {
                let checks = vec![check(&owner, 50, MINUTE)];
                let mut admitted = 0;
                for _ in 0..40 {
                    let decision = limiter.check(&checks, 1, Charge::Consume, now_ms()).await.unwrap();
                    admitted += usize::from(decision.allowed);
                }
                (owner, admitted)
            })
        })
        .collect();
    let mut per_owner = std::collections::HashMap::<ArcStr, usize>::new();
    for task in tasks {
        let (owner, admitted) = task.await.unwrap();
        *per_owner.entry(owner).or_default() += admitted;
    }
    assert_eq!(per_owner.len(), 12);
    assert!(
        per_owner.values().all(|&n| n == 50),
        "each key exactly 50 of 160: {per_owner:?}"
    );

    // A key's own limit and its workspace's, in the workspace's slot: all or nothing.
    let key = owner("key");
    let workspace = owner("workspace");
    let both = vec![
        check(&key, 100, MINUTE).in_slot_of(workspace.clone()),
        check(&workspace, 10, MINUTE),
    ];
    assert_eq!(hammer(vec![plain.clone(), leasing.clone()], both.clone(), 1).await, 10);
    let after = plain.check(&both, 1, Charge::DryRun, now_ms()).await.unwrap();
    assert_eq!(
        after.limits[0].remaining, 90,
        "refused requests charged neither counter"
    );
}

/// Issue 18: a master of the cluster killed mid-run: no error reaches the
/// caller (`on_failure = local` answers for the slots it served), and once
/// it is back, every key is decided in the cluster again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_master_falls_back_and_recovers() {
    let Some(mut cluster) = keygate_limiter::testsuite::RedisCluster::start() else {
        return;
    };
    let url = cluster.url();
    let timeout = Duration::from_millis(200);
    let limiter = ResilientLimiter::new(
        RedisLimiter::new(&url, timeout).unwrap(),
        Arc::new(MemoryLimiter::new(1_000)),
        OnFailure::Local,
        timeout,
    )
    .with_cool_down(Duration::from_millis(300));
    let direct = RedisLimiter::new(&url, Duration::from_secs(2)).unwrap();
    // 30 keys: the chance that none is in the killed master's third of the slots is (2/3)^30.
    let owners: Vec<ArcStr> = (0..30).map(|i| owner(&format!("kill{i}"))).collect();
    let consume = |owner: &ArcStr| {
        let checks = vec![check(owner, 1_000, MINUTE)];
        let limiter = &limiter;
        async move { limiter.check(&checks, 1, Charge::Consume, now_ms()).await }
    };
    for owner in &owners {
        assert!(consume(owner).await.unwrap().allowed);
    }
    assert_eq!(limiter.fallbacks(), 0);

    cluster.kill(0);
    for owner in owners.iter().cycle().take(90) {
        let decision = consume(owner).await.expect("never an error with on_failure = local");
        assert!(decision.allowed, "the local limiter admits while a master is gone");
    }
    assert!(limiter.fallbacks() > 0, "some keys' slots were on the killed master");

    cluster.restart(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(350)).await;
        let _ = consume(&owners[0]).await;
        if limiter.readiness().await.state == "up" {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery after the master came back");
    }
    for owner in &owners {
        let checks = vec![check(owner, 1_000, MINUTE)];
        let before = direct.check(&checks, 1, Charge::DryRun, now_ms()).await.unwrap().limits[0].remaining;
        assert!(consume(owner).await.unwrap().allowed);
        let after = direct.check(&checks, 1, Charge::DryRun, now_ms()).await.unwrap().limits[0].remaining;
        assert_eq!(after + 1, before, "{owner}: decided in the cluster again");
    }
}
