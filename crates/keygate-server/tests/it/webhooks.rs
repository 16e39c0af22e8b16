//! Events and webhooks: signed deliveries to a receiver started here, retries
//! while it is down, once-per-window and once-per-spike events, and the
//! admin API's checks. Deliveries and scans are driven by the test (the
//! background worker polls once an hour here) and time moves with the manual
//! clock, so nothing sleeps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::{HeaderMap, Method};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::Duration;
use hmac::{Hmac, Mac};
use keygate_engine::webhooks::DeliveryRound;
use keygate_engine::Clock;
use keygate_server::webhook_sender::HttpWebhookSender;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::TestApp;

/// The test drives deliveries itself: the node's own worker polls hourly.
const DRIVEN: &str = "[webhooks]\npoll_interval = \"1h\"\n";

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap().to_owned()
    }
}

/// A webhook receiver on loopback that answers with a settable status.
pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    pub async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let (log, answer) = (received.clone(), status.clone());
        let handler = move |headers: HeaderMap, body: String| {
            let (log, answer) = (log.clone(), answer.clone());
            async move {
                let headers = headers
                    .iter()
                    .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap().to_owned()))
                    .collect();
                log.lock().unwrap().push(Received { headers, body });
                axum::http::StatusCode::from_u16(answer.load(Ordering::SeqCst)).unwrap()
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/keygate", listener.local_addr().unwrap());
        let router = axum::Router::new().route("/hooks/keygate", axum::routing::post(handler));
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { url, received, status }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

/// Standard Webhooks verification, written from the specification: the
/// secret's bytes are the base64 after `whsec_`; the signature is base64
/// HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`, sent as `v1,<sig>`.
pub fn signature_is_valid(secret: &str, received: &Received) -> bool {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let id = &received.headers["webhook-id"];
    let timestamp = &received.headers["webhook-timestamp"];
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{}", received.body).as_bytes());
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    received.headers["webhook-signature"]
        .split(' ')
        .filter_map(|signature| signature.strip_prefix("v1,"))
        .any(|signature| signature == expected)
}

pub async fn deliver(app: &TestApp) -> DeliveryRound {
    let sender = HttpWebhookSender::new().unwrap();
    app.app.engine.deliveries().deliver(&sender).await.unwrap()
}

/// Creates an endpoint through the API; returns its id and secret.
pub async fn webhook(app: &TestApp, body: Value) -> (String, String) {
    let created = app.admin_ok(Method::POST, "/v1/webhooks", Some(body), 201).await;
    (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    )
}

async fn events_of_key(app: &TestApp, key_id: &str) -> Vec<Value> {
    let listed = app
        .admin_ok(Method::GET, &format!("/v1/events?key_id={key_id}&limit=200"), None, 200)
        .await;
    listed["data"].as_array().unwrap().clone()
}

