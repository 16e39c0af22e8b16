//! The dashboard over plain HTTP where a browser would not go (bad input,
//! forms without their token), its headers and layout, a seed's words,
//! portal links and alerts.

use super::*;

/// A signed-in dashboard session driven over plain HTTP, for the cases a
/// browser would never send.
struct FormClient {
    http: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

/// The value of the first `name="csrf"` field of a page.
fn csrf_of(page: &str) -> String {
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned()
}

fn set_cookie_value(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap().to_owned())
}

impl FormClient {
    async fn sign_in(app: &TestApp) -> Self {
        Self::sign_in_as(app, &app.admin_key).await
    }

    async fn sign_in_as(app: &TestApp, key: &str) -> Self {
        let http = no_redirects();
        let form = http
            .get(format!("{}/dashboard/sign-in", app.admin))
            .send()
            .await
            .unwrap();
        let sign_in_cookie = set_cookie_value(&form, "kg_sign_in").unwrap();
        let token = csrf_of(&form.text().await.unwrap());
        let response = http
            .post(format!("{}/dashboard/sign-in", app.admin))
            .header(COOKIE, &sign_in_cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("key={key}&csrf={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303);
        let cookie = set_cookie_value(&response, "kg_session").unwrap();
        let page = http
            .get(format!("{}/dashboard/audit", app.admin))
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        let csrf = csrf_of(&page.text().await.unwrap());
        Self {
            http,
            base: app.admin.clone(),
            cookie,
            csrf,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
    }
}

/// The status and the stable error code an HTML error page shows.
async fn page_error(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let code = body
        .split("class=\"error-code\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or("(no error code)")
        .to_owned();
    (status, code)
}

#[tokio::test]
async fn bad_dashboard_input_gets_a_clear_4xx_and_changes_nothing() {
    let app = TestApp::start().await;
    let workspace = app.workspace("Bad input").await;
    let (key_id, _) = app.key(&workspace, json!({"name": "target"})).await;
    let client = FormClient::sign_in(&app).await;
    let csrf = client.csrf.clone();
    let keys = format!("/dashboard/workspaces/{workspace}/keys");

    let huge = format!("csrf={csrf}&name={}", "a".repeat(100 * 1024));
    let cases: Vec<(&str, reqwest::Response, u16, &str)> = vec![
        (
            "oversized form",
            client.post(&keys, huge).await,
            422,
            "VALIDATION_ERROR",
        ),
        (
            "missing name",
            client.post(&keys, format!("csrf={csrf}")).await,
            422,
            "VALIDATION_ERROR",
        ),
        (
            "empty name",
            client.post(&keys, format!("csrf={csrf}&name=+")).await,
            422,
            "VALIDATION_ERROR",
        ),
        (
            "name too long",
            client
                .post(&keys, format!("csrf={csrf}&name={}", "n".repeat(201)))
                .await,
            422,
            "VALIDATION_ERROR",
        ),
        (
            "unknown environment",
            client.post(&keys, format!("csrf={csrf}&name=x&environment=prod")).await,
            422,
            "VALIDATION_ERROR",
        ),
        (
            "bad allowlist",
            client
                .post(&keys, format!("csrf={csrf}&name=x&ip_allowlist=10.0.0.300"))
                .await,
            422,
            "VALIDATION_ERROR",
        ),
        (
            "bad expiry",
            client.post(&keys, format!("csrf={csrf}&name=x&expires_in=soon")).await,
            422,
            "VALIDATION_ERROR",
        ),
        (
            "unknown status filter",
            client.get(&format!("{keys}?status=zombie")).await,
            422,
            "VALIDATION_ERROR",
        ),
        (
            "unknown workspace",
            client.get("/dashboard/workspaces/ws_nope/keys").await,
            404,
            "NOT_FOUND",
        ),
        (
            "unknown key",
            client.get("/dashboard/keys/key_nope").await,
            404,
            "NOT_FOUND",
        ),
        (
            "unknown asset",
            client.get("/dashboard/assets/nope.js").await,
            404,
            "NOT_FOUND",
        ),
        (
            "escaping asset path",
            client.get("/dashboard/assets/..%2F..%2FCargo.toml").await,
            404,
            "NOT_FOUND",
        ),
        ("unknown page", client.get("/dashboard/nowhere").await, 404, "NOT_FOUND"),
        (
            "garbage portal token",
            client.get("/dashboard/portal/%FF%FE").await,
            404,
            "NOT_FOUND",
        ),
        (
            "rotate with an unlisted grace",
            client
                .post(
                    &format!("/dashboard/keys/{key_id}/rotate"),
                    format!("csrf={csrf}&grace=99y"),
                )
                .await,
            422,
            "VALIDATION_ERROR",
        ),
        (
            "revoke without confirmation",
            client
                .post(
                    &format!("/dashboard/keys/{key_id}/revoke"),
                    format!("csrf={csrf}&reason=x"),
                )
                .await,
            422,
            "VALIDATION_ERROR",
        ),
        (
            "plan that does not exist",
            client
                .post("/dashboard/workspaces", format!("csrf={csrf}&name=x&plan=gold"))
                .await,
            422,
            "VALIDATION_ERROR",
        ),
    ];
    for (case, response, status, code) in cases {
        let (got_status, got_code) = page_error(response).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "{case}");
    }

    // Invalid UTF-8, raw or percent-encoded, is decoded lossily, never a 500.
    let mut raw = format!("csrf={csrf}&name=").into_bytes();
    raw.extend_from_slice(&[0xff, 0xfe, b'k']);
    let response = client.post(&keys, raw).await;
    assert_eq!(response.status(), 303);

    // Nothing above changed the target key, and only the lossy one was created.
    let key = app
        .admin_ok(reqwest::Method::GET, &format!("/v1/keys/{key_id}"), None, 200)
        .await;
    assert_eq!(key["status"], "active");
    let listed = app
        .admin_ok(
            reqwest::Method::GET,
            &format!("/v1/workspaces/{workspace}/keys"),
            None,
            200,
        )
        .await;
    let names = each(&listed, "name");
    assert_eq!(names, ["\u{fffd}\u{fffd}k", "target"]);

    // A cookie that names no session, empty or huge, leads to sign-in.
    for cookie in [
        "kg_session=",
        "kg_session=nope",
        &format!("kg_session={}", "x".repeat(4000)),
    ] {
        let response = client
            .http
            .get(format!("{}{keys}", app.admin))
            .header(COOKIE, cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303, "{}", &cookie[..cookie.len().min(20)]);
        assert_eq!(response.headers()["location"], "/dashboard/sign-in");
    }
}

#[tokio::test]
async fn pages_are_not_cached_framed_or_scripted_from_elsewhere() {
    let app = TestApp::start().await;
    let client = FormClient::sign_in(&app).await;
    let response = client.get("/dashboard/workspaces").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-frame-options"], "DENY");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    // The dashboard needs nothing from the network: every asset is served from the binary.
    let body = response.text().await.unwrap();
    let external: Vec<&str> = body.split(['"', '\'']).filter(|s| s.starts_with("http")).collect();
    assert!(external.is_empty(), "external references in the page: {external:?}");
    for asset in ["/dashboard/assets/app.css", "/dashboard/assets/app.js"] {
        assert_eq!(client.get(asset).await.status(), 200, "{asset}");
    }
}

#[tokio::test]
async fn pages_read_without_javascript_and_fit_a_phone() {
    let app = TestApp::start().await;
    let workspace = app.workspace("Small screens").await;
    let (key_id, _) = app
        .key(
            &workspace,
            json!({"name": "Mobile app", "scopes": ["invoices:read", "invoices:write"]}),
        )
        .await;

    // Scripts off: signing in and reading the key list and key page still work.
    let Some(no_script) = browser_with(&["--blink-settings=scriptEnabled=false"]).await else {
        return;
    };
    no_script.sign_in(&app, &app.admin_key).await;
    no_script
        .goto(&app, &format!("/dashboard/workspaces/{workspace}/keys"))
        .await;
    let row = no_script.text(&format!("tr[data-key-id='{key_id}']")).await;
    assert!(
        row.contains("Mobile app") && row.contains("invoices:read invoices:write"),
        "{row}"
    );
    no_script.goto(&app, &format!("/dashboard/keys/{key_id}")).await;
    assert_eq!(no_script.text("h1").await, "Mobile app");
    no_script.close().await;

    // A phone-sized window: nothing is wider than the screen (wide tables scroll in their own box).
    let Some(browser) = browser().await else { return };
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.sign_in(&app, &app.admin_key).await;
    for path in [
        format!("/dashboard/workspaces/{workspace}/keys"),
        format!("/dashboard/keys/{key_id}"),
        "/dashboard/nodes".to_owned(),
    ] {
        browser.goto(&app, &path).await;
        let fits = browser
            .client
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth;",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(fits, json!(true), "{path} is wider than a phone");
    }
    browser.screenshot("key-page-phone").await;
    browser.close().await;
}

/// Evaligo's page, followed literally: "Navigate to Settings → API Keys in your
/// Evaligo workspace", "Click Generate New API Key", "Copy the key immediately";
/// and the fourth seed's "delete old ones".
#[tokio::test]
async fn a_seed_deployment_speaks_its_own_words_and_deletes_old_keys() {
    let Some(browser) = browser().await else { return };
    let app = TestApp::builder()
        .config("[dashboard]\nproduct_name = \"Evaligo\"\ncreate_key_label = \"Generate New API Key\"")
        .start()
        .await;
    let workspace = app.workspace("Flows team").await;
    browser.sign_in(&app, &app.admin_key).await;
    assert_eq!(browser.text(".brand").await, "Evaligo");
    browser
        .click(&format!("a[href='/dashboard/workspaces/{workspace}/keys']"))
        .await;
    browser.wait_for(".subnav").await;
    assert_eq!(
        browser.text(".subnav").await.split_whitespace().collect::<Vec<_>>()[..5],
        ["Flows", "team", "/", "Settings", "/"]
    );
    browser.click(".subnav a[aria-current=page]").await;
    assert_eq!(browser.text("#create-key").await, "Generate New API Key");
    browser.click("#create-key").await;
    browser.wait_for("#key-name").await;
    assert_eq!(browser.text("h1").await, "Generate New API Key");
    browser.fill("#key-name", "Staging Environment").await;
    browser.click("form button[type=submit].primary").await;
    browser.wait_for("#revealed-key").await;
    let key = browser.value("#revealed-key").await;
    let bearer = app
        .http
        .get(app.gateway_url("/v1/whoami"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);

    // Delete: the key stops working and leaves the list, but not the audit trail.
    let key_id = browser.path().await.rsplit('/').next().unwrap().to_owned();
    browser.click("form[action$='/delete'] input[name=confirm]").await;
    browser.click("#delete-key").await;
    browser.client.accept_alert().await.unwrap();
    browser.wait_for("#create-key").await;
    assert!(browser
        .client
        .find(Locator::Css(&format!("tr[data-key-id='{key_id}']")))
        .await
        .is_err());
    assert_eq!(error_code(app.whoami(&key).await).await.1, "API_KEY_REVOKED");
    browser
        .goto(&app, &format!("/dashboard/workspaces/{workspace}/keys?status=deleted"))
        .await;
    assert!(browser
        .text(&format!("tr[data-key-id='{key_id}']"))
        .await
        .contains("deleted"));
    browser.close().await;
}

#[tokio::test]
async fn portal_links_are_authorized_validated_and_documented() {
    let app = TestApp::builder()
        .config("[dashboard]\npublic_url = \"https://keys.example.com/\"")
        .start()
        .await;
    let mine = app.workspace("Mine").await;
    let theirs = app.workspace("Theirs").await;
    let (_, manager) = app
        .key(&mine, json!({"name": "manager", "scopes": ["keys:manage"]}))
        .await;
    let (_, plain) = app.key(&mine, json!({"name": "plain"})).await;
    let create = |key: String, body: Value| {
        let app = &app;
        async move {
            let response = app
                .admin_call_as(&key, reqwest::Method::POST, "/v1/portal-sessions", Some(body))
                .await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };

    let (status, link) = create(app.admin_key.clone(), json!({"workspace_id": mine})).await;
    assert_eq!(status, 201);
    let url = link["url"].as_str().unwrap();
    assert!(url.starts_with("https://keys.example.com/dashboard/portal/"), "{url}");
    assert_eq!(link["workspace_id"], mine.as_str());
    let expires_at: chrono::DateTime<chrono::Utc> = link["expires_at"].as_str().unwrap().parse().unwrap();
    // The engine keeps milliseconds, the test's clock microseconds.
    let ten_minutes_on = app.clock.now() + chrono::Duration::minutes(10);
    assert!(
        (expires_at - ten_minutes_on).num_milliseconds().abs() <= 1,
        "{expires_at}"
    );

    // A workspace key with keys:manage may open its own workspace, and sees no other.
    assert_eq!(create(manager.clone(), json!({"workspace_id": mine})).await.0, 201);
    let (status, body) = create(manager.clone(), json!({"workspace_id": theirs})).await;
    assert_eq!((status, body["code"].as_str().unwrap()), (404, "NOT_FOUND"));
    let (status, body) = create(plain, json!({"workspace_id": mine})).await;
    assert_eq!((status, body["code"].as_str().unwrap()), (403, "FORBIDDEN"));

    for (body, status, code) in [
        (json!({"workspace_id": "ws_nope"}), 404, "NOT_FOUND"),
        (json!({}), 422, "VALIDATION_ERROR"),
        (json!({"workspace_id": 7}), 422, "VALIDATION_ERROR"),
        (json!({"workspace_id": mine, "admin": true}), 422, "VALIDATION_ERROR"),
    ] {
        let (got, response) = create(app.admin_key.clone(), body.clone()).await;
        assert_eq!((got, response["code"].as_str().unwrap()), (status, code), "{body}");
    }

    let (_, spec) = app.control_json("/openapi.json").await;
    assert!(spec["paths"]["/v1/portal-sessions"]["post"].is_object());
}

#[tokio::test]
async fn alerts_and_webhooks_add_an_endpoint_that_receives_signed_events() {
    let Some(browser) = browser().await else { return };
    let app = TestApp::start().await;
    let receiver = crate::webhooks::Receiver::start().await;
    let workspace = app.workspace("Acme").await;
    browser.sign_in(&app, &app.admin_key).await;
    browser
        .goto(&app, &format!("/dashboard/workspaces/{workspace}/keys"))
        .await;
    browser.click("nav.subnav a[href^='/dashboard/alerts']").await;
    browser.wait_for("#new-webhook").await;
    browser.fill("#webhook-url", &receiver.url).await;
    browser.fill("#webhook-events", "key.created key.revoked").await;
    browser.fill("#webhook-description", "Security pager").await;
    browser.click("#new-webhook button[type=submit]").await;
    browser.wait_for("#revealed-secret").await;
    let secret = browser.value("#revealed-secret").await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    let webhook_path = browser.path().await;
    browser.client.refresh().await.unwrap();
    assert!(!browser.source().await.contains(&secret), "the secret is shown once");

    let (key_id, _) = browser.create_key(&app, &workspace, "Production Server").await;
    // The key page lists what was announced about the key.
    assert!(browser.text("#key-events").await.contains("key.created"));
    // The node's own worker delivers it, signed with the secret shown once.
    let mut delivered = Vec::new();
    for _ in 0..100 {
        delivered = receiver.received();
        if !delivered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].event_type(), "key.created");
    assert_eq!(delivered[0].json()["data"]["key_id"], key_id.as_str());
    assert!(crate::webhooks::signature_is_valid(&secret, &delivered[0]));

    browser
        .goto(&app, &format!("/dashboard/alerts?workspace_id={workspace}"))
        .await;
    let events = browser.text("#event-table").await;
    assert!(events.contains("key.created") && events.contains(&key_id), "{events}");
    let endpoints = browser.text("#webhook-table").await;
    assert!(
        endpoints.contains(&receiver.url) && endpoints.contains("Security pager"),
        "{endpoints}"
    );
    browser.screenshot("alerts").await;
    browser.goto(&app, &webhook_path).await;
    let deliveries = browser.text("#delivery-table").await;
    assert!(
        deliveries.contains("delivered") && deliveries.contains("HTTP 200"),
        "{deliveries}"
    );
    browser.screenshot("webhook").await;

    // Delete, with the confirmation: it leaves the list and receives nothing more.
    browser.click("input[name=confirm]").await;
    browser.click("#delete-webhook").await;
    browser.client.accept_alert().await.unwrap();
    browser.wait_to_leave(&webhook_path).await;
    browser.wait_for("#webhook-table").await;
    assert!(!browser.text("#webhook-table").await.contains(&receiver.url));
    let hooks = app.admin_ok(reqwest::Method::GET, "/v1/webhooks", None, 200).await;
    assert!(hooks["data"].as_array().unwrap().is_empty());
    browser.close().await;
}

#[tokio::test]
async fn the_create_form_offers_the_configured_roles_and_gives_the_ticked_ones() {
    let app = TestApp::builder()
        .config("[roles]\nreader = [\"invoices:read\", \"contacts:read\"]\nops = [\"keys:manage\"]\n")
        .start()
        .await;
    let workspace = app.workspace("Roles").await;
    let client = FormClient::sign_in(&app).await;
    let keys = format!("/dashboard/workspaces/{workspace}/keys");
    let form = client.get(&format!("{keys}/new")).await.text().await.unwrap();
    for name in ["reader", "ops"] {
        assert!(form.contains(&format!(r#"name="roles" value="{name}""#)), "{form}");
    }
    assert!(
        form.contains("invoices:read contacts:read"),
        "what a role grants is shown"
    );

    let csrf = &client.csrf;
    let created = client
        .post(&keys, format!("csrf={csrf}&name=Two+roles&roles=reader&roles=ops"))
        .await;
    assert_eq!(created.status(), 303);
    let key_page = created.headers()["location"].to_str().unwrap().to_owned();
    let key_id = key_page.rsplit('/').next().unwrap();
    let key = app
        .admin_ok(reqwest::Method::GET, &format!("/v1/keys/{key_id}"), None, 200)
        .await;
    assert_eq!(key["roles"], json!(["reader", "ops"]), "{key}");
    let page = client.get(&key_page).await.text().await.unwrap();
    assert!(page.contains(r#"<dd class="roles">reader ops</dd>"#), "{page}");

    let unknown = client.post(&keys, format!("csrf={csrf}&name=Bogus&roles=bogus")).await;
    assert_eq!(page_error(unknown).await, (422, "VALIDATION_ERROR".to_owned()));
}

/// A key reported leaked (issue 20): the list filters it, its page says
/// when, by whom and where (linked only if it is a web address), and one
/// click issues its replacement, even though the report revoked it.
#[tokio::test]
async fn a_leaked_key_is_flagged_filtered_and_replaced_in_one_click() {
    let app = TestApp::start().await;
    let workspace = app.workspace("Leaks").await;
    let (leaked_id, leaked) = app
        .key(
            &workspace,
            json!({"name": "Leaked worker", "scopes": ["invoices:read"]}),
        )
        .await;
    let (_, other) = app.key(&workspace, json!({"name": "Quiet worker"})).await;
    let (odd_id, odd) = app.key(&workspace, json!({"name": "Odd report"})).await;
    let report = |key: &str, url: &str| {
        app.http
            .post(app.gateway_url("/v1/leaks/report"))
            .json(&json!({"key": key, "url": url}))
            .send()
    };
    assert_eq!(report(&leaked, "https://gist.example/abc").await.unwrap().status(), 202);
    assert_eq!(report(&odd, "javascript:alert(1)").await.unwrap().status(), 202);
    assert_eq!(app.whoami(&other).await.status(), 200);

    let client = FormClient::sign_in(&app).await;
    let keys = format!("/dashboard/workspaces/{workspace}/keys");
    let list = client.get(&format!("{keys}?status=leaked")).await.text().await.unwrap();
    assert!(list.contains("Leaked worker") && list.contains("Odd report"), "{list}");
    assert!(!list.contains("Quiet worker"), "only reported keys");
    assert!(list.contains(r#"<option value="leaked" selected>"#));

    let page = client
        .get(&format!("/dashboard/keys/{leaked_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"id="leak-banner""#), "{page}");
    assert!(page.contains(r#"<a href="https://gist.example/abc" rel="noopener noreferrer nofollow">"#));
    assert!(page.contains("by public report") && page.contains("It was revoked at once"));
    let odd_page = client
        .get(&format!("/dashboard/keys/{odd_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(odd_page.contains("<code>javascript:alert(1)</code>") && !odd_page.contains(r#"href="javascript"#));

    let csrf = &client.csrf;
    let rotated = client
        .post(
            &format!("/dashboard/keys/{leaked_id}/rotate"),
            format!("csrf={csrf}&grace=0s"),
        )
        .await;
    assert_eq!(rotated.status(), 303);
    let new_page = rotated.headers()["location"].to_str().unwrap().to_owned();
    let revealed = client.get(&new_page).await.text().await.unwrap();
    let plaintext = revealed
        .split(r#"id="revealed-key" class="mono" readonly value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let whoami: serde_json::Value = app.whoami(&plaintext).await.json().await.unwrap();
    assert_eq!(
        (&whoami["key"]["name"], &whoami["key"]["scopes"]),
        (&json!("Leaked worker"), &json!(["invoices:read"])),
        "the replacement has the same settings"
    );
    assert_eq!(app.whoami(&leaked).await.status(), 401, "the leaked key stays revoked");
    let after = client
        .get(&format!("/dashboard/keys/{leaked_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        after.contains(r#"id="leak-banner""#) && !after.contains(r#"id="leak-rotate""#),
        "replaced once"
    );
}

/// The workspace settings page sets what a leak report does, or goes back
/// to the config's policy; a value not offered is a clear 422.
#[tokio::test]
async fn a_workspace_s_leak_policy_is_set_from_its_settings_page() {
    let app = TestApp::start().await;
    let workspace = app.workspace("Policy").await;
    let client = FormClient::sign_in(&app).await;
    let path = format!("/dashboard/workspaces/{workspace}");
    let page = client.get(&path).await.text().await.unwrap();
    assert!(
        page.contains(r#"<option value="" selected>As configured (leaks.on_report)</option>"#),
        "{page}"
    );
    let csrf = &client.csrf;
    let save = |policy: &str| {
        client.post(
            &path,
            format!("csrf={csrf}&name=Policy&plan=&ip_allowlist=&leak_policy={policy}"),
        )
    };
    assert_eq!(save("expire").await.status(), 303);
    let api_path = format!("/v1/workspaces/{workspace}");
    let read = || app.admin_ok(reqwest::Method::GET, &api_path, None, 200);
    assert_eq!(read().await["leak_policy"], "expire");
    let page = client.get(&path).await.text().await.unwrap();
    assert!(page.contains(r#"<option value="expire" selected>"#));
    assert_eq!(
        page_error(save("delete").await).await,
        (422, "VALIDATION_ERROR".to_owned())
    );
    assert_eq!(save("").await.status(), 303);
    assert!(read().await["leak_policy"].is_null());
}

/// The key page shows what a key's credits have left and when they refill,
/// whether they are its own or its plan's.
#[tokio::test]
async fn the_key_page_shows_the_credits_left() {
    let app = TestApp::builder()
        .config("[limiter]\ndefault_plan = \"metered\"\n[plans.metered]\ncredits = { remaining = 5, refill = { amount = 5, every = \"30d\" } }")
        .start()
        .await;
    let workspace = app.workspace("Metered").await;
    let (plan_id, plan_key) = app.key(&workspace, json!({"name": "Plan credits"})).await;
    let (own_id, _) = app
        .key(
            &workspace,
            json!({"name": "Own credits", "credits": {"remaining": 1200}}),
        )
        .await;
    for _ in 0..2 {
        assert_eq!(app.whoami(&plan_key).await.status(), 200);
    }
    let client = FormClient::sign_in(&app).await;
    let page = |id: String| {
        let client = &client;
        async move { client.get(&format!("/dashboard/keys/{id}")).await.text().await.unwrap() }
    };
    let plan_page = page(plan_id).await;
    let credits = plan_page
        .split(r#"<dd id="credits">"#)
        .nth(1)
        .unwrap()
        .split("</dd>")
        .next()
        .unwrap();
    assert!(credits.contains("<strong>3 left</strong>, refilled"), "{credits}");
    assert!(
        credits.contains("in 1 month") && credits.contains("from its workspace or plan"),
        "{credits}"
    );
    let own_page = page(own_id).await;
    assert!(
        own_page.contains("<strong>1.2k left</strong>, never refilled"),
        "{own_page}"
    );
    assert!(own_page.contains("(set on this key: 1200, never refilled)"));
    let list = client
        .get(&format!("/dashboard/workspaces/{workspace}/keys"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        list.contains("1.2k credits left") && list.contains("3 credits left"),
        "{list}"
    );
}

/// Issue 18: the operator's nodes page lists the live nodes, this one
/// marked; a workspace's session neither sees the link nor the page (404,
/// as every operator page).
#[tokio::test]
async fn the_operator_sees_the_live_nodes() {
    let app = TestApp::start().await;
    let second = TestApp::builder().store_of(&app).start().await;
    let operator = FormClient::sign_in(&app).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let page = loop {
        let page = operator.get("/dashboard/nodes").await.text().await.unwrap();
        if page.matches("<tr>").count() == 3 {
            break page;
        }
        assert!(std::time::Instant::now() < deadline, "two nodes never listed: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for node in [&app, &second] {
        assert!(page.contains(node.admin.trim_start_matches("http://")), "{page}");
    }
    assert_eq!(page.matches("this node</span>").count(), 1, "{page}");
    assert!(
        page.contains(r#"<a href="/dashboard/nodes" aria-current="page">Nodes</a>"#),
        "{page}"
    );

    let workspace = app.workspace("Tenant").await;
    let (_, manager) = app
        .key(&workspace, json!({"name": "manager", "scopes": ["keys:manage"]}))
        .await;
    let tenant = FormClient::sign_in_as(&app, &manager).await;
    let own = tenant.get("/dashboard/audit").await.text().await.unwrap();
    assert!(!own.contains("/dashboard/nodes"), "no link for a workspace");
    assert_eq!(
        page_error(tenant.get("/dashboard/nodes").await).await,
        (404, "NOT_FOUND".into()),
        "operator pages do not exist for a workspace (docs/decisions.md)"
    );
}

/// Issue 18: a session lives in the store, not in the node that opened it:
/// with that node stopped, another node on the same store serves the same
/// cookie, and shows once the key created through it.
#[tokio::test]
async fn a_session_outlives_the_node_that_opened_it() {
    let first = TestApp::start().await;
    let second = TestApp::builder().store_of(&first).start().await;
    let workspace = first.workspace("Restarts").await;
    let client = FormClient::sign_in(&first).await;
    let _database = first.stop().await;
    let client = FormClient {
        base: second.admin.clone(),
        ..client
    };
    let page = client.get(&format!("/dashboard/workspaces/{workspace}/keys")).await;
    assert_eq!(page.status(), 200, "still signed in on another node");
    let created = client
        .post(
            &format!("/dashboard/workspaces/{workspace}/keys"),
            format!("csrf={}&name=After+the+restart&environment=live", client.csrf),
        )
        .await;
    assert_eq!(created.status(), 303);
    let key_page = created.headers()["location"].to_str().unwrap().to_owned();
    let shown = client.get(&key_page).await.text().await.unwrap();
    assert!(shown.contains("id=\"revealed-key\""), "shown once");
    let again = client.get(&key_page).await.text().await.unwrap();
    assert!(!again.contains("id=\"revealed-key\""), "and not again");
}

/// Issue 21: an imported key in another system's format is badged "legacy"
/// in the list and its page nudges to rotate it; a key of this
/// deployment's format imported alongside it is not.
#[tokio::test]
async fn an_imported_legacy_key_is_badged_and_nudged_to_rotate() {
    let app = TestApp::builder().config("[keys]\nlegacy = true\n").start().await;
    let workspace = app.workspace("Migrated").await;
    let own = keygate_core::KeyFormat::default()
        .generate("live", &mut rand::thread_rng())
        .unwrap();
    let rows = json!({"keys": [
        {"key": "sk_live_51HxAbCdEfGhIjKl", "name": "From Kong"},
        {"key": own.expose(), "name": "From keygate"},
    ]});
    let imported = app
        .admin_ok(
            axum::http::Method::POST,
            &format!("/v1/workspaces/{workspace}/keys/import"),
            Some(rows),
            200,
        )
        .await;
    assert_eq!(imported["imported"], 2, "{imported}");
    let id_of = |key: &str| {
        let app = &app;
        let key = key.to_owned();
        async move {
            let me: Value = app.whoami(&key).await.json().await.unwrap();
            me["key"]["id"].as_str().unwrap().to_owned()
        }
    };
    let (legacy_id, own_id) = (id_of("sk_live_51HxAbCdEfGhIjKl").await, id_of(own.expose()).await);
    let client = FormClient::sign_in(&app).await;
    let list = client
        .get(&format!("/dashboard/workspaces/{workspace}/keys"))
        .await
        .text()
        .await
        .unwrap();
    let row_of = |id: &str| {
        list.split(&format!(r#"data-key-id="{id}""#))
            .nth(1)
            .unwrap()
            .split("</tr>")
            .next()
            .unwrap()
            .to_owned()
    };
    assert!(row_of(&legacy_id).contains(">legacy</span>"), "{list}");
    assert!(!row_of(&own_id).contains(">legacy</span>"));
    let nudge = "imported in another system's format";
    let legacy_page = client
        .get(&format!("/dashboard/keys/{legacy_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(legacy_page.contains(nudge), "{legacy_page}");
    let own_page = client
        .get(&format!("/dashboard/keys/{own_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!own_page.contains(nudge));
}
