//! The nodes of a deployment, and receipts: proof that a change reached
//! every live node.
//!
//! Each node registers itself in the store and heartbeats
//! ([`Nodes::run_heartbeats`]), so `GET /v1/nodes` lists the live ones. A
//! receipt ([`Nodes::receipt`]) announces a marker on the change feed after
//! the change it is for; the feed keeps commit order, so a node that hears
//! the marker has already dropped what the change made stale, and it says so
//! by writing a confirmation (crates/keygate-engine/src/verifier/changes.rs).
//! The writer itself evicted its cache before answering, so it counts at
//! once. A node that does not confirm within the wait is named.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keygate_core::id::{AUDIT_PREFIX, RECEIPT_PREFIX};
use keygate_store::{AuditEvent, NodeRecord, StoreError};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::verifier::Verifier;
use crate::{Actor, AdminError};

/// How often a node says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A node not heard from for this long is not listed and not waited for.
pub const LIVE_FOR: Duration = Duration::from_secs(5);
/// Nodes and confirmations older than this are deleted, every [`PRUNE_EVERY`] heartbeats.
const KEPT_FOR: Duration = Duration::from_secs(3_600);
const PRUNE_EVERY: u64 = 60;
/// The longest a change may wait for its receipt.
pub use keygate_core::duration::MAX_WAIT;
/// The first and the longest pause between two looks at the confirmations.
const FIRST_LOOK: Duration = Duration::from_millis(2);
const LONGEST_LOOK: Duration = Duration::from_millis(25);

/// Where a node serves, for the list of nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddresses {
    pub gateway: String,
    pub admin: String,
}

/// What a change is, for the receipt's audit event.
#[derive(Debug, Clone, Copy)]
pub struct Changed<'a> {
    /// The change's own audit action (`key.revoked`, ...).
    pub action: &'a str,
    pub object_type: &'a str,
    pub object_id: &'a str,
    pub workspace_id: &'a str,
}

/// Which live nodes confirmed a change, and how fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Live nodes when the change was made, this one included.
    pub nodes: usize,
    pub confirmed: usize,
    /// The slowest confirmation, from the receipt's start (this node's is 0).
    pub slowest_ms: u64,
    /// The live nodes that did not confirm within the wait, by id.
    pub unconfirmed: Vec<String>,
}

pub struct Nodes {
    context: Arc<Context>,
    verifier: Arc<Verifier>,
    started_at: DateTime<Utc>,
}

impl Nodes {
    pub(crate) fn new(context: Arc<Context>, verifier: Arc<Verifier>) -> Self {
        let started_at = context.now();
        Self {
            context,
            verifier,
            started_at,
        }
    }

    /// This node's id, new at every start.
    pub fn id(&self) -> &str {
        self.context.node_id()
    }

