//! `GET /v1/keys/changes`: the keys a node dropped from its cache, for
//! services that cache keygate's answers (keygate-client's `cache_for`).

use std::time::{Duration, Instant};

use axum::http::Method;
use keygate_core::KeyHash;
use serde_json::{json, Value};

use crate::support::TestApp;

async fn changes(app: &TestApp, query: &str) -> (u16, Value) {
    let response = app
        .admin_call(Method::GET, &format!("/v1/keys/changes{query}"), None)
        .await;
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_follower_hears_each_changed_key_by_its_hash_and_starts_over_when_it_cannot() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let (key_id, key) = app.key(&ws, json!({"name": "k"})).await;

    let (status, start) = changes(&app, "").await;
    assert_eq!(status, 200, "{start}");
    assert_eq!(start["reset"], true, "a first call starts over");
    let cursor = start["cursor"].as_str().unwrap().to_owned();

    // Nothing new: the answer waits out its wait, and keeps the cursor.
    let asked = Instant::now();
    let (_, quiet) = changes(&app, &format!("?after={cursor}&wait=300ms")).await;
    assert!(asked.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        (quiet["reset"].as_bool(), quiet["key_hashes"].as_array().map(Vec::len)),
        (Some(false), Some(0))
    );
    assert_eq!(quiet["cursor"], cursor.as_str());

    // A revoke made while a follower waits ends its wait with the key's hash.
    let waiting = {
        let (admin, admin_key, cursor) = (app.admin.clone(), app.admin_key.clone(), cursor.clone());
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("{admin}/v1/keys/changes?after={cursor}&wait=10s"))
                .header("X-API-Key", admin_key)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let revoked_at = Instant::now();
    app.admin_ok(Method::POST, &format!("/v1/keys/{key_id}/revoke"), Some(json!({})), 200)
        .await;
    let heard = waiting.await.unwrap();
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    assert_eq!(heard["reset"], false, "{heard}");
    let hash = KeyHash::of(&key).to_hex();
    assert_eq!(heard["key_hashes"], json!([hash]));
    assert!(!heard.to_string().contains(&key[8..]), "never the key");

    // A workspace change cannot be told key by key.
    let next = heard["cursor"].as_str().unwrap();
    app.admin_ok(
        Method::PATCH,
        &format!("/v1/workspaces/{ws}"),
        Some(json!({"name": "Acme 2"})),
        200,
    )
    .await;
    let (_, after_workspace) = changes(&app, &format!("?after={next}")).await;
    assert_eq!(after_workspace["reset"], true, "{after_workspace}");

    // Another node's cursor (or one from before a restart) starts over too.
    let (status, elsewhere) = changes(&app, "?after=node_01m90000000000000000000000.7").await;
    assert_eq!((status, elsewhere["reset"].as_bool()), (200, Some(true)));
}

#[tokio::test]
async fn only_admin_keys_follow_and_a_malformed_cursor_or_wait_is_refused() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let (_, manager) = app.key(&ws, json!({"name": "m", "scopes": ["keys:manage"]})).await;
    let refused = app.admin_call_as(&manager, Method::GET, "/v1/keys/changes", None).await;
    assert_eq!(refused.status(), 403);
    for query in ["?after=not-a-cursor", "?after=node.x", "?wait=11s", "?wait=forever"] {
        let (status, body) = changes(&app, query).await;
        assert_eq!(status, 422, "{query}: {body}");
        assert_eq!(body["code"], "VALIDATION_ERROR");
    }
}

#[tokio::test]
async fn the_document_states_the_cursor_grammar_the_engine_reads() {
    let app = TestApp::start().await;
    let (_, document) = app.control_json("/openapi.json").await;
    let params = document["paths"]["/v1/keys/changes"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let after = params.iter().find(|p| p["name"] == "after").unwrap();
    assert_eq!(after["schema"]["pattern"], keygate_engine::admin::CURSOR_PATTERN);
}
