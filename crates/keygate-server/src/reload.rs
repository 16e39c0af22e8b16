//! Config reload without a restart (issue 16): SIGHUP or
//! `POST /v1/config/reload` re-reads the node's config the way the start did
//! ([`ConfigSource`]). What may change live, [`Live`], is swapped whole for
//! new requests: routes and their targets, error messages and format, and the
//! rate-limit header policy, with the plans and roles in the engine. A request in
//! flight keeps the `Live` it started with. A file that does not validate, or
//! that changes a setting only a restart can apply, is refused whole and the
//! running config stays; `/readyz` and the log say so.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use keygate_core::{ErrorCatalog, ErrorFormat};
use keygate_engine::Engine;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{Config, ConfigError, ConfigSource, Loaded, RateLimitHeaderStyle, Route, Settings};
use crate::http::proxy::Upstream;
use crate::secrets::{self, KeyOrigin, SecretsError};

/// The fields of [`Config`] a reload applies; a change anywhere else is
/// refused with the fields named. Plans are in the engine
/// ([`Engine::replace_plans`]), as are roles.
pub const LIVE_FIELDS: [&str; 6] = ["routes", "plans", "roles", "limiter.default_plan", "errors", "headers"];

/// What requests read from the config that a reload may change.
pub struct Live {
    /// Every route with its targets, in config order.
    pub upstreams: Arc<[Upstream]>,
    /// The data plane's error catalog.
    pub catalog: Arc<ErrorCatalog>,
    /// The same statuses and messages in the envelope, for the verify API.
    pub verify_catalog: Arc<ErrorCatalog>,
    pub headers: RateLimitHeaderStyle,
}

impl Live {
    /// The live part of `settings`. A route whose targets are unchanged keeps
    /// them from `previous`, with what is known of their health.
    fn new(settings: &Settings, previous: Option<&Live>) -> Self {
        let unchanged: HashMap<&str, &Upstream> = previous
            .map(|live| live.upstreams.iter().map(|u| (u.route.path.as_str(), u)).collect())
            .unwrap_or_default();
        let upstreams = settings
            .routes
            .iter()
            .map(|route| match unchanged.get(route.path.as_str()) {
                Some(old) if same_targets(&old.route, route) => old.with_route(route.clone()),
                _ => Upstream::new(route.clone()),
            })
            .collect();
        Self {
            upstreams,
            catalog: Arc::new(settings.errors.clone()),
            verify_catalog: Arc::new(settings.errors.clone().with_format(ErrorFormat::Envelope)),
            headers: settings.headers.clone(),
        }
    }
}

/// Whether a route's targets would be built the same (crates/keygate-server/src/http/pool.rs).
fn same_targets(old: &Route, new: &Route) -> bool {
    old.upstreams == new.upstreams
        && old.balance == new.balance
        && old.eject_after == new.eject_after
        && old.eject_for == new.eject_for
        && old.connect_timeout == new.connect_timeout
}

/// The current [`Live`], shared by both planes; cheap to clone.
#[derive(Clone)]
pub struct LiveConfig {
    current: Arc<ArcSwap<Live>>,
    /// Bumped by each swap, for tasks that follow the config (health checks).
    generation: Arc<watch::Sender<u64>>,
}

impl LiveConfig {
    pub fn new(settings: &Settings) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(Live::new(settings, None))),
            generation: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The config a request uses from start to end.
    pub fn snapshot(&self) -> Arc<Live> {
        self.current.load_full()
    }

    /// Changes whenever the config is swapped.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn swap(&self, settings: &Settings) {
        let next = Live::new(settings, Some(&self.current.load()));
        self.current.store(Arc::new(next));
        self.generation.send_modify(|generation| *generation += 1);
    }
}

/// Why a reload was refused. The running config is unchanged either way.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("these settings cannot change while keygate runs: {}; restart to apply them", .0.join(", "))]
    NeedsRestart(Vec<String>),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("the reload stopped before it finished")]
    Interrupted,
}

/// What a successful reload changed.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    /// The live fields whose values differ from the running config's.
    pub changed: Vec<&'static str>,
    pub routes: usize,
}

/// Reloads so far, for `/readyz`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// Successful reloads since the start.
    pub reloads: u64,
    pub last_reload_at: Option<DateTime<Utc>>,
    /// Set while the newest attempt was refused; cleared by a successful one.
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

/// Re-reads the config and applies its live fields.
pub struct Reloader {
    source: ConfigSource,
    /// The config now applied; a reload is compared against it.
    applied: Mutex<Config>,
    status: Mutex<ReloadStatus>,
    live: LiveConfig,
    engine: Arc<Engine>,
}

impl Reloader {
    pub fn new(loaded: &Loaded, live: LiveConfig, engine: Arc<Engine>) -> Self {
        Self {
            source: loaded.source.clone(),
            applied: Mutex::new(loaded.config.clone()),
            status: Mutex::new(ReloadStatus::default()),
            live,
            engine,
        }
    }

