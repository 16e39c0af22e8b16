//! Starting and stopping a keygate node: both planes, the usage flusher, the
//! listener for other nodes' changes, and a graceful shutdown that finishes
//! in-flight requests and flushes usage.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keygate_engine::{Clock, Engine, EngineKeyring, EngineSettings};
use keygate_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::background;
use crate::config::{LimiterSettings, Loaded, Settings};
use crate::http::access_log::{AccessLog, AccessLogGuard};
use crate::http::admin::{self, AdminState};
use crate::http::gateway::Gateway;
use crate::http::health;
use crate::http::transport::{self, ServeOptions, TlsError};
use crate::reload::{LiveConfig, Reloader};
use crate::secrets::{self, KeyOrigin, SecretsError};
use crate::telemetry::Telemetry;
use crate::webhook_sender::HttpWebhookSender;
use keygate_engine::webhooks::WebhookSender;
use keygate_limiter::memory::MemoryLimiter;
use keygate_limiter::redis::RedisLimiter;
use keygate_limiter::resilient::ResilientLimiter;
use keygate_limiter::Limiter;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("limiter.url: {0}")]
    Limiter(#[from] keygate_limiter::LimiterError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("access_log: cannot open {target:?}: {source}")]
    AccessLog {
        target: crate::config::AccessLogSettings,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the webhook client: {0}")]
    WebhookClient(#[from] reqwest::Error),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error("cannot start the background thread: {0}")]
    Background(#[source] std::io::Error),
    #[error("cannot listen on {addr} ({plane}): {source}")]
    Bind {
        plane: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running node. [`App::shutdown`] stops it gracefully; dropping it
/// stops it without waiting (its threads end, its background work flushes
/// once more and closes its store connection).
pub struct App {
    pub gateway_addr: SocketAddr,
    /// `https` when the data plane terminates TLS, else `http`.
    pub gateway_scheme: &'static str,
    pub admin_addr: SocketAddr,
    /// Whether `/dashboard` is served on the control plane.
    pub dashboard: bool,
    pub engine: Arc<Engine>,
    /// Applies a changed config file (SIGHUP, `POST /v1/config/reload`).
    pub reloader: Arc<Reloader>,
    /// Cancelled by [`App::shutdown`] or on drop: every task and thread watches it.
    stop: StopOnDrop,
    tasks: TaskTracker,
    shutdown_timeout: Duration,
    access_log: AccessLogGuard,
    telemetry: Option<Arc<Telemetry>>,
}

impl App {
    pub async fn start(loaded: Loaded, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Result<Self, ServeError> {
        let settings = &loaded.settings;
        let tls = match &settings.tls {
            Some(files) => Some(transport::tls_acceptor(&files.cert, &files.key)?),
            None => None,
        };
        let (access_log, access_log_guard) =
            AccessLog::open(&settings.access_log).map_err(|source| ServeError::AccessLog {
                target: settings.access_log.clone(),
                source,
            })?;
        let engine = start_engine(settings, store, clock)?;
        let telemetry = match &settings.telemetry {
            Some(telemetry) => Some(Arc::new(Telemetry::start(telemetry, engine.nodes().id())?)),
            None => None,
        };
        let gateway_listener = bind("gateway", settings.gateway_addr).await?;
        let admin_listener = bind("admin", settings.admin_addr).await?;
        let gateway_addr = local_addr(&gateway_listener, settings.gateway_addr);
        let admin_addr = local_addr(&admin_listener, settings.admin_addr);
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let config = LiveConfig::new(settings);
        let reloader = Arc::new(Reloader::new(&loaded, config.clone(), engine.clone()));

        let gateway_threads = transport::serve_on_threads(
            "gateway",
            gateway_listener.into_std().map_err(gateway_error(gateway_addr))?,
            settings.gateway_threads,
            || {
                Gateway::new(
                    engine.clone(),
                    settings,
                    config.clone(),
                    access_log.clone(),
                    telemetry.clone(),
                )
            },
            ServeOptions {
                tls,
                max_header_bytes: settings.max_header_bytes,
            },
            stop.clone(),
        )
        .map_err(gateway_error(gateway_addr))?;
        tasks.spawn(health::run(config.clone(), stop.clone().cancelled_owned()));
        let admin_router = admin::router(AdminState::new(
            engine.clone(),
            config,
            reloader.clone(),
            settings.trusted_proxies.clone(),
            settings.dashboard.clone(),
            crate::github::GithubKeys::new(
                settings.github_keys_file.clone(),
                settings.github_keys_url.clone(),
                settings.github_keys_refresh,
            ),
        ));

        tasks.spawn(transport::serve(
            "admin",
            admin_listener,
            admin_router,
            ServeOptions {
                tls: None,
                max_header_bytes: settings.max_header_bytes,
            },
            stop.clone(),
        ));
        let addresses = keygate_engine::nodes::NodeAddresses {
            gateway: gateway_addr.to_string(),
            admin: admin_addr.to_string(),
        };
        let background = run_node_work(&engine, settings, addresses, &stop, &tasks).inspect_err(|_| {
            // The planes started above stop with it.
            stop.cancel();
        })?;
        // Threads are waited for through the channel each closes when done.
        for finished in gateway_threads.into_iter().chain([background]) {
            tasks.spawn(finished);
        }
        tasks.close();
        tracing::info!(%gateway_addr, %admin_addr, "keygate started");
        Ok(Self {
            gateway_addr,
            gateway_scheme: if settings.tls.is_some() { "https" } else { "http" },
            admin_addr,
            dashboard: settings.dashboard.enabled,
            engine,
            reloader,
            stop: StopOnDrop(stop),
            tasks,
            shutdown_timeout: settings.shutdown_timeout,
            access_log: access_log_guard,
            telemetry,
        })
    }

    /// Stops accepting, lets in-flight requests finish (bounded by
    /// `server.shutdown_timeout`), then flushes usage.
    pub async fn shutdown(self) {
        self.stop.0.cancel();
        if tokio::time::timeout(self.shutdown_timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown timed out; flushing usage and exiting");
            if let Err(err) = self.engine.usage().flush().await {
                tracing::error!(error = %err, "final usage flush failed");
            }
        }
        // Flushes the access-log lines still queued.
        drop(self.access_log);
        if let Some(telemetry) = self.telemetry {
            // Sends the spans still queued; it blocks, so off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
        tracing::info!("keygate stopped");
    }
}

/// A node's engine: its limiter, its secrets keys and the store.
pub(crate) fn start_engine(
    settings: &Settings,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
) -> Result<Arc<Engine>, ServeError> {
    let limiter = build_limiter(&settings.limiter)?;
    let (keyring, origin) = secrets::load_keyring(settings.secrets_key_file.as_deref(), &settings.store_url)?;
    say_where_the_keys_are(&origin);
    let engine_settings = EngineSettings {
        keyring: EngineKeyring::new(keyring),
        ..settings.engine.clone()
    };
    Ok(Arc::new(Engine::new(store, clock, limiter, engine_settings)))
}

/// What every node runs besides its HTTP planes, until `stop`: hearing the
/// other nodes' changes, heartbeats (so it is listed and confirms
/// receipts), re-sealing webhook secrets once, and the background thread
/// (usage, events, webhooks), whose end the returned channel tells.
pub(crate) fn run_node_work(
    engine: &Arc<Engine>,
    settings: &Settings,
    addresses: keygate_engine::nodes::NodeAddresses,
    stop: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<tokio::sync::oneshot::Receiver<()>, ServeError> {
    let sender: Arc<dyn WebhookSender> = Arc::new(HttpWebhookSender::new()?);
    tasks.spawn(engine.clone().run_change_listener(stop.clone()));
    tasks.spawn(engine.clone().run_heartbeats(addresses, stop.clone()));
    tasks.spawn(reseal_webhook_secrets(engine.clone()));
    background::run(
        settings.background_priority,
        background_work(
            engine.clone(),
            settings.store_url.clone(),
            settings.usage_flush_interval,
            sender,
            stop.clone(),
        ),
    )
    .map_err(ServeError::Background)
}

fn say_where_the_keys_are(origin: &KeyOrigin) {
    match origin {
        KeyOrigin::Generated(path) => tracing::info!(
            path = %path.display(),
            "generated the secrets key that seals webhook secrets at rest (mode 0600); back it up apart from the database: without it no webhook can be signed"
        ),
        KeyOrigin::File(path) => tracing::debug!(path = %path.display(), "secrets key read"),
        KeyOrigin::Environment => tracing::debug!("secrets key read from {}", secrets::KEY_ENV),
        KeyOrigin::Ephemeral => tracing::debug!("in-memory store: the secrets key lives as long as this process"),
    }
}

/// Seals what a keygate from before sealing left in plaintext, and what an
/// older key sealed (after a rotation), once per start.
async fn reseal_webhook_secrets(engine: Arc<Engine>) {
    match engine.admin().reseal_webhook_secrets().await {
        Ok(report) if report.unopened > 0 => tracing::warn!(
            ?report,
            "some webhook secrets do not open with this node's secrets keys; their deliveries fail until the key that sealed them is back (secrets.key_file)"
        ),
        Ok(report) if report.resealed > 0 => tracing::info!(?report, "webhook secrets sealed under the current secrets key"),
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "re-sealing webhook secrets failed; the next start tries again"),
    }
}

/// Cancels its token when dropped, so a node dropped without
/// [`App::shutdown`] (a test that ends) leaves no thread running.
pub(crate) struct StopOnDrop(pub(crate) CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The usage flusher and the event workers, on the background thread
/// (crates/keygate-server/src/background.rs) with a store connection of
/// their own, opened there so its threads run at that thread's priority.
/// Store connections of background work: it runs one pass at a time.
const BACKGROUND_CONNECTIONS: u32 = 2;

fn background_work(
    engine: Arc<Engine>,
    store_url: String,
    flush_interval: Duration,
    sender: Arc<dyn WebhookSender>,
    stop: CancellationToken,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static {
    move || {
        Box::pin(async move {
            match keygate_store::open_with_connections(&store_url, BACKGROUND_CONNECTIONS).await {
                Ok(store) => {
                    engine.use_background_store(store);
                }
                Err(err) => tracing::warn!(error = %err, "background work shares the request path's store connections"),
            }
            engine.run_background(flush_interval, sender, stop).await;
        })
    }
}

/// `memory://`, or Redis with a local fallback behind a circuit breaker.
pub fn build_limiter(settings: &LimiterSettings) -> Result<Arc<dyn Limiter>, ServeError> {
    let local = Arc::new(MemoryLimiter::new(settings.max_counters));
    Ok(match &settings.redis_url {
        None => local,
        Some(url) => {
            let redis = RedisLimiter::new(url, settings.timeout)?.with_leases(settings.lease_max);
            Arc::new(ResilientLimiter::new(
                redis,
                local,
                settings.on_failure,
                settings.timeout,
            ))
        }
    })
}

fn gateway_error(addr: SocketAddr) -> impl Fn(std::io::Error) -> ServeError {
    move |source| ServeError::Bind {
        plane: "gateway",
        addr,
        source,
    }
}

async fn bind(plane: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { plane, addr, source })
}

fn local_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}
