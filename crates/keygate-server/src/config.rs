//! Configuration: one TOML file plus `KEYGATE_SECTION__FIELD` environment
//! overrides, validated once at start into [`Settings`]. Unknown fields and bad
//! values are errors that name the field and where it came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use ipnet::IpNet;
use keygate_core::error::CatalogError;
use keygate_core::events::AnomalyRule;
use keygate_core::path::PathRules;
use keygate_core::role::{RoleError, Roles};
use keygate_core::throttle::FailurePolicy;
use keygate_core::{ErrorCatalog, KeyFormat};
use keygate_engine::events::EventSettings;
use keygate_engine::plans::PlanBook;
use keygate_engine::sessions::SessionSettings;
use keygate_engine::usage::UsageRetention;
use keygate_engine::webhooks::WebhookSettings;
use keygate_engine::EngineSettings;
use keygate_limiter::resilient::OnFailure;

use crate::telemetry::TelemetrySettings;

mod file;
mod routes;
mod values;

pub use file::*;

pub use routes::{catch_all_route, Balance, HealthCheck, HealthCheckConfig, Route, RouteConfig, UpstreamUrls};
use routes::{route_name, validate_route};
pub use values::{ConfigDuration, ConfigSize, OtlpEndpoint, PositiveDuration};

/// The file read when no `--config` or `KEYGATE_CONFIG` is given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "keygate.toml";

/// Which rate-limit headers responses carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitHeaderStyle {
    pub x_ratelimit: bool,
    pub ietf: bool,
    /// `headers.describe`; a plan may set its own.
    pub describe: keygate_core::ratelimit::Describe,
    /// `headers.shadow`: `X-RateLimit-Shadow-*` for the tightest shadow limit.
    pub shadow: bool,
    /// `headers.credits`: the header that tells a key with credits its balance.
    pub credits: axum::http::HeaderName,
}

/// The validated limiter settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LimiterSettings {
    /// `None` for memory, the Redis URL otherwise.
    pub redis_url: Option<String>,
    pub on_failure: OnFailure,
    pub timeout: Duration,
    pub max_counters: u64,
    /// 0: no leases.
    pub lease_max: u64,
}

/// Where the access log goes: its target and, optionally, rotating files too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub target: AccessLogTarget,
    pub rotating: Option<RotatingFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatingFiles {
    pub dir: PathBuf,
    pub hourly: bool,
    pub keep: usize,
}

fn validate_access_log(config: &AccessLogConfig) -> Result<AccessLogSettings, (String, String)> {
    let rotating = if config.rotate_dir.is_empty() {
        None
    } else {
        let hourly = match config.rotate_every.as_str() {
            "daily" => false,
            "hourly" => true,
            other => {
                let message = format!("`{other}` must be daily or hourly");
                return Err(("access_log.rotate_every".into(), message));
            }
        };
        if config.rotate_keep == 0 {
            return Err(("access_log.rotate_keep".into(), "must be positive".into()));
        }
        Some(RotatingFiles {
            dir: PathBuf::from(&config.rotate_dir),
            hourly,
            keep: config.rotate_keep,
        })
    };
    Ok(AccessLogSettings {
        target: AccessLogTarget::parse(&config.target),
        rotating,
    })
}

/// Where the one-JSON-line-per-request access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

impl AccessLogTarget {
    fn parse(text: &str) -> Self {
        match text {
            "off" | "" => Self::Off,
            "stdout" => Self::Stdout,
            "stderr" => Self::Stderr,
            path => Self::File(PathBuf::from(path)),
        }
    }
}

