//! Runs the shared store suite against the real PostgreSQL, each case in a
//! fresh schema of the `test` database (`KEYGATE_POSTGRES_URL` to change it).

// Test code: a failed expectation should panic where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use keygate_store::testsuite::{audit, fresh_postgres_schema, postgres_admin_connection, postgres_url_for_schema};
use keygate_store::Store;

async fn fresh_postgres() -> Option<Arc<dyn Store>> {
    let schema = fresh_postgres_schema().await?;
    Some(keygate_store::open(&postgres_url_for_schema(&schema)).await.unwrap())
}

keygate_store::store_suite!(fresh_postgres);
#[tokio::test]
async fn open_by_url_migrates_once_and_reopens() {
    let Some(schema) = fresh_postgres_schema().await else {
        return;
    };
    let mut connection = postgres_admin_connection().await.unwrap();
    let url = postgres_url_for_schema(&schema);
    let first = keygate_store::open(&url).await.unwrap();
    first.ping().await.unwrap();
    let ws = keygate_store::testsuite::sample_workspace("Durable");
    let event = keygate_store::AuditEvent {
        id: "evt_pg_1".into(),
        at: ws.created_at,
        actor: "test".into(),
        actor_ip: None,
        action: "workspace.created".into(),
        object_type: "workspace".into(),
        object_id: ws.id.clone(),
        workspace_id: Some(ws.id.clone()),
        details: serde_json::json!({}),
    };
    first.insert_workspace(&ws, &event).await.unwrap();
    let again = keygate_store::open(&url).await.unwrap();
    assert_eq!(again.get_workspace(&ws.id).await.unwrap(), Some(ws));
    let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_tables WHERE schemaname = $1")
        .bind(&schema)
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        tables, 20,
        "nineteen tables and sqlx's migration table, in the test's own schema"
    );
}

async fn next_event(feed: &mut Box<dyn keygate_store::ChangeFeed>) -> keygate_store::FeedEvent {
    tokio::time::timeout(std::time::Duration::from_secs(5), feed.next())
        .await
        .expect("no change announced within 5 s")
        .unwrap()
}

/// Committed changes reach the feed in commit order; a write that changes
/// nothing announces nothing; another schema's changes are not heard.
#[tokio::test]
async fn committed_changes_are_announced_to_the_feed_of_the_same_schema_only() {
    use keygate_store::testsuite::{sample_key, sample_workspace};
    use keygate_store::{Change, FeedEvent};
    let (Some(schema), Some(other_schema)) = (fresh_postgres_schema().await, fresh_postgres_schema().await) else {
        return;
    };
    let store = keygate_store::open(&postgres_url_for_schema(&schema)).await.unwrap();
    let other = keygate_store::open(&postgres_url_for_schema(&other_schema))
        .await
        .unwrap();
    let mut feed = store.change_feed().await.unwrap().expect("PostgreSQL has a feed");
    assert_eq!(next_event(&mut feed).await, FeedEvent::Connected);

    let mut ws = sample_workspace("Announced");
    store
        .insert_workspace(&ws, &audit("workspace.created", &ws.id, None))
        .await
        .unwrap();
    let key = sample_key(&ws.id, "announced");
    store
        .insert_key(&key, &audit("key.created", &key.id, None))
        .await
        .unwrap();
    let key2 = sample_key(&ws.id, "announced too");
    store
        .insert_key(&key2, &audit("key.created", &key2.id, None))
        .await
        .unwrap();
    let other_ws = sample_workspace("Elsewhere");
    other
        .insert_workspace(&other_ws, &audit("workspace.created", &other_ws.id, None))
        .await
        .unwrap();
    let mut other_changed = other_ws.clone();
    other_changed.name = "Elsewhere, renamed".into();
    other
        .update_workspace(&other_changed, &audit("workspace.updated", &other_ws.id, None))
        .await
        .unwrap();

    store
        .revoke_key(&key.id, chrono::Utc::now(), None, &audit("key.revoked", &key.id, None))
        .await
        .unwrap();
    assert_eq!(next_event(&mut feed).await, FeedEvent::Changed(Change::Key(key.hash)));
    // Already revoked: nothing changes, nothing is announced.
    store
        .revoke_key(&key.id, chrono::Utc::now(), None, &audit("key.revoked", &key.id, None))
        .await
        .unwrap();
    ws.name = "Renamed".into();
    store
        .update_workspace(&ws, &audit("workspace.updated", &ws.id, None))
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut feed).await,
        FeedEvent::Changed(Change::Workspace(ws.id.clone()))
    );
    // A receipt is heard after every change committed before it.
    store
        .revoke_key(
            &key2.id,
            chrono::Utc::now(),
            None,
            &audit("key.revoked", &key2.id, None),
        )
        .await
        .unwrap();
    assert!(store.announce_receipt("rcp_1").await.unwrap());
    assert_eq!(next_event(&mut feed).await, FeedEvent::Changed(Change::Key(key2.hash)));
    assert_eq!(
        next_event(&mut feed).await,
        FeedEvent::Changed(Change::Receipt("rcp_1".into()))
    );
}