fn types_of(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn key_created_and_revoked_arrive_signed_at_the_endpoints_that_asked() {
    let app = TestApp::builder().config(DRIVEN).start().await;
    let receiver = Receiver::start().await;
    let ws = app.workspace("Acme").await;
    let other_ws = app.workspace("Other").await;
    let (hook_id, secret) = webhook(&app, json!({"url": receiver.url, "workspace_id": ws})).await;
    let only_revoked = Receiver::start().await;
    let (_, revoked_secret) = webhook(
        &app,
        json!({"url": only_revoked.url, "workspace_id": ws, "events": ["key.revoked"]}),
    )
    .await;

    let (key_id, _) = app.key(&ws, json!({"name": "Production Server"})).await;
    app.key(&other_ws, json!({"name": "not theirs"})).await;
    app.admin_ok(
        Method::POST,
        &format!("/v1/keys/{key_id}/revoke"),
        Some(json!({"reason": "leaked"})),
        200,
    )
    .await;
    let sent_at = app.clock.now().timestamp();
    let round = deliver(&app).await;
    assert_eq!((round.delivered, round.failed), (3, 0), "{round:?}");

    let got = receiver.received();
    let kinds: Vec<String> = got.iter().map(Received::event_type).collect();
    assert_eq!(kinds.len(), 2);
    assert!(
        kinds.contains(&"key.created".into()) && kinds.contains(&"key.revoked".into()),
        "{kinds:?}"
    );
    for delivery in &got {
        assert!(signature_is_valid(&secret, delivery), "{delivery:?}");
        assert!(
            !signature_is_valid(&revoked_secret, delivery),
            "another endpoint's secret must not verify"
        );
        let timestamp: i64 = delivery.headers["webhook-timestamp"].parse().unwrap();
        assert!((timestamp - sent_at).abs() <= 1, "timestamp {timestamp} vs {sent_at}");
        assert_eq!(delivery.headers["content-type"], "application/json");
        assert_eq!(delivery.json()["data"]["key_id"], key_id.as_str());
        assert_eq!(delivery.json()["data"]["workspace_id"], ws.as_str());
    }
    let revoked = got.iter().find(|r| r.event_type() == "key.revoked").unwrap();
    assert_eq!(revoked.json()["data"]["reason"], "leaked");
    // A tampered body does not verify.
    let mut tampered = revoked.clone();
    tampered.body = tampered.body.replace("leaked", "fine");
    assert!(!signature_is_valid(&secret, &tampered));

    let filtered = only_revoked.received();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].event_type(), "key.revoked");
    assert!(signature_is_valid(&revoked_secret, &filtered[0]));

    // The webhook-id is the event's id in the outbox, and the attempts show.
    let events = events_of_key(&app, &key_id).await;
    assert_eq!(types_of(&events), ["key.revoked", "key.created"]);
    assert_eq!(revoked.headers["webhook-id"], events[0]["id"].as_str().unwrap());
    assert_eq!(events[0]["payload"], revoked.json());
    let deliveries = app
        .admin_ok(Method::GET, &format!("/v1/webhooks/{hook_id}/deliveries"), None, 200)
        .await;
    let deliveries = deliveries["data"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    for delivery in deliveries {
        assert_eq!(delivery["status"], "delivered");
        assert_eq!(delivery["attempts"].as_array().unwrap().len(), 1);
        assert_eq!(delivery["attempts"][0]["status_code"], 200);
    }
    // Nothing is sent twice.
    assert_eq!(deliver(&app).await, DeliveryRound::default());
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test]
async fn a_receiver_down_for_an_hour_gets_every_event_exactly_once() {
    let app = TestApp::builder().config(DRIVEN).start().await;
    let receiver = Receiver::start().await;
    receiver.answer(503);
    let ws = app.workspace("Acme").await;
    let (hook_id, secret) = webhook(&app, json!({"url": receiver.url, "workspace_id": ws})).await;
    let mut keys = Vec::new();
    for n in 0..3 {
        keys.push(app.key(&ws, json!({"name": format!("key {n}")})).await.0);
    }
    // Down for an hour: every due retry fails, and is retried later, not lost.
    let mut failures = 0;
    for _ in 0..60 {
        failures += deliver(&app).await.failed;
        app.clock.advance(Duration::minutes(1));
    }
    assert!(
        failures >= 3 * 6,
        "retried through the hour: {failures} failed attempts"
    );
    let refused = receiver.received().len();
    assert_eq!(
        refused as u32, failures,
        "each failed attempt reached the receiver once"
    );
    receiver.answer(204);
    let mut delivered = 0;
    for _ in 0..4 {
        app.clock.advance(Duration::minutes(30));
        delivered += deliver(&app).await.delivered;
    }
    assert_eq!(delivered, 3);
    let accepted: Vec<Received> = receiver.received().split_off(refused);
    let mut ids: Vec<&str> = accepted.iter().map(|r| r.headers["webhook-id"].as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each event accepted exactly once");
    assert!(accepted.iter().all(|r| signature_is_valid(&secret, r)));
    let listed = app
        .admin_ok(Method::GET, &format!("/v1/webhooks/{hook_id}/deliveries"), None, 200)
        .await;
    for delivery in listed["data"].as_array().unwrap() {
        assert_eq!(delivery["status"], "delivered");
        let attempts = delivery["attempts"].as_array().unwrap();
        let codes: Vec<u64> = attempts.iter().map(|a| a["status_code"].as_u64().unwrap()).collect();
        assert_eq!(codes.last(), Some(&204));
        assert!(codes[..codes.len() - 1].iter().all(|&code| code == 503), "{codes:?}");
        // Backoff doubles from 30 s: attempts are sparse, not one a minute.
        assert!(attempts.len() <= 10, "{} attempts", attempts.len());
    }
}

#[tokio::test]
async fn a_delivery_failing_for_24_hours_is_given_up() {
    let app = TestApp::builder().config(DRIVEN).start().await;
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let ws = app.workspace("Acme").await;
    let (hook_id, _) = webhook(&app, json!({"url": receiver.url, "workspace_id": ws})).await;
    app.key(&ws, json!({"name": "k"})).await;
    let mut gave_up = 0;
    for _ in 0..30 {
        gave_up += deliver(&app).await.gave_up;
        app.clock.advance(Duration::hours(1));
    }
    assert_eq!(gave_up, 1);
    let listed = app
        .admin_ok(Method::GET, &format!("/v1/webhooks/{hook_id}/deliveries"), None, 200)
        .await;
    let delivery = &listed["data"][0];
    assert_eq!(delivery["status"], "failed");
    assert_eq!(delivery["next_attempt_at"], Value::Null);
    let attempts = delivery["attempts"].as_array().unwrap();
    let last = attempts.last().unwrap();
    assert_eq!(last["error"], "the receiver answered HTTP 500");
    let first: chrono::DateTime<chrono::Utc> = attempts[0]["at"].as_str().unwrap().parse().unwrap();
    let final_try: chrono::DateTime<chrono::Utc> = last["at"].as_str().unwrap().parse().unwrap();
    assert!(
        final_try - first >= Duration::hours(24),
        "tried for 24 h: {first} .. {final_try}"
    );
}

#[tokio::test]
async fn ratelimit_exceeded_is_announced_once_per_window_under_a_flood() {
    let app = TestApp::builder()
        .config(DRIVEN)
        .config("[limiter]\ndefault_plan = \"tiny\"\n[plans.tiny]\nlimits = [{ requests = 5, per = \"1m\" }]")
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (key_id, key) = app.key(&ws, json!({"name": "busy"})).await;
    // Align to the start of a minute so the flood stays in one window.
    let now = app.clock.now();
    app.clock.advance(Duration::seconds(60 - now.timestamp() % 60));
    let flood = |count: usize| {
        let app = &app;
        let key = key.clone();
        async move {
            let requests = (0..count).map(|_| app.whoami(&key));
            let statuses: Vec<u16> = futures::future::join_all(requests)
                .await
                .iter()
                .map(|r| r.status().as_u16())
                .collect();
            statuses.iter().filter(|&&s| s == 429).count()
        }
    };
    assert_eq!(flood(60).await, 55);
    app.app.engine.usage().flush().await.unwrap();
    assert_eq!(flood(20).await, 20);
    app.app.engine.usage().flush().await.unwrap();
    let events = events_of_key(&app, &key_id).await;
    assert_eq!(types_of(&events), ["ratelimit.exceeded", "key.created"]);
    let data = &events[0]["payload"]["data"];
    assert_eq!(data["limit"], 5);
    assert_eq!(data["window"], "1m");
    assert_eq!(data["resource"], "default");

    // The next window (past the last bucket of the first), another flood: one more.
    app.clock.advance(Duration::seconds(61));
    assert_eq!(flood(30).await, 25);
    app.app.engine.usage().flush().await.unwrap();
    let events = events_of_key(&app, &key_id).await;
    assert_eq!(
        types_of(&events),
        ["ratelimit.exceeded", "ratelimit.exceeded", "key.created"]
    );
}

/// One minute of traffic (3 requests a key, plus `spike` on the first),
/// then a flush and a scan, as a node does.
async fn traffic_minute(app: &TestApp, spiky: &str, steady: &str, spike: usize) {
    for _ in 0..3 + spike {
        assert_eq!(app.whoami(spiky).await.status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(app.whoami(steady).await.status(), 200);
    }
    app.app.engine.usage().flush().await.unwrap();
    app.app.engine.events().scan().await.unwrap();
    app.clock.advance(Duration::minutes(1));
}

/// 70 minutes of steady traffic on two keys, then a spike on one, scanned
/// every minute as a node does.
#[tokio::test]
async fn a_spike_is_one_usage_anomaly_and_steady_traffic_none() {
    let app = TestApp::builder()
        .config(DRIVEN)
        .config("[events]\nanomaly_factor = 5\nanomaly_floor = 50")
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (spiky_id, spiky) = app.key(&ws, json!({"name": "spiky"})).await;
    let (steady_id, steady) = app.key(&ws, json!({"name": "steady"})).await;
    for _ in 0..70 {
        traffic_minute(&app, &spiky, &steady, 0).await;
    }
    let anomalies = |events: Vec<Value>| events.into_iter().filter(|e| e["type"] == "usage.anomaly").count();
    assert_eq!(
        anomalies(events_of_key(&app, &spiky_id).await),
        0,
        "steady traffic is not anomalous"
    );
    traffic_minute(&app, &spiky, &steady, 100).await;
    for _ in 0..10 {
        traffic_minute(&app, &spiky, &steady, 0).await;
    }
    let events = events_of_key(&app, &spiky_id).await;
    let spike: Vec<&Value> = events.iter().filter(|e| e["type"] == "usage.anomaly").collect();
    assert_eq!(spike.len(), 1, "{events:#?}");
    let data = &spike[0]["payload"]["data"];
    // Scanned in the spike's minute: 4 steady minutes and the spike, against
    // the hour before them at 3 a minute.
    assert_eq!(data["recent_requests"], 4 * 3 + 103);
    assert_eq!(data["baseline_requests"], 60 * 3);
    assert_eq!(anomalies(events_of_key(&app, &steady_id).await), 0);
}

#[tokio::test]
async fn many_invalid_keys_from_one_ip_are_one_failure_burst() {
    let app = TestApp::builder()
        .config(DRIVEN)
        .config("[security]\nmax_failed_attempts = 5\nfailed_attempts_window = \"1m\"")
        .start()
        .await;
    let receiver = Receiver::start().await;
    webhook(&app, json!({"url": receiver.url, "events": ["auth.failure_burst"]})).await;
    for n in 0..12 {
        let status = app
            .http
            .get(app.gateway_url("/v1/whoami"))
            .header("X-API-Key", format!("kg_live_guess{n}"))
            .header("X-Forwarded-For", "198.51.100.66")
            .send()
            .await
            .unwrap()
            .status();
        assert!(status == 401 || status == 429, "{status}");
    }
    app.app.engine.usage().flush().await.unwrap();
    assert_eq!(deliver(&app).await.delivered, 1);
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let data = &got[0].json()["data"];
    assert_eq!(data["ip"], "198.51.100.66");
    assert_eq!(data["failures"], 5);
    assert_eq!(got[0].json()["type"], "auth.failure_burst");
}

#[tokio::test]
async fn expiry_and_age_are_announced_once_each() {
    let app = TestApp::builder().config(DRIVEN).start().await;
    let ws = app.workspace("Acme").await;
    let (expiring_id, _) = app.key(&ws, json!({"name": "short", "expires_in": "3d"})).await;
    let (old_id, _) = app.key(&ws, json!({"name": "forever"})).await;
    let scan = || async { app.app.engine.events().scan().await.unwrap() };
    assert_eq!(scan().await, 1, "key.expiring, 3 days ahead");
    assert_eq!(scan().await, 0);
    app.clock.advance(Duration::days(3) + Duration::seconds(1));
    assert_eq!(scan().await, 1, "key.expired");
    assert_eq!(scan().await, 0);
    app.clock.advance(Duration::days(88));
    assert_eq!(
        scan().await,
        2,
        "key.max_age_exceeded after 90 days: `forever` and the test's admin key"
    );
    assert_eq!(scan().await, 0);
    assert_eq!(
        types_of(&events_of_key(&app, &expiring_id).await),
        ["key.expired", "key.expiring", "key.created"]
    );
    let old = events_of_key(&app, &old_id).await;
    assert_eq!(types_of(&old), ["key.max_age_exceeded", "key.created"]);
    assert_eq!(old[0]["payload"]["data"]["max_age_days"], 90);
}

#[tokio::test]
async fn webhook_admin_api_checks_input_and_who_may_do_what() {
    let app = TestApp::builder().config(DRIVEN).start().await;
    let ws = app.workspace("Acme").await;
    let other = app.workspace("Other").await;
    let post = |body: Value| app.admin_call(Method::POST, "/v1/webhooks", Some(body));
    for (body, field) in [
        (json!({"url": "ftp://example.com/x"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (
            json!({"url": "https://example.com", "events": ["key.exploded"]}),
            "events",
        ),
        (
            json!({"url": "https://example.com", "description": "x".repeat(501)}),
            "description",
        ),
    ] {
        let response = post(body).await;
        assert_eq!(response.status(), 422);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["data"]["field"], field, "{error}");
    }
    for body in [
        json!({"url": "https://example.com", "colour": "red"}),
        json!({"url": 42}),
        json!({"url": "https://example.com", "events": "key.created"}),
        json!({}),
    ] {
        let response = post(body).await;
        assert_eq!(response.status(), 422, "{:?}", response.text().await);
    }
    let unknown_ws = post(json!({"url": "https://example.com", "workspace_id": "ws_01jnope"})).await;
    assert_eq!(unknown_ws.status(), 404);

    // A keys:manage key: its own workspace only, never global ones.
    let (_, manager) = app
        .key(&ws, json!({"name": "manager", "scopes": ["keys:manage"]}))
        .await;
    let as_manager = |method: Method, path: String, body: Option<Value>| {
        let manager = manager.clone();
        let app = &app;
        async move { app.admin_call_as(&manager, method, &path, body).await }
    };
    let own = as_manager(
        Method::POST,
        "/v1/webhooks".into(),
        Some(json!({"url": "https://example.com/own", "workspace_id": ws})),
    )
    .await;
    assert_eq!(own.status(), 201);
    let own: Value = own.json().await.unwrap();
    let global = as_manager(
        Method::POST,
        "/v1/webhooks".into(),
        Some(json!({"url": "https://example.com/all"})),
    )
    .await;
    assert_eq!(global.status(), 403);
    let elsewhere = as_manager(
        Method::POST,
        "/v1/webhooks".into(),
        Some(json!({"url": "https://example.com/x", "workspace_id": other})),
    )
    .await;
    assert_eq!(elsewhere.status(), 404);
    let (admin_hook, secret) = webhook(&app, json!({"url": "https://example.com/all"})).await;

    // The secret appears once, at creation.
    let listed = as_manager(Method::GET, "/v1/webhooks".into(), None).await;
    let listed: Value = listed.json().await.unwrap();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [own["id"].as_str().unwrap()],
        "a workspace key sees its own endpoints only"
    );
    let all = app.admin_ok(Method::GET, "/v1/webhooks", None, 200).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    assert!(!all.to_string().contains(&secret) && !all.to_string().contains("whsec_"));
    let one = app
        .admin_ok(Method::GET, &format!("/v1/webhooks/{admin_hook}"), None, 200)
        .await;
    assert!(!one.to_string().contains("whsec_"));
    assert_eq!(
        as_manager(Method::GET, format!("/v1/webhooks/{admin_hook}"), None)
            .await
            .status(),
        404
    );
    assert_eq!(
        as_manager(Method::GET, format!("/v1/webhooks/{admin_hook}/deliveries"), None)
            .await
            .status(),
        404
    );

    // Delete once; then it is gone.
    let path = format!("/v1/webhooks/{admin_hook}");
    assert_eq!(app.admin_call(Method::DELETE, &path, None).await.status(), 204);
    assert_eq!(app.admin_call(Method::DELETE, &path, None).await.status(), 404);
    assert_eq!(app.admin_call(Method::GET, &path, None).await.status(), 404);
    assert_eq!(
        app.admin_call(Method::GET, "/v1/webhooks/wh_nope", None).await.status(),
        404
    );
    assert_eq!(
        app.admin_call(Method::GET, "/v1/webhooks/%FF", None).await.status(),
        404
    );
    let audit = app.admin_ok(Method::GET, "/v1/audit-events?limit=200", None, 200).await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"webhook.created") && actions.contains(&"webhook.deleted"),
        "{actions:?}"
    );
    assert!(!audit.to_string().contains(&secret));

    // Events and audit events of another workspace's key are not a
    // workspace key's to read: both lists answer 404, as the key's GET does.
    let (other_key, _) = app.key(&other, json!({"name": "theirs"})).await;
    for list in ["events", "audit-events"] {
        let theirs = as_manager(Method::GET, format!("/v1/{list}?key_id={other_key}"), None).await;
        assert_eq!(theirs.status(), 404, "{list}");
    }
    // A deleted key's history stays readable in both, to whoever could see the key.
    let (gone, _) = app.key(&other, json!({"name": "gone"})).await;
    app.admin_ok(Method::DELETE, &format!("/v1/keys/{gone}"), None, 200)
        .await;
    let audit = app
        .admin_ok(Method::GET, &format!("/v1/audit-events?key_id={gone}"), None, 200)
        .await;
    assert!(!audit["data"].as_array().unwrap().is_empty(), "{audit}");
    app.admin_ok(Method::GET, &format!("/v1/events?key_id={gone}"), None, 200)
        .await;
    let mine = as_manager(Method::GET, "/v1/events".into(), None).await;
    let mine: Value = mine.json().await.unwrap();
    assert!(mine["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["workspace_id"] == ws.as_str()));
}

/// A receiver that answers after 200 ms and notes each event's type, when
/// it arrived and when it was answered.
async fn slow_receiver() -> (String, Arc<Mutex<Vec<(String, Instant, Instant)>>>) {
    let seen: Arc<Mutex<Vec<(String, Instant, Instant)>>> = Arc::default();
    let log = seen.clone();
    let handler = move |body: String| {
        let log = log.clone();
        async move {
            let arrived = Instant::now();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let kind = serde_json::from_str::<Value>(&body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned();
            log.lock().unwrap().push((kind, arrived, Instant::now()));
            axum::http::StatusCode::OK
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let router = axum::Router::new().route("/hooks", axum::routing::post(handler));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn one_endpoint_gets_its_first_attempts_in_event_order_one_at_a_time() {
    let app = TestApp::builder().config(DRIVEN).start().await;
    let (url, seen) = slow_receiver().await;
    let ws = app.workspace("Acme").await;
    webhook(&app, json!({"url": url, "workspace_id": ws})).await;
    let (key_id, _) = app.key(&ws, json!({"name": "Production Server"})).await;
    app.admin_ok(
        Method::POST,
        &format!("/v1/keys/{key_id}/revoke"),
        Some(json!({"reason": "leaked"})),
        200,
    )
    .await;
    let round = deliver(&app).await;
    assert_eq!((round.delivered, round.failed), (2, 0), "{round:?}");

    let seen = seen.lock().unwrap().clone();
    let kinds: Vec<&str> = seen.iter().map(|(kind, _, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["key.created", "key.revoked"]);
    let (_, _, first_answered) = seen[0];
    let (_, second_arrived, _) = seen[1];
    assert!(
        second_arrived >= first_answered,
        "the second delivery waited for the answer to the first"
    );
}

/// A limit in shadow mode (issue 19): a stricter 5 a minute watched beside
/// the enforced 100. Nothing is refused; the 15 requests it would have
/// refused are counted exactly in `/metrics`, it is announced once per
/// window, and it reaches the rate-limit headers only with `headers.shadow`.
#[tokio::test]
async fn a_shadow_limit_counts_and_announces_but_never_refuses() {
    let app = TestApp::builder()
        .config(DRIVEN)
        .config(
            "[limiter]\ndefault_plan = \"watched\"\n[plans.watched]\n\
             limits = [{ requests = 100, per = \"1m\" }, { requests = 5, per = \"1m\", mode = \"shadow\" }]",
        )
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (key_id, key) = app.key(&ws, json!({"name": "watched"})).await;
    let now = app.clock.now();
    app.clock.advance(Duration::seconds(60 - now.timestamp() % 60));
    for i in 0..20 {
        let response = app.whoami(&key).await;
        assert_eq!(response.status(), 200, "request {i}: a shadow limit never refuses");
        assert_eq!(
            response.headers()["x-ratelimit-limit"],
            "100",
            "the headers describe the enforced limit"
        );
        assert!(!response.headers().contains_key("x-ratelimit-shadow-limit"), "opt-in");
        if i == 19 {
            let body: Value = response.json().await.unwrap();
            let shadow = &body["ratelimit"]["limits"][1];
            assert_eq!(
                (&shadow["mode"], &shadow["resource"], &shadow["remaining"]),
                (&json!("shadow"), &json!("default"), &json!(0)),
                "{body}"
            );
        }
    }
    let (text, _) = crate::metrics::scrape(&app).await;
    assert!(
        text.lines().any(|line| line == "keygate_shadow_refusals_total 15"),
        "{text}"
    );
    app.app.engine.usage().flush().await.unwrap();
    let events = events_of_key(&app, &key_id).await;
    assert_eq!(types_of(&events), ["ratelimit.shadow_exceeded", "key.created"]);
    let data = &events[0]["payload"]["data"];
    assert_eq!((data["limit"].as_u64(), data["window"].as_str()), (Some(5), Some("1m")));

    // `headers.shadow`: the client sees where it would stand, and is still admitted.
    app.edit_config(|config| config.headers.shadow = true);
    assert_eq!(app.reload().await.0, 200);
    let response = app.whoami(&key).await;
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(
        (header("x-ratelimit-limit"), header("x-ratelimit-shadow-limit")),
        ("100".to_owned(), "5".to_owned())
    );
    assert_eq!(header("x-ratelimit-shadow-remaining"), "0");
    assert_eq!(
        header("x-ratelimit-shadow-reset"),
        header("x-ratelimit-reset"),
        "the same minute"
    );
}