    /// Reads the source again; applies it if it validates and changes only
    /// live fields. Reloads run one at a time.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let mut applied = self.applied.lock();
        let outcome = self.source.load().map_err(ReloadError::from).and_then(|loaded| {
            let fixed = changed_fields(&applied, &loaded.config, &LIVE_FIELDS);
            if !fixed.is_empty() {
                return Err(ReloadError::NeedsRestart(fixed));
            }
            let settings = &loaded.settings;
            let (keyring, origin) = secrets::load_keyring(settings.secrets_key_file.as_deref(), &settings.store_url)?;
            // A key of this process alone is kept: a new one would open nothing sealed so far.
            let keyring = (origin != KeyOrigin::Ephemeral).then_some(keyring);
            Ok((loaded, keyring))
        });
        let now = self.engine.now();
        let mut status = self.status.lock();
        match outcome {
            Ok((loaded, keyring)) => {
                let changed = LIVE_FIELDS
                    .into_iter()
                    .filter(|field| field_value(&applied, field) != field_value(&loaded.config, field))
                    .collect();
                self.engine
                    .verifier()
                    .replace_plans(loaded.settings.engine.verifier.plans.clone());
                self.engine
                    .verifier()
                    .replace_roles(loaded.settings.engine.verifier.roles.clone());
                if let Some(keyring) = keyring {
                    // A rotation's new first key seals from now on; the old ones still open.
                    self.engine.replace_keyring(keyring);
                }
                self.live.swap(&loaded.settings);
                *applied = loaded.config;
                status.reloads += 1;
                status.last_reload_at = Some(now);
                status.last_error = None;
                status.last_error_at = None;
                let reloaded = Reloaded {
                    changed,
                    routes: loaded.settings.routes.len(),
                };
                tracing::info!(changed = ?reloaded.changed, routes = reloaded.routes, "config reloaded");
                Ok(reloaded)
            }
            Err(err) => {
                tracing::error!(error = %err, "config reload refused; the running config is unchanged");
                status.last_error = Some(err.to_string());
                status.last_error_at = Some(now);
                Err(err)
            }
        }
    }

    /// [`Reloader::reload`] off the async threads: it reads a file.
    pub async fn reload_now(self: Arc<Self>) -> Result<Reloaded, ReloadError> {
        tokio::task::spawn_blocking(move || self.reload())
            .await
            .unwrap_or(Err(ReloadError::Interrupted))
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().clone()
    }
}

/// `config` as JSON, with the value at a dotted `field` path.
fn field_value(config: &Config, field: &str) -> Value {
    let value = serde_json::to_value(config).unwrap_or(Value::Null);
    field
        .split('.')
        .try_fold(value, |value, part| match value {
            Value::Object(mut map) => map.remove(part),
            _ => None,
        })
        .unwrap_or(Value::Null)
}

/// The dotted paths where `old` and `new` differ, leaving out `ignored`
/// paths and what is under them. A changed table is named by its changed
/// fields, a changed list or value by its own name.
pub fn changed_fields(old: &Config, new: &Config, ignored: &[&str]) -> Vec<String> {
    let to_json = |config: &Config| serde_json::to_value(config).unwrap_or(Value::Null);
    let mut changed = Vec::new();
    diff(&to_json(old), &to_json(new), "", ignored, &mut changed);
    changed
}

fn diff(old: &Value, new: &Value, path: &str, ignored: &[&str], changed: &mut Vec<String>) {
    if ignored.contains(&path) || old == new {
        return;
    }
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let child = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                let missing = Value::Null;
                diff(
                    old.get(name).unwrap_or(&missing),
                    new.get(name).unwrap_or(&missing),
                    &child,
                    ignored,
                    changed,
                );
            }
        }
        _ => changed.push(path.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_fields_are_left_out_and_others_are_named_by_their_path() {
        let old = Config::default();
        let mut new = old.clone();
        new.server.gateway_addr = "0.0.0.0:9999".into();
        new.store.url = "postgres://elsewhere/db".into();
        new.headers.ratelimit = vec![crate::config::HeaderStyle::Ietf];
        new.limiter.default_plan = Some("free".into());
        new.routes.push(crate::config::catch_all_route("http://127.0.0.1:1"));
        assert_eq!(
            changed_fields(&old, &new, &LIVE_FIELDS),
            vec!["server.gateway_addr".to_owned(), "store.url".to_owned()]
        );
    }

    #[test]
    fn an_unchanged_config_changes_nothing() {
        let config = Config::default();
        assert!(changed_fields(&config, &config.clone(), &[]).is_empty());
    }

    #[test]
    fn a_changed_list_is_named_whole() {
        let old = Config::default();
        let mut new = old.clone();
        new.server.trusted_proxies.push("10.0.0.0/8".into());
        assert_eq!(
            changed_fields(&old, &new, &LIVE_FIELDS),
            vec!["server.trusted_proxies".to_owned()]
        );
    }

    #[test]
    fn field_values_are_found_by_their_dotted_path() {
        let mut config = Config::default();
        config.limiter.default_plan = Some("free".into());
        assert_eq!(field_value(&config, "limiter.default_plan"), Value::from("free"));
        assert_eq!(field_value(&config, "no.such.field"), Value::Null);
    }
}
