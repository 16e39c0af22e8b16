//! The control plane: workspaces and keys through their lifecycle,
//! authorization and isolation, audit events, verify, health and OpenAPI.

use axum::http::Method;
use serde_json::{json, Value};

use crate::support::TestApp;

#[tokio::test]
async fn workspaces_crud_and_paging() {
    let app = TestApp::start().await;
    let created = app
        .admin_ok(
            Method::POST,
            "/v1/workspaces",
            Some(json!({"name": "Acme", "ip_allowlist": ["10.0.0.0/8"]})),
            201,
        )
        .await;
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("ws_"));
    assert_eq!(created["ip_allowlist"], json!(["10.0.0.0/8"]));
    assert_eq!(
        app.admin_ok(Method::GET, &format!("/v1/workspaces/{id}"), None, 200)
            .await,
        created
    );

    let patched = app
        .admin_ok(
            Method::PATCH,
            &format!("/v1/workspaces/{id}"),
            Some(json!({"name": "Acme Inc", "ip_allowlist": []})),
            200,
        )
        .await;
    assert_eq!(patched["name"], "Acme Inc");
    assert_eq!(patched["ip_allowlist"], json!([]));
    let bad_plan = app
        .admin_call(
            Method::PATCH,
            &format!("/v1/workspaces/{id}"),
            Some(json!({"plan": "gold"})),
        )
        .await;
    assert_eq!(bad_plan.status(), 422);

    for i in 0..3 {
        app.workspace(&format!("extra {i}")).await;
    }
    let page = app.admin_ok(Method::GET, "/v1/workspaces?limit=2", None, 200).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = app
        .admin_ok(
            Method::GET,
            &format!("/v1/workspaces?limit=200&cursor={cursor}"),
            None,
            200,
        )
        .await;
    assert_eq!(rest["next_cursor"], Value::Null);
    // 4 created here plus the built-in admin workspace.
    assert_eq!(2 + rest["data"].as_array().unwrap().len(), 5);

    let (key_id, key) = app.key(id, json!({"name": "k"})).await;
    let deleted = app
        .admin_call(Method::DELETE, &format!("/v1/workspaces/{id}"), None)
        .await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        app.admin_call(Method::GET, &format!("/v1/workspaces/{id}"), None)
            .await
            .status(),
        404
    );
    assert_eq!(
        app.whoami(&key).await.status(),
        401,
        "deleting a workspace revokes its keys"
    );
    let key_view = app
        .admin_ok(Method::GET, &format!("/v1/keys/{key_id}"), None, 200)
        .await;
    assert_eq!(key_view["status"], "revoked");
    let admin_delete = app.admin_call(Method::DELETE, "/v1/workspaces/ws_admin", None).await;
    assert_eq!(admin_delete.status(), 409);
}

