//! Commands that run in this process: `serve`, `admin create-key`, `migrate`, `config check`.

use std::path::Path;
use std::sync::Arc;

use keygate_engine::{Engine, SystemClock};
use keygate_server::config::{self, catch_all_route};
use keygate_server::{App, Settings};
use keygate_store::Store;
use tracing_subscriber::EnvFilter;

fn load_settings(
    explicit: Option<&Path>,
    upstream: Option<String>,
) -> Result<(Option<std::path::PathBuf>, Settings), String> {
    let file = config::resolve_file(explicit).map_err(|e| e.to_string())?;
    let mut config = config::read(file.as_deref()).map_err(|e| e.to_string())?;
    if let Some(upstream) = upstream {
        config.routes.push(catch_all_route(&upstream));
    }
    let settings = config::validate(&config, file.as_deref()).map_err(|e| e.to_string())?;
    Ok((file, settings))
}

async fn open_store(url: &str) -> Result<Arc<dyn Store>, String> {
    keygate_store::open(url)
        .await
        .map_err(|e| format!("cannot open the store at {url}: {e}"))
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

pub async fn serve(explicit: Option<&Path>, upstream: Option<String>) -> Result<(), String> {
    init_logging();
    let (file, settings) = load_settings(explicit, upstream)?;
    let store = open_store(&settings.store_url).await?;
    let routes = settings.routes.len();
    let app = App::start(settings, store, Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    let bootstrap_key = if app.engine.needs_bootstrap().await.map_err(|e| e.to_string())? {
        let (key, plaintext) = app
            .engine
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
    wait_for_signal().await;
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

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

pub async fn create_admin_key(explicit: Option<&Path>, name: &str, json: bool) -> Result<(), String> {
    let (_, settings) = load_settings(explicit, None)?;
    let store = open_store(&settings.store_url).await?;
    // Creating a key charges no limits; the memory limiter satisfies the engine.
    let limiter = Arc::new(keygate_limiter::memory::MemoryLimiter::new(1));
    let engine = Engine::new(store, Arc::new(SystemClock), limiter, settings.engine);
    let (key, plaintext) = engine.create_admin_key(name).await.map_err(|e| e.to_string())?;
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

pub async fn migrate(explicit: Option<&Path>) -> Result<(), String> {
    let (_, settings) = load_settings(explicit, None)?;
    open_store(&settings.store_url).await?;
    println!("Migrations applied: {}", settings.store_url);
    Ok(())
}

pub fn check_config(explicit: Option<&Path>) -> Result<(), String> {
    let (file, settings) = load_settings(explicit, None)?;
    let source = file.map_or("built-in defaults".to_owned(), |f| f.display().to_string());
    println!("Configuration OK ({source}).");
    println!(
        "  gateway {}  admin {}  store {}",
        settings.gateway_addr, settings.admin_addr, settings.store_url
    );
    println!(
        "  key prefix `{}`, environments [{}], {} plans, {} routes, errors as {:?}",
        settings.engine.key_format.prefix(),
        settings.engine.key_format.environments().join(", "),
        settings.engine.plans.len(),
        settings.routes.len(),
        settings.errors.format()
    );
    Ok(())
}
