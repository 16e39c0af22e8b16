//! Persistence for keygate behind the [`Store`] trait.
//!
//! Every change is written together with its audit event (and, for the
//! key lifecycle, its outbox event) in one transaction, so an acknowledged
//! change always has its audit trail and its webhook event, and a failed one
//! has neither. Implementations: [`sqlite::SqliteStore`] (embedded default, one
//! node) and [`postgres::PostgresStore`] (shared by many nodes, which hear
//! each other's changes through [`ChangeFeed`]). `testsuite` holds the
//! behaviour every implementation must pass.

pub mod changes;
mod error;
pub mod postgres;
mod sql;
pub mod sqlite;
#[cfg(feature = "testsuite")]
pub mod testsuite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keygate_core::events::{EventFilter, EventType};
use keygate_core::model::{ApiKey, KeyStatus, Workspace};
use keygate_core::secrets::StoredSecret;
use keygate_core::KeyHash;

pub use changes::{Change, ChangeFeed, FeedEvent};
pub use error::StoreError;

/// Largest page any list returns.
pub const MAX_PAGE_SIZE: u32 = 200;

/// A page request: newest first, starting after `cursor` (the last id of the previous page).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub cursor: Option<String>,
}

impl Page {
    pub fn first(limit: u32) -> Self {
        Self { limit, cursor: None }
    }

    /// The limit clamped to `1..=MAX_PAGE_SIZE`.
    pub fn size(&self) -> u32 {
        self.limit.clamp(1, MAX_PAGE_SIZE)
    }
}

/// One page of results and the cursor of the next, if there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Which keys of a workspace to list. `status: None` lists all but deleted keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    pub status: Option<KeyStatus>,
    pub environment: Option<String>,
    /// Only keys reported leaked (a `key.leaked` audit event).
    pub leaked: bool,
}

/// Who did what to which object, when, from where.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub id: String,
    pub at: DateTime<Utc>,
    /// A key id, `cli`, or a dashboard session.
    pub actor: String,
    pub actor_ip: Option<String>,
    /// `workspace.created`, `key.revoked`, ...
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    pub workspace_id: Option<String>,
    pub details: serde_json::Value,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub workspace_id: Option<String>,
    pub key_id: Option<String>,
}

/// The sizes usage counts are kept at: per minute as recorded, and rolled up
/// to hours and days in the same transaction, so each can be kept for its own
/// time and long ranges read few rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsageGrain {
    Minute,
    Hour,
    Day,
}

impl UsageGrain {
    pub const ALL: [Self; 3] = [Self::Minute, Self::Hour, Self::Day];

    pub fn seconds(self) -> i64 {
        match self {
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
        }
    }

    /// The start (Unix seconds) of the bucket that holds `at` (Unix seconds).
    pub fn bucket_of(self, at: i64) -> i64 {
        at.div_euclid(self.seconds()) * self.seconds()
    }
}

/// What `prune_usage` deletes: counts of buckets that start before each cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageCutoffs {
    pub minutes_before: DateTime<Utc>,
    pub hours_before: DateTime<Utc>,
    pub days_before: DateTime<Utc>,
}

/// Requests of one key in one bucket with one outcome (`admitted` or an error code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCount {
    pub key_id: String,
    pub workspace_id: String,
    /// Unix seconds at the start of the bucket: the minute as recorded, or
    /// the hour or day when read at those grains.
    pub minute: i64,
    pub outcome: String,
    pub count: u64,
}

/// Requests in one bucket with one outcome, of whatever the query was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketCount {
    /// Unix seconds at the start of the bucket.
    pub start: i64,
    pub outcome: String,
    pub count: u64,
}

/// The trailing windows of whole UTC days (today and the days before it)
/// that each key's totals are kept for, for top keys.
pub const TOP_KEY_WINDOWS: [u32; 3] = [1, 7, 30];

/// The first day (Unix seconds) of a window of `days` that ends with `today`.
pub fn window_first_day(today: i64, days: u32) -> i64 {
    today - (i64::from(days) - 1) * 86_400
}

/// What top keys are ranked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopBy {
    Requests,
    /// Requests refused for any reason: every outcome but `admitted`.
    Rejections,
}