#[tokio::test]
async fn keys_crud_filters_and_the_plaintext_appears_once() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let created = app
        .admin_ok(
            Method::POST,
            &format!("/v1/workspaces/{ws}/keys"),
            Some(json!({"name": "Production Server", "environment": "test", "scopes": ["invoices:read"],
                        "metadata": {"owner": "ops"}, "expires_in": "90d", "ip_allowlist": ["2001:db8::/32", "203.0.113.7"]})),
            201,
        )
        .await;
    let plaintext = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(plaintext.starts_with("kg_test_") && id.starts_with("key_"));
    assert_eq!(
        created["masked"].as_str().unwrap(),
        format!("{}...{}", &plaintext[..12], &plaintext[36..40])
    );
    assert_eq!(created["ip_allowlist"], json!(["2001:db8::/32", "203.0.113.7/32"]));
    assert_eq!(created["status"], "active");

    let fetched = app.admin_ok(Method::GET, &format!("/v1/keys/{id}"), None, 200).await;
    assert!(!fetched.to_string().contains(plaintext));
    let mut expected = created.clone();
    expected.as_object_mut().unwrap().remove("key");
    assert_eq!(
        fetched, expected,
        "reading returns what creating returned, minus the key"
    );

    let patched = app
        .admin_ok(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"name": "Renamed", "expires_at": null, "scopes": ["*"]})),
            200,
        )
        .await;
    assert_eq!(patched["name"], "Renamed");
    assert_eq!(patched["expires_at"], Value::Null);
    assert_eq!(patched["scopes"], json!(["*"]));
    assert_eq!(patched["metadata"], json!({"owner": "ops"}), "untouched fields stay");

    let (_, _) = app.key(&ws, json!({"name": "live one"})).await;
    let (revoked_id, _) = app.key(&ws, json!({"name": "revoked one"})).await;
    app.admin_ok(Method::POST, &format!("/v1/keys/{revoked_id}/revoke"), None, 200)
        .await;
    let names = |v: Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = app
        .admin_ok(Method::GET, &format!("/v1/workspaces/{ws}/keys"), None, 200)
        .await;
    assert_eq!(names(all), ["revoked one", "live one", "Renamed"], "newest first");
    let test_env = app
        .admin_ok(
            Method::GET,
            &format!("/v1/workspaces/{ws}/keys?environment=test"),
            None,
            200,
        )
        .await;
    assert_eq!(names(test_env), ["Renamed"]);
    let revoked = app
        .admin_ok(
            Method::GET,
            &format!("/v1/workspaces/{ws}/keys?status=revoked"),
            None,
            200,
        )
        .await;
    assert_eq!(names(revoked), ["revoked one"]);

    let deleted = app.admin_ok(Method::DELETE, &format!("/v1/keys/{id}"), None, 200).await;
    assert_eq!(deleted["status"], "deleted");
    // Gone from its own address, as a DELETE says; still listed as deleted.
    for (method, path) in [
        (Method::GET, format!("/v1/keys/{id}")),
        (Method::GET, format!("/v1/keys/{id}/usage")),
        (Method::PATCH, format!("/v1/keys/{id}")),
        (Method::POST, format!("/v1/keys/{id}/revoke")),
        (Method::DELETE, format!("/v1/keys/{id}")),
    ] {
        let body = (method == Method::PATCH).then(|| json!({"name": "back"}));
        app.admin_ok(method, &path, body, 404).await;
    }
    let active = app
        .admin_ok(
            Method::GET,
            &format!("/v1/workspaces/{ws}/keys?status=active"),
            None,
            200,
        )
        .await;
    assert_eq!(names(active), ["live one"]);
    let deleted_list = app
        .admin_ok(
            Method::GET,
            &format!("/v1/workspaces/{ws}/keys?status=deleted"),
            None,
            200,
        )
        .await;
    assert_eq!(names(deleted_list), ["Renamed"]);
    assert_eq!(app.whoami(plaintext).await.status(), 401);
}