    /// Heartbeats every [`HEARTBEAT_EVERY`] until `stop`, then removes this
    /// node from the list. Forgets long-gone nodes and old confirmations
    /// now and then.
    pub async fn run_heartbeats(&self, addresses: NodeAddresses, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beats: u64 = 0;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => break,
            }
            let now = self.context.now();
            if let Err(err) = self.heartbeat(&addresses, now).await {
                tracing::debug!(error = %err, "heartbeat not written");
            }
            beats += 1;
            if beats.is_multiple_of(PRUNE_EVERY) {
                if let Err(err) = self.context.store().prune_nodes(now - KEPT_FOR).await {
                    tracing::debug!(error = %err, "old nodes not pruned");
                }
            }
        }
        if let Err(err) = self.context.store().remove_node(self.id()).await {
            tracing::warn!(error = %err, "this node could not take itself off the list of nodes");
        }
    }

    /// Writes what this node is now.
    pub async fn heartbeat(&self, addresses: &NodeAddresses, now: DateTime<Utc>) -> Result<(), StoreError> {
        let record = NodeRecord {
            id: self.id().to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            gateway_addr: addresses.gateway.clone(),
            admin_addr: addresses.admin.clone(),
            started_at: self.started_at,
            last_heartbeat: now,
            hearing: self.verifier.hearing().as_str().to_owned(),
            cache_size: self.verifier.cached_keys(),
        };
        self.context.store().record_heartbeat(&record).await
    }

    /// Nodes heard from within [`LIVE_FOR`]. Operators only.
    pub async fn list(&self, actor: &Actor) -> Result<Vec<NodeRecord>, AdminError> {
        actor.require_admin()?;
        Ok(self.live(self.context.now()).await?)
    }

    async fn live(&self, now: DateTime<Utc>) -> Result<Vec<NodeRecord>, StoreError> {
        let since = now - chrono::Duration::from_std(LIVE_FOR).unwrap_or_default();
        self.context.store().nodes_seen_since(since).await
    }

    /// Waits up to `wait` (at most [`MAX_WAIT`]) until every live node has
    /// confirmed that it heard `changed`, which this node has just made, and
    /// keeps the receipt in the audit trail. The change is made whatever
    /// happens here: a store that cannot be asked makes the receipt name
    /// every other node, and a receipt that cannot be kept is logged.
    pub async fn receipt(&self, actor: &Actor, changed: Changed<'_>, wait: Duration) -> Receipt {
        let wait = wait.min(MAX_WAIT);
        let started = self.context.now();
        let receipt = self.collect(started, wait).await;
        let event = AuditEvent {
            id: self.context.new_id(AUDIT_PREFIX, started),
            at: started,
            actor: actor.id.clone(),
            actor_ip: actor.ip.clone(),
            action: "propagation.receipt".to_owned(),
            object_type: changed.object_type.to_owned(),
            object_id: changed.object_id.to_owned(),
            workspace_id: Some(changed.workspace_id.to_owned()),
            details: json!({
                "for": changed.action,
                "wait_ms": wait.as_millis(),
                "nodes": receipt.nodes,
                "confirmed": receipt.confirmed,
                "slowest_ms": receipt.slowest_ms,
                "unconfirmed": receipt.unconfirmed,
            }),
        };
        if let Err(err) = self.context.store().record_audit(&event).await {
            tracing::warn!(error = %err, receipt = ?receipt, "receipt not kept in the audit trail");
        }
        receipt
    }

    async fn collect(&self, started: DateTime<Utc>, wait: Duration) -> Receipt {
        let receipt_id = self.context.new_id(RECEIPT_PREFIX, started);
        let mut deadline = tokio::time::Instant::now() + wait;
        let mut waiting = match self.context.store().announce_receipt(&receipt_id).await {
            // The live nodes are read after the announcement: a node that
            // starts later has nothing stale to drop.
            Ok(true) => self.others_live(started).await,
            // No feed: the store serves this node alone.
            Ok(false) => Vec::new(),
            Err(err) => {
                // Nobody will confirm: name the others without waiting.
                tracing::warn!(error = %err, "receipt not announced");
                deadline = tokio::time::Instant::now();
                self.others_live(started).await
            }
        };
        let nodes = waiting.len() + 1;
        let mut slowest_ms = 0;
        let mut pause = FIRST_LOOK;
        while !waiting.is_empty() {
            if let Ok(confirmations) = self.context.store().receipt_confirmations(&receipt_id).await {
                for confirmation in confirmations {
                    if let Some(at) = waiting.iter().position(|id| *id == confirmation.node_id) {
                        waiting.swap_remove(at);
                        let ms = (confirmation.at - started).num_milliseconds();
                        slowest_ms = slowest_ms.max(u64::try_from(ms).unwrap_or(0));
                    }
                }
            }
            let now = tokio::time::Instant::now();
            if waiting.is_empty() || now >= deadline {
                break;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(LONGEST_LOOK);
        }
        waiting.sort();
        Receipt {
            nodes,
            confirmed: nodes - waiting.len(),
            slowest_ms,
            unconfirmed: waiting,
        }
    }

    /// The ids of the other live nodes; none if the store cannot say.
    async fn others_live(&self, now: DateTime<Utc>) -> Vec<String> {
        match self.live(now).await {
            Ok(nodes) => nodes
                .into_iter()
                .map(|node| node.id)
                .filter(|id| id != self.id())
                .collect(),
            Err(err) => {
                tracing::warn!(error = %err, "live nodes unknown; the receipt counts this one only");
                Vec::new()
            }
        }
    }
}
