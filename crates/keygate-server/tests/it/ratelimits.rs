//! Each seed's rate limits, configured as the seed describes, on real nodes:
//! headers on every response, 429 bodies in each format, rolling windows
//! (moved with the manual clock), resources, concurrency, overrides.

use std::time::Duration;

use axum::http::Method;
use chrono::Duration as Span;
use serde_json::{json, Value};

use crate::support::{echo_upstream, settles_at, TestApp};

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

fn number(response: &reqwest::Response, name: &str) -> u64 {
    header(response, name)
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

async fn whoami_n(app: &TestApp, key: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        statuses.push(app.whoami(key).await.status().as_u16());
    }
    statuses
}

/// Evon: 100 requests per minute per key, rolling 60-second window.
#[tokio::test]
async fn evon_rolling_minute() {
    let app = TestApp::builder()
        .config("[limiter]\ndefault_plan = \"standard\"\n[plans.standard]\nlimits = [{ requests = 100, per = \"1m\" }]\n[errors]\nformat = \"simple\"")
        .start()
        .await;
    let ws = app.workspace("Evon customer").await;
    let (_, key) = app.key(&ws, json!({"name": "crm"})).await;
    let t0 = app.clock_now();

    let first = app.whoami(&key).await;
    assert_eq!(first.status(), 200);
    assert_eq!(number(&first, "x-ratelimit-limit"), 100);
    assert_eq!(number(&first, "x-ratelimit-remaining"), 99);
    let reset = number(&first, "x-ratelimit-reset") as i64;
    assert!(
        (t0.timestamp() + 60..=t0.timestamp() + 62).contains(&reset),
        "reset {reset} vs now {}",
        t0.timestamp()
    );
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["ratelimit"]["limits"][0]["remaining"], 99);

    assert!(whoami_n(&app, &key, 49).await.iter().all(|s| *s == 200));
    app.clock.advance(Span::seconds(30));
    assert!(whoami_n(&app, &key, 50).await.iter().all(|s| *s == 200));

    let refused = app.whoami(&key).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(number(&refused, "x-ratelimit-remaining"), 0);
    let retry_after = number(&refused, "retry-after");
    assert!(
        (30..=32).contains(&retry_after),
        "the oldest 50 leave the window about 30 s from now: {retry_after}"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "Too many requests. Please try again later.");
    assert_eq!(body["retry_after"], retry_after);
    assert_eq!(
        (body["limit"].as_u64(), body["window"].as_str()),
        (Some(100), Some("1m"))
    );

    app.clock.advance(Span::seconds(retry_after as i64 - 1));
    assert_eq!(
        app.whoami(&key).await.status(),
        429,
        "Retry-After never points too early... minus one second is too early"
    );
    app.clock.advance(Span::seconds(1));
    let statuses = whoami_n(&app, &key, 51).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        50,
        "only the first 50 have left the rolling window"
    );
}

/// echowin: 1000 per hour plus a burst limit of 100 per minute.
#[tokio::test]
async fn echowin_hourly_and_burst() {
    let app = TestApp::builder()
        .config(
            "[limiter]\ndefault_plan = \"team\"\n\
             [plans.team]\nlimits = [{ requests = 1000, per = \"1h\" }, { requests = 100, per = \"1m\" }]\n\
             [errors]\nformat = \"simple\"\n[errors.messages]\nRATE_LIMIT_EXCEEDED = \"Rate limit exceeded. Please try again later.\"",
        )
        .start()
        .await;
    let ws = app.workspace("Team").await;
    let (_, key) = app.key(&ws, json!({"name": "portal key"})).await;
    let first = app.whoami(&key).await;
    assert_eq!(
        number(&first, "x-ratelimit-limit"),
        100,
        "the headers describe the limit closest to exhaustion"
    );

    let mut admitted = 1;
    for _ in 0..11 {
        admitted += whoami_n(&app, &key, 120).await.iter().filter(|s| **s == 200).count();
        app.clock.advance(Span::seconds(61));
    }
    assert_eq!(admitted, 1000, "ten bursts of 100 exhaust the hour");
    let refused = app.whoami(&key).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(
        number(&refused, "x-ratelimit-limit"),
        1000,
        "now the hourly limit is the tightest"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "Rate limit exceeded. Please try again later.");
    assert_eq!(
        (body["limit"].as_u64(), body["window"].as_str()),
        (Some(1000), Some("1h"))
    );
}