/// A key's requests and rejections over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTotals {
    pub key_id: String,
    pub name: String,
    pub requests: u64,
    pub rejected: u64,
}

/// The latest use of a key seen by a node since its last flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastUse {
    pub key_id: String,
    pub at: DateTime<Utc>,
    pub ip: String,
}

/// What a usage flush writes, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBatch {
    /// Unique per batch: a batch retried after a failure that did commit
    /// (the answer was lost) is applied once, not twice.
    pub id: String,
    /// When the node took the batch.
    pub at: DateTime<Utc>,
    pub counts: Vec<UsageCount>,
    pub last_uses: Vec<LastUse>,
    /// Events the gateway decided (`ratelimit.exceeded`, `auth.failure_burst`).
    pub events: Vec<NewEvent>,
}

impl UsageBatch {
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.last_uses.is_empty() && self.events.is_empty()
    }
}

/// An event to add to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// `msg_<ulid>`: also the `webhook-id` of its deliveries.
    pub id: String,
    pub kind: EventType,
    pub at: DateTime<Utc>,
    pub workspace_id: Option<String>,
    /// The key it is about, or the client IP for `auth.failure_burst`.
    pub subject: Option<String>,
    /// Names an event that may happen once: a second event with the same
    /// name is dropped, by whichever node writes it.
    pub dedup_key: Option<String>,
    /// Dropped if an event of the same type and subject is stored at or after this time.
    pub quiet_since: Option<DateTime<Utc>>,
    /// What every delivery sends and signs, byte for byte.
    pub body: String,
}

/// An event as stored in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: String,
    pub kind: String,
    pub at: DateTime<Utc>,
    pub workspace_id: Option<String>,
    pub subject: Option<String>,
    pub body: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventListFilter {
    pub workspace_id: Option<String>,
    pub subject: Option<String>,
}

/// A webhook endpoint: where events of one workspace (or, without one, of
/// every workspace) are delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEndpoint {
    pub id: String,
    pub workspace_id: Option<String>,
    pub url: String,
    /// Sealed (crates/keygate-core/src/secrets.rs): the store never sees the secret itself.
    pub secret: StoredSecret,
    pub events: EventFilter,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not delivered yet; will be (re)tried at `next_attempt_at`.
    Pending,
    Delivered,
    /// Given up after the retry period.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::Failed]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// One try at sending a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// 1 for the first try.
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, `None` when no answer came.
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// One event on its way to one endpoint, with every attempt so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub attempts: Vec<DeliveryAttempt>,
}

/// A delivery this node has leased, with what sending it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedDelivery {
    pub id: String,
    /// Proves the lease when the result is written.
    pub lease_token: String,
    /// Attempts before this one.
    pub attempts: u32,
    pub event_id: String,
    pub event_at: DateTime<Utc>,
    pub body: String,
    pub endpoint_id: String,
    pub url: String,
    /// Sealed for the endpoint (`endpoint_id` is its context).
    pub secret: StoredSecret,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryNext {
    Delivered,
    RetryAt(DateTime<Utc>),
    GiveUp,
}

/// Keys whose lifecycle events are due, and have not been stored yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEventScan {
    pub now: DateTime<Utc>,
    /// `key.expiring` for keys that expire after `now` and before this.
    pub expiring_before: DateTime<Utc>,
    /// `key.expired` for keys that expired after this and by `now`.
    pub expired_since: DateTime<Utc>,
    /// `key.max_age_exceeded` for live keys created before this.
    pub created_before: Option<DateTime<Utc>>,
    pub limit: u32,
}

/// A key's requests in the recent window and in the baseline window before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyActivity {
    pub key_id: String,
    pub workspace_id: String,
    pub key_created_at: DateTime<Utc>,
    pub recent: u64,
    pub baseline: u64,
}

/// What happened to a revoke request.
#[derive(Debug, Clone, PartialEq)]
pub enum RevokeOutcome {
    /// This call revoked the key.
    Revoked(ApiKey),
    /// The key was already revoked (e.g. by a concurrent call); nothing changed.
    AlreadyRevoked(ApiKey),
}