/// The dashboard's settings that the HTTP layer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardSettings {
    pub enabled: bool,
    pub public_url: Option<String>,
    /// `None`: keys are never flagged for their age.
    pub max_key_age: Option<chrono::Duration>,
    pub product_name: String,
    pub create_key_label: String,
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub gateway_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub trusted_proxies: Vec<IpNet>,
    pub shutdown_timeout: Duration,
    pub store_url: String,
    pub engine: EngineSettings,
    pub errors: ErrorCatalog,
    pub usage_flush_interval: Duration,
    pub limiter: LimiterSettings,
    pub headers: RateLimitHeaderStyle,
    pub routes: Vec<Route>,
    pub require_https: bool,
    /// `server.fast_path`.
    pub fast_path: bool,
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub tls: Option<TlsConfig>,
    pub access_log: AccessLogSettings,
    pub gateway_threads: usize,
    /// How request paths are canonicalised before anything reads them.
    pub path_rules: PathRules,
    pub background_priority: BackgroundPriority,
    pub dashboard: DashboardSettings,
    /// `leaks.github_keys_file`: GitHub's secret-scanning public keys.
    pub github_keys_file: Option<PathBuf>,
    /// `leaks.github_keys_url`: where they are fetched from.
    pub github_keys_url: Option<reqwest::Url>,
    /// `leaks.github_keys_refresh`: how long a fetched document is kept.
    pub github_keys_refresh: Duration,
    /// `leaks.report_path`: `None` turns public leak reports off.
    pub leak_report_path: Option<String>,
    /// `secrets.key_file`: read when a node starts and on every reload.
    pub secrets_key_file: Option<PathBuf>,
    /// `[telemetry]`: `None` unless `otlp_endpoint` is set.
    pub telemetry: Option<crate::telemetry::TelemetrySettings>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("{0}")]
    Load(Box<figment::Error>),
    #[error("{origin}: {field}: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },
}

/// Where settings came from, for error messages.
fn origin(file: Option<&Path>) -> String {
    match file {
        Some(path) => format!("{} (or its KEYGATE_* overrides)", path.display()),
        None => "built-in defaults (or KEYGATE_* overrides)".into(),
    }
}

/// Which file to read: the explicit one, else `keygate.toml` if present.
pub fn resolve_file(explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    match explicit {
        Some(path) if path.is_file() => Ok(Some(path.to_owned())),
        Some(path) => Err(ConfigError::MissingFile(path.to_owned())),
        None => Ok(Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.is_file())),
    }
}

/// Where a node's config comes from: kept so that a reload
/// (crates/keygate-server/src/reload.rs) reads it exactly as the start did.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    /// Routes given on the command line (`keygate serve --upstream`), after the file's.
    pub extra_routes: Vec<RouteConfig>,
}

/// A config as read, its validated settings, and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub source: ConfigSource,
    pub config: Config,
    pub settings: Settings,
}

impl ConfigSource {
    pub fn file(file: Option<PathBuf>) -> Self {
        Self {
            file,
            extra_routes: Vec::new(),
        }
    }

    /// Reads the file (if any), the environment and the extra routes.
    pub fn read(&self) -> Result<Config, ConfigError> {
        let mut config = read(self.file.as_deref())?;
        config.routes.extend(self.extra_routes.iter().cloned());
        Ok(config)
    }

    /// Reads, then validates.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let config = self.read()?;
        let settings = validate(&config, self.file.as_deref())?;
        Ok(Loaded {
            source: self.clone(),
            config,
            settings,
        })
    }
}

pub fn read(file: Option<&Path>) -> Result<Config, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = file {
        figment = figment.merge(Toml::file_exact(path));
    }
    // Only `SECTION__FIELD` variables are config; KEYGATE_URL and friends belong to the CLI.
    // The filter must run before `split`, which turns `__` into `.`.
    let env = Env::prefixed("KEYGATE_")
        .filter(|key| key.as_str().contains("__"))
        .split("__");
    let figment = figment.merge(env);
    figment.extract().map_err(|error| load_error(&figment, file, error))
}

/// A value serde refused, named as `validate` names fields (a route by its
/// index and path); an error without a field (bad TOML) as figment says it.
fn load_error(figment: &Figment, file: Option<&Path>, error: figment::Error) -> ConfigError {
    if error.path.is_empty() || error.count() > 1 {
        return ConfigError::Load(Box::new(error));
    }
    let field = match error.path.as_slice() {
        [routes, index, rest @ ..] if routes == "routes" => {
            let path = figment
                .find_value("routes")
                .ok()
                .and_then(|routes| routes.into_array())
                .zip(index.parse::<usize>().ok())
                .and_then(|(routes, index)| routes.into_iter().nth(index))
                .and_then(|route| route.into_dict())
                .and_then(|mut route| route.remove("path"))
                .and_then(|path| path.into_string())
                .unwrap_or_default();
            let name = route_name(index, &path);
            match rest {
                [] => name,
                rest => format!("{name}.{}", rest.join(".")),
            }
        }
        path => path.join("."),
    };
    ConfigError::Invalid {
        origin: origin(file),
        field,
        message: error.kind.to_string(),
    }
}