#[tokio::test]
async fn workspace_managers_are_isolated_both_ways() {
    let app = TestApp::start().await;
    let a = app.workspace("A").await;
    let b = app.workspace("B").await;
    let (a_key_id, _) = app.key(&a, json!({"name": "a data key"})).await;
    let (b_key_id, _) = app.key(&b, json!({"name": "b data key"})).await;
    let (_, a_manager) = app
        .key(&a, json!({"name": "a manager", "scopes": ["keys:manage"]}))
        .await;
    let (_, b_manager) = app.key(&b, json!({"name": "b manager", "scopes": ["keys:*"]})).await;
    let (_, full_access) = app.key(&a, json!({"name": "no scopes"})).await;

    for (manager, own_ws, own_key, other_ws, other_key) in [
        (&a_manager, &a, &a_key_id, &b, &b_key_id),
        (&b_manager, &b, &b_key_id, &a, &a_key_id),
    ] {
        let app = &app;
        let call = |method: Method, path: String, body: Option<Value>| async move {
            app.admin_call_as(manager, method, &path, body).await
        };
        assert_eq!(
            call(Method::GET, format!("/v1/workspaces/{own_ws}"), None)
                .await
                .status(),
            200
        );
        assert_eq!(
            call(Method::GET, format!("/v1/keys/{own_key}"), None).await.status(),
            200
        );
        assert_eq!(
            call(
                Method::POST,
                format!("/v1/workspaces/{own_ws}/keys"),
                Some(json!({"name": "x"}))
            )
            .await
            .status(),
            201
        );
        let listed: Value = call(Method::GET, "/v1/workspaces".into(), None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(listed["data"].as_array().unwrap().len(), 1);
        assert_eq!(listed["data"][0]["id"], own_ws.as_str());

        for (method, path, body) in [
            (Method::GET, format!("/v1/workspaces/{other_ws}"), None),
            (Method::GET, format!("/v1/workspaces/{other_ws}/keys"), None),
            (
                Method::POST,
                format!("/v1/workspaces/{other_ws}/keys"),
                Some(json!({"name": "x"})),
            ),
            (Method::GET, format!("/v1/keys/{other_key}"), None),
            (
                Method::PATCH,
                format!("/v1/keys/{other_key}"),
                Some(json!({"name": "pwned"})),
            ),
            (Method::POST, format!("/v1/keys/{other_key}/revoke"), None),
            (Method::POST, format!("/v1/keys/{other_key}/rotate"), None),
            (Method::DELETE, format!("/v1/keys/{other_key}"), None),
            (Method::GET, format!("/v1/keys/{other_key}/usage"), None),
            (Method::GET, format!("/v1/audit-events?workspace_id={other_ws}"), None),
        ] {
            let response = call(method.clone(), path.clone(), body).await;
            assert_eq!(response.status(), 404, "{method} {path}");
        }
        for (method, path, body) in [
            (Method::POST, "/v1/workspaces".to_owned(), Some(json!({"name": "mine"}))),
            (
                Method::PATCH,
                format!("/v1/workspaces/{own_ws}"),
                Some(json!({"plan": null})),
            ),
            (Method::DELETE, format!("/v1/workspaces/{own_ws}"), None),
        ] {
            let response = call(method.clone(), path.clone(), body).await;
            assert_eq!(response.status(), 403, "{method} {path}");
        }
        let audit: Value = call(Method::GET, "/v1/audit-events".into(), None)
            .await
            .json()
            .await
            .unwrap();
        assert!(audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["workspace_id"] == own_ws.as_str()));
    }
    let other_key_untouched = app
        .admin_ok(Method::GET, &format!("/v1/keys/{b_key_id}"), None, 200)
        .await;
    assert_eq!(other_key_untouched["name"], "b data key");

    let forbidden = app
        .admin_call_as(&full_access, Method::GET, &format!("/v1/workspaces/{a}/keys"), None)
        .await;
    assert_eq!(
        forbidden.status(),
        403,
        "an empty scope list does not grant keys:manage"
    );
    let body: Value = forbidden.json().await.unwrap();
    assert_eq!(body["code"], "FORBIDDEN");
}

