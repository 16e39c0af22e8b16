//! The behaviour every [`Store`] implementation must have. Run it for an
//! implementation with `keygate_store::store_suite!(factory)`, where `factory`
//! is an async fn returning a fresh `Arc<dyn Store>`, or `None` when its
//! database is not available and the run does not require it (the case passes
//! without running; the factory says so on stderr).

// Test code: a failed expectation should panic with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, PgConnection};

use chrono::{DateTime, Duration, Utc};
use keygate_core::id::{new_id, IdGenerator, ADMIN_WORKSPACE_ID, AUDIT_PREFIX, KEY_PREFIX, WORKSPACE_PREFIX};
use keygate_core::ip::IpAllowlist;
use keygate_core::model::{ApiKey, KeyStatus, Workspace};
use keygate_core::KeyHash;
use rand::RngCore;

use crate::AuditEvent;
use crate::{
    AuditFilter, DeliveryAttempt, DeliveryNext, DeliveryStatus, EventListFilter, KeyEventScan, KeyFilter, LastUse,
    NewEvent, Page, RevokeOutcome, Store, StoreError, TopBy, UsageBatch, UsageCount, UsageCutoffs, UsageGrain,
    WebhookEndpoint,
};
use keygate_core::events::{EventFilter, EventType};
use keygate_core::webhook::WebhookSecret;

/// Generates one `#[tokio::test]` per suite case for a store factory.
#[macro_export]
macro_rules! store_suite {
    ($factory:path) => {
        $crate::store_suite!(@cases $factory;
            workspace_round_trip,
            deleting_a_workspace_revokes_its_keys,
            key_round_trip_and_lookup_by_hash,
            duplicate_hash_is_a_conflict,
            list_keys_filters_and_pages,
            concurrent_revokes_apply_once,
            update_never_undoes_a_revoke,
            rotation_links_keys_and_refuses_twice,
            delete_key_hides_and_revokes,
            usage_counts_add_up_and_last_use_moves_forward,
            a_retried_usage_batch_counts_once,
            usage_is_rolled_up_to_hours_and_days_exactly,
            pruning_drops_old_minutes_and_keeps_their_rollups,
            audit_events_filter_by_workspace_and_key,
            published_changes_enter_the_outbox_with_them,
            events_are_deduplicated_and_quieted,
            webhook_deliveries_fan_out_lease_and_finish_once,
            deleting_a_webhook_stops_its_deliveries,
            lifecycle_events_are_due_once,
            key_activity_splits_recent_from_baseline,
            a_flush_larger_than_one_statement_is_written_whole,
            the_roll_up_job_rolls_each_minute_once_and_reads_stay_exact,
            workspace_usage_sums_its_keys_before_and_after_the_roll_up,
            top_keys_are_exact_before_and_after_the_roll_up_and_as_days_pass
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                // `None`: the database is not there and the run does not require it.
                let Some(store) = $factory().await else { return };
                $crate::testsuite::$case(store).await;
            }
        )*
    };
}

// PostgreSQL for the suites of other crates: a fresh schema per test.

const SCHEMA_PREFIX: &str = "kg_test_";
/// Schemas of earlier runs older than this are dropped, so the database does not fill up.
const SCHEMA_MAX_AGE_SECS: u64 = 3600;

pub fn postgres_url() -> String {
    std::env::var("KEYGATE_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn services_required() -> bool {
    std::env::var("KEYGATE_REQUIRE_SERVICES").as_deref() == Ok("1")
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A connection to the test database, or `None` (skip) unless the run requires PostgreSQL.
pub async fn postgres_admin_connection() -> Option<PgConnection> {
    match PgConnection::connect(&postgres_url()).await {
        Ok(connection) => Some(connection),
        Err(err) if services_required() => {
            panic!(
                "PostgreSQL is required (KEYGATE_REQUIRE_SERVICES=1) but unreachable at {}: {err}",
                postgres_url()
            )
        }
        Err(err) => {
            eprintln!("skipped: PostgreSQL unreachable at {}: {err}", postgres_url());
            None
        }
    }
}

async fn drop_old_schemas(connection: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::TEXT FROM pg_namespace WHERE nspname LIKE 'kg_test_%'")
            .fetch_all(&mut *connection)
            .await
            .unwrap();
    let now = unix_secs();
    for name in names {
        let created = name
            .trim_start_matches(SCHEMA_PREFIX)
            .split('_')
            .next()
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|secs| now.saturating_sub(secs) > SCHEMA_MAX_AGE_SECS) {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .execute(&mut *connection)
                .await;
        }
    }
}

/// A new, empty schema in the test database (older test schemas are dropped),
/// or `None` when PostgreSQL is unreachable and the run does not require it.
pub async fn fresh_postgres_schema() -> Option<String> {
    let mut connection = postgres_admin_connection().await?;
    drop_old_schemas(&mut connection).await;
    let schema = format!("{SCHEMA_PREFIX}{}_{:x}", unix_secs(), rand::random::<u64>());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut connection)
        .await
        .unwrap();
    Some(schema)
}

/// `store.url` for a schema of the test database: sqlx passes `options` to
/// the server, which then resolves every table in that schema.
pub fn postgres_url_for_schema(schema: &str) -> String {
    format!("{}?options=-c%20search_path%3D{schema}", postgres_url())
}

fn now() -> DateTime<Utc> {
    // Millisecond precision, as stores keep it.
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_default()
}

/// Audit ids in creation order even within one millisecond, as the engine
/// makes them (`IdGenerator`): lists are newest first by id, and two writes
/// of one test often fall in the same millisecond.
fn ordered_audit_id() -> String {
    static IDS: std::sync::Mutex<Option<IdGenerator>> = std::sync::Mutex::new(None);
    let mut ids = IDS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    ids.get_or_insert_with(IdGenerator::new).next(AUDIT_PREFIX, now())
}

/// An audit event for a write made by a test.
pub fn audit(action: &str, object_id: &str, workspace_id: Option<&str>) -> AuditEvent {
    AuditEvent {
        id: ordered_audit_id(),
        at: now(),
        actor: "testsuite".into(),
        actor_ip: Some("127.0.0.1".into()),
        action: action.into(),
        object_type: object_id.split('_').next().unwrap_or_default().into(),
        object_id: object_id.into(),
        workspace_id: workspace_id.map(str::to_owned),
        details: serde_json::json!({}),
    }
}

pub fn sample_workspace(name: &str) -> Workspace {
    Workspace {
        id: new_id(WORKSPACE_PREFIX, now(), &mut rand::thread_rng()),
        name: name.into(),
        plan: Some("free".into()),
        ip_allowlist: IpAllowlist::parse(&["10.0.0.0/8".into()]).unwrap_or_default(),
        limits: vec![],
        disabled: false,
        created_at: now(),
        updated_at: now(),
    }
}