/// Everything keygate keeps, one trait per aggregate, each written once for
/// SQLite and PostgreSQL in its own file of crates/keygate-store/src/sql/.
/// `dyn Store` offers every aggregate's methods; code holding a concrete
/// store imports the aggregate traits it calls (`use keygate_store::KeyStore`).
#[async_trait]
pub trait Store:
    WorkspaceStore
    + KeyStore
    + AuditStore
    + UsageStore
    + CreditStore
    + EventStore
    + WebhookStore
    + NodeStore
    + SessionStore
    + Send
    + Sync
    + 'static
{
    /// Cheap reachability check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Closes every connection; later calls fail with `Unavailable`. Tests use it
    /// to take the store away; SQLite also checkpoints its WAL.
    async fn close(&self);
    /// The changes every node commits, for dropping stale cache entries. `None`
    /// for a store that serves one node, where the writer evicts its own cache.
    async fn change_feed(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        Ok(None)
    }
}

/// Workspaces (crates/keygate-store/src/sql/workspaces.rs).
#[async_trait]
pub trait WorkspaceStore: Send + Sync {
    async fn insert_workspace(&self, workspace: &Workspace, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Deleted workspaces are not returned.
    async fn get_workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError>;
    async fn list_workspaces(&self, page: &Page) -> Result<Paged<Workspace>, StoreError>;
    /// Writes name, plan, allowlist, limits and disabled. `NotFound` if absent or deleted.
    async fn update_workspace(&self, workspace: &Workspace, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Hides the workspace and revokes its keys, in one transaction.
    async fn delete_workspace(&self, id: &str, at: DateTime<Utc>, audit: &AuditEvent) -> Result<(), StoreError>;
}

/// API keys (crates/keygate-store/src/sql/keys.rs).
#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn insert_key(&self, key: &ApiKey, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Which of `hashes` are stored, each with the workspace that holds it
    /// (an import's check before it writes, crates/keygate-engine/src/admin/import.rs).
    async fn stored_key_hashes(&self, hashes: &[KeyHash]) -> Result<Vec<(KeyHash, String)>, StoreError>;
    /// Inserts the keys whose hash is not stored yet, and `audit` if any was,
    /// in one transaction; returns how many were inserted. A key already
    /// stored (a re-run, or a concurrent import) is left as it is.
    async fn import_keys(&self, keys: &[ApiKey], audit: &AuditEvent) -> Result<u64, StoreError>;
    /// Returns deleted keys too; they stay for the audit trail.
    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;
    /// The verify path's lookup: the key and its workspace in one query.
    async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<(ApiKey, Workspace)>, StoreError>;
    /// The same lookup for many keys, a few statements for all of them: keys
    /// in use re-read ahead of their TTL (crates/keygate-engine/src/verifier/refresh.rs).
    /// A hash that is not stored is left out.
    async fn find_keys_by_hashes(&self, hashes: &[KeyHash]) -> Result<Vec<(ApiKey, Workspace)>, StoreError>;
    async fn list_keys(
        &self,
        workspace_id: &str,
        filter: &KeyFilter,
        page: &Page,
        now: DateTime<Utc>,
    ) -> Result<Paged<ApiKey>, StoreError>;
    async fn count_keys(&self, workspace_id: &str) -> Result<u64, StoreError>;
    /// Writes only what a PATCH may change: name, scopes, roles, allowlist, expiry,
    /// metadata, limits. Never touches revocation, so it cannot undo a concurrent revoke.
    async fn update_key(&self, key: &ApiKey, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Idempotent: a second revoke changes nothing and writes no audit event.
    async fn revoke_key(
        &self,
        id: &str,
        at: DateTime<Utc>,
        reason: Option<&str>,
        audit: &AuditEvent,
    ) -> Result<RevokeOutcome, StoreError>;
    /// Revokes if needed and hides the key from default lists.
    async fn delete_key(&self, id: &str, at: DateTime<Utc>, audit: &AuditEvent) -> Result<ApiKey, StoreError>;
    /// Links `old` to `new`, shortens `old`'s expiry to `old_expires_at` and
    /// inserts `new`, atomically. A revoked `old` stays as it is, linked (its
    /// replacement, after a leak). `Conflict` if `old` was already rotated.
    async fn rotate_key(
        &self,
        old_id: &str,
        old_expires_at: DateTime<Utc>,
        new: &ApiKey,
        audit: &AuditEvent,
    ) -> Result<(), StoreError>;
}

/// The audit log (crates/keygate-store/src/sql/audit.rs).
#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn list_audit_events(&self, filter: &AuditFilter, page: &Page) -> Result<Paged<AuditEvent>, StoreError>;
    /// An event that goes with no change of its own (a leak report of a key
    /// that is already dead, or of none), published like any other
    /// (`EventType::published_for_action`).
    async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// The newest event of `action` about `object_id` (a key's last leak report, say).
    async fn last_audit_event(&self, object_id: &str, action: &str) -> Result<Option<AuditEvent>, StoreError>;
}

/// What one credit balance has spent in its current refill period, kept so
/// that a node whose limiter counts in memory still knows it after a restart
/// (crates/keygate-engine/src/credits.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditSpend {
    /// The key lineage.
    pub owner: String,
    /// The balance's counter name: its origin and spec.
    pub counter: String,
    /// The refill period it was spent in.
    pub period: u64,
    pub spent: u64,
    /// The time of the newest spending, Unix ms.
    pub newest_ms: u64,
}

