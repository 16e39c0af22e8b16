//! Commands that run in this process: `serve`, `admin create-key`, `migrate`,
//! `config check`, `secrets generate-key` and `secrets rotate`.

use std::path::Path;
use std::sync::Arc;

use keygate_core::secrets::Keyring;
use keygate_engine::{Engine, EngineKeyring, EngineSettings, SystemClock};
use keygate_server::config::{self, catch_all_route};
use keygate_server::secrets::{self, KeyOrigin};
use keygate_server::{App, ConfigSource, Loaded, Settings};
use keygate_store::Store;
use tracing_subscriber::EnvFilter;

fn load_config(explicit: Option<&Path>, upstream: Option<String>) -> Result<Loaded, String> {
    let file = config::resolve_file(explicit).map_err(|e| e.to_string())?;
    let source = ConfigSource {
        file,
        extra_routes: upstream.iter().map(|upstream| catch_all_route(upstream)).collect(),
    };
    source.load().map_err(|e| e.to_string())
}

fn load_settings(explicit: Option<&Path>) -> Result<(Option<std::path::PathBuf>, Settings), String> {
    let loaded = load_config(explicit, None)?;
    Ok((loaded.source.file, loaded.settings))
}

async fn open_store(url: &str) -> Result<Arc<dyn Store>, String> {
    keygate_store::open(url)
        .await
        .map_err(|e| format!("cannot open the store at {url}: {e}"))
}

/// An engine working directly on the configured store, for the commands that
/// need no server. They charge no limits, so a memory limiter satisfies it.
async fn engine_on_store(store_url: &str, settings: EngineSettings) -> Result<Engine, String> {
    let store = open_store(store_url).await?;
    let limiter = Arc::new(keygate_limiter::memory::MemoryLimiter::new(1));
    Ok(Engine::new(store, Arc::new(SystemClock), limiter, settings))
}

