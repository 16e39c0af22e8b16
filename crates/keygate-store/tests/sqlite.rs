//! Runs the shared store suite against SQLite, one fresh database file per case.

// Test code: a failed expectation should panic where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use keygate_store::sqlite::SqliteStore;
use keygate_store::{Store, WorkspaceStore};

async fn fresh_sqlite() -> Option<Arc<dyn Store>> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/keygate.db", dir.path().display());
    // The folder must outlive the test; it is removed with the OS temp dir.
    std::mem::forget(dir);
    Some(Arc::new(SqliteStore::open(&url).await.unwrap()))
}

keygate_store::store_suite!(fresh_sqlite);

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/nested/keygate.db", dir.path().display());
    let store = SqliteStore::open(&url).await.unwrap();
    let ws = keygate_store::testsuite::sample_workspace("Durable");
    let event = keygate_store::AuditEvent {
        id: "evt_1".into(),
        at: ws.created_at,
        actor: "test".into(),
        actor_ip: None,
        action: "workspace.created".into(),
        object_type: "workspace".into(),
        object_id: ws.id.clone(),
        workspace_id: Some(ws.id.clone()),
        details: serde_json::json!({}),
    };
    store.insert_workspace(&ws, &event).await.unwrap();
    store.close().await;
    let reopened = SqliteStore::open(&url).await.unwrap();
    assert_eq!(reopened.get_workspace(&ws.id).await.unwrap(), Some(ws));
}

/// One node, no feed: a receipt is not announced, since the writer evicted its own cache.
#[tokio::test]
async fn sqlite_announces_no_receipt() {
    let store = fresh_sqlite().await.unwrap();
    assert!(!store.announce_receipt("rcp_1").await.unwrap());
}
