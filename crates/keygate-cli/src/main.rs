//! `keygate`: run a node, bootstrap admin keys, and drive the admin API from a terminal.

mod api;
mod import;
mod local;
mod output;
mod patterns;
mod scan;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// glibc's malloc showed up as about 15% of the CPU time of a proxied request;
/// mimalloc's thread-local free lists suit a server that allocates per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    about = "API keys, scopes, IP allowlists and rate limits in front of your API"
)]
struct Cli {
    /// Config file (TOML). Default: ./keygate.toml if present, else built-in defaults.
    #[arg(long, global = true, env = "KEYGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway and the admin API.
    Serve {
        /// Add a catch-all route that forwards authenticated requests to this URL.
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Work directly on the configured store (no server needed).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Manage API keys through a running server's admin API.
    Keys(api::KeysArgs),
    /// Manage workspaces through a running server's admin API.
    Workspaces(api::WorkspacesArgs),
    /// Manage webhook endpoints and read their deliveries.
    Webhooks(api::WebhooksArgs),
    /// List events (what webhooks receive), newest first.
    Events(api::EventsArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the configuration and exit.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The key that seals webhook secrets at rest.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Print a new key line (`<id>:<base64>`) for secrets.key_file or KEYGATE_SECRETS_KEY.
    GenerateKey,
    /// Put a new key first in the key file (the old ones stay, to open what
    /// they sealed) and re-seal every stored webhook secret under it. With
    /// KEYGATE_SECRETS_KEY, re-seal under its first key. Works on the store
    /// directly; reload running nodes afterwards (SIGHUP or `keygate config reload`).
    Rotate {
        #[command(flatten)]
        output: JsonFlag,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin key and print it once.
    CreateKey {
        #[arg(long, default_value = "Admin key")]
        name: String,
        #[command(flatten)]
        output: JsonFlag,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate the configuration, naming any bad field.
    Check,
    /// Make a running server re-read its config file (as SIGHUP does).
    Reload(api::ReloadArgs),
}

/// `keygate keys list | head` ends when `head` has read enough, as Unix
/// tools do, instead of panicking on the closed pipe (Rust ignores SIGPIPE,
/// so printing fails). `serve` keeps it ignored: a reader of its access log
/// that goes away must not stop a node.
fn end_quietly_on_a_closed_pipe() {
    // SAFETY: called at the start of `main`, before any other thread exists;
    // SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[derive(Args, Clone, Copy)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        end_quietly_on_a_closed_pipe();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let config = cli.config.clone();
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { upstream } => local::serve(config.as_deref(), upstream).await,
            Command::Admin {
                command: AdminCommand::CreateKey { name, output },
            } => local::create_admin_key(config.as_deref(), &name, output.json).await,
            Command::Migrate => local::migrate(config.as_deref()).await,
            Command::Config {
                command: ConfigCommand::Check,
            } => local::check_config(config.as_deref()),
            Command::Config {
                command: ConfigCommand::Reload(args),
            } => api::reload_config(args).await,
            Command::Secrets {
                command: SecretsCommand::GenerateKey,
            } => local::generate_secrets_key(),
            Command::Secrets {
                command: SecretsCommand::Rotate { output },
            } => local::rotate_secrets(config.as_deref(), output.json).await,
            Command::Keys(args) => match args.local() {
                Some(api::LocalKeys::Patterns(format)) => local::print_patterns(config.as_deref(), format),
                Some(api::LocalKeys::Scan { paths, check }) => {
                    local::scan_keys(config.as_deref(), &args, paths, check).await
                }
                None => api::keys(args).await,
            },
            Command::Workspaces(args) => api::workspaces(args).await,
            Command::Webhooks(args) => api::webhooks(args).await,
            Command::Events(args) => api::events(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