/// Logs go to stderr; stdout carries only what a person or script asked for.
fn init_logging() {
    let filter = EnvFilter::try_from_env("KEYGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `keygate keys patterns`: leak-scanner rules for the configured key format.
pub fn print_patterns(explicit: Option<&Path>, format: crate::patterns::PatternFormat) -> Result<(), String> {
    let (_, settings) = load_settings(explicit)?;
    print!(
        "{}",
        crate::patterns::render(format, &settings.engine.verifier.key_format)
    );
    Ok(())
}

/// `keys scan`: the deployment's keys in `paths`, checked against the
/// server with `--check` (crates/keygate-cli/src/scan.rs).
pub async fn scan_keys(
    explicit: Option<&Path>,
    args: &crate::api::KeysArgs,
    paths: &[std::path::PathBuf],
    check: bool,
) -> Result<(), String> {
    let (_, settings) = load_settings(explicit)?;
    let progress = crate::scan::spinner();
    let scanned = crate::scan::scan(paths, &settings.engine.verifier.key_format, &progress);
    progress.finish_and_clear();
    let mut scanned = scanned?;
    if check {
        let found = args.lookup(&crate::scan::hashes(&scanned)).await?;
        crate::scan::apply_statuses(&mut scanned, &found);
    }
    crate::scan::report(&scanned, args.json(), check)
}

pub async fn serve(explicit: Option<&Path>, upstream: Option<String>) -> Result<(), String> {
    init_logging();
    let mut signals = Signals::install()?;
    let loaded = load_config(explicit, upstream)?;
    let file = loaded.source.file.clone();
    let store = open_store(&loaded.settings.store_url).await?;
    let routes = loaded.settings.routes.len();
    let app = App::start(loaded, store, Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    let bootstrap_key = if app.engine.admin().needs_bootstrap().await.map_err(|e| e.to_string())? {
        let (key, plaintext) = app
            .engine
            .admin()
            .create_admin_key("Bootstrap admin key")
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(key_id = %key.id, "created the first admin key");
        Some(plaintext)
    } else {
        None
    };
    print_banner(
        &app,
        file.as_deref(),
        routes,
        bootstrap_key.as_ref().map(|k| k.expose()),
    );
    signals.wait_for_stop(&app).await;
    tracing::info!("shutting down");
    app.shutdown().await;
    Ok(())
}

fn print_banner(app: &App, file: Option<&Path>, routes: usize, admin_key: Option<&str>) {
    let gateway = format!("{}://{}", app.gateway_scheme, app.gateway_addr);
    let admin = format!("http://{}", app.admin_addr);
    let config = file.map_or("built-in defaults".to_owned(), |f| f.display().to_string());
    println!("keygate is running ({config}).");
    println!();
    println!(
        "  Gateway (data plane)   {gateway}   {}",
        if routes == 0 {
            "(no routes: serves GET /v1/whoami)".to_owned()
        } else {
            format!("({routes} routes)")
        }
    );
    println!("  Admin API              {admin}/v1/");
    println!("  OpenAPI                {admin}/openapi.json");
    if app.dashboard {
        println!("  Dashboard              {admin}/dashboard   (sign in with the admin key)");
    }
    println!();
    match admin_key {
        Some(key) => {
            println!("  This is the first start, so an admin key was created.");
            println!("  It is shown once and never again; store it now:");
            println!();
            println!("      {key}");
            println!();
            println!("  Try it: create a workspace, then a key in it:");
            println!();
            println!("      export KEYGATE_ADMIN_KEY={key}");
            println!("      curl -s -X POST {admin}/v1/workspaces -H \"X-API-Key: $KEYGATE_ADMIN_KEY\" \\");
            println!("           -H 'Content-Type: application/json' -d '{{\"name\": \"Acme\"}}'");
        }
        None => {
            println!("  Use your admin key (X-API-Key or Authorization: Bearer) with the admin API.");
            println!("  Lost it? `keygate admin create-key` prints a new one.");
        }
    }
    println!();
    println!("  Next: the walk-through in README.md. Stop with Ctrl-C.");
}

/// Ctrl-C and SIGTERM stop the node; SIGHUP reloads its config file. Made
/// before the banner is printed, so a SIGHUP sent as soon as it shows
/// reloads instead of ending the process.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let install = |kind| signal(kind).map_err(|e| format!("cannot listen for signals: {e}"));
            Ok(Self {
                term: install(SignalKind::terminate())?,
                hangup: install(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Until Ctrl-C or SIGTERM; each SIGHUP meanwhile reloads the config
    /// (the outcome is logged, and `/readyz` shows it).
    async fn wait_for_stop(&mut self, app: &App) {
        #[cfg(unix)]
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = self.term.recv() => return,
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    // A refusal is logged by the reloader and shown by `/readyz`.
                    let _ = app.reloader.clone().reload_now().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = app;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub async fn create_admin_key(explicit: Option<&Path>, name: &str, json: bool) -> Result<(), String> {
    let (_, settings) = load_settings(explicit)?;
    let engine = engine_on_store(&settings.store_url, settings.engine).await?;
    let (key, plaintext) = engine.admin().create_admin_key(name).await.map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::json!({"id": key.id, "name": key.name, "key": plaintext.expose()})
        );
    } else {
        println!(
            "Created admin key {} ({}). It is shown once; store it now:",
            key.id, key.name
        );
        println!();
        println!("    {}", plaintext.expose());
    }
    Ok(())
}

pub fn generate_secrets_key() -> Result<(), String> {
    println!("{}", Keyring::generate_key(&mut rand::thread_rng()));
    Ok(())
}

/// `keygate secrets rotate`: see crates/keygate-server/src/secrets.rs.
pub async fn rotate_secrets(explicit: Option<&Path>, json: bool) -> Result<(), String> {
    let (_, settings) = load_settings(explicit)?;
    let key_file = settings.secrets_key_file.as_deref();
    let (_, origin) = secrets::load_keyring(key_file, &settings.store_url).map_err(|e| e.to_string())?;
    let added = match origin.file() {
        Some(path) => Some(secrets::add_key_to_file(path).map_err(|e| e.to_string())?),
        None if origin == KeyOrigin::Ephemeral => {
            return Err("the store is SQLite in memory: nothing is kept to re-seal".into());
        }
        None => None,
    };
    let (keyring, _) = secrets::load_keyring(key_file, &settings.store_url).map_err(|e| e.to_string())?;
    let key_id = keyring.sealing_key_id().to_owned();
    let engine_settings = EngineSettings {
        keyring: EngineKeyring::new(keyring),
        ..settings.engine
    };
    let engine = engine_on_store(&settings.store_url, engine_settings).await?;
    let report = engine
        .admin()
        .reseal_webhook_secrets()
        .await
        .map_err(|e| format!("re-sealing failed: {e}"))?;
    if json {
        let file = origin.file().map(|path| path.display().to_string());
        println!(
            "{}",
            serde_json::json!({"key_id": key_id, "key_file": file, "resealed": report.resealed,
                "current": report.current, "unopened": report.unopened})
        );
    } else {
        match (added.is_some(), origin.file()) {
            (true, Some(path)) => println!(
                "Added key {key_id} first in {}; older keys stay after it.",
                path.display()
            ),
            _ => println!("Sealing with key {key_id}, the first of {}.", secrets::KEY_ENV),
        }
        println!(
            "Webhook secrets: {} re-sealed, {} already under {key_id}, {} that no key here opens.",
            report.resealed, report.current, report.unopened
        );
        println!("Reload running nodes (SIGHUP or `keygate config reload`) so they seal with {key_id} too.");
    }
    if report.unopened > 0 {
        return Err(format!(
            "{} webhook secrets were sealed with a key this keyring does not hold; they were left as they are",
            report.unopened
        ));
    }
    Ok(())
}

pub async fn migrate(explicit: Option<&Path>) -> Result<(), String> {
    let (_, settings) = load_settings(explicit)?;
    open_store(&settings.store_url).await?;
    println!("Migrations applied: {}", settings.store_url);
    Ok(())
}

pub fn check_config(explicit: Option<&Path>) -> Result<(), String> {
    let (file, settings) = load_settings(explicit)?;
    let source = file.map_or("built-in defaults".to_owned(), |f| f.display().to_string());
    println!("Configuration OK ({source}).");
    println!(
        "  gateway {}  admin {}  store {}",
        settings.gateway_addr, settings.admin_addr, settings.store_url
    );
    println!(
        "  key prefix `{}`, environments [{}], {} plans, {} routes, errors as {:?}",
        settings.engine.verifier.key_format.prefix(),
        settings.engine.verifier.key_format.environments().join(", "),
        settings.engine.verifier.plans.names().count(),
        settings.routes.len(),
        settings.errors.format()
    );
    Ok(())
}
