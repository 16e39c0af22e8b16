//! Key import (`POST /v1/workspaces/{id}/keys/import`,
//! crates/keygate-engine/src/admin/import.rs): keys issued elsewhere keep
//! working at the gateway, legacy ones only where `keys.legacy` is on, and a
//! re-run adds nothing.

use axum::http::Method;
use base64::prelude::{Engine as _, BASE64_URL_SAFE_NO_PAD};
use keygate_core::KeyFormat;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::{typo_of, TestApp};

const LEGACY: &str = "sk_live_51HxAbCdEfGhIjKl";
const HEX_SECRET: &str = "unkey_3ZZhexsecret";
const B64_SECRET: &str = "unkey_3ZZb64secret";

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn hex(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key in this deployment's format that the store has never seen, as an
/// earlier keygate (or a re-import) would have issued it.
fn own_format_key(env: &str) -> String {
    KeyFormat::default()
        .generate(env, &mut rand::thread_rng())
        .unwrap()
        .expose()
        .to_owned()
}

async fn import(app: &TestApp, workspace: &str, body: Value) -> (u16, Value) {
    let response = app
        .admin_call(
            Method::POST,
            &format!("/v1/workspaces/{workspace}/keys/import"),
            Some(body),
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn whoami(app: &TestApp, key: &str) -> (u16, Value) {
    let response = app.whoami(key).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn mixed_rows(own: &str) -> Value {
    json!([
        {"key": own, "name": "Own format", "scopes": ["read"]},
        {"key": LEGACY, "name": "Stripe-style", "environment": "test", "metadata": {"from": "kong"}},
        {"hash": hex(sha256(HEX_SECRET)), "hint": "unkey_3ZZ...", "name": "Unkey, hex"},
        {"hash": BASE64_URL_SAFE_NO_PAD.encode(sha256(B64_SECRET)), "name": "Unkey, base64",
         "expires_at": "2099-01-01T00:00:00Z"},
        {"hash": "not-a-hash", "name": "Bad hash"},
        {"key": "short", "name": "Too short"},
        {"key": LEGACY, "hash": hex(sha256(LEGACY)), "name": "Both"},
        {"key": typo_of(own), "name": "Typo"},
        {"hash": hex(sha256("unkey_other")), "name": "Bad environment", "environment": "staging"},
    ])
}

#[tokio::test]
async fn imported_keys_work_at_the_gateway_and_a_rerun_adds_nothing() {
    let app = TestApp::builder().config("[keys]\nlegacy = true\n").start().await;
    let ws = app.workspace("Migrated").await;
    let own = own_format_key("live");
    let rows = mixed_rows(&own);

    let (status, answer) = import(&app, &ws, json!({"keys": rows})).await;
    assert_eq!(status, 200, "{answer}");
    insta::assert_json_snapshot!("import_mixed_rows", answer);

    let (status, me) = whoami(&app, &own).await;
    assert_eq!((status, me["key"]["legacy"].clone()), (200, json!(false)), "{me}");
    assert_eq!(me["key"]["scopes"], json!(["read"]));
    for (key, name, environment) in [
        (LEGACY, "Stripe-style", "test"),
        (HEX_SECRET, "Unkey, hex", "live"),
        (B64_SECRET, "Unkey, base64", "live"),
    ] {
        let (status, me) = whoami(&app, key).await;
        assert_eq!(status, 200, "{name}: {me}");
        assert_eq!(me["key"]["name"], name);
        assert_eq!(me["key"]["environment"], environment);
        assert_eq!(me["key"]["legacy"], true);
    }
    let (_, me) = whoami(&app, LEGACY).await;
    assert_eq!(me["key"]["masked"], "sk_...jKl");
    let id = me["key"]["id"].as_str().unwrap();
    let view = app.admin_ok(Method::GET, &format!("/v1/keys/{id}"), None, 200).await;
    assert_eq!(
        (view["metadata"].clone(), view["legacy"].clone()),
        (json!({"from": "kong"}), json!(true))
    );

    // Unknown strings are still refused, typos of the own format without a lookup.
    for wrong in ["sk_live_51HxAbCdEfGhIjKm", "kg_live_typo"] {
        let (status, body) = whoami(&app, wrong).await;
        assert_eq!((status, body["code"].as_str()), (401, Some("INVALID_API_KEY")));
    }

    let (status, again) = import(&app, &ws, json!({"keys": rows})).await;
    assert_eq!(status, 200);
    assert_eq!(
        (again["imported"].clone(), again["existing"].clone()),
        (json!(0), json!(4)),
        "{again}"
    );

    let list = app
        .admin_ok(Method::GET, &format!("/v1/workspaces/{ws}/keys"), None, 200)
        .await;
    let legacy: Vec<bool> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["legacy"].as_bool().unwrap())
        .collect();
    assert_eq!((legacy.len(), legacy.iter().filter(|l| **l).count()), (4, 3));

    let metrics = app.http.get(format!("{}/metrics", app.admin)).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(text.contains("keygate_legacy_key_requests_total 4"), "{text}");

    let audit = app
        .admin_ok(Method::GET, &format!("/v1/audit-events?workspace_id={ws}"), None, 200)
        .await;
    let imported: Vec<&Value> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "keys.imported")
        .collect();
    assert_eq!(imported.len(), 1, "a re-run that adds nothing writes no event");
    assert_eq!(imported[0]["details"], json!({"keys": 4, "legacy": 3}));
}

#[tokio::test]
async fn without_legacy_keys_only_the_own_format_is_taken_unless_the_call_says_so() {
    let app = TestApp::start().await;
    let ws = app.workspace("Staged").await;
    let own = own_format_key("test");
    let rows = json!([{"key": own, "name": "Own"}, {"key": LEGACY, "name": "Legacy"}]);

    let (_, answer) = import(&app, &ws, json!({"keys": rows})).await;
    assert_eq!(answer["imported"], 1);
    assert_eq!(answer["legacy_keys_verified"], false);
    assert_eq!(answer["refused"][0]["row"], 1);
    assert_eq!(answer["refused"][0]["field"], "key");
    assert_eq!(whoami(&app, &own).await.0, 200);

    // Imported ahead of switching legacy keys on: stored, not yet verified.
    let (_, answer) = import(&app, &ws, json!({"legacy": true, "keys": rows})).await;
    assert_eq!(
        (answer["imported"].clone(), answer["existing"].clone()),
        (json!(1), json!(1))
    );
    let (status, body) = whoami(&app, LEGACY).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("INVALID_API_KEY")));
}

