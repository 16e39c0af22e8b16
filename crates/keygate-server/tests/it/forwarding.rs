//! Routes forwarding to real upstreams: what the upstream receives, what
//! the client gets back, and the errors when the upstream fails.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{echo_upstream, TestApp};

async fn echoed(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-upstream"], "echo", "upstream headers come back");
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_upstream_gets_identity_headers_and_never_the_key() {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            "[[routes]]\npath = \"/api\"\nupstream = \"{}/base\"\n",
            upstream.url
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (key_id, key) = app.key(&ws, json!({"name": "k", "environment": "test"})).await;
    let response = app
        .http
        .post(app.gateway_url("/api/items?a=1&b=two"))
        .header("X-API-Key", &key)
        .header("X-Keygate-Key-Id", "key_spoofed")
        .header("X-Forwarded-For", "6.6.6.6")
        .header("Connection", "x-private")
        .header("X-Private", "hop-by-hop")
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    let seen = echoed(response).await;
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/base/api/items");
    assert_eq!(seen["query"], "a=1&b=two");
    assert_eq!(seen["body_len"], 1000);
    let headers = &seen["headers"];
    assert_eq!(headers["x-keygate-key-id"], key_id.as_str());
    assert_eq!(headers["x-keygate-workspace-id"], ws.as_str());
    assert_eq!(headers["x-keygate-environment"], "test");
    // 127.0.0.1 is a trusted proxy in TestApp: its chain is extended with itself.
    assert_eq!(headers["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["host"], upstream.url.trim_start_matches("http://"));
    for absent in ["x-api-key", "authorization", "x-private", "connection"] {
        assert!(headers.get(absent).is_none(), "{absent} was forwarded: {headers}");
    }
    assert!(!seen.to_string().contains(&key[8..]));
}

#[tokio::test]
async fn longest_prefix_wins_and_methods_filter() {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            r#"
            [[routes]]
            path = "/api"
            upstream = "{0}"
            [[routes]]
            path = "/api/v2"
            upstream = "{0}"
            strip_prefix = true
            [[routes]]
            path = "/reports"
            methods = ["GET"]
            upstream = "{0}"
            "#,
            upstream.url
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let get = |path: &str| app.http.get(app.gateway_url(path)).header("X-API-Key", &key).send();
    assert_eq!(echoed(get("/api/v2/users").await.unwrap()).await["path"], "/users");
    assert_eq!(echoed(get("/api/v2").await.unwrap()).await["path"], "/");
    assert_eq!(echoed(get("/api/v2x").await.unwrap()).await["path"], "/api/v2x");
    assert_eq!(
        echoed(get("/reports/daily").await.unwrap()).await["path"],
        "/reports/daily"
    );
    let post = app
        .http
        .post(app.gateway_url("/reports/daily"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 404);
    let body: Value = post.json().await.unwrap();
    assert_eq!(body["code"], "ROUTE_NOT_FOUND");
    assert_eq!(get("/apix").await.unwrap().status(), 404);
}

#[tokio::test]
async fn preserve_host_and_public_routes() {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            "[[routes]]\npath = \"/health\"\nupstream = \"{0}\"\nauth = false\n\
             [[routes]]\npath = \"/site\"\nupstream = \"{0}\"\npreserve_host = true\n",
            upstream.url
        ))
        .start()
        .await;
    let public = echoed(app.http.get(app.gateway_url("/health")).send().await.unwrap()).await;
    assert!(public["headers"].get("x-keygate-key-id").is_none());

    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let site = echoed(
        app.http
            .get(app.gateway_url("/site"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(site["headers"]["host"], app.gateway.trim_start_matches("http://"));
}

#[tokio::test]
async fn upstream_failures_are_502_and_504() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_addr = hanging.local_addr().unwrap();
    let slow = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        "late"
    });
    tokio::spawn(async move { axum::serve(hanging, slow).await.unwrap() });
    let app = TestApp::builder()
        .config(&format!(
            "[errors]\nformat = \"problem\"\n\
             [[routes]]\npath = \"/down\"\nupstream = \"http://{closed}\"\n\
             [[routes]]\npath = \"/slow\"\nupstream = \"http://{hanging_addr}\"\ntimeout = \"300ms\"\n"
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    for (path, status, code) in [
        ("/down", 502, "UPSTREAM_UNAVAILABLE"),
        ("/slow", 504, "UPSTREAM_TIMEOUT"),
    ] {
        let response = app
            .http
            .get(app.gateway_url(path))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let body = response.text().await.unwrap();
        assert!(!body.contains(&key[8..]), "the key is never echoed");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], code);
    }
}