/// echowin's page says `X-RateLimit-Limit` is the maximum per hour:
/// `headers.describe = "1h"` makes the headers describe the hourly limit
/// while the minute's burst still refuses (and `Retry-After` says when it
/// admits); a plan may choose its own policy.
#[tokio::test]
async fn echowin_headers_describe_the_hourly_limit_as_its_page_does() {
    let app = TestApp::builder()
        .config(
            "[headers]\ndescribe = \"1h\"\n\
             [limiter]\ndefault_plan = \"team\"\n\
             [plans.team]\nlimits = [{ requests = 1000, per = \"1h\" }, { requests = 100, per = \"1m\" }]\n\
             [plans.burst]\ndescribe = \"tightest\"\nlimits = [{ requests = 1000, per = \"1h\" }, { requests = 100, per = \"1m\" }]",
        )
        .start()
        .await;
    let ws = app.workspace("Team").await;
    let (_, key) = app.key(&ws, json!({"name": "portal key"})).await;
    let first = app.whoami(&key).await;
    assert_eq!(
        number(&first, "x-ratelimit-limit"),
        1000,
        "the hourly maximum, as the page says"
    );
    assert_eq!(number(&first, "x-ratelimit-remaining"), 999);
    let statuses = whoami_n(&app, &key, 99).await;
    assert!(statuses.iter().all(|s| *s == 200));
    let refused = app.whoami(&key).await;
    assert_eq!(refused.status(), 429, "the burst limit still refuses");
    assert_eq!(number(&refused, "x-ratelimit-limit"), 1000);
    assert_eq!(number(&refused, "x-ratelimit-remaining"), 900);
    let retry = number(&refused, "retry-after");
    assert!(
        (59..=61).contains(&retry),
        "Retry-After tells when the minute admits: {retry}"
    );

    let burst = app
        .admin_ok(
            Method::POST,
            "/v1/workspaces",
            Some(json!({"name": "Burst", "plan": "burst"})),
            201,
        )
        .await;
    let (_, key) = app.key(burst["id"].as_str().unwrap(), json!({"name": "k"})).await;
    assert_eq!(
        number(&app.whoami(&key).await, "x-ratelimit-limit"),
        100,
        "the plan's own policy wins over headers.describe"
    );
}

