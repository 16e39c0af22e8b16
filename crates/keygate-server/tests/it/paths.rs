//! Canonical paths (crates/keygate-core/src/path.rs) against real upstreams:
//! every path a client can write is either refused, or matched to the route
//! whose upstream then serves it, never to a more open one. Each route has
//! its own upstream port, so the upstream's answer says which route
//! forwarded the request and which path the upstream itself resolved.

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{json, Value};

use crate::real_upstreams::{nginx, raw_get, wsgi, RawResponse, RealUpstream};
use crate::support::TestApp;

const NAMES: [&str; 3] = ["root", "admin", "pub"];

/// `/<prefix>` (any key), `/<prefix>/admin` (scope `admin:write`) and
/// `/<prefix>/pub` (`auth = false`), each to its own listener of `upstream`.
fn routes(prefix: &str, upstream: &RealUpstream) -> String {
    format!(
        r#"
        [[routes]]
        path = "/{prefix}"
        upstream = "{root}"
        [[routes]]
        path = "/{prefix}/admin"
        upstream = "{admin}"
        scopes = ["admin:write"]
        [[routes]]
        path = "/{prefix}/pub"
        upstream = "{public}"
        auth = false
        "#,
        root = upstream.url("root"),
        admin = upstream.url("admin"),
        public = upstream.url("pub"),
    )
}

/// The route, by listener name, whose prefix is longest for `path`.
fn route_name(prefix: &str, path: &str) -> Option<&'static str> {
    NAMES
        .into_iter()
        .map(|name| match name {
            "root" => (name, format!("/{prefix}")),
            other => (name, format!("/{prefix}/{other}")),
        })
        .filter(|(_, route)| {
            path.strip_prefix(route.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|(_, route)| route.len())
        .map(|(name, _)| name)
}

/// The resource an upstream serves for the path it decoded: dot segments
/// resolved and slashes merged, as a file server or a careful router would.
fn resolved(decoded: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    format!("/{}", segments.join("/"))
}

/// For a 200 from an upstream: which listener answered, and the route of the
/// path it resolved. The two must be the same route.
fn served(response: &RawResponse) -> (String, Option<&'static str>, String) {
    let text = response.text();
    let (name, path) = text
        .split_once(' ')
        .unwrap_or_else(|| panic!("not an upstream answer: {text}"));
    let prefix = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let resolved = resolved(path);
    (name.to_owned(), route_name(&prefix, &resolved), resolved)
}

fn code(response: &RawResponse) -> String {
    let body: Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|_| panic!("{} is not a keygate error: {}", response.status, response.text()));
    body["code"].as_str().unwrap_or_default().to_owned()
}

struct Setup {
    app: TestApp,
    reader: String,
    admin: String,
    _upstreams: (RealUpstream, RealUpstream),
}

async fn setup(extra: &str) -> Option<Setup> {
    let nginx = nginx(&NAMES).await?;
    let wsgi = wsgi(&NAMES).await?;
    let app = TestApp::builder()
        .config(extra)
        .config(&routes("ng", &nginx))
        .config(&routes("wsgi", &wsgi))
        .start()
        .await;
    let ws = app.workspace("Acme").await;
    let (_, reader) = app.key(&ws, json!({"name": "reader", "scopes": ["read"]})).await;
    let (_, admin) = app.key(&ws, json!({"name": "admin", "scopes": ["admin:write"]})).await;
    Some(Setup {
        app,
        reader,
        admin,
        _upstreams: (nginx, wsgi),
    })
}

