//! What the SQL stores share: the schema's column lists, the mapping between
//! rows and the domain types, and [`sql_store!`], which writes the `Store`
//! implementation once for every sqlx database: one file per aggregate in
//! `sql/` (workspaces, keys, audit, usage, credits, events, webhooks, nodes, sessions), each method with
//! its SQL, and here what they share. The SQL is the same on
//! SQLite and PostgreSQL (timestamps as Unix milliseconds, lists as JSON
//! text); only the placeholder syntax differs, which each backend's `sql_text`
//! translates.

pub(crate) mod audit;
pub(crate) mod credits;
pub(crate) mod events;
pub(crate) mod keys;
pub(crate) mod nodes;
pub(crate) mod sessions;
pub(crate) mod usage;
pub(crate) mod webhooks;
pub(crate) mod workspaces;

pub(crate) use chrono::{DateTime, Utc};
pub(crate) use keygate_core::ip::IpAllowlist;
pub(crate) use keygate_core::model::{ApiKey, KeyStatus, OnLeak, Workspace};
pub(crate) use keygate_core::KeyHash;
pub(crate) use sqlx::Row;

pub(crate) use crate::changes::Change;
pub(crate) use keygate_core::events::{EventFilter, EventType};
pub(crate) use keygate_core::secrets::StoredSecret;

pub(crate) use crate::{
    AuditEvent, AuditFilter, BucketCount, ClaimedDelivery, Confirmation, CreditSpend, Delivery, DeliveryAttempt,
    DeliveryNext, DeliveryStatus, EventListFilter, KeyActivity, KeyEventScan, KeyFilter, KeyTotals, NewEvent,
    NodeRecord, Page, Paged, RevokeOutcome, SessionRecord, StoreError, StoredEvent, TopBy, UsageBatch, UsageCount,
    UsageCutoffs, UsageGrain, WebhookEndpoint, TOP_KEY_WINDOWS,
};

/// The outbox event of an audited change that is published (see
/// [`EventType::published_for_action`]). Its id is the audit event's, so the
/// two are easy to match, and its data carries the audit details.
pub(crate) fn published_event(audit: &AuditEvent, kind: EventType) -> NewEvent {
    let mut data = serde_json::Map::new();
    data.insert("key_id".into(), audit.object_id.clone().into());
    data.insert("workspace_id".into(), audit.workspace_id.clone().into());
    data.insert("actor".into(), audit.actor.clone().into());
    if let serde_json::Value::Object(details) = &audit.details {
        for (name, value) in details {
            data.entry(name.clone()).or_insert_with(|| value.clone());
        }
    }
    let ulid = audit.id.split_once('_').map_or(audit.id.as_str(), |(_, ulid)| ulid);
    NewEvent {
        id: format!("msg_{ulid}"),
        kind,
        at: audit.at,
        workspace_id: audit.workspace_id.clone(),
        subject: Some(audit.object_id.clone()),
        dedup_key: None,
        quiet_since: None,
        body: keygate_core::events::event_body(kind, audit.at, &serde_json::Value::Object(data)),
    }
}

/// A delivery's id names its event and endpoint, so fanning out twice
/// (two nodes, or a retry) creates it once.
pub(crate) fn delivery_id(event_id: &str, endpoint_id: &str) -> String {
    let ulid_of = |id: &str| id.split_once('_').map_or(id, |(_, ulid)| ulid).to_owned();
    format!("dlv_{}{}", ulid_of(event_id), ulid_of(endpoint_id))
}

/// The dedup name of a lifecycle event: per expiry time for expiry events
/// (a key given a new expiry is announced again), once per key for age.
pub(crate) const LIFECYCLE_DEDUP_SQL: [(EventType, &str); 3] = [
    (EventType::KeyExpiring, "'key.expiring:' || k.id || ':' || k.expires_at"),
    (EventType::KeyExpired, "'key.expired:' || k.id || ':' || k.expires_at"),
    (EventType::KeyMaxAgeExceeded, "'key.max_age_exceeded:' || k.id"),
];

