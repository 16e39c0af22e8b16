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
use keygate_engine::usage::{UsageRecorder, ADMITTED};
use keygate_engine::{Actor, Engine, EngineSettings, ManualClock, VerifyRequest};
use keygate_store::sqlite::SqliteStore;
use keygate_store::Store;

struct Fixture {
    engine: Engine,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

fn settings() -> EngineSettings {
    EngineSettings {
        key_format: KeyFormat::new("kg", &["live".into(), "test".into()]).unwrap(),
        cache_capacity: 1_000,
        cache_ttl: Duration::from_secs(60),
        negative_cache_ttl: Duration::from_secs(10),
        failed_attempts: FailurePolicy {
            max_failures: 3,
            window: Duration::from_secs(60),
        },
        default_rotation_grace: Duration::from_secs(3600),
        max_metadata_bytes: 4096,
        plans: Default::default(),
        default_plan: None,
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
    let engine = Engine::new(
        store.clone(),
        Arc::new(ManualClock::new(Utc::now())),
        limiter,
        settings(),
    );
    Fixture {
        engine,
        store,
        _dir: dir,
    }
}

async fn new_key(engine: &Engine) -> (String, String) {
    let ws = engine
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
    assert_eq!(code(f.engine.verify(request(&key, None)).await), None);
    f.store.close().await;
    assert_eq!(code(f.engine.verify(request(&key, None)).await), None);
}

#[tokio::test]
async fn unknown_hashes_are_remembered() {
    let f = fixture().await;
    let unknown = KeyFormat::new("kg", &["live".into()])
        .unwrap()
        .generate("live", &mut rand::thread_rng())
        .unwrap();
    assert_eq!(
        code(f.engine.verify(request(unknown.expose(), None)).await),
        Some(ErrorCode::InvalidApiKey)
    );
    f.store.close().await;
    assert_eq!(
        code(f.engine.verify(request(unknown.expose(), None)).await),
        Some(ErrorCode::InvalidApiKey),
        "answered from the negative cache, not the (closed) store"
    );
    let other = KeyFormat::new("kg", &["live".into()])
        .unwrap()
        .generate("live", &mut rand::thread_rng())
        .unwrap();
    assert_eq!(
        code(f.engine.verify(request(other.expose(), None)).await),
        Some(ErrorCode::ServiceUnavailable)
    );
}

#[tokio::test]
async fn failed_attempts_are_throttled_per_ip_and_spare_cached_keys() {
    let f = fixture().await;
    let (_, key) = new_key(&f.engine).await;
    assert_eq!(
        code(f.engine.verify(request(&key, Some([10, 0, 0, 1].into()))).await),
        None
    );
    let attacker: Option<IpAddr> = Some([10, 0, 0, 1].into());
    for _ in 0..3 {
        assert_eq!(
            code(f.engine.verify(request("kg_live_garbage", attacker)).await),
            Some(ErrorCode::InvalidApiKey)
        );
    }
    let throttled = f.engine.verify(request("kg_live_garbage", attacker)).await.unwrap_err();
    assert_eq!(throttled.error.code, ErrorCode::TooManyFailedAttempts);
    assert_eq!(throttled.error.retry_after(), Some(60));
    assert_eq!(
        code(f.engine.verify(request(&key, attacker)).await),
        None,
        "a cached valid key still passes"
    );
    assert_eq!(
        code(
            f.engine
                .verify(request("kg_live_garbage", Some([10, 0, 0, 2].into())))
                .await
        ),
        Some(ErrorCode::InvalidApiKey)
    );
}

#[tokio::test]
async fn usage_survives_a_failed_flush() {
    let recorder = UsageRecorder::default();
    let (key_id, ws_id): (Arc<str>, Arc<str>) = (Arc::from("key_1"), Arc::from("ws_1"));
    let now = Utc::now();
    for _ in 0..4 {
        recorder.record(&key_id, &ws_id, ADMITTED, Some([10, 0, 0, 9].into()), now);
    }
    recorder.record(&key_id, &ws_id, ErrorCode::IpNotAllowed.as_str(), None, now);

    let down = fixture().await;
    down.store.close().await;
    assert!(recorder.flush(down.store.as_ref()).await.is_err());
    assert_eq!(recorder.pending(), 2, "the counts were put back");
    recorder.record(&key_id, &ws_id, ADMITTED, None, now);

    let up = fixture().await;
    assert_eq!(recorder.flush(up.store.as_ref()).await.unwrap(), 2);
    assert_eq!(recorder.pending(), 0);
    let rows = up
        .store
        .key_usage(
            "key_1",
            now - chrono::Duration::minutes(1),
            now + chrono::Duration::minutes(1),
        )
        .await
        .unwrap();
    let counts: Vec<(String, u64)> = rows.into_iter().map(|r| (r.outcome, r.count)).collect();
    assert_eq!(counts, [("IP_NOT_ALLOWED".to_owned(), 1), ("admitted".to_owned(), 5)]);
}
