//! Config reload without a restart (issue 16): what changes, what is refused,
//! and that requests never fail across reloads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use keygate_core::limits::Plan;
use keygate_server::config::{catch_all_route, RouteConfig, UpstreamUrls};
use serde_json::json;

use crate::support::{echo_upstream, TestApp};

fn route(path: &str, upstream: &str) -> RouteConfig {
    RouteConfig {
        path: path.into(),
        ..catch_all_route(upstream)
    }
}

fn plan(toml_text: &str) -> Plan {
    toml::from_str(toml_text).unwrap()
}

/// A node with one route `/a` to an echo upstream, plan `free` (100 a
/// minute) as the default, and a key in a workspace.
async fn node() -> (TestApp, String, String) {
    node_with_limit(100).await
}

async fn node_with_limit(per_minute: u64) -> (TestApp, String, String) {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            "[limiter]\ndefault_plan = \"free\"\n\
             [plans.free]\nlimits = [{{ requests = {per_minute}, per = \"1m\" }}]\n\
             [[routes]]\npath = \"/a\"\nupstream = \"{}\"",
            upstream.url
        ))
        .start()
        .await;
    let workspace = app.workspace("Acme").await;
    let (_, key) = app.key(&workspace, json!({"name": "k"})).await;
    (app, key, upstream.url)
}

async fn get(app: &TestApp, path: &str, key: &str) -> reqwest::Response {
    app.http
        .get(app.gateway_url(path))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_reload_swaps_routes_plans_messages_and_headers_for_new_requests() {
    let (app, key, upstream) = node().await;
    let before = get(&app, "/a/x", &key).await;
    assert_eq!(before.status(), 200);
    assert_eq!(before.headers()["x-ratelimit-limit"], "100");
    assert_eq!(get(&app, "/b/x", &key).await.status(), 404);

    app.edit_config(|config| {
        config.routes = vec![route("/b", &upstream)];
        config
            .plans
            .insert("free".into(), plan("limits = [{ requests = 2, per = \"1m\" }]"));
        config
            .errors
            .messages
            .insert("RATE_LIMIT_EXCEEDED".into(), "Slow down, reloaded.".into());
        config.headers.ratelimit = vec![keygate_server::config::HeaderStyle::Ietf];
    });
    let (status, body) = app.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "reloaded");
    assert_eq!(body["routes"], 1);
    assert_eq!(body["changed"], json!(["routes", "plans", "errors", "headers"]));

    // The route is gone and the new one serves.
    let gone = get(&app, "/a/x", &key).await;
    assert_eq!(gone.status(), 404);
    assert_eq!(
        gone.json::<serde_json::Value>().await.unwrap()["code"],
        "ROUTE_NOT_FOUND"
    );
    // The cached key's limits follow the new plan at once (the one request
    // counted under the old plan counts here too: same counter), with the
    // new header policy and message.
    let second = get(&app, "/b/x", &key).await;
    assert_eq!(second.status(), 200);
    assert!(second.headers().get("x-ratelimit-limit").is_none());
    assert!(
        second.headers().contains_key("ratelimit-policy"),
        "{:?}",
        second.headers()
    );
    let refused = get(&app, "/b/x", &key).await;
    assert_eq!(refused.status(), 429);
    let refused: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(refused["message"], "Slow down, reloaded.");
}

#[tokio::test]
async fn an_invalid_file_is_refused_naming_the_field_and_the_running_config_stays() {
    let (app, key, upstream) = node().await;
    let good = std::fs::read_to_string(&app.config_file).unwrap();
    app.edit_config(|config| {
        config.routes.push(RouteConfig {
            upstream: Some(UpstreamUrls::One("ftp://example.com".into())),
            ..route("/b", &upstream)
        });
    });
    let (status, body) = app.reload().await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "INVALID_CONFIG");
    assert_eq!(body["data"]["field"], "routes[1] (path \"/b\").upstream", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("running config is unchanged"),
        "{body}"
    );
    assert_eq!(
        get(&app, "/a/x", &key).await.status(),
        200,
        "the old routes still serve"
    );
    assert_eq!(get(&app, "/b/x", &key).await.status(), 404);

    // `/readyz` says so, and stays ready: the node serves its running config.
    let (status, ready) = app.control_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["config"]["reloads"], 0);
    assert!(
        ready["config"]["last_error"]
            .as_str()
            .unwrap()
            .contains("routes[1] (path \"/b\").upstream"),
        "{ready}"
    );

    // A file that is not TOML at all is refused the same way.
    std::fs::write(&app.config_file, "[routes\nnot toml").unwrap();
    let (status, body) = app.reload().await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "INVALID_CONFIG");
    assert_eq!(get(&app, "/a/x", &key).await.status(), 200);

    // Fixed, it applies (nothing changed), and `/readyz` forgets the error.
    std::fs::write(&app.config_file, good).unwrap();
    let (status, body) = app.reload().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], json!([]));
    let (_, ready) = app.control_json("/readyz").await;
    assert_eq!(ready["config"]["reloads"], 1);
    assert!(ready["config"]["last_error"].is_null(), "{ready}");
}