pub(crate) fn webhook_from_row<R: StoreRow>(row: &R) -> Result<WebhookEndpoint, StoreError> {
    let names: Vec<String> = from_json(row.get_col("events")?, "webhook_endpoints.events")?;
    Ok(WebhookEndpoint {
        id: row.get_col("id")?,
        workspace_id: row.get_col("workspace_id")?,
        url: row.get_col("url")?,
        secret: StoredSecret::new(row.text("secret")?),
        events: EventFilter::parse(&names)
            .map_err(|e| StoreError::Corrupt(format!("webhook_endpoints.events: {e}")))?,
        description: row.get_col("description")?,
        created_at: from_ms(row.get_col("created_at")?)?,
        created_by: row.get_col("created_by")?,
    })
}

pub(crate) fn event_from_row<R: StoreRow>(row: &R) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        id: row.get_col("id")?,
        kind: row.get_col("type")?,
        at: from_ms(row.get_col("at")?)?,
        workspace_id: row.get_col("workspace_id")?,
        subject: row.get_col("subject")?,
        body: row.get_col("body")?,
    })
}

pub(crate) fn delivery_from_row<R: StoreRow>(row: &R) -> Result<Delivery, StoreError> {
    let status = row.text("status")?;
    let status = DeliveryStatus::parse(&status)
        .ok_or_else(|| StoreError::Corrupt(format!("webhook_deliveries.status `{status}`")))?;
    Ok(Delivery {
        id: row.get_col("id")?,
        endpoint_id: row.get_col("endpoint_id")?,
        event_id: row.get_col("event_id")?,
        event_type: row.get_col("type")?,
        status,
        created_at: from_ms(row.get_col("created_at")?)?,
        next_attempt_at: match status {
            DeliveryStatus::Pending => Some(from_ms(row.get_col("next_attempt_at")?)?),
            DeliveryStatus::Delivered | DeliveryStatus::Failed => None,
        },
        delivered_at: opt_from_ms(row.get_col("delivered_at")?)?,
        attempts: Vec::new(),
    })
}

pub(crate) fn attempt_from_row<R: StoreRow>(row: &R) -> Result<(String, DeliveryAttempt), StoreError> {
    let number = |column: &str| -> Result<i64, StoreError> { row.int(column) };
    Ok((
        row.get_col("delivery_id")?,
        DeliveryAttempt {
            attempt: u32::try_from(number("attempt")?).unwrap_or(u32::MAX),
            at: from_ms(row.get_col("at")?)?,
            status_code: row.opt_int("status_code")?.and_then(|code| u16::try_from(code).ok()),
            error: row.get_col("error")?,
            duration_ms: number("duration_ms")?.unsigned_abs(),
        },
    ))
}

pub(crate) fn claimed_from_row<R: StoreRow>(row: &R, lease_token: &str) -> Result<ClaimedDelivery, StoreError> {
    Ok(ClaimedDelivery {
        id: row.get_col("id")?,
        lease_token: lease_token.to_owned(),
        attempts: u32::try_from(row.int("attempts")?).unwrap_or(u32::MAX),
        event_id: row.get_col("event_id")?,
        event_at: from_ms(row.get_col("at")?)?,
        body: row.get_col("body")?,
        endpoint_id: row.get_col("endpoint_id")?,
        url: row.get_col("url")?,
        secret: StoredSecret::new(row.text("secret")?),
    })
}

/// A batch's counts summed per `(key, bucket start, outcome)` at a coarser
/// grain, in that order: the order rows are written in.
pub(crate) fn roll_up(
    counts: &[UsageCount],
    grain: UsageGrain,
) -> std::collections::BTreeMap<(&str, i64, &str), (&str, u64)> {
    let mut rolled = std::collections::BTreeMap::new();
    for row in counts {
        let bucket = rolled
            .entry((row.key_id.as_str(), grain.bucket_of(row.minute), row.outcome.as_str()))
            .or_insert((row.workspace_id.as_str(), 0));
        bucket.1 += row.count;
    }
    rolled
}

