//! The four seed products, each configured as its page describes, answering
//! its documented requests with its documented statuses and bodies.

use axum::http::Method;
use serde_json::{json, Value};

use crate::support::{echo_upstream, TestApp};

async fn body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The upstream's answer came back unchanged (its status, its own header,
/// its body) plus keygate's rate-limit headers; returns what the upstream saw.
async fn passed_through(response: reqwest::Response, limit: &str) -> Value {
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["x-upstream"], "echo");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-ratelimit-limit"], limit);
    assert!(headers.contains_key("x-ratelimit-remaining") && headers.contains_key("x-ratelimit-reset"));
    assert!(headers.contains_key("x-request-id"));
    let seen: Value = response.json().await.unwrap();
    for stripped in ["x-api-key", "authorization"] {
        assert!(
            seen["headers"].get(stripped).is_none(),
            "{stripped} reached the upstream"
        );
    }
    assert!(seen["headers"]["x-keygate-key-id"]
        .as_str()
        .unwrap()
        .starts_with("key_"));
    assert!(seen["headers"]["x-keygate-workspace-id"]
        .as_str()
        .unwrap()
        .starts_with("ws_"));
    seen
}

/// Evon CRM: `X-API-Key`, `{"error": ...}` bodies, `GET /organization`.
#[tokio::test]
async fn evon_crm() {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            r#"
            [keys]
            prefix = "evon"
            environments = ["prod", "dev"]
            [errors]
            format = "simple"
            [errors.messages]
            MISSING_API_KEY = "API key is required"
            INVALID_API_KEY = "Invalid API key"
            API_KEY_REVOKED = "Invalid API key"
            INSUFFICIENT_SCOPE = "Insufficient permissions"
            [plans.standard]
            limits = [{{ requests = 100, per = "1m" }}]
            [limiter]
            default_plan = "standard"
            [[routes]]
            path = "/organization"
            upstream = "{0}"
            [[routes]]
            path = "/organization/billing"
            upstream = "{0}"
            scopes = ["billing:read"]
            "#,
            upstream.url
        ))
        .start()
        .await;
    let ws = app.workspace("Your Organization").await;
    let (_, key) = app
        .key(&ws, json!({"name": "CRM sync", "scopes": ["organization:read"]}))
        .await;
    assert!(key.starts_with("evon_prod_"));
    let url = app.gateway_url("/organization");

    let missing = app
        .http
        .get(&url)
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(body(missing).await, (401, json!({"error": "API key is required"})));

    let wrong = app
        .http
        .get(&url)
        .header("X-API-Key", "your_api_key_here")
        .send()
        .await
        .unwrap();
    assert_eq!(body(wrong).await, (401, json!({"error": "Invalid API key"})));

    let forbidden = app
        .http
        .get(app.gateway_url("/organization/billing"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        body(forbidden).await,
        (403, json!({"error": "Insufficient permissions"}))
    );

    let ok = app
        .http
        .get(&url)
        .header("X-API-Key", &key)
        .header("Content-Type", "application/json")
        .send()
        .await
        .unwrap();
    let echoed = passed_through(ok, "100").await;
    assert_eq!(echoed["path"], "/organization");
    assert_eq!(echoed["headers"]["x-keygate-environment"], "prod");
}

/// echowin: `X-API-Key`, full-access keys (no scopes), its own messages.
#[tokio::test]
async fn echowin() {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            r#"
            [keys]
            prefix = "echo"
            [errors]
            format = "simple"
            [errors.messages]
            MISSING_API_KEY = "Missing X-API-Key header"
            INVALID_API_KEY = "Invalid API key"
            [[routes]]
            path = "/api/v1"
            upstream = "{}"
            "#,
            upstream.url
        ))
        .start()
        .await;
    let ws = app.workspace("Team").await;
    let (_, key) = app.key(&ws, json!({"name": "portal key"})).await;
    let url = app.gateway_url("/api/v1/contacts");

    assert_eq!(
        body(app.http.get(&url).send().await.unwrap()).await,
        (401, json!({"error": "Missing X-API-Key header"}))
    );
    let wrong = app
        .http
        .get(&url)
        .header("X-API-Key", "your-api-key-here")
        .send()
        .await
        .unwrap();
    assert_eq!(body(wrong).await, (401, json!({"error": "Invalid API key"})));
    let (status, echoed) = body(app.http.get(&url).header("X-API-Key", &key).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(echoed["path"], "/api/v1/contacts");
}

