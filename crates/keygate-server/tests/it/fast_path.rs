//! The data plane's hand-written path (crates/keygate-server/src/http/gateway/raw.rs):
//! what it answers must be what hyper's path answers, however the upstream
//! frames its answers, and a request it does not take goes to hyper on the
//! same connection.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{closing_upstream, echo_upstream, TestApp};

/// `keygate_fast_path_requests_total` on `/metrics`.
async fn fast_path_requests(app: &TestApp) -> u64 {
    let text = app
        .http
        .get(format!("{}/metrics", app.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("keygate_fast_path_requests_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no fast path counter in {text}"))
}

/// A node with `/api` to `url` (a key needed) and a key for it, with a
/// plan so answers carry rate-limit headers. Loopback is not a trusted proxy
/// here (as `TestApp` makes it by default), so requests from the test are a
/// client's.
async fn keyed_route_to(url: &str) -> (TestApp, String) {
    keyed_route_with(url, true).await
}

/// The same, with `server.fast_path` as given.
async fn keyed_route_with(url: &str, fast_path: bool) -> (TestApp, String) {
    let app = TestApp::builder()
        .config(&format!(
            "[server]\ntrusted_proxies = [\"10.255.255.1\"]\nfast_path = {fast_path}\n\
             [plans.team]\nlimits = [{{ requests = 100000, per = \"1m\" }}]\n\
             [limiter]\ndefault_plan = \"team\"\n\
             [[routes]]\npath = \"/api\"\nupstream = \"{url}\"\n"
        ))
        .start()
        .await;
    let workspace = app.workspace("fast").await;
    let (_, key) = app.key(&workspace, json!({"name": "fast"})).await;
    (app, key)
}

/// `GET path` on the gateway with `key`.
async fn get_with(app: &TestApp, path: &str, key: &str) -> reqwest::Response {
    app.http
        .get(app.gateway_url(path))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_keyed_get_is_answered_on_the_fast_path_with_every_header_hypers_path_sets() {
    let upstream = echo_upstream().await;
    let (app, key) = keyed_route_to(&upstream.url).await;
    let before = fast_path_requests(&app).await;
    let response = app
        .http
        .get(app.gateway_url("/api/items?page=2"))
        .header("X-API-Key", &key)
        .header("X-Keygate-Key-Id", "spoofed")
        .header("X-Forwarded-For", "10.9.9.9")
        .header("X-Request-Id", "planted")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(headers.contains_key("x-ratelimit-limit"), "{headers:?}");
    assert!(headers.contains_key("x-ratelimit-remaining"), "{headers:?}");
    let request_id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(request_id.starts_with("req_"), "{request_id}");
    assert_eq!(headers["x-upstream"], "echo");
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["path"], "/api/items");
    assert_eq!(echoed["query"], "page=2");
    let sent = &echoed["headers"];
    assert!(sent.get("x-api-key").is_none(), "the key reached the upstream: {sent}");
    assert!(sent["x-keygate-key-id"].as_str().unwrap().starts_with("key_"), "{sent}");
    assert!(
        sent["x-keygate-workspace-id"].as_str().unwrap().starts_with("ws_"),
        "{sent}"
    );
    assert_eq!(sent["x-forwarded-for"], "127.0.0.1");
    assert_eq!(sent["x-forwarded-proto"], "http");
    assert_eq!(sent["x-request-id"], request_id.as_str());
    assert_eq!(fast_path_requests(&app).await, before + 1);

    // A refusal is answered there too, in the catalog's words.
    let refused = app
        .http
        .get(app.gateway_url("/api/items"))
        .header("X-API-Key", crate::support::typo_of(&key))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().contains_key("x-request-id"));
    assert!(refused.headers().contains_key("date"));
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "INVALID_API_KEY");
    assert_eq!(fast_path_requests(&app).await, before + 2);
}

/// An upstream that answers each path with a differently framed body, and
/// headers the proxy must not pass on or must replace.
async fn framing_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(serve_framings(stream));
        }
    });
    url
}