pub fn validate(config: &Config, file: Option<&Path>) -> Result<Settings, ConfigError> {
    let origin = origin(file);
    let invalid = |field: &str, message: String| ConfigError::Invalid {
        origin: origin.clone(),
        field: field.to_owned(),
        message,
    };
    let label = |field: &str, text: &str| {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > 60 || text.chars().any(char::is_control) {
            Err(invalid(
                field,
                "must be 1 to 60 characters, without control characters".into(),
            ))
        } else {
            Ok(text.to_owned())
        }
    };
    let addr = |field: &str, text: &str| {
        text.parse::<SocketAddr>()
            .map_err(|_| invalid(field, format!("`{text}` is not an address like 127.0.0.1:8080")))
    };

    let trusted_proxies = config
        .server
        .trusted_proxies
        .iter()
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    invalid(
                        "server.trusted_proxies",
                        format!("`{entry}` is not an IP address or CIDR"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let key_format =
        KeyFormat::new(&config.keys.prefix, &config.keys.environments).map_err(|e| invalid("keys", e.to_string()))?;

    let mut plans = BTreeMap::new();
    for (name, plan) in &config.plans {
        let plan = plan
            .validate()
            .map_err(|e| invalid(&format!("plans.{name}"), e.to_string()))?;
        plans.insert(name.clone(), plan);
    }
    if let Some(default) = &config.limiter.default_plan {
        if !plans.contains_key(default) {
            return Err(invalid(
                "limiter.default_plan",
                format!("no plan named `{default}` in [plans]"),
            ));
        }
    }
    let roles = Roles::new(config.roles.clone()).map_err(|e| match &e {
        RoleError::Scope { role, .. } => invalid(&format!("roles.{role}"), e.to_string()),
        _ => invalid("roles", e.to_string()),
    })?;
    let limiter = validate_limiter(&config.limiter).map_err(|(field, message)| invalid(&field, message))?;
    let headers = RateLimitHeaderStyle {
        x_ratelimit: config.headers.ratelimit.contains(&HeaderStyle::XRateLimit),
        ietf: config.headers.ratelimit.contains(&HeaderStyle::Ietf),
        describe: config.headers.describe,
        shadow: config.headers.shadow,
        credits: credits_header(&config.headers.credits).map_err(|message| invalid("headers.credits", message))?,
    };

    let errors = ErrorCatalog::new(
        config.errors.format,
        &config.errors.messages,
        config.errors.invalid_key_status,
        config.errors.hide_key_state,
        &config.errors.realm,
    )
    .and_then(|catalog| catalog.with_bodies(&config.errors.bodies))
    .and_then(|catalog| catalog.with_usage_exceeded_status(config.errors.usage_exceeded_status))
    .map(|catalog| catalog.with_data_fields(config.errors.data.clone()))
    .map_err(|e| match &e {
        CatalogError::InvalidKeyStatus(_) => invalid("errors.invalid_key_status", e.to_string()),
        CatalogError::UsageExceededStatus(_) => invalid("errors.usage_exceeded_status", e.to_string()),
        CatalogError::UnknownCode(_) => invalid("errors.messages", e.to_string()),
        CatalogError::Realm => invalid("errors.realm", e.to_string()),
        CatalogError::UnknownBodyCode(_) => invalid("errors.bodies", e.to_string()),
        CatalogError::Body { code, .. } => invalid(&format!("errors.bodies.{code}"), e.to_string()),
    })?;

    if config.security.max_failed_attempts == 0 {
        return Err(invalid("security.max_failed_attempts", "must be positive".into()));
    }
    if config.cache.capacity == 0 {
        return Err(invalid("cache.capacity", "must be positive".into()));
    }
    let max_body_bytes = config.server.max_body_size.bytes();
    let max_header_bytes = config.server.max_header_size.bytes();
    if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&max_header_bytes) {
        return Err(invalid(
            "server.max_header_size",
            format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES} bytes"),
        ));
    }
    let path_rules = PathRules {
        merge_slashes: config.server.merge_slashes,
        escaped_slashes: config.server.escaped_slashes,
    };
    let routes = config
        .routes
        .iter()
        .enumerate()
        .map(|(index, route)| {
            validate_route(index, route, max_body_bytes, path_rules)
                .map_err(|(field, message)| invalid(&field, message))
        })
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Settings {
        gateway_addr: addr("server.gateway_addr", &config.server.gateway_addr)?,
        admin_addr: addr("server.admin_addr", &config.server.admin_addr)?,
        trusted_proxies,
        shutdown_timeout: config.server.shutdown_timeout.get(),
        store_url: config.store.url.clone(),
        engine: EngineSettings {
            // The deployment's keys are read where a node starts (`App::start`,
            // crates/keygate-server/src/secrets.rs), not while validating.
            keyring: Default::default(),
            verifier: keygate_engine::VerifierSettings {
                key_format,
                cache_capacity: config.cache.capacity,
                cache_ttl: config.cache.ttl.get(),
                cache_ttl_unheard: config.cache.ttl_unheard.get(),
                max_stale: config.store.max_stale.get(),
                store_timeout: config.store.timeout.get(),
                negative_cache_ttl: config.cache.negative_ttl.get(),
                legacy_keys: config.keys.legacy,
                failed_attempts: FailurePolicy {
                    max_failures: config.security.max_failed_attempts,
                    window: config.security.failed_attempts_window.get(),
                },
                plans: PlanBook::new(plans, config.limiter.default_plan.clone()),
                roles,
            },
            admin: keygate_engine::admin::AdminSettings {
                default_rotation_grace: config.keys.rotation_grace.get(),
                max_metadata_bytes: config.keys.max_metadata_bytes,
                on_leak: config.leaks.on_report,
                leak_grace: config.leaks.grace.get(),
            },
            usage: keygate_engine::usage::UsageSettings {
                enabled: config.usage.enabled,
                rollup_every: config.usage.rollup_every.get(),
                retention: UsageRetention {
                    minutes: config.usage.keep_minutes.chrono(),
                    hours: config.usage.keep_hours.chrono(),
                    days: config.usage.keep_days.chrono(),
                },
            },
            events: validate_events(&config.events, config.keys.max_age)
                .map_err(|(field, message)| invalid(&field, message))?,
            webhooks: validate_webhooks(&config.webhooks).map_err(|(field, message)| invalid(&field, message))?,
            dashboard: SessionSettings {
                idle_timeout: config.dashboard.session_idle_timeout.chrono(),
                lifetime: config.dashboard.session_lifetime.chrono(),
                portal_link_ttl: config.dashboard.portal_link_ttl.chrono(),
            },
        },
        errors,
        usage_flush_interval: config.usage.flush_interval.get(),
        limiter,
        headers,
        routes,
        require_https: config.server.require_https,
        fast_path: config.server.fast_path,
        max_body_bytes,
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
        tls: config.server.tls.clone(),
        access_log: validate_access_log(&config.access_log).map_err(|(field, message)| invalid(&field, message))?,
        gateway_threads: match config.server.gateway_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            threads => threads,
        },
        path_rules,
        background_priority: config.server.background_priority,
        secrets_key_file: config.secrets.key_file.clone(),
        github_keys_file: config.leaks.github_keys_file.clone(),
        github_keys_url: config
            .leaks
            .github_keys_url
            .as_deref()
            .map(github_keys_url)
            .transpose()
            .map_err(|message| invalid("leaks.github_keys_url", message))?,
        github_keys_refresh: config.leaks.github_keys_refresh.get(),
        leak_report_path: match config.leaks.report_path.as_str() {
            "" => None,
            path if path.starts_with('/') => Some(path.to_owned()),
            _ => {
                return Err(invalid(
                    "leaks.report_path",
                    "must start with `/`, or be empty to turn it off".into(),
                ))
            }
        },
        telemetry: validate_telemetry(&config.telemetry).map_err(|(field, message)| invalid(&field, message))?,
        dashboard: DashboardSettings {
            enabled: config.dashboard.enabled,
            public_url: validate_public_url(config.dashboard.public_url.as_deref())
                .map_err(|message| invalid("dashboard.public_url", message))?,
            max_key_age: Some(config.keys.max_age.chrono()).filter(|age| !age.is_zero()),
            product_name: label("dashboard.product_name", &config.dashboard.product_name)?,
            create_key_label: label("dashboard.create_key_label", &config.dashboard.create_key_label)?,
        },
    })
}