pub fn sample_key(workspace_id: &str, name: &str) -> ApiKey {
    let mut hash = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut hash);
    let id = new_id(KEY_PREFIX, now(), &mut rand::thread_rng());
    ApiKey {
        lineage_id: id.clone(),
        id,
        workspace_id: workspace_id.into(),
        name: name.into(),
        environment: "live".into(),
        hash: KeyHash::from_bytes(hash),
        hint: "kg_live_AbCd...wxyz".into(),
        scopes: vec!["invoices:*".into()],
        ip_allowlist: IpAllowlist::parse(&["2001:db8::/32".into()]).unwrap_or_default(),
        expires_at: None,
        metadata: serde_json::from_str(r#"{"team":"billing","n":1}"#).unwrap_or_default(),
        limits: vec![],
        created_at: now(),
        created_by: Some("key_creator".into()),
        last_used_at: None,
        last_used_ip: None,
        revoked_at: None,
        revoked_reason: None,
        rotated_from: None,
        rotated_to: None,
        deleted_at: None,
    }
}

async fn workspace_with_key(store: &dyn Store) -> (Workspace, ApiKey) {
    let ws = sample_workspace("Acme");
    store
        .insert_workspace(&ws, &audit("workspace.created", &ws.id, Some(&ws.id)))
        .await
        .unwrap();
    let key = sample_key(&ws.id, "Production Server");
    store
        .insert_key(&key, &audit("key.created", &key.id, Some(&ws.id)))
        .await
        .unwrap();
    (ws, key)
}

pub async fn workspace_round_trip(store: Arc<dyn Store>) {
    assert!(
        store.get_workspace(ADMIN_WORKSPACE_ID).await.unwrap().is_some(),
        "migrations create ws_admin"
    );
    let mut ws = sample_workspace("Acme");
    store
        .insert_workspace(&ws, &audit("workspace.created", &ws.id, Some(&ws.id)))
        .await
        .unwrap();
    assert_eq!(store.get_workspace(&ws.id).await.unwrap(), Some(ws.clone()));

    ws.name = "Acme Inc".into();
    ws.disabled = true;
    ws.plan = None;
    ws.updated_at = now() + Duration::seconds(1);
    store
        .update_workspace(&ws, &audit("workspace.updated", &ws.id, Some(&ws.id)))
        .await
        .unwrap();
    assert_eq!(store.get_workspace(&ws.id).await.unwrap(), Some(ws.clone()));

    let missing = Workspace {
        id: "ws_missing".into(),
        ..ws.clone()
    };
    let err = store
        .update_workspace(&missing, &audit("workspace.updated", "ws_missing", None))
        .await;
    assert!(matches!(err, Err(StoreError::NotFound)));

    for i in 0..3 {
        let extra = sample_workspace(&format!("extra {i}"));
        store
            .insert_workspace(&extra, &audit("workspace.created", &extra.id, None))
            .await
            .unwrap();
    }
    let first = store.list_workspaces(&Page::first(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let cursor = first.next_cursor.clone().unwrap();
    let second = store
        .list_workspaces(&Page {
            limit: 200,
            cursor: Some(cursor),
        })
        .await
        .unwrap();
    assert!(second.items.iter().all(|w| first.items.iter().all(|f| f.id != w.id)));
    assert!(first.items[0].id > first.items[1].id, "newest first");
}

pub async fn deleting_a_workspace_revokes_its_keys(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    store
        .delete_workspace(&ws.id, now(), &audit("workspace.deleted", &ws.id, Some(&ws.id)))
        .await
        .unwrap();
    assert_eq!(store.get_workspace(&ws.id).await.unwrap(), None);
    let key = store.get_key(&key.id).await.unwrap().unwrap();
    assert!(key.revoked_at.is_some());
    let again = store
        .delete_workspace(&ws.id, now(), &audit("workspace.deleted", &ws.id, Some(&ws.id)))
        .await;
    assert!(matches!(again, Err(StoreError::NotFound)));
}

pub async fn key_round_trip_and_lookup_by_hash(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    assert_eq!(store.get_key(&key.id).await.unwrap(), Some(key.clone()));
    let (found, found_ws) = store.find_key_by_hash(&key.hash).await.unwrap().unwrap();
    assert_eq!(found, key);
    assert_eq!(found_ws, ws);
    assert_eq!(store.find_key_by_hash(&KeyHash::of("unknown")).await.unwrap(), None);
    assert_eq!(store.get_key("key_missing").await.unwrap(), None);
    assert_eq!(store.count_keys(&ws.id).await.unwrap(), 1);
}

pub async fn duplicate_hash_is_a_conflict(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let twin = ApiKey {
        hash: key.hash,
        ..sample_key(&ws.id, "twin")
    };
    let err = store
        .insert_key(&twin, &audit("key.created", &twin.id, Some(&ws.id)))
        .await;
    assert!(matches!(err, Err(StoreError::Conflict(_))), "{err:?}");
    let events = store
        .list_audit_events(
            &AuditFilter {
                key_id: Some(twin.id.clone()),
                ..Default::default()
            },
            &Page::first(10),
        )
        .await
        .unwrap();
    assert!(events.items.is_empty(), "a failed write leaves no audit event");
}

pub async fn list_keys_filters_and_pages(store: Arc<dyn Store>) {
    let ws = sample_workspace("Lister");
    store
        .insert_workspace(&ws, &audit("workspace.created", &ws.id, Some(&ws.id)))
        .await
        .unwrap();
    let t = now();
    let active = sample_key(&ws.id, "active");
    let expired = ApiKey {
        expires_at: Some(t - Duration::seconds(1)),
        ..sample_key(&ws.id, "expired")
    };
    let future = ApiKey {
        expires_at: Some(t + Duration::hours(1)),
        environment: "test".into(),
        ..sample_key(&ws.id, "future")
    };
    let revoked = sample_key(&ws.id, "revoked");
    let deleted = sample_key(&ws.id, "deleted");
    for key in [&active, &expired, &future, &revoked, &deleted] {
        store
            .insert_key(key, &audit("key.created", &key.id, Some(&ws.id)))
            .await
            .unwrap();
    }
    store
        .revoke_key(
            &revoked.id,
            t,
            Some("leaked"),
            &audit("key.revoked", &revoked.id, Some(&ws.id)),
        )
        .await
        .unwrap();
    store
        .delete_key(&deleted.id, t, &audit("key.deleted", &deleted.id, Some(&ws.id)))
        .await
        .unwrap();

    let names = |status: Option<KeyStatus>, env: Option<&str>| {
        let store = store.clone();
        let ws_id = ws.id.clone();
        let filter = KeyFilter {
            status,
            environment: env.map(str::to_owned),
        };
        async move {
            let page = store.list_keys(&ws_id, &filter, &Page::first(50), t).await.unwrap();
            let mut names: Vec<String> = page.items.into_iter().map(|k| k.name).collect();
            names.sort();
            names
        }
    };
    assert_eq!(names(None, None).await, ["active", "expired", "future", "revoked"]);
    assert_eq!(names(Some(KeyStatus::Active), None).await, ["active", "future"]);
    assert_eq!(names(Some(KeyStatus::Expired), None).await, ["expired"]);
    assert_eq!(names(Some(KeyStatus::Revoked), None).await, ["revoked"]);
    assert_eq!(names(Some(KeyStatus::Deleted), None).await, ["deleted"]);
    assert_eq!(names(None, Some("test")).await, ["future"]);

    let mut seen = Vec::new();
    let mut page = Page::first(1);
    loop {
        let result = store.list_keys(&ws.id, &KeyFilter::default(), &page, t).await.unwrap();
        assert!(result.items.len() <= 1);
        seen.extend(result.items.into_iter().map(|k| k.id));
        match result.next_cursor {
            Some(cursor) => page.cursor = Some(cursor),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "pages are newest first with no gaps or repeats");
    assert_eq!(seen.len(), 4);
}

pub async fn concurrent_revokes_apply_once(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            let (id, ws_id) = (key.id.clone(), ws.id.clone());
            tokio::spawn(async move {
                let reason = format!("reason {i}");
                store
                    .revoke_key(&id, now(), Some(&reason), &audit("key.revoked", &id, Some(&ws_id)))
                    .await
            })
        })
        .collect();
    let mut revoked = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            RevokeOutcome::Revoked(k) => {
                revoked += 1;
                assert!(k.revoked_at.is_some());
            }
            RevokeOutcome::AlreadyRevoked(k) => assert!(k.revoked_at.is_some()),
        }
    }
    assert_eq!(revoked, 1);
    let filter = AuditFilter {
        key_id: Some(key.id.clone()),
        ..Default::default()
    };
    let events = store.list_audit_events(&filter, &Page::first(50)).await.unwrap().items;
    assert_eq!(events.iter().filter(|e| e.action == "key.revoked").count(), 1);
}