#[tokio::test]
async fn a_setting_that_needs_a_restart_is_refused_by_name_and_nothing_applies() {
    let (app, key, upstream) = node().await;
    app.edit_config(|config| {
        config.server.gateway_addr = "127.0.0.1:1".into();
        config.cache.capacity = 7;
        config.routes.push(route("/b", &upstream));
    });
    let (status, body) = app.reload().await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "CONFIG_NEEDS_RESTART");
    assert_eq!(body["data"]["fields"], json!(["cache.capacity", "server.gateway_addr"]));
    assert_eq!(
        get(&app, "/b/x", &key).await.status(),
        404,
        "the routes of a refused file do not apply"
    );
    assert_eq!(get(&app, "/a/x", &key).await.status(), 200);
}

#[tokio::test]
async fn only_admin_keys_reload() {
    let (app, _, _) = node().await;
    let workspace = app.workspace("Other").await;
    let (_, manager) = app
        .key(&workspace, json!({"name": "manager", "scopes": ["keys:manage"]}))
        .await;
    let response = app
        .admin_call_as(&manager, Method::POST, "/v1/config/reload", None)
        .await;
    assert_eq!(response.status(), 403);
    let anonymous = app
        .http
        .post(format!("{}/v1/config/reload", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// An upstream that answers after `delay`.
async fn slow_upstream(delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new().fallback(move || async move {
        tokio::time::sleep(delay).await;
        "slow"
    });
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_route_a_reload_removed() {
    let (app, key, upstream) = node().await;
    let slow = slow_upstream(Duration::from_millis(800)).await;
    app.edit_config(|config| config.routes.push(route("/slow", &slow)));
    assert_eq!(app.reload().await.0, 200);

    let in_flight = {
        let (http, url, key) = (app.http.clone(), app.gateway_url("/slow/x"), key.clone());
        tokio::spawn(async move { http.get(url).header("X-API-Key", key).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.edit_config(|config| config.routes = vec![route("/a", &upstream)]);
    assert_eq!(app.reload().await.0, 200);
    assert_eq!(
        get(&app, "/slow/x", &key).await.status(),
        404,
        "new requests see the new routes"
    );
    let finished = in_flight.await.unwrap();
    assert_eq!(finished.status(), 200);
    assert_eq!(finished.text().await.unwrap(), "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_under_load_fail_no_request() {
    let (app, key, upstream) = node_with_limit(1_000_000).await;
    let second = echo_upstream().await;
    let app = Arc::new(app);
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (app, key, ok, failed, stop) = (app.clone(), key.clone(), ok.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match get(&app, "/a/x", &key).await.status().as_u16() {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        status => {
                            eprintln!("failed request: {status}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for round in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Every other round `/a` gets a second target, a higher limit, a new message.
        app.edit_config(|config| {
            let targets = if round % 2 == 1 {
                vec![upstream.clone(), second.url.clone()]
            } else {
                vec![upstream.clone()]
            };
            config.routes = vec![RouteConfig {
                upstream: Some(UpstreamUrls::Many(targets)),
                ..route("/a", &upstream)
            }];
            config.plans.insert(
                "free".into(),
                plan(&format!(
                    "limits = [{{ requests = {}, per = \"1m\" }}]",
                    100_000 + round
                )),
            );
            config
                .errors
                .messages
                .insert("ROUTE_NOT_FOUND".into(), format!("No such route ({round})."));
        });
        let (status, body) = app.reload().await;
        assert_eq!(status, 200, "round {round}: {body}");
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across ten reloads",
        ok + failed
    );
    assert!(ok > 500, "the load was real: {ok} requests");
    let (_, ready) = app.control_json("/readyz").await;
    assert_eq!(ready["config"]["reloads"], 10);
    assert_eq!(ready["routes"][0]["targets"], 2, "the last reload's targets: {ready}");
}

/// `/readyz`'s healthy count of the first route.
async fn healthy(app: &TestApp) -> u64 {
    let (_, ready) = app.control_json("/readyz").await;
    ready["routes"][0]["healthy"].as_u64().unwrap()
}

#[tokio::test]
async fn unchanged_targets_keep_their_health_and_new_health_checks_start() {
    const DEAD: &str = "http://127.0.0.1:9";
    let app = TestApp::builder()
        .config(&format!(
            "[[routes]]\npath = \"/h\"\nupstream = \"{DEAD}\"\nauth = false\neject_for = \"1h\"\n"
        ))
        .start()
        .await;
    for _ in 0..3 {
        let response = app.http.get(app.gateway_url("/h")).send().await.unwrap();
        assert_eq!(response.status(), 502);
    }
    assert_eq!(healthy(&app).await, 0, "ejected after three refused connections");

    // Only the scopes change: the target is the same, and stays out.
    app.edit_config(|config| config.routes[0].scopes = vec!["read".into()]);
    assert_eq!(app.reload().await.0, 200);
    assert_eq!(healthy(&app).await, 0);

    // A new target list starts with nothing known.
    app.edit_config(|config| {
        config.routes[0].upstream = Some(UpstreamUrls::Many(vec![DEAD.into(), "http://127.0.0.1:10".into()]));
    });
    assert_eq!(app.reload().await.0, 200);
    assert_eq!(healthy(&app).await, 2);

    // A health check added by a reload runs without traffic.
    app.edit_config(|config| {
        config.routes[0].health_check = Some(toml::from_str("path = \"/healthz\"\ninterval = \"100ms\"").unwrap());
    });
    assert_eq!(app.reload().await.0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while healthy(&app).await != 0 {
        assert!(std::time::Instant::now() < deadline, "the new health check did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