/// Evaligo: free 100/min, pro 1000/min, enterprise custom per workspace.
#[tokio::test]
async fn evaligo_plan_tiers() {
    let app = TestApp::builder()
        .config(
            "[limiter]\ndefault_plan = \"free\"\n\
             [plans.free]\nlimits = [{ requests = 100, per = \"1m\" }]\n\
             [plans.pro]\nlimits = [{ requests = 1000, per = \"1m\" }]\n\
             [plans.enterprise]\nlimits = [{ requests = 10000, per = \"1m\" }]",
        )
        .start()
        .await;
    let limit_of = |ws: String| async {
        let ws = ws;
        let (_, key) = app.key(&ws, json!({"name": "k"})).await;
        number(&app.whoami(&key).await, "x-ratelimit-limit")
    };
    let free = app.workspace("Free").await;
    assert_eq!(limit_of(free.clone()).await, 100);
    let pro = app
        .admin_ok(
            Method::POST,
            "/v1/workspaces",
            Some(json!({"name": "Pro", "plan": "pro"})),
            201,
        )
        .await;
    assert_eq!(limit_of(pro["id"].as_str().unwrap().to_owned()).await, 1000);
    let enterprise = app
        .admin_ok(
            Method::POST,
            "/v1/workspaces",
            Some(json!({"name": "Big", "plan": "enterprise", "limits": [{"requests": 25000, "per": "1m"}]})),
            201,
        )
        .await;
    assert_eq!(
        limit_of(enterprise["id"].as_str().unwrap().to_owned()).await,
        25000,
        "custom limits beat the plan"
    );

    let (_, key) = app.key(&free, json!({"name": "burst"})).await;
    whoami_n(&app, &key, 100).await;
    let refused = app
        .http
        .get(app.gateway_url("/v1/whoami"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(number(&refused, "retry-after") >= 1);
}

/// A slow upstream that streams for ten seconds, standing for a WebSocket or a long download.
async fn streaming_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().fallback(|| async {
        let ticks = futures::stream::unfold(0u32, |n| async move {
            if n >= 100 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((
                Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"tick\n")),
                n + 1,
            ))
        });
        axum::body::Body::from_stream(ticks)
    });
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// EnvoyX read as "an upload is also an API request": the upload route
/// stacks both resources, so uploads use up the general 100/minute too, and
/// a refused upload charges neither.
#[tokio::test]
async fn envoyx_uploads_stacked_on_the_general_limit_count_against_both() {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            r#"
            [limiter]
            default_plan = "standard"
            [plans.standard]
            limits = [{{ requests = 100, per = "1m" }}, {{ resource = "uploads", requests = 100, per = "1h" }}]
            [errors]
            format = "envelope"
            [[routes]]
            path = "/api/v1/invoices/upload"
            methods = ["POST"]
            upstream = "{}"
            resources = ["default", "uploads"]
            "#,
            upstream.url
        ))
        .start()
        .await;
    let ws = app.workspace("EnvoyX customer").await;
    let (_, key) = app.key(&ws, json!({"name": "Production Server"})).await;
    let upload = || {
        app.http
            .post(app.gateway_url("/api/v1/invoices/upload"))
            .header("X-API-Key", &key)
            .body("pdf")
            .send()
    };
    for i in 0..100 {
        assert_eq!(upload().await.unwrap().status(), 200, "upload {i}");
    }
    let general = app.whoami(&key).await;
    assert_eq!(general.status(), 429, "100 uploads used up the general minute too");
    let body: Value = general.json().await.unwrap();
    assert_eq!(body["data"]["window"], "1m");

    app.clock.advance(Span::seconds(61));
    let refused = upload().await.unwrap();
    assert_eq!(refused.status(), 429, "the hourly upload limit is used up");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(
        (body["data"]["limit"].as_u64(), body["data"]["window"].as_str()),
        (Some(100), Some("1h"))
    );
    let after = app.whoami(&key).await;
    assert_eq!(after.status(), 200);
    assert_eq!(
        number(&after, "x-ratelimit-remaining"),
        99,
        "the refused upload charged the general minute nothing"
    );
}

/// A route's `cost`: an upload spends 10 of the minute's 25; one that does
/// not fit is refused whole and spends nothing.
#[tokio::test]
async fn a_route_cost_spends_that_much_of_every_limit() {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            r#"
            [limiter]
            default_plan = "p"
            [plans.p]
            limits = [{{ requests = 25, per = "1m" }}]
            [[routes]]
            path = "/upload"
            upstream = "{}"
            cost = 10
            "#,
            upstream.url
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let upload = || {
        app.http
            .post(app.gateway_url("/upload"))
            .header("X-API-Key", &key)
            .send()
    };
    let first = upload().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(number(&first, "x-ratelimit-remaining"), 15);
    assert_eq!(upload().await.unwrap().status(), 200);
    let refused = upload().await.unwrap();
    assert_eq!(refused.status(), 429, "10 more do not fit in the 5 left");
    let cheap = app.whoami(&key).await;
    assert_eq!(cheap.status(), 200, "a request of cost 1 still fits");
    assert_eq!(
        number(&cheap, "x-ratelimit-remaining"),
        4,
        "the refused upload spent nothing"
    );
}

