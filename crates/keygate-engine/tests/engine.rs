//! The verifier against a real SQLite store: caching, the negative cache,
//! throttling, and usage that survives a failed flush.

// Test code: a failed expectation should panic where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keygate_core::throttle::FailurePolicy;
use keygate_core::{ErrorCode, KeyFormat};
use keygate_engine::admin::NewKey;
use keygate_engine::usage::{LoneTally, Outcome, UsageRecorder};
use keygate_engine::{Actor, Engine, EngineSettings, ManualClock, VerifyRequest};
use keygate_limiter::ArcStr;
use keygate_store::sqlite::SqliteStore;
use keygate_store::{KeyStore, Store, UsageStore};

struct Fixture {
    engine: Engine,
    store: Arc<SqliteStore>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn settings() -> EngineSettings {
    EngineSettings {
        verifier: keygate_engine::VerifierSettings {
            cache_capacity: 1_000,
            failed_attempts: FailurePolicy {
                max_failures: 3,
                window: Duration::from_secs(60),
            },
            ..Default::default()
        },
        admin: keygate_engine::admin::AdminSettings {
            default_rotation_grace: Duration::from_secs(3600),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&format!("sqlite://{}/k.db", dir.path().display()))
            .await
            .unwrap(),
    );
    let limiter = Arc::new(keygate_limiter::memory::MemoryLimiter::new(1_000));
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let engine = Engine::new(store.clone(), clock.clone(), limiter, settings());
    Fixture {
        engine,
        store,
        clock,
        _dir: dir,
    }
}

async fn new_key(engine: &Engine) -> (String, String) {
    let ws = engine
        .admin()
        .create_workspace(
            &Actor::cli(),
            keygate_engine::admin::NewWorkspace {
                name: "Acme".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (key, plaintext) = engine
        .admin()
        .create_key(
            &Actor::cli(),
            &ws.id,
            NewKey {
                name: "k".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    (key.id, plaintext.expose().to_owned())
}

fn request(presented: &str, ip: Option<IpAddr>) -> VerifyRequest<'_> {
    VerifyRequest::new(presented, ip)
}

fn code(result: Result<keygate_engine::Verified, keygate_engine::Rejection>) -> Option<ErrorCode> {
    result.err().map(|r| r.error.code)
}

#[tokio::test]
async fn a_cached_key_needs_no_store() {
    let f = fixture().await;
    let (_, key) = new_key(&f.engine).await;
    assert_eq!(code(f.engine.verifier().verify(request(&key, None)).await), None);
    f.store.close().await;
    assert_eq!(code(f.engine.verifier().verify(request(&key, None)).await), None);
}

/// The verifier looks a key up in its cache before checking its checksum
/// (crates/keygate-engine/src/verifier/mod.rs): a typo, which the cache
/// does not hold, is still refused by its checksum, without the store.
#[tokio::test]
async fn a_typo_of_a_cached_key_is_refused_by_its_checksum() {
    let f = fixture().await;
    let (_, key) = new_key(&f.engine).await;
    assert_eq!(code(f.engine.verifier().verify(request(&key, None)).await), None);
    f.store.close().await;
    let typo_at = |at: usize| {
        let mut bytes = key.clone().into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    };
    for at in [key.len() - 20, key.len() - 1] {
        assert_eq!(
            code(f.engine.verifier().verify(request(&typo_at(at), None)).await),
            Some(ErrorCode::InvalidApiKey),
            "refused before the (closed) store, which would answer 503"
        );
    }
    assert_eq!(code(f.engine.verifier().verify(request(&key, None)).await), None);
}

/// Plans of one limit, `requests` a minute, as the default plan.
fn default_plan_of(requests: u64) -> keygate_engine::plans::PlanBook {
    let plan: keygate_core::limits::Plan = serde_json::from_value(serde_json::json!({
        "limits": [{"requests": requests, "per": "1m"}]
    }))
    .unwrap();
    keygate_engine::plans::PlanBook::new(
        [("free".to_owned(), plan.validate().unwrap())].into(),
        Some("free".into()),
    )
}

#[tokio::test]
async fn replaced_plans_limit_a_cached_key_from_its_next_request() {
    let f = fixture().await;
    f.engine.verifier().replace_plans(default_plan_of(100));
    let (_, key) = new_key(&f.engine).await;
    let limit_of = |verified: keygate_engine::Verified| verified.limits.unwrap().checks[0].rule.requests;
    assert_eq!(
        limit_of(f.engine.verifier().verify(request(&key, None)).await.unwrap()),
        100
    );
    f.engine.verifier().replace_plans(default_plan_of(2));
    // The key is still cached; its checks are recomputed for the new plans,
    // and the counter it charged under the old ones counts on.
    assert_eq!(
        limit_of(f.engine.verifier().verify(request(&key, None)).await.unwrap()),
        2
    );
    assert_eq!(
        code(f.engine.verifier().verify(request(&key, None)).await),
        Some(ErrorCode::RateLimitExceeded)
    );
    assert!(f.engine.verifier().plans().contains("free"));
}

#[tokio::test]
async fn the_keys_of_one_plan_share_its_rules_and_count_apart() {
    let f = fixture().await;
    f.engine.verifier().replace_plans(default_plan_of(1));
    let ((_, a), (_, b)) = (new_key(&f.engine).await, new_key(&f.engine).await);
    let checks_of = |verified: keygate_engine::Verified| verified.limits.unwrap().checks;
    let a_checks = checks_of(f.engine.verifier().verify(request(&a, None)).await.unwrap());
    let b_checks = checks_of(f.engine.verifier().verify(request(&b, None)).await.unwrap());
    assert!(
        Arc::ptr_eq(&a_checks[0].rule, &b_checks[0].rule),
        "one copy of the rule"
    );
    assert!(
        Arc::ptr_eq(a_checks[0].key.limit(), b_checks[0].key.limit()),
        "one copy of the resource and window"
    );
    assert_ne!(a_checks[0].key, b_checks[0].key, "a counter each");
    for key in [&a, &b] {
        assert_eq!(
            code(f.engine.verifier().verify(request(key, None)).await),
            Some(ErrorCode::RateLimitExceeded)
        );
    }
}

#[tokio::test]
async fn unknown_hashes_are_remembered() {
    let f = fixture().await;
    let unknown = KeyFormat::new("kg", &["live".into()])
        .unwrap()
        .generate("live", &mut rand::thread_rng())
        .unwrap();
    assert_eq!(
        code(f.engine.verifier().verify(request(unknown.expose(), None)).await),
        Some(ErrorCode::InvalidApiKey)
    );
    f.store.close().await;
    assert_eq!(
        code(f.engine.verifier().verify(request(unknown.expose(), None)).await),
        Some(ErrorCode::InvalidApiKey),
        "answered from the negative cache, not the (closed) store"
    );
    let other = KeyFormat::new("kg", &["live".into()])
        .unwrap()
        .generate("live", &mut rand::thread_rng())
        .unwrap();
    assert_eq!(
        code(f.engine.verifier().verify(request(other.expose(), None)).await),
        Some(ErrorCode::ServiceUnavailable)
    );
}

#[tokio::test]
async fn failed_attempts_are_throttled_per_ip_and_spare_cached_keys() {
    let f = fixture().await;
    let (_, key) = new_key(&f.engine).await;
    assert_eq!(
        code(
            f.engine
                .verifier()
                .verify(request(&key, Some([10, 0, 0, 1].into())))
                .await
        ),
        None
    );
    let attacker: Option<IpAddr> = Some([10, 0, 0, 1].into());
    for _ in 0..3 {
        assert_eq!(
            code(f.engine.verifier().verify(request("kg_live_garbage", attacker)).await),
            Some(ErrorCode::InvalidApiKey)
        );
    }
    let throttled = f
        .engine
        .verifier()
        .verify(request("kg_live_garbage", attacker))
        .await
        .unwrap_err();
    assert_eq!(throttled.error.code, ErrorCode::TooManyFailedAttempts);
    assert_eq!(throttled.error.retry_after(), Some(60));
    assert_eq!(
        code(f.engine.verifier().verify(request(&key, attacker)).await),
        None,
        "a cached valid key still passes"
    );
    assert_eq!(
        code(
            f.engine
                .verifier()
                .verify(request("kg_live_garbage", Some([10, 0, 0, 2].into())))
                .await
        ),
        Some(ErrorCode::InvalidApiKey)
    );
}

#[tokio::test]
async fn usage_survives_a_failed_flush() {
    let recorder = UsageRecorder::default();
    let tally = LoneTally::new(ArcStr::from("key_1"), ArcStr::from("ws_1"));
    let now = Utc::now();
    for _ in 0..4 {
        recorder.record(&tally, Outcome::Admitted, Some([10, 0, 0, 9].into()), now);
    }
    recorder.record(&tally, Outcome::Refused(ErrorCode::IpNotAllowed), None, now);

    let down = fixture().await;
    down.store.close().await;
    assert!(recorder
        .flush(down.store.as_ref(), now, || "ub_1".into())
        .await
        .is_err());
    assert_eq!(recorder.pending(), 2, "the failed batch is kept");
    recorder.record(&tally, Outcome::Admitted, None, now);
    assert!(recorder
        .flush(down.store.as_ref(), now, || "ub_2".into())
        .await
        .is_err());
    assert_eq!(recorder.pending(), 3, "the failed batch, and the count recorded since");

    let up = fixture().await;
    assert_eq!(
        recorder.flush(up.store.as_ref(), now, || "ub_3".into()).await.unwrap(),
        3,
        "the failed batch, then the one recorded since"
    );
    assert_eq!(recorder.pending(), 0);
    let rows = up
        .store
        .key_usage(
            "key_1",
            keygate_store::UsageGrain::Minute,
            now - chrono::Duration::minutes(1),
            now + chrono::Duration::minutes(1),
        )
        .await
        .unwrap();
    let counts: Vec<(String, u64)> = rows.into_iter().map(|r| (r.outcome, r.count)).collect();
    assert_eq!(counts, [("IP_NOT_ALLOWED".to_owned(), 1), ("admitted".to_owned(), 5)]);
}

/// The TTL is the safety net for a missed announcement: a change made behind
/// this engine's back (another node, no broadcast) is seen once it passes.
#[tokio::test]
async fn a_cached_key_is_read_again_after_the_ttl() {
    let f = fixture().await;
    let (key_id, key) = new_key(&f.engine).await;
    assert_eq!(code(f.engine.verifier().verify(request(&key, None)).await), None);
    let event = keygate_store::testsuite::audit("key.revoked", &key_id, None);
    f.store.revoke_key(&key_id, Utc::now(), None, &event).await.unwrap();
    f.clock.advance(chrono::Duration::seconds(59));
    assert_eq!(
        code(f.engine.verifier().verify(request(&key, None)).await),
        None,
        "still cached"
    );
    f.clock.advance(chrono::Duration::seconds(2));
    assert_eq!(
        code(f.engine.verifier().verify(request(&key, None)).await),
        Some(ErrorCode::ApiKeyRevoked)
    );
}

/// A key in use is re-read late in its TTL with no request waiting for the
/// read: the request that notices is answered from the cache, and what the
/// read finds (a revocation made behind this engine's back) applies before
/// the TTL ends. Earlier in the TTL nothing is read.
#[tokio::test]
async fn a_key_in_use_is_re_read_before_its_ttl_ends() {
    let f = fixture().await;
    let (key_id, key) = new_key(&f.engine).await;
    let verify = || f.engine.verifier().verify(request(&key, None));
    assert_eq!(code(verify().await), None);
    let event = keygate_store::testsuite::audit("key.revoked", &key_id, None);
    f.store.revoke_key(&key_id, Utc::now(), None, &event).await.unwrap();
    // Before three quarters of the TTL (60 s), no key is due.
    f.clock.advance(chrono::Duration::seconds(44));
    assert_eq!(code(verify().await), None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(code(verify().await), None, "not re-read this early");
    // Past every key's point (95 % of the TTL), still before the TTL.
    f.clock.advance(chrono::Duration::seconds(14));
    assert_eq!(code(verify().await), None, "answered from the cache");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while code(verify().await) != Some(ErrorCode::ApiKeyRevoked) {
        assert!(std::time::Instant::now() < deadline, "not re-read before the TTL");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Keys falling due together are re-read together: 60 keys in use, each
/// revoked behind the engine's back, are re-read in a few store calls
/// (counted by `/metrics`), not 60, and each revocation applies before the
/// TTL ends.
#[tokio::test]
async fn keys_due_together_are_re_read_in_a_few_calls() {
    let f = fixture().await;
    let mut keys = Vec::new();
    for _ in 0..60 {
        keys.push(new_key(&f.engine).await);
    }
    for (_, key) in &keys {
        assert_eq!(code(f.engine.verifier().verify(request(key, None)).await), None);
    }
    for (key_id, _) in &keys {
        let event = keygate_store::testsuite::audit("key.revoked", key_id, None);
        f.store.revoke_key(key_id, Utc::now(), None, &event).await.unwrap();
    }
    f.clock.advance(chrono::Duration::seconds(58));
    for (_, key) in &keys {
        assert_eq!(
            code(f.engine.verifier().verify(request(key, None)).await),
            None,
            "from the cache"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for (_, key) in &keys {
        while code(f.engine.verifier().verify(request(key, None)).await) != Some(ErrorCode::ApiKeyRevoked) {
            assert!(std::time::Instant::now() < deadline, "not re-read before the TTL");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let metrics = f.engine.verifier().encode_metrics(&[]).unwrap();
    let calls = |operation: &str| -> u64 {
        let prefix = format!("keygate_store_duration_seconds_count{{operation=\"{operation}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .map_or(0, |count| count.parse().unwrap())
    };
    assert_eq!(calls("find_key"), 60, "each key read once when first used");
    let batches = calls("find_keys");
    assert!((1..=5).contains(&batches), "{batches} re-reads for 60 keys");
}

/// With the store down, a cached key keeps verifying for `max_stale` after
/// its last read, then gets 503; an uncached key gets 503 at once.
#[tokio::test]
async fn cached_keys_outlive_the_store_for_max_stale() {
    let f = fixture().await;
    let (_, key) = new_key(&f.engine).await;
    let (_, never_used) = new_key(&f.engine).await;
    assert_eq!(code(f.engine.verifier().verify(request(&key, None)).await), None);
    f.store.close().await;
    f.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(
        code(f.engine.verifier().verify(request(&key, None)).await),
        None,
        "past the TTL, the store does not answer: the cached key still serves"
    );
    assert_eq!(
        code(f.engine.verifier().verify(request(&never_used, None)).await),
        Some(ErrorCode::ServiceUnavailable)
    );
    let status = f.engine.verifier().store_status().await;
    assert!(status.ping.is_err());
    assert!(status.down_since.is_some());
    f.clock.advance(chrono::Duration::seconds(300 - 61));
    assert_eq!(
        code(f.engine.verifier().verify(request(&key, None)).await),
        None,
        "at max_stale"
    );
    f.clock.advance(chrono::Duration::seconds(1));
    assert_eq!(
        code(f.engine.verifier().verify(request(&key, None)).await),
        Some(ErrorCode::ServiceUnavailable),
        "past max_stale"
    );
}

#[tokio::test]
async fn the_cached_keys_of_one_workspace_share_one_copy_of_it() {
    let f = fixture().await;
    let ws = f
        .engine
        .admin()
        .create_workspace(
            &Actor::cli(),
            keygate_engine::admin::NewWorkspace {
                name: "Acme".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut keys = Vec::new();
    for name in ["a", "b"] {
        let new = NewKey {
            name: name.into(),
            ..Default::default()
        };
        let (_, plaintext) = f.engine.admin().create_key(&Actor::cli(), &ws.id, new).await.unwrap();
        keys.push(plaintext.expose().to_owned());
    }
    let first = cached_keys(&f.engine, &keys).await;
    assert!(
        std::ptr::eq(first[0].workspace(), first[1].workspace()),
        "one copy for both keys"
    );
    assert_eq!(first[0].workspace().name, "Acme");

    let patch = keygate_engine::admin::WorkspacePatch {
        name: Some("Acme Corp".into()),
        ..Default::default()
    };
    f.engine
        .admin()
        .update_workspace(&Actor::cli(), &ws.id, patch)
        .await
        .unwrap();
    let renamed = cached_keys(&f.engine, &keys).await;
    assert_eq!(
        renamed[0].workspace().name,
        "Acme Corp",
        "a changed workspace is read anew"
    );
    assert!(
        std::ptr::eq(renamed[0].workspace(), renamed[1].workspace()),
        "and shared again"
    );
    assert!(!std::ptr::eq(first[0].workspace(), renamed[0].workspace()));
}

/// Each key as it was verified, with the workspace it was verified with.
async fn cached_keys(engine: &Engine, keys: &[String]) -> Vec<Arc<keygate_engine::CachedKey>> {
    let mut seen = Vec::new();
    for key in keys {
        let verified = engine.verifier().verify(request(key, None)).await.unwrap();
        seen.push(verified.key);
    }
    seen
}
