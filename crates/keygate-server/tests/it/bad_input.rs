//! Nasty input on both planes: every case gets its exact 4xx status and
//! code, never a 500, and nothing is lost.

use axum::http::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use crate::support::TestApp;

async fn status_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or("-").to_owned())
}

async fn whoami_with(app: &TestApp, headers: &[(&str, &[u8])]) -> (u16, String) {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    status_code(
        app.http
            .get(app.gateway_url("/v1/whoami"))
            .headers(map)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn data_plane_credentials() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let (_, key) = app.key(&ws, json!({"name": "k"})).await;
    let missing = (401, "MISSING_API_KEY".to_owned());
    let invalid = (401, "INVALID_API_KEY".to_owned());

    assert_eq!(whoami_with(&app, &[("x-api-key", b"")]).await, missing);
    assert_eq!(whoami_with(&app, &[("authorization", b"Bearer")]).await, missing);
    assert_eq!(whoami_with(&app, &[("authorization", b"Bearer ")]).await, missing);
    assert_eq!(
        whoami_with(&app, &[("authorization", b"Basic dXNlcjpwYXNz")]).await,
        missing
    );
    assert_eq!(
        whoami_with(&app, &[("x-api-key", &vec![b'a'; 8 * 1024])]).await,
        invalid
    );
    assert_eq!(
        whoami_with(&app, &[("x-api-key", &vec![b'k'; 64 * 1024])]).await,
        invalid
    );
    assert_eq!(
        whoami_with(&app, &[("x-api-key", b"kg_live_\xff\xfe\xfd")]).await,
        invalid
    );
    assert_eq!(
        whoami_with(&app, &[("x-api-key", "kg_live_ünïcödé".as_bytes())]).await,
        invalid
    );

    let mut wrong_checksum = key.clone().into_bytes();
    let last = wrong_checksum.len() - 1;
    wrong_checksum[last] = if wrong_checksum[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(whoami_with(&app, &[("x-api-key", &wrong_checksum)]).await, invalid);

    let unknown = keygate_core::KeyFormat::new("kg", &["live".into()])
        .unwrap()
        .generate("live", &mut rand::thread_rng())
        .unwrap();
    assert_eq!(
        whoami_with(&app, &[("x-api-key", unknown.expose().as_bytes())]).await,
        invalid
    );

    let bearer = format!("bearer {key}");
    assert_eq!(
        whoami_with(&app, &[("authorization", bearer.as_bytes())]).await,
        (200, "-".into())
    );
    assert_eq!(
        whoami_with(&app, &[("x-api-key", key.as_bytes()), ("x-api-key", key.as_bytes())]).await,
        (200, "-".into())
    );
    assert_eq!(
        whoami_with(
            &app,
            &[
                ("x-api-key", key.as_bytes()),
                ("x-api-key", unknown.expose().as_bytes())
            ]
        )
        .await,
        (400, "AMBIGUOUS_API_KEY".into())
    );
    let in_query = app
        .http
        .get(app.gateway_url(&format!("/v1/whoami?api_key={key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(status_code(in_query).await, missing, "the query string is never read");
}

#[tokio::test]
async fn unreadable_credentials_count_towards_the_throttle() {
    let app = TestApp::builder()
        .config("[security]\nmax_failed_attempts = 2")
        .start()
        .await;
    for _ in 0..2 {
        assert_eq!(
            whoami_with(&app, &[("x-api-key", b"\xff\xff"), ("x-forwarded-for", b"192.0.2.1")])
                .await
                .1,
            "INVALID_API_KEY"
        );
    }
    assert_eq!(
        whoami_with(&app, &[("x-api-key", b"\xff\xff"), ("x-forwarded-for", b"192.0.2.1")]).await,
        (429, "TOO_MANY_FAILED_ATTEMPTS".into())
    );
    assert_eq!(
        whoami_with(&app, &[("x-api-key", b"\xff\xff"), ("x-forwarded-for", b"192.0.2.2")])
            .await
            .1,
        "INVALID_API_KEY",
        "other clients are not affected"
    );
}

async fn admin_raw(app: &TestApp, method: Method, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let response = app
        .http
        .request(method, format!("{}{path}", app.admin))
        .header("X-API-Key", &app.admin_key)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn admin_json_is_validated_field_by_field() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let keys = format!("/v1/workspaces/{ws}/keys");
    let post = |body: Value| {
        admin_raw(
            &app,
            Method::POST,
            &keys,
            "application/json",
            body.to_string().into_bytes(),
        )
    };

    let cases = [
        (json!({"name": "k", "colour": "blue"}), 422, "colour"),
        (json!({"name": 42}), 422, "name"),
        (json!({"name": "k", "scopes": "invoices:read"}), 422, "scopes"),
        (json!({"name": "k", "scopes": [1]}), 422, "scopes[0]"),
        (json!({}), 422, "name"),
        (json!({"name": "   "}), 422, "name"),
        (json!({"name": "x".repeat(201)}), 422, "name"),
        // Checked as sent, as the document states it: a control character
        // is refused even where trimming would drop it.
        (json!({"name": "\tk"}), 422, "name"),
        (json!({"name": format!(" {}", "x".repeat(200))}), 422, "name"),
        (
            json!({"name": "k", "ip_allowlist": ["10.0.0.0/33"]}),
            422,
            "ip_allowlist",
        ),
        (json!({"name": "k", "ip_allowlist": ["not-an-ip"]}), 422, "ip_allowlist"),
        (json!({"name": "k", "scopes": ["a b"]}), 422, "scopes"),
        (json!({"name": "k", "environment": "prod"}), 422, "environment"),
        (json!({"name": "k", "environment": "admin"}), 422, "environment"),
        (json!({"name": "k", "expires_in": "5x"}), 422, "expires_in"),
        // Past the calendar's end: refused, not an overflow.
        (json!({"name": "k", "expires_in": "100000000d"}), 422, "expires_in"),
        (json!({"name": "k", "expires_at": "yesterday"}), 422, "expires_at"),
        (
            json!({"name": "k", "expires_at": "2001-01-01T00:00:00Z"}),
            422,
            "expires_at",
        ),
        (json!({"name": "k", "metadata": [1, 2]}), 422, "metadata"),
        // NUL anywhere (PostgreSQL cannot store it): refused on every store alike.
        (
            json!({"name": "k", "metadata": {"note": "a\u{0}b"}}),
            422,
            "metadata.note",
        ),
        (json!({"name": "k", "scopes": ["a", "b\u{0}"]}), 422, "scopes[1]"),
        (
            json!({"name": "k", "metadata": {"blob": "x".repeat(5000)}}),
            422,
            "metadata",
        ),
        (
            json!({"name": "k", "limits": [{"requests": -1, "per": "1m"}]}),
            422,
            "limits[0].requests",
        ),
        (
            json!({"name": "k", "limits": [{"requests": 10.5, "per": "1m"}]}),
            422,
            "limits[0].requests",
        ),
        (
            json!({"name": "k", "limits": [{"requests": 10, "per": "5x"}]}),
            422,
            "limits",
        ),
    ];
    for (body, status, field) in cases {
        let (got, answer) = post(body.clone()).await;
        assert_eq!(got, status, "{body} -> {answer}");
        assert_eq!(answer["code"], "VALIDATION_ERROR", "{body}");
        assert_eq!(answer["data"]["field"], field, "{body} -> {answer}");
    }

    let huge_name = json!({"name": "x".repeat(1024 * 1024)}).to_string().into_bytes();
    let (status, answer) = admin_raw(&app, Method::POST, &keys, "application/json", huge_name).await;
    assert_eq!((status, answer["code"].as_str()), (413, Some("PAYLOAD_TOO_LARGE")));

    let (status, answer) = admin_raw(&app, Method::POST, &keys, "application/json", b"{\"name\": ".to_vec()).await;
    assert_eq!((status, answer["code"].as_str()), (400, Some("INVALID_JSON")));
    let (status, answer) = admin_raw(
        &app,
        Method::POST,
        &keys,
        "application/json",
        b"{\"name\": \"\xff\"}".to_vec(),
    )
    .await;
    assert_eq!((status, answer["code"].as_str()), (400, Some("INVALID_JSON")));
    let (status, answer) = admin_raw(&app, Method::POST, &keys, "text/plain", b"name=k".to_vec()).await;
    assert_eq!((status, answer["code"].as_str()), (415, Some("UNSUPPORTED_MEDIA_TYPE")));

    let listed = app.admin_ok(Method::GET, &keys, None, 200).await;
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        0,
        "no refused request created anything"
    );

    // A whole number written with a fraction (as JSON Schema counts
    // integers, and as some clients write numbers) is that number.
    let (status, created) = post(json!({"name": "k", "limits": [{"requests": 10.0, "per": "1m"}]})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["limits"][0]["requests"], 10);
    // Read exactly, however large (schemathesis sent this one).
    let big = r#"{"name": "k2", "limits": [{"requests": 4336808333203146.0, "per": "1m"}]}"#;
    let (status, big) = admin_raw(&app, Method::POST, &keys, "application/json", big.as_bytes().to_vec()).await;
    assert_eq!(
        (status, big["limits"][0]["requests"].as_u64()),
        (201, Some(4_336_808_333_203_146)),
        "{big}"
    );
    let rotate = format!("/v1/keys/{}/rotate", created["id"].as_str().unwrap());
    let body = json!({"grace": "100000000d"}).to_string().into_bytes();
    let (status, answer) = admin_raw(&app, Method::POST, &rotate, "application/json", body).await;
    assert_eq!(
        (status, answer["data"]["field"].as_str()),
        (422, Some("grace")),
        "{answer}"
    );
}

#[tokio::test]
async fn admin_paths_queries_and_methods() {
    let app = TestApp::start().await;
    let ws = app.workspace("Acme").await;
    let cases = [
        (Method::GET, "/v1/nope".to_owned(), 404, "NOT_FOUND"),
        (Method::GET, "/v1/keys/key_doesnotexist".to_owned(), 404, "NOT_FOUND"),
        (Method::GET, "/v1/keys/..%2F..%2Fetc".to_owned(), 404, "NOT_FOUND"),
        (Method::GET, "/v1/workspaces/ws_%FF".to_owned(), 404, "NOT_FOUND"),
        (Method::PUT, format!("/v1/workspaces/{ws}"), 405, "METHOD_NOT_ALLOWED"),
        (
            Method::GET,
            format!("/v1/workspaces/{ws}/keys?limit=0"),
            422,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            format!("/v1/workspaces/{ws}/keys?limit=abc"),
            422,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            format!("/v1/workspaces/{ws}/keys?limit=100000"),
            422,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            format!("/v1/workspaces/{ws}/keys?status=sleeping"),
            422,
            "VALIDATION_ERROR",
        ),
        // A cursor or filter with NUL (PostgreSQL cannot hold it): 422 on every store.
        (
            Method::GET,
            format!("/v1/workspaces/{ws}/keys?limit=5&cursor=key_%00"),
            422,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            format!("/v1/workspaces/{ws}/keys?environment=li%00ve"),
            422,
            "VALIDATION_ERROR",
        ),
        (
            Method::GET,
            "/v1/keys/key_x/usage?granularity=week".to_owned(),
            422,
            "VALIDATION_ERROR",
        ),
    ];
    for (method, path, status, code) in cases {
        let response = app.admin_call(method.clone(), &path, None).await;
        assert_eq!(
            status_code(response).await,
            (status, code.to_owned()),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn admin_auth_failures_use_the_catalog() {
    let app = TestApp::start().await;
    let missing = app
        .http
        .get(format!("{}/v1/workspaces", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.headers()["www-authenticate"], "Bearer realm=\"keygate\"");
    assert_eq!(status_code(missing).await, (401, "MISSING_API_KEY".into()));
    let wrong = app
        .admin_call_as("kg_admin_nope", Method::GET, "/v1/workspaces", None)
        .await;
    assert_eq!(status_code(wrong).await, (401, "INVALID_API_KEY".into()));
    let garbage = app
        .http
        .get(format!("{}/v1/workspaces", app.admin))
        .header("X-API-Key", HeaderValue::from_bytes(b"\xff").unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(status_code(garbage).await, (401, "INVALID_API_KEY".into()));
}
