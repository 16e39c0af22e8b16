//! What every service of the engine shares: the store (and background
//! work's own connection to it), the clock, object ids, the metrics, the
//! store's health as this node last saw it, and the keyring that seals
//! webhook secrets.
//!
//! Each service (`Verifier`, `Admin`, `Usage`, `Events`, `Deliveries`,
//! `Sessions`) holds an `Arc<Context>` and its own state; none reaches into
//! another's fields (docs/architecture.md, "The engine's services").

use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, Guard};
use chrono::{DateTime, Utc};
use keygate_core::id::{IdGenerator, NODE_PREFIX};
use keygate_core::secrets::Keyring;
use keygate_store::Store;
use parking_lot::Mutex;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::verifier::store_health::StoreHealth;

pub(crate) struct Context {
    store: Arc<dyn Store>,
    /// The store of background work (usage flushes, roll-ups and pruning,
    /// event scans, webhook delivery), when it has one of its own
    /// ([`Context::use_background_store`]); else `store`.
    background_store: OnceLock<Arc<dyn Store>>,
    clock: Arc<dyn Clock>,
    ids: Mutex<IdGenerator>,
    /// This node's id (`node_<ulid>`), new at every start: the list of nodes
    /// and receipts name it (crates/keygate-engine/src/nodes.rs).
    node_id: String,
    metrics: Metrics,
    store_health: StoreHealth,
    /// Seals and opens the secrets keygate must read back (webhook signing
    /// secrets); swapped whole when the key file is read again.
    keyring: ArcSwap<Keyring>,
}

impl Context {
    pub(crate) fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, keyring: Arc<Keyring>) -> Self {
        let mut ids = IdGenerator::new();
        let node_id = ids.next(NODE_PREFIX, clock.now());
        Self {
            store,
            background_store: OnceLock::new(),
            clock,
            ids: Mutex::new(ids),
            node_id,
            metrics: Metrics::default(),
            store_health: StoreHealth::default(),
            keyring: ArcSwap::new(keyring),
        }
    }

    pub(crate) fn keyring(&self) -> Guard<Arc<Keyring>> {
        self.keyring.load()
    }

    pub(crate) fn replace_keyring(&self, keyring: Arc<Keyring>) {
        self.keyring.store(keyring);
    }

    /// The clock as it is: the verify path compares times to the millisecond.
    pub(crate) fn clock_now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Now, at the millisecond precision stores keep, so that what a write
    /// returns equals what a later read returns.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        let now = self.clock.now();
        DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
    }

    /// A new object id, in creation order on this node.
    pub(crate) fn new_id(&self, prefix: &str, now: DateTime<Utc>) -> String {
        self.ids.lock().next(prefix, now)
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Once only; false if one was set already.
    pub(crate) fn use_background_store(&self, store: Arc<dyn Store>) -> bool {
        self.background_store.set(store).is_ok()
    }

    pub(crate) fn background_store(&self) -> &dyn Store {
        self.background_store.get().unwrap_or(&self.store).as_ref()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn store_health(&self) -> &StoreHealth {
        &self.store_health
    }
}