pub async fn update_never_undoes_a_revoke(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    store
        .revoke_key(&key.id, now(), None, &audit("key.revoked", &key.id, Some(&ws.id)))
        .await
        .unwrap();
    let stale = ApiKey {
        name: "renamed".into(),
        scopes: vec![],
        ..key.clone()
    };
    store
        .update_key(&stale, &audit("key.updated", &key.id, Some(&ws.id)))
        .await
        .unwrap();
    let stored = store.get_key(&key.id).await.unwrap().unwrap();
    assert_eq!(stored.name, "renamed");
    assert!(stored.revoked_at.is_some());
}

pub async fn rotation_links_keys_and_refuses_twice(store: Arc<dyn Store>) {
    let (ws, old) = workspace_with_key(store.as_ref()).await;
    let grace_end = now() + Duration::hours(24);
    let new = ApiKey {
        lineage_id: old.lineage_id.clone(),
        rotated_from: Some(old.id.clone()),
        ..sample_key(&ws.id, &old.name)
    };
    store
        .rotate_key(&old.id, grace_end, &new, &audit("key.rotated", &old.id, Some(&ws.id)))
        .await
        .unwrap();
    let old_now = store.get_key(&old.id).await.unwrap().unwrap();
    assert_eq!(old_now.rotated_to.as_deref(), Some(new.id.as_str()));
    assert_eq!(old_now.expires_at, Some(grace_end));
    assert_eq!(store.get_key(&new.id).await.unwrap(), Some(new.clone()));

    let newer = sample_key(&ws.id, "again");
    let again = store
        .rotate_key(&old.id, grace_end, &newer, &audit("key.rotated", &old.id, Some(&ws.id)))
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))));
    assert_eq!(store.get_key(&newer.id).await.unwrap(), None, "nothing half-written");
    let missing = store
        .rotate_key(
            "key_missing",
            grace_end,
            &newer,
            &audit("key.rotated", "key_missing", None),
        )
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)));

    // A grace beyond an existing, earlier expiry never extends the key's life.
    let short = ApiKey {
        expires_at: Some(now() + Duration::minutes(5)),
        ..sample_key(&ws.id, "short")
    };
    store
        .insert_key(&short, &audit("key.created", &short.id, Some(&ws.id)))
        .await
        .unwrap();
    let successor = sample_key(&ws.id, "short");
    store
        .rotate_key(
            &short.id,
            now() + Duration::days(7),
            &successor,
            &audit("key.rotated", &short.id, Some(&ws.id)),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_key(&short.id).await.unwrap().unwrap().expires_at,
        short.expires_at
    );
}

pub async fn delete_key_hides_and_revokes(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let deleted = store
        .delete_key(&key.id, now(), &audit("key.deleted", &key.id, Some(&ws.id)))
        .await
        .unwrap();
    assert!(deleted.deleted_at.is_some() && deleted.revoked_at.is_some());
    assert_eq!(deleted.revoked_reason.as_deref(), Some("deleted"));
    let missing = store
        .delete_key("key_missing", now(), &audit("key.deleted", "key_missing", None))
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)));
}

pub async fn usage_counts_add_up_and_last_use_moves_forward(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let minute = (now().timestamp() / 60) * 60;
    let row = |outcome: &str, count| UsageCount {
        key_id: key.id.clone(),
        workspace_id: ws.id.clone(),
        minute,
        outcome: outcome.into(),
        count,
    };
    let later = now() + Duration::seconds(30);
    let batch = UsageBatch {
        id: "ub_first".into(),
        at: now(),
        counts: vec![row("admitted", 3), row("IP_NOT_ALLOWED", 1)],
        last_uses: vec![LastUse {
            key_id: key.id.clone(),
            at: later,
            ip: "203.0.113.9".into(),
        }],
        events: vec![],
    };
    store.record_usage(&batch).await.unwrap();
    let older = UsageBatch {
        id: "ub_second".into(),
        at: now(),
        counts: vec![row("admitted", 2)],
        last_uses: vec![LastUse {
            key_id: key.id.clone(),
            at: later - Duration::seconds(10),
            ip: "198.51.100.1".into(),
        }],
        events: vec![],
    };
    store.record_usage(&older).await.unwrap();

    let from = DateTime::from_timestamp(minute, 0).unwrap_or_default();
    let usage = store
        .key_usage(&key.id, UsageGrain::Minute, from, from + Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(usage, vec![row("IP_NOT_ALLOWED", 1), row("admitted", 5)]);
    // `to` a millisecond into the minute: the minute started before `to`, so it is in.
    let just_after = store
        .key_usage(&key.id, UsageGrain::Minute, from, from + Duration::milliseconds(1))
        .await
        .unwrap();
    assert_eq!(just_after, usage);
    assert!(store
        .key_usage(
            &key.id,
            UsageGrain::Minute,
            from + Duration::minutes(1),
            from + Duration::minutes(2)
        )
        .await
        .unwrap()
        .is_empty());
    let stored = store.get_key(&key.id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Some(later));
    assert_eq!(stored.last_used_ip.as_deref(), Some("203.0.113.9"));
}

/// A flush whose commit succeeded but whose answer was lost is retried with
/// the same batch id: it must count once. A new batch still adds up.
pub async fn a_retried_usage_batch_counts_once(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let minute = (now().timestamp() / 60) * 60;
    let batch = |id: &str, count| UsageBatch {
        id: id.into(),
        at: now(),
        counts: vec![UsageCount {
            key_id: key.id.clone(),
            workspace_id: ws.id.clone(),
            minute,
            outcome: "admitted".into(),
            count,
        }],
        last_uses: vec![],
        events: vec![],
    };
    store.record_usage(&batch("ub_retried", 7)).await.unwrap();
    store.record_usage(&batch("ub_retried", 7)).await.unwrap();
    store.record_usage(&batch("ub_next", 1)).await.unwrap();
    let from = DateTime::from_timestamp(minute, 0).unwrap_or_default();
    let usage = store
        .key_usage(&key.id, UsageGrain::Minute, from, from + Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].count, 8);
}

