//! Leak reports through GitHub's secret-scanning partner protocol
//! (crates/keygate-server/src/github.rs), signed in the test with a P-256
//! key pair whose public half is in the configured keys file, as GitHub's is.

use axum::http::Method;
use base64::prelude::{Engine as _, BASE64_STANDARD};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::TestApp;

const KEY_ID: &str = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a";

/// A node trusting one GitHub key, the key's signing half, and the folder
/// that holds the keys file.
async fn node(on_report: &str) -> (TestApp, SigningKey, tempfile::TempDir) {
    let signing = SigningKey::random(&mut rand::thread_rng());
    let pem = signing.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("github-keys.json");
    let published = json!({"public_keys": [{"key_identifier": KEY_ID, "key": pem, "is_current": true}]});
    std::fs::write(&keys_file, published.to_string()).unwrap();
    let app = TestApp::builder()
        .config(&format!(
            "[leaks]\ngithub_keys_file = \"{}\"\non_report = \"{on_report}\"\ngrace = \"10m\"\n",
            keys_file.display()
        ))
        .start()
        .await;
    (app, signing, dir)
}

/// POSTs `body` as GitHub does: signed by `signing`, naming `key_id`.
async fn report(app: &TestApp, signing: &SigningKey, key_id: &str, body: &[u8]) -> (u16, Value) {
    let signature: Signature = signing.sign(body);
    let response = app
        .http
        .post(format!("{}/v1/leaks/github", app.admin))
        .header("Content-Type", "application/json")
        .header("Github-Public-Key-Identifier", key_id)
        .header(
            "Github-Public-Key-Signature",
            BASE64_STANDARD.encode(signature.to_der()),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn found(token: &str, url: &str) -> Value {
    json!({"token": token, "type": "keygate_api_key", "url": url, "source": "content"})
}

/// The key's `key.leaked` audit event, if it has one.
async fn leak_audited(app: &TestApp, key_id: &str) -> Option<Value> {
    let audit = app
        .admin_ok(Method::GET, &format!("/v1/audit-events?key_id={key_id}"), None, 200)
        .await;
    audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["action"] == "key.leaked")
        .cloned()
}

fn sha256_hex(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

#[tokio::test]
async fn a_signed_report_revokes_the_key_within_the_request_with_a_trail() {
    let (app, signing, _keys) = node("revoke").await;
    let ws = app.workspace("Acme").await;
    let (leaked_id, leaked) = app.key(&ws, json!({"name": "leaked"})).await;
    let (_, other) = app.key(&ws, json!({"name": "other"})).await;
    assert_eq!(app.whoami(&leaked).await.status(), 200);
    let url = "https://github.com/acme/app/blob/main/config.py";
    let fake = "kg_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let body = json!([found(&leaked, url), found(fake, url)]).to_string();

    let (status, feedback) = report(&app, &signing, KEY_ID, body.as_bytes()).await;
    assert_eq!(status, 200, "{feedback}");
    assert_eq!(
        feedback,
        json!([
            {"token_hash": sha256_hex(&leaked), "token_type": "keygate_api_key", "label": "true_positive"},
            {"token_hash": sha256_hex(fake), "token_type": "keygate_api_key", "label": "false_positive"},
        ])
    );
    assert!(!feedback.to_string().contains(&leaked), "the token is not sent back");

    let refused: Value = app.whoami(&leaked).await.json().await.unwrap();
    assert_eq!(refused["code"], "API_KEY_REVOKED");
    assert_eq!(app.whoami(&other).await.status(), 200, "only the reported key");

    let leak = leak_audited(&app, &leaked_id).await.expect("a key.leaked audit event");
    assert_eq!(
        (leak["actor"].as_str(), leak["details"]["url"].as_str()),
        (Some("github"), Some(url))
    );
    assert_eq!(leak["details"]["action"], "revoked");
    let events = app
        .admin_ok(Method::GET, &format!("/v1/events?key_id={leaked_id}"), None, 200)
        .await;
    let published = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["type"] == "key.leaked")
        .expect("a key.leaked event for webhooks");
    assert_eq!(published["payload"]["data"]["url"], url);

    // Reported again: still ours (true_positive), nothing more to do.
    let (status, again) = report(
        &app,
        &signing,
        KEY_ID,
        json!([found(&leaked, url)]).to_string().as_bytes(),
    )
    .await;
    assert_eq!((status, again[0]["label"].as_str()), (200, Some("true_positive")));
}

#[tokio::test]
async fn reports_that_are_not_github_s_or_not_well_formed_change_nothing() {
    let (app, signing, _keys) = node("revoke").await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let body = json!([found(&key, "https://gist.github.com/x")]).to_string();
    let send = |key_id: &'static str, signature: Option<String>, body: Vec<u8>| {
        let mut request = app
            .http
            .post(format!("{}/v1/leaks/github", app.admin))
            .header("Content-Type", "application/json")
            .header("Github-Public-Key-Identifier", key_id)
            .body(body);
        if let Some(signature) = signature {
            request = request.header("Github-Public-Key-Signature", signature);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let signed_other: Signature = signing.sign(b"[]");
    let stranger = SigningKey::random(&mut rand::thread_rng());
    let signed_by_stranger: Signature = stranger.sign(body.as_bytes());
    let refusals = [
        ("unsigned", send(KEY_ID, None, body.clone().into_bytes()).await),
        (
            "signature of another body",
            send(
                KEY_ID,
                Some(BASE64_STANDARD.encode(signed_other.to_der())),
                body.clone().into_bytes(),
            )
            .await,
        ),
        (
            "signed by a key GitHub does not hold",
            send(
                KEY_ID,
                Some(BASE64_STANDARD.encode(signed_by_stranger.to_der())),
                body.clone().into_bytes(),
            )
            .await,
        ),
        (
            "not base64",
            send(KEY_ID, Some("%%%".into()), body.clone().into_bytes()).await,
        ),
    ];
    for (case, (status, answer)) in refusals {
        assert_eq!(
            (status, answer["code"].as_str()),
            (401, Some("INVALID_SIGNATURE")),
            "{case}"
        );
    }
    let (status, answer) = report(&app, &signing, "another-key-id", body.as_bytes()).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (401, Some("INVALID_SIGNATURE")),
        "unknown key id"
    );

    // Signed, but not a report.
    let (status, answer) = report(&app, &signing, KEY_ID, b"[{\"token\": ").await;
    assert_eq!((status, answer["code"].as_str()), (400, Some("INVALID_JSON")));
    let (status, answer) = report(&app, &signing, KEY_ID, br#"{"token": "x"}"#).await;
    assert_eq!((status, answer["code"].as_str()), (422, Some("VALIDATION_ERROR")));
    let (status, answer) = report(&app, &signing, KEY_ID, br#"[{"token": "x"}]"#).await;
    assert_eq!(
        (status, answer["data"]["field"].as_str()),
        (422, Some("[0].type")),
        "{answer}"
    );
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"token": i.to_string(), "type": "t"}))
        .collect();
    let (status, answer) = report(&app, &signing, KEY_ID, json!(many).to_string().as_bytes()).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (422, Some("VALIDATION_ERROR")),
        "1,001 tokens"
    );
    let flood: Vec<Value> = (0..10_000).map(|_| found(&key, "https://github.com/x")).collect();
    let (status, answer) = report(&app, &signing, KEY_ID, json!(flood).to_string().as_bytes()).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE")),
        "10,000 tokens"
    );

    // Another deployment's key, and a key of ours with a broken checksum.
    let mut broken = key.clone();
    broken.pop();
    broken.push(if key.ends_with('A') { 'B' } else { 'A' });
    let strangers = json!([found("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "u"), found(&broken, "u")]).to_string();
    let (status, feedback) = report(&app, &signing, KEY_ID, strangers.as_bytes()).await;
    assert_eq!(status, 200);
    assert!(
        feedback
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["label"] == "false_positive"),
        "{feedback}"
    );

    assert_eq!(
        app.whoami(&key).await.status(),
        200,
        "no refused report changed the key"
    );
}

#[tokio::test]
async fn the_policy_can_expire_after_a_grace_or_only_notify() {
    let (app, signing, _keys) = node("expire").await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let body = json!([found(&key, "https://github.com/x")]).to_string();
    assert_eq!(report(&app, &signing, KEY_ID, body.as_bytes()).await.0, 200);
    assert_eq!(app.whoami(&key).await.status(), 200, "works through the grace");
    app.clock.advance(chrono::Duration::minutes(11));
    let refused: Value = app.whoami(&key).await.json().await.unwrap();
    assert_eq!(refused["code"], "API_KEY_EXPIRED");

    let (app, signing, _keys) = node("notify").await;
    let ws = app.workspace("Acme").await;
    let (id, key) = app.key(&ws, json!({"name": "k"})).await;
    let body = json!([found(&key, "https://github.com/y")]).to_string();
    assert_eq!(report(&app, &signing, KEY_ID, body.as_bytes()).await.0, 200);
    assert_eq!(app.whoami(&key).await.status(), 200, "notify changes nothing");
    assert!(leak_audited(&app, &id).await.is_some(), "notify audits");
}

#[tokio::test]
async fn without_a_keys_file_the_endpoint_is_not_there() {
    let app = TestApp::start().await;
    let response = app
        .http
        .post(format!("{}/v1/leaks/github", app.admin))
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

/// POSTs a public report to the data plane, as the client `ip` (through the
/// trusted proxy every `TestApp` believes).
async fn report_publicly(app: &TestApp, ip: &str, body: &str) -> (u16, Option<String>, Value) {
    let response = app
        .http
        .post(app.gateway_url("/v1/leaks/report"))
        .header("Content-Type", "application/json")
        .header("X-Forwarded-For", ip)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn anyone_may_report_a_key_and_learns_nothing_about_which_keys_exist() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let (id, key) = app.key(&ws, json!({"name": "k"})).await;
    let format = keygate_core::KeyFormat::new("kg", &["live".to_owned(), "test".to_owned()]).unwrap();
    let never_issued = format.generate("live", &mut rand::thread_rng()).unwrap();
    let mut broken = key.clone();
    broken.pop();
    broken.push(if key.ends_with('A') { 'B' } else { 'A' });

    let url = "https://pastebin.example/x";
    let mut answers = Vec::new();
    for reported in [never_issued.expose(), broken.as_str(), "hello", key.as_str()] {
        let (status, _, body) =
            report_publicly(&app, "203.0.113.5", &json!({"key": reported, "url": url}).to_string()).await;
        answers.push((status, body));
    }
    assert!(
        answers.iter().all(|answer| *answer == (202, json!({"received": true}))),
        "{answers:?}"
    );
    let refused: Value = app.whoami(&key).await.json().await.unwrap();
    assert_eq!(refused["code"], "API_KEY_REVOKED", "the live key reported is revoked");
    let leak = leak_audited(&app, &id).await.expect("a key.leaked audit event");
    assert_eq!(
        (leak["actor_ip"].as_str(), leak["details"]["url"].as_str()),
        (Some("203.0.113.5"), Some(url))
    );

    // Every report is audited with its URL: the three that are no key of
    // this deployment as `leak.reported` (the operator's, in no workspace),
    // never with the token itself.
    let audit = app.admin_ok(Method::GET, "/v1/audit-events?limit=200", None, 200).await;
    let reported: Vec<&Value> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["action"] == "leak.reported")
        .collect();
    assert_eq!(reported.len(), 3, "{audit}");
    assert!(reported
        .iter()
        .all(|e| e["details"]["url"] == url && e["workspace_id"].is_null()));
    let hashes: Vec<&Value> = reported.iter().map(|e| &e["details"]["token_sha256"]).collect();
    let issued_hash = json!(keygate_core::KeyHash::of(never_issued.expose()).to_hex());
    assert_eq!(hashes.iter().filter(|h| ***h == issued_hash).count(), 1, "{hashes:?}");
    assert_eq!(hashes.iter().filter(|h| h.is_null()).count(), 2, "no checksum, no hash");
    for secret in [never_issued.expose(), &broken, &key] {
        assert!(!audit.to_string().contains(&secret[8..]), "no token in the audit log");
    }
    // The key again, now revoked: a true report still, audited and announced, acting on nothing.
    report_publicly(&app, "203.0.113.5", &json!({"key": key, "url": url}).to_string()).await;
    let audit = app
        .admin_ok(Method::GET, &format!("/v1/audit-events?key_id={id}"), None, 200)
        .await;
    let actions: Vec<&Value> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "key.leaked")
        .map(|e| &e["details"]["action"])
        .collect();
    assert_eq!(actions, [&json!("none"), &json!("revoked")], "newest first");

    let (status, _, body) = report_publicly(&app, "203.0.113.5", "{\"key\": ").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("INVALID_JSON")));
}