/// The verify API stacks resources as a route does.
#[tokio::test]
async fn the_verify_api_stacks_resources_as_a_route_does() {
    let app = TestApp::builder()
        .config(
            "[limiter]\ndefault_plan = \"p\"\n[plans.p]\n\
             limits = [{ requests = 100, per = \"1m\" }, { resource = \"uploads\", requests = 2, per = \"1h\" }]",
        )
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let verify = |body: Value| app.admin_call(Method::POST, "/v1/keys/verify", Some(body));
    let stacked = json!({"key": key, "resources": ["default", "uploads"]});
    for _ in 0..2 {
        assert_eq!(verify(stacked.clone()).await.status(), 200);
    }
    assert_eq!(verify(stacked).await.status(), 429, "the uploads limit refuses");
    let general: Value = verify(json!({"key": key, "dry_run": true})).await.json().await.unwrap();
    assert_eq!(
        general["ratelimit"]["limits"][0]["remaining"], 98,
        "two admitted uploads counted as requests too, the refused one did not"
    );
    let both = verify(json!({"key": key, "resource": "uploads", "resources": ["default"]})).await;
    assert_eq!(both.status(), 422);
}

/// An upstream that reports each request's cost as `?cost=N` asked.
pub(crate) async fn metering_upstream() -> String {
    async fn metered(uri: axum::http::Uri) -> axum::response::Response {
        let cost = uri
            .query()
            .and_then(|q| q.strip_prefix("cost="))
            .unwrap_or("0")
            .to_owned();
        axum::response::Response::builder()
            .header("x-keygate-cost", cost)
            .body(axum::body::Body::from("metered"))
            .unwrap()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(metered))
            .await
            .unwrap()
    });
    format!("http://{addr}")
}

/// Kong's response-ratelimiting model: the upstream reports a cost after
/// the fact; it is charged once, to the next requests, and the client never
/// sees the header.
#[tokio::test]
async fn an_upstream_reported_cost_is_charged_once_and_never_shown() {
    let upstream = metering_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            r#"
            [limiter]
            default_plan = "p"
            [plans.p]
            limits = [{{ requests = 25, per = "1m" }}]
            [[routes]]
            path = "/metered"
            upstream = "{upstream}"
            cost_header = "X-Keygate-Cost"
            "#
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let call = |cost: u64| {
        app.http
            .get(app.gateway_url(&format!("/metered?cost={cost}")))
            .header("X-API-Key", &key)
            .send()
    };
    let remaining = || async {
        let checked = app
            .admin_call(
                Method::POST,
                "/v1/keys/verify",
                Some(json!({"key": key, "dry_run": true})),
            )
            .await;
        if checked.status() == 429 {
            return 0;
        }
        let body: Value = checked.json().await.unwrap();
        body["ratelimit"]["limits"][0]["remaining"].as_u64().unwrap()
    };

    let first = call(10).await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(
        first.headers().get("x-keygate-cost").is_none(),
        "stripped before the client"
    );
    assert_eq!(
        number(&first, "x-ratelimit-remaining"),
        24,
        "the request's own cost, decided before"
    );
    settles_at(remaining, 25 - 1 - 10).await;

    // A report larger than what is left is charged all the same: it was spent.
    assert_eq!(call(20).await.unwrap().status(), 200);
    settles_at(remaining, 0).await;
    assert_eq!(call(0).await.unwrap().status(), 429);
}