/// Batches spread over minutes of two hours and two days (and one retried)
/// read back the same at every grain: each rollup is the sum of its minutes.
pub async fn usage_is_rolled_up_to_hours_and_days_exactly(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    // 23:58 on some day: the minutes below cross an hour and a day.
    let base = UsageGrain::Day.bucket_of(now().timestamp()) - 120;
    let count = |minute: i64, outcome: &str, count| UsageCount {
        key_id: key.id.clone(),
        workspace_id: ws.id.clone(),
        minute: base + minute * 60,
        outcome: outcome.into(),
        count,
    };
    let batches = [
        (
            "ub_a",
            vec![
                count(0, "admitted", 3),
                count(1, "admitted", 2),
                count(1, "RATE_LIMIT_EXCEEDED", 4),
            ],
        ),
        ("ub_b", vec![count(2, "admitted", 5), count(3, "INVALID_API_KEY", 1)]),
        (
            "ub_a",
            vec![
                count(0, "admitted", 3),
                count(1, "admitted", 2),
                count(1, "RATE_LIMIT_EXCEEDED", 4),
            ],
        ),
        ("ub_c", vec![count(1, "admitted", 1), count(62, "admitted", 7)]),
    ];
    for (id, counts) in batches {
        let batch = UsageBatch {
            id: id.into(),
            at: now(),
            counts,
            last_uses: vec![],
            events: vec![],
        };
        store.record_usage(&batch).await.unwrap();
    }
    let from = DateTime::from_timestamp(base - 86_400, 0).unwrap();
    let to = DateTime::from_timestamp(base + 2 * 86_400, 0).unwrap();
    let read = |grain| {
        let store = store.clone();
        let key_id = key.id.clone();
        async move {
            let mut rows: Vec<_> = store
                .key_usage(&key_id, grain, from, to)
                .await
                .unwrap()
                .into_iter()
                .map(|row| (row.minute - base, row.outcome, row.count))
                .collect();
            // Sorted here: the database's collation may order outcomes differently.
            rows.sort();
            rows
        }
    };
    let owned = |rows: &[(i64, &str, u64)]| {
        rows.iter()
            .map(|(m, o, c)| (*m, (*o).to_owned(), *c))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        read(UsageGrain::Minute).await,
        owned(&[
            (0, "admitted", 3),
            (60, "RATE_LIMIT_EXCEEDED", 4),
            (60, "admitted", 3),
            (120, "admitted", 5),
            (180, "INVALID_API_KEY", 1),
            (3_720, "admitted", 7),
        ])
    );
    // 23:58 and 23:59 are the last hour of the first day; 00:00, 00:01 and 01:00 the next day.
    assert_eq!(
        read(UsageGrain::Hour).await,
        owned(&[
            (-3_480, "RATE_LIMIT_EXCEEDED", 4),
            (-3_480, "admitted", 6),
            (120, "INVALID_API_KEY", 1),
            (120, "admitted", 5),
            (3_720, "admitted", 7),
        ])
    );
    assert_eq!(
        read(UsageGrain::Day).await,
        owned(&[
            (-86_280, "RATE_LIMIT_EXCEEDED", 4),
            (-86_280, "admitted", 6),
            (120, "INVALID_API_KEY", 1),
            (120, "admitted", 12),
        ])
    );
}

pub async fn pruning_drops_old_minutes_and_keeps_their_rollups(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let today = UsageGrain::Day.bucket_of(now().timestamp());
    let old = today - 10 * 86_400;
    let batch = UsageBatch {
        id: "ub_prune".into(),
        at: now(),
        counts: [old, today]
            .into_iter()
            .map(|minute| UsageCount {
                key_id: key.id.clone(),
                workspace_id: ws.id.clone(),
                minute,
                outcome: "admitted".into(),
                count: 2,
            })
            .collect(),
        last_uses: vec![],
        events: vec![],
    };
    store.record_usage(&batch).await.unwrap();
    let at = |seconds| DateTime::from_timestamp(seconds, 0).unwrap();
    let cutoffs = UsageCutoffs {
        minutes_before: at(today - 86_400),
        hours_before: at(old - 86_400),
        days_before: at(old - 86_400),
    };
    assert_eq!(
        store.prune_usage(&cutoffs).await.unwrap(),
        0,
        "minutes not rolled up yet are kept"
    );
    assert!(store.roll_up_usage(today + 60).await.unwrap() > 0);
    assert_eq!(
        store.prune_usage(&cutoffs).await.unwrap(),
        2,
        "the old minute only, of the key and of the workspace"
    );
    let range = (at(old - 86_400), at(today + 86_400));
    let starts = |grain| {
        let store = store.clone();
        let key_id = key.id.clone();
        async move {
            let rows = store.key_usage(&key_id, grain, range.0, range.1).await.unwrap();
            rows.into_iter().map(|row| row.minute).collect::<Vec<_>>()
        }
    };
    assert_eq!(starts(UsageGrain::Minute).await, [today]);
    assert_eq!(starts(UsageGrain::Hour).await, [old, today]);
    assert_eq!(starts(UsageGrain::Day).await, [old, today]);

    let later = UsageCutoffs {
        hours_before: at(today),
        ..cutoffs
    };
    assert_eq!(
        store.prune_usage(&later).await.unwrap(),
        2,
        "the old hour, of the key and of the workspace"
    );
    assert_eq!(starts(UsageGrain::Hour).await, [today]);
    assert_eq!(starts(UsageGrain::Day).await, [old, today]);
}

pub async fn audit_events_filter_by_workspace_and_key(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let (other_ws, _) = workspace_with_key(store.as_ref()).await;
    let by_ws = store
        .list_audit_events(
            &AuditFilter {
                workspace_id: Some(ws.id.clone()),
                key_id: None,
            },
            &Page::first(50),
        )
        .await
        .unwrap();
    let actions: Vec<_> = by_ws.items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.created", "workspace.created"]);
    assert!(by_ws
        .items
        .iter()
        .all(|e| e.workspace_id.as_deref() == Some(ws.id.as_str())));
    let by_key = store
        .list_audit_events(
            &AuditFilter {
                workspace_id: None,
                key_id: Some(key.id.clone()),
            },
            &Page::first(50),
        )
        .await
        .unwrap();
    assert_eq!(by_key.items.len(), 1);
    assert_eq!(by_key.items[0].actor_ip.as_deref(), Some("127.0.0.1"));
    assert_ne!(other_ws.id, ws.id);
}

