//! Configuration: one TOML file plus `KEYGATE_SECTION__FIELD` environment
//! overrides, validated once at start into [`Settings`]. Unknown fields and bad
//! values are errors that name the field and where it came from.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use ipnet::IpNet;
use keygate_core::error::CatalogError;
use keygate_core::events::AnomalyRule;
use keygate_core::limits::Plan;
use keygate_core::path::{EscapedSlashes, PathRules};
use keygate_core::throttle::FailurePolicy;
use keygate_core::{ErrorCatalog, ErrorFormat, KeyFormat};
use keygate_engine::events::EventSettings;
use keygate_engine::plans::PlanBook;
use keygate_engine::sessions::SessionSettings;
use keygate_engine::usage::UsageRetention;
use keygate_engine::webhooks::WebhookSettings;
use keygate_engine::EngineSettings;
use keygate_limiter::resilient::OnFailure;
use serde::{Deserialize, Serialize};

mod routes;
mod values;

pub use routes::{catch_all_route, Balance, HealthCheck, HealthCheckConfig, Route, RouteConfig, UpstreamUrls};
use routes::{route_name, validate_route};
pub use values::{ConfigDuration, ConfigSize, PositiveDuration};

/// Time spans the defaults are written in.
const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// The file read when no `--config` or `KEYGATE_CONFIG` is given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "keygate.toml";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub keys: KeysConfig,
    pub cache: CacheConfig,
    pub security: SecurityConfig,
    pub errors: ErrorsConfig,
    pub usage: UsageConfig,
    pub events: EventsConfig,
    pub webhooks: WebhooksConfig,
    pub limiter: LimiterConfig,
    pub headers: HeadersConfig,
    pub access_log: AccessLogConfig,
    pub dashboard: DashboardConfig,
    pub plans: BTreeMap<String, Plan>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimiterConfig {
    /// `memory://` (one node) or `redis://host:port` (shared by many nodes).
    pub url: String,
    /// When Redis is unreachable: `local`, `allow` or `deny`.
    pub on_failure: OnFailure,
    /// The longest a request waits on Redis before `on_failure` applies.
    pub timeout: PositiveDuration,
    /// Most counters held in memory (the memory backend, and the local fallback).
    pub max_counters: u64,
    /// The plan of workspaces that name none.
    pub default_plan: Option<String>,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            url: "memory://".into(),
            on_failure: OnFailure::Local,
            timeout: PositiveDuration::millis(50),
            max_counters: 1_000_000,
            default_plan: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    /// Rate-limit header styles: `x-ratelimit` (X-RateLimit-*) and `ietf` (RateLimit-Policy, RateLimit).
    pub ratelimit: Vec<HeaderStyle>,
}

/// One style of rate-limit headers (`headers.ratelimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeaderStyle {
    /// `X-RateLimit-Limit`, `-Remaining`, `-Reset`.
    #[serde(rename = "x-ratelimit")]
    XRateLimit,
    /// The IETF draft's `RateLimit-Policy` and `RateLimit`.
    #[serde(rename = "ietf")]
    Ietf,
}

impl Default for HeadersConfig {
    fn default() -> Self {
        Self {
            ratelimit: vec![HeaderStyle::XRateLimit],
        }
    }
}

/// Which rate-limit headers responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitHeaderStyle {
    pub x_ratelimit: bool,
    pub ietf: bool,
}

/// The validated limiter settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LimiterSettings {
    /// `None` for memory, the Redis URL otherwise.
    pub redis_url: Option<String>,
    pub on_failure: OnFailure,
    pub timeout: Duration,
    pub max_counters: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub gateway_addr: String,
    pub admin_addr: String,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs or addresses).
    pub trusted_proxies: Vec<String>,
    /// How long graceful shutdown waits for in-flight requests.
    pub shutdown_timeout: ConfigDuration,
    /// Refuse data-plane requests that arrived over plain HTTP, unless a
    /// trusted proxy says (`X-Forwarded-Proto: https`) that it terminated TLS.
    pub require_https: bool,
    /// Largest request body the gateway forwards (`10MiB`, `1GiB`); routes may override.
    pub max_body_size: ConfigSize,
    /// Largest request head (request line and headers) on both planes; larger ones get 431.
    pub max_header_size: ConfigSize,
    /// Serve the data plane over TLS from these PEM files.
    pub tls: Option<TlsConfig>,
    /// Threads serving the data plane, each with its own runtime; 0 = one per CPU.
    pub gateway_threads: usize,
    /// Merge repeated slashes in request paths (`//a` is `/a`) before routing
    /// and forwarding (crates/keygate-core/src/path.rs).
    pub merge_slashes: bool,
    /// `reject` (400 `INVALID_PATH`) or `keep` `%2F`, `%5C` and `\` in request paths.
    pub escaped_slashes: EscapedSlashes,
    /// CPU priority of the background thread (usage flushes, roll-ups, event
    /// scans, webhook delivery): below the data plane's by default.
    pub background_priority: BackgroundPriority,
}