#[tokio::test]
async fn one_address_may_report_twenty_times_a_minute() {
    let app = TestApp::start().await;
    let report = json!({"key": "kg_live_nothing"}).to_string();
    for _ in 0..20 {
        assert_eq!(report_publicly(&app, "198.51.100.7", &report).await.0, 202);
    }
    let (status, retry_after, body) = report_publicly(&app, "198.51.100.7", &report).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("RATE_LIMIT_EXCEEDED")),
        "the 21st"
    );
    assert!(retry_after.is_some_and(|secs| secs.parse::<u64>().unwrap() <= 60));
    assert_eq!(
        report_publicly(&app, "198.51.100.8", &report).await.0,
        202,
        "another address"
    );
    app.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(
        report_publicly(&app, "198.51.100.7", &report).await.0,
        202,
        "the next minute"
    );
}

#[tokio::test]
async fn the_report_path_moves_or_turns_off() {
    let app = TestApp::builder().config("[leaks]\nreport_path = \"\"\n").start().await;
    let (status, _, body) = report_publicly(&app, "203.0.113.9", "{\"key\": \"x\"}").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("ROUTE_NOT_FOUND")));
}

/// `POST /v1/keys/lookup` (what `keygate keys scan --check` asks): hashes in,
/// the keys the caller may see out; a workspace key sees its own workspace
/// only, and bad hashes are 422 naming `hashes`.
#[tokio::test]
async fn keys_are_looked_up_by_hash_only_where_the_caller_may_see() {
    let app = TestApp::start().await;
    let mine = app.workspace("Mine").await;
    let theirs = app.workspace("Theirs").await;
    let (own_id, own) = app.key(&mine, json!({"name": "own"})).await;
    let (_, other) = app.key(&theirs, json!({"name": "other"})).await;
    let (_, manager) = app
        .key(&mine, json!({"name": "manager", "scopes": ["keys:manage"]}))
        .await;
    let hex = |key: &str| keygate_core::KeyHash::of(key).to_hex();
    let unknown = hex("kg_live_nothing");
    let body = json!({"hashes": [hex(&own), hex(&other), unknown]});

    let app = &app;
    let lookup = |key: String, body: Value| async move {
        let response = app
            .admin_call_as(&key, Method::POST, "/v1/keys/lookup", Some(body))
            .await;
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let (status, all) = lookup(app.admin_key.clone(), body.clone()).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["own", "other"], "{all}");
    assert_eq!(all["data"][0]["hash"], hex(&own));
    assert_eq!(all["data"][0]["status"], "active");
    assert!(!all.to_string().contains(&own[8..]), "no key in the answer");

    let (_, visible) = lookup(manager.clone(), body).await;
    assert_eq!(visible["data"].as_array().unwrap().len(), 1, "{visible}");
    assert_eq!(visible["data"][0]["id"], own_id.as_str());

    let too_many: Vec<String> = (0..501).map(|i| hex(&i.to_string())).collect();
    for bad in [
        json!({"hashes": []}),
        json!({"hashes": [hex(&own).to_uppercase()]}),
        json!({"hashes": ["abc"]}),
        json!({"hashes": too_many}),
        json!({"keys": [own]}),
    ] {
        let (status, answer) = lookup(app.admin_key.clone(), bad).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["code"], "VALIDATION_ERROR");
    }
}