pub async fn published_changes_enter_the_outbox_with_them(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let mut renamed = key.clone();
    renamed.name = "renamed".into();
    store
        .update_key(&renamed, &audit("key.updated", &key.id, Some(&ws.id)))
        .await
        .unwrap();
    let mut revoke = audit("key.revoked", &key.id, Some(&ws.id));
    revoke.details = serde_json::json!({"reason": "leaked"});
    store.revoke_key(&key.id, now(), Some("leaked"), &revoke).await.unwrap();
    // A second revoke changes nothing, so it publishes nothing.
    store
        .revoke_key(&key.id, now(), None, &audit("key.revoked", &key.id, Some(&ws.id)))
        .await
        .unwrap();
    let filter = EventListFilter {
        workspace_id: Some(ws.id.clone()),
        subject: None,
    };
    let events = store.list_events(&filter, &Page::first(50)).await.unwrap().items;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["key.revoked", "key.created"], "key.updated is not published");
    let revoked: serde_json::Value = serde_json::from_str(&events[0].body).unwrap();
    assert_eq!(revoked["type"], "key.revoked");
    assert_eq!(revoked["data"]["key_id"], key.id.as_str());
    assert_eq!(revoked["data"]["reason"], "leaked");
    assert_eq!(events[0].id, format!("msg_{}", &revoke.id["evt_".len()..]));
    // A change that fails writes no event.
    let err = store
        .insert_key(&key, &audit("key.created", &key.id, Some(&ws.id)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        store.list_events(&filter, &Page::first(50)).await.unwrap().items.len(),
        2
    );
}

fn new_event(kind: EventType, subject: &str, at: DateTime<Utc>) -> NewEvent {
    NewEvent {
        id: new_id("msg", at, &mut rand::thread_rng()),
        kind,
        at,
        workspace_id: Some("ws_events".into()),
        subject: Some(subject.into()),
        dedup_key: None,
        quiet_since: None,
        body: "{}".into(),
    }
}

pub async fn events_are_deduplicated_and_quieted(store: Arc<dyn Store>) {
    let t0 = now();
    let mut first = new_event(EventType::RateLimitExceeded, "key_a", t0);
    first.dedup_key = Some("ratelimit.exceeded:key_a:60000:1".into());
    let mut again = new_event(EventType::RateLimitExceeded, "key_a", t0);
    again.dedup_key = first.dedup_key.clone();
    assert_eq!(store.insert_events(&[first.clone(), again]).await.unwrap(), 1);
    assert_eq!(store.insert_events(std::slice::from_ref(&first)).await.unwrap(), 0);

    let anomaly = |at: DateTime<Utc>| NewEvent {
        quiet_since: Some(at - Duration::hours(1)),
        ..new_event(EventType::UsageAnomaly, "key_a", at)
    };
    assert_eq!(store.insert_events(&[anomaly(t0)]).await.unwrap(), 1);
    assert_eq!(
        store
            .insert_events(&[anomaly(t0 + Duration::minutes(59))])
            .await
            .unwrap(),
        0
    );
    let other_key = NewEvent {
        quiet_since: Some(t0),
        ..new_event(EventType::UsageAnomaly, "key_b", t0)
    };
    assert_eq!(store.insert_events(&[other_key]).await.unwrap(), 1);
    assert_eq!(
        store
            .insert_events(&[anomaly(t0 + Duration::minutes(61))])
            .await
            .unwrap(),
        1
    );
    let filter = EventListFilter {
        workspace_id: None,
        subject: Some("key_a".into()),
    };
    let mut kinds: Vec<String> = store
        .list_events(&filter, &Page::first(50))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| e.kind)
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["ratelimit.exceeded", "usage.anomaly", "usage.anomaly"]);
}

fn endpoint(workspace_id: Option<&str>, events: &[&str], created_at: DateTime<Utc>) -> WebhookEndpoint {
    WebhookEndpoint {
        id: new_id("wh", created_at, &mut rand::thread_rng()),
        workspace_id: workspace_id.map(str::to_owned),
        url: "http://127.0.0.1:9/hook".into(),
        secret: WebhookSecret::generate(&mut rand::thread_rng()),
        events: EventFilter::parse(events).unwrap(),
        description: None,
        created_at,
        created_by: Some("testsuite".into()),
    }
}

fn attempt(number: u32, at: DateTime<Utc>, status_code: Option<u16>) -> DeliveryAttempt {
    DeliveryAttempt {
        attempt: number,
        at,
        status_code,
        error: status_code.is_none().then(|| "connection refused".to_owned()),
        duration_ms: 3,
    }
}

pub async fn webhook_deliveries_fan_out_lease_and_finish_once(store: Arc<dyn Store>) {
    let t0 = now() - Duration::seconds(5);
    let ws = sample_workspace("Hooks");
    store
        .insert_workspace(&ws, &audit("workspace.created", &ws.id, Some(&ws.id)))
        .await
        .unwrap();
    let global = endpoint(None, &[], t0);
    let own = endpoint(Some(&ws.id), &["key.created"], t0);
    let filtered_out = endpoint(Some(&ws.id), &["key.revoked"], t0);
    let other_ws = endpoint(Some("ws_someone_else"), &[], t0);
    for hook in [&global, &own, &filtered_out, &other_ws] {
        let audit = audit("webhook.created", &hook.id, hook.workspace_id.as_deref());
        store.insert_webhook(hook, &audit).await.unwrap();
    }
    let secret_back = store.get_webhook(&own.id).await.unwrap().unwrap();
    assert_eq!(secret_back, own);
    let key = sample_key(&ws.id, "k");
    store
        .insert_key(&key, &audit("key.created", &key.id, Some(&ws.id)))
        .await
        .unwrap();
    // Fanned out once, however often asked (two nodes, or a retry).
    let now = now();
    assert_eq!(
        store.fan_out_events(now, 100).await.unwrap(),
        2,
        "the global and the own endpoint"
    );
    assert_eq!(store.fan_out_events(now, 100).await.unwrap(), 0);

    let lease_end = now + Duration::seconds(30);
    let claimed = store.claim_deliveries(now, lease_end, "node_a", 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed
        .iter()
        .all(|c| c.attempts == 0 && c.body.contains("key.created")));
    let to_own = claimed.iter().find(|c| c.endpoint_id == own.id).unwrap();
    assert_eq!(to_own.secret, own.secret);
    // Leased: another node gets nothing until the lease ends.
    assert!(store
        .claim_deliveries(now, lease_end, "node_b", 10)
        .await
        .unwrap()
        .is_empty());
    // Only the lease holder writes the result.
    let retry_at = now + Duration::seconds(60);
    assert!(!store
        .finish_delivery(
            &to_own.id,
            "node_b",
            &attempt(1, now, Some(500)),
            DeliveryNext::RetryAt(retry_at)
        )
        .await
        .unwrap());
    assert!(store
        .finish_delivery(
            &to_own.id,
            "node_a",
            &attempt(1, now, Some(500)),
            DeliveryNext::RetryAt(retry_at)
        )
        .await
        .unwrap());
    let to_global = claimed.iter().find(|c| c.endpoint_id == global.id).unwrap();
    assert!(store
        .finish_delivery(
            &to_global.id,
            "node_a",
            &attempt(1, now, Some(204)),
            DeliveryNext::Delivered
        )
        .await
        .unwrap());
    // Not due before its retry time; due after, with its attempt count.
    let before = retry_at - Duration::seconds(1);
    assert!(store
        .claim_deliveries(before, before + Duration::seconds(30), "node_b", 10)
        .await
        .unwrap()
        .is_empty());
    let again = store
        .claim_deliveries(retry_at, retry_at + Duration::seconds(30), "node_b", 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id.as_str(), again[0].attempts), (to_own.id.as_str(), 1));
    assert!(store
        .finish_delivery(
            &again[0].id,
            "node_b",
            &attempt(2, retry_at, None),
            DeliveryNext::GiveUp
        )
        .await
        .unwrap());
    // An expired lease is taken over.
    let key2 = sample_key(&ws.id, "k2");
    store
        .insert_key(&key2, &audit("key.created", &key2.id, Some(&ws.id)))
        .await
        .unwrap();
    store.fan_out_events(now, 100).await.unwrap();
    let first = store
        .claim_deliveries(now, now + Duration::seconds(1), "node_a", 1)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let later = now + Duration::seconds(2);
    let taken = store
        .claim_deliveries(later, later + Duration::seconds(30), "node_b", 10)
        .await
        .unwrap();
    assert!(
        taken.iter().any(|c| c.id == first[0].id),
        "the lapsed lease is taken over"
    );
    assert!(!store
        .finish_delivery(
            &first[0].id,
            "node_a",
            &attempt(1, later, Some(200)),
            DeliveryNext::Delivered
        )
        .await
        .unwrap());

    let own_deliveries = store.list_deliveries(&own.id, &Page::first(10)).await.unwrap().items;
    let oldest = own_deliveries.last().unwrap();
    assert_eq!(oldest.status, DeliveryStatus::Failed);
    assert_eq!(oldest.event_type, "key.created");
    let codes: Vec<Option<u16>> = oldest.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [Some(500), None]);
    assert_eq!(oldest.attempts[1].error.as_deref(), Some("connection refused"));
    let global_deliveries = store.list_deliveries(&global.id, &Page::first(10)).await.unwrap().items;
    let delivered = global_deliveries.last().unwrap();
    assert_eq!(delivered.status, DeliveryStatus::Delivered);
    assert_eq!(delivered.delivered_at, Some(now));
    assert!(store
        .list_deliveries(&other_ws.id, &Page::first(10))
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(store
        .list_deliveries(&filtered_out.id, &Page::first(10))
        .await
        .unwrap()
        .items
        .is_empty());
}

