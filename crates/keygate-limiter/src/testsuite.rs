//! A real Redis Cluster for tests: three masters (`redis-server
//! --cluster-enabled yes`) on free loopback ports, joined with `redis-cli
//! --cluster create`, in a folder of their own, stopped when dropped. Each
//! test that needs one starts its own (about a second), so a test may kill
//! and restart a master without disturbing another.

// Test support: a failed set-up should panic where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisCluster {
    ports: Vec<u16>,
    masters: Vec<Option<Child>>,
    dir: tempfile::TempDir,
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A port that is free, with its cluster bus port (+10000) free too.
fn free_port_pair(taken: &[u16]) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    /// Three masters sharing the 16384 slots, or `None` (after saying why)
    /// where Redis is not installed and `KEYGATE_REQUIRE_SERVICES` is not 1.
    pub fn start() -> Option<Self> {
        if !(installed("redis-server") && installed("redis-cli")) {
            assert!(
                std::env::var("KEYGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "redis-server and redis-cli are required for the Redis Cluster tests (KEYGATE_REQUIRE_SERVICES=1)"
            );
            eprintln!("skipped: redis-server or redis-cli not installed");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("keygate-redis-cluster")
            .tempdir()
            .unwrap();
        let mut ports = Vec::new();
        for _ in 0..3 {
            ports.push(free_port_pair(&ports));
        }
        let mut cluster = Self {
            masters: ports.iter().map(|_| None).collect(),
            ports,
            dir,
        };
        for i in 0..3 {
            cluster.restart(i);
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "redis-cli --cluster create failed");
        for i in 0..3 {
            cluster.wait_until_ok(i);
        }
        Some(cluster)
    }

    /// `redis+cluster://` with every master.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Kills master `i` at once (SIGKILL): its slots have no server until [`Self::restart`].
    pub fn kill(&mut self, i: usize) {
        if let Some(mut master) = self.masters[i].take() {
            master.kill().unwrap();
            master.wait().unwrap();
        }
    }

    /// Starts master `i` on its port with its cluster config, and waits
    /// until it answers (and, once the cluster exists, until it is whole again).
    pub fn restart(&mut self, i: usize) {
        let port = self.ports[i].to_string();
        let master = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.masters[i] = Some(master);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(i, &["ping"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server on {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.dir.path().join(format!("nodes-{port}.conf")).exists()
            && self.cli(i, &["cluster", "info"]).contains("cluster_known_nodes:3")
        {
            self.wait_until_ok(i);
        }
    }

    /// Waits until master `i` sees every slot served.
    pub fn wait_until_ok(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.cli(i, &["cluster", "info"]).contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "the cluster never became whole");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli(&self, i: usize, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.ports[i].to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.masters.len() {
            self.kill(i);
        }
    }
}
