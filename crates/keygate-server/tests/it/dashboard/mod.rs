//! The dashboard in a real browser: Debian's Chromium, headless, driven
//! through chromedriver (WebDriver). Each test starts its own chromedriver
//! with a fresh profile; browsers run one at a time, as 2 cores are shared.
//!
//! Without chromedriver these tests say so and pass, unless
//! `KEYGATE_REQUIRE_SERVICES=1` (CI), where a missing browser fails them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::header::COOKIE;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, MutexGuard};

use keygate_engine::Clock;

use crate::support::{round_robin, TestApp};

mod forms;

static ONE_BROWSER_AT_A_TIME: Mutex<()> = Mutex::const_new(());

struct Browser {
    client: Client,
    _driver: Child,
    _profile: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|path| path.is_file())
}

/// A headless Chromium, or `None` (after saying why) where there is none and CI does not require one.
async fn browser() -> Option<Browser> {
    browser_with(&[]).await
}

async fn browser_with(extra_args: &[&str]) -> Option<Browser> {
    let (Some(driver), Some(chromium)) = (find_program("chromedriver"), find_program("chromium")) else {
        assert!(
            std::env::var("KEYGATE_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "chromium and chromedriver are required (KEYGATE_REQUIRE_SERVICES=1); scripts/test.sh installs them"
        );
        eprintln!("skipped: chromium/chromedriver not installed (apt-get install chromium chromium-driver)");
        return None;
    };
    let turn = ONE_BROWSER_AT_A_TIME.lock().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let webdriver = format!("http://127.0.0.1:{port}");
    let profile = tempfile::tempdir().unwrap();
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                format!("--user-data-dir={}", profile.path().display()),
                "--window-size=1280,1000",
            ],
        },
    });
    let Value::Object(mut capabilities) = capabilities else {
        unreachable!()
    };
    let args = capabilities["goog:chromeOptions"]["args"].as_array_mut().unwrap();
    args.extend(extra_args.iter().map(|arg| json!(arg)));
    let mut last_error = None;
    for _ in 0..100 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&webdriver)
            .await
        {
            Ok(client) => {
                return Some(Browser {
                    client,
                    _driver: driver,
                    _profile: profile,
                    _turn: turn,
                })
            }
            Err(err) => last_error = Some(err.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start a session: {last_error:?}");
}

impl Browser {
    async fn goto(&self, app: &TestApp, path: &str) {
        self.goto_at(&app.admin, path).await;
    }

    /// `path` on another control-plane address (a proxy in front of nodes).
    async fn goto_at(&self, base: &str, path: &str) {
        self.client.goto(&format!("{base}{path}")).await.unwrap();
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.client.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
    }

    async fn value(&self, css: &str) -> String {
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.prop("value").await.unwrap().unwrap_or_default()
    }

    async fn source(&self) -> String {
        self.client.source().await.unwrap()
    }

    async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    /// Waits (up to 10 s) until `css` matches on the page: a click that
    /// submits a form may return before the next page has loaded.
    async fn wait_for(&self, css: &str) {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|err| panic!("{css} never appeared: {err}"));
    }

    /// Waits (up to 10 s) until the browser is on another page than `path`.
    async fn wait_to_leave(&self, path: &str) {
        for _ in 0..200 {
            if self.path().await != path {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("still on {path}");
    }

    async fn sign_in(&self, app: &TestApp, key: &str) {
        self.sign_in_at(&app.admin, key).await;
    }

    async fn sign_in_at(&self, base: &str, key: &str) {
        self.goto_at(base, "/dashboard/sign-in").await;
        self.fill("#key", key).await;
        self.click("form[action='/dashboard/sign-in'] button[type=submit]")
            .await;
        // Signed in: the page has a sign-out form; refused: an error.
        self.wait_for(".signout, .alert.error").await;
    }

    /// The session cookie (HttpOnly, so only WebDriver can read it), for requests outside the browser.
    async fn session_cookie(&self) -> String {
        let cookie = self.client.get_named_cookie("kg_session").await.unwrap();
        format!("kg_session={}", cookie.value())
    }

    /// Creates a key through the form and returns `(key id, plaintext from the reveal panel)`.
    async fn create_key(&self, app: &TestApp, workspace: &str, name: &str) -> (String, String) {
        self.goto(app, &format!("/dashboard/workspaces/{workspace}/keys")).await;
        self.click("a.button.primary").await;
        self.wait_for("#key-name").await;
        self.fill("#key-name", name).await;
        self.click("form button[type=submit].primary").await;
        self.wait_for("#revealed-key").await;
        let plaintext = self.value("#revealed-key").await;
        let id = self.path().await.rsplit('/').next().unwrap().to_owned();
        (id, plaintext)
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn close(self) {
        self.client.close().await.unwrap();
    }
}

/// One string field of every item of an admin API list.
fn each<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[field].as_str().unwrap())
        .collect()
}

/// A client that shows redirects instead of following them, as the tests check where they lead.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let code = body
        .split("\"code\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or(&body)
        .to_owned();
    (status, code)
}

/// Behind a trusted proxy that terminated TLS, the sign-in cookie is
/// `Secure`, also when the proxy's address reaches keygate IPv4-mapped
/// (a control plane on `[::]`): the dashboard asks the core's trusted-proxy
/// check, as the data plane does.
#[tokio::test]
async fn a_trusted_proxy_seen_as_an_ipv4_mapped_peer_gets_secure_cookies() {
    let app = TestApp::builder().admin_addr("[::]:0").start().await;
    let sign_in = format!("http://127.0.0.1:{}/dashboard/sign-in", app.app.admin_addr.port());
    let cookie = |proto: &'static str| {
        let (http, sign_in) = (&app.http, &sign_in);
        async move {
            let response = http
                .get(sign_in)
                .header("X-Forwarded-Proto", proto)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.headers()["set-cookie"].to_str().unwrap().to_owned()
        }
    };
    let over_https = cookie("https").await;
    assert!(over_https.contains("Secure"), "{over_https}");
    let over_http = cookie("http").await;
    assert!(!over_http.contains("Secure"), "{over_http}");
}