/// A batch's counts summed per `(workspace, bucket start, outcome)` at a grain.
pub(crate) fn roll_up_workspaces(
    counts: &[UsageCount],
    grain: UsageGrain,
) -> std::collections::BTreeMap<(&str, i64, &str), u64> {
    let mut rolled = std::collections::BTreeMap::new();
    for row in counts {
        *rolled
            .entry((
                row.workspace_id.as_str(),
                grain.bucket_of(row.minute),
                row.outcome.as_str(),
            ))
            .or_insert(0) += row.count;
    }
    rolled
}

/// Adds a key's minutes of one day to its windows. A window whose first day
/// is later than that day does not count them; a new row starts at the day.
pub(crate) const KEY_WINDOW_UPSERT: &str = " ON CONFLICT (key_id, days) DO UPDATE SET \
    requests = usage_key_windows.requests + CASE WHEN excluded.since >= usage_key_windows.since THEN excluded.requests ELSE 0 END, \
    rejected = usage_key_windows.rejected + CASE WHEN excluded.since >= usage_key_windows.since THEN excluded.rejected ELSE 0 END";

/// Per `(key id, workspace id)`: `(requests, rejected)`.
pub(crate) type KeyDayTotals<'a> = std::collections::BTreeMap<(&'a str, &'a str), (u64, u64)>;

/// A batch's late counts summed per day and key.
pub(crate) fn per_day_and_key(counts: &[UsageCount]) -> std::collections::BTreeMap<i64, KeyDayTotals<'_>> {
    let mut days: std::collections::BTreeMap<i64, KeyDayTotals<'_>> = std::collections::BTreeMap::new();
    for row in counts {
        let totals = days
            .entry(UsageGrain::Day.bucket_of(row.minute))
            .or_default()
            .entry((row.key_id.as_str(), row.workspace_id.as_str()))
            .or_default();
        totals.0 += row.count;
        if row.outcome != "admitted" {
            totals.1 += row.count;
        }
    }
    days
}

/// Rows per multi-row statement of a node's bulk writes and reads (a usage
/// or credit flush, keys re-read in batches, webhook fan-out), which run
/// beside the data plane. Short statements, not few: when the database
/// shares the node's machine, each statement holds a CPU the data plane
/// wants for as long as it runs. At 500 rows an upsert of usage ran for
/// milliseconds, and a node on PostgreSQL had a p99 of 3.54 to 4.47 ms; at
/// 50 rows, 2.91 to 3.20 ms, for a little more of the database's CPU
/// (BENCHMARKS.md, "Shorter statements"). 6 values a row stays far below
/// SQLite's and PostgreSQL's limits on bound parameters.
pub(crate) const ROWS_PER_STATEMENT: usize = 50;

/// Rows per statement of a key import (`keygate import`), which an
/// operator runs on its own: fewer statements for 1,000,000 keys
/// (BENCHMARKS.md, "Key import").
pub(crate) const IMPORT_ROWS_PER_STATEMENT: usize = 500;

/// How long applied usage batch ids are remembered: far longer than any
/// retry of a failed flush (a node retries until the store answers).
pub(crate) const USAGE_BATCH_MEMORY_MS: i64 = 7 * 24 * 3600 * 1000;

/// `to` in whole seconds, rounded up: a minute that starts before `to` is in
/// `[from, to)` even when `to` is a fraction of a second into that minute.
pub(crate) fn seconds_rounded_up(at: DateTime<Utc>) -> i64 {
    at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0)
}

