//! keygate's HTTP layer: the gateway (data plane), the admin API (control
//! plane) and config loading. It translates; the engine decides.

pub mod app;
pub mod background;
pub mod config;
pub mod embedded;
pub mod github;
pub mod http;
pub mod reload;
pub mod secrets;
pub mod telemetry;
pub mod webhook_sender;

pub use app::{App, ServeError};
pub use config::{Config, ConfigError, ConfigSource, Loaded, Settings};
