//! The engine: the services of one node, built together over one store,
//! clock and limiter. Callers reach each service through its accessor
//! ([`Engine::verifier`], [`Engine::admin`], ...); the services hold what
//! they share in a [`Context`] and call each other only through their
//! public methods (docs/architecture.md, "The engine's services").

use std::sync::Arc;

use chrono::{DateTime, Utc};
use keygate_core::secrets::Keyring;
use keygate_limiter::Limiter;
use keygate_store::Store;

use crate::admin::{Admin, AdminSettings};
use crate::clock::Clock;
use crate::context::Context;
use crate::events::{EventSettings, Events};
use crate::metrics::Metrics;
use crate::nodes::Nodes;
use crate::sessions::{SessionSettings, Sessions};
use crate::usage::{Usage, UsageSettings};
use crate::verifier::{Verifier, VerifierSettings};
use crate::webhooks::{Deliveries, WebhookSettings};

/// Each service's settings, from the deployment's config. Every part has a
/// `Default`, so a test sets only what it is about.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// The keys webhook secrets are sealed with. The default is a fresh
    /// random key, which nothing sealed outlives: the server always passes
    /// the deployment's (crates/keygate-server/src/secrets.rs).
    pub keyring: EngineKeyring,
    pub verifier: VerifierSettings,
    pub admin: AdminSettings,
    pub usage: UsageSettings,
    pub events: EventSettings,
    pub webhooks: WebhookSettings,
    pub dashboard: SessionSettings,
}

pub struct Engine {
    context: Arc<Context>,
    verifier: Arc<Verifier>,
    admin: Arc<Admin>,
    usage: Arc<Usage>,
    events: Arc<Events>,
    deliveries: Deliveries,
    sessions: Sessions,
    nodes: Nodes,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        limiter: Arc<dyn Limiter>,
        settings: EngineSettings,
    ) -> Self {
        let context = Arc::new(Context::new(store, clock, settings.keyring.0));
        let usage = Arc::new(Usage::new(context.clone(), settings.usage));
        let events = Arc::new(Events::new(context.clone(), settings.events, usage.clone()));
        let verifier = Arc::new_cyclic(|me| {
            Verifier::new(
                me.clone(),
                context.clone(),
                limiter,
                settings.verifier,
                usage.clone(),
                events.clone(),
            )
        });
        let admin = Arc::new(Admin::new(
            context.clone(),
            settings.admin,
            verifier.clone(),
            usage.clone(),
        ));
        let sessions = Sessions::new(context.clone(), settings.dashboard, admin.clone());
        let deliveries = Deliveries::new(context.clone(), settings.webhooks);
        let nodes = Nodes::new(context.clone(), verifier.clone());
        Self {
            context,
            verifier,
            admin,
            usage,
            events,
            deliveries,
            sessions,
            nodes,
        }
    }

    /// The verify path (the gateway's and the verify API's decision).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The admin API's operations.
    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// Usage recorded by this node, and its background passes.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Deciding events: the gateway's and the periodic scan's.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Webhook delivery rounds.
    pub fn deliveries(&self) -> &Deliveries {
        &self.deliveries
    }

    /// Dashboard sessions and portal links.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The nodes of the deployment, and receipts of changes.
    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// The request counters the gateway records into, and the rest of `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        self.context.metrics()
    }

    /// Now, at the millisecond precision stores keep.
    pub fn now(&self) -> DateTime<Utc> {
        self.context.now()
    }

    /// The keys read again (SIGHUP, `keygate config reload`): what is
    /// sealed from now on uses the new first key.
    pub fn replace_keyring(&self, keyring: Keyring) {
        self.context.replace_keyring(Arc::new(keyring));
    }

    /// Gives background work a store of its own, opened where that work runs
    /// (crates/keygate-server/src/background.rs: a low-priority thread, so a
    /// flush's database work waits for the data plane, not the other way
    /// round). Once only; false if one was set already.
    pub fn use_background_store(&self, store: Arc<dyn Store>) -> bool {
        self.context.use_background_store(store)
    }
}

/// A keyring to hand to [`Engine::new`]; by default a fresh random one.
#[derive(Debug, Clone)]
pub struct EngineKeyring(Arc<Keyring>);

impl EngineKeyring {
    pub fn new(keyring: Keyring) -> Self {
        Self(Arc::new(keyring))
    }
}

impl Default for EngineKeyring {
    fn default() -> Self {
        Self::new(Keyring::generate(&mut rand::thread_rng()))
    }
}