pub(crate) const KEY_COLUMNS: &str = "k.id, k.workspace_id, k.lineage_id, k.name, k.environment, k.key_hash, k.hint, \
    k.scopes, k.roles, k.ip_allowlist, k.expires_at, k.metadata, k.limits, k.credits, k.credits_set_at, k.created_at, k.created_by, \
    k.last_used_at, k.last_used_ip, k.revoked_at, k.revoked_reason, k.rotated_from, k.rotated_to, k.deleted_at, k.legacy";
pub(crate) const WORKSPACE_COLUMNS: &str = "w.id AS w_id, w.name AS w_name, w.plan AS w_plan, \
    w.ip_allowlist AS w_ip_allowlist, w.limits AS w_limits, w.credits AS w_credits, w.disabled AS w_disabled, \
    w.leak_policy AS w_leak_policy, w.created_at AS w_created_at, w.updated_at AS w_updated_at";

/// The column reads the row mappers need, for any backend's row type.
pub(crate) trait StoreRow {
    fn get_col<T: ColumnValue>(&self, column: &str) -> Result<T, StoreError>
    where
        Self: Sized,
    {
        T::read(self, column)
    }
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError>;
}

/// The Rust types stored columns decode to.
pub(crate) trait ColumnValue: Sized {
    fn read<R: StoreRow + ?Sized>(row: &R, column: &str) -> Result<Self, StoreError>;
}

impl ColumnValue for String {
    fn read<R: StoreRow + ?Sized>(row: &R, column: &str) -> Result<Self, StoreError> {
        row.text(column)
    }
}

impl ColumnValue for Option<String> {
    fn read<R: StoreRow + ?Sized>(row: &R, column: &str) -> Result<Self, StoreError> {
        row.opt_text(column)
    }
}

impl ColumnValue for i64 {
    fn read<R: StoreRow + ?Sized>(row: &R, column: &str) -> Result<Self, StoreError> {
        row.int(column)
    }
}

impl ColumnValue for Option<i64> {
    fn read<R: StoreRow + ?Sized>(row: &R, column: &str) -> Result<Self, StoreError> {
        row.opt_int(column)
    }
}

macro_rules! impl_store_row {
    ($row:ty) => {
        impl StoreRow for $row {
            fn text(&self, column: &str) -> Result<String, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn int(&self, column: &str) -> Result<i64, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
                Ok(self.try_get(column)?)
            }
            fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError> {
                Ok(self.try_get(column)?)
            }
        }
    };
}

impl_store_row!(sqlx::sqlite::SqliteRow);
impl_store_row!(sqlx::postgres::PgRow);

pub(crate) fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(crate) fn from_ms(millis: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis).ok_or_else(|| StoreError::Corrupt(format!("timestamp {millis}")))
}

pub(crate) fn opt_from_ms(millis: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    millis.map(from_ms).transpose()
}