/// A workspace may set its own leak policy over `leaks.on_report` (issue
/// 20): here the config revokes, one workspace only wants to be told, one
/// needs minutes to roll, and clearing the override follows the config again.
#[tokio::test]
async fn a_workspace_may_set_its_own_leak_policy() {
    let app = TestApp::builder().config("[leaks]\ngrace = \"10m\"\n").start().await;
    let report = |key: &str| {
        app.http
            .post(app.gateway_url("/v1/leaks/report"))
            .json(&json!({"key": key, "url": "https://paste.example/1"}))
            .send()
    };
    let create = |body: Value| app.admin_call(Method::POST, "/v1/workspaces", Some(body));
    let created = |body: Value| async move {
        let response = create(body).await;
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()
    };
    let told = created(json!({"name": "Tell me", "leak_policy": "notify"})).await;
    assert_eq!(told["leak_policy"], "notify");
    let rolling = created(json!({"name": "Rolling", "leak_policy": "expire"})).await;
    let (_, told_key) = app.key(told["id"].as_str().unwrap(), json!({"name": "k"})).await;
    let (_, rolling_key) = app.key(rolling["id"].as_str().unwrap(), json!({"name": "k"})).await;
    for key in [&told_key, &rolling_key] {
        assert_eq!(report(key).await.unwrap().status(), 202);
        assert_eq!(app.whoami(key).await.status(), 200, "neither is revoked");
    }
    app.clock.advance(chrono::Duration::minutes(11));
    assert_eq!(app.whoami(&told_key).await.status(), 200, "notify only");
    let expired: Value = app.whoami(&rolling_key).await.json().await.unwrap();
    assert_eq!(expired["code"], "API_KEY_EXPIRED", "after leaks.grace");

    // Cleared, the workspace follows the config again: revoke.
    let told_id = told["id"].as_str().unwrap();
    let cleared = app
        .admin_ok(
            Method::PATCH,
            &format!("/v1/workspaces/{told_id}"),
            Some(json!({"leak_policy": null})),
            200,
        )
        .await;
    assert!(cleared["leak_policy"].is_null());
    let (_, next) = app.key(told_id, json!({"name": "next"})).await;
    assert_eq!(report(&next).await.unwrap().status(), 202);
    let revoked: Value = app.whoami(&next).await.json().await.unwrap();
    assert_eq!(revoked["code"], "API_KEY_REVOKED");

    let bad = create(json!({"name": "Bad", "leak_policy": "delete"})).await;
    assert_eq!(bad.status(), 422);
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["data"]["field"], "leak_policy", "{bad}");
}

