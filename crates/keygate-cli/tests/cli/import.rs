//! `keygate keys import` (issue 21) against a running node: 10,000 keys of
//! every kind a migration brings (keys in keygate's format, legacy keys,
//! SHA-256 in hex and in base64) all work at the gateway, a malformed row is
//! reported with its line and costs nothing else, a re-run adds nothing, an
//! interrupted run resumes, and no imported key reaches a log or the database.

use std::fmt::Write as _;

use base64::prelude::{Engine as _, BASE64_STANDARD};
use futures::StreamExt;
use keygate_core::KeyFormat;
use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{contains, Deployment};

const KEYS: usize = 10_000;
/// The malformed row comes after this many good ones.
const MALFORMED_AFTER: usize = 4_321;

/// A key as another system issued it: not in keygate's format.
fn legacy_key(i: usize) -> String {
    let random: String = rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("acme_sk_{i:05}_{random}")
}

/// The rows of the CSV file and the keys their holders send: a quarter each
/// of keygate's own format, legacy plaintext, hex SHA-256 and base64 SHA-256.
fn mixed_csv() -> (String, Vec<String>) {
    let format = KeyFormat::default();
    let mut csv = String::from("key,hash,name,environment,scopes,metadata\n");
    let mut keys = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        if i == MALFORMED_AFTER {
            csv.push_str(",not-a-sha256,Broken row,,,\n");
        }
        let (key, row) = match i % 4 {
            0 => {
                let key = format
                    .generate("live", &mut rand::thread_rng())
                    .unwrap()
                    .expose()
                    .to_owned();
                (key.clone(), format!("{key},,Own {i},,read,"))
            }
            1 => {
                let key = legacy_key(i);
                (
                    key.clone(),
                    format!("{key},,Legacy {i},test,read write,\"{{\"\"n\"\": {i}}}\""),
                )
            }
            2 => {
                let key = legacy_key(i);
                let hash: String = Sha256::digest(key.as_bytes()).iter().fold(String::new(), |mut s, b| {
                    let _ = write!(s, "{b:02x}");
                    s
                });
                (key, format!(",{hash},Hex {i},,,"))
            }
            _ => {
                let key = legacy_key(i);
                let hash = BASE64_STANDARD.encode(Sha256::digest(key.as_bytes()));
                (key, format!(",{hash},Base64 {i},,,"))
            }
        };
        csv.push_str(&row);
        csv.push('\n');
        keys.push(key);
    }
    (csv, keys)
}

/// How many of `keys` the gateway admits, 32 requests at a time.
async fn admitted(gateway: &str, keys: &[String]) -> usize {
    let http = reqwest::Client::new();
    futures::stream::iter(keys)
        .map(|key| {
            let request = http.get(format!("{gateway}/v1/whoami")).header("X-API-Key", key);
            async move { request.send().await.unwrap().status().as_u16() == 200 }
        })
        .buffer_unordered(32)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await
}

