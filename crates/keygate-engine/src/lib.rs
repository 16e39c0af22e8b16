//! The engine: what the gateway, the verify API and in-process users share.
//!
//! [`Engine`] builds the services of one node and hands each out:
//! [`Verifier`] turns a presented key into a decision (cache, then store,
//! then the pure checks of `keygate-core`); [`admin::Admin`] holds the
//! operations of the admin API with their authorization and audit events;
//! [`usage::Usage`] records usage off the request path; [`events::Events`]
//! decides events and [`webhooks::Deliveries`] sends them; [`sessions::Sessions`]
//! keeps dashboard sessions; [`nodes::Nodes`] lists the deployment's nodes
//! and gives receipts of changes. `workers` runs the background loops. Only
//! [`clock::SystemClock`] reads the clock.

pub mod admin;
pub mod clock;
mod context;
mod credits;
mod engine;
mod error;
pub mod events;
pub mod metrics;
pub mod nodes;
pub mod plans;
pub mod sessions;
pub mod usage;
mod verifier;
pub mod webhooks;
mod workers;

pub use admin::{Actor, ActorScope};
pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{Engine, EngineKeyring, EngineSettings};
pub use error::AdminError;
pub use verifier::limits::{CreditBalance, SHADOW_SUFFIX};
pub use verifier::{
    default_resources, CachedKey, Hearing, LimitMode, RateLimits, Rejection, StoreStatus, Verified, Verifier,
    VerifierSettings, VerifyRequest,
};