/// Evaligo: Bearer (recommended) or `X-API-Key`; `POST /flows/{id}/execute`.
#[tokio::test]
async fn evaligo() {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            r#"
            [keys]
            environments = ["production", "staging", "development"]
            [plans.free]
            limits = [{{ requests = 100, per = "1m" }}]
            [limiter]
            default_plan = "free"
            [[routes]]
            path = "/flows"
            methods = ["POST"]
            upstream = "{}"
            "#,
            upstream.url
        ))
        .start()
        .await;
    let ws = app.workspace("Workspace").await;
    let (_, key) = app
        .key(&ws, json!({"name": "Production", "environment": "production"}))
        .await;
    let url = app.gateway_url("/flows/your-flow-id/execute");
    for request in [
        app.http.post(&url).bearer_auth(&key),
        app.http.post(&url).header("X-API-Key", &key),
    ] {
        let response = request.json(&json!({"input": "value"})).send().await.unwrap();
        let echoed = passed_through(response, "100").await;
        assert_eq!(echoed["method"], "POST");
        assert_eq!(echoed["path"], "/flows/your-flow-id/execute");
        assert_eq!(echoed["headers"]["x-keygate-environment"], "production");
        assert!(echoed["headers"].get("authorization").is_none());
        assert!(echoed["headers"].get("x-api-key").is_none());
    }
    let unauthenticated = app
        .http
        .post(&url)
        .bearer_auth("YOUR_API_KEY")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let wrong_method = app.http.get(&url).bearer_auth(&key).send().await.unwrap();
    assert_eq!(wrong_method.status(), 404);
}

/// EnvoyX: envelope bodies word for word; invalid, revoked and expired keys are
/// all `403 INVALID_API_KEY`.
#[tokio::test]
async fn envoyx() {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            r#"
            [errors]
            format = "envelope"
            invalid_key_status = 403
            hide_key_state = true
            [errors.messages]
            MISSING_API_KEY = "API key is required. Include it in the X-API-Key header."
            INVALID_API_KEY = "The provided API key is invalid or has been revoked."
            [plans.standard]
            limits = [{{ requests = 1000, per = "1h" }}]
            [limiter]
            default_plan = "standard"
            [[routes]]
            path = "/api/v1/invoices/upload"
            methods = ["POST"]
            upstream = "{}"
            "#,
            upstream.url
        ))
        .start()
        .await;
    let ws = app.workspace("EnvoyX customer").await;
    let (key_id, key) = app.key(&ws, json!({"name": "Production Server"})).await;
    let url = app.gateway_url("/api/v1/invoices/upload");
    let missing_body = json!({
        "success": false, "status": 401, "code": "MISSING_API_KEY",
        "message": "API key is required. Include it in the X-API-Key header."
    });
    let invalid_body = json!({
        "success": false, "status": 403, "code": "INVALID_API_KEY",
        "message": "The provided API key is invalid or has been revoked."
    });

    assert_eq!(
        body(app.http.post(&url).send().await.unwrap()).await,
        (401, missing_body)
    );
    let wrong = app
        .http
        .post(&url)
        .header("X-API-Key", "YOUR_API_KEY")
        .send()
        .await
        .unwrap();
    assert_eq!(body(wrong).await, (403, invalid_body.clone()));

    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"%PDF-1.4 invoice".to_vec()).file_name("invoice.pdf"),
    );
    let uploaded = app
        .http
        .post(&url)
        .header("X-API-Key", &key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let echoed = passed_through(uploaded, "1000").await;
    assert!(echoed["headers"]["content-type"]
        .as_str()
        .unwrap()
        .starts_with("multipart/form-data"));
    assert_eq!(echoed["headers"]["x-keygate-key-id"], key_id.as_str());

    app.admin_ok(Method::POST, &format!("/v1/keys/{key_id}/revoke"), None, 200)
        .await;
    let revoked = app.http.post(&url).header("X-API-Key", &key).send().await.unwrap();
    assert_eq!(body(revoked).await, (403, invalid_body));
}