/// A stand-in for GitHub's keys endpoint: serves `document`, counts fetches.
struct PublishedKeys {
    url: String,
    document: std::sync::Arc<std::sync::Mutex<Value>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn published_keys(document: Value) -> PublishedKeys {
    let document = std::sync::Arc::new(std::sync::Mutex::new(document));
    let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (served, counted) = (document.clone(), fetches.clone());
    let router = axum::Router::new().route(
        "/meta/public_keys/secret_scanning",
        axum::routing::get(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = served.lock().unwrap().clone();
            async move { axum::Json(body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    PublishedKeys {
        url: format!("http://{addr}/meta/public_keys/secret_scanning"),
        document,
        fetches,
    }
}

fn published(keys: &[(&str, &SigningKey)]) -> Value {
    let keys: Vec<Value> = keys
        .iter()
        .map(|(id, signing)| {
            let pem = signing.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
            json!({"key_identifier": id, "key": pem, "is_current": true})
        })
        .collect();
    json!({"public_keys": keys})
}

/// `leaks.github_keys_url`: GitHub's keys fetched when a report needs them,
/// kept for `github_keys_refresh`, fetched again for a key GitHub rotated
/// in, never more than once per pause whatever key ids reports name, and a
/// 503 (GitHub retries) when they cannot be had at all.
#[tokio::test]
async fn github_s_keys_are_fetched_kept_and_refetched_for_a_rotated_key() {
    let first = SigningKey::random(&mut rand::thread_rng());
    let server = published_keys(published(&[(KEY_ID, &first)])).await;
    let app = TestApp::builder()
        .config(&format!(
            "[leaks]\ngithub_keys_url = \"{}\"\ngithub_keys_refresh = \"3s\"\n",
            server.url
        ))
        .start()
        .await;
    let fetches = || server.fetches.load(std::sync::atomic::Ordering::SeqCst);
    let ws = app.workspace("Acme").await;
    let (key_id, key) = app.key(&ws, json!({"name": "leaked"})).await;
    let body = json!([found(&key, "https://github.com/acme/app")]).to_string();
    assert_eq!(fetches(), 0, "fetched when a report needs them, not before");
    let (status, feedback) = report(&app, &first, KEY_ID, body.as_bytes()).await;
    assert_eq!((status, &feedback[0]["label"]), (200, &json!("true_positive")));
    assert!(leak_audited(&app, &key_id).await.is_some());
    assert_eq!(report(&app, &first, KEY_ID, body.as_bytes()).await.0, 200);
    assert_eq!(fetches(), 1, "kept");

    // GitHub rotates: a report signed by the new key fetches the document again.
    let second = SigningKey::random(&mut rand::thread_rng());
    *server.document.lock().unwrap() = published(&[(KEY_ID, &first), ("rotated-in", &second)]);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_eq!(report(&app, &second, "rotated-in", body.as_bytes()).await.0, 200);
    assert_eq!(fetches(), 2);
    // Key ids nobody knows: refused, and at most one fetch per pause (3 s
    // here) however many there are; none if they come within it, as here
    // unless this machine stalls.
    let before = fetches();
    for forged in ["forged-1", "forged-2", "forged-3"] {
        assert_eq!(report(&app, &second, forged, body.as_bytes()).await.0, 401);
    }
    assert!(
        fetches() - before <= 1,
        "forged key ids do not make keygate hammer GitHub"
    );

    // Nothing to verify with: 503, nothing changed.
    let unreachable = TestApp::builder()
        .config("[leaks]\ngithub_keys_url = \"http://127.0.0.1:1/meta/public_keys/secret_scanning\"\n")
        .start()
        .await;
    let ws = unreachable.workspace("Acme").await;
    let (live_id, live) = unreachable.key(&ws, json!({"name": "live"})).await;
    let body = json!([found(&live, "https://github.com/acme/app")]).to_string();
    let (status, error) = report(&unreachable, &first, KEY_ID, body.as_bytes()).await;
    assert_eq!((status, &error["code"]), (503, &json!("SERVICE_UNAVAILABLE")));
    assert!(leak_audited(&unreachable, &live_id).await.is_none());
    assert_eq!(unreachable.whoami(&live).await.status(), 200);
}

#[tokio::test]
async fn a_keys_url_that_is_not_http_is_refused_at_start() {
    for bad in ["ftp://example.com/keys", "not a url"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, format!("[leaks]\ngithub_keys_url = \"{bad}\"\n")).unwrap();
        let err = keygate_server::config::ConfigSource::file(Some(path))
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains("leaks.github_keys_url"), "{bad}: {err}");
    }
}

/// GitHub's `type` names the pattern as the partner registered it; keygate
/// echoes it and lets the token decide: an unknown type with no key of ours
/// changes nothing, and a live key is revoked whatever GitHub calls it
/// (docs/decisions.md).
#[tokio::test]
async fn the_token_decides_whatever_type_github_names() {
    let (app, signing, _keys) = node("revoke").await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let (_, bystander) = app.key(&ws, json!({"name": "bystander"})).await;
    let typed = |token: &str, kind: &str| json!({"token": token, "type": kind, "url": "https://github.com/x"});
    let body = json!([typed("kg_live_notakeyatall", "someone_elses_token")]).to_string();
    let (status, feedback) = report(&app, &signing, KEY_ID, body.as_bytes()).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&feedback[0]["label"], &feedback[0]["token_type"]),
        (&json!("false_positive"), &json!("someone_elses_token"))
    );
    assert_eq!(app.whoami(&bystander).await.status(), 200, "nothing changed");
    let body = json!([typed(&key, "renamed_pattern")]).to_string();
    let (status, feedback) = report(&app, &signing, KEY_ID, body.as_bytes()).await;
    assert_eq!((status, &feedback[0]["label"]), (200, &json!("true_positive")));
    let refused: Value = app.whoami(&key).await.json().await.unwrap();
    assert_eq!(
        refused["code"], "API_KEY_REVOKED",
        "a leaked key is revoked whatever its type"
    );
    assert_eq!(app.whoami(&bystander).await.status(), 200);
}
