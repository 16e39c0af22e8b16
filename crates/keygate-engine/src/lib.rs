//! The engine: what the gateway, the verify API and in-process users share.
//!
//! [`Engine::verify`] turns a presented key into a decision (cache, then store,
//! then the pure checks of `keygate-core`). [`admin`] holds the operations of
//! the admin API with their authorization and audit events. [`usage`] records
//! usage off the request path. Only [`clock::SystemClock`] reads the clock.

pub mod admin;
pub mod clock;
mod error;
mod limits;

pub use limits::RateLimits;
pub mod usage;
mod verifier;

pub use admin::{Actor, ActorScope};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::AdminError;
pub use verifier::{CachedKey, Engine, EngineSettings, LimitMode, Rejection, Verified, VerifyRequest};
