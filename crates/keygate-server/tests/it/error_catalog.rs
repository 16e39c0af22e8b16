//! Every data-plane row of the error catalog, in each of the three formats:
//! status, code, headers and body, snapshotted.

use axum::http::Method;
use chrono::Duration;
use serde_json::json;

use crate::support::{echo_upstream, error_snapshot, TestApp};

/// Drives one node through every error this layer owns and snapshots each answer.
async fn snapshot_every_error(format: &str) {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            r#"
            [errors]
            format = "{format}"
            [security]
            max_failed_attempts = 3
            [[routes]]
            path = "/api/invoices"
            upstream = "{}"
            scopes = ["invoices:write"]
            max_body_size = "1KiB"
            "#,
            upstream.url
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, good) = app.key(&ws, json!({"name": "good", "scopes": ["invoices:read"]})).await;
    let get = |path: &str| app.http.get(app.gateway_url(path));
    let snap = |name: &str, value: serde_json::Value| {
        insta::assert_json_snapshot!(format!("{format}__{name}"), value);
    };

    snap(
        "MISSING_API_KEY",
        error_snapshot(get("/v1/whoami").send().await.unwrap()).await,
    );

    let (_, other) = app.key(&ws, json!({"name": "other"})).await;
    let ambiguous = get("/v1/whoami")
        .header("X-API-Key", &good)
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    snap("AMBIGUOUS_API_KEY", error_snapshot(ambiguous).await);

    let mut wrong_checksum = good.clone();
    let last = wrong_checksum.pop().unwrap();
    wrong_checksum.push(if last == 'a' { 'b' } else { 'a' });
    snap(
        "INVALID_API_KEY",
        error_snapshot(app.whoami(&wrong_checksum).await).await,
    );

    let (_, expiring) = app.key(&ws, json!({"name": "expiring", "expires_in": "1h"})).await;
    app.clock.advance(Duration::hours(1));
    snap("API_KEY_EXPIRED", error_snapshot(app.whoami(&expiring).await).await);

    let (revoked_id, revoked) = app.key(&ws, json!({"name": "revoked"})).await;
    app.admin_ok(Method::POST, &format!("/v1/keys/{revoked_id}/revoke"), None, 200)
        .await;
    snap("API_KEY_REVOKED", error_snapshot(app.whoami(&revoked).await).await);

    let (_, fenced) = app
        .key(&ws, json!({"name": "fenced", "ip_allowlist": ["203.0.113.0/24"]}))
        .await;
    snap("IP_NOT_ALLOWED", error_snapshot(app.whoami(&fenced).await).await);

    let scoped = app
        .http
        .post(app.gateway_url("/api/invoices"))
        .header("X-API-Key", &good)
        .send()
        .await
        .unwrap();
    snap("INSUFFICIENT_SCOPE", error_snapshot(scoped).await);

    for _ in 0..3 {
        let response = get("/v1/whoami")
            .header("X-API-Key", "kg_live_nope")
            .header("X-Forwarded-For", "198.51.100.7")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let throttled = get("/v1/whoami")
        .header("X-API-Key", "kg_live_nope")
        .header("X-Forwarded-For", "198.51.100.7")
        .send()
        .await
        .unwrap();
    snap("TOO_MANY_FAILED_ATTEMPTS", error_snapshot(throttled).await);

    snap(
        "ROUTE_NOT_FOUND",
        error_snapshot(get("/nowhere").send().await.unwrap()).await,
    );

    snap(
        "INVALID_PATH",
        error_snapshot(get("/api/invoices/a%2fb").send().await.unwrap()).await,
    );

    let (_, writer) = app
        .key(&ws, json!({"name": "writer", "scopes": ["invoices:write"]}))
        .await;
    let too_large = app
        .http
        .post(app.gateway_url("/api/invoices"))
        .header("X-API-Key", &writer)
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    snap("PAYLOAD_TOO_LARGE", error_snapshot(too_large).await);

    let https_only = TestApp::builder()
        .config(&format!(
            "[errors]\nformat = \"{format}\"\n[server]\nrequire_https = true\ntrusted_proxies = [\"10.0.0.0/8\"]\n"
        ))
        .start()
        .await;
    snap("HTTPS_REQUIRED", error_snapshot(https_only.whoami(&good).await).await);

    let other_ws = app.workspace("Disabled Inc").await;
    let (_, disabled_key) = app.key(&other_ws, json!({"name": "disabled"})).await;
    app.admin_ok(
        Method::PATCH,
        &format!("/v1/workspaces/{other_ws}"),
        Some(json!({"disabled": true})),
        200,
    )
    .await;
    snap(
        "WORKSPACE_DISABLED",
        error_snapshot(app.whoami(&disabled_key).await).await,
    );

    // Last: the store goes away, and an uncached key cannot be checked.
    let (_, uncached) = app.key(&ws, json!({"name": "uncached"})).await;
    app.store.close().await;
    snap("SERVICE_UNAVAILABLE", error_snapshot(app.whoami(&uncached).await).await);
}

#[tokio::test]
async fn envelope_format() {
    snapshot_every_error("envelope").await;
}

#[tokio::test]
async fn simple_format() {
    snapshot_every_error("simple").await;
}

#[tokio::test]
async fn problem_format() {
    snapshot_every_error("problem").await;
}

#[tokio::test]
async fn invalid_key_status_is_configurable() {
    let app = TestApp::builder()
        .config("[errors]\ninvalid_key_status = 403")
        .start()
        .await;
    let response = app.whoami("kg_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("www-authenticate").is_none());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_API_KEY");
    assert_eq!(body["status"], 403);
}

#[tokio::test]
async fn a_cached_key_survives_a_store_outage_but_keeps_its_state_checks() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k", "expires_in": "2m"})).await;
    assert_eq!(app.whoami(&key).await.status(), 200);
    app.store.close().await;
    assert_eq!(
        app.whoami(&key).await.status(),
        200,
        "cached keys need no store round trip"
    );
    // Past the key's expiry, within store.max_stale (5m) of its last read.
    app.clock.advance(Duration::minutes(3));
    assert_eq!(
        app.whoami(&key).await.status(),
        401,
        "expiry is still checked on cached keys"
    );
}