/// Closing the pool under the feed is noticed as an error, not a hang.
#[tokio::test]
async fn a_lost_feed_connection_is_reported() {
    let Some(schema) = fresh_postgres_schema().await else {
        return;
    };
    let store = keygate_store::open(&postgres_url_for_schema(&schema)).await.unwrap();
    let mut feed = store.change_feed().await.unwrap().unwrap();
    assert_eq!(next_event(&mut feed).await, keygate_store::FeedEvent::Connected);
    let mut admin = postgres_admin_connection().await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' AND query LIKE $1")
        .bind(format!("%{schema}%"))
        .execute(&mut admin)
        .await
        .unwrap();
    let lost = tokio::time::timeout(std::time::Duration::from_secs(5), feed.next())
        .await
        .unwrap();
    assert!(lost.is_err(), "{lost:?}");
    // The next call connects again and says so.
    assert_eq!(next_event(&mut feed).await, keygate_store::FeedEvent::Connected);
}

async fn store_with_timing(heartbeat_ms: u64, silence_ms: u64) -> Option<keygate_store::postgres::PostgresStore> {
    let schema = fresh_postgres_schema().await?;
    let store = keygate_store::postgres::PostgresStore::open(&postgres_url_for_schema(&schema))
        .await
        .unwrap()
        .with_feed_timing(keygate_store::postgres::FeedTiming {
            heartbeat: std::time::Duration::from_millis(heartbeat_ms),
            silence_limit: std::time::Duration::from_millis(silence_ms),
        });
    Some(store)
}

/// A half-open connection raises no error; silence is how it is noticed.
/// With no heartbeat in time, the feed gives up on the connection and connects anew.
#[tokio::test]
async fn a_silent_feed_presumes_its_connection_dead() {
    let Some(store) = store_with_timing(3_600_000, 300).await else {
        return;
    };
    let mut feed = store.change_feed().await.unwrap().unwrap();
    assert_eq!(next_event(&mut feed).await, keygate_store::FeedEvent::Connected);
    let silent = tokio::time::timeout(std::time::Duration::from_secs(5), feed.next())
        .await
        .unwrap();
    assert!(silent.is_err(), "{silent:?}");
    assert_eq!(next_event(&mut feed).await, keygate_store::FeedEvent::Connected);
}

/// Heartbeats keep a quiet feed alive and never surface as changes.
#[tokio::test]
async fn heartbeats_keep_a_quiet_feed_alive_and_are_not_changes() {
    let Some(store) = store_with_timing(50, 300).await else {
        return;
    };
    let mut feed = store.change_feed().await.unwrap().unwrap();
    assert_eq!(next_event(&mut feed).await, keygate_store::FeedEvent::Connected);
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(1_500), feed.next()).await;
    assert!(
        quiet.is_err(),
        "nothing to report for 1.5 s, five times the silence limit: {quiet:?}"
    );
}
