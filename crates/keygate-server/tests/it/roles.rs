//! Roles (issue 19): named bundles of scopes in the config. A key holding a
//! role is granted the union of its scopes and its roles' on the data plane
//! and the admin API; a reload that changes a role changes every key that
//! holds it.

use axum::http::Method;
use serde_json::{json, Value};

use crate::support::{echo_upstream, TestApp};

async fn status(app: &TestApp, path: &str, key: &str) -> u16 {
    let response = app
        .http
        .get(app.gateway_url(path))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_key_is_granted_its_scopes_and_its_roles_and_a_reload_changes_the_role_everywhere() {
    let upstream = echo_upstream().await;
    let app = TestApp::builder()
        .config(&format!(
            r#"
            [roles]
            reader = ["invoices:read", "contacts:read"]
            ops = ["keys:manage"]
            [[routes]]
            path = "/invoices"
            upstream = "{url}"
            scopes = ["invoices:read"]
            [[routes]]
            path = "/contacts"
            upstream = "{url}"
            scopes = ["contacts:read"]
            [[routes]]
            path = "/uploads"
            upstream = "{url}"
            scopes = ["invoices:write"]
            "#,
            url = upstream.url
        ))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (reader_id, reader) = app.key(&ws, json!({"name": "reader", "roles": ["reader"]})).await;
    let (_, writer) = app
        .key(
            &ws,
            json!({"name": "writer", "scopes": ["invoices:write"], "roles": ["reader", "reader"]}),
        )
        .await;

    // A role alone: its scopes, and nothing else (not the full access of an unscoped key).
    assert_eq!(status(&app, "/invoices", &reader).await, 200);
    assert_eq!(status(&app, "/contacts", &reader).await, 200);
    assert_eq!(status(&app, "/uploads", &reader).await, 403);
    // Scopes and a role: the union.
    for path in ["/invoices", "/contacts", "/uploads"] {
        assert_eq!(status(&app, path, &writer).await, 200, "{path}");
    }
    let (code, whoami) = json_of(app.whoami(&writer).await).await;
    assert_eq!(code, 200);
    assert_eq!(whoami["key"]["roles"], json!(["reader"]), "deduplicated: {whoami}");
    assert_eq!(whoami["key"]["scopes"], json!(["invoices:write"]));

    // The reload narrows the role: every key holding it loses the scope at once.
    app.edit_config(|config| {
        config.roles.insert("reader".into(), vec!["contacts:read".into()]);
    });
    assert_eq!(app.reload().await.0, 200);
    assert_eq!(status(&app, "/invoices", &reader).await, 403);
    assert_eq!(status(&app, "/invoices", &writer).await, 403);
    assert_eq!(status(&app, "/contacts", &reader).await, 200);

    // A role removed from the config grants nothing: the key is not left with full access.
    app.edit_config(|config| {
        config.roles.remove("reader");
    });
    assert_eq!(app.reload().await.0, 200);
    assert_eq!(status(&app, "/contacts", &reader).await, 403);
    let (code, body) = json_of(
        app.admin_call(
            Method::PATCH,
            &format!("/v1/keys/{reader_id}"),
            Some(json!({"roles": ["reader"]})),
        )
        .await,
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["data"]["field"], "roles", "{body}");

    // Taking the roles away leaves an unscoped key: full access again.
    let patched = app
        .admin_ok(
            Method::PATCH,
            &format!("/v1/keys/{reader_id}"),
            Some(json!({"roles": []})),
            200,
        )
        .await;
    assert_eq!(patched["roles"], json!([]));
    assert_eq!(status(&app, "/uploads", &reader).await, 200);
}

#[tokio::test]
async fn roles_are_validated_kept_by_rotation_and_may_grant_the_admin_api() {
    let app = TestApp::builder()
        .config("[roles]\nreader = [\"invoices:read\"]\nops = [\"keys:manage\"]\n")
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let keys = format!("/v1/workspaces/{ws}/keys");
    let create = |body: Value| app.admin_call(Method::POST, &keys, Some(body));
    for roles in [
        json!(["admin"]),
        json!(["has space"]),
        json!("reader"),
        json!(vec!["reader"; 17]),
    ] {
        let (code, body) = json_of(create(json!({"name": "k", "roles": roles})).await).await;
        assert_eq!(code, 422, "{roles}: {body}");
        let field = &body["data"]["field"];
        assert!(field.as_str().unwrap().starts_with("roles"), "{roles}: {body}");
    }
    let (code, body) = json_of(create(json!({"name": "k", "roles": ["nope"]})).await).await;
    assert_eq!(code, 422);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("configured roles: [ops, reader]"),
        "the message names what exists: {body}"
    );

    // The document lists the configured roles as the values a key's roles take.
    let (_, spec) = app.control_json("/openapi.json").await;
    for schema in ["CreateKey", "UpdateKey"] {
        let items = &spec["components"]["schemas"][schema]["properties"]["roles"]["items"];
        assert_eq!(items["enum"], json!(["ops", "reader"]), "{schema}: {items}");
    }

    let (id, _) = app.key(&ws, json!({"name": "reader", "roles": ["reader"]})).await;
    let rotated = app
        .admin_ok(Method::POST, &format!("/v1/keys/{id}/rotate"), None, 201)
        .await;
    assert_eq!(rotated["roles"], json!(["reader"]), "{rotated}");

    // keys:manage from a role opens the admin API for the key's own workspace.
    let (_, ops) = app.key(&ws, json!({"name": "ops", "roles": ["ops"]})).await;
    let (_, reader) = app.key(&ws, json!({"name": "reader 2", "roles": ["reader"]})).await;
    for (key, expected) in [(ops, 200), (reader, 403)] {
        let listed = app.admin_call_as(&key, Method::GET, &keys, None).await;
        assert_eq!(listed.status(), expected);
    }
}
