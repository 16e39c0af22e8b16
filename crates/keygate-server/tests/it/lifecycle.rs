//! A key's life: creation, use, rotation with grace, revocation, expiry,
//! usage counters and last use. Time is moved with the manual clock, never slept.

use axum::http::Method;
use chrono::Duration;
use serde_json::{json, Value};

use crate::support::{echo_upstream, TestApp};

async fn code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["code"].as_str().unwrap_or("OK").to_owned())
}

#[tokio::test]
async fn rotation_keeps_the_old_key_until_its_grace_deadline() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let (old_id, old) = app
        .key(
            &ws,
            json!({"name": "Production Server", "scopes": ["invoices:*"], "metadata": {"team": "billing"}}),
        )
        .await;
    let rotated = app
        .admin_ok(
            Method::POST,
            &format!("/v1/keys/{old_id}/rotate"),
            Some(json!({"grace": "1h"})),
            201,
        )
        .await;
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["name"], "Production Server");
    assert_eq!(rotated["scopes"], json!(["invoices:*"]));
    assert_eq!(rotated["metadata"], json!({"team": "billing"}));
    assert_eq!(rotated["rotated_from"], old_id.as_str());

    assert_eq!(app.whoami(&old).await.status(), 200);
    assert_eq!(app.whoami(&new).await.status(), 200);
    let old_view = app
        .admin_ok(Method::GET, &format!("/v1/keys/{old_id}"), None, 200)
        .await;
    assert_eq!(old_view["rotated_to"], rotated["id"]);
    assert!(old_view["expires_at"].is_string());

    app.clock.advance(Duration::minutes(59));
    assert_eq!(app.whoami(&old).await.status(), 200, "still inside the grace period");
    app.clock.advance(Duration::minutes(1));
    assert_eq!(code(app.whoami(&old).await).await, (401, "API_KEY_EXPIRED".into()));
    assert_eq!(app.whoami(&new).await.status(), 200);

    let again = app
        .admin_call(Method::POST, &format!("/v1/keys/{old_id}/rotate"), None)
        .await;
    assert_eq!(code(again).await, (409, "CONFLICT".into()));
}

#[tokio::test]
async fn rotation_with_zero_grace_ends_the_old_key_now() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let (old_id, old) = app.key(&ws, json!({"name": "k"})).await;
    assert_eq!(app.whoami(&old).await.status(), 200);
    app.admin_ok(
        Method::POST,
        &format!("/v1/keys/{old_id}/rotate"),
        Some(json!({"grace": "0"})),
        201,
    )
    .await;
    assert_eq!(code(app.whoami(&old).await).await, (401, "API_KEY_EXPIRED".into()));
}

#[tokio::test]
async fn revocation_applies_to_the_very_next_request() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let (id, key) = app.key(&ws, json!({"name": "k"})).await;
    assert_eq!(app.whoami(&key).await.status(), 200, "now cached");
    let revoked = app
        .admin_ok(
            Method::POST,
            &format!("/v1/keys/{id}/revoke"),
            Some(json!({"reason": "leaked"})),
            200,
        )
        .await;
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["revoked_reason"], "leaked");
    assert_eq!(code(app.whoami(&key).await).await, (401, "API_KEY_REVOKED".into()));
}

#[tokio::test]
async fn concurrent_revokes_all_succeed_and_are_audited_once() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let (id, key) = app.key(&ws, json!({"name": "k"})).await;
    let path = format!("/v1/keys/{id}/revoke");
    let calls = (0..10).map(|_| app.admin_call(Method::POST, &path, None));
    for response in futures::future::join_all(calls).await {
        assert_eq!(response.status(), 200);
    }
    let events = app
        .admin_ok(Method::GET, &format!("/v1/audit-events?key_id={id}"), None, 200)
        .await;
    let revokes = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "key.revoked")
        .count();
    assert_eq!(revokes, 1);
    assert_eq!(code(app.whoami(&key).await).await, (401, "API_KEY_REVOKED".into()));
}

#[tokio::test]
async fn expiry_is_exact() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let at = app.clock_now() + Duration::minutes(10);
    let (_, key) = app.key(&ws, json!({"name": "k", "expires_at": at})).await;
    app.clock.set(at - Duration::milliseconds(1));
    assert_eq!(app.whoami(&key).await.status(), 200);
    app.clock.set(at);
    assert_eq!(code(app.whoami(&key).await).await, (401, "API_KEY_EXPIRED".into()));
}