fn import_json(deployment: &Deployment, args: &[&str], admin_key: &str) -> (bool, Value, String) {
    let out = deployment.keygate(args, Some(admin_key));
    let summary = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        summary,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn ten_thousand_mixed_keys_are_imported_and_a_rerun_adds_nothing() {
    let mut deployment = Deployment::new("[keys]\nlegacy = true\n");
    let admin = deployment.ok_json(&["admin", "create-key", "--name", "migration", "--json"], None);
    let admin_key = admin["key"].as_str().unwrap().to_owned();
    let server = deployment.serve("import");
    let ws = deployment.ok_json(
        &["workspaces", "create", "--name", "Migrated", "--json"],
        Some(&admin_key),
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (csv, keys) = mixed_csv();
    let file = deployment.dir.path().join("keys.csv");
    std::fs::write(&file, csv).unwrap();
    let path = file.to_str().unwrap();
    let args = ["keys", "import", path, "--workspace", &ws, "--json"];

    let (succeeded, summary, stderr) = import_json(&deployment, &args, &admin_key);
    assert!(!succeeded, "a refused row fails the run: {stderr}");
    assert_eq!(summary["imported"], KEYS, "{summary} {stderr}");
    assert_eq!(summary["legacy"], KEYS / 4 * 3);
    // The header is line 1 and the malformed row follows MALFORMED_AFTER good ones.
    let line = MALFORMED_AFTER + 2;
    assert_eq!(
        summary["refused"],
        json!([{"line": line, "message": "hash: must be a SHA-256: 64 hex digits, or 32 bytes in base64"}])
    );
    assert!(stderr.contains(&format!("line {line}: hash:")), "{stderr}");
    assert!(
        !file.with_extension("csv.import-state").exists(),
        "a finished run leaves no state"
    );

    assert_eq!(admitted(&deployment.gateway_url, &keys).await, KEYS);

    let (_, again, _) = import_json(&deployment, &args, &admin_key);
    assert_eq!(
        (again["imported"].clone(), again["existing"].clone()),
        (json!(0), json!(KEYS)),
        "{again}"
    );
    assert_eq!(again["refused"].as_array().unwrap().len(), 1);

    let listed = deployment.ok_json(
        &["keys", "list", "--workspace", &ws, "--limit", "5", "--json"],
        Some(&admin_key),
    );
    assert_eq!(listed["data"].as_array().unwrap().len(), 5);

    let (stdout, stderr) = server.stop();
    let database = deployment.data_files();
    for key in keys.iter().step_by(97) {
        let secret = &key[key.len() - 20..];
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a key reached the log"
        );
        assert!(!contains(&database, secret), "a key reached the database");
    }
}

#[tokio::test]
async fn an_interrupted_import_resumes_after_the_last_line_sent() {
    let mut deployment = Deployment::new("[keys]\nlegacy = true\n");
    let admin = deployment.ok_json(&["admin", "create-key", "--name", "migration", "--json"], None);
    let admin_key = admin["key"].as_str().unwrap().to_owned();
    let _server = deployment.serve("resume");
    let ws = deployment.ok_json(
        &["workspaces", "create", "--name", "Resumed", "--json"],
        Some(&admin_key),
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let keys: Vec<String> = (0..100).map(legacy_key).collect();
    let lines: Vec<String> = keys
        .iter()
        .map(|key| json!({"key": key, "name": "From JSON lines", "scopes": ["read"]}).to_string())
        .collect();
    let file = deployment.dir.path().join("keys.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let file_len = std::fs::metadata(&file).unwrap().len();
    // What a run stopped after its batch up to line 40 leaves behind.
    let state = json!({"workspace": ws, "file_len": file_len, "line": 40,
                       "imported": 40, "legacy": 40, "existing": 0, "refused": 0});
    let state_file = deployment.dir.path().join("keys.jsonl.import-state");
    std::fs::write(&state_file, state.to_string()).unwrap();

    let path = file.to_str().unwrap();
    let (succeeded, summary, stderr) = import_json(
        &deployment,
        &[
            "keys",
            "import",
            path,
            "--workspace",
            &ws,
            "--batch-size",
            "7",
            "--json",
        ],
        &admin_key,
    );
    assert!(succeeded, "{stderr}");
    assert!(stderr.contains("Resuming after line 40"), "{stderr}");
    assert_eq!(
        summary["imported"], 100,
        "the earlier run's 40 and this run's 60: {summary}"
    );
    assert!(!state_file.exists());
    // Ten of the skipped keys: more refusals in a minute would throttle this client.
    let skipped: Vec<String> = keys[..40].iter().step_by(4).cloned().collect();
    assert_eq!(
        admitted(&deployment.gateway_url, &skipped).await,
        0,
        "skipped, as the state said"
    );
    assert_eq!(admitted(&deployment.gateway_url, &keys[40..]).await, 60);

    let (_, restarted, _) = import_json(
        &deployment,
        &["keys", "import", path, "--workspace", &ws, "--restart", "--json"],
        &admin_key,
    );
    assert_eq!(
        (restarted["imported"].clone(), restarted["existing"].clone()),
        (json!(40), json!(60))
    );
    assert_eq!(admitted(&deployment.gateway_url, &keys).await, 100);
}