#[tokio::test]
async fn the_red_team_paths_are_refused_or_checked_as_the_admin_route() {
    let Some(setup) = setup("").await else { return };
    let gateway = &setup.app.gateway;
    let reader = [("X-API-Key", setup.reader.as_str())];
    for prefix in ["ng", "wsgi"] {
        let direct = raw_get(gateway, format!("/{prefix}/admin/secret").as_bytes(), &reader).await;
        assert_eq!((direct.status, code(&direct)), (403, "INSUFFICIENT_SCOPE".into()));
        // With a key that lacks the admin scope: each is the admin route.
        for variant in [
            "/public/../admin/secret",
            "/public/%2e%2e/admin/secret",
            "/public/%2E%2E/admin/secret",
            "//admin/secret",
            "/./admin/secret",
            "/%61dmin/secret",
            "/pub/./../admin/secret",
        ] {
            let response = raw_get(gateway, format!("/{prefix}{variant}").as_bytes(), &reader).await;
            assert_eq!(
                (response.status, code(&response)),
                (403, "INSUFFICIENT_SCOPE".into()),
                "{prefix}{variant}"
            );
        }
        // With no key: through the open route to the admin area.
        let climbed = raw_get(gateway, format!("/{prefix}/pub/../admin/secret").as_bytes(), &[]).await;
        assert_eq!((climbed.status, code(&climbed)), (401, "MISSING_API_KEY".into()));
        // What an upstream could read differently is refused, key or not.
        for refused in [
            "/pub/..%2fadmin/secret",
            "/pub/..%2Fadmin/secret",
            "/admin%2fsecret",
            "/pub/..%5cadmin/secret",
            "/pub/..\\admin/secret",
            "/pub/..;/admin/secret",
            "/pub/%2e%2e;x/admin/secret",
            "/../../etc/passwd",
            "/pub/%00",
            "/pub/%0d%0aX-Injected:%201",
            "/pub/%ff",
            "/pub/%zz",
        ] {
            for headers in [&reader[..], &[]] {
                let response = raw_get(gateway, format!("/{prefix}{refused}").as_bytes(), headers).await;
                assert_eq!(
                    (response.status, code(&response)),
                    (400, "INVALID_PATH".into()),
                    "{prefix}{refused}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_upstream_receives_the_path_that_was_authorised() {
    let Some(setup) = setup("").await else { return };
    let admin = [("X-API-Key", setup.admin.as_str())];
    for prefix in ["ng", "wsgi"] {
        for variant in [
            "/public/../admin/secret",
            "/%61dmin//secret",
            "/pub/%2e%2e/admin/./secret",
        ] {
            let target = format!("/{prefix}{variant}");
            let response = raw_get(&setup.app.gateway, target.as_bytes(), &admin).await;
            assert_eq!(response.status, 200, "{target}: {}", response.text());
            // The upstream saw the canonical path itself, not just the same resource.
            assert_eq!(response.text(), format!("admin /{prefix}/admin/secret"), "{target}");
        }
        // Escapes of other characters reach it as they were written (decoded once).
        let response = raw_get(
            &setup.app.gateway,
            format!("/{prefix}/pub/caf%c3%a9%20x").as_bytes(),
            &[],
        )
        .await;
        assert_eq!(response.text(), format!("pub /{prefix}/pub/caf\u{e9} x"));
    }
}

#[tokio::test]
async fn escaped_slashes_can_be_kept_and_slashes_left_unmerged() {
    let Some(setup) = setup("[server]\nescaped_slashes = \"keep\"\nmerge_slashes = false\n").await else {
        return;
    };
    let gateway = &setup.app.gateway;
    // nginx decodes `%2F` in `$uri` but routes on the segments keygate saw.
    let response = raw_get(gateway, b"/ng/pub/a%2fb", &[]).await;
    assert_eq!((response.status, response.text()), (200, "pub /ng/pub/a/b".into()));
    let response = raw_get(gateway, b"/wsgi/pub//x", &[]).await;
    assert_eq!((response.status, response.text()), (200, "pub /wsgi/pub//x".into()));
    let response = raw_get(gateway, b"/ng/pub/%00", &[]).await;
    assert_eq!((response.status, code(&response)), (400, "INVALID_PATH".into()));
}

/// Segments that path attacks are made of: names written in other ways,
/// dot segments in disguise, escapes, parameters.
fn segment() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "admin",
        "%61dmin",
        "%61%64min",
        "adm%69n",
        "pub",
        "%70ub",
        "public",
        "secret",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2e%2e",
        ".%2e",
        "%2E.",
        "..;",
        ".;x",
        "a;b",
        "caf%c3%a9",
        "%00",
        "%0a",
        "%25",
        "%252e%252e",
        "~",
        "%7e",
        "%zz",
        "",
    ])
}

fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["/", "/", "/", "//", "/./", "%2f", "%2F", "%5c", "\\"])
}

fn attack_path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec((separator(), segment()), 0..6)).prop_map(|(nginx, parts)| {
        let mut path = String::from(if nginx { "/ng" } else { "/wsgi" });
        for (separator, segment) in parts {
            path.push_str(separator);
            path.push_str(segment);
        }
        path
    })
}

/// For any path: keygate refuses it (400 `INVALID_PATH`), finds no route
/// (404), or forwards it on a route, and then the upstream serves a path of
/// that same route. A key with every scope is used, so nothing stops a
/// request before it is forwarded.
#[test]
fn any_path_is_served_by_the_route_keygate_matched() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let Some(setup) = runtime.block_on(setup("")) else {
        return;
    };
    let admin = [("X-API-Key", setup.admin.as_str())];
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let forwarded = std::cell::Cell::new(0);
    runner
        .run(&attack_path(), |target| {
            let response = runtime.block_on(raw_get(&setup.app.gateway, target.as_bytes(), &admin));
            match response.status {
                200 => {
                    forwarded.set(forwarded.get() + 1);
                    let (listener, route, resolved) = served(&response);
                    prop_assert_eq!(Some(listener.as_str()), route, "{} was served as {}", target, resolved);
                }
                400 | 404 => {
                    let code = code(&response);
                    prop_assert!(
                        code == "INVALID_PATH" || code == "ROUTE_NOT_FOUND",
                        "{}: {}",
                        target,
                        code
                    );
                }
                other => prop_assert!(false, "{target}: {other} {}", response.text()),
            }
            Ok(())
        })
        .unwrap();
    let forwarded = forwarded.get();
    assert!(forwarded > 50, "only {forwarded} of 300 paths reached an upstream");
}