#[tokio::test]
async fn an_operator_creates_a_key_that_is_shown_once_and_revokes_it() {
    let Some(browser) = browser().await else { return };
    let app = TestApp::start().await;

    // Signed out, every page leads to the sign-in form.
    browser.goto(&app, "/dashboard/workspaces").await;
    assert_eq!(browser.path().await, "/dashboard/sign-in");
    browser.sign_in(&app, "kg_live_not_a_real_key").await;
    assert!(browser.text(".alert.error").await.contains("INVALID_API_KEY"));

    browser.sign_in(&app, &app.admin_key).await;
    assert_eq!(browser.path().await, "/dashboard/workspaces");
    browser.fill("#ws-name", "Acme Inc.").await;
    browser
        .click("form[action='/dashboard/workspaces'] button[type=submit]")
        .await;
    browser.wait_for("a.button.primary").await;
    let keys_path = browser.path().await;
    let workspace = keys_path.split('/').nth(3).unwrap().to_owned();
    assert!(
        workspace.starts_with("ws_") && keys_path.ends_with("/keys"),
        "{keys_path}"
    );

    let (key_id, plaintext) = browser.create_key(&app, &workspace, "Production Server").await;
    assert!(plaintext.starts_with("kg_live_"), "{plaintext}");
    assert!(browser
        .text("#reveal-panel")
        .await
        .contains("It will not be shown again"));
    browser.screenshot("reveal-panel").await;
    browser.click("[data-copy='revealed-key']").await;
    browser
        .client
        .wait()
        .at_most(Duration::from_secs(5))
        .for_element(Locator::XPath("//button[@data-copy and text()='Copied']"))
        .await
        .unwrap();
    assert_eq!(app.whoami(&plaintext).await.status(), 200);

    // Reload, back to the list, forward again: the key is on no page any more.
    browser.client.refresh().await.unwrap();
    assert!(!browser.source().await.contains(&plaintext));
    assert!(browser.client.find(Locator::Css("#reveal-panel")).await.is_err());
    browser
        .goto(&app, &format!("/dashboard/workspaces/{workspace}/keys"))
        .await;
    let row = browser.text(&format!("tr[data-key-id='{key_id}']")).await;
    assert!(row.contains("Production Server") && row.contains("active"), "{row}");
    // The masked key: the first and last 4 characters of the random part (a 6-character checksum follows it).
    let random = &plaintext["kg_live_".len()..plaintext.len() - 6];
    let masked = format!("kg_live_{}...{}", &random[..4], &random[random.len() - 4..]);
    assert!(row.contains(&masked), "{masked} in {row}");
    assert!(!browser.source().await.contains(&plaintext));
    browser.screenshot("key-list").await;
    browser.client.back().await.unwrap();
    assert!(!browser.source().await.contains(&plaintext));

    // Revoke it, with the confirmation dialog and a reason.
    browser.goto(&app, &format!("/dashboard/keys/{key_id}")).await;
    browser.fill("#reason", "Leaked in a CI log").await;
    browser.click("input[name=confirm]").await;
    browser.click("button.danger").await;
    browser.client.accept_alert().await.unwrap();
    browser.wait_for(".page-head .badge.revoked").await;
    assert_eq!(browser.text(".page-head .badge").await, "revoked");
    assert!(browser.source().await.contains("Leaked in a CI log"));
    let (status, code) = error_code(app.whoami(&plaintext).await).await;
    assert_eq!((status, code.as_str()), (401, "API_KEY_REVOKED"));

    // The audit log names the dashboard session's key as the actor.
    let events = app
        .admin_ok(
            reqwest::Method::GET,
            &format!("/v1/audit-events?key_id={key_id}"),
            None,
            200,
        )
        .await;
    let actions = each(&events, "action");
    assert_eq!(actions, ["key.revoked", "key.created"]);
    assert!(events["data"][0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("dashboard:key_"));
    browser.close().await;
}

#[tokio::test]
async fn rotating_with_an_hour_of_grace_keeps_both_keys_working() {
    let Some(browser) = browser().await else { return };
    let app = TestApp::start().await;
    let workspace = app.workspace("Rotation").await;
    browser.sign_in(&app, &app.admin_key).await;
    let (old_id, old_key) = browser.create_key(&app, &workspace, "Billing worker").await;

    browser
        .client
        .find(Locator::Css("#grace"))
        .await
        .unwrap()
        .select_by_value("1h")
        .await
        .unwrap();
    browser.click("form[action$='/rotate'] button[type=submit]").await;
    // The old key's page also had a reveal panel: wait for the new key's page.
    browser.wait_to_leave(&format!("/dashboard/keys/{old_id}")).await;
    browser.wait_for("#revealed-key").await;
    let new_key = browser.value("#revealed-key").await;
    let new_id = browser.path().await.rsplit('/').next().unwrap().to_owned();
    assert_ne!(new_id, old_id);
    assert_ne!(new_key, old_key);
    assert_eq!(app.whoami(&old_key).await.status(), 200);
    assert_eq!(app.whoami(&new_key).await.status(), 200);

    browser.goto(&app, &format!("/dashboard/keys/{old_id}")).await;
    let expected = (app.clock.now() + chrono::Duration::hours(1))
        .format("%Y-%m-%d %H:%M UTC")
        .to_string();
    assert_eq!(browser.text("#expires").await, expected);
    assert_eq!(browser.text("#rotated-to").await, new_id);
    // An hour later the old key is refused and the new one still works.
    app.clock.advance(chrono::Duration::hours(1));
    assert_eq!(error_code(app.whoami(&old_key).await).await.1, "API_KEY_EXPIRED");
    assert_eq!(app.whoami(&new_key).await.status(), 200);
    browser.close().await;
}

#[tokio::test]
async fn a_portal_link_opens_one_workspace_once() {
    let Some(browser) = browser().await else { return };
    let app = TestApp::start().await;
    let mine = app.workspace("Customer One").await;
    let theirs = app.workspace("Customer Two").await;
    let (my_key, _) = app.key(&mine, json!({"name": "mine"})).await;
    let (their_key, _) = app.key(&theirs, json!({"name": "theirs"})).await;

    let url = portal_link(&app, &mine).await;
    assert!(url.starts_with(&format!("{}/dashboard/portal/", app.admin)), "{url}");

    // A chat app's link preview GETs the link, twice: a page with one
    // button, no session, and the link still works.
    let http = no_redirects();
    for _ in 0..2 {
        let (status, cookie, _) = portal_get(&http, &url).await;
        assert_eq!(status, 200);
        assert!(cookie.starts_with("kg_sign_in="), "only the form's token: {cookie}");
    }

    browser.client.goto(&url).await.unwrap();
    assert_eq!(
        browser.path().await,
        url.replace(&app.admin, ""),
        "the page, not yet redeemed"
    );
    let portal_path = browser.path().await;
    browser.click("form[method=post] button[type=submit]").await;
    browser.wait_to_leave(&portal_path).await;
    assert_eq!(browser.path().await, format!("/dashboard/workspaces/{mine}/keys"));
    assert!(browser.source().await.contains(&my_key));
    assert!(
        !browser.source().await.contains("Workspaces</a>"),
        "no operator navigation"
    );
    browser.goto(&app, &format!("/dashboard/keys/{my_key}")).await;
    assert_eq!(browser.text("h1").await, "mine");

    // Everything of another workspace, and the operator pages, are 404.
    let cookie = browser.session_cookie().await;
    for path in [
        format!("/dashboard/keys/{their_key}"),
        format!("/dashboard/workspaces/{theirs}/keys"),
        format!("/dashboard/audit?workspace_id={theirs}"),
        "/dashboard/workspaces".to_owned(),
        format!("/dashboard/workspaces/{mine}"),
    ] {
        let response = http
            .get(format!("{}{path}", app.admin))
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        assert!(response.text().await.unwrap().contains("NOT_FOUND"), "{path}");
    }
    browser.goto(&app, &format!("/dashboard/keys/{their_key}")).await;
    assert_eq!(browser.text(".error-code").await, "NOT_FOUND");

    // The link is used up: its button now answers 404 and signs nobody in.
    let (_, cookie, csrf) = portal_get(&http, &url).await;
    let again = portal_post(&http, &url, &cookie, &csrf).await;
    assert_eq!(again.status(), 404);
    assert!(again.headers().get("set-cookie").is_none());
    browser.close().await;
}

/// Issue 18: two nodes on one store, behind a proxy that sends each request
/// to the other node in turn. One browser signs in, creates a key that is
/// shown once, revokes it and signs out, with every request alternating
/// nodes; the session is then gone on both.
#[tokio::test]
async fn two_nodes_serve_one_dashboard_user_request_by_request() {
    let Some(browser) = browser().await else { return };
    let a = TestApp::start().await;
    let b = TestApp::builder().store_of(&a).start().await;
    let proxy = round_robin(vec![a.admin.clone(), b.admin.clone()]).await;
    let workspace = a.workspace("Two nodes").await;

    browser.sign_in_at(&proxy.url, &a.admin_key).await;
    assert_eq!(browser.path().await, "/dashboard/workspaces");
    browser
        .goto_at(&proxy.url, &format!("/dashboard/workspaces/{workspace}/keys"))
        .await;
    browser.click("a.button.primary").await;
    browser.wait_for("#key-name").await;
    browser.fill("#key-name", "Across nodes").await;
    browser.click("form button[type=submit].primary").await;
    browser.wait_for("#revealed-key").await;
    let plaintext = browser.value("#revealed-key").await;
    let key_id = browser.path().await.rsplit('/').next().unwrap().to_owned();
    assert_eq!(a.whoami(&plaintext).await.status(), 200);
    // Shown once: reloaded on one node, then the other, it is gone.
    for _ in 0..2 {
        browser.client.refresh().await.unwrap();
        assert_eq!(browser.text("h1").await, "Across nodes");
        assert!(!browser.source().await.contains(&plaintext));
    }

    browser.fill("#reason", "Two nodes, one session").await;
    browser.click("input[name=confirm]").await;
    browser.click("button.danger").await;
    browser.client.accept_alert().await.unwrap();
    browser.wait_for(".page-head .badge.revoked").await;
    let key = a
        .admin_ok(reqwest::Method::GET, &format!("/v1/keys/{key_id}"), None, 200)
        .await;
    assert_eq!(key["status"], "revoked");

    let cookie = browser.session_cookie().await;
    browser.click(".signout button").await;
    browser.wait_for("#key").await;
    assert_eq!(browser.path().await, "/dashboard/sign-in");
    let http = no_redirects();
    for node in [&a, &b] {
        let response = http
            .get(format!("{}/dashboard/workspaces", node.admin))
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 303, "signed out on {}", node.admin);
    }
    let served: Vec<usize> = proxy
        .served
        .iter()
        .map(|n| n.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    assert!(
        served.iter().all(|&n| n >= 5),
        "both nodes served the session: {served:?}"
    );
    browser.close().await;
}

/// Issue 18: a portal link made on one node opens on another, and when two
/// nodes are asked to redeem it at the same moment exactly one session opens.
#[tokio::test]
async fn a_portal_link_raced_on_two_nodes_opens_exactly_one_session() {
    let a = TestApp::start().await;
    let b = TestApp::builder().store_of(&a).start().await;
    let workspace = a.workspace("Raced").await;
    let http = no_redirects();
    for _ in 0..5 {
        let on_a = portal_link(&a, &workspace).await;
        let on_b = on_a.replace(&a.admin, &b.admin);
        let (status, cookie, csrf) = portal_get(&http, &on_b).await;
        assert_eq!(status, 200, "the link made on A opens on B");
        let (first, second) = tokio::join!(
            portal_post(&http, &on_a, &cookie, &csrf),
            portal_post(&http, &on_b, &cookie, &csrf)
        );
        let mut outcomes: Vec<(u16, bool)> = [first, second]
            .iter()
            .map(|response| {
                let session = response
                    .headers()
                    .get("set-cookie")
                    .is_some_and(|c| c.to_str().unwrap().starts_with("kg_session="));
                (response.status().as_u16(), session)
            })
            .collect();
        outcomes.sort();
        assert_eq!(
            outcomes,
            [(303, true), (404, false)],
            "one wins, one is told the link is used"
        );
    }
}

/// A one-time portal link to `workspace`, from the admin API.
async fn portal_link(app: &TestApp, workspace: &str) -> String {
    let link = app
        .admin_ok(
            reqwest::Method::POST,
            "/v1/portal-sessions",
            Some(json!({"workspace_id": workspace})),
            201,
        )
        .await;
    link["url"].as_str().unwrap().to_owned()
}

/// GETs a portal link: its status, the cookie it sets and its form's token.
async fn portal_get(http: &reqwest::Client, url: &str) -> (u16, String, String) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let page = response.text().await.unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    (status, cookie, csrf)
}