/// EnvoyX: 100/minute general, 100 uploads/hour, 5 WebSocket connections per key.
#[tokio::test]
async fn envoyx_resources_and_connections() {
    let upstream = echo_upstream().await;
    let stream = streaming_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            r#"
            [limiter]
            default_plan = "standard"
            [plans.standard]
            limits = [{{ requests = 100, per = "1m" }}, {{ resource = "uploads", requests = 100, per = "1h" }}]
            concurrency = [{{ resource = "websocket", max = 5 }}]
            [errors]
            format = "envelope"
            [[routes]]
            path = "/api/v1/invoices/upload"
            methods = ["POST"]
            upstream = "{}"
            resource = "uploads"
            [[routes]]
            path = "/api/v1/ws"
            upstream = "{stream}"
            resource = "websocket"
            [[routes]]
            path = "/api/v1/broken-ws"
            upstream = "http://127.0.0.1:1"
            resource = "websocket"
            "#,
            upstream.url
        ))
        .start()
        .await;
    let ws = app.workspace("EnvoyX customer").await;
    let (_, key) = app.key(&ws, json!({"name": "Production Server"})).await;
    let upload = || {
        app.http
            .post(app.gateway_url("/api/v1/invoices/upload"))
            .header("X-API-Key", &key)
            .body("pdf")
            .send()
    };

    for i in 0..100 {
        let response = upload().await.unwrap();
        assert_eq!(response.status(), 200, "upload {i}");
        if i == 0 {
            assert_eq!(number(&response, "x-ratelimit-limit"), 100);
            assert_eq!(
                header(&response, "x-upstream").as_deref(),
                Some("echo"),
                "upstream headers pass through"
            );
        }
        if i % 20 == 19 {
            app.clock.advance(Span::seconds(61)); // stay under the general 100/min on the way
        }
    }
    let refused = upload().await.unwrap();
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(body["message"], "Too many requests. Please try again later.");
    assert_eq!(
        (body["data"]["limit"].as_u64(), body["data"]["window"].as_str()),
        (Some(100), Some("1h"))
    );
    assert!(body["data"]["retry_after"].as_u64().unwrap() > 60);
    assert_eq!(
        app.whoami(&key).await.status(),
        200,
        "the general limit is not used up by uploads"
    );

    let open = |path: &'static str| app.http.get(app.gateway_url(path)).header("X-API-Key", &key).send();
    for _ in 0..3 {
        assert_eq!(
            open("/api/v1/broken-ws").await.unwrap().status(),
            502,
            "an upstream error releases its permit"
        );
    }
    let mut connections = Vec::new();
    for _ in 0..5 {
        let response = open("/api/v1/ws").await.unwrap();
        assert_eq!(response.status(), 200);
        connections.push(response);
    }
    let sixth = open("/api/v1/ws").await.unwrap();
    assert_eq!(sixth.status(), 429);
    let body: Value = sixth.json().await.unwrap();
    assert_eq!(body["code"], "CONCURRENCY_LIMIT_EXCEEDED");
    for connection in &mut connections {
        assert!(connection.chunk().await.unwrap().is_some(), "the first five stay open");
    }
    drop(connections.pop());
    let mut admitted = false;
    for _ in 0..40 {
        let response = open("/api/v1/ws").await.unwrap();
        if response.status() == 200 {
            admitted = true;
            connections.push(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "closing a connection frees its slot");
}

#[tokio::test]
async fn ietf_headers_list_every_limit() {
    let app = TestApp::builder()
        .config(
            "[headers]\nratelimit = [\"x-ratelimit\", \"ietf\"]\n[limiter]\ndefault_plan = \"team\"\n\
             [plans.team]\nlimits = [{ requests = 1000, per = \"1h\" }, { requests = 100, per = \"1m\" }]",
        )
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let response = app.whoami(&key).await;
    assert_eq!(
        header(&response, "ratelimit-policy").unwrap(),
        r#""default-1h";q=1000;w=3600, "default-1m";q=100;w=60"#
    );
    let current = header(&response, "ratelimit").unwrap();
    assert!(
        current.starts_with(r#""default-1h";r=999;t="#) && current.contains(r#""default-1m";r=99;t="#),
        "{current}"
    );
    assert_eq!(number(&response, "x-ratelimit-remaining"), 99);
}

#[tokio::test]
async fn rotation_keeps_counters_and_workspace_limits_are_shared() {
    let app = TestApp::builder()
        .config(
            "[limiter]\ndefault_plan = \"p\"\n[plans.p]\nlimits = [{ requests = 5, per = \"1m\" }, \
             { requests = 8, per = \"1h\", scope = \"workspace\" }]",
        )
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (old_id, old) = app.key(&ws, json!({"name": "k"})).await;
    assert!(whoami_n(&app, &old, 5).await.iter().all(|s| *s == 200));
    let rotated = app
        .admin_ok(Method::POST, &format!("/v1/keys/{old_id}/rotate"), None, 201)
        .await;
    let new = rotated["key"].as_str().unwrap();
    assert_eq!(app.whoami(new).await.status(), 429, "rotating never resets a limit");

    let (_, other) = app.key(&ws, json!({"name": "other"})).await;
    assert_eq!(
        whoami_n(&app, &other, 5).await,
        [200, 200, 200, 429, 429],
        "8 per hour for the whole workspace"
    );
}

#[tokio::test]
async fn key_overrides_apply_at_once_and_errors_carry_headers() {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            "[limiter]\ndefault_plan = \"p\"\n[plans.p]\nlimits = [{{ requests = 100, per = \"1m\" }}]\n\
             [[routes]]\npath = \"/admin-only\"\nupstream = \"{}\"\nscopes = [\"admin:write\"]",
            upstream.url
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (id, key) = app.key(&ws, json!({"name": "k", "scopes": ["data:read"]})).await;
    assert_eq!(number(&app.whoami(&key).await, "x-ratelimit-limit"), 100);
    app.admin_ok(
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({"limits": [{"requests": 3, "per": "1m"}]})),
        200,
    )
    .await;
    let after = app.whoami(&key).await;
    assert_eq!(number(&after, "x-ratelimit-limit"), 3);
    assert_eq!(
        number(&after, "x-ratelimit-remaining"),
        1,
        "changing a limit keeps its counter: 2 of 3 used"
    );

    let denied = app
        .http
        .get(app.gateway_url("/admin-only"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_eq!(
        number(&denied, "x-ratelimit-remaining"),
        1,
        "a denied request shows the limits and charges nothing"
    );

    let bad = app
        .admin_call(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"limits": [{"requests": 3, "per": "1m"}, {"requests": 4, "per": "60s"}]})),
        )
        .await;
    assert_eq!(bad.status(), 422, "two limits on one counter are refused");
}