/// A field's error: its name and what is wrong.
type FieldError = (String, String);

fn validate_telemetry(telemetry: &TelemetryConfig) -> Result<Option<TelemetrySettings>, FieldError> {
    if !(0.0..=1.0).contains(&telemetry.sample_ratio) {
        return Err(("telemetry.sample_ratio".into(), "must be a number from 0 to 1".into()));
    }
    if telemetry.service_name.trim().is_empty() {
        return Err(("telemetry.service_name".into(), "must not be empty".into()));
    }
    Ok(telemetry.otlp_endpoint.as_ref().map(|endpoint| TelemetrySettings {
        traces_url: endpoint.traces_url(),
        service_name: telemetry.service_name.clone(),
        sample_ratio: telemetry.sample_ratio,
        export_interval: telemetry.export_interval.get(),
    }))
}

fn validate_events(events: &EventsConfig, max_key_age: ConfigDuration) -> Result<EventSettings, FieldError> {
    if !(events.anomaly_factor.is_finite() && events.anomaly_factor >= 1.0) {
        return Err(("events.anomaly_factor".into(), "must be a number of at least 1".into()));
    }
    if events.anomaly_floor == 0 {
        return Err(("events.anomaly_floor".into(), "must be positive".into()));
    }
    Ok(EventSettings {
        enabled: events.enabled,
        expiring_within: events.expiring_within.chrono(),
        max_key_age: Some(max_key_age.chrono()).filter(|age| !age.is_zero()),
        anomaly: AnomalyRule {
            factor: events.anomaly_factor,
            floor: events.anomaly_floor,
            ..AnomalyRule::default()
        },
        anomaly_cooldown: events.anomaly_cooldown.chrono(),
        scan_interval: events.scan_interval.get(),
    })
}