pub async fn deleting_a_webhook_stops_its_deliveries(store: Arc<dyn Store>) {
    let t0 = now() - Duration::seconds(5);
    let (ws, _) = workspace_with_key(store.as_ref()).await;
    // Created after the key: the earlier key.created is not sent to it.
    let hook = endpoint(Some(&ws.id), &[], t0 + Duration::seconds(10));
    store
        .insert_webhook(&hook, &audit("webhook.created", &hook.id, Some(&ws.id)))
        .await
        .unwrap();
    let late = now() + Duration::seconds(20);
    assert_eq!(store.fan_out_events(late, 100).await.unwrap(), 0);
    let key = sample_key(&ws.id, "later");
    let mut created = audit("key.created", &key.id, Some(&ws.id));
    created.at = late;
    store.insert_key(&key, &created).await.unwrap();
    assert_eq!(store.fan_out_events(late, 100).await.unwrap(), 1);
    let listed = store.list_webhooks(Some(&ws.id), &Page::first(10)).await.unwrap().items;
    assert_eq!(listed, std::slice::from_ref(&hook));
    store
        .delete_webhook(&hook.id, late, &audit("webhook.deleted", &hook.id, Some(&ws.id)))
        .await
        .unwrap();
    assert!(store.get_webhook(&hook.id).await.unwrap().is_none());
    assert!(store
        .list_webhooks(None, &Page::first(200))
        .await
        .unwrap()
        .items
        .iter()
        .all(|w| w.id != hook.id));
    assert!(store.claim_deliveries(late, late, "node", 10).await.unwrap().is_empty());
    let deliveries = store.list_deliveries(&hook.id, &Page::first(10)).await.unwrap().items;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].status, DeliveryStatus::Failed);
    let again = store
        .delete_webhook(&hook.id, late, &audit("webhook.deleted", &hook.id, Some(&ws.id)))
        .await;
    assert!(matches!(again, Err(StoreError::NotFound)));
}

pub async fn lifecycle_events_are_due_once(store: Arc<dyn Store>) {
    let ws = sample_workspace("Lifecycle");
    store
        .insert_workspace(&ws, &audit("workspace.created", &ws.id, Some(&ws.id)))
        .await
        .unwrap();
    let t0 = now();
    let mut expiring = sample_key(&ws.id, "expiring");
    expiring.expires_at = Some(t0 + Duration::days(3));
    let mut expired = sample_key(&ws.id, "expired");
    expired.expires_at = Some(t0 - Duration::hours(1));
    let mut old = sample_key(&ws.id, "old");
    old.created_at = t0 - Duration::days(100);
    let mut far = sample_key(&ws.id, "far");
    far.expires_at = Some(t0 + Duration::days(30));
    let mut revoked = sample_key(&ws.id, "revoked");
    revoked.expires_at = Some(t0 + Duration::days(1));
    for key in [&expiring, &expired, &old, &far, &revoked] {
        store
            .insert_key(key, &audit("key.created", &key.id, Some(&ws.id)))
            .await
            .unwrap();
    }
    store
        .revoke_key(&revoked.id, t0, None, &audit("key.revoked", &revoked.id, Some(&ws.id)))
        .await
        .unwrap();
    let scan = KeyEventScan {
        now: t0,
        expiring_before: t0 + Duration::days(7),
        expired_since: t0 - Duration::days(30),
        created_before: Some(t0 - Duration::days(90)),
        limit: 100,
    };
    let mut due: Vec<(EventType, String)> = store
        .keys_due_for_events(&scan)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, key)| key.workspace_id == ws.id)
        .map(|(kind, key)| (kind, key.name))
        .collect();
    due.sort();
    assert_eq!(
        due,
        [
            (EventType::KeyExpiring, "expiring".to_owned()),
            (EventType::KeyExpired, "expired".to_owned()),
            (EventType::KeyMaxAgeExceeded, "old".to_owned()),
        ]
    );
    // Once stored under their dedup names, they are not due again.
    let stored: Vec<NewEvent> = [(EventType::KeyExpiring, &expiring), (EventType::KeyExpired, &expired)]
        .into_iter()
        .map(|(kind, key)| NewEvent {
            dedup_key: Some(format!(
                "{kind}:{}:{}",
                key.id,
                key.expires_at.unwrap().timestamp_millis()
            )),
            ..new_event(kind, &key.id, t0)
        })
        .chain(std::iter::once(NewEvent {
            dedup_key: Some(format!("key.max_age_exceeded:{}", old.id)),
            ..new_event(EventType::KeyMaxAgeExceeded, &old.id, t0)
        }))
        .collect();
    assert_eq!(store.insert_events(&stored).await.unwrap(), 3);
    let again = store.keys_due_for_events(&scan).await.unwrap();
    assert!(again.iter().all(|(_, key)| key.workspace_id != ws.id), "{again:?}");
}

