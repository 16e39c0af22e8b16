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
use crate::{Confirmation, CreditSpend, NodeRecord, SessionRecord};
use keygate_core::events::{EventFilter, EventType};
use keygate_core::secrets::{Keyring, StoredSecret};

mod events;
mod keys;
mod usage;

pub use events::*;
pub use keys::*;
pub use usage::*;

/// Generates one `#[tokio::test]` per suite case for a store factory.
#[macro_export]
macro_rules! store_suite {
    ($factory:path) => {
        $crate::store_suite!(@cases $factory;
            workspace_round_trip,
            deleting_a_workspace_revokes_its_keys,
            key_round_trip_and_lookup_by_hash,
            duplicate_hash_is_a_conflict,
            an_import_inserts_what_is_new_and_leaves_the_rest,
            keys_are_looked_up_by_many_hashes_at_once,
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
            a_lone_audit_event_is_stored_and_published_as_its_action_says,
            events_are_deduplicated_and_quieted,
            webhook_deliveries_fan_out_lease_and_finish_once,
            deleting_a_webhook_stops_its_deliveries,
            webhook_secrets_are_listed_and_replaced_only_if_unchanged,
            lifecycle_events_are_due_once,
            key_activity_splits_recent_from_baseline,
            a_flush_larger_than_one_statement_is_written_whole,
            the_roll_up_job_rolls_each_minute_once_and_reads_stay_exact,
            workspace_usage_sums_its_keys_before_and_after_the_roll_up,
            top_keys_are_exact_before_and_after_the_roll_up_and_as_days_pass,
            usage_of_several_keys_is_read_in_one_call,
            credit_spends_only_move_forward,
            nodes_are_listed_while_they_heartbeat_and_receipts_count_each_node_once,
            sessions_reveals_and_portal_links_are_kept_and_used_up_once
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
        credits: Some(keygate_core::credits::CreditSpec {
            remaining: 100,
            refill: None,
        }),
        disabled: false,
        leak_policy: Some(keygate_core::model::OnLeak::Notify),
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
        roles: vec!["reader".into()],
        ip_allowlist: IpAllowlist::parse(&["2001:db8::/32".into()]).unwrap_or_default(),
        expires_at: None,
        metadata: serde_json::from_str(r#"{"team":"billing","n":1}"#).unwrap_or_default(),
        limits: vec![],
        credits: Some(keygate_core::credits::CreditSpec {
            remaining: 1_000,
            refill: Some(keygate_core::credits::RefillSpec {
                amount: 500,
                every: "30d".into(),
            }),
        }),
        credits_set_at: Some(now()),
        created_at: now(),
        created_by: Some("key_creator".into()),
        last_used_at: None,
        last_used_ip: None,
        revoked_at: None,
        revoked_reason: None,
        rotated_from: None,
        rotated_to: None,
        deleted_at: None,
        legacy: false,
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

/// A credit balance's stored spend moves forward only: a later period
/// replaces it, a larger spend in the same period raises it, and a stale or
/// smaller write (another node's, or a retry) changes nothing.
pub async fn credit_spends_only_move_forward(store: Arc<dyn Store>) {
    let spend = |counter: &str, period: u64, spent: u64| CreditSpend {
        owner: "key_lineage".into(),
        counter: counter.into(),
        period,
        spent,
        newest_ms: 1_700_000_000_000 + period,
    };
    let read = |counter: &'static str| {
        let store = store.clone();
        async move { store.credit_spend("key_lineage", counter).await.unwrap() }
    };
    assert_eq!(read("~credits@1:100").await, None);
    store
        .save_credit_spends(&[spend("~credits@1:100", 0, 40), spend("~credits@2:5", 3, u64::MAX)])
        .await
        .unwrap();
    assert_eq!(read("~credits@1:100").await, Some(spend("~credits@1:100", 0, 40)));
    let huge = read("~credits@2:5").await.unwrap();
    assert_eq!(
        (huge.period, huge.spent),
        (3, i64::MAX as u64),
        "clamped, never wrapped"
    );
    store
        .save_credit_spends(&[spend("~credits@1:100", 0, 30)])
        .await
        .unwrap();
    assert_eq!(
        read("~credits@1:100").await.unwrap().spent,
        40,
        "never lowered in a period"
    );
    store
        .save_credit_spends(&[spend("~credits@1:100", 0, 55)])
        .await
        .unwrap();
    assert_eq!(read("~credits@1:100").await.unwrap().spent, 55);
    store
        .save_credit_spends(&[spend("~credits@1:100", 1, 2)])
        .await
        .unwrap();
    assert_eq!(
        read("~credits@1:100").await,
        Some(spend("~credits@1:100", 1, 2)),
        "a new period"
    );
    store
        .save_credit_spends(&[spend("~credits@1:100", 0, 99)])
        .await
        .unwrap();
    assert_eq!(
        read("~credits@1:100").await.unwrap().period,
        1,
        "an old period never comes back"
    );
    store.save_credit_spends(&[]).await.unwrap();
}

/// A node is listed from its first heartbeat until it is not heard from or
/// removes itself; a heartbeat updates what changes and keeps when it
/// started. A receipt counts each node's first confirmation only, and
/// pruning forgets old nodes and confirmations.
pub async fn nodes_are_listed_while_they_heartbeat_and_receipts_count_each_node_once(store: Arc<dyn Store>) {
    let t0 = chrono::DateTime::from_timestamp_millis(1_800_000_000_000).unwrap();
    let at = |secs: i64| t0 + chrono::Duration::seconds(secs);
    let node = |id: &str, heartbeat: i64| NodeRecord {
        id: id.into(),
        version: "0.1.0".into(),
        gateway_addr: "127.0.0.1:8080".into(),
        admin_addr: "127.0.0.1:8081".into(),
        started_at: t0,
        last_heartbeat: at(heartbeat),
        hearing: "listening".into(),
        cache_size: 3,
    };
    store.record_heartbeat(&node("node_a", 0)).await.unwrap();
    store.record_heartbeat(&node("node_b", 0)).await.unwrap();
    let later = NodeRecord {
        started_at: at(5),
        hearing: "not_listening".into(),
        cache_size: 7,
        ..node("node_a", 10)
    };
    store.record_heartbeat(&later).await.unwrap();
    let live = store.nodes_seen_since(at(5)).await.unwrap();
    assert_eq!(
        live,
        vec![NodeRecord {
            started_at: t0,
            ..later.clone()
        }],
        "node_b is not heard from; node_a still started at t0"
    );
    assert_eq!(store.nodes_seen_since(at(0)).await.unwrap().len(), 2);
    store.remove_node("node_b").await.unwrap();
    assert_eq!(store.nodes_seen_since(at(0)).await.unwrap().len(), 1);

    assert_eq!(store.receipt_confirmations("rcp_1").await.unwrap(), vec![]);
    store.confirm_receipt("rcp_1", "node_a", at(1)).await.unwrap();
    store.confirm_receipt("rcp_1", "node_a", at(2)).await.unwrap();
    store.confirm_receipt("rcp_1", "node_c", at(3)).await.unwrap();
    store.confirm_receipt("rcp_2", "node_a", at(20)).await.unwrap();
    let confirmation = |node_id: &str, secs: i64| Confirmation {
        node_id: node_id.into(),
        at: at(secs),
    };
    assert_eq!(
        store.receipt_confirmations("rcp_1").await.unwrap(),
        vec![confirmation("node_a", 1), confirmation("node_c", 3)]
    );
    store.prune_nodes(at(15)).await.unwrap();
    assert_eq!(store.nodes_seen_since(at(0)).await.unwrap(), vec![]);
    assert_eq!(store.receipt_confirmations("rcp_1").await.unwrap(), vec![]);
    assert_eq!(
        store.receipt_confirmations("rcp_2").await.unwrap(),
        vec![confirmation("node_a", 20)]
    );
}

/// A session is found by its secret's hash until it is deleted or pruned;
/// touching it moves `last_seen_at` forward only. A reveal is taken once,
/// and goes with its session. A portal link is redeemed once, also
/// concurrently, and an expired one is pruned.
pub async fn sessions_reveals_and_portal_links_are_kept_and_used_up_once(store: Arc<dyn Store>) {
    let t0 = chrono::DateTime::from_timestamp_millis(1_800_000_000_000).unwrap();
    let at = |minutes: i64| t0 + chrono::Duration::minutes(minutes);
    let session = |id: &str, created: i64| SessionRecord {
        id: id.into(),
        actor_id: format!("dashboard:{id}"),
        workspace_id: None,
        environment: Some("test".into()),
        signed_in_with: Some("key_1".into()),
        created_at: at(created),
        last_seen_at: at(created),
    };
    store.insert_session("hash_a", &session("sess_a", 0)).await.unwrap();
    let portal = SessionRecord {
        workspace_id: Some("ws_1".into()),
        signed_in_with: None,
        ..session("sess_b", 10)
    };
    store.insert_session("hash_b", &portal).await.unwrap();
    assert_eq!(store.session("hash_a").await.unwrap(), Some(session("sess_a", 0)));
    assert_eq!(store.session("hash_b").await.unwrap(), Some(portal.clone()));
    assert_eq!(store.session("hash_c").await.unwrap(), None);
    store.touch_session("hash_a", at(20)).await.unwrap();
    store.touch_session("hash_a", at(5)).await.unwrap();
    assert_eq!(
        store.session("hash_a").await.unwrap().unwrap().last_seen_at,
        at(20),
        "never back"
    );

    let sealed = |text: &str| crate::StoredSecret::new(text.into());
    store.hold_reveal("hash_a", "key_9", &sealed("first")).await.unwrap();
    store.hold_reveal("hash_a", "key_9", &sealed("second")).await.unwrap();
    store.hold_reveal("hash_b", "key_8", &sealed("other")).await.unwrap();
    assert_eq!(store.take_reveal("hash_b", "key_9").await.unwrap(), None);
    assert_eq!(
        store.take_reveal("hash_a", "key_9").await.unwrap(),
        Some(sealed("second"))
    );
    assert_eq!(store.take_reveal("hash_a", "key_9").await.unwrap(), None, "once");
    store.hold_reveal("hash_a", "key_7", &sealed("kept")).await.unwrap();
    store.delete_session("hash_a").await.unwrap();
    assert_eq!(store.session("hash_a").await.unwrap(), None);
    assert_eq!(
        store.take_reveal("hash_a", "key_7").await.unwrap(),
        None,
        "gone with its session"
    );

    store.insert_portal_link("link_1", "ws_1", at(10)).await.unwrap();
    store.insert_portal_link("link_2", "ws_2", at(10)).await.unwrap();
    let (one, two) = tokio::join!(store.redeem_portal_link("link_1"), store.redeem_portal_link("link_1"));
    let redeemed: Vec<_> = [one.unwrap(), two.unwrap()].into_iter().flatten().collect();
    assert_eq!(
        redeemed,
        vec![("ws_1".to_owned(), at(10))],
        "exactly one redemption wins"
    );
    // Pruned at 40 minutes: sessions idle since 30 or opened before -60, links expired by 40.
    store.prune_sessions(at(30), at(-60), at(40)).await.unwrap();
    assert_eq!(store.session("hash_b").await.unwrap(), None, "idle since 10");
    assert_eq!(store.take_reveal("hash_b", "key_8").await.unwrap(), None);
    assert_eq!(
        store.redeem_portal_link("link_2").await.unwrap(),
        None,
        "expired and pruned"
    );
}
