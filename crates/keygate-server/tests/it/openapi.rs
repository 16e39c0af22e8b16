//! The OpenAPI document says what the server does (issue 15, section 5):
//! schemathesis, every check, against a real node, once with an admin key and
//! once with a workspace key. Any failure it finds fails the test.
//!
//! The rules JSON Schema cannot state (a range's length, one limit per
//! counter, ...) are in the document's descriptions and in
//! scripts/schemathesis/hooks.py, which keeps generated valid requests
//! within them; requests generated to break the schema are sent as they are.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::json;

use crate::support::{installed_tool, TestApp};

/// A keys document in the shape GitHub publishes; nothing here is signed for it.
const GITHUB_KEYS: &str = r#"{"public_keys": [{"key_identifier": "kid", "is_current": true,
 "key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEsz9ugWDj5jK5ELBK42ynytbo38gP\nHzZFI03Exwz8Lh/tCfL3YxwMdLjB+bMznsanlhK0RwcGP3IDb34kQDIo3Q==\n-----END PUBLIC KEY-----\n"}]}"#;

/// Examples per operation and phase: bounded, so a run takes about a minute.
const EXAMPLES: &str = "30";

/// The `st` command of the virtual environment `scripts/test.sh` makes
/// (scripts/lib/services.sh).
fn schemathesis() -> Option<String> {
    installed_tool("KEYGATE_TEST_SCHEMATHESIS", "schemathesis")
}

fn hooks_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/schemathesis")
}

/// Runs schemathesis with `key` in whichever header the document's scheme
/// it picks names; returns whether it passed, and what it printed.
async fn run(st: &str, app: &TestApp, key: &str) -> (bool, String) {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[auth.openapi.api_key]\napi_key = \"${KEYGATE_ST_KEY}\"\n\
         [auth.openapi.bearer]\nbearer = \"${KEYGATE_ST_KEY}\"\n",
    )
    .unwrap();
    let output = tokio::process::Command::new(st)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{}/openapi.json", app.admin)])
        .args(["--checks", "all", "--max-examples", EXAMPLES, "--no-color"])
        .env("KEYGATE_ST_KEY", key)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", hooks_dir())
        .current_dir(work.path())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("schemathesis runs");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), printed)
}

/// The requests a run generated, from its summary (`2618 generated, ...`).
fn generated(printed: &str) -> u64 {
    printed
        .lines()
        .find_map(|line| line.trim().split_once(" generated"))
        .and_then(|(count, _)| count.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_document_does_not_say() {
    let Some(st) = schemathesis() else { return };
    // GitHub's leak reports are taken, so their endpoint is in the document
    // and checked too: no request here is signed by this key.
    let keys = tempfile::tempdir().unwrap();
    let keys_file = keys.path().join("github-keys.json");
    std::fs::write(&keys_file, GITHUB_KEYS).unwrap();
    let app = TestApp::builder()
        .config(&format!("[leaks]\ngithub_keys_file = \"{}\"\n", keys_file.display()))
        .config(
            r#"
[security]
# Generated requests send many invalid keys on purpose (in /v1/keys/verify).
max_failed_attempts = 1000000

[plans.free]
limits = [{ requests = 100, per = "1m" }]

[plans.pro]
limits = [{ requests = 5000, per = "1m" }]

[roles]
reader = ["invoices:read"]
ops = ["keys:manage"]
"#,
        )
        .start()
        .await;
    let ws = app.workspace("Schemathesis").await;
    let (_, manager) = app
        .key(&ws, json!({"name": "manager", "scopes": ["keys:manage"]}))
        .await;
    for (who, key) in [("an admin key", app.admin_key.clone()), ("a workspace key", manager)] {
        let (passed, printed) = run(&st, &app, &key).await;
        assert!(passed, "schemathesis with {who} found failures:\n{printed}");
        // A run that tested next to nothing would pass too: it did not.
        assert!(generated(&printed) >= 500, "{printed}");
    }
}
