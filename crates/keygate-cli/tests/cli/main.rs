//! The `keygate` binary as a user runs it: config check, migrate, bootstrap,
//! serve, the CLI against a running server, and the promise that no key ever
//! reaches a log line or the database file. `multinode` runs several nodes on
//! one PostgreSQL and Redis, cut by `tcp_cut`.

// Test code: a failed expectation should panic where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod import;
mod multinode;
mod tcp_cut;
mod webhooks;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Deployment {
    dir: tempfile::TempDir,
    config: PathBuf,
    admin_url: String,
    gateway_url: String,
    /// The config's `[store]` table and what follows it, kept to rewrite the
    /// config with other ports.
    store: String,
    extra: String,
}

impl Deployment {
    /// One node on its own SQLite file; `extra` is appended to its config.
    fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("url = \"sqlite://{}/data/keygate.db\"", dir.path().display());
        Self::in_dir(dir, &store, extra)
    }

    /// A node whose `[store]` table is `store` (several nodes can share one).
    fn with_store(store: &str, extra: &str) -> Self {
        Self::in_dir(tempfile::tempdir().unwrap(), store, extra)
    }

    fn in_dir(dir: tempfile::TempDir, store: &str, extra: &str) -> Self {
        let config = dir.path().join("keygate.toml");
        let mut deployment = Self {
            dir,
            config,
            admin_url: String::new(),
            gateway_url: String::new(),
            store: store.to_owned(),
            extra: extra.to_owned(),
        };
        deployment.pick_ports();
        deployment
    }

    /// Writes the config with two ports that were free a moment ago.
    fn pick_ports(&mut self) {
        self.write_config(free_port(), free_port());
    }

    /// Rewrites the config with other `extra` text, keeping the ports.
    fn set_extra(&mut self, extra: &str) {
        let port = |url: &str| url.rsplit(':').next().unwrap().parse().unwrap();
        self.extra = extra.to_owned();
        self.write_config(port(&self.gateway_url), port(&self.admin_url));
    }

    fn write_config(&mut self, gateway: u16, admin: u16) {
        let text = format!(
            "[server]\ngateway_addr = \"127.0.0.1:{gateway}\"\nadmin_addr = \"127.0.0.1:{admin}\"\n\
             [store]\n{}\n{}",
            self.store, self.extra
        );
        std::fs::write(&self.config, text).unwrap();
        self.admin_url = format!("http://127.0.0.1:{admin}");
        self.gateway_url = format!("http://127.0.0.1:{gateway}");
    }

    fn keygate(&self, args: &[&str], admin_key: Option<&str>) -> Output {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("KEYGATE_CONFIG", &self.config)
            .env("KEYGATE_URL", &self.admin_url)
            .env_remove("KEYGATE_ADMIN_KEY");
        if let Some(key) = admin_key {
            command.env("KEYGATE_ADMIN_KEY", key);
        }
        command.output().unwrap()
    }

    /// `keygate` with `input` on its standard input.
    fn keygate_reading(&self, args: &[&str], admin_key: &str, input: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(BIN)
            .args(args)
            .env("KEYGATE_CONFIG", &self.config)
            .env("KEYGATE_URL", &self.admin_url)
            .env("KEYGATE_ADMIN_KEY", admin_key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    fn ok_json(&self, args: &[&str], admin_key: Option<&str>) -> Value {
        let out = self.keygate(args, admin_key);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn ok_text(&self, args: &[&str], admin_key: Option<&str>) -> String {
        let out = self.keygate(args, admin_key);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts `keygate serve` and waits for its banner. A port picked free
    /// can be taken before the node binds it (tests run in parallel, and
    /// outgoing connections use the same range): then other ports are tried.
    fn serve(&mut self, name: &str) -> Server {
        for _ in 0..4 {
            match self.try_serve(name) {
                Ok(server) => return server,
                Err(stderr) if stderr.contains("Address already in use") => self.pick_ports(),
                Err(stderr) => panic!("server did not start: {stderr}"),
            }
        }
        panic!("no free ports after 4 attempts");
    }

    fn try_serve(&self, name: &str) -> Result<Server, String> {
        let stdout = self.dir.path().join(format!("{name}.stdout"));
        let stderr = self.dir.path().join(format!("{name}.stderr"));
        let child = Command::new(BIN)
            .arg("serve")
            .env("KEYGATE_CONFIG", &self.config)
            .env("KEYGATE_LOG", "debug")
            .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
            .spawn()
            .unwrap();
        let mut server = Server { child, stdout, stderr };
        let deadline = Instant::now() + Duration::from_secs(20);
        // The banner is printed after both listeners are up and bootstrap is done.
        while !server.stdout_text().contains("Stop with Ctrl-C") {
            if server.child.try_wait().unwrap().is_some() {
                return Err(server.stderr_text());
            }
            assert!(Instant::now() < deadline, "no banner: {}", server.stderr_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn data_files(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(self.dir.path().join("data")).unwrap() {
            all.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        all
    }
}

struct Server {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Server {
    /// `kill -9`: no shutdown, no final flush.
    fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// The admin key a first start prints in its banner.
    fn printed_admin_key(&self) -> String {
        self.stdout_text()
            .split_whitespace()
            .find(|w| w.starts_with("kg_admin_"))
            .expect("banner shows a key")
            .to_owned()
    }

    fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, then wait: graceful shutdown must finish on its own.
    fn stop(mut self) -> (String, String) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}: {}", self.stderr_text());
                break;
            }
            assert!(Instant::now() < deadline, "no graceful exit");
            std::thread::sleep(Duration::from_millis(50));
        }
        (self.stdout_text(), self.stderr_text())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// `whsec_` followed by base64: a webhook secret in plaintext. (The table's
/// schema, which SQLite keeps, names the column's old `whsec_...` content
/// in a comment; that is not a secret.)
fn contains_plaintext_webhook_secret(haystack: &[u8]) -> bool {
    let prefix = b"whsec_";
    haystack.windows(prefix.len() + 1).any(|w| {
        w.starts_with(prefix) && (w[prefix.len()].is_ascii_alphanumeric() || matches!(w[prefix.len()], b'+' | b'/'))
    })
}

/// The secret part of a key: everything after `{prefix}_{env}_`.
fn secret_part(key: &str) -> &str {
    &key[key.len() - 38..]
}

#[tokio::test]
async fn first_start_prints_an_admin_key_once_and_never_logs_it() {
    let mut deployment = Deployment::new("");
    let server = deployment.serve("first");
    let banner = server.stdout_text();
    let admin_key = server.printed_admin_key();
    assert!(banner.contains(&deployment.admin_url), "{banner}");
    assert!(banner.contains("curl"), "the banner shows a curl line to try");
    let response = reqwest::Client::new()
        .get(format!("{}/v1/workspaces", deployment.admin_url))
        .header("X-API-Key", &admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, logs) = server.stop();
    assert!(!logs.contains(secret_part(&admin_key)));

    let again = deployment.serve("second");
    let (banner, _) = again.stop();
    assert!(
        !banner.contains("kg_admin_"),
        "only the first start prints a key: {banner}"
    );
    assert!(!contains(&deployment.data_files(), secret_part(&admin_key)));
}

#[tokio::test]
async fn cli_drives_a_running_server_and_no_key_reaches_logs_or_the_database() {
    let mut deployment = Deployment::new("");
    assert!(deployment
        .ok_text(&["config", "check"], None)
        .contains("Configuration OK"));
    assert!(deployment.ok_text(&["migrate"], None).contains("Migrations applied"));
    let admin = deployment.ok_json(&["admin", "create-key", "--name", "automation", "--json"], None);
    let admin_key = admin["key"].as_str().unwrap().to_owned();
    assert!(admin_key.starts_with("kg_admin_"));

    let server = deployment.serve("cli");
    assert!(
        !server.stdout_text().contains("kg_admin_"),
        "a store with an admin key needs no bootstrap"
    );
    let key = Some(admin_key.as_str());
    let workspace = deployment.ok_json(&["workspaces", "create", "--name", "Acme", "--json"], key);
    let ws = workspace["id"].as_str().unwrap();
    let created = deployment.ok_json(
        &[
            "keys",
            "create",
            "--workspace",
            ws,
            "--name",
            "Production Server",
            "--scope",
            "invoices:read",
            "--json",
        ],
        key,
    );
    let (key_id, first) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap().to_owned(),
    );

    let http = reqwest::Client::new();
    let whoami = |k: String| {
        let http = http.clone();
        let url = format!("{}/v1/whoami", deployment.gateway_url);
        async move { http.get(url).bearer_auth(k).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(whoami(first.clone()).await, 200);
    assert_eq!(whoami(format!("{first}x")).await, 401);
    let verify: Value = http
        .post(format!("{}/v1/keys/verify", deployment.admin_url))
        .header("X-API-Key", &admin_key)
        .json(&serde_json::json!({"key": first}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verify["valid"], true);

    let rotated = deployment.ok_json(&["keys", "rotate", key_id, "--grace", "1h", "--json"], key);
    let (second_id, second) = (
        rotated["id"].as_str().unwrap(),
        rotated["key"].as_str().unwrap().to_owned(),
    );
    assert_eq!(whoami(second.clone()).await, 200);
    let revoked = deployment.ok_text(&["keys", "revoke", second_id, "--reason", "test"], key);
    assert!(revoked.contains("revoked"), "{revoked}");
    assert_eq!(whoami(second.clone()).await, 401);

    let listing = deployment.ok_text(&["keys", "list", "--workspace", ws], key);
    assert!(
        listing.contains("Production Server") && listing.contains(&first[..12]),
        "{listing}"
    );
    let listed = deployment.ok_json(
        &["keys", "list", "--workspace", ws, "--status", "active", "--json"],
        key,
    );
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    let usage = deployment.ok_json(&["keys", "usage", key_id, "--granularity", "day", "--json"], key);
    assert_eq!(usage["key_id"], key_id);
    for output in [
        listing,
        listed.to_string(),
        deployment.ok_text(&["keys", "get", key_id], key),
    ] {
        assert!(!output.contains(secret_part(&first)) && !output.contains(secret_part(&second)));
    }

    let limited = deployment.ok_json(
        &[
            "keys",
            "update",
            key_id,
            "--limit",
            "100/1m",
            "--limit",
            "workspace:uploads:1000/1d",
            "--json",
        ],
        key,
    );
    assert_eq!(
        limited["limits"],
        serde_json::json!([
            {"resource": "default", "requests": 100, "per": "1m", "scope": "key"},
            {"resource": "uploads", "requests": 1000, "per": "1d", "scope": "workspace"}
        ])
    );
    let bad_limit = deployment.keygate(&["keys", "update", key_id, "--limit", "100/5x"], key);
    assert!(String::from_utf8_lossy(&bad_limit.stderr).contains("422 VALIDATION_ERROR"));

    let other = deployment.ok_json(
        &["workspaces", "create", "--name", "Temp", "--limit", "5000/1m", "--json"],
        key,
    );
    assert_eq!(other["limits"][0]["requests"], 5000);
    let other_id = other["id"].as_str().unwrap();
    let updated = deployment.ok_json(
        &[
            "workspaces",
            "update",
            other_id,
            "--disabled",
            "true",
            "--name",
            "Temp 2",
            "--json",
        ],
        key,
    );
    assert_eq!(
        (updated["disabled"].as_bool(), updated["name"].as_str()),
        (Some(true), Some("Temp 2"))
    );
    assert_eq!(
        deployment.ok_json(&["workspaces", "get", other_id, "--json"], key)["name"],
        "Temp 2"
    );
    let table = deployment.ok_text(&["workspaces", "list"], key);
    assert!(table.contains("Acme") && table.contains("Temp 2"), "{table}");
    assert!(deployment
        .ok_text(&["workspaces", "delete", other_id], key)
        .contains("Deleted"));
    let gone = deployment.keygate(&["workspaces", "get", other_id], key);
    assert!(String::from_utf8_lossy(&gone.stderr).contains("404 NOT_FOUND"));

    let unauthorized = deployment.keygate(&["workspaces", "list"], Some("kg_admin_wrong"));
    assert!(!unauthorized.status.success());
    assert!(String::from_utf8_lossy(&unauthorized.stderr).contains("INVALID_API_KEY"));

    // Webhook signing secrets are stored sealed (issue 15, section 2).
    let hook = deployment.ok_json(&["webhooks", "create", "http://127.0.0.1:9/hook", "--json"], key);
    let hook_secret = hook["secret"].as_str().unwrap().to_owned();
    let hook_part = hook_secret.strip_prefix("whsec_").unwrap();

    let (stdout, logs) = server.stop();
    assert!(logs.contains("keygate stopped"), "graceful shutdown: {logs}");
    assert!(logs.contains(key_id), "logs do mention key ids");
    let data = deployment.data_files();
    for secret in [&admin_key, &first, &second] {
        let part = secret_part(secret);
        assert!(!logs.contains(part), "a key reached the logs");
        assert!(!stdout.contains(part), "a key reached the server's stdout");
        assert!(!contains(&data, part), "a key reached the database files");
    }
    assert!(!logs.contains(hook_part), "a webhook secret reached the logs");
    assert!(
        !stdout.contains(hook_part),
        "a webhook secret reached the server's stdout"
    );
    assert!(
        !contains(&data, hook_part),
        "a webhook secret reached the database files"
    );
    assert!(
        !contains_plaintext_webhook_secret(&data),
        "no webhook secret is stored in plaintext"
    );
    assert!(
        contains(&data, "kgs1."),
        "sanity: the sealed secret is in the files the grep reads"
    );
    assert!(
        contains(&data, &first[..12]),
        "sanity: the masked hint is stored, so the grep can find text"
    );
}

/// A command whose reader has gone (`keygate ... | head`) ends quietly,
/// killed by SIGPIPE like any Unix tool, instead of panicking.
#[test]
fn a_command_printing_into_a_closed_pipe_ends_without_a_panic() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .args(["secrets", "generate-key"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

/// `keygate secrets rotate` beside a running node: a new key goes first in
/// the key file, every stored webhook secret is re-sealed under it, and the
/// node seals with it once reloaded.
#[tokio::test]
async fn secrets_rotate_adds_a_key_and_reseals_every_webhook_secret() {
    let generated = Deployment::new("").ok_text(&["secrets", "generate-key"], None);
    let line = generated.trim();
    assert!(keygate_core::secrets::Keyring::parse(line).is_ok(), "{line}");

    let mut deployment = Deployment::new("");
    let server = deployment.serve("rotate");
    let admin_key = server.printed_admin_key();
    let key = Some(admin_key.as_str());
    deployment.ok_json(&["webhooks", "create", "http://127.0.0.1:9/one", "--json"], key);
    deployment.ok_json(&["webhooks", "create", "http://127.0.0.1:9/two", "--json"], key);
    let key_file = deployment.dir.path().join("data/keygate.secrets.key");
    let old_id = std::fs::read_to_string(&key_file)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_owned();

    let rotated = deployment.ok_json(&["secrets", "rotate", "--json"], None);
    let new_id = rotated["key_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, old_id);
    assert_eq!(
        (rotated["resealed"].as_u64(), rotated["unopened"].as_u64()),
        (Some(2), Some(0))
    );
    let ids: Vec<String> = std::fs::read_to_string(&key_file)
        .unwrap()
        .lines()
        .map(|line| line.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        [new_id.clone(), old_id.clone()],
        "the new key first, the old one kept"
    );
    let again = deployment.ok_json(&["secrets", "rotate", "--json"], None);
    assert_eq!(
        (again["resealed"].as_u64(), again["current"].as_u64()),
        (Some(2), Some(0))
    );
    let newest = again["key_id"].as_str().unwrap().to_owned();

    deployment.ok_text(&["config", "reload"], key);
    deployment.ok_json(&["webhooks", "create", "http://127.0.0.1:9/three", "--json"], key);
    let url = format!("sqlite://{}/data/keygate.db", deployment.dir.path().display());
    let store = keygate_store::open(&url).await.unwrap();
    let sealed_by: Vec<String> = store
        .webhook_secrets()
        .await
        .unwrap()
        .iter()
        .map(|(_, secret)| format!("{secret:?}"))
        .collect();
    assert_eq!(
        sealed_by,
        vec![format!("StoredSecret(sealed by {newest})"); 3],
        "the reloaded node seals with the new key"
    );
    server.stop();
}

/// SIGHUP and `keygate config reload` both make a running node re-read its
/// file; a refused file is named on the terminal and changes nothing.
#[tokio::test]
async fn sighup_and_config_reload_apply_a_changed_file_without_a_restart() {
    let mut deployment = Deployment::new("");
    let server = deployment.serve("reload");
    let admin_key = server.printed_admin_key();
    let http = reqwest::Client::new();
    let gateway = deployment.gateway_url.clone();
    let status_of = |path: &str| {
        let (http, url) = (http.clone(), format!("{gateway}{path}"));
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    // No route yet; a route that exists asks for a key first.
    assert_eq!(status_of("/r/x").await, 404);
    let one_route = "[[routes]]\npath = \"/r\"\nupstream = \"http://127.0.0.1:9\"\n";
    deployment.set_extra(one_route);
    let hup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of("/r/x").await != 401 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload: {}",
            server.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A setting only a restart can change: refused by name, exit status 1.
    deployment.set_extra(&format!("{one_route}[cache]\ncapacity = 5\n"));
    let refused = deployment.keygate(&["config", "reload"], Some(&admin_key));
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("409 CONFIG_NEEDS_RESTART") && message.contains("cache.capacity"),
        "{message}"
    );

    let two_routes = format!("{one_route}[[routes]]\npath = \"/s\"\nupstream = \"http://127.0.0.1:9\"\n");
    deployment.set_extra(&two_routes);
    let text = deployment.ok_text(&["config", "reload"], Some(&admin_key));
    assert!(text.contains("Config reloaded: routes changed (2 routes)."), "{text}");
    assert_eq!(status_of("/s/x").await, 401);
    let ready: Value = http
        .get(format!("{}/readyz", deployment.admin_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["config"]["reloads"], 2, "{ready}");
    assert!(ready["config"]["last_error"].is_null(), "{ready}");
    let (_, logs) = server.stop();
    assert!(
        logs.contains("config reloaded") && logs.contains("config reload refused"),
        "{logs}"
    );
}

#[test]
fn bad_config_names_the_field_and_file() {
    let deployment = Deployment::new("[limits]\nwhatever = 1\n");
    let out = deployment.keygate(&["config", "check"], None);
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("limits") && message.contains("keygate.toml"),
        "{message}"
    );

    let deployment = Deployment::new("[[routes]]\npath = \"/api\"\n");
    let message = String::from_utf8_lossy(&deployment.keygate(&["config", "check"], None).stderr).into_owned();
    assert!(
        message.contains("routes[0]") && message.contains("upstream"),
        "{message}"
    );

    let missing = Command::new(BIN)
        .args(["--config", "/nonexistent.toml", "config", "check"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.toml"));
}

#[test]
fn environment_overrides_config() {
    let deployment = Deployment::new("");
    let out = Command::new(BIN)
        .args(["config", "check"])
        .env("KEYGATE_CONFIG", &deployment.config)
        .env("KEYGATE_KEYS__PREFIX", "evon")
        .env("KEYGATE_SERVER__GATEWAY_ADDR", "127.0.0.1:9080")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("`evon`") && text.contains("127.0.0.1:9080"), "{text}");
    let bad = Command::new(BIN)
        .args(["config", "check"])
        .env("KEYGATE_CONFIG", &deployment.config)
        .env("KEYGATE_ERRORS__FORMAT", "xml")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let message = String::from_utf8_lossy(&bad.stderr).to_lowercase();
    assert!(
        message.contains("errors.format") && message.contains("xml"),
        "{message}"
    );
}

/// Peak resident memory of a process, from `/proc/<pid>/status` (Linux).
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test]
async fn a_256_mib_multipart_upload_streams_through_in_bounded_memory() {
    use futures::StreamExt;

    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 4096; // 256 MiB
    static DATA: [u8; CHUNK] = [b'x'; CHUNK];
    // The upstream counts what arrives without keeping it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink = format!("http://{}", listener.local_addr().unwrap());
    let upstream = axum::Router::new().fallback(|body: axum::body::Body| async move {
        let mut stream = body.into_data_stream();
        let mut total = 0u64;
        while let Some(chunk) = stream.next().await {
            total += chunk.unwrap().len() as u64;
        }
        total.to_string()
    });
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });

    let mut deployment = Deployment::new(&format!(
        "[access_log]\ntarget = \"off\"\n\
         [[routes]]\npath = \"/api/v1/invoices/upload\"\nmethods = [\"POST\"]\nupstream = \"{sink}\"\n\
         max_body_size = \"1GiB\"\ntimeout = \"5m\"\n"
    ));
    let admin = deployment.ok_json(&["admin", "create-key", "--name", "t", "--json"], None);
    let admin_key = admin["key"].as_str().unwrap().to_owned();
    let server = deployment.serve("upload");
    let auth = Some(admin_key.as_str());
    let workspace = deployment.ok_json(&["workspaces", "create", "--name", "EnvoyX", "--json"], auth);
    let created = deployment.ok_json(
        &[
            "keys",
            "create",
            "--workspace",
            workspace["id"].as_str().unwrap(),
            "--name",
            "k",
            "--json",
        ],
        auth,
    );
    let key = created["key"].as_str().unwrap().to_owned();

    let chunks = futures::stream::iter((0..CHUNKS).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from_static(&DATA))));
    let file =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(chunks), (CHUNK * CHUNKS) as u64)
            .file_name("invoice.pdf")
            .mime_str("application/pdf")
            .unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/invoices/upload", deployment.gateway_url))
        .header("X-API-Key", &key)
        .multipart(reqwest::multipart::Form::new().part("file", file))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let received: u64 = response.text().await.unwrap().parse().unwrap();
    assert!(
        received > (CHUNK * CHUNKS) as u64,
        "the whole file and the multipart framing arrived"
    );

    let peak = peak_rss_bytes(server.child.id());
    assert!(
        peak < 96 * 1024 * 1024,
        "the gateway's peak memory was {} MiB for a 256 MiB upload",
        peak / (1024 * 1024)
    );
    server.stop();
}

/// `--role` on create and update, and `keys verify` with the key on standard
/// input: scopes (the key's and its roles'), resources, a cost, a dry run.
#[tokio::test]
async fn keys_take_roles_and_are_verified_from_standard_input() {
    let mut deployment = Deployment::new(
        "[roles]\nreader = [\"invoices:read\"]\nwriter = [\"invoices:write\"]\n\
         [plans.small]\nlimits = [{ requests = 10, per = \"1h\" }]\n[limiter]\ndefault_plan = \"small\"\n",
    );
    let admin = deployment.ok_json(&["admin", "create-key", "--name", "automation", "--json"], None);
    let admin_key = admin["key"].as_str().unwrap().to_owned();
    let _server = deployment.serve("roles");
    let key = Some(admin_key.as_str());
    let workspace = deployment.ok_json(
        &[
            "workspaces",
            "create",
            "--name",
            "Acme",
            "--leak-policy",
            "notify",
            "--json",
        ],
        key,
    );
    assert_eq!(workspace["leak_policy"], "notify");
    let ws = workspace["id"].as_str().unwrap();
    let cleared = deployment.ok_json(&["workspaces", "update", ws, "--leak-policy", "default", "--json"], key);
    assert!(cleared["leak_policy"].is_null(), "{cleared}");
    let created = deployment.ok_json(
        &[
            "keys",
            "create",
            "--workspace",
            ws,
            "--name",
            "Reader",
            "--role",
            "reader",
            "--json",
        ],
        key,
    );
    assert_eq!(created["roles"], serde_json::json!(["reader"]));
    let (key_id, plaintext) = (
        created["id"].as_str().unwrap().to_owned(),
        created["key"].as_str().unwrap().to_owned(),
    );
    let verify = |args: &[&str]| {
        let mut all = vec!["keys", "verify", "--json"];
        all.extend_from_slice(args);
        deployment.keygate_reading(&all, &admin_key, &format!("{plaintext}\n"))
    };

    let read = verify(&["--scope", "invoices:read", "--cost", "3"]);
    assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
    let answer: Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(answer["valid"], true);
    assert_eq!(
        answer["ratelimit"]["limits"][0]["remaining"], 7,
        "the cost was spent: {answer}"
    );
    let dry = verify(&["--dry-run", "--cost", "7", "--resource", "default"]);
    let answer: Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(
        answer["ratelimit"]["limits"][0]["remaining"], 7,
        "fits, spends nothing: {answer}"
    );
    let too_dear = verify(&["--dry-run", "--cost", "8"]);
    assert!(!too_dear.status.success());
    assert!(String::from_utf8_lossy(&too_dear.stderr).contains("429 RATE_LIMIT_EXCEEDED"));

    let refused = verify(&["--scope", "invoices:write"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403 INSUFFICIENT_SCOPE"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    deployment.ok_json(
        &[
            "keys", "update", &key_id, "--role", "reader", "--role", "writer", "--json",
        ],
        key,
    );
    assert!(
        verify(&["--scope", "invoices:write"]).status.success(),
        "the new role counts at once"
    );

    // Credits: set on the key, spent by the verify API, refused at zero.
    let set = deployment.ok_json(&["keys", "update", &key_id, "--credits", "1+5/30d", "--json"], key);
    assert_eq!(
        set["credits"],
        serde_json::json!({"remaining": 1, "refill": {"amount": 5, "every": "30d"}})
    );
    let spent: Value = serde_json::from_slice(&verify(&[]).stdout).unwrap();
    assert_eq!(spent["credits"]["remaining"], 0, "{spent}");
    let out = verify(&[]);
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("USAGE_EXCEEDED"), "{said}");
    let ws_credits = deployment.ok_json(&["workspaces", "update", ws, "--credits", "100", "--json"], key);
    assert_eq!(ws_credits["credits"], serde_json::json!({"remaining": 100}));
    let cleared = deployment.ok_json(&["keys", "update", &key_id, "--credits", "none", "--json"], key);
    assert!(cleared["credits"].is_null(), "{cleared}");
    let bad = deployment.keygate(&["keys", "update", &key_id, "--credits", "lots"], key);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a number of credits"));

    let empty = deployment.keygate_reading(&["keys", "verify"], &admin_key, "");
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("standard input"));
    assert!(
        !String::from_utf8_lossy(&verify(&[]).stdout).contains(&plaintext),
        "never echoed"
    );
}

/// `keys scan` on a fixture tree: a live key in source, a revoked one in a
/// dotfile, a fake (bad checksum), one in an ignored file, one in a binary,
/// one in `.git`. Offline, both real keys fail the run; `--check` learns
/// which is live from hashes alone; no output ever holds a whole key.
#[tokio::test]
async fn a_scan_finds_keys_as_git_sees_the_tree_and_only_live_ones_fail_a_check() {
    let mut deployment = Deployment::new("");
    let admin = deployment.ok_json(&["admin", "create-key", "--name", "automation", "--json"], None);
    let admin_key = admin["key"].as_str().unwrap().to_owned();
    let _server = deployment.serve("scan");
    let key = Some(admin_key.as_str());
    let workspace = deployment.ok_json(&["workspaces", "create", "--name", "Acme", "--json"], key);
    let ws = workspace["id"].as_str().unwrap();
    let create = |name: &str| {
        let created = deployment.ok_json(&["keys", "create", "--workspace", ws, "--name", name, "--json"], key);
        (
            created["id"].as_str().unwrap().to_owned(),
            created["key"].as_str().unwrap().to_owned(),
        )
    };
    let (live_id, live) = create("live");
    let (revoked_id, revoked) = create("revoked");
    deployment.ok_text(&["keys", "revoke", &revoked_id], key);
    let mut fake = live.clone();
    let last = fake.pop().unwrap();
    fake.push(if last == 'a' { 'b' } else { 'a' });

    let tree = tempfile::tempdir().unwrap();
    let write = |path: &str, bytes: &[u8]| {
        let path = tree.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    write(
        "src/config.rs",
        format!("// setup\nconst KEY: &str = \"{live}\";\n").as_bytes(),
    );
    write(".env", format!("KEYGATE_KEY={revoked}\n").as_bytes());
    write("notes.txt", format!("almost: {fake}\n").as_bytes());
    write(".gitignore", b"ignored/\n");
    write("ignored/secret.txt", live.as_bytes());
    write("blob.bin", &[b"\0\0\0".as_slice(), live.as_bytes()].concat());
    write(".git/config", live.as_bytes());
    let root = tree.path().to_str().unwrap();

    let offline = deployment.keygate(&["keys", "scan", root, "--json"], None);
    assert!(!offline.status.success(), "unchecked keys fail a pre-commit hook");
    let report: Value = serde_json::from_slice(&offline.stdout).unwrap();
    let places: Vec<(String, u64)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let path = f["path"].as_str().unwrap();
            let relative = path.strip_prefix(root).unwrap().trim_start_matches('/');
            (relative.to_owned(), f["line"].as_u64().unwrap())
        })
        .collect();
    let mut sorted = places.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [(".env".to_owned(), 1), ("src/config.rs".to_owned(), 2)],
        "{report}"
    );
    assert_eq!(report["not_keys"], 1, "the fake: {report}");
    assert_eq!(report["files_skipped"], 1, "the binary: {report}");

    let checked = deployment.keygate(&["keys", "scan", root, "--check"], key);
    let text = String::from_utf8(checked.stdout.clone()).unwrap();
    assert!(!checked.status.success(), "a live key fails the run: {text}");
    assert!(
        text.contains("config.rs:2: kg_live_") && text.contains("(active)"),
        "{text}"
    );
    assert!(
        text.contains(".env:1: kg_live_") && text.contains("(revoked)"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&checked.stderr).contains("1 live key(s) found"));

    deployment.ok_text(&["keys", "revoke", &live_id], key);
    let clean = deployment.keygate(&["keys", "scan", root, "--check", "--json"], key);
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));
    for output in [&offline, &checked, &clean] {
        for stream in [&output.stdout, &output.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(
                !text.contains(secret_part(&live)) && !text.contains(secret_part(&revoked)),
                "{text}"
            );
        }
    }
}