pub(crate) fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: String, column: &str) -> Result<T, StoreError> {
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

pub(crate) fn opt_from_json<T: serde::de::DeserializeOwned>(
    text: Option<String>,
    column: &str,
) -> Result<Option<T>, StoreError> {
    text.map(|text| from_json(text, column)).transpose()
}

/// `value` as JSON, or NULL.
pub(crate) fn opt_to_json<T: serde::Serialize>(value: Option<&T>) -> Result<Option<String>, StoreError> {
    value.map(to_json).transpose()
}

pub(crate) fn allowlist_from_json(text: String, column: &str) -> Result<IpAllowlist, StoreError> {
    let entries: Vec<String> = from_json(text, column)?;
    IpAllowlist::parse(&entries).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn leak_policy_from(text: Option<String>) -> Result<Option<OnLeak>, StoreError> {
    text.map(|text| {
        OnLeak::parse(&text).ok_or_else(|| StoreError::Corrupt(format!("workspaces.leak_policy: `{text}`")))
    })
    .transpose()
}

pub(crate) fn workspace_from_row<R: StoreRow>(row: &R) -> Result<Workspace, StoreError> {
    Ok(Workspace {
        id: row.get_col("w_id")?,
        name: row.get_col("w_name")?,
        plan: row.get_col("w_plan")?,
        ip_allowlist: allowlist_from_json(row.get_col("w_ip_allowlist")?, "workspaces.ip_allowlist")?,
        limits: from_json(row.get_col("w_limits")?, "workspaces.limits")?,
        credits: opt_from_json(row.get_col("w_credits")?, "workspaces.credits")?,
        disabled: row.int("w_disabled")? != 0,
        leak_policy: leak_policy_from(row.opt_text("w_leak_policy")?)?,
        created_at: from_ms(row.get_col("w_created_at")?)?,
        updated_at: from_ms(row.get_col("w_updated_at")?)?,
    })
}

pub(crate) fn hash_from_row<R: StoreRow>(row: &R) -> Result<KeyHash, StoreError> {
    let hash: [u8; 32] = row
        .bytes("key_hash")?
        .try_into()
        .map_err(|_| StoreError::Corrupt("api_keys.key_hash is not 32 bytes".into()))?;
    Ok(KeyHash::from_bytes(hash))
}

pub(crate) fn key_from_row<R: StoreRow>(row: &R) -> Result<ApiKey, StoreError> {
    let hash = hash_from_row(row)?;
    Ok(ApiKey {
        id: row.get_col("id")?,
        workspace_id: row.get_col("workspace_id")?,
        lineage_id: row.get_col("lineage_id")?,
        name: row.get_col("name")?,
        environment: row.get_col("environment")?,
        hash,
        hint: row.get_col("hint")?,
        scopes: from_json(row.get_col("scopes")?, "api_keys.scopes")?,
        roles: from_json(row.get_col("roles")?, "api_keys.roles")?,
        ip_allowlist: allowlist_from_json(row.get_col("ip_allowlist")?, "api_keys.ip_allowlist")?,
        expires_at: opt_from_ms(row.get_col("expires_at")?)?,
        metadata: from_json(row.get_col("metadata")?, "api_keys.metadata")?,
        limits: from_json(row.get_col("limits")?, "api_keys.limits")?,
        credits: opt_from_json(row.get_col("credits")?, "api_keys.credits")?,
        credits_set_at: opt_from_ms(row.get_col("credits_set_at")?)?,
        created_at: from_ms(row.get_col("created_at")?)?,
        created_by: row.get_col("created_by")?,
        last_used_at: opt_from_ms(row.get_col("last_used_at")?)?,
        last_used_ip: row.get_col("last_used_ip")?,
        revoked_at: opt_from_ms(row.get_col("revoked_at")?)?,
        revoked_reason: row.get_col("revoked_reason")?,
        rotated_from: row.get_col("rotated_from")?,
        rotated_to: row.get_col("rotated_to")?,
        deleted_at: opt_from_ms(row.get_col("deleted_at")?)?,
        legacy: row.int("legacy")? != 0,
    })
}

pub(crate) fn audit_from_row<R: StoreRow>(row: &R) -> Result<AuditEvent, StoreError> {
    Ok(AuditEvent {
        id: row.get_col("id")?,
        at: from_ms(row.get_col("at")?)?,
        actor: row.get_col("actor")?,
        actor_ip: row.get_col("actor_ip")?,
        action: row.get_col("action")?,
        object_type: row.get_col("object_type")?,
        object_id: row.get_col("object_id")?,
        workspace_id: row.get_col("workspace_id")?,
        details: from_json(row.get_col("details")?, "audit_events.details")?,
    })
}

/// Turns `size + 1` fetched rows into a page and the cursor of the next one.
pub(crate) fn paged<T>(mut items: Vec<T>, size: u32, id_of: impl Fn(&T) -> &str) -> Paged<T> {
    let has_more = items.len() > size as usize;
    items.truncate(size as usize);
    let next_cursor = if has_more {
        items.last().map(|item| id_of(item).to_owned())
    } else {
        None
    };
    Paged { items, next_cursor }
}

/// Implements `Store` for `$store` (a struct with a `pool` of database `$db`),
/// passing every static SQL text through `$sql` for the backend's placeholders.
/// `$store` also has `open_change_feed` and `announcement`, the statement and
/// channel that tell other nodes of a [`Change`](crate::Change) inside the
/// writing transaction (`None` for a single-node store).
macro_rules! sql_store {
    ($store:ident, $db:ty, $sql:path) => {
        mod sql_store_impl {
            use super::$store;
            use $crate::sql::*;

            #[async_trait::async_trait]
            impl $crate::Store for $store {
                async fn close(&self) {
                    self.pool.close().await;
                }

                async fn change_feed(&self) -> Result<Option<Box<dyn $crate::ChangeFeed>>, StoreError> {
                    self.open_change_feed().await
                }

                async fn ping(&self) -> Result<(), StoreError> {
                    sqlx::query(&$sql("SELECT 1")).execute(&self.pool).await?;
                    Ok(())
                }
            }

            impl $store {
                /// Returns 1 if the event was added, 0 if its dedup key or
                /// quiet period ruled it out.
                async fn insert_event(tx: &mut sqlx::Transaction<'_, $db>, event: &NewEvent) -> Result<u64, StoreError> {
                    let added = sqlx::query(&$sql("INSERT INTO events (id, type, at, workspace_id, subject, dedup_key, body) \
                         SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS \
                         (SELECT 1 FROM events WHERE subject = ? AND type = ? AND at >= ?) ON CONFLICT DO NOTHING"))
                    .bind(&event.id)
                    .bind(event.kind.as_str())
                    .bind(ms(event.at))
                    .bind(&event.workspace_id)
                    .bind(&event.subject)
                    .bind(&event.dedup_key)
                    .bind(&event.body)
                    .bind(&event.subject)
                    .bind(event.kind.as_str())
                    .bind(event.quiet_since.map_or(i64::MAX, ms))
                    .execute(&mut **tx)
                    .await?;
                    Ok(added.rows_affected())
                }

                async fn insert_audit(tx: &mut sqlx::Transaction<'_, $db>, event: &AuditEvent) -> Result<(), StoreError> {
                    sqlx::query(&$sql("INSERT INTO audit_events (id, at, actor, actor_ip, action, object_type, object_id, workspace_id, details) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"))
                    .bind(&event.id)
                    .bind(ms(event.at))
                    .bind(&event.actor)
                    .bind(&event.actor_ip)
                    .bind(&event.action)
                    .bind(&event.object_type)
                    .bind(&event.object_id)
                    .bind(&event.workspace_id)
                    .bind(to_json(&event.details)?)
                    .execute(&mut **tx)
                    .await?;
                    if let Some(kind) = EventType::published_for_action(&event.action) {
                        Self::insert_event(tx, &published_event(event, kind)).await?;
                    }
                    Ok(())
                }

                async fn announce(&self, tx: &mut sqlx::Transaction<'_, $db>, change: &Change) -> Result<(), StoreError> {
                    if let Some((statement, channel)) = self.announcement() {
                        sqlx::query(&$sql(statement))
                            .bind(channel)
                            .bind(change.encode())
                            .execute(&mut **tx)
                            .await?;
                    }
                    Ok(())
                }
            }

            $crate::sql::workspaces::workspaces_sql!($store, $db, $sql);
            $crate::sql::keys::keys_sql!($store, $db, $sql);
            $crate::sql::audit::audit_sql!($store, $db, $sql);
            $crate::sql::usage::usage_sql!($store, $db, $sql);
            $crate::sql::credits::credits_sql!($store, $db, $sql);
            $crate::sql::events::events_sql!($store, $db, $sql);
            $crate::sql::webhooks::webhooks_sql!($store, $db, $sql);
            $crate::sql::nodes::nodes_sql!($store, $db, $sql);
            $crate::sql::sessions::sessions_sql!($store, $db, $sql);
        }
    };
}

pub(crate) use sql_store;
