//! The example service (`examples/axum-service/`) behind `KeygateLayer`, with
//! a real keygate node: admitted keys reach the handler with their id,
//! refusals are keygate's own answers, a revocation holds from the next
//! request, and with keygate stopped a key admitted before keeps working
//! for `max_stale` while any other gets 503.

#[path = "../../examples/axum-service/service.rs"]
mod service;

use std::time::{Duration, Instant};

use keygate_client::tower::KeygateLayer;
use keygate_client::NewKey;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::Node;

/// The example's router on a free loopback port, behind `layer`.
pub(crate) async fn serve(layer: KeygateLayer) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, service::router(layer)).await });
    url
}

pub(crate) async fn get(service: &str, key: Option<&str>) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new().get(format!("{service}/invoices"));
    if let Some(key) = key {
        request = request.header("X-API-Key", key);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_example_service_checks_every_key_with_keygate() {
    let node = Node::start().await;
    let client = node.client();
    let ws = client
        .create_workspace(&keygate_client::NewWorkspace {
            name: "Acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    let key = |name: &str, scopes: &[&str], limits: Option<Value>| {
        let (client, ws, node) = (client.clone(), ws.clone(), &node);
        let (name, scopes) = (
            name.to_owned(),
            scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        async move {
            match limits {
                // Limits are not in `NewKey`: set through the API directly.
                Some(limits) => {
                    let body = json!({"name": name, "scopes": scopes, "limits": limits});
                    let created: Value = reqwest::Client::new()
                        .post(format!("{}/v1/workspaces/{ws}/keys", node.admin))
                        .header("X-API-Key", &node.admin_key)
                        .json(&body)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    (
                        created["id"].as_str().unwrap().to_owned(),
                        created["key"].as_str().unwrap().to_owned(),
                    )
                }
                None => {
                    let new = NewKey {
                        name,
                        scopes,
                        ..Default::default()
                    };
                    let created = client.create_key(&ws, &new).await.unwrap();
                    (created.details.id, created.key.expose_secret().to_owned())
                }
            }
        }
    };
    let (reader_id, reader) = key("Reader", &["invoices:read"], None).await;
    let (_, never_used) = key("Never used", &["invoices:read"], None).await;
    let (_, unscoped) = key("Writer", &["invoices:write"], None).await;
    let (leaked_id, leaked) = key("Leaked", &["invoices:read"], None).await;
    let (_, limited) = key(
        "Limited",
        &["invoices:read"],
        Some(json!([{"requests": 1, "per": "1m"}])),
    )
    .await;

    let service = serve(KeygateLayer::remote(client.clone())).await;
    let strict = serve(KeygateLayer::remote(client.clone()).max_stale(Duration::ZERO)).await;

    let (status, _, body) = get(&service, Some(&reader)).await;
    assert_eq!(
        (status, body["key_id"].as_str(), body["stale"].as_bool()),
        (200, Some(reader_id.as_str()), Some(false))
    );
    assert_eq!(body["workspace_id"], ws.as_str());

    let (status, headers, body) = get(&service, None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("MISSING_API_KEY")));
    assert!(headers.contains_key("www-authenticate"));
    let (status, _, body) = get(&service, Some("kg_live_typo")).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("INVALID_API_KEY")));
    let (status, _, body) = get(&service, Some(&unscoped)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("INSUFFICIENT_SCOPE")),
        "{body}"
    );
    assert_eq!(
        body["message"],
        "The API key lacks the scope this request needs: invoices:read."
    );

    assert_eq!(get(&service, Some(&limited)).await.0, 200);
    let (status, headers, body) = get(&service, Some(&limited)).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("RATE_LIMIT_EXCEEDED")));
    assert!(
        headers.contains_key("retry-after") && headers.contains_key("x-ratelimit-limit"),
        "{headers:?}"
    );

    assert_eq!(get(&service, Some(&leaked)).await.0, 200);
    client.revoke_key(&leaked_id, Some("leaked")).await.unwrap();
    let revoked_at = Instant::now();
    let (status, _, body) = get(&service, Some(&leaked)).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("API_KEY_REVOKED")));
    assert!(revoked_at.elapsed() < Duration::from_secs(1));

    assert_eq!(get(&strict, Some(&reader)).await.0, 200);
    node.app.shutdown().await;
    let (status, _, body) = get(&service, Some(&reader)).await;
    assert_eq!(
        (status, body["stale"].as_bool()),
        (200, Some(true)),
        "admitted before: {body}"
    );
    let (status, _, body) = get(&service, Some(&never_used)).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("SERVICE_UNAVAILABLE")));
    let (status, _, _) = get(&service, Some(&leaked)).await;
    assert_eq!(status, 503, "a key refused before is not let in from an older answer");
    let (status, _, _) = get(&strict, Some(&reader)).await;
    assert_eq!(status, 503, "max_stale 0: no last good answer is used");
}