fn validate_webhooks(webhooks: &WebhooksConfig) -> Result<WebhookSettings, FieldError> {
    let (retry_base, retry_max) = (webhooks.retry_base.get(), webhooks.retry_max.get());
    if retry_max < retry_base {
        return Err((
            "webhooks.retry_max".into(),
            "must be at least webhooks.retry_base".into(),
        ));
    }
    Ok(WebhookSettings {
        timeout: webhooks.timeout.get(),
        retry_base,
        retry_max,
        give_up_after: webhooks.give_up_after.chrono(),
        poll_interval: webhooks.poll_interval.get(),
        ..WebhookSettings::default()
    })
}

/// An absolute http(s) URL without a trailing slash, so links can be appended.
fn validate_public_url(url: Option<&str>) -> Result<Option<String>, String> {
    let Some(url) = url else { return Ok(None) };
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    if rest.is_empty() || rest.contains(char::is_whitespace) || rest.contains(['?', '#']) {
        return Err("must be a URL like https://keys.example.com, without query or fragment".into());
    }
    Ok(Some(url.trim_end_matches('/').to_owned()))
}

/// hyper needs at least 8 KiB of read buffer; above 1 MiB a header block is an attack, not an API call.
const MIN_HEADER_BYTES: u64 = 8 * 1024;
const MAX_HEADER_BYTES: u64 = 1024 * 1024;

/// `headers.credits`: a header name, and not one of the other headers a
/// node writes into every answer (the rate-limit ones, `X-Request-Id`),
/// which it would hide or be hidden by.
fn credits_header(name: &str) -> Result<axum::http::HeaderName, String> {
    let name = axum::http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| "must be a header name, such as X-Credits-Remaining".to_owned())?;
    if crate::http::ratelimit::is_rate_limit_header(&name) || name == crate::http::gateway::X_REQUEST_ID {
        return Err(format!(
            "{name} is a header keygate writes itself; name another, such as X-Credits-Remaining"
        ));
    }
    Ok(name)
}

fn validate_limiter(config: &LimiterConfig) -> Result<LimiterSettings, (String, String)> {
    let fail = |field: &str, message: String| (format!("limiter.{field}"), message);
    let timeout = config.timeout.get();
    if config.max_counters == 0 {
        return Err(fail("max_counters", "must be positive".into()));
    }
    let redis_url = match config.url.split_once("://") {
        Some(("memory", "")) => None,
        Some(("redis" | "redis+cluster", rest)) if !rest.is_empty() => Some(config.url.clone()),
        _ => {
            return Err(fail(
                "url",
                format!(
                    "`{}` must be memory://, redis://HOST:PORT or redis+cluster://HOST:PORT,HOST:PORT,...",
                    config.url
                ),
            ))
        }
    };
    Ok(LimiterSettings {
        redis_url,
        on_failure: config.on_failure,
        timeout,
        max_counters: config.max_counters,
        lease_max: config.lease_max,
    })
}

/// `leaks.github_keys_url`: an `http(s)` URL.
fn github_keys_url(text: &str) -> Result<reqwest::Url, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "https" | "http") => Ok(url),
        Ok(url) => Err(format!("must be an http(s) URL, not {}:", url.scheme())),
        Err(err) => Err(format!("`{text}` is not a URL: {err}")),
    }
}

#[cfg(test)]
mod tests;
