//! What the config file says, section by section, as serde reads it: each
//! section with its defaults, each value typed where it is read
//! (`values.rs`), so a bad value is refused with its field named.
//! `validate` (in `config.rs`) turns these into [`super::Settings`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use keygate_core::limits::Plan;
use keygate_core::path::EscapedSlashes;
use keygate_core::ErrorFormat;
use keygate_limiter::resilient::OnFailure;
use serde::{Deserialize, Serialize};

use super::routes::RouteConfig;
use super::values::{ConfigDuration, ConfigSize, OtlpEndpoint, PositiveDuration, WholeMinutes};

/// Time spans the defaults are written in.
const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

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
    pub secrets: SecretsConfig,
    pub leaks: LeaksConfig,
    pub telemetry: TelemetryConfig,
    pub plans: BTreeMap<String, Plan>,
    /// Named bundles of scopes a key may hold: `reader = ["invoices:read"]`.
    pub roles: BTreeMap<String, Vec<String>>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimiterConfig {
    /// `memory://` (one node), `redis://host:port` (shared by many nodes), or
    /// `redis+cluster://host1:port,host2:port,...` (a Redis Cluster).
    pub url: String,
    /// When Redis is unreachable: `local`, `allow` or `deny`.
    pub on_failure: OnFailure,
    /// The longest a request waits on Redis before `on_failure` applies.
    pub timeout: PositiveDuration,
    /// Most counters held in memory (the memory backend, and the local fallback).
    pub max_counters: u64,
    /// Redis only: the most requests of one key a node admits from one block
    /// Redis leased it (crates/keygate-limiter/src/lease.rs); 0 decides
    /// every request in Redis.
    pub lease_max: u64,
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
            lease_max: 64,
            default_plan: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersConfig {
    /// Rate-limit header styles: `x-ratelimit` (X-RateLimit-*) and `ietf` (RateLimit-Policy, RateLimit).
    pub ratelimit: Vec<HeaderStyle>,
    /// Which limit `X-RateLimit-*` describe: `tightest`, `longest` or a window (`1h`).
    pub describe: keygate_core::ratelimit::Describe,
    /// Also describe the tightest shadow limit in `X-RateLimit-Shadow-*`.
    pub shadow: bool,
    /// The header carrying a key's credit balance, when it has credits.
    pub credits: String,
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
            describe: keygate_core::ratelimit::Describe::Tightest,
            shadow: false,
            credits: "X-Credits-Remaining".into(),
        }
    }
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
    /// Answer the common request (GET or HEAD without a body, over plain
    /// HTTP/1.1) on the data plane's hand-written path, a quarter less CPU
    /// than through hyper (crates/keygate-server/src/http/gateway/raw.rs).
    /// `false` sends every request through hyper.
    pub fast_path: bool,
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
            fast_path: true,
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
    /// Verify imported keys that are not in this format, by the hash of the
    /// whole string (crates/keygate-core/src/legacy.rs).
    pub legacy: bool,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            prefix: "kg".into(),
            environments: vec!["live".into(), "test".into()],
            rotation_grace: ConfigDuration::secs(DAY),
            max_metadata_bytes: 4096,
            max_age: ConfigDuration::secs(90 * DAY),
            legacy: false,
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
    /// `USAGE_EXCEEDED`'s status: 429 (default), 402 or 403.
    pub usage_exceeded_status: u16,
    /// Answer revoked and expired keys as `INVALID_API_KEY`.
    pub hide_key_state: bool,
    pub realm: String,
    /// Which `data` fields bodies carry: `true`, `false` or a list of names.
    pub data: keygate_core::error::DataFields,
    /// Whole bodies by code, with `{message}`, `{retry_after}`... (byte for byte).
    pub bodies: HashMap<String, String>,
}

impl Default for ErrorsConfig {
    fn default() -> Self {
        Self {
            format: ErrorFormat::Envelope,
            messages: HashMap::new(),
            invalid_key_status: 401,
            usage_exceeded_status: 429,
            hide_key_state: false,
            realm: "keygate".into(),
            data: keygate_core::error::DataFields::default(),
            bodies: HashMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Off: no usage counts and no last use are recorded (the benchmark's baseline).
    pub enabled: bool,
    pub flush_interval: PositiveDuration,
    /// How often complete minutes are rolled up into hours, days and the
    /// top keys' windows. Reads add the minutes not rolled up yet, so a
    /// longer interval makes nothing late; it spreads the roll-up's writes
    /// over more minutes (docs/decisions.md, "Usage rolled up every ten
    /// minutes, and keys re-read in batches").
    pub rollup_every: WholeMinutes,
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
            rollup_every: WholeMinutes::minutes(10),
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

/// `[secrets]`: the key that seals webhook secrets at rest
/// (crates/keygate-server/src/secrets.rs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// A file of keys, one `<id>:<base64 of 32 bytes>` a line, the first
    /// sealing. Unset: `KEYGATE_SECRETS_KEY`, else (SQLite only) a file next
    /// to the database, made on the first start.
    pub key_file: Option<PathBuf>,
}

/// `[leaks]`: reports of keys found in public
/// (crates/keygate-engine/src/admin/leaks.rs, crates/keygate-server/src/github.rs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaksConfig {
    /// GitHub's secret-scanning public keys, the JSON document GitHub
    /// publishes. Read at each report, so a replaced file applies at once.
    /// Unset: `POST /v1/leaks/github` answers 404.
    pub github_keys_file: Option<PathBuf>,
    /// Where GitHub publishes those keys
    /// (`https://api.github.com/meta/public_keys/secret_scanning`), fetched
    /// when a report needs them, kept for `github_keys_refresh`; the file,
    /// if also set, is read first. Unset (and no file): 404.
    pub github_keys_url: Option<String>,
    /// How long a fetched keys document is used before it is fetched again.
    pub github_keys_refresh: PositiveDuration,
    /// What a report of a live key does: `revoke`, `expire` (after `grace`)
    /// or `notify`; a workspace may set its own.
    pub on_report: keygate_core::model::OnLeak,
    /// With `on_report = "expire"`: how long a reported key keeps working.
    pub grace: PositiveDuration,
    /// Where anyone may report a key on the data plane (taken before the
    /// routes); `""` turns it off.
    pub report_path: String,
}

impl Default for LeaksConfig {
    fn default() -> Self {
        Self {
            github_keys_file: None,
            github_keys_url: None,
            github_keys_refresh: PositiveDuration::secs(3600),
            on_report: keygate_core::model::OnLeak::Revoke,
            grace: PositiveDuration::secs(3600),
            report_path: "/v1/leaks/report".to_owned(),
        }
    }
}

/// `[telemetry]`: OpenTelemetry traces of data-plane requests
/// (crates/keygate-server/src/telemetry.rs). Off unless an endpoint is set;
/// a restart applies a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// An OTLP/HTTP collector (`http://127.0.0.1:4318`): one span per
    /// data-plane request is sent to its `/v1/traces`.
    pub otlp_endpoint: Option<OtlpEndpoint>,
    /// `service.name` on every span.
    pub service_name: String,
    /// The share of traces started here that are recorded (0 to 1). A
    /// trusted proxy's `traceparent` brings its own decision, which is kept.
    pub sample_ratio: f64,
    /// How often gathered spans are sent.
    pub export_interval: PositiveDuration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "keygate".to_owned(),
            sample_ratio: 1.0,
            export_interval: PositiveDuration::secs(5),
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