/// A workspace for a test of its own.
async fn workspace(client: &keygate_client::Client) -> String {
    let new = keygate_client::NewWorkspace {
        name: "Acme".into(),
        ..Default::default()
    };
    client.create_workspace(&new).await.unwrap().id
}

/// A key of `ws` with one scope.
async fn new_key(client: &keygate_client::Client, ws: &str, name: &str, scope: &str) -> keygate_client::CreatedKey {
    let new = NewKey {
        name: name.into(),
        scopes: vec![scope.into()],
        ..Default::default()
    };
    client.create_key(ws, &new).await.unwrap()
}

#[tokio::test]
async fn the_remote_layer_refuses_in_the_deployments_error_format() {
    let node = Node::start_with("[errors]\nformat = \"problem\"\n").await;
    let client = node.client();
    let ws = workspace(&client).await;
    let unscoped = new_key(&client, &ws, "Writer", "invoices:write").await;
    let service = serve(KeygateLayer::remote(client.clone())).await;
    // keygate's refusal, as its gateway sends it: RFC 9457 with the code as an extension.
    let (status, headers, body) = get(&service, Some(unscoped.key.expose_secret())).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(
        (body["status"].as_u64(), body["code"].as_str()),
        (Some(403), Some("INSUFFICIENT_SCOPE"))
    );
    assert!(body["title"].is_string() && body.get("success").is_none(), "{body}");
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    let (status, headers, body) = get(&service, Some("kg_live_typo")).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("INVALID_API_KEY")));
    assert_eq!(headers["content-type"], "application/problem+json");
    // A layer whose own key keygate refuses does not tell callers their key is bad.
    let misconfigured = serve(KeygateLayer::remote(keygate_client::Client::new(
        &node.admin,
        "kg_admin_wrong",
    )))
    .await;
    let (status, _, body) = get(&misconfigured, Some(unscoped.key.expose_secret())).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("SERVICE_UNAVAILABLE")),
        "{body}"
    );
    // The verify API's own clients still get the envelope.
    let refused = client
        .verify(&keygate_client::Verify::new(unscoped.key.expose_secret().to_owned()))
        .await;
    assert!(refused.is_ok(), "no scope asked: admitted");
    let mut check = keygate_client::Verify::new("kg_live_typo");
    check.scopes = vec!["invoices:read".into()];
    let refused = client.verify(&check).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(keygate_client::ErrorCode::InvalidApiKey),
        "{refused}"
    );
}

#[tokio::test]
async fn with_cache_for_answers_are_reused_and_a_revocation_still_reaches_the_layer_within_a_second() {
    let node = Node::start().await;
    let client = node.client();
    let ws = workspace(&client).await;
    let created = new_key(&client, &ws, "Reader", "invoices:read").await;
    let key = created.key.expose_secret().to_owned();
    let service = serve(KeygateLayer::remote(client.clone()).cache_for(Duration::from_secs(60))).await;

    let (status, _, body) = get(&service, Some(&key)).await;
    assert_eq!(
        (status, body["cached"].as_bool()),
        (200, Some(false)),
        "the first is asked: {body}"
    );
    // The follower starts with the first request; once it hears from keygate, answers are reused.
    let started = Instant::now();
    loop {
        let (status, _, body) = get(&service, Some(&key)).await;
        assert_eq!(status, 200);
        if body["cached"] == true {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "never served from the cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.revoke_key(&created.details.id, Some("leaked")).await.unwrap();
    let revoked_at = Instant::now();
    loop {
        let (status, _, body) = get(&service, Some(&key)).await;
        if status == 401 {
            assert_eq!(body["code"], "API_KEY_REVOKED");
            break;
        }
        assert_eq!((status, body["cached"].as_bool()), (200, Some(true)));
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "still admitted a second after the revoke"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A layer whose key may not follow (a workspace key) caches nothing.
    let manager = new_key(&client, &ws, "Manager", "keys:manage").await;
    let other = new_key(&client, &ws, "Other", "invoices:read").await;
    let workspace_client = keygate_client::Client::new(&node.admin, manager.key.expose_secret());
    let service = serve(KeygateLayer::remote(workspace_client).cache_for(Duration::from_secs(60))).await;
    for _ in 0..20 {
        let (status, _, body) = get(&service, Some(other.key.expose_secret())).await;
        assert_eq!((status, body["cached"].as_bool()), (200, Some(false)), "{body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