#[tokio::test]
async fn every_change_writes_an_audit_event() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let (id, _) = app.key(&ws, json!({"name": "k"})).await;
    app.admin_ok(
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({"name": "k2"})),
        200,
    )
    .await;
    app.admin_ok(Method::POST, &format!("/v1/keys/{id}/rotate"), None, 201)
        .await;
    app.admin_ok(Method::POST, &format!("/v1/keys/{id}/revoke"), None, 200)
        .await;
    app.admin_ok(Method::DELETE, &format!("/v1/keys/{id}"), None, 200).await;
    app.admin_ok(
        Method::PATCH,
        &format!("/v1/workspaces/{ws}"),
        Some(json!({"disabled": true})),
        200,
    )
    .await;
    app.admin_call(Method::DELETE, &format!("/v1/workspaces/{ws}"), None)
        .await;
    let events = app
        .admin_ok(Method::GET, &format!("/v1/audit-events?workspace_id={ws}"), None, 200)
        .await;
    let actions: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "workspace.deleted",
            "workspace.updated",
            "key.deleted",
            "key.revoked",
            "key.rotated",
            "key.updated",
            "key.created",
            "workspace.created"
        ]
    );
    let admin_key_id = app
        .admin_ok(Method::GET, "/v1/audit-events?workspace_id=ws_admin", None, 200)
        .await["data"][0]["object_id"]
        .clone();
    for event in events["data"].as_array().unwrap() {
        assert_eq!(event["actor"], admin_key_id, "who");
        assert_eq!(event["actor_ip"], "127.0.0.1", "from where");
    }
    let by_key = app
        .admin_ok(Method::GET, &format!("/v1/audit-events?key_id={id}"), None, 200)
        .await;
    assert_eq!(by_key["data"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn verify_api_gives_the_gateway_decision() {
    let app = TestApp::builder()
        .config("[errors]\nformat = \"simple\"\ninvalid_key_status = 403")
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (id, key) = app
        .key(
            &ws,
            json!({"name": "k", "scopes": ["invoices:read"], "ip_allowlist": ["203.0.113.0/24"]}),
        )
        .await;
    let verify = |body: Value| app.admin_call(Method::POST, "/v1/keys/verify", Some(body));

    let ok: Value = verify(json!({"key": key, "scopes": ["invoices:read"], "ip": "203.0.113.5"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ok["valid"], true);
    assert_eq!(ok["key"]["id"], id.as_str());
    assert_eq!(ok["workspace"]["id"], ws.as_str());
    assert!(!ok.to_string().contains(&key));

    let cases = [
        (
            json!({"key": key, "scopes": ["invoices:write"], "ip": "203.0.113.5"}),
            403,
            "INSUFFICIENT_SCOPE",
        ),
        (json!({"key": key, "ip": "198.51.100.1"}), 403, "IP_NOT_ALLOWED"),
        (json!({"key": key}), 403, "IP_NOT_ALLOWED"),
        (json!({"key": "kg_live_nope"}), 403, "INVALID_API_KEY"),
        (json!({"key": key, "ip": "nope"}), 422, "VALIDATION_ERROR"),
    ];
    for (body, status, code) in cases {
        let response = verify(body.clone()).await;
        assert_eq!(response.status().as_u16(), status, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["code"], code,
            "envelope even though the data plane uses `simple`: {answer}"
        );
    }

    let (_, manager) = app
        .key(
            &app.workspace("Other").await,
            json!({"name": "m", "scopes": ["keys:manage"]}),
        )
        .await;
    let foreign = app
        .admin_call_as(
            &manager,
            Method::POST,
            "/v1/keys/verify",
            Some(json!({"key": key, "ip": "203.0.113.5"})),
        )
        .await;
    let answer: Value = foreign.json().await.unwrap();
    assert_eq!(
        answer["code"], "INVALID_API_KEY",
        "a workspace cannot probe another's keys"
    );

    app.app.engine.usage().flush().await.unwrap();
    let before: Value = app
        .admin_ok(Method::GET, &format!("/v1/keys/{id}/usage"), None, 200)
        .await;
    verify(json!({"key": key, "ip": "203.0.113.5", "dry_run": true})).await;
    app.app.engine.usage().flush().await.unwrap();
    let after: Value = app
        .admin_ok(Method::GET, &format!("/v1/keys/{id}/usage"), None, 200)
        .await;
    assert_eq!(before["data"], after["data"], "dry runs record nothing");
}

#[tokio::test]
async fn health_readiness_and_openapi() {
    let app = TestApp::start().await;
    let (_, health) = app.control_json("/healthz").await;
    assert_eq!(health["status"], "ok");
    let (status, ready) = app.control_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["dependencies"]["store"]["state"], "up");

    let spec: Value = app
        .http
        .get(format!("{}/openapi.json", app.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/workspaces",
        "/v1/workspaces/{id}",
        "/v1/workspaces/{id}/keys",
        "/v1/keys/{id}",
        "/v1/keys/{id}/revoke",
        "/v1/keys/{id}/rotate",
        "/v1/keys/{id}/usage",
        "/v1/keys/verify",
        "/v1/audit-events",
        "/readyz",
        "/healthz",
        "/metrics",
    ] {
        assert!(spec["paths"].get(path).is_some(), "{path} is documented");
    }
    assert!(spec["components"]["securitySchemes"].get("api_key").is_some());
    let event_types = &spec["components"]["schemas"]["CreateWebhook"]["properties"]["events"]["items"]["enum"];
    assert_eq!(
        event_types.as_array().map(Vec::len),
        Some(keygate_core::events::EventType::ALL.len()),
        "every event type is listed: {event_types}"
    );
    assert!(event_types
        .as_array()
        .unwrap()
        .contains(&json!("ratelimit.shadow_exceeded")));
    let hashes = &spec["components"]["schemas"]["LookupKeys"]["properties"]["hashes"];
    assert_eq!(
        (&hashes["maxItems"], &hashes["items"]["pattern"]),
        (&json!(500), &json!("^[0-9a-f]{64}$")),
        "{hashes}"
    );
    // No roles configured: a key can be given none, and the document says so.
    for schema in ["CreateKey", "UpdateKey"] {
        assert_eq!(
            spec["components"]["schemas"][schema]["properties"]["roles"]["maxItems"],
            0
        );
    }
    // Security is declared once, for the whole API: either scheme, one at a
    // time. Only the ops endpoints that need no key say otherwise.
    assert_eq!(spec["security"], json!([{"api_key": []}, {"bearer": []}]));
    assert!(spec["paths"]["/v1/workspaces"]["post"].get("security").is_none());
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            spec["paths"][open]["get"]["security"],
            json!([{}]),
            "{open} needs no key"
        );
    }
    // Every status the server answers with is declared (issue 15, section 5):
    // the errors any admin call can get are on every operation that needs a key.
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let statuses = operation["responses"].as_object().unwrap();
            if operation.get("security").is_some() {
                // GitHub's leak reports carry a signature instead of a key: 401 is a bad one.
                let signed = path == "/v1/leaks/github";
                assert_eq!(statuses.contains_key("401"), signed, "{method} {path} needs no key");
                continue;
            }
            for status in ["400", "401", "403", "422", "429", "503"] {
                assert!(
                    statuses.contains_key(status),
                    "{method} {path} does not declare {status}"
                );
            }
        }
    }
    let list = &spec["paths"]["/v1/workspaces"]["get"]["parameters"];
    let limit = list.as_array().unwrap().iter().find(|p| p["name"] == "limit").unwrap();
    assert_eq!(
        (limit["schema"]["minimum"].as_u64(), limit["schema"]["maximum"].as_u64()),
        (Some(1), Some(200))
    );
    assert!(spec["components"]["schemas"].get("CreatedKey").is_some());

    app.store.close().await;
    let (status, down) = app.control_json("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(down["dependencies"]["store"]["state"], "down");
    let write = app
        .admin_call(Method::POST, "/v1/workspaces", Some(json!({"name": "x"})))
        .await;
    assert_eq!(write.status(), 503, "admin writes answer 503 while the store is down");
}

#[tokio::test]
async fn a_test_key_manages_only_test_keys_unless_it_holds_keys_manage_all() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let (_, tester) = app
        .key(
            &ws,
            json!({"name": "test manager", "environment": "test", "scopes": ["keys:manage"]}),
        )
        .await;
    let (live_id, _) = app.key(&ws, json!({"name": "production", "environment": "live"})).await;
    let keys = format!("/v1/workspaces/{ws}/keys");

    // It creates test keys, by default too.
    let created = app
        .admin_call_as(&tester, Method::POST, &keys, Some(json!({"name": "ci"})))
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["environment"], "test");
    let test_id = created["id"].as_str().unwrap().to_owned();

    // Never a live key, with `*` or without, and it changes none.
    for scopes in [json!(["*"]), json!([])] {
        let refused = app
            .admin_call_as(
                &tester,
                Method::POST,
                &keys,
                Some(json!({"name": "escalate", "environment": "live", "scopes": scopes})),
            )
            .await;
        assert_eq!(refused.status(), 403);
        assert_eq!(refused.json::<Value>().await.unwrap()["code"], "FORBIDDEN");
    }
    for (method, path, body) in [
        (Method::POST, format!("/v1/keys/{live_id}/revoke"), None),
        (Method::POST, format!("/v1/keys/{live_id}/rotate"), None),
        (
            Method::PATCH,
            format!("/v1/keys/{live_id}"),
            Some(json!({"scopes": ["*"]})),
        ),
        (Method::DELETE, format!("/v1/keys/{live_id}"), None),
    ] {
        let refused = app.admin_call_as(&tester, method.clone(), &path, body).await;
        assert_eq!(refused.status(), 403, "{method} {path}");
    }
    let live = app
        .admin_ok(Method::GET, &format!("/v1/keys/{live_id}"), None, 200)
        .await;
    assert_eq!(live["status"], "active", "the live key is untouched");
    assert_eq!(
        app.admin_call_as(&tester, Method::POST, &format!("/v1/keys/{test_id}/revoke"), None)
            .await
            .status(),
        200
    );

    // keys:manage:all manages every environment.
    let (_, all) = app
        .key(
            &ws,
            json!({"name": "all", "environment": "test", "scopes": ["keys:manage", "keys:manage:all"]}),
        )
        .await;
    let live_by_all = app
        .admin_call_as(
            &all,
            Method::POST,
            &keys,
            Some(json!({"name": "live", "environment": "live"})),
        )
        .await;
    assert_eq!(live_by_all.status(), 201);
    assert_eq!(
        app.admin_call_as(&all, Method::POST, &format!("/v1/keys/{live_id}/revoke"), None)
            .await
            .status(),
        200
    );
}