pub async fn key_activity_splits_recent_from_baseline(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let (_, quiet) = workspace_with_key(store.as_ref()).await;
    let now_minute = (now().timestamp() / 60) * 60;
    let count = |key: &crate::ApiKey, minutes_ago: i64, count| UsageCount {
        key_id: key.id.clone(),
        workspace_id: key.workspace_id.clone(),
        minute: now_minute - minutes_ago * 60,
        outcome: "admitted".into(),
        count,
    };
    let batch = UsageBatch {
        id: new_id("ub", now(), &mut rand::thread_rng()),
        at: now(),
        counts: vec![
            count(&key, 0, 40),
            count(&key, 4, 2),
            count(&key, 5, 7),
            count(&key, 64, 3),
            count(&key, 65, 1000),
            count(&quiet, 1, 5),
        ],
        last_uses: vec![],
        events: vec![],
    };
    store.record_usage(&batch).await.unwrap();
    let recent_from = now_minute - 4 * 60;
    let activity = store
        .key_activity(recent_from - 3600, recent_from, now_minute + 60, 10)
        .await
        .unwrap();
    let mine: Vec<_> = activity
        .iter()
        .filter(|a| a.key_id == key.id || a.key_id == quiet.id)
        .collect();
    assert_eq!(mine.len(), 1, "the quiet key is under the floor: {activity:?}");
    assert_eq!((mine[0].recent, mine[0].baseline), (42, 10));
    assert_eq!(mine[0].workspace_id, ws.id);
    assert_eq!(mine[0].key_created_at, key.created_at);
}

/// 1,201 keys and 2 outcomes: the counts span several multi-row statements.
pub async fn a_flush_larger_than_one_statement_is_written_whole(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let minute = (now().timestamp() / 60) * 60;
    let mut key_ids: Vec<String> = (0..1_200).map(|n| format!("key_bulk{n:05}{}", &ws.id[3..])).collect();
    key_ids.push(key.id.clone());
    let counts = key_ids
        .iter()
        .enumerate()
        .flat_map(|(n, key_id)| {
            ["admitted", "RATE_LIMIT_EXCEEDED"].map(|outcome| UsageCount {
                key_id: key_id.clone(),
                workspace_id: ws.id.clone(),
                minute,
                outcome: outcome.into(),
                count: n as u64 + 1,
            })
        })
        .collect();
    let used_at = now();
    let batch = UsageBatch {
        id: new_id("ub", now(), &mut rand::thread_rng()),
        at: now(),
        counts,
        last_uses: vec![LastUse {
            key_id: key.id.clone(),
            at: used_at,
            ip: "192.0.2.1".into(),
        }],
        events: vec![],
    };
    store.record_usage(&batch).await.unwrap();
    let from = DateTime::from_timestamp(minute, 0).unwrap();
    let to = from + Duration::days(1);
    for (n, key_id) in key_ids.iter().enumerate() {
        if n % 97 != 0 && n != key_ids.len() - 1 {
            continue;
        }
        for grain in UsageGrain::ALL {
            let rows = store
                .key_usage(key_id, grain, from - Duration::days(1), to)
                .await
                .unwrap();
            let counts: Vec<(&str, u64)> = rows.iter().map(|r| (r.outcome.as_str(), r.count)).collect();
            let expected = n as u64 + 1;
            assert_eq!(
                counts,
                [("RATE_LIMIT_EXCEEDED", expected), ("admitted", expected)],
                "{key_id} at {grain:?}"
            );
        }
    }
    let stored = store.get_key(&key.id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Some(used_at));
    assert_eq!(stored.last_used_ip.as_deref(), Some("192.0.2.1"));
}

/// Hours and days read the same before, during and after the job, for
/// minutes recorded on time and for a late batch the job has passed.
pub async fn the_roll_up_job_rolls_each_minute_once_and_reads_stay_exact(store: Arc<dyn Store>) {
    let (ws, key) = workspace_with_key(store.as_ref()).await;
    let hour = UsageGrain::Hour.bucket_of(now().timestamp()) - 3_600;
    let (m0, m1) = (hour + 60, hour + 120);
    let batch = |id: &str, minute: i64, count: u64| UsageBatch {
        id: id.into(),
        at: now(),
        counts: vec![UsageCount {
            key_id: key.id.clone(),
            workspace_id: ws.id.clone(),
            minute,
            outcome: "admitted".into(),
            count,
        }],
        last_uses: vec![],
        events: vec![],
    };
    let totals = || {
        let store = store.clone();
        let key_id = key.id.clone();
        async move {
            let from = DateTime::from_timestamp(hour, 0).unwrap();
            let to = from + Duration::days(1);
            let mut totals = Vec::new();
            for grain in [UsageGrain::Hour, UsageGrain::Day] {
                let rows = store
                    .key_usage(&key_id, grain, from - Duration::days(1), to)
                    .await
                    .unwrap();
                assert_eq!(rows.len(), 1, "one row per bucket and outcome: {rows:?}");
                totals.push(rows[0].count);
            }
            totals
        }
    };
    store.record_usage(&batch("ub_m0", m0, 3)).await.unwrap();
    store.record_usage(&batch("ub_m1", m1, 4)).await.unwrap();
    assert_eq!(totals().await, [7, 7], "read from the minutes before any roll-up");
    let rolled = store.roll_up_usage(m1).await.unwrap();
    assert!(rolled > 0);
    assert_eq!(totals().await, [7, 7], "m0 from the rollups, m1 from the minutes");
    assert_eq!(store.roll_up_usage(m1).await.unwrap(), 0, "nothing twice");
    assert_eq!(store.roll_up_usage(m0).await.unwrap(), 0, "never backwards");
    // A late batch for a minute the job has passed goes to the rollups directly.
    store.record_usage(&batch("ub_late", m0, 5)).await.unwrap();
    assert_eq!(totals().await, [12, 12]);
    store.roll_up_usage(m1 + 60).await.unwrap();
    assert_eq!(totals().await, [12, 12]);
    // With every minute pruned, the rollups alone still hold all of it.
    let far = DateTime::from_timestamp(m1 + 3_600, 0).unwrap();
    let cutoffs = UsageCutoffs {
        minutes_before: far,
        hours_before: far - Duration::days(30),
        days_before: far - Duration::days(30),
    };
    assert!(store.prune_usage(&cutoffs).await.unwrap() >= 2);
    let minutes = store
        .key_usage(
            &key.id,
            UsageGrain::Minute,
            DateTime::from_timestamp(hour, 0).unwrap(),
            far,
        )
        .await
        .unwrap();
    assert!(minutes.is_empty(), "{minutes:?}");
    assert_eq!(totals().await, [12, 12]);
}