/// `server.background_priority` (crates/keygate-server/src/background.rs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackgroundPriority {
    /// Linux `SCHED_IDLE`: runs only when the data plane leaves a CPU idle
    /// (and a little under full load, so it never stops).
    #[default]
    Idle,
    /// Nice 19: the lowest ordinary priority.
    Low,
    /// The same priority as the data plane.
    Normal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// `stdout`, `stderr`, `off`, or a file path (appended to).
    pub target: String,
    /// Also write to files in this folder that rotate (`access.YYYY-MM-DD.log`);
    /// empty: no rotating files.
    pub rotate_dir: String,
    /// `daily` or `hourly`.
    pub rotate_every: String,
    /// Rotated files kept; older ones are deleted.
    pub rotate_keep: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            target: "stdout".into(),
            rotate_dir: String::new(),
            rotate_every: "daily".into(),
            rotate_keep: 14,
        }
    }
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

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            gateway_addr: "127.0.0.1:8080".into(),
            admin_addr: "127.0.0.1:8081".into(),
            trusted_proxies: vec![],
            shutdown_timeout: ConfigDuration::secs(10),
            require_https: false,
            max_body_size: ConfigSize::mib(10),
            max_header_size: ConfigSize::kib(64),
            tls: None,
            gateway_threads: 0,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            background_priority: BackgroundPriority::Idle,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub url: String,
    /// How long cached keys keep verifying while the store does not answer.
    pub max_stale: ConfigDuration,
    /// The longest a request waits for the store before it is answered
    /// from the cache or with 503.
    pub timeout: PositiveDuration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://keygate-data/keygate.db".into(),
            max_stale: ConfigDuration::secs(5 * MINUTE),
            timeout: PositiveDuration::secs(2),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    pub prefix: String,
    pub environments: Vec<String>,
    /// How long a rotated key keeps working when the request names no grace.
    pub rotation_grace: ConfigDuration,
    pub max_metadata_bytes: usize,
    /// Keys older than this are flagged for rotation in the dashboard; `0s` never flags.
    pub max_age: ConfigDuration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            prefix: "kg".into(),
            environments: vec!["live".into(), "test".into()],
            rotation_grace: ConfigDuration::secs(DAY),
            max_metadata_bytes: 4096,
            max_age: ConfigDuration::secs(90 * DAY),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// Serve the dashboard under `/dashboard` on the control plane.
    pub enabled: bool,
    /// A signed-in session unused this long ends.
    pub session_idle_timeout: PositiveDuration,
    /// A session ends this long after sign-in, however busy.
    pub session_lifetime: PositiveDuration,
    /// How long a portal link from `POST /v1/portal-sessions` can be opened (once).
    pub portal_link_ttl: PositiveDuration,
    /// The control plane's address as browsers reach it (`https://keys.example.com`),
    /// for portal links. Default: the `Host` the API call arrived with.
    pub public_url: Option<String>,
    /// The name in the dashboard's header and page titles: your product's.
    pub product_name: String,
    /// The button that creates a key, in your documentation's words
    /// (`Generate New API Key`).
    pub create_key_label: String,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_idle_timeout: PositiveDuration::secs(30 * MINUTE),
            session_lifetime: PositiveDuration::secs(12 * HOUR),
            portal_link_ttl: PositiveDuration::secs(10 * MINUTE),
            public_url: None,
            product_name: "keygate".into(),
            create_key_label: "Create New Key".into(),
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    pub capacity: u64,
    /// A cached key is re-read at least this often: the safety net for a
    /// change announcement that was missed.
    pub ttl: PositiveDuration,
    /// The same, while this node cannot hear other nodes' changes (many nodes
    /// on PostgreSQL, feed reconnecting).
    pub ttl_unheard: PositiveDuration,
    pub negative_ttl: ConfigDuration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            ttl: PositiveDuration::secs(60),
            ttl_unheard: PositiveDuration::secs(1),
            negative_ttl: ConfigDuration::secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Invalid keys one client IP may send per window before it is throttled.
    pub max_failed_attempts: u32,
    pub failed_attempts_window: PositiveDuration,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            max_failed_attempts: 20,
            failed_attempts_window: PositiveDuration::secs(MINUTE),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorsConfig {
    pub format: ErrorFormat,
    /// Replacement messages by code, so a deployment matches its own documentation.
    pub messages: HashMap<String, String>,
    pub invalid_key_status: u16,
    /// Answer revoked and expired keys as `INVALID_API_KEY`.
    pub hide_key_state: bool,
    pub realm: String,
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        Self {
            format: ErrorFormat::Envelope,
            messages: HashMap::new(),
            invalid_key_status: 401,
            hide_key_state: false,
            realm: "keygate".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Off: no usage counts and no last use are recorded (the benchmark's baseline).
    pub enabled: bool,
    pub flush_interval: PositiveDuration,
    /// How long per-minute counts are kept.
    pub keep_minutes: PositiveDuration,
    /// How long the hourly rollups are kept.
    pub keep_hours: PositiveDuration,
    /// How long the daily rollups are kept.
    pub keep_days: PositiveDuration,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            flush_interval: PositiveDuration::secs(5),
            keep_minutes: PositiveDuration::secs(7 * DAY),
            keep_hours: PositiveDuration::secs(90 * DAY),
            keep_days: PositiveDuration::secs(400 * DAY),
        }
    }
}

