//! Webhook delivery across a `kill -9`: events recorded while the receiver
//! is down are all delivered, exactly once per endpoint, by the restarted node.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{free_port, Deployment};

/// What the receiver got, per path: (webhook-id, signature valid).
type Log = Arc<Mutex<BTreeMap<String, Vec<(String, bool)>>>>;

/// Standard Webhooks verification from the specification, with the
/// receiver's own HMAC: `v1,` base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
fn verify(secret: &str, headers: &HeaderMap, body: &str) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let key = STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{body}", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    header("webhook-signature").split(' ').any(|s| s == expected)
}

/// Starts the receiver on `port`, answering 200 to `/all` and `/revoked`.
async fn start_receiver(port: u16, secrets: BTreeMap<String, String>) -> Log {
    let log: Log = Arc::default();
    let seen = log.clone();
    let handler = move |axum::extract::Path(path): axum::extract::Path<String>, headers: HeaderMap, body: String| {
        let (seen, secrets) = (seen.clone(), secrets.clone());
        async move {
            let valid = verify(&secrets[&path], &headers, &body);
            let id = headers["webhook-id"].to_str().unwrap().to_owned();
            seen.lock().unwrap().entry(path).or_default().push((id, valid));
            axum::http::StatusCode::NO_CONTENT
        }
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let router = axum::Router::new().route("/{path}", axum::routing::post(handler));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    log
}

fn create_webhook(deployment: &Deployment, admin: &str, url: &str, extra: &[&str]) -> String {
    let mut args = vec!["webhooks", "create", url, "--json"];
    args.extend_from_slice(extra);
    let created = deployment.ok_json(&args, Some(admin));
    created["secret"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn events_recorded_while_the_receiver_is_down_arrive_once_after_a_kill_9() {
    let mut deployment = Deployment::new(
        "[webhooks]\npoll_interval = \"100ms\"\nretry_base = \"200ms\"\nretry_max = \"400ms\"\ntimeout = \"1s\"\n",
    );
    let admin = deployment.ok_json(&["admin", "create-key", "--json"], None)["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = deployment.serve("before");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut secrets = BTreeMap::new();
    secrets.insert(
        "all".to_owned(),
        create_webhook(&deployment, &admin, &format!("{base}/all"), &[]),
    );
    secrets.insert(
        "revoked".to_owned(),
        create_webhook(
            &deployment,
            &admin,
            &format!("{base}/revoked"),
            &["--event", "key.revoked"],
        ),
    );
    let ws = deployment.ok_json(&["workspaces", "create", "--name", "Acme", "--json"], Some(&admin))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let create_key = |deployment: &Deployment, name: &str| {
        let created = deployment.ok_json(
            &["keys", "create", "--workspace", &ws, "--name", name, "--json"],
            Some(&admin),
        );
        created["id"].as_str().unwrap().to_owned()
    };
    let mut keys = Vec::new();
    for n in 0..10 {
        keys.push(create_key(&deployment, &format!("before {n}")));
    }
    for key in &keys[..4] {
        deployment.ok_json(&["keys", "revoke", key, "--json"], Some(&admin));
    }
    // The receiver is down: attempts fail and are recorded for retry.
    let hooks = deployment.ok_json(&["webhooks", "list", "--json"], Some(&admin));
    let all_hook = hooks["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["url"].as_str().unwrap().ends_with("/all"))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let deliveries = deployment.ok_json(&["webhooks", "deliveries", &all_hook, "--json"], Some(&admin));
        let failed_attempts = deliveries["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["attempts"].as_array().is_some_and(|a| !a.is_empty()))
            .count();
        if failed_attempts == 14 {
            assert!(deliveries["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["status"] == "pending"));
            let error = &deliveries["data"][0]["attempts"][0]["error"];
            assert_eq!(error, "could not connect to the receiver");
            break;
        }
        assert!(Instant::now() < deadline, "attempts were not made: {deliveries}");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill_hard();

    let server = deployment.serve("after");
    for n in 0..3 {
        keys.push(create_key(&deployment, &format!("after {n}")));
    }
    deployment.ok_json(&["keys", "revoke", &keys[12], "--json"], Some(&admin));
    let log = start_receiver(port, secrets.clone()).await;
    // 13 created and 5 revoked to /all; the 5 revocations to /revoked.
    let expected = [("all", 18), ("revoked", 5)];
    let deadline = Instant::now() + Duration::from_secs(30);
    let unique = |path: &str| -> usize {
        let log = log.lock().unwrap();
        let mut ids: Vec<&String> = log.get(path).into_iter().flatten().map(|(id, _)| id).collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    while expected.iter().any(|(path, count)| unique(path) < *count) {
        assert!(Instant::now() < deadline, "not delivered: {:?}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A few more polls: nothing arrives twice.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let log = log.lock().unwrap().clone();
    for (path, count) in expected {
        let got = &log[path];
        assert_eq!(got.len(), count, "{path}: each event exactly once: {got:?}");
        assert!(got.iter().all(|(_, valid)| *valid), "{path}: every signature verifies");
    }
    let (_, stderr) = server.stop();
    for secret in secrets.values() {
        assert!(!stderr.contains(&secret[6..]), "a webhook secret reached the log");
    }
}
