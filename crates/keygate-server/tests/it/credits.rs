//! Usage credits (issue 19) on real nodes: spent in the same atomic decision
//! as the rate limits, on memory and on Redis, refilled on the manual clock,
//! kept by rotation, shown in headers, `whoami` and the verify API.

use axum::http::Method;
use chrono::Duration as Span;
use serde_json::{json, Value};

use crate::ratelimits::redis_url;
use crate::support::{error_snapshot, settles_at, TestApp};

fn remaining(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get("x-credits-remaining")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

/// 64 clients at once against 100 credits: exactly 100 admitted.
async fn exactly_the_credits_under_concurrency(limiter: &str) {
    let app = TestApp::builder()
        .config(&format!("[limiter]\n{limiter}\n"))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app
        .key(&ws, json!({"name": "metered", "credits": {"remaining": 100}}))
        .await;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (http, url, key) = (reqwest::Client::new(), app.gateway_url("/v1/whoami"), key.clone());
        clients.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..3 {
                let response = http.get(&url).header("X-API-Key", &key).send().await.unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap();
                statuses.push((status, body["code"].as_str().map(str::to_owned)));
            }
            statuses
        });
    }
    let mut admitted = 0;
    let mut refused = 0;
    while let Some(statuses) = clients.join_next().await {
        for (status, code) in statuses.unwrap() {
            match status {
                200 => admitted += 1,
                429 => {
                    assert_eq!(code.as_deref(), Some("USAGE_EXCEEDED"));
                    refused += 1;
                }
                other => panic!("status {other}"),
            }
        }
    }
    assert_eq!((admitted, refused), (100, 92), "never below zero, never short");
    let after = app.whoami(&key).await;
    assert_eq!(after.status(), 429);
    assert_eq!(remaining(&after), Some(0));
    assert!(
        after.headers().get("retry-after").is_none(),
        "credits that never refill"
    );
}

#[tokio::test]
async fn exactly_the_credits_are_spent_under_concurrency_in_memory() {
    exactly_the_credits_under_concurrency("").await;
}

#[tokio::test]
async fn exactly_the_credits_are_spent_under_concurrency_on_redis() {
    let Some(url) = redis_url() else { return };
    // Exactness of Redis's decisions, so no fallback: at the default 50 ms
    // timeout a Redis call slowed by a loaded test machine was answered by
    // the node's own counters (`on_failure = "local"`), which admitted one
    // request Redis would have refused (101 of 100, in CI). What a fallback
    // does is tested in crates/keygate-server/tests/it/ratelimits.rs; here
    // one would show as a 503.
    exactly_the_credits_under_concurrency(&format!("url = \"{url}\"\ntimeout = \"10s\"\non_failure = \"deny\"")).await;
}

/// While Redis is away (`on_failure = "local"`, the default) a node spends
/// no credits it cannot account for: a balance it never saw from Redis is
/// answered with a readable 503, while a key without credits is still
/// served. How a balance seen before the outage spends only what was left
/// is tested in crates/keygate-limiter/tests/limiter.rs.
#[tokio::test]
async fn an_unreachable_redis_does_not_hand_out_credits_again() {
    let app = TestApp::builder()
        .config("[limiter]\nurl = \"redis://127.0.0.1:1\"\ntimeout = \"50ms\"\n")
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, metered) = app
        .key(&ws, json!({"name": "metered", "credits": {"remaining": 100}}))
        .await;
    let (_, plain) = app.key(&ws, json!({"name": "plain"})).await;
    let refused = app.whoami(&metered).await;
    assert_eq!(refused.status(), 503);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "SERVICE_UNAVAILABLE");
    assert_eq!(app.whoami(&plain).await.status(), 200);
}

