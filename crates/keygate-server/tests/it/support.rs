//! `TestApp`: a real keygate node on free loopback ports, with a manual clock
//! and its own SQLite file, driven by a real HTTP client.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use chrono::Utc;
use keygate_engine::ManualClock;
use keygate_server::config::{self, Config};
use keygate_server::{App, ConfigSource};
use keygate_store::testsuite::{fresh_postgres_schema, postgres_url_for_schema};
use keygate_store::Store;
use reqwest::Response;
use serde_json::{json, Value};

pub struct TestApp {
    pub gateway: String,
    pub admin: String,
    pub admin_key: String,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
    pub app: App,
    pub store: Arc<dyn Store>,
    pub store_url: String,
    /// The node's config file, as a reload reads it.
    pub config_file: std::path::PathBuf,
    /// Holds the database file; removed when the app is dropped.
    _dir: tempfile::TempDir,
}

pub struct TestAppBuilder {
    toml: String,
    store_url: Option<String>,
    admin_addr: Option<String>,
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            toml: String::new(),
            store_url: None,
            admin_addr: None,
        }
    }

    pub async fn start() -> Self {
        Self::builder().start().await
    }

    pub fn gateway_url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway)
    }

    pub async fn admin_call(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        self.admin_call_as(&self.admin_key, method, path, body).await
    }

    pub async fn admin_call_as(&self, key: &str, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.admin))
            .header("X-API-Key", key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    /// Calls the admin API and asserts the status, returning the JSON body.
    pub async fn admin_ok(&self, method: Method, path: &str, body: Option<Value>, status: u16) -> Value {
        let response = self.admin_call(method, path, body).await;
        assert_eq!(response.status().as_u16(), status, "{path}");
        response.json().await.unwrap_or(Value::Null)
    }

    /// An unauthenticated control-plane GET (`/healthz`, `/readyz`): status and JSON body.
    pub async fn control_json(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.admin)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    pub async fn workspace(&self, name: &str) -> String {
        let body = self
            .admin_ok(Method::POST, "/v1/workspaces", Some(json!({"name": name})), 201)
            .await;
        body["id"].as_str().unwrap().to_owned()
    }

    /// Creates a key and returns `(id, plaintext)`.
    pub async fn key(&self, workspace: &str, body: Value) -> (String, String) {
        let created = self
            .admin_ok(
                Method::POST,
                &format!("/v1/workspaces/{workspace}/keys"),
                Some(body),
                201,
            )
            .await;
        (
            created["id"].as_str().unwrap().to_owned(),
            created["key"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn whoami(&self, key: &str) -> Response {
        self.http
            .get(self.gateway_url("/v1/whoami"))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap()
    }

    /// Changes the node's config file (not the running config: reload for that).
    pub fn edit_config(&self, change: impl FnOnce(&mut Config)) {
        let mut config = config::read(Some(&self.config_file)).unwrap();
        change(&mut config);
        write_config(&self.config_file, &config);
    }

    /// `POST /v1/config/reload`: status and JSON body.
    pub async fn reload(&self) -> (u16, Value) {
        let response = self.admin_call(Method::POST, "/v1/config/reload", None).await;
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Shuts the node down; the returned directory holds its database until dropped.
    pub async fn stop(self) -> tempfile::TempDir {
        self.app.shutdown().await;
        self._dir
    }
}

impl TestAppBuilder {
    /// Adds TOML to the node's config; addresses and store are always the test's own.
    pub fn config(mut self, toml: &str) -> Self {
        self.toml.push_str(toml);
        self.toml.push('\n');
        self
    }

    /// The control plane listens here instead of 127.0.0.1 (e.g. `[::]:0`,
    /// where IPv4 clients arrive as IPv4-mapped IPv6 peers).
    pub fn admin_addr(mut self, addr: &str) -> Self {
        self.admin_addr = Some(addr.to_owned());
        self
    }

    /// Shares another node's SQLite store: two nodes, one database.
    pub fn store_of(mut self, other: &TestApp) -> Self {
        self.store_url = Some(other.store_url.clone());
        self
    }

    pub async fn start(self) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, &self.toml).unwrap();
        let mut config: Config = config::read(Some(&path)).unwrap();
        config.server.gateway_addr = "127.0.0.1:0".into();
        config.server.admin_addr = self.admin_addr.unwrap_or_else(|| "127.0.0.1:0".into());
        if config.server.trusted_proxies.is_empty() {
            // Lets tests act as many clients through X-Forwarded-For.
            config.server.trusted_proxies = vec!["127.0.0.1".into()];
        }
        config.store.url = match self.store_url {
            Some(shared) => shared,
            None => fresh_store_url(dir.path()).await,
        };
        if !config.store.url.starts_with("sqlite:") && config.secrets.key_file.is_none() {
            // On PostgreSQL a node needs a key; SQLite's is made next to the database.
            config.secrets.key_file = Some(postgres_secrets_key_file());
        }
        // The file holds the whole config, so a reload reads what the start did.
        write_config(&path, &config);
        let loaded = ConfigSource::file(Some(path.clone())).load().unwrap();
        let settings_store_url = loaded.settings.store_url.clone();
        let store = keygate_store::open(&settings_store_url).await.unwrap();
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let app = App::start(loaded, store.clone(), clock.clone()).await.unwrap();
        let (_, admin_key) = app.engine.admin().create_admin_key("test admin").await.unwrap();
        TestApp {
            gateway: format!("http://{}", app.gateway_addr),
            admin: format!("http://{}", app.admin_addr),
            admin_key: admin_key.expose().to_owned(),
            clock,
            http: reqwest::Client::new(),
            app,
            store_url: settings_store_url,
            store,
            config_file: path,
            _dir: dir,
        }
    }
}

fn write_config(path: &std::path::Path, config: &Config) {
    std::fs::write(path, toml::to_string(config).unwrap()).unwrap();
}

/// One secrets key file for every node of this test process on PostgreSQL:
/// nodes that share a database share its key, as a deployment's do.
fn postgres_secrets_key_file() -> std::path::PathBuf {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("keygate-test-secrets")
            .tempdir()
            .unwrap();
        let path = dir.keep().join("keygate.secrets.key");
        let key = keygate_core::secrets::Keyring::generate_key(&mut rand::thread_rng());
        std::fs::write(&path, format!("{key}\n")).unwrap();
        path
    })
    .clone()
}

