//! The config loader's tests: files, environment overrides, and the field
//! each refusal names.

use super::*;
use keygate_core::ErrorFormat;
use std::io::Write;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn load_text(text: &str) -> Result<(Config, Settings), ConfigError> {
    let f = file(text);
    let loaded = ConfigSource::file(Some(f.path().to_owned())).load()?;
    Ok((loaded.config, loaded.settings))
}

#[test]
fn defaults_are_valid() {
    let settings = validate(&Config::default(), None).unwrap();
    assert_eq!(settings.gateway_addr.port(), 8080);
    assert_eq!(settings.admin_addr.port(), 8081);
    assert_eq!(settings.engine.verifier.key_format.prefix(), "kg");
}

#[test]
fn leases_are_on_by_default_and_zero_turns_them_off() {
    let (_, defaults) = load_text("").unwrap();
    assert_eq!(defaults.limiter.lease_max, 64);
    let (_, off) = load_text("[limiter]\nurl = \"redis://127.0.0.1:6379\"\nlease_max = 0\n").unwrap();
    assert_eq!(off.limiter.lease_max, 0);
    assert_eq!(off.limiter.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
    let (_, cluster) = load_text("[limiter]\nurl = \"redis+cluster://10.0.0.1:6379,10.0.0.2:6379\"\n").unwrap();
    assert_eq!(
        cluster.limiter.redis_url.as_deref(),
        Some("redis+cluster://10.0.0.1:6379,10.0.0.2:6379")
    );
}

#[test]
fn unknown_fields_name_the_field_and_file() {
    let err = load_text("[server]\ngateway_adr = \"127.0.0.1:1\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("gateway_adr"), "{err}");
    assert!(err.contains(".toml"), "{err}");
}

#[test]
fn a_route_takes_one_upstream_or_several() {
    let (_, settings) = load_text(
        "[[routes]]\npath = \"/one\"\nupstream = \"http://10.0.0.1:9000\"\n\
         [[routes]]\npath = \"/two\"\nupstream = [\"http://10.0.0.1:9000\", \"http://10.0.0.2:9000/base\"]\n\
         balance = \"least_connections\"\neject_after = 5\neject_for = \"30s\"\n",
    )
    .unwrap();
    let (one, two) = (&settings.routes[0], &settings.routes[1]);
    assert_eq!(one.upstreams.len(), 1);
    assert_eq!(
        (one.balance, one.eject_after, one.eject_for),
        (Balance::RoundRobin, 3, Duration::from_secs(10))
    );
    assert_eq!(two.upstreams[1].path(), "/base");
    assert_eq!(
        (two.balance, two.eject_after, two.eject_for),
        (Balance::LeastConnections, 5, Duration::from_secs(30))
    );
    for (bad, field) in [
        ("upstream = []", "upstream"),
        ("upstream = [\"http://a:1\", \"ftp://b\"]", "upstream"),
        ("upstream = \"http://a:1\"\neject_after = 0", "eject_after"),
        ("upstream = \"http://a:1\"\neject_for = \"soon\"", "eject_for"),
        ("upstream = \"http://a:1\"\nbalance = \"random\"", "balance"),
        (
            "upstream = \"http://a:1\"\nhealth_check = { path = \"healthz\" }",
            "health_check.path",
        ),
        (
            "upstream = \"http://a:1\"\nhealth_check = { path = \"/h\", interval = \"0s\" }",
            "health_check.interval",
        ),
        (
            "upstream = \"http://a:1\"\nhealth_check = { path = \"/h\", every = \"1s\" }",
            "every",
        ),
    ] {
        let err = load_text(&format!("[[routes]]\npath = \"/x\"\n{bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{bad}: {err}");
    }
}

#[test]
fn a_route_names_one_resource_or_several() {
    let route = |extra: &str| {
        load_text(&format!(
            "[[routes]]\npath = \"/x\"\nupstream = \"http://127.0.0.1:9\"\n{extra}\n"
        ))
    };
    let resources = |extra: &str| route(extra).unwrap().1.routes[0].resources.clone();
    assert_eq!(resources(""), ["default"]);
    assert_eq!(resources("resource = \"uploads\""), ["uploads"]);
    assert_eq!(
        resources("resources = [\"default\", \"uploads\"]"),
        ["default", "uploads"]
    );
    for (bad, expected) in [
        ("resource = \"a\"\nresources = [\"b\"]", "not both"),
        ("resources = []", "at least one"),
        ("resources = [\"a\", \"a\"]", "named twice"),
        ("resource = \"\"", "not a resource name"),
        ("cost = 0", "cost"),
        ("cost = 9007199254740992", "at most 9007199254740991"),
    ] {
        let err = route(bad).unwrap_err().to_string();
        assert!(err.contains("routes[0]") && err.contains(expected), "{bad}: {err}");
    }
}

#[test]
fn bad_values_name_the_field() {
    let err = load_text("[plans.free]\nlimits = [{ requests = 100, per = \"5x\" }]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("plans.free") && err.contains("5x"), "{err}");
    let err = load_text("[plans.free]\nlimits = [{ requests = -1, per = \"1m\" }]\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("requests"), "{err}");
    let err = load_text("[[routes]]\npath = \"/api\"\n").unwrap_err().to_string();
    assert!(err.contains("routes[0]") && err.contains("upstream"), "{err}");
    let err = load_text("[errors]\ninvalid_key_status = 400\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("errors.invalid_key_status"), "{err}");
}

#[test]
fn store_outage_settings_have_defaults_and_refuse_zero() {
    let settings = validate(&Config::default(), None).unwrap();
    assert_eq!(settings.engine.verifier.max_stale, Duration::from_secs(300));
    assert_eq!(settings.engine.verifier.store_timeout, Duration::from_secs(2));
    assert_eq!(settings.engine.verifier.cache_ttl_unheard, Duration::from_secs(1));
    let (_, settings) = load_text("[store]\nmax_stale = \"0s\"\n").unwrap();
    assert!(
        settings.engine.verifier.max_stale.is_zero(),
        "0: no serving from a stale cache"
    );
    for (text, field) in [
        ("[store]\ntimeout = \"0s\"\n", "store.timeout"),
        ("[cache]\nttl_unheard = \"0s\"\n", "cache.ttl_unheard"),
        ("[store]\nmax_stale = \"soon\"\n", "store.max_stale"),
        ("[usage]\nkeep_minutes = \"0s\"\n", "usage.keep_minutes"),
        ("[usage]\nrollup_every = \"90s\"\n", "usage.rollup_every"),
        ("[usage]\nkeep_days = \"forever\"\n", "usage.keep_days"),
    ] {
        let err = load_text(text).unwrap_err().to_string();
        assert!(err.contains(field), "{text}: {err}");
    }
}

#[test]
fn dashboard_settings_have_defaults_and_refuse_bad_values() {
    let (_, settings) = load_text("").unwrap();
    let dashboard = &settings.dashboard;
    assert!(dashboard.enabled);
    assert_eq!(dashboard.max_key_age, Some(chrono::Duration::days(90)));
    assert_eq!(
        (dashboard.product_name.as_str(), dashboard.create_key_label.as_str()),
        ("keygate", "Create New Key")
    );
    assert_eq!(settings.engine.dashboard.idle_timeout, chrono::Duration::minutes(30));
    assert_eq!(settings.engine.dashboard.lifetime, chrono::Duration::hours(12));
    assert_eq!(settings.engine.dashboard.portal_link_ttl, chrono::Duration::minutes(10));
    let retention = settings.engine.usage.retention;
    assert_eq!(
        (retention.minutes, retention.hours, retention.days),
        (
            chrono::Duration::days(7),
            chrono::Duration::days(90),
            chrono::Duration::days(400)
        )
    );

    let (_, settings) = load_text(
        "[keys]\nmax_age = \"0s\"\n[dashboard]\npublic_url = \"https://keys.example.com/\"\nsession_lifetime = \"1h\"\n",
    )
    .unwrap();
    assert_eq!(settings.dashboard.max_key_age, None, "0s never flags");
    assert_eq!(
        settings.dashboard.public_url.as_deref(),
        Some("https://keys.example.com")
    );
    assert_eq!(settings.engine.dashboard.lifetime, chrono::Duration::hours(1));

    for (text, field) in [
        (
            "[dashboard]\nsession_idle_timeout = \"0s\"\n",
            "dashboard.session_idle_timeout",
        ),
        (
            "[dashboard]\nportal_link_ttl = \"later\"\n",
            "dashboard.portal_link_ttl",
        ),
        (
            "[dashboard]\npublic_url = \"keys.example.com\"\n",
            "dashboard.public_url",
        ),
        (
            "[dashboard]\npublic_url = \"https://x.example/?a=b\"\n",
            "dashboard.public_url",
        ),
        ("[dashboard]\nproduct_name = \" \"\n", "dashboard.product_name"),
        (
            "[dashboard]\ncreate_key_label = \"a\\nb\"\n",
            "dashboard.create_key_label",
        ),
        ("[keys]\nmax_age = \"ninety days\"\n", "keys.max_age"),
        ("[dashboard]\ncolour = \"blue\"\n", "colour"),
    ] {
        let err = load_text(text).unwrap_err().to_string();
        assert!(err.contains(field), "{text}: {err}");
    }
}

#[test]
fn sizes_parse_and_routes_inherit_the_server_body_limit() {
    let (_, settings) = load_text(
        r#"
        [server]
        max_body_size = "2MiB"
        max_header_size = "16KiB"
        [[routes]]
        path = "/a"
        upstream = "http://127.0.0.1:9000"
        [[routes]]
        path = "/upload"
        upstream = "http://127.0.0.1:9000"
        max_body_size = "1GiB"
        connect_timeout = "250ms"
        forward_key = true
        "#,
    )
    .unwrap();
    assert_eq!(settings.max_body_bytes, 2 * 1024 * 1024);
    assert_eq!(settings.max_header_bytes, 16 * 1024);
    assert_eq!(settings.routes[0].max_body_bytes, 2 * 1024 * 1024);
    assert_eq!(settings.routes[1].max_body_bytes, 1024 * 1024 * 1024);
    assert_eq!(settings.routes[1].connect_timeout, Duration::from_millis(250));
    assert!(settings.routes[1].forward_key && !settings.routes[0].forward_key);
    assert_eq!(settings.access_log.target, AccessLogTarget::Stdout);
}

#[test]
fn bad_sizes_name_the_field_and_the_route() {
    let err = load_text("[server]\nmax_body_size = \"ten\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.max_body_size") && err.contains("ten"), "{err}");
    let err = load_text("[server]\nmax_header_size = \"1KiB\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.max_header_size"), "{err}");
    let err = load_text("[[routes]]\npath = \"/up\"\nupstream = \"http://127.0.0.1:1\"\nmax_body_size = \"-3\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("routes[0] (path \"/up\").max_body_size"), "{err}");
    let err = load_text("[[routes]]\npath = \"/up\"\nupstream = \"http://127.0.0.1:1\"\nconnect_timeout = \"0\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("routes[0]") && err.contains("timeout"), "{err}");
    let err = load_text("[server.tls]\ncert = \"a.pem\"\n").unwrap_err().to_string();
    assert!(err.contains("key"), "{err}");
}

#[test]
fn access_log_targets() {
    assert_eq!(AccessLogTarget::parse("off"), AccessLogTarget::Off);
    assert_eq!(AccessLogTarget::parse("stderr"), AccessLogTarget::Stderr);
    assert_eq!(
        AccessLogTarget::parse("/var/log/keygate.log"),
        AccessLogTarget::File(PathBuf::from("/var/log/keygate.log"))
    );
    let (_, settings) =
        load_text("[access_log]\ntarget = \"off\"\nrotate_dir = \"/var/log/keygate\"\nrotate_every = \"hourly\"\n")
            .unwrap();
    assert_eq!(
        settings.access_log.rotating,
        Some(RotatingFiles {
            dir: PathBuf::from("/var/log/keygate"),
            hourly: true,
            keep: 14
        })
    );
    let err = load_text("[access_log]\nrotate_dir = \"/tmp\"\nrotate_every = \"weekly\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("access_log.rotate_every"), "{err}");
}

#[test]
fn seed_style_config_loads() {
    let (config, settings) = load_text(
        r#"
        [keys]
        prefix = "evon"
        environments = ["dev", "staging", "prod"]
        [errors]
        format = "simple"
        [errors.messages]
        MISSING_API_KEY = "API key is required"
        [[routes]]
        path = "/api/v1/invoices/upload"
        methods = ["POST"]
        upstream = "http://127.0.0.1:9000"
        resource = "uploads"
        scopes = ["invoices:write"]
        "#,
    )
    .unwrap();
    assert_eq!(config.errors.format, ErrorFormat::Simple);
    assert_eq!(settings.routes[0].methods, vec![axum::http::Method::POST]);
    assert_eq!(settings.engine.verifier.key_format.default_environment(), "dev");
}

#[test]
fn missing_explicit_file_is_an_error() {
    assert!(matches!(
        resolve_file(Some(Path::new("/nonexistent/k.toml"))),
        Err(ConfigError::MissingFile(_))
    ));
}