#[tokio::test]
async fn credits_refill_at_the_right_time_and_rotation_keeps_them() {
    let app = TestApp::builder()
        .config("[limiter]\ndefault_plan = \"metered\"\n[plans.metered]\nlimits = [{ requests = 1000, per = \"1m\" }]\ncredits = { remaining = 3, refill = { amount = 2, every = \"1d\" } }")
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (id, key) = app.key(&ws, json!({"name": "plan credits"})).await;
    let created = app.clock_now();

    let first = app.whoami(&key).await;
    assert_eq!(remaining(&first), Some(2));
    assert_eq!(
        first.headers()["x-ratelimit-limit"],
        "1000",
        "credits are not a rate limit"
    );
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["credits"]["remaining"], 2);
    let refill_at: chrono::DateTime<chrono::Utc> = body["credits"]["refill_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        refill_at.timestamp_millis(),
        (created + Span::days(1)).timestamp_millis()
    );
    assert_eq!(body["ratelimit"]["limits"].as_array().unwrap().len(), 1);

    // Rotation: the successor spends the same balance.
    let rotated = app
        .admin_ok(
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            Some(json!({"grace": "0s"})),
            201,
        )
        .await;
    let successor = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(remaining(&app.whoami(&successor).await), Some(1));
    assert_eq!(remaining(&app.whoami(&successor).await), Some(0));
    let out = app.whoami(&successor).await;
    assert_eq!(out.status(), 429);
    let retry_after: i64 = out.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    let snapshot = error_snapshot(out).await;
    assert_eq!(snapshot["body"]["code"], "USAGE_EXCEEDED");
    assert_eq!(
        snapshot["body"]["data"]["refill_at"],
        json!(refill_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    );
    let now = app.clock_now();
    assert_eq!(retry_after, (refill_at - now).num_milliseconds().div_euclid(1000) + 1);

    // A refused request spends nothing; the refill sets the balance to 2.
    app.clock
        .advance(Span::days(1) - Span::milliseconds(1) - (now - created));
    assert_eq!(app.whoami(&successor).await.status(), 429, "a millisecond early");
    app.clock.advance(Span::milliseconds(1));
    assert_eq!(
        remaining(&app.whoami(&successor).await),
        Some(1),
        "refilled to 2, not 2 + what was left"
    );
    assert_eq!(remaining(&app.whoami(&successor).await), Some(0));
    assert_eq!(app.whoami(&successor).await.status(), 429);
}

#[tokio::test]
async fn a_key_and_a_workspace_override_the_plan_and_bad_values_name_the_field() {
    let app = TestApp::builder()
        .config("[limiter]\ndefault_plan = \"metered\"\n[plans.metered]\ncredits = { remaining = 1000 }\n[errors]\nusage_exceeded_status = 402")
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (id, key) = app.key(&ws, json!({"name": "k"})).await;
    assert_eq!(remaining(&app.whoami(&key).await), Some(999));
    // The workspace's credits replace the plan's for its keys.
    let patched = app
        .admin_ok(
            Method::PATCH,
            &format!("/v1/workspaces/{ws}"),
            Some(json!({"credits": {"remaining": 10}})),
            200,
        )
        .await;
    assert_eq!(patched["credits"], json!({"remaining": 10}));
    assert_eq!(
        remaining(&app.whoami(&key).await),
        Some(9),
        "changed credits start a new count"
    );
    // The key's own: a new balance from now.
    app.clock.advance(Span::seconds(1));
    let key_view = app
        .admin_ok(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"credits": {"remaining": 1, "refill": {"amount": 5, "every": "720h"}}})),
            200,
        )
        .await;
    assert_eq!(
        key_view["credits"],
        json!({"remaining": 1, "refill": {"amount": 5, "every": "30d"}})
    );
    assert_eq!(remaining(&app.whoami(&key).await), Some(0));
    let refused = app.whoami(&key).await;
    assert_eq!(refused.status(), 402, "errors.usage_exceeded_status");
    insta::assert_json_snapshot!("usage_exceeded_402", error_snapshot(refused).await, {
        ".retry_after" => "[seconds]",
        ".body.data.refill_at" => "[time]",
        ".body.data.retry_after" => "[seconds]",
    });
    // The verify API shows the balance too, and spends it.
    let verify = |body: Value| app.admin_call(Method::POST, "/v1/keys/verify", Some(body));
    let verified = verify(json!({"key": key, "dry_run": true})).await;
    assert_eq!(verified.status(), 402);
    for (credits, field) in [
        (json!({"remaining": -1}), "credits"),
        (
            json!({"remaining": 1, "refill": {"amount": 0, "every": "1d"}}),
            "credits",
        ),
        (
            json!({"remaining": 1, "refill": {"amount": 1, "every": "soon"}}),
            "credits",
        ),
        (json!({"remaining": 1, "refil": {}}), "credits"),
    ] {
        let response = app
            .admin_call(
                Method::PATCH,
                &format!("/v1/keys/{id}"),
                Some(json!({"credits": credits})),
            )
            .await;
        assert!([400, 422].contains(&response.status().as_u16()), "{credits}");
        let body: Value = response.json().await.unwrap();
        assert!(body.to_string().contains(field), "{credits}: {body}");
    }
    // Back to the workspace's: null clears the key's own.
    app.clock.advance(Span::seconds(1));
    let cleared = app
        .admin_ok(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"credits": null})),
            200,
        )
        .await;
    assert_eq!(cleared["credits"], Value::Null);
    let verified: Value = verify(json!({"key": key})).await.json().await.unwrap();
    assert_eq!(
        verified["credits"]["remaining"], 9,
        "a new balance of the workspace's 10"
    );
}