/// Credit balances' spending (crates/keygate-store/src/sql/credits.rs).
#[async_trait]
pub trait CreditStore: Send + Sync {
    /// Keeps each spend, unless the one stored is of a later period or of the
    /// same period and larger: a late or repeated write never lowers it.
    async fn save_credit_spends(&self, spends: &[CreditSpend]) -> Result<(), StoreError>;
    async fn credit_spend(&self, owner: &str, counter: &str) -> Result<Option<CreditSpend>, StoreError>;
}

/// A node of the deployment as it last described itself (its heartbeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// `node_<ulid>`, new at every start.
    pub id: String,
    pub version: String,
    pub gateway_addr: String,
    pub admin_addr: String,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat: DateTime<Utc>,
    /// Whether it hears the other nodes' changes (`listening`, ...).
    pub hearing: String,
    /// Keys in its cache.
    pub cache_size: u64,
}

/// One node's confirmation of a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    pub node_id: String,
    pub at: DateTime<Utc>,
}

/// The nodes of a deployment and their receipts (crates/keygate-store/src/sql/nodes.rs).
#[async_trait]
pub trait NodeStore: Send + Sync {
    /// Adds the node, or replaces what it said before.
    async fn record_heartbeat(&self, node: &NodeRecord) -> Result<(), StoreError>;
    /// Nodes whose last heartbeat is at or after `since`, oldest start first.
    async fn nodes_seen_since(&self, since: DateTime<Utc>) -> Result<Vec<NodeRecord>, StoreError>;
    /// A node that stops says so, so that nobody waits for it.
    async fn remove_node(&self, id: &str) -> Result<(), StoreError>;
    /// Announces [`Change::Receipt`] after every change committed so far.
    /// False for a store with no feed (one node, which evicts its own cache).
    async fn announce_receipt(&self, receipt_id: &str) -> Result<bool, StoreError>;
    /// Idempotent: the first confirmation of a node counts.
    async fn confirm_receipt(&self, receipt_id: &str, node_id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;
    async fn receipt_confirmations(&self, receipt_id: &str) -> Result<Vec<Confirmation>, StoreError>;
    /// Forgets nodes not heard from, and confirmations made, before `before`.
    async fn prune_nodes(&self, before: DateTime<Utc>) -> Result<(), StoreError>;
}

/// A dashboard session as stored: who, since when, last seen when. The
/// browser's secret is the row's key, as a SHA-256 hex; its CSRF token is
/// derived from that secret, so it is not stored either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Public id (`sess_...`).
    pub id: String,
    /// The audit trail's actor (`dashboard:<key id>`, `portal:<session id>`).
    pub actor_id: String,
    /// The one workspace it may see; `None` for an operator.
    pub workspace_id: Option<String>,
    /// The one environment whose keys it may manage; `None`: all.
    pub environment: Option<String>,
    /// The key used to sign in; the session ends when that key stops being active.
    pub signed_in_with: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// Dashboard sessions, their reveal-once secrets and portal links
/// (crates/keygate-store/src/sql/sessions.rs). Secrets of browsers arrive
/// here as SHA-256 hex only.
#[async_trait]
pub trait SessionStore: Send + Sync {
    async fn insert_session(&self, secret_hash: &str, session: &SessionRecord) -> Result<(), StoreError>;
    async fn session(&self, secret_hash: &str) -> Result<Option<SessionRecord>, StoreError>;
    async fn touch_session(&self, secret_hash: &str, at: DateTime<Utc>) -> Result<(), StoreError>;
    /// Ends the session and drops what it had yet to show.
    async fn delete_session(&self, secret_hash: &str) -> Result<(), StoreError>;
    /// Deletes sessions idle since `idle_before` or opened before
    /// `opened_before`, what they had yet to show, and portal links expired by `now`.
    async fn prune_sessions(
        &self,
        idle_before: DateTime<Utc>,
        opened_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// Keeps a sealed secret for the session to show once (replacing one for the same object).
    async fn hold_reveal(&self, secret_hash: &str, object_id: &str, sealed: &StoredSecret) -> Result<(), StoreError>;
    /// The held secret, deleted in the same statement: of two concurrent calls one gets it.
    async fn take_reveal(&self, secret_hash: &str, object_id: &str) -> Result<Option<StoredSecret>, StoreError>;
    async fn insert_portal_link(
        &self,
        token_hash: &str,
        workspace_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    /// The link's workspace and expiry, deleted in the same statement: a link
    /// is used up by its first redemption on any node, even an expired one.
    async fn redeem_portal_link(&self, token_hash: &str) -> Result<Option<(String, DateTime<Utc>)>, StoreError>;
}

/// Usage counts and their roll-ups (crates/keygate-store/src/sql/usage.rs).
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Adds counts (never overwrites) and moves `last_used_*` forward only.
    /// A batch id already applied is skipped, so a retry never counts twice.
    async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError>;
    /// Counts of one key at one grain for the buckets that start in `[from, to)`,
    /// oldest first, one row per bucket and outcome.
    async fn key_usage(
        &self,
        key_id: &str,
        grain: UsageGrain,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageCount>, StoreError> {
        self.keys_usage(std::slice::from_ref(&key_id.to_owned()), grain, from, to)
            .await
    }
    /// [`UsageStore::key_usage`] of several keys in one statement (a page of
    /// the dashboard's key list): oldest first, one row per bucket, key and outcome.
    async fn keys_usage(
        &self,
        key_ids: &[String],
        grain: UsageGrain,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageCount>, StoreError>;
    /// Counts of all of a workspace's keys at one grain for the buckets that
    /// start in `[from, to)`, oldest first, one row per bucket and outcome.
    async fn workspace_usage(
        &self,
        workspace_id: &str,
        grain: UsageGrain,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<BucketCount>, StoreError>;
    /// Rolls the minutes before `until` (Unix seconds) that are not rolled up
    /// yet into hours and days (per key and per workspace) and into the key
    /// windows, once, whichever node asks, and moves the key windows forward
    /// to the day of `until`. Returns the rows written. Reads include the
    /// minutes not rolled up, so this changes what is stored, not what
    /// series read.
    async fn roll_up_usage(&self, until: i64) -> Result<u64, StoreError>;
    /// The `limit` keys of a workspace with the most requests (or rejections)
    /// in the window of `days` whole UTC days ending with the day `today`
    /// starts (Unix seconds), most first; ties by key id, newest first.
    /// Exact once `roll_up_usage` has run on `today`: it moves the windows.
    async fn top_keys(
        &self,
        workspace_id: &str,
        days: u32,
        today: i64,
        by: TopBy,
        limit: u32,
    ) -> Result<Vec<KeyTotals>, StoreError>;
    /// Deletes counts of buckets older than their grain's cutoff; returns how
    /// many rows. Minutes not yet rolled up are kept.
    async fn prune_usage(&self, cutoffs: &UsageCutoffs) -> Result<u64, StoreError>;
    /// Requests per key in `[recent_from, to)` and `[baseline_from, recent_from)`
    /// (Unix seconds), for keys with at least `min_recent` in the first.
    async fn key_activity(
        &self,
        baseline_from: i64,
        recent_from: i64,
        to: i64,
        min_recent: u64,
    ) -> Result<Vec<KeyActivity>, StoreError>;
}

/// The event outbox (crates/keygate-store/src/sql/events.rs).
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Adds events to the outbox, dropping those `dedup_key` or
    /// `quiet_since` rule out; returns how many were added.
    async fn insert_events(&self, events: &[NewEvent]) -> Result<u64, StoreError>;
    /// Newest first.
    async fn list_events(&self, filter: &EventListFilter, page: &Page) -> Result<Paged<StoredEvent>, StoreError>;
    /// Keys whose `key.expiring`, `key.expired` or `key.max_age_exceeded` is
    /// due and not yet in the outbox, oldest first.
    async fn keys_due_for_events(&self, scan: &KeyEventScan) -> Result<Vec<(EventType, ApiKey)>, StoreError>;
}

/// Webhook endpoints and deliveries (crates/keygate-store/src/sql/webhooks.rs).
#[async_trait]
pub trait WebhookStore: Send + Sync {
    async fn insert_webhook(&self, endpoint: &WebhookEndpoint, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Deleted endpoints are not returned.
    async fn get_webhook(&self, id: &str) -> Result<Option<WebhookEndpoint>, StoreError>;
    /// `workspace_id: None` lists every endpoint, global ones included.
    async fn list_webhooks(
        &self,
        workspace_id: Option<&str>,
        page: &Page,
    ) -> Result<Paged<WebhookEndpoint>, StoreError>;
    /// Stops deliveries to the endpoint; pending ones are dropped as failed.
    async fn delete_webhook(&self, id: &str, at: DateTime<Utc>, audit: &AuditEvent) -> Result<(), StoreError>;
    /// Creates the deliveries of up to `limit` events not yet fanned out, one
    /// per matching endpoint that existed when the event happened. Idempotent:
    /// returns how many deliveries were created.
    async fn fan_out_events(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;
    /// Leases up to `limit` pending deliveries due by `now` until `lease_until`.
    /// A delivery leased by another node is not returned until its lease ends.
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        lease_token: &str,
        limit: u32,
    ) -> Result<Vec<ClaimedDelivery>, StoreError>;
    /// Records an attempt and what comes next, if the lease is still this
    /// node's; returns false (and writes nothing) if it is not.
    async fn finish_delivery(
        &self,
        id: &str,
        lease_token: &str,
        attempt: &DeliveryAttempt,
        next: DeliveryNext,
    ) -> Result<bool, StoreError>;
    /// Newest first, each with its attempts.
    async fn list_deliveries(&self, endpoint_id: &str, page: &Page) -> Result<Paged<Delivery>, StoreError>;
    /// Every endpoint's stored secret, deleted endpoints' too: what a
    /// rotation of the secrets key re-seals.
    async fn webhook_secrets(&self) -> Result<Vec<(String, StoredSecret)>, StoreError>;
    /// Replaces an endpoint's stored secret if it is still `old`; false if
    /// it changed meanwhile (another node re-sealed it first).
    async fn replace_webhook_secret(
        &self,
        id: &str,
        old: &StoredSecret,
        new: &StoredSecret,
    ) -> Result<bool, StoreError>;
}

/// Opens the store a URL names: `sqlite://PATH` or `postgres://...`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, OpenError> {
    open_with_connections(url, DEFAULT_CONNECTIONS).await
}

/// Connections a store opens at most, unless told otherwise.
pub const DEFAULT_CONNECTIONS: u32 = 16;

/// [`open`] with at most `connections` connections to the database: a
/// node's background work needs few (crates/keygate-server/src/app.rs).
pub async fn open_with_connections(url: &str, connections: u32) -> Result<Arc<dyn Store>, OpenError> {
    if url.starts_with("sqlite:") {
        let store = sqlite::SqliteStore::open_with_connections(url, connections.min(sqlite::MAX_CONNECTIONS)).await?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = postgres::PostgresStore::open_with_connections(url, connections).await?;
        return Ok(Arc::new(store));
    }
    Err(OpenError::UnsupportedUrl(
        url.split(':').next().unwrap_or_default().to_owned(),
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("store.url scheme `{0}` is not supported; use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