#[tokio::test]
async fn usage_counts_and_last_use_are_recorded_off_the_request_path() {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            "[[routes]]\npath = \"/api/write\"\nupstream = \"{}\"\nscopes = [\"data:write\"]\n",
            upstream.url
        ))
        .config("[limiter]\ndefault_plan = \"three\"\n[plans.three]\nlimits = [{ requests = 3, per = \"1m\" }]")
        // The test flushes: the node's own flusher must not split the requests
        // between two batches.
        .config("[usage]\nflush_interval = \"1h\"")
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (id, key) = app.key(&ws, json!({"name": "k", "scopes": ["data:read"]})).await;
    for _ in 0..3 {
        let ok = app
            .http
            .get(app.gateway_url("/v1/whoami"))
            .header("X-API-Key", &key)
            .header("X-Forwarded-For", "203.0.113.9")
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
    }
    for _ in 0..2 {
        let denied = app
            .http
            .post(app.gateway_url("/api/write"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(denied.status(), 403);
    }
    // Over the limit of 3 a minute: refused before anything is forwarded.
    for _ in 0..2 {
        assert_eq!(app.whoami(&key).await.status(), 429);
    }
    let before = app.admin_ok(Method::GET, &format!("/v1/keys/{id}"), None, 200).await;
    assert!(
        before["last_used_at"].is_null(),
        "nothing is written on the request path"
    );

    app.app.engine.usage().flush().await.unwrap();
    let usage = app
        .admin_ok(Method::GET, &format!("/v1/keys/{id}/usage?granularity=hour"), None, 200)
        .await;
    let points = usage["data"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{usage}");
    let expected_outcomes = json!({"INSUFFICIENT_SCOPE": 2, "RATE_LIMIT_EXCEEDED": 2, "admitted": 3});
    assert_eq!(points[0]["outcomes"], expected_outcomes);
    assert_eq!(points[0]["total"], 7);
    // Per minute (what was recorded), per hour and per day add up to the
    // same, before the roll-up job (read from the minutes) and after it
    // (read from the rollups).
    let expected = [
        ("INSUFFICIENT_SCOPE".to_owned(), 2),
        ("RATE_LIMIT_EXCEEDED".to_owned(), 2),
        ("admitted".to_owned(), 3),
    ];
    for (granularity, rolled_up) in [
        ("minute", false),
        ("hour", false),
        ("day", false),
        ("hour", true),
        ("day", true),
    ] {
        if rolled_up {
            app.clock.advance(Duration::minutes(1));
            app.app.engine.usage().roll_up().await.unwrap();
        }
        let usage = app
            .admin_ok(
                Method::GET,
                &format!("/v1/keys/{id}/usage?granularity={granularity}"),
                None,
                200,
            )
            .await;
        let mut sums = std::collections::BTreeMap::<String, u64>::new();
        for point in usage["data"].as_array().unwrap() {
            for (outcome, count) in point["outcomes"].as_object().unwrap() {
                *sums.entry(outcome.clone()).or_default() += count.as_u64().unwrap();
            }
        }
        assert_eq!(sums, expected.clone().into_iter().collect(), "{granularity}: {usage}");
    }
    let after = app.admin_ok(Method::GET, &format!("/v1/keys/{id}"), None, 200).await;
    assert!(after["last_used_at"].is_string());
    assert_eq!(
        after["last_used_ip"], "127.0.0.1",
        "the last request came without X-Forwarded-For"
    );
}

/// Sums of every bucket of a usage response, by outcome.
fn usage_sums(usage: &Value) -> std::collections::BTreeMap<String, u64> {
    let mut sums = std::collections::BTreeMap::new();
    for point in usage["data"].as_array().unwrap() {
        for (outcome, count) in point["outcomes"].as_object().unwrap() {
            *sums.entry(outcome.clone()).or_default() += count.as_u64().unwrap();
        }
    }
    sums
}

#[tokio::test]
async fn workspace_usage_is_the_sum_of_its_keys_before_and_after_the_roll_up() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let other = app.workspace("Other").await;
    let (reader_id, reader) = app.key(&ws, json!({"name": "reader", "scopes": ["data:read"]})).await;
    let (_, plain) = app.key(&ws, json!({"name": "plain"})).await;
    let (_, theirs) = app.key(&other, json!({"name": "theirs"})).await;
    for key in [&reader, &plain, &plain, &theirs] {
        assert_eq!(app.whoami(key).await.status(), 200);
    }
    app.app.engine.usage().flush().await.unwrap();
    let expected: std::collections::BTreeMap<String, u64> = [("admitted".to_owned(), 3)].into_iter().collect();
    let read = |granularity: &'static str| {
        let app = &app;
        let ws = ws.clone();
        async move {
            app.admin_ok(
                Method::GET,
                &format!("/v1/workspaces/{ws}/usage?granularity={granularity}"),
                None,
                200,
            )
            .await
        }
    };
    for granularity in ["minute", "hour", "day"] {
        let usage = read(granularity).await;
        assert_eq!(
            usage_sums(&usage),
            expected,
            "{granularity} before the roll-up: {usage}"
        );
        assert_eq!(usage["workspace_id"], ws.as_str());
    }
    app.clock.advance(Duration::minutes(1));
    assert!(app.app.engine.usage().roll_up().await.unwrap() > 0);
    for granularity in ["minute", "hour", "day"] {
        let usage = read(granularity).await;
        assert_eq!(usage_sums(&usage), expected, "{granularity} after the roll-up: {usage}");
    }
    assert_eq!(app.app.engine.usage().roll_up().await.unwrap(), 0, "nothing twice");

    // Top keys: plain made 2 requests, reader 1; then reader is revoked and refused once.
    let top = |query: &'static str| {
        let app = &app;
        let ws = ws.clone();
        async move {
            let top = app
                .admin_ok(Method::GET, &format!("/v1/workspaces/{ws}/top-keys?{query}"), None, 200)
                .await;
            top["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| {
                    (
                        k["name"].as_str().unwrap().to_owned(),
                        k["requests"].as_u64().unwrap(),
                        k["rejected"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let row = |name: &str, requests, rejected| (name.to_owned(), requests, rejected);
    assert_eq!(top("window=1d").await, [row("plain", 2, 0), row("reader", 1, 0)]);
    assert_eq!(top("window=30d&by=rejections").await, []);
    app.admin_ok(
        Method::POST,
        &format!("/v1/keys/{reader_id}/revoke"),
        Some(json!({})),
        200,
    )
    .await;
    assert_eq!(app.whoami(&reader).await.status(), 401);
    app.app.engine.usage().flush().await.unwrap();
    assert_eq!(top("window=7d&by=rejections").await, [row("reader", 2, 1)]);
    assert_eq!(
        top("window=7d&limit=1").await,
        [row("plain", 2, 0)],
        "ties: the newer key first"
    );
    for (query, field) in [
        ("window=2d", "window"),
        ("by=fun", "by"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
    ] {
        let bad = app
            .admin_call(Method::GET, &format!("/v1/workspaces/{ws}/top-keys?{query}"), None)
            .await;
        assert_eq!(bad.status(), 422, "{query}");
        let body: Value = bad.json().await.unwrap();
        assert_eq!(body["data"]["field"], field, "{query}: {body}");
    }

    let bad = app
        .admin_call(
            Method::GET,
            &format!("/v1/workspaces/{ws}/usage?granularity=week"),
            None,
        )
        .await;
    assert_eq!(bad.status(), 422);
    let backwards = app
        .admin_call(
            Method::GET,
            &format!("/v1/workspaces/{ws}/usage?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"),
            None,
        )
        .await;
    assert_eq!(backwards.status(), 422);
    let (_, manager) = app.key(&other, json!({"name": "m", "scopes": ["keys:manage"]})).await;
    for what in ["usage", "top-keys"] {
        let foreign = app
            .admin_call_as(&manager, Method::GET, &format!("/v1/workspaces/{ws}/{what}"), None)
            .await;
        assert_eq!(foreign.status(), 404, "another workspace's {what}");
    }
    let own = app
        .admin_call_as(
            &manager,
            Method::GET,
            &format!("/v1/workspaces/{other}/usage?granularity=day"),
            None,
        )
        .await;
    assert_eq!(own.status(), 200);
    let own: Value = own.json().await.unwrap();
    assert_eq!(usage_sums(&own), [("admitted".to_owned(), 1)].into_iter().collect());
}

#[tokio::test]
async fn graceful_shutdown_flushes_usage() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let (id, key) = app.key(&ws, json!({"name": "k"})).await;
    assert_eq!(app.whoami(&key).await.status(), 200);
    let store = app.store.clone();
    let from = app.clock_now() - Duration::hours(1);
    let to = app.clock_now() + Duration::hours(1);
    let _database = app.stop().await;
    let usage = keygate_store::UsageStore::key_usage(store.as_ref(), &id, keygate_store::UsageGrain::Minute, from, to)
        .await
        .unwrap();
    let total: u64 = usage.iter().map(|u| u.count).sum();
    assert_eq!(total, 1, "the one whoami request was flushed at shutdown: {usage:?}");
}

impl TestApp {
    pub fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        keygate_engine::Clock::now(self.clock.as_ref())
    }
}