#[tokio::test]
async fn verify_api_applies_the_same_limits() {
    let app = TestApp::builder()
        .config("[limiter]\ndefault_plan = \"p\"\n[plans.p]\nlimits = [{ requests = 2, per = \"1m\" }, { resource = \"exports\", requests = 1, per = \"1d\" }]")
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let verify = |body: Value| app.admin_call(Method::POST, "/v1/keys/verify", Some(body));
    for _ in 0..3 {
        let dry: Value = verify(json!({"key": key, "dry_run": true})).await.json().await.unwrap();
        assert_eq!(
            dry["ratelimit"]["limits"][0]["remaining"], 2,
            "dry runs consume nothing"
        );
    }
    let real: Value = verify(json!({"key": key})).await.json().await.unwrap();
    assert_eq!(real["ratelimit"]["limits"][0]["remaining"], 1);
    let export: Value = verify(json!({"key": key, "resource": "exports"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        export["ratelimit"]["limits"][0],
        json!({"resource": "exports", "limit": 1, "window": "1d", "remaining": 0, "reset": export["ratelimit"]["limits"][0]["reset"]})
    );
    let refused = verify(json!({"key": key, "resource": "exports"})).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
}

/// An operation that costs more than one request (Unkey's `cost`): spent of
/// every limit, all or nothing, like a route's `cost`.
#[tokio::test]
async fn the_verify_api_spends_the_cost_it_is_given() {
    let app = TestApp::builder()
        .config("[limiter]\ndefault_plan = \"p\"\n[plans.p]\nlimits = [{ requests = 10, per = \"1m\" }]")
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let verify = |body: Value| app.admin_call(Method::POST, "/v1/keys/verify", Some(body));
    let remaining = |body: &Value| body["ratelimit"]["limits"][0]["remaining"].clone();
    let dry: Value = verify(json!({"key": key, "cost": 4, "dry_run": true}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        remaining(&dry),
        10,
        "a dry run spends nothing (and shows the limits as they stand)"
    );
    let first: Value = verify(json!({"key": key, "cost": 4})).await.json().await.unwrap();
    assert_eq!(remaining(&first), 6);
    let second: Value = verify(json!({"key": key, "cost": 4})).await.json().await.unwrap();
    assert_eq!(remaining(&second), 2);
    let refused = verify(json!({"key": key, "cost": 4})).await;
    assert_eq!(refused.status(), 429, "4 more do not fit in the 2 left");
    let one: Value = verify(json!({"key": key, "cost": 1.0})).await.json().await.unwrap();
    assert_eq!(
        remaining(&one),
        1,
        "the refused call spent nothing; 1.0 is the integer 1"
    );
    let default: Value = verify(json!({"key": key})).await.json().await.unwrap();
    assert_eq!(remaining(&default), 0, "no cost is 1");
    for bad in [
        json!(0),
        json!(9_007_199_254_740_992_u64),
        json!(-1),
        json!(1.5),
        json!("4"),
    ] {
        let response = verify(json!({"key": key, "cost": bad})).await;
        assert_eq!(response.status(), 422, "cost {bad}");
    }
    let zero: Value = verify(json!({"key": key, "cost": 0})).await.json().await.unwrap();
    assert_eq!(zero["data"]["field"], "cost", "{zero}");
}

pub(crate) fn redis_url() -> Option<String> {
    let url = std::env::var("KEYGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let address = url.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    match std::net::TcpStream::connect(&address) {
        Ok(_) => Some(url),
        Err(err) if std::env::var("KEYGATE_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("Redis is required (KEYGATE_REQUIRE_SERVICES=1) but unreachable at {url}: {err}")
        }
        Err(err) => {
            eprintln!("skipped: Redis unreachable at {url}: {err}");
            None
        }
    }
}

/// Two nodes sharing one store and one Redis admit exactly the limit between them.
#[tokio::test]
async fn two_nodes_on_redis_share_limits() {
    let Some(url) = redis_url() else { return };
    let config = format!(
        "[limiter]\nurl = \"{url}\"\ndefault_plan = \"p\"\n[plans.p]\nlimits = [{{ requests = 10, per = \"1m\" }}]"
    );
    let a = TestApp::builder().config(&config).start().await;
    let b = TestApp::builder().config(&config).store_of(&a).start().await;
    let ws = a.workspace("Acme").await;
    let (_, key) = a.key(&ws, json!({"name": "k"})).await;
    let mut admitted = 0;
    for i in 0..16 {
        let node = if i % 2 == 0 { &a } else { &b };
        let response = node.whoami(&key).await;
        assert!(
            response.status() == 200 || response.status() == 429,
            "{}",
            response.status()
        );
        if response.status() == 200 {
            admitted += 1;
            assert_eq!(number(&response, "x-ratelimit-limit"), 10);
        }
    }
    assert_eq!(admitted, 10, "one counter in Redis for both nodes");
    let (_, readiness) = b.control_json("/readyz").await;
    assert_eq!(
        readiness["dependencies"]["limiter"],
        json!({"state": "up", "backend": "redis", "detail": null})
    );
}

#[tokio::test]
async fn an_unreachable_redis_never_causes_a_5xx() {
    let app = TestApp::builder()
        .config("[limiter]\nurl = \"redis://127.0.0.1:1\"\ntimeout = \"50ms\"\ndefault_plan = \"p\"\n[plans.p]\nlimits = [{ requests = 5, per = \"1m\" }]")
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let statuses = whoami_n(&app, &key, 8).await;
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429],
        "on_failure = local enforces the same limit"
    );
    let (status, readiness) = app.control_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(readiness["status"], "degraded");
    assert_eq!(readiness["dependencies"]["limiter"]["state"], "degraded");
}

#[tokio::test]
async fn a_429_in_problem_format_carries_the_limit() {
    let app = TestApp::builder()
        .config("[errors]\nformat = \"problem\"\n[limiter]\ndefault_plan = \"p\"\n[plans.p]\nlimits = [{ requests = 1, per = \"1h\" }]")
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    assert_eq!(app.whoami(&key).await.status(), 200);
    let refused = app.whoami(&key).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(
        header(&refused, "content-type").as_deref(),
        Some("application/problem+json")
    );
    let retry_after = number(&refused, "retry-after");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(body["retry_after"], retry_after);
    assert_eq!((body["limit"].as_u64(), body["window"].as_str()), (Some(1), Some("1h")));
    assert!((3600..=3661).contains(&retry_after), "{retry_after}");
}

/// The limiter a seed test runs on: memory, or the local Redis (with leases
/// off: a leased block is stamped with its bucket's end, which may make
/// `Retry-After` one second later than a page's figure; docs/decisions.md).
fn limiter_config(on_redis: bool) -> Option<String> {
    if !on_redis {
        return Some("url = \"memory://\"".into());
    }
    redis_url().map(|url| format!("url = \"{url}\"\nlease_max = 0"))
}

/// Status, the headers a page documents, and the body byte for byte.
async fn exact_answer(response: reqwest::Response) -> String {
    let shown = [
        "content-type",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "retry-after",
    ];
    let mut text = format!("{}\n", response.status().as_u16());
    for name in shown {
        if let Some(value) = header(&response, name) {
            text.push_str(&format!("{name}: {value}\n"));
        }
    }
    text.push('\n');
    text.push_str(&response.text().await.unwrap());
    text
}

/// echowin's and EnvoyX's documented error bodies and headers, configured as
/// their pages describe, byte for byte, on memory and on Redis.
async fn seeds_answer_as_their_pages_say(on_redis: bool) {
    let Some(limiter) = limiter_config(on_redis) else {
        return;
    };
    let echowin = TestApp::builder()
        .config(&format!(
            r#"
            [headers]
            describe = "1h"
            [errors]
            format = "simple"
            data = false
            [errors.messages]
            MISSING_API_KEY = "Missing X-API-Key header"
            INVALID_API_KEY = "Invalid API key"
            RATE_LIMIT_EXCEEDED = "Rate limit exceeded. Please try again later."
            [limiter]
            {limiter}
            default_plan = "team"
            [plans.team]
            limits = [{{ requests = 1000, per = "1h" }}, {{ requests = 100, per = "1m" }}]
            "#
        ))
        .start()
        .await;
    let ws = echowin.workspace("echowin team").await;
    let (_, key) = echowin.key(&ws, json!({"name": "portal"})).await;
    let missing = echowin
        .http
        .get(echowin.gateway_url("/v1/whoami"))
        .send()
        .await
        .unwrap();
    insta::assert_snapshot!("echowin_missing_key", exact_answer(missing).await);
    insta::assert_snapshot!(
        "echowin_invalid_key",
        exact_answer(echowin.whoami("not-a-key").await).await
    );
    assert!(whoami_n(&echowin, &key, 100).await.iter().all(|s| *s == 200));
    insta::assert_snapshot!("echowin_rate_limited", exact_answer(echowin.whoami(&key).await).await);

    let envoyx = TestApp::builder()
        .config(&format!(
            r#"
            [errors]
            format = "envelope"
            invalid_key_status = 403
            hide_key_state = true
            data = ["retry_after"]
            [errors.messages]
            MISSING_API_KEY = "API key is required. Include it in the X-API-Key header."
            INVALID_API_KEY = "The provided API key is invalid or has been revoked."
            [limiter]
            {limiter}
            default_plan = "standard"
            [plans.standard]
            limits = [{{ requests = 100, per = "1m" }}, {{ resource = "uploads", requests = 100, per = "1h" }}]
            "#
        ))
        .start()
        .await;
    let ws = envoyx.workspace("EnvoyX customer").await;
    let (_, key) = envoyx.key(&ws, json!({"name": "Production Server"})).await;
    let missing = envoyx.http.get(envoyx.gateway_url("/v1/whoami")).send().await.unwrap();
    insta::assert_snapshot!("envoyx_missing_key", exact_answer(missing).await);
    insta::assert_snapshot!(
        "envoyx_invalid_key",
        exact_answer(envoyx.whoami("not-a-key").await).await
    );
    assert!(whoami_n(&envoyx, &key, 100).await.iter().all(|s| *s == 200));
    insta::assert_snapshot!("envoyx_rate_limited", exact_answer(envoyx.whoami(&key).await).await);
}

#[tokio::test]
async fn seeds_answer_as_their_pages_say_on_memory() {
    seeds_answer_as_their_pages_say(false).await;
}

#[tokio::test]
async fn seeds_answer_as_their_pages_say_on_redis() {
    seeds_answer_as_their_pages_say(true).await;
}