async fn serve_framings(mut stream: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let extra = "X-Request-Id: upstream\r\nX-RateLimit-Limit: 1\r\nConnection: keep-alive, X-Drop-Me\r\nX-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\n";
        match path.as_str() {
            "/api/length" => {
                let answer = format!("HTTP/1.1 200 OK\r\n{extra}Content-Length: 5\r\n\r\nhello");
                let _ = stream.write_all(answer.as_bytes()).await;
            }
            "/api/large" => {
                let body = vec![b'x'; 1 << 20];
                let head = format!("HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes()).await;
                for part in body.chunks(64 * 1024) {
                    let _ = stream.write_all(part).await;
                }
            }
            "/api/chunked" => {
                let head = format!("HTTP/1.1 200 OK\r\n{extra}Transfer-Encoding: chunked\r\n\r\n");
                let _ = stream.write_all(head.as_bytes()).await;
                // Split inside sizes, data and the final CRLF, with pauses between.
                for piece in ["5\r\nhel", "lo\r", "\n6\r\n wor", "ld\r\n0\r\nx-trailer: 1\r", "\n\r\n"] {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = stream.write_all(piece.as_bytes()).await;
                }
            }
            "/api/until-close" => {
                let answer = b"HTTP/1.1 200 OK\r\nX-Request-Id: upstream\r\n\r\nall of it";
                let _ = stream.write_all(answer).await;
                return;
            }
            _ => {
                let _ = stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        }
    }
}

#[tokio::test]
async fn every_framing_of_an_upstream_answer_reaches_the_client_whole_and_without_hop_headers() {
    let (app, key) = keyed_route_to(&framing_upstream().await).await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    let before = fast_path_requests(&app).await;
    let cases = [
        ("/api/length", "hello".to_owned()),
        ("/api/chunked", "hello world".to_owned()),
        ("/api/large", "x".repeat(1 << 20)),
        ("/api/until-close", "all of it".to_owned()),
        ("/api/length", "hello".to_owned()),
    ];
    for (path, body) in &cases {
        let response = client
            .get(app.gateway_url(path))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers["x-request-id"].to_str().unwrap().starts_with("req_"),
            "{path}: {headers:?}"
        );
        assert_eq!(headers.get_all("x-request-id").iter().count(), 1, "{path}");
        assert_eq!(headers.get_all("x-ratelimit-limit").iter().count(), 1, "{path}");
        assert_ne!(
            headers["x-ratelimit-limit"], "1",
            "{path}: the upstream's limit header came through"
        );
        assert!(
            !headers.contains_key("x-drop-me"),
            "{path}: a header `Connection` names came through"
        );
        assert!(!headers.contains_key("keep-alive"), "{path}");
        assert_eq!(&response.text().await.unwrap(), body, "{path}");
    }
    // A HEAD gets the head only, and the connection carries on.
    let head = client
        .head(app.gateway_url("/api/length"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "5");
    let again = client
        .get(app.gateway_url("/api/length"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.text().await.unwrap(), "hello");
    assert_eq!(fast_path_requests(&app).await, before + cases.len() as u64 + 2);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_hyper_takes_over_mid_connection() {
    let upstream = echo_upstream().await;
    let (app, key) = keyed_route_to(&upstream.url).await;
    let before = fast_path_requests(&app).await;
    let mut stream = TcpStream::connect(app.gateway.trim_start_matches("http://"))
        .await
        .unwrap();
    // Two for the fast path, then a POST with a body (hyper's), then a GET
    // that hyper answers too: the connection is its own from the POST on.
    let request = format!(
        "GET /api/one HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n\
         GET /api/two HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n\
         POST /api/three HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 4\r\n\r\nbody\
         GET /api/four HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answers = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answers)).await;
    let answers = String::from_utf8_lossy(&answers);
    let order: Vec<usize> = ["/api/one", "/api/two", "/api/three", "/api/four"]
        .iter()
        .map(|path| answers.find(&format!("\"path\":\"{path}\"")).unwrap_or(usize::MAX))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?} in {answers}");
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 4, "{answers}");
    assert!(answers.contains("\"body_len\":4"), "{answers}");
    assert_eq!(fast_path_requests(&app).await, before + 2);
}

#[tokio::test]
async fn a_stale_upstream_connection_on_the_fast_path_is_replaced_without_a_5xx() {
    let (url, accepted) = closing_upstream().await;
    let (app, key) = keyed_route_to(&url).await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    let before = fast_path_requests(&app).await;
    for i in 0..300 {
        let response = client
            .get(app.gateway_url("/api/read"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    assert!(accepted.load(Ordering::SeqCst) >= 300);
    assert_eq!(fast_path_requests(&app).await, before + 300);
}

#[tokio::test]
async fn an_upstream_that_cannot_be_reached_is_a_502_in_the_catalogs_words() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let (app, key) = keyed_route_to(&url).await;
    let response = get_with(&app, "/api/x", &key).await;
    assert_eq!(response.status(), 502);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "UPSTREAM_UNAVAILABLE");
}

#[tokio::test]
async fn with_the_fast_path_off_hyper_answers_every_request() {
    let upstream = echo_upstream().await;
    let (app, key) = keyed_route_with(&upstream.url, false).await;
    for _ in 0..3 {
        let response = get_with(&app, "/api/x", &key).await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("x-request-id"));
    }
    assert_eq!(fast_path_requests(&app).await, 0);
}
