//! Runs the shared store suite against the real PostgreSQL, each case in a
//! fresh schema of the `test` database (`KEYGATE_POSTGRES_URL` to change it).

// Test code: a failed expectation should panic where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use keygate_store::testsuite::{fresh_postgres_schema, postgres_admin_connection, postgres_url_for_schema};
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
        tables, 5,
        "four tables and sqlx's migration table, in the test's own schema"
    );
}
