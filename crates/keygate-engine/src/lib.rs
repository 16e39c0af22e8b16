//! The engine: what the gateway, the verify API and in-process users share.
//!
//! [`Engine::verify`] turns a presented key into a decision (cache, then store,
//! then the pure checks of `keygate-core`). [`admin`] holds the operations of
//! the admin API with their authorization and audit events. [`usage`] records
//! usage off the request path. `changes` hears other nodes' changes and
//! `store_health` answers quickly while the store is down. Only
//! [`clock::SystemClock`] reads the clock.

pub mod admin;
mod changes;
pub mod clock;
mod error;
pub mod events;
mod limits;
pub mod metrics;
pub mod plans;
pub mod sessions;

pub use limits::RateLimits;
mod store_health;
pub mod usage;
mod verifier;
pub mod webhooks;

pub use admin::{Actor, ActorScope};
pub use changes::Hearing;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::AdminError;
pub use store_health::StoreStatus;
pub use verifier::{CachedKey, Engine, EngineSettings, LimitMode, Rejection, Verified, VerifyRequest};