/// Two keys of one workspace and one of another: the workspace series is the
/// sum of its keys, at every grain, read from the minutes, then from the
/// rollups, then with a late batch.
pub async fn workspace_usage_sums_its_keys_before_and_after_the_roll_up(store: Arc<dyn Store>) {
    let (ws, first) = workspace_with_key(store.as_ref()).await;
    let second = sample_key(&ws.id, "second");
    store
        .insert_key(&second, &audit("key.created", &second.id, Some(&ws.id)))
        .await
        .unwrap();
    let (other_ws, other) = workspace_with_key(store.as_ref()).await;
    let hour = UsageGrain::Hour.bucket_of(now().timestamp()) - 3_600;
    let count = |key: &ApiKey, minute: i64, outcome: &str, count: u64| UsageCount {
        key_id: key.id.clone(),
        workspace_id: key.workspace_id.clone(),
        minute,
        outcome: outcome.into(),
        count,
    };
    let batch = |id: &str, counts: Vec<UsageCount>| UsageBatch {
        id: id.into(),
        at: now(),
        counts,
        last_uses: vec![],
        events: vec![],
    };
    store
        .record_usage(&batch(
            "ub_ws1",
            vec![
                count(&first, hour, "admitted", 3),
                count(&second, hour, "admitted", 4),
                count(&second, hour + 60, "RATE_LIMIT_EXCEEDED", 2),
                count(&other, hour, "admitted", 100),
            ],
        ))
        .await
        .unwrap();
    let read = |workspace_id: String, grain: UsageGrain, from: i64| {
        let store = store.clone();
        async move {
            let from = DateTime::from_timestamp(from, 0).unwrap();
            let to = DateTime::from_timestamp(hour + 3_600, 0).unwrap();
            let rows = store.workspace_usage(&workspace_id, grain, from, to).await.unwrap();
            rows.into_iter()
                .map(|r| (r.start, r.outcome, r.count))
                .collect::<Vec<_>>()
        }
    };
    let day = UsageGrain::Day.bucket_of(hour);
    let expect = |admitted: u64| {
        let rate_limited = |start: i64| (start, "RATE_LIMIT_EXCEEDED".to_owned(), 2);
        let admitted = |start: i64| (start, "admitted".to_owned(), admitted);
        (
            vec![admitted(hour), rate_limited(hour + 60)],
            vec![rate_limited(hour), admitted(hour)],
            vec![rate_limited(day), admitted(day)],
        )
    };
    let all_grains = || async {
        (
            read(ws.id.clone(), UsageGrain::Minute, hour).await,
            read(ws.id.clone(), UsageGrain::Hour, hour).await,
            read(ws.id.clone(), UsageGrain::Day, day).await,
        )
    };
    assert_eq!(all_grains().await, expect(7), "read from the minutes");
    store.roll_up_usage(hour + 120).await.unwrap();
    assert_eq!(all_grains().await, expect(7), "read from the rollups");
    store
        .record_usage(&batch("ub_ws_late", vec![count(&first, hour, "admitted", 1)]))
        .await
        .unwrap();
    assert_eq!(all_grains().await, expect(8), "with a late batch");
    let theirs = read(other_ws.id.clone(), UsageGrain::Hour, hour).await;
    assert_eq!(theirs, [(hour, "admitted".to_owned(), 100)]);
}

/// Top keys over 1 and 7 days, read from the minutes, from the windows, a
/// day later (the windows moved), and with a late batch for the day before.
pub async fn top_keys_are_exact_before_and_after_the_roll_up_and_as_days_pass(store: Arc<dyn Store>) {
    let (ws, a) = workspace_with_key(store.as_ref()).await;
    let [b, c] = ["b", "c"].map(|name| sample_key(&ws.id, name));
    for key in [&b, &c] {
        store
            .insert_key(key, &audit("key.created", &key.id, Some(&ws.id)))
            .await
            .unwrap();
    }
    let (_, d) = workspace_with_key(store.as_ref()).await;
    let today = UsageGrain::Day.bucket_of(now().timestamp());
    let count = |key: &ApiKey, minute: i64, outcome: &str, count: u64| UsageCount {
        key_id: key.id.clone(),
        workspace_id: key.workspace_id.clone(),
        minute,
        outcome: outcome.into(),
        count,
    };
    let batch = |id: &str, counts: Vec<UsageCount>| UsageBatch {
        id: id.into(),
        at: now(),
        counts,
        last_uses: vec![],
        events: vec![],
    };
    store
        .record_usage(&batch(
            "ub_top",
            vec![
                count(&a, today + 60, "admitted", 10),
                count(&b, today + 60, "admitted", 5),
                count(&b, today + 120, "RATE_LIMIT_EXCEEDED", 8),
                count(&c, today - 6 * 86_400 + 60, "admitted", 50),
                count(&c, today + 120, "admitted", 1),
                count(&d, today + 60, "admitted", 100),
            ],
        ))
        .await
        .unwrap();
    let top = |days: u32, day: i64, by: TopBy, limit: u32| {
        let store = store.clone();
        let ws = ws.id.clone();
        async move {
            let keys = store.top_keys(&ws, days, day, by, limit).await.unwrap();
            keys.into_iter()
                .map(|k| (k.name, k.requests, k.rejected))
                .collect::<Vec<_>>()
        }
    };
    let row = |name: &str, requests: u64, rejected: u64| (name.to_owned(), requests, rejected);
    let today_answers = || async {
        (
            top(1, today, TopBy::Requests, 10).await,
            top(7, today, TopBy::Requests, 10).await,
            top(7, today, TopBy::Rejections, 10).await,
            top(7, today, TopBy::Requests, 2).await,
        )
    };
    let expected = (
        vec![row("b", 13, 8), row("Production Server", 10, 0), row("c", 1, 0)],
        vec![row("c", 51, 0), row("b", 13, 8), row("Production Server", 10, 0)],
        vec![row("b", 13, 8)],
        vec![row("c", 51, 0), row("b", 13, 8)],
    );
    assert_eq!(today_answers().await, expected, "from the minutes");
    store.roll_up_usage(today + 180).await.unwrap();
    assert_eq!(today_answers().await, expected, "from the windows");
    assert_eq!(store.roll_up_usage(today + 180).await.unwrap(), 0);

    // A day later: today's counts leave the 1-day window, c's old day the 7-day one.
    let tomorrow = today + 86_400;
    store.roll_up_usage(tomorrow + 60).await.unwrap();
    assert_eq!(top(1, tomorrow, TopBy::Requests, 10).await, []);
    assert_eq!(
        top(7, tomorrow, TopBy::Requests, 10).await,
        [row("b", 13, 8), row("Production Server", 10, 0), row("c", 1, 0)]
    );
    // A late batch for yesterday counts in 7 days, not in today's 1 day.
    store
        .record_usage(&batch("ub_top_late", vec![count(&a, today + 300, "admitted", 5)]))
        .await
        .unwrap();
    assert_eq!(
        top(7, tomorrow, TopBy::Requests, 10).await,
        [row("Production Server", 15, 0), row("b", 13, 8), row("c", 1, 0)]
    );
    assert_eq!(top(1, tomorrow, TopBy::Requests, 10).await, []);
    // 30 days later, nothing is left, and the rows are gone.
    store.roll_up_usage(today + 31 * 86_400).await.unwrap();
    assert_eq!(top(30, today + 31 * 86_400 - 60, TopBy::Requests, 10).await, []);
}
