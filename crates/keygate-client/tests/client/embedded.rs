//! The example service behind `KeygateLayer::embedded` (feature `embedded`):
//! an engine in this process, on the same PostgreSQL as a keygate node, as
//! one more node. Refusals come in the deployment's error format with the
//! rate-limit headers, the node is listed, and a revocation made through
//! the other node reaches it within a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate_client::tower::{EmbeddedNode, KeygateLayer};
use keygate_client::{Client, NewKey, NewWorkspace};
use keygate_engine::SystemClock;
use keygate_server::{App, ConfigSource};
use keygate_store::testsuite::{fresh_postgres_schema, postgres_url_for_schema};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::layer::{get, serve};

/// A fresh PostgreSQL schema, or `None` (skipped) where there is no
/// PostgreSQL and CI does not require one.
async fn postgres() -> Option<String> {
    let schema = fresh_postgres_schema().await;
    if schema.is_none() {
        assert!(
            std::env::var("KEYGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "PostgreSQL is required (KEYGATE_REQUIRE_SERVICES=1)"
        );
        eprintln!("skipped: no PostgreSQL on 127.0.0.1:5432");
    }
    schema.map(|schema| postgres_url_for_schema(&schema))
}

/// `GET /v1/nodes` of the node at `admin`.
async fn listed_nodes(admin: &str, key: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{admin}/v1/nodes"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_embedded_layer_decides_in_process_as_one_more_node() {
    let Some(store_url) = postgres().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("secrets.key");
    let secrets_key = keygate_core::secrets::Keyring::generate_key(&mut rand::thread_rng());
    std::fs::write(&key_file, format!("{secrets_key}\n")).unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ngateway_addr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"\n\
             [store]\nurl = \"{store_url}\"\n[secrets]\nkey_file = \"{}\"\n[access_log]\ntarget = \"off\"\n\
             [errors]\nformat = \"simple\"\n\
             [limiter]\ndefault_plan = \"standard\"\n[plans.standard]\nlimits = [{{ requests = 3, per = \"1m\" }}]\n",
            key_file.display()
        ),
    )
    .unwrap();
    // The keygate node the admin API is called on.
    let loaded = ConfigSource::file(Some(config.clone())).load().unwrap();
    let store = keygate_store::open(&store_url).await.unwrap();
    let app = App::start(loaded, store, Arc::new(SystemClock)).await.unwrap();
    let (_, admin_key) = app.engine.admin().create_admin_key("embedded test").await.unwrap();
    let admin = format!("http://{}", app.admin_addr);
    let client = Client::new(&admin, admin_key.expose());
    // The service's own node, from the same file, as a deployment's service would start it.
    let node = Arc::new(EmbeddedNode::from_config(Some(&config)).await.unwrap());
    let service = serve(KeygateLayer::embedded(node.clone())).await;

    let ws = client
        .create_workspace(&NewWorkspace {
            name: "Acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    let new_key = |scopes: &[&str]| NewKey {
        name: "k".into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let created = client.create_key(&ws, &new_key(&["invoices:read"])).await.unwrap();
    let key = created.key.expose_secret().to_owned();

    let (status, headers, body) = get(&service, Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key_id"], created.details.id.as_str());
    assert_eq!(body["workspace_id"], ws.as_str());
    assert_eq!(body["stale"], false);
    assert_eq!(
        headers["x-ratelimit-limit"], "3",
        "admitted responses carry the limit headers"
    );
    assert_eq!(headers["x-ratelimit-remaining"], "2");

    // Refusals in the deployment's format (`simple`: `{"error": ...}`), not the envelope.
    let (status, headers, body) = get(&service, None).await;
    assert_eq!(status, 401);
    assert!(body["error"].is_string() && body.get("success").is_none(), "{body}");
    assert!(headers.contains_key("www-authenticate"));
    // The last character changed, always to another one.
    let last = if key.ends_with('A') { 'B' } else { 'A' };
    let (status, _, body) = get(&service, Some(&format!("{}{last}", &key[..key.len() - 1]))).await;
    assert_eq!((status, body["error"].is_string()), (401, true), "{body}");
    let unscoped = client.create_key(&ws, &new_key(&["other"])).await.unwrap();
    let (status, _, _) = get(&service, Some(unscoped.key.expose_secret())).await;
    assert_eq!(status, 403);

    // The limit is charged here as at the gateway: 3 a minute.
    for remaining in ["1", "0"] {
        let (status, headers, _) = get(&service, Some(&key)).await;
        assert_eq!(
            (status, headers["x-ratelimit-remaining"].to_str().unwrap()),
            (200, remaining)
        );
    }
    let (status, headers, body) = get(&service, Some(&key)).await;
    assert_eq!(status, 429, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(headers["x-ratelimit-remaining"], "0");

    // One more node: listed next to the keygate node.
    let nodes = listed_nodes(&admin, admin_key.expose()).await;
    let listed = nodes["data"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{nodes}");
    assert!(listed.iter().any(|n| n["id"] == node.engine().nodes().id()), "{nodes}");

    // A key it has cached, revoked through the other node: refused here within a second.
    let other = client.create_key(&ws, &new_key(&["invoices:read"])).await.unwrap();
    let other_key = other.key.expose_secret().to_owned();
    assert_eq!(get(&service, Some(&other_key)).await.0, 200);
    client.revoke_key(&other.details.id, None).await.unwrap();
    let revoked_at = Instant::now();
    loop {
        let (status, _, _) = get(&service, Some(&other_key)).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "still admitted a second after the revoke"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Stopped, it leaves the list.
    node.shutdown().await;
    let nodes = listed_nodes(&admin, admin_key.expose()).await;
    assert_eq!(nodes["data"].as_array().unwrap().len(), 1, "{nodes}");
    app.shutdown().await;
}
