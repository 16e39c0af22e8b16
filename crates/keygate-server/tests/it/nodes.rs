//! The list of nodes and receipts on one node (issue 18): the node lists
//! itself while it runs and leaves the list when it stops; `?wait` adds a
//! receipt to a change's answer and to the audit trail. Receipts across
//! nodes are tested on three real processes (crates/keygate-cli/tests/cli/multinode.rs).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::TestApp;

/// The node ids `/v1/nodes` lists, once it lists `count` of them.
async fn nodes_once_listed(app: &TestApp, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listed = app.admin_ok(Method::GET, "/v1/nodes", None, 200).await;
        let nodes = listed["data"].as_array().unwrap().clone();
        if nodes.len() == count {
            return nodes;
        }
        assert!(Instant::now() < deadline, "never {count} nodes: {listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_node_lists_itself_while_it_runs_and_leaves_the_list_when_it_stops() {
    let app = TestApp::start().await;
    let second = TestApp::builder().store_of(&app).start().await;
    let nodes = nodes_once_listed(&app, 2).await;
    let this: Vec<&Value> = nodes.iter().filter(|node| node["this_node"] == true).collect();
    assert_eq!(this.len(), 1, "{nodes:?}");
    assert_eq!(this[0]["admin_addr"], app.admin.trim_start_matches("http://"));
    assert_eq!(this[0]["gateway_addr"], app.gateway.trim_start_matches("http://"));
    assert_eq!(this[0]["version"], env!("CARGO_PKG_VERSION"));
    assert!(this[0]["id"].as_str().unwrap().starts_with("node_"), "{nodes:?}");
    second.stop().await;
    let left = nodes_once_listed(&app, 1).await;
    assert_eq!(left[0]["this_node"], true, "the stopped node took itself off: {left:?}");

    let ws = app.workspace("Tenant").await;
    let (_, manager) = app
        .key(&ws, json!({"name": "manager", "scopes": ["keys:manage"]}))
        .await;
    let response = app.admin_call_as(&manager, Method::GET, "/v1/nodes", None).await;
    assert_eq!(response.status(), 403, "the nodes are the operator's");
}

#[tokio::test]
async fn wait_adds_a_receipt_to_the_answer_and_the_audit_trail() {
    let app = TestApp::start().await;
    let ws = app.workspace("Receipts").await;
    let one_node = json!({"nodes": 1, "confirmed": 1, "slowest_ms": 0, "unconfirmed": []});

    let (plain, _) = app.key(&ws, json!({"name": "no wait"})).await;
    let revoked = app
        .admin_ok(Method::POST, &format!("/v1/keys/{plain}/revoke"), None, 200)
        .await;
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked.get("propagation").is_none(), "only asked for: {revoked}");

    let (id, _) = app.key(&ws, json!({"name": "waited for"})).await;
    let revoked = app
        .admin_ok(Method::POST, &format!("/v1/keys/{id}/revoke?wait=2s"), None, 200)
        .await;
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["propagation"], one_node);
    let audit = app
        .admin_ok(Method::GET, &format!("/v1/audit-events?key_id={id}"), None, 200)
        .await;
    let receipt = &audit["data"][0];
    assert_eq!(receipt["action"], "propagation.receipt", "{audit}");
    assert_eq!(receipt["object_id"], id.as_str());
    assert_eq!(receipt["details"]["for"], "key.revoked");
    assert_eq!(receipt["details"]["confirmed"], 1);
    assert_eq!(audit["data"][1]["action"], "key.revoked", "the change itself, before");

    let (old, _) = app.key(&ws, json!({"name": "rotated"})).await;
    let rotated = app
        .admin_ok(Method::POST, &format!("/v1/keys/{old}/rotate?wait=500ms"), None, 201)
        .await;
    assert!(rotated["key"].as_str().is_some(), "{rotated}");
    assert_eq!(rotated["propagation"], one_node);
    let deleted = app
        .admin_ok(Method::DELETE, &format!("/v1/keys/{old}?wait=1s"), None, 200)
        .await;
    assert_eq!(deleted["propagation"], one_node);
    let updated = app
        .admin_ok(
            Method::PATCH,
            &format!("/v1/workspaces/{ws}?wait=1s"),
            Some(json!({"disabled": true})),
            200,
        )
        .await;
    assert_eq!(
        (updated["disabled"].clone(), updated["propagation"].clone()),
        (json!(true), one_node.clone())
    );
    let gone = app
        .admin_ok(Method::DELETE, &format!("/v1/workspaces/{ws}?wait=1s"), None, 200)
        .await;
    assert_eq!(gone, json!({"propagation": one_node}));
    let other = app.workspace("No wait").await;
    app.admin_ok(Method::DELETE, &format!("/v1/workspaces/{other}"), None, 204)
        .await;
}

#[tokio::test]
async fn a_wait_that_is_no_duration_or_too_long_is_refused_and_nothing_changes() {
    let app = TestApp::start().await;
    let ws = app.workspace("Refused").await;
    let (id, key) = app.key(&ws, json!({"name": "kept"})).await;
    for wait in ["11s", "soon", "-1s", "", "00s", "2000"] {
        let response = app
            .admin_call(Method::POST, &format!("/v1/keys/{id}/revoke?wait={wait}"), None)
            .await;
        assert_eq!(response.status(), 422, "{wait:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "VALIDATION_ERROR");
        assert_eq!(body["data"]["field"], "wait", "{body}");
        assert_eq!(body["message"], "wait: must be 0, 1ms to 9999ms, or 1s to 10s");
    }
    assert_eq!(app.whoami(&key).await.status(), 200, "the key was not revoked");
    // The document states the same grammar on every call that takes it.
    let (_, document) = app.control_json("/openapi.json").await;
    for (path, method) in [
        ("/v1/keys/{id}/revoke", "post"),
        ("/v1/keys/{id}/rotate", "post"),
        ("/v1/keys/{id}", "delete"),
        ("/v1/workspaces/{id}", "patch"),
        ("/v1/workspaces/{id}", "delete"),
        ("/v1/keys/changes", "get"),
    ] {
        let params = document["paths"][path][method]["parameters"].as_array().unwrap();
        let wait = params.iter().find(|p| p["name"] == "wait").unwrap();
        assert_eq!(
            wait["schema"]["pattern"],
            keygate_core::grammar::WAIT,
            "{method} {path}"
        );
    }
}
