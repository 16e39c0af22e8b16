//! The pure domain of keygate.
//!
//! Nothing in this crate performs I/O, reads the clock or spawns tasks: time and
//! randomness are parameters. That is what lets expiry, windows and key
//! generation be tested exactly, and lets the same rules run in the gateway, the
//! verify API and in-process users.

pub mod credential;
pub mod credits;
pub mod decision;
pub mod duration;
pub mod error;
pub mod events;
pub mod grammar;
pub mod id;
pub mod ip;
pub mod key;
pub mod legacy;
pub mod limits;
pub mod model;
pub mod path;
pub mod prefetch;
pub mod ratelimit;
pub mod role;
pub mod scope;
pub mod secrets;
pub mod throttle;
pub mod webhook;

pub use decision::{check_access, AccessLists, Denial, KeyAccess};
pub use error::{ErrorCatalog, ErrorCode, ErrorFormat, ErrorInstance, RenderedError};
pub use key::{KeyFormat, KeyHash, MalformedKey, ParsedKey, PlaintextKey};
pub use model::{ApiKey, KeyStatus, Workspace};
