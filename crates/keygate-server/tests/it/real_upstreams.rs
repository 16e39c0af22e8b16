//! Real upstream servers started by a test: Debian's nginx and a Python WSGI
//! app (the standard library's `wsgiref`), each listening on several ports so
//! a test can tell which keygate route forwarded a request. Each answers
//! `200` with `<name> <path>`, where the path is the one the server itself
//! resolved: nginx's `$uri` (decoded, dot segments resolved, slashes merged)
//! and WSGI's `PATH_INFO` (decoded). Stopped, by PID, when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server process with one port per name.
pub struct RealUpstream {
    child: Child,
    ports: Vec<(String, u16)>,
    /// How to start it again on the same ports.
    command: Vec<std::ffi::OsString>,
    _dir: tempfile::TempDir,
}

impl RealUpstream {
    /// Kills the process (by its PID): its ports refuse connections.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same ports (nginx only: the WSGI app picks its own).
    pub async fn restart(&mut self) {
        self.kill();
        self.child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for (_, port) in &self.ports {
            wait_until_listening(*port).await;
        }
    }

    /// `http://127.0.0.1:<port>` of the listener called `name`.
    pub fn url(&self, name: &str) -> String {
        let (_, port) = self.ports.iter().find(|(n, _)| n == name).unwrap();
        format!("http://127.0.0.1:{port}")
    }
}

impl Drop for RealUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Required under `KEYGATE_REQUIRE_SERVICES=1` (CI; `scripts/test.sh`
/// installs it); otherwise a missing program skips the test with a word.
pub fn available(program: &str) -> bool {
    let found = Command::new(program)
        .arg(if program.contains("nginx") { "-v" } else { "--version" })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("KEYGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{program} is required (KEYGATE_REQUIRE_SERVICES=1); scripts/test.sh installs it"
        );
        eprintln!("skipped: {program} is not installed");
    }
    found
}

fn nginx_binary() -> String {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .unwrap_or("nginx")
        .to_owned()
}

/// `count` distinct ports that were free a moment ago. Every listener is held
/// until all are chosen: binding and dropping one at a time can hand out the
/// same port twice, and nginx then serves two names on one port (its first
/// `server` answering for both).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

async fn wait_until_listening(port: u16) {
    for _ in 0..500 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("upstream on port {port} never started");
}

/// nginx, one `server` per name, in the foreground as a single process.
/// Started again on other ports if one was taken between choosing and binding
/// it (nginx then exits at once).
pub async fn nginx(names: &[&str]) -> Option<RealUpstream> {
    let binary = nginx_binary();
    if !available(&binary) {
        return None;
    }
    for _ in 0..4 {
        let mut upstream = start_nginx(&binary, names);
        for (_, port) in &upstream.ports {
            wait_until_listening(*port).await;
        }
        if upstream.child.try_wait().unwrap().is_none() {
            return Some(upstream);
        }
    }
    panic!("nginx did not start on four sets of free ports");
}

fn start_nginx(binary: &str, names: &[&str]) -> RealUpstream {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let ports: Vec<(String, u16)> = names
        .iter()
        .map(|n| (*n).to_owned())
        .zip(free_ports(names.len()))
        .collect();
    let servers: String = ports
        .iter()
        .map(|(name, port)| {
            format!(
                "server {{ listen 127.0.0.1:{port}; location / {{ default_type text/plain; return 200 \"{name} $uri\"; }} }}\n"
            )
        })
        .collect();
    let config = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 128; }}\n\
         http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n{servers}}}\n"
    );
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, config).unwrap();
    let command: Vec<std::ffi::OsString> = vec![
        binary.into(),
        "-c".into(),
        conf.into(),
        "-e".into(),
        dir.path().join("error.log").into(),
    ];
    let child = Command::new(&command[0])
        .args(&command[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    RealUpstream {
        child,
        ports,
        command,
        _dir: dir,
    }
}

const WSGI_APP: &str = r#"
import sys, threading
from wsgiref.simple_server import make_server, WSGIRequestHandler

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

def app_named(name):
    def app(environ, start_response):
        # PATH_INFO is the decoded path, as a latin-1 string (PEP 3333).
        body = (name + " ").encode() + environ["PATH_INFO"].encode("latin-1")
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return app

servers = [make_server("127.0.0.1", 0, app_named(name), handler_class=Quiet) for name in sys.argv[1:]]
print(" ".join(str(server.server_port) for server in servers), flush=True)
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
servers[0].serve_forever()
"#;

/// A WSGI app on Python's reference server, one listener per name.
pub async fn wsgi(names: &[&str]) -> Option<RealUpstream> {
    if !available("python3") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("app.py");
    std::fs::write(&script, WSGI_APP).unwrap();
    let mut child = Command::new("python3")
        .arg(&script)
        .args(names)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ports = names
        .iter()
        .zip(line.split_whitespace())
        .map(|(name, port)| ((*name).to_owned(), port.parse().unwrap()))
        .collect::<Vec<(String, u16)>>();
    assert_eq!(ports.len(), names.len(), "the WSGI app printed {line:?}");
    for (_, port) in &ports {
        wait_until_listening(*port).await;
    }
    Some(RealUpstream {
        child,
        ports,
        command: Vec::new(),
        _dir: dir,
    })
}

/// A response read off the wire.
pub struct RawResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `GET <target>` with exactly the target's bytes (an HTTP client
/// library would normalise `..` and escapes before sending) and reads the
/// response until the server closes the connection.
pub async fn raw_get(base: &str, target: &[u8], headers: &[(&str, &str)]) -> RawResponse {
    let address = base.trim_start_matches("http://");
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(format!(" HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n").as_bytes());
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the response never ended")
        .unwrap();
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> RawResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    let body = &raw[split + 4..];
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    RawResponse {
        status,
        body: if chunked { dechunk(body) } else { body.to_vec() },
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 2 + size + 2..];
    }
}