/// SQLite in the test's folder, or with `KEYGATE_TEST_STORE=postgres` (the
/// second pass of `scripts/test.sh`) a fresh schema of the local PostgreSQL.
async fn fresh_store_url(dir: &std::path::Path) -> String {
    match std::env::var("KEYGATE_TEST_STORE").as_deref() {
        Ok("postgres") => {
            let schema = fresh_postgres_schema()
                .await
                .expect("KEYGATE_TEST_STORE=postgres, but PostgreSQL is unreachable");
            postgres_url_for_schema(&schema)
        }
        _ => format!("sqlite://{}/keygate.db", dir.display()),
    }
}

/// The key with its last character changed, always to another one: its
/// checksum no longer matches.
pub fn typo_of(key: &str) -> String {
    let last = if key.ends_with('A') { 'B' } else { 'A' };
    format!("{}{last}", &key[..key.len() - 1])
}

/// A tool `scripts/test.sh` installs (scripts/lib/services.sh) and names in
/// `variable`. Without it the test is skipped, unless CI requires every
/// service (`KEYGATE_REQUIRE_SERVICES=1`).
pub fn installed_tool(variable: &str, what: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(path) => Some(path),
        Err(_) => {
            assert!(
                std::env::var("KEYGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{what} is required (KEYGATE_REQUIRE_SERVICES=1); scripts/test.sh installs it"
            );
            eprintln!("skipped: {variable} is not set (scripts/test.sh sets it)");
            None
        }
    }
}

/// An upstream that answers every request with what it received, as JSON.
pub struct EchoUpstream {
    pub url: String,
}

pub async fn echo_upstream() -> EchoUpstream {
    async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> axum::response::Response {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    json!(String::from_utf8_lossy(value.as_bytes())),
                )
            })
            .collect();
        let body = json!({
            "method": method.as_str(),
            "path": uri.path(),
            "query": uri.query(),
            "headers": headers,
            "body_len": body.len(),
        });
        axum::response::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("x-upstream", "echo")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let router = axum::Router::new().fallback(echo);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    EchoUpstream {
        url: format!("http://{addr}"),
    }
}

/// An HTTP proxy that sends each request to the next of its targets in
/// turn (not each connection), so one browser's consecutive requests reach
/// different nodes. `served[i]` counts the requests target `i` answered.
pub struct RoundRobin {
    pub url: String,
    pub served: Arc<Vec<std::sync::atomic::AtomicUsize>>,
}

pub async fn round_robin(targets: Vec<String>) -> RoundRobin {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let served: Arc<Vec<AtomicUsize>> = Arc::new(targets.iter().map(|_| AtomicUsize::new(0)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (counts, targets) = (served.clone(), Arc::new(targets));
    let forward = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (http, counts, targets) = (http.clone(), counts.clone(), targets.clone());
        let turn = next.fetch_add(1, Ordering::SeqCst) % targets.len();
        async move {
            let mut headers = headers;
            headers.remove("host");
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let answer = http
                .request(method, format!("{}{path}", targets[turn]))
                .headers(headers)
                .body(body)
                .send()
                .await
                .unwrap();
            counts[turn].fetch_add(1, Ordering::SeqCst);
            let mut response = axum::response::Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                if name != "transfer-encoding" && name != "connection" {
                    response = response.header(name, value);
                }
            }
            response
                .body(axum::body::Body::from(answer.bytes().await.unwrap()))
                .unwrap()
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let router = axum::Router::new().fallback(forward);
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    RoundRobin {
        url: format!("http://{addr}"),
        served,
    }
}

/// Status, the headers clients rely on, and the body: what error snapshots hold.
pub async fn error_snapshot(response: Response) -> Value {
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let snapshot = json!({
        "status": response.status().as_u16(),
        "content_type": header("content-type"),
        "www_authenticate": header("www-authenticate"),
        "retry_after": header("retry-after"),
    });
    let body: Value = response.json().await.unwrap();
    let mut snapshot = snapshot;
    snapshot["body"] = body;
    snapshot
}

/// Polls `probe` until it reads `expected` (for at most 5 s), then checks
/// that it stays there: for what is charged after a response was sent (a
/// cost the upstream reports), which must land once, not again.
pub async fn settles_at<F, Fut>(mut probe: F, expected: u64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while probe().await != expected {
        assert!(std::time::Instant::now() < deadline, "never reached {expected}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(probe().await, expected, "charged once, not again");
}

/// Reads one request head; false if the connection ended first.
pub async fn read_head(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// An upstream that answers one request per connection and then closes it,
/// without saying so (no `Connection: close`): every idle connection a proxy
/// keeps to it is stale by the time the next request comes. Counts connections.
pub async fn closing_upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if !read_head(&mut stream).await {
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                // Close at once, as an upstream whose keep-alive timeout fired would.
            });
        }
    });
    (url, accepted)
}