#[tokio::test]
async fn bad_credit_settings_are_refused_at_start() {
    for (text, field) in [
        (
            "[plans.p]\ncredits = { remaining = 1, refill = { amount = 0, every = \"1d\" } }",
            "plans.p",
        ),
        ("[errors]\nusage_exceeded_status = 500", "errors.usage_exceeded_status"),
        ("[headers]\ncredits = \"Bad Header\"", "headers.credits"),
        // Each would hide, or be hidden by, the header of that name.
        ("[headers]\ncredits = \"X-RateLimit-Remaining\"", "headers.credits"),
        ("[headers]\ncredits = \"x-request-id\"", "headers.credits"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, text).unwrap();
        let err = keygate_server::config::ConfigSource::file(Some(path))
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{text}: {err}");
    }
}

/// The memory limiter forgets counts when its node stops; credits must not
/// come back with a restart. The stopping node writes what was spent, and a
/// new node on the same store takes it up before the key's first request.
#[tokio::test]
async fn a_restart_does_not_give_spent_credits_back() {
    let first = TestApp::builder().start().await;
    let ws = first.workspace("Acme").await;
    let (id, key) = first
        .key(
            &ws,
            json!({"name": "k", "credits": {"remaining": 5, "refill": {"amount": 5, "every": "30d"}}}),
        )
        .await;
    for left in [4, 3, 2] {
        assert_eq!(remaining(&first.whoami(&key).await), Some(left));
    }
    let second = TestApp::builder().store_of(&first);
    let _database = first.stop().await;
    let second = second.start().await;
    assert_eq!(
        remaining(&second.whoami(&key).await),
        Some(1),
        "2 left before the restart"
    );
    assert_eq!(remaining(&second.whoami(&key).await), Some(0));
    assert_eq!(second.whoami(&key).await.status(), 429);
    // Set again: a new balance, whatever was spent before.
    second
        .admin_ok(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"credits": {"remaining": 2}})),
            200,
        )
        .await;
    assert_eq!(remaining(&second.whoami(&key).await), Some(1));
    let third = TestApp::builder().store_of(&second);
    let _database_again = second.stop().await;
    let third = third.start().await;
    assert_eq!(remaining(&third.whoami(&key).await), Some(0));
    assert_eq!(third.whoami(&key).await.status(), 429);
}

/// A cost the upstream reports after the fact spends credits too, once, and
/// a balance it overdraws shows zero, never less.
#[tokio::test]
async fn an_upstream_reported_cost_spends_credits_once() {
    let upstream = crate::ratelimits::metering_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            "[[routes]]\npath = \"/metered\"\nupstream = \"{upstream}\"\ncost_header = \"X-Keygate-Cost\"\n"
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k", "credits": {"remaining": 30}})).await;
    let call = |cost: u64| {
        app.http
            .get(app.gateway_url(&format!("/metered?cost={cost}")))
            .header("X-API-Key", &key)
            .send()
    };
    let balance = || async {
        let checked = app
            .admin_call(
                Method::POST,
                "/v1/keys/verify",
                Some(json!({"key": key, "dry_run": true})),
            )
            .await;
        let body: Value = checked.json().await.unwrap();
        body["credits"]["remaining"]
            .as_u64()
            .or_else(|| body["data"]["remaining"].as_u64())
            .unwrap()
    };
    let first = call(10).await.unwrap();
    assert_eq!(remaining(&first), Some(29), "the request's own cost, decided before");
    assert!(first.headers().get("x-keygate-cost").is_none());
    settles_at(balance, 19).await;
    assert_eq!(call(25).await.unwrap().status(), 200, "19 left: admitted");
    settles_at(balance, 0).await;
    let out = call(0).await.unwrap();
    assert_eq!(out.status(), 429);
    assert_eq!(remaining(&out), Some(0));
}
