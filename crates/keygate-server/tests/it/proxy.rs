//! The gateway as a reverse proxy: upgrades, body limits, disconnects,
//! header attacks, TLS, request ids, the access log and graceful shutdown,
//! each against real upstream servers on loopback.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{closing_upstream, echo_upstream, read_head, TestApp};

/// An upstream that reads every body to the end, counts its open
/// connections and remembers the paths it served.
#[derive(Clone, Default)]
struct CountingUpstream {
    open: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl CountingUpstream {
    async fn start() -> (Self, String) {
        let upstream = Self::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = upstream.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let state = state.clone();
                state.open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let paths = state.paths.clone();
                    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                        let paths = paths.clone();
                        async move {
                            paths.lock().unwrap().push(request.uri().path().to_owned());
                            let mut body = request.into_body();
                            let mut received = 0usize;
                            while let Some(frame) = body.frame().await {
                                match frame {
                                    Ok(frame) => received += frame.data_ref().map_or(0, |d| d.len()),
                                    Err(_) => break,
                                }
                            }
                            Ok::<_, hyper::Error>(hyper::Response::new(Body::from(format!("{received}"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    state.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (upstream, url)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// An upstream WebSocket server that echoes every text and binary message.
async fn websocket_echo_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    url
}

/// Waits for a condition that another task makes true; fails after 10 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// Sends raw bytes on a fresh connection and reads until the server closes it.
async fn raw_exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr.trim_start_matches("http://")).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

const WEBSOCKET_PLAN: &str = r#"
[plans.team]
limits = [{ requests = 1000, per = "1m" }]
concurrency = [{ resource = "websocket", max = 5 }, { resource = "uploads", max = 1 }]
[limiter]
default_plan = "team"
"#;

#[tokio::test]
async fn websocket_echo_holds_a_concurrency_permit_per_connection() {
    let upstream = websocket_echo_upstream().await;
    let app = TestApp::builder()
        .config(WEBSOCKET_PLAN)
        .config(&format!(
            "[[routes]]\npath = \"/ws\"\nupstream = \"{upstream}\"\nresource = \"websocket\"\n"
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let connect = || {
        let mut request = app
            .gateway_url("/ws/chat")
            .replace("http://", "ws://")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert("x-api-key", key.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };

    let mut open = Vec::new();
    for i in 0..5 {
        let (mut socket, response) = connect().await.unwrap();
        assert_eq!(response.status(), 101);
        socket.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(format!("hello {i}")));
        open.push(socket);
    }
    match connect().await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], "CONCURRENCY_LIMIT_EXCEEDED");
        }
        other => panic!(
            "the sixth connection was not refused: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }

    let mut closing = open.pop().unwrap();
    closing.close(None).await.unwrap();
    while closing.next().await.is_some() {}
    drop(closing);
    let mut admitted = None;
    for _ in 0..500 {
        if let Ok((socket, _)) = connect().await {
            admitted = Some(socket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut socket = admitted.expect("a connection is admitted once one closes");
    socket.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::binary(vec![1, 2, 3]));
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaks_no_permit_and_no_connection() {
    let (upstream, url) = CountingUpstream::start().await;
    let app = TestApp::builder()
        .config(WEBSOCKET_PLAN)
        .config(&format!(
            "[[routes]]\npath = \"/upload\"\nupstream = \"{url}\"\nresource = \"uploads\"\n"
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;

    let mut stream = TcpStream::connect(app.gateway.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nContent-Length: 5000000\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; 1_000_000]).await.unwrap();
    eventually("the upload reaches the upstream", || upstream.open() == 1).await;
    drop(stream);
    eventually("the upstream connection is closed", || upstream.open() == 0).await;

    // The only upload permit is free again: a whole upload goes through.
    let response = app
        .http
        .post(app.gateway_url("/upload"))
        .header("X-API-Key", &key)
        .body(vec![b'y'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "4096");
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_declared_or_streamed() {
    let (upstream, url) = CountingUpstream::start().await;
    let app = TestApp::builder()
        .config(&format!(
            "[server]\nmax_body_size = \"64KiB\"\n\
             [[routes]]\npath = \"/small\"\nupstream = \"{url}\"\n\
             [[routes]]\npath = \"/large\"\nupstream = \"{url}\"\nmax_body_size = \"1MiB\"\n"
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    // A fresh connection per request: a 413 closes its connection.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let post = |path: &str, body: reqwest::Body| {
        http.post(app.gateway_url(path))
            .header("X-API-Key", &key)
            .body(body)
            .send()
    };
    let declared = post("/small", vec![0u8; 65 * 1024].into()).await.unwrap();
    assert_eq!(declared.status(), 413);
    assert_eq!(declared.headers()["connection"], "close");
    assert_eq!(declared.json::<Value>().await.unwrap()["code"], "PAYLOAD_TOO_LARGE");
    assert!(
        upstream.paths().is_empty(),
        "a declared oversize body never reaches the upstream"
    );

    // Chunked, so no length is declared: the limit cuts the stream.
    let chunks = futures::stream::iter((0..100).map(|_| Ok::<_, std::io::Error>(vec![0u8; 1024])));
    let streamed = post("/small", reqwest::Body::wrap_stream(chunks)).await.unwrap();
    assert_eq!(streamed.status(), 413);
    assert_eq!(streamed.json::<Value>().await.unwrap()["code"], "PAYLOAD_TOO_LARGE");

    let allowed = post("/large", vec![0u8; 1024 * 1024].into()).await.unwrap();
    assert_eq!(allowed.status(), 200, "the route's own limit overrides the server's");
    assert_eq!(allowed.text().await.unwrap(), (1024 * 1024).to_string());
}

/// A node with `/api` in front of a [`CountingUpstream`], and a key for it.
async fn counting_api() -> (CountingUpstream, TestApp, String) {
    let (upstream, url) = CountingUpstream::start().await;
    let app = TestApp::builder()
        .config(&format!("[[routes]]\npath = \"/api\"\nupstream = \"{url}\"\n"))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    (upstream, app, key)
}

#[tokio::test]
async fn header_attacks_get_4xx_not_5xx() {
    let (upstream, app, key) = counting_api().await;

    let huge = "a".repeat(100_000);
    let response = raw_exchange(
        &app.gateway,
        format!("GET /api HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");

    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = raw_exchange(
        &app.gateway,
        format!("GET /api HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");

    let other = "kg_live_".to_owned() + &"A".repeat(38);
    let duplicate = app
        .http
        .get(app.gateway_url("/api"))
        .header("X-API-Key", &key)
        .header("X-API-Key", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), 400);
    assert_eq!(duplicate.json::<Value>().await.unwrap()["code"], "AMBIGUOUS_API_KEY");

    // Content-Length and Transfer-Encoding together: a smuggled second request
    // must never reach the upstream, whichever header comes first.
    for framing in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ] {
        let response = raw_exchange(
            &app.gateway,
            format!(
                "POST /api/first HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n{framing}\r\n\r\n\
                 0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(
            response.matches("HTTP/1.1 ").count(),
            1,
            "one response only: {response}"
        );
    }
    // Framing that cannot be read unambiguously is refused outright.
    for framing in [
        "Transfer-Encoding: identity\r\nContent-Length: 4",
        "Content-Length: 4\r\nContent-Length: 5",
        "Content-Length: +4",
    ] {
        let response = raw_exchange(
            &app.gateway,
            format!("POST /api/bad HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n{framing}\r\n\r\nbody").as_bytes(),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 400"), "{framing}: {response}");
    }
    let paths = upstream.paths();
    assert!(
        !paths.iter().any(|p| p.contains("smuggled") || p.contains("bad")),
        "{paths:?}"
    );
    assert_eq!(paths.iter().filter(|p| *p == "/api/first").count(), 2);
}

fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, reqwest::Certificate) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    (cert, key, reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
}

#[tokio::test]
async fn tls_on_the_data_plane_and_require_https() {
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key_file, root) = self_signed(dir.path());
    let route = format!("[[routes]]\npath = \"/api\"\nupstream = \"{}\"\n", upstream.url);
    let app = TestApp::builder()
        .config(&format!(
            "[server]\nrequire_https = true\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{route}",
            cert.display(),
            key_file.display()
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let https = reqwest::Client::builder()
        .add_root_certificate(root)
        .resolve("localhost", app.app.gateway_addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/api/x", app.app.gateway_addr.port());
    let response = https.get(&url).header("X-API-Key", &key).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    let plain = raw_exchange(&app.gateway, b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        !plain.contains("200 OK"),
        "plain HTTP is not served on a TLS port: {plain}"
    );

    // Plain HTTP: refused before the key is looked at, unless a trusted proxy terminated TLS.
    let plain_app = TestApp::builder()
        .config(&format!(
            "[server]\nrequire_https = true\ntrusted_proxies = [\"10.0.0.0/8\"]\n{route}"
        ))
        .start()
        .await;
    let refused = plain_app
        .http
        .get(plain_app.gateway_url("/api/x"))
        .header("X-API-Key", "not even a key")
        .header("X-Forwarded-Proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "HTTPS_REQUIRED");

    let proxied_app = TestApp::builder()
        .config(&format!("[server]\nrequire_https = true\n{route}"))
        .start()
        .await;
    let ws = proxied_app.workspace("Acme").await;
    let (_, key) = proxied_app.key(&ws, json!({"name": "k"})).await;
    let behind_proxy = proxied_app
        .http
        .get(proxied_app.gateway_url("/api/x"))
        .header("X-API-Key", &key)
        .header("X-Forwarded-Proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(behind_proxy.status(), 200);
    let seen: Value = behind_proxy.json().await.unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn request_ids_are_generated_forwarded_and_kept_only_from_trusted_proxies() {
    let upstream = echo_upstream().await;
    let route = format!("[[routes]]\npath = \"/api\"\nupstream = \"{}\"\n", upstream.url);
    let trusting = TestApp::builder().config(&route).start().await;
    let ws = trusting.workspace("Acme").await;
    let (_, key) = trusting.key(&ws, json!({"name": "k"})).await;
    let call = |app: &TestApp, id: Option<&str>| {
        let mut request = app.http.get(app.gateway_url("/api/x")).header("X-API-Key", &key);
        if let Some(id) = id {
            request = request.header("X-Request-Id", id);
        }
        request.send()
    };

    let response = call(&trusting, None).await.unwrap();
    let returned = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(returned.starts_with("req_"), "{returned}");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], returned.as_str());

    let response = call(&trusting, Some("edge-123")).await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "edge-123");

    let untrusting = TestApp::builder()
        .config("[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n")
        .config(&route)
        .start()
        .await;
    let ws = untrusting.workspace("Acme").await;
    let (_, key) = untrusting.key(&ws, json!({"name": "k"})).await;
    let response = untrusting
        .http
        .get(untrusting.gateway_url("/api/x"))
        .header("X-API-Key", &key)
        .header("X-Request-Id", "forged")
        .send()
        .await
        .unwrap();
    let returned = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(returned, "forged");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], returned.as_str());
    // Errors carry the id too, so a support ticket can quote it.
    let missing = untrusting
        .http
        .get(untrusting.gateway_url("/api/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    assert!(missing.headers().contains_key("x-request-id"));
}

/// `rotate_dir` writes the same lines to a dated file as well as to the
/// target; rotation and deletion of old files are tracing-appender's.
#[tokio::test]
async fn the_access_log_also_goes_to_a_dated_rotating_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.log");
    let rotating = dir.path().join("rotating");
    let app = TestApp::builder()
        .config(&format!(
            "[access_log]\ntarget = \"{}\"\nrotate_dir = \"{}\"\nrotate_every = \"daily\"\nrotate_keep = 3\n",
            target.display(),
            rotating.display()
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let day = || format!("access.{}.log", chrono::Utc::now().format("%Y-%m-%d"));
    let before = day();
    assert_eq!(app.whoami(&key).await.status(), 200);
    let after = day();
    app.stop().await;

    let files: Vec<String> = std::fs::read_dir(&rotating)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0] == before || files[0] == after, "{files:?}: dated today (UTC)");
    let rotated = std::fs::read_to_string(rotating.join(&files[0])).unwrap();
    assert_eq!(
        rotated,
        std::fs::read_to_string(&target).unwrap(),
        "the same lines in both"
    );
    let line: Value = serde_json::from_str(rotated.trim()).unwrap();
    assert_eq!(line["path"], "/v1/whoami");
    assert_eq!(line["status"], 200);
}

#[tokio::test]
async fn the_access_log_has_one_line_per_request_without_key_or_query() {
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let app = TestApp::builder()
        .config(&format!(
            "[access_log]\ntarget = \"{}\"\n[[routes]]\npath = \"/api\"\nupstream = \"{}\"\n",
            log.display(),
            upstream.url
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (key_id, key) = app.key(&ws, json!({"name": "k"})).await;
    let ok = app
        .http
        .get(app.gateway_url("/api/items?secret=hunter2"))
        .header("X-API-Key", &key)
        .header("X-Forwarded-For", "198.51.100.9")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let request_id = ok.headers()["x-request-id"].to_str().unwrap().to_owned();
    let refused = app
        .http
        .post(app.gateway_url("/api/items"))
        .header("X-API-Key", "kg_live_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    app.stop().await;

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["request_id"], request_id.as_str());
    assert_eq!(lines[0]["method"], "GET");
    assert_eq!(lines[0]["path"], "/api/items");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["key_id"], key_id.as_str());
    assert_eq!(lines[0]["workspace_id"], ws.as_str());
    assert_eq!(lines[0]["client_ip"], "198.51.100.9");
    assert!(lines[0]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[1]["status"], 401);
    assert_eq!(lines[1]["key_id"], Value::Null);
    assert!(!text.contains("hunter2") && !text.contains(&key) && !text.contains("kg_live_wrong"));
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let slow = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        "finished"
    });
    tokio::spawn(async move { axum::serve(listener, slow).await.unwrap() });
    let app = TestApp::builder()
        .config(&format!(
            "[[routes]]\npath = \"/slow\"\nupstream = \"{url}\"\nauth = false\n"
        ))
        .start()
        .await;
    let gateway = app.gateway.clone();
    let in_flight = tokio::spawn(async move { reqwest::get(format!("{gateway}/slow")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gateway = app.gateway.clone();
    app.stop().await;
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "finished");
    assert!(
        reqwest::get(format!("{gateway}/slow")).await.is_err(),
        "a stopped node accepts no new connections"
    );
}

/// A status line and the error code of a raw response, for framing tests.
fn status_and_code(response: &str) -> (String, String) {
    let status = response.split(' ').nth(1).unwrap_or_default().to_owned();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default();
    let code = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|body| body["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, code)
}

#[tokio::test]
async fn malformed_client_framing_is_the_clients_400_never_a_502() {
    let (upstream, app, key) = counting_api().await;
    let chunked = |body: &str| {
        format!("POST /api/chunked HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
    };
    for (case, request) in [
        (
            "chunk size overflows",
            chunked("fffffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
        ),
        ("bare LF chunk lines", chunked("5\nhello\n0\n\n")),
        ("extension ending in LF", chunked("5;ext\nhello\r\n0\r\n\r\n")),
        (
            "no Host",
            format!("GET /api/nohost HTTP/1.1\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"),
        ),
        (
            "two Hosts",
            format!("GET /api/twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-API-Key: {key}\r\n\r\n"),
        ),
    ] {
        let response = raw_exchange(&app.gateway, request.as_bytes()).await;
        assert_eq!(
            status_and_code(&response),
            ("400".to_owned(), "MALFORMED_REQUEST".to_owned()),
            "{case}: {response}"
        );
    }
    // HTTP/1.0 may leave Host out.
    let old = raw_exchange(
        &app.gateway,
        format!("GET /api/old HTTP/1.0\r\nX-API-Key: {key}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"),
        "{old}"
    );
    let paths = upstream.paths();
    assert!(!paths.iter().any(|p| p.contains("host")), "{paths:?}");
    // Counted as the client's error, not the upstream's.
    let metrics = app
        .http
        .get(format!("{}/metrics", app.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outcome=\"MALFORMED_REQUEST\""), "{metrics}");
    assert!(!metrics.contains("outcome=\"UPSTREAM_UNAVAILABLE\""), "{metrics}");
}

/// Posts 8 MiB with Python's `http.client`, which writes the whole body
/// before it reads a byte of the answer, as most client libraries do.
const POST_8_MIB: &str = r#"
import http.client, sys
host, port = sys.argv[1].rsplit(":", 1)
connection = http.client.HTTPConnection(host, int(port), timeout=30)
body = b"x" * (8 * 1024 * 1024)
headers = {"X-API-Key": sys.argv[2], "Content-Type": "application/octet-stream"}
if sys.argv[3] == "chunked":
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    connection.request("POST", "/small/upload", body=chunks, headers=headers, encode_chunked=True)
else:
    connection.request("POST", "/small/upload", body=body, headers=headers)
response = connection.getresponse()
print(response.status, response.getheader("Connection"), response.read().decode())
"#;

#[tokio::test]
async fn a_client_that_sends_too_much_reads_the_413_and_its_body() {
    if !crate::real_upstreams::available("python3") {
        return;
    }
    let (_, url) = CountingUpstream::start().await;
    let app = TestApp::builder()
        .config(&format!(
            "[[routes]]\npath = \"/small\"\nupstream = \"{url}\"\nmax_body_size = \"1MiB\"\n"
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let address = app.gateway.trim_start_matches("http://");
    for framing in ["content-length", "chunked"] {
        let output = tokio::process::Command::new("python3")
            .args(["-c", POST_8_MIB, address, &key, framing])
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{framing}: the client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (status, rest) = stdout.trim().split_once(' ').unwrap();
        let (connection, body) = rest.split_once(' ').unwrap();
        assert_eq!((status, connection), ("413", "close"), "{framing}: {stdout}");
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], "PAYLOAD_TOO_LARGE", "{framing}");
    }
}

/// A node with one open route, `/api`, to `url`.
async fn open_route_to(url: &str) -> TestApp {
    TestApp::builder()
        .config(&format!(
            "[[routes]]\npath = \"/api\"\nupstream = \"{url}\"\nauth = false\n"
        ))
        .start()
        .await
}

/// An upstream that answers the first request of each connection and, when
/// a second one arrives on it, reads it and closes without an answer: the
/// race of a keep-alive timeout firing as a request is written, every time.
async fn answers_once_then_closes_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                for answer in [true, false] {
                    if !read_head(&mut stream).await {
                        return;
                    }
                    if answer {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn an_idempotent_request_a_reused_connection_dropped_goes_again_on_a_new_one() {
    let app = open_route_to(&answers_once_then_closes_upstream().await).await;
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    for i in 0..50 {
        let response = client.get(app.gateway_url("/api/read")).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {i}");
    }
    // A POST with a body may have been acted on: it is not sent twice.
    assert_eq!(
        client.get(app.gateway_url("/api/read")).send().await.unwrap().status(),
        200
    );
    let post = client
        .post(app.gateway_url("/api/write"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 502);
    assert_eq!(post.json::<Value>().await.unwrap()["code"], "UPSTREAM_UNAVAILABLE");
}

#[tokio::test]
async fn a_stale_upstream_connection_never_reaches_the_client_as_a_5xx() {
    let (url, accepted) = closing_upstream().await;
    let app = open_route_to(&url).await;
    // One client connection to keygate, reused for every request.
    let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
    let mut failures = Vec::new();
    for i in 0..1000 {
        let request = if i % 10 == 0 {
            client.post(app.gateway_url("/api/write")).body("payload")
        } else {
            client.get(app.gateway_url("/api/read"))
        };
        let response = request.send().await.unwrap();
        if response.status() != 200 {
            failures.push((i, response.status()));
        }
    }
    assert!(failures.is_empty(), "{} of 1000 failed: {failures:?}", failures.len());
    assert!(
        accepted.load(Ordering::SeqCst) >= 1000,
        "each request had its own upstream connection"
    );
}