/// `[events]`: what keygate announces to webhooks (docs/decisions.md, "Events and webhooks").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Off: no gateway events, scans or deliveries; key lifecycle events are still stored.
    pub enabled: bool,
    /// `key.expiring` this long before a key expires.
    pub expiring_within: PositiveDuration,
    /// `usage.anomaly`: the last 5 minutes exceed `anomaly_factor` times the
    /// rate of the hour before, and reach `anomaly_floor` requests.
    pub anomaly_factor: f64,
    pub anomaly_floor: u64,
    /// At most one `usage.anomaly` per key in this long.
    pub anomaly_cooldown: PositiveDuration,
    /// How often keys are scanned for expiry, age and anomalies.
    pub scan_interval: PositiveDuration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            expiring_within: PositiveDuration::secs(7 * DAY),
            anomaly_factor: 5.0,
            anomaly_floor: 100,
            anomaly_cooldown: PositiveDuration::secs(HOUR),
            scan_interval: PositiveDuration::secs(MINUTE),
        }
    }
}

/// `[webhooks]`: how deliveries are sent and retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    pub timeout: PositiveDuration,
    /// The wait after the first failure; doubled after each, up to `retry_max`.
    pub retry_base: PositiveDuration,
    pub retry_max: PositiveDuration,
    /// A delivery still failing this long after its event is given up.
    pub give_up_after: PositiveDuration,
    pub poll_interval: PositiveDuration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            timeout: PositiveDuration::secs(10),
            retry_base: PositiveDuration::secs(30),
            retry_max: PositiveDuration::secs(HOUR),
            give_up_after: PositiveDuration::secs(DAY),
            poll_interval: PositiveDuration::secs(1),
        }
    }
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
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub tls: Option<TlsConfig>,
    pub access_log: AccessLogSettings,
    pub gateway_threads: usize,
    /// How request paths are canonicalised before anything reads them.
    pub path_rules: PathRules,
    pub background_priority: BackgroundPriority,
    pub dashboard: DashboardSettings,
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
    let limiter = validate_limiter(&config.limiter).map_err(|(field, message)| invalid(&field, message))?;
    let headers = RateLimitHeaderStyle {
        x_ratelimit: config.headers.ratelimit.contains(&HeaderStyle::XRateLimit),
        ietf: config.headers.ratelimit.contains(&HeaderStyle::Ietf),
    };

    let errors = ErrorCatalog::new(
        config.errors.format,
        &config.errors.messages,
        config.errors.invalid_key_status,
        config.errors.hide_key_state,
        &config.errors.realm,
    )
    .map_err(|e| match e {
        CatalogError::InvalidKeyStatus(_) => invalid("errors.invalid_key_status", e.to_string()),
        CatalogError::UnknownCode(_) => invalid("errors.messages", e.to_string()),
        CatalogError::Realm => invalid("errors.realm", e.to_string()),
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
            verifier: keygate_engine::VerifierSettings {
                key_format,
                cache_capacity: config.cache.capacity,
                cache_ttl: config.cache.ttl.get(),
                cache_ttl_unheard: config.cache.ttl_unheard.get(),
                max_stale: config.store.max_stale.get(),
                store_timeout: config.store.timeout.get(),
                negative_cache_ttl: config.cache.negative_ttl.get(),
                failed_attempts: FailurePolicy {
                    max_failures: config.security.max_failed_attempts,
                    window: config.security.failed_attempts_window.get(),
                },
                plans: PlanBook::new(plans, config.limiter.default_plan.clone()),
            },
            admin: keygate_engine::admin::AdminSettings {
                default_rotation_grace: config.keys.rotation_grace.get(),
                max_metadata_bytes: config.keys.max_metadata_bytes,
            },
            usage: keygate_engine::usage::UsageSettings {
                enabled: config.usage.enabled,
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

fn validate_limiter(config: &LimiterConfig) -> Result<LimiterSettings, (String, String)> {
    let fail = |field: &str, message: String| (format!("limiter.{field}"), message);
    let timeout = config.timeout.get();
    if config.max_counters == 0 {
        return Err(fail("max_counters", "must be positive".into()));
    }
    let redis_url = match config.url.split_once("://") {
        Some(("memory", "")) => None,
        Some(("redis", rest)) if !rest.is_empty() => Some(config.url.clone()),
        _ => {
            return Err(fail(
                "url",
                format!("`{}` must be memory:// or redis://HOST:PORT", config.url),
            ))
        }
    };
    Ok(LimiterSettings {
        redis_url,
        on_failure: config.on_failure,
        timeout,
        max_counters: config.max_counters,
    })
}

#[cfg(test)]
mod tests;