async fn portal_post(http: &reqwest::Client, url: &str, cookie: &str, csrf: &str) -> reqwest::Response {
    http.post(url)
        .header(COOKIE, cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap()
}

/// A portal link's button needs its page's token: another site cannot post
/// a link of its choosing to sign a browser in.
#[tokio::test]
async fn a_portal_link_is_redeemed_only_by_its_own_pages_form() {
    let app = TestApp::start().await;
    let mine = app.workspace("Customer One").await;
    let url = portal_link(&app, &mine).await;
    let http = no_redirects();
    let (_, cookie, csrf) = portal_get(&http, &url).await;
    for (what, cookie, csrf) in [
        ("no cookie", "", csrf.as_str()),
        ("no token", cookie.as_str(), ""),
        ("another token", cookie.as_str(), "0000"),
    ] {
        let response = portal_post(&http, &url, cookie, csrf).await;
        assert_eq!(response.status(), 403, "{what}");
        assert!(response.headers().get("set-cookie").is_none(), "{what}");
    }
    // Refused posts used nothing up: the page's own form redeems it.
    let redeemed = portal_post(&http, &url, &cookie, &csrf).await;
    assert_eq!(redeemed.status(), 303);
    let session = redeemed.headers()["set-cookie"].to_str().unwrap();
    assert!(session.starts_with("kg_session="), "{session}");
}

#[tokio::test]
async fn a_form_post_without_the_csrf_token_is_rejected() {
    let Some(browser) = browser().await else { return };
    let app = TestApp::start().await;
    let workspace = app.workspace("Forms").await;
    browser.sign_in(&app, &app.admin_key).await;
    let cookie = browser.session_cookie().await;
    let csrf = browser.value("input[name=csrf]").await;
    assert_eq!(csrf.len(), 64);
    let http = no_redirects();

    let post = |body: String| {
        http.post(format!("{}/dashboard/workspaces/{workspace}/keys", app.admin))
            .header(COOKIE, &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    for body in [
        "name=Forged".to_owned(),
        "name=Forged&csrf=".to_owned(),
        format!("name=Forged&csrf={}", "0".repeat(64)),
    ] {
        let response = post(body.clone()).await.unwrap();
        assert_eq!(response.status(), 403, "{body}");
        assert!(response.text().await.unwrap().contains("FORBIDDEN"));
    }
    let listed = app
        .admin_ok(
            reqwest::Method::GET,
            &format!("/v1/workspaces/{workspace}/keys"),
            None,
            200,
        )
        .await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 0, "nothing was created");

    // The same post with the token works (303 to the new key's page).
    let response = http
        .post(format!("{}/dashboard/workspaces/{workspace}/keys", app.admin))
        .header(COOKIE, &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("name=Genuine&csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap();
    assert!(location.starts_with("/dashboard/keys/key_"), "{location}");

    // Signing in needs the sign-in form's own token too.
    let response = http
        .post(format!("{}/dashboard/sign-in", app.admin))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={}&csrf=x", app.admin_key))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("set-cookie").is_none());
    browser.close().await;
}

#[tokio::test]
async fn a_key_named_like_a_script_renders_as_text() {
    let Some(browser) = browser().await else { return };
    let app = TestApp::start().await;
    let workspace = app.workspace("<b>Bold</b> & Co").await;
    browser.sign_in(&app, &app.admin_key).await;
    let name = "<script>alert(1)</script>";
    let (key_id, _) = browser.create_key(&app, &workspace, name).await;
    assert_eq!(browser.text("h1").await, name);
    browser
        .goto(&app, &format!("/dashboard/workspaces/{workspace}/keys"))
        .await;
    let link = browser.text(&format!("tr[data-key-id='{key_id}'] a")).await;
    assert_eq!(link, name);
    let source = browser.source().await;
    assert!(source.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!source.contains(name));
    assert!(browser.text(".subnav .crumb").await.contains("<b>Bold</b> & Co"));
    assert!(browser.client.get_alert_text().await.is_err(), "no script ran");
    browser.close().await;
}

#[tokio::test]
async fn the_usage_chart_shows_the_gateway_traffic() {
    let Some(browser) = browser().await else { return };
    let app = TestApp::builder()
        .config("[limiter]\ndefault_plan = \"tiny\"\n[plans.tiny]\nlimits = [{ requests = 2, per = \"1m\" }]")
        .start()
        .await;
    let workspace = app.workspace("Traffic").await;
    let (key_id, key) = app
        .key(&workspace, json!({"name": "busy", "ip_allowlist": ["10.0.0.1/32"]}))
        .await;
    let call = |ip: &'static str| {
        app.http
            .get(app.gateway_url("/v1/whoami"))
            .header("X-API-Key", &key)
            .header("X-Forwarded-For", ip)
            .send()
    };
    let mut statuses = Vec::new();
    for ip in ["10.0.0.1", "10.0.0.1", "10.0.0.1", "10.9.9.9"] {
        statuses.push(call(ip).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 403]);
    app.app.engine.usage().flush().await.unwrap();

    browser.sign_in(&app, &app.admin_key).await;
    browser.goto(&app, &format!("/dashboard/keys/{key_id}")).await;
    assert_eq!(browser.text("#hourly-total").await, "(4 requests)");
    assert_eq!(browser.text("#daily-total").await, "(4 requests)");
    for (class, count) in [("admitted", "2"), ("rate-limited", "1"), ("denied", "1")] {
        let bars = browser
            .client
            .find_all(Locator::Css(&format!("#hourly-chart rect.{class}")))
            .await
            .unwrap();
        assert_eq!(bars.len(), 1, "{class}");
        assert_eq!(
            bars[0].attr("data-count").await.unwrap().as_deref(),
            Some(count),
            "{class}"
        );
    }
    // The last use is the last attempt, refused or not: who tried the key, from where.
    assert!(browser.text("#last-used").await.contains("from 10.9.9.9"));
    browser.client.set_window_size(1280, 1650).await.unwrap();
    browser.screenshot("key-page").await;
    browser.close().await;
}

#[tokio::test]
async fn old_keys_are_flagged_for_rotation() {
    let Some(browser) = browser().await else { return };
    let app = TestApp::builder().config("[keys]\nmax_age = \"90d\"").start().await;
    let workspace = app.workspace("Old keys").await;
    let (old, _) = app.key(&workspace, json!({"name": "old"})).await;
    app.clock.advance(chrono::Duration::days(91));
    let (fresh, _) = app.key(&workspace, json!({"name": "fresh"})).await;
    browser.sign_in(&app, &app.admin_key).await;
    browser
        .goto(&app, &format!("/dashboard/workspaces/{workspace}/keys"))
        .await;
    assert!(browser
        .text(&format!("tr[data-key-id='{old}']"))
        .await
        .contains("rotate"));
    assert!(!browser
        .text(&format!("tr[data-key-id='{fresh}']"))
        .await
        .contains("rotate"));
    browser.goto(&app, &format!("/dashboard/keys/{old}")).await;
    assert!(browser.text(".alert.nudge").await.contains("91 days old"));
    browser.close().await;
}

#[tokio::test]
async fn sessions_end_at_sign_out_when_idle_and_when_their_key_is_revoked() {
    let Some(browser) = browser().await else { return };
    let app = TestApp::start().await;
    let workspace = app.workspace("Sessions").await;
    let (manager_id, manager) = app
        .key(&workspace, json!({"name": "manager", "scopes": ["keys:manage"]}))
        .await;

    // A workspace key with keys:manage signs in to its own workspace only.
    browser.sign_in(&app, &manager).await;
    assert_eq!(browser.path().await, format!("/dashboard/workspaces/{workspace}/keys"));
    let cookie = browser.session_cookie().await;
    let http = no_redirects();
    let page = |cookie: String| {
        http.get(format!("{}/dashboard/workspaces/{workspace}/keys", app.admin))
            .header(COOKIE, cookie)
            .send()
    };
    assert_eq!(page(cookie.clone()).await.unwrap().status(), 200);
    app.admin_ok(
        reqwest::Method::POST,
        &format!("/v1/keys/{manager_id}/revoke"),
        Some(json!({})),
        200,
    )
    .await;
    let response = page(cookie.clone()).await.unwrap();
    assert_eq!(response.status(), 303, "revoking the key ends its sessions");
    assert_eq!(response.headers()["location"], "/dashboard/sign-in");

    // Idle for longer than the idle timeout (30m by default): signed out.
    browser.sign_in(&app, &app.admin_key).await;
    let cookie = browser.session_cookie().await;
    app.clock.advance(chrono::Duration::minutes(29));
    assert_eq!(page(cookie.clone()).await.unwrap().status(), 200);
    app.clock.advance(chrono::Duration::minutes(31));
    assert_eq!(page(cookie.clone()).await.unwrap().status(), 303);

    // Sign-out ends the session at once.
    browser.sign_in(&app, &app.admin_key).await;
    let cookie = browser.session_cookie().await;
    browser.click(".signout button").await;
    browser.wait_for("#key").await;
    assert_eq!(browser.path().await, "/dashboard/sign-in");
    assert_eq!(page(cookie).await.unwrap().status(), 303);
    browser.close().await;
}

/// What a script reads of the key list's layout: does the page or the table
/// scroll sideways, and is every row's status inside the window.
const KEY_LIST_LAYOUT: &str = r#"
    const wrap = document.querySelector('.table-wrap');
    const statuses = [...document.querySelectorAll('.keys td.status')].map(cell => {
        const box = cell.getBoundingClientRect();
        return box.width > 0 && box.left >= 0 && box.right <= window.innerWidth;
    });
    return {
        page_fits: document.documentElement.scrollWidth <= window.innerWidth,
        table_fits: wrap.scrollWidth <= wrap.clientWidth,
        statuses_in_view: statuses,
    };
"#;

#[tokio::test]
async fn the_key_list_fits_1280_px_and_a_phone_with_status_times_and_last_day_in_view() {
    let Some(browser) = browser().await else { return };
    let app = TestApp::builder()
        .config("[roles]\nreader = [\"invoices:read\"]\n")
        .start()
        .await;
    let workspace = app.workspace("Layout").await;
    let (busy_id, busy) = app.key(&workspace, json!({"name": "Busy worker"})).await;
    let long_name = "A key with a very long descriptive name that nobody would want to read in a table ".repeat(2);
    let many_scopes: Vec<String> = (0..12).map(|i| format!("service{i}:resource:read")).collect();
    let (wide_id, _) = app
        .key(
            &workspace,
            json!({"name": long_name.trim(), "scopes": many_scopes, "roles": ["reader"], "expires_in": "30d", "credits": {"remaining": 1_000_000, "refill": {"amount": 1_000_000, "every": "30d"}}}),
        )
        .await;
    let (revoked_id, _) = app.key(&workspace, json!({"name": "Old"})).await;
    app.admin_ok(
        reqwest::Method::POST,
        &format!("/v1/keys/{revoked_id}/revoke"),
        None,
        200,
    )
    .await;
    for _ in 0..5 {
        assert_eq!(app.whoami(&busy).await.status(), 200);
    }
    app.app.engine.usage().flush().await.unwrap();

    browser.client.set_window_size(1280, 900).await.unwrap();
    browser.sign_in(&app, &app.admin_key).await;
    let list = format!("/dashboard/workspaces/{workspace}/keys");
    browser.goto(&app, &list).await;
    let layout = browser.client.execute(KEY_LIST_LAYOUT, vec![]).await.unwrap();
    assert_eq!(
        layout,
        json!({"page_fits": true, "table_fits": true, "statuses_in_view": [true, true, true]}),
        "at 1280 px"
    );
    browser.screenshot("key-list-1280").await;
    let source = browser.client.source().await.unwrap();
    assert!(
        source.contains("1.0M credits left"),
        "the long key's credits, in view at 1280 px"
    );

    // The last day's requests: one bar for the hour they came in, and the total.
    let busy_row = format!("tr[data-key-id='{busy_id}']");
    let bars = browser
        .client
        .find_all(Locator::Css(&format!("{busy_row} .spark rect:not(.base)")))
        .await
        .unwrap();
    assert_eq!(bars.len(), 1);
    assert_eq!(browser.text(&format!("{busy_row} .activity .count")).await, "5");
    let idle_bars = browser
        .client
        .find_all(Locator::Css(&format!(
            "tr[data-key-id='{wide_id}'] .spark rect:not(.base)"
        )))
        .await
        .unwrap();
    assert!(idle_bars.is_empty());

    // Relative times, the exact UTC time on hover.
    let wide_row = format!("tr[data-key-id='{wide_id}']");
    let times = browser
        .client
        .find_all(Locator::Css(&format!("{wide_row} time")))
        .await
        .unwrap();
    let mut shown = Vec::new();
    for time in &times {
        let title = time.attr("title").await.unwrap().unwrap();
        assert!(
            title.ends_with(" UTC") && title.len() == "2026-12-05 01:00 UTC".len(),
            "{title}"
        );
        shown.push(time.text().await.unwrap());
    }
    assert_eq!(shown, ["just now", "in 1 month"], "created and expires; never used");
    app.clock.advance(chrono::Duration::days(3));
    browser.sign_in(&app, &app.admin_key).await; // the session has ended meanwhile
    browser.goto(&app, &list).await;
    assert_eq!(browser.text(&format!("{wide_row} time")).await, "3 days ago");
    assert!(
        browser.text(&format!("{busy_row} .activity .count")).await == "0",
        "a day has passed"
    );

    // A phone: one card per key, the status of each in view, nothing wider than the screen.
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.goto(&app, &list).await;
    let layout = browser.client.execute(KEY_LIST_LAYOUT, vec![]).await.unwrap();
    assert_eq!(
        layout,
        json!({"page_fits": true, "table_fits": true, "statuses_in_view": [true, true, true]}),
        "at 390 px"
    );
    browser.screenshot("key-list-phone").await;
    browser.close().await;
}