#[tokio::test]
async fn an_import_is_bounded_and_stays_in_its_workspace() {
    let app = TestApp::builder().config("[keys]\nlegacy = true\n").start().await;
    let (first, second) = (app.workspace("First").await, app.workspace("Second").await);
    let row = json!({"key": LEGACY, "name": "Shared?"});
    assert_eq!(import(&app, &first, json!({"keys": [row]})).await.1["imported"], 1);

    let (status, answer) = import(&app, &second, json!({"keys": [row]})).await;
    assert_eq!(status, 200);
    assert_eq!(answer["refused"][0]["message"], "is already a key of another workspace");
    assert_eq!(whoami(&app, LEGACY).await.1["workspace"]["id"], first.as_str());

    let (status, body) = import(&app, "ws_admin", json!({"keys": [row]})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("CONFLICT")));
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"key": format!("legacy_key_{i:05}"), "name": "n"}))
        .collect();
    for keys in [json!(too_many), json!([])] {
        let (status, body) = import(&app, &first, json!({"keys": keys})).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some("VALIDATION_ERROR")),
            "{body}"
        );
    }
    let (status, body) = import(
        &app,
        &first,
        json!({"keys": [{"key": LEGACY, "name": "n", "plan": "x"}]}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("VALIDATION_ERROR")),
        "{body}"
    );
}
