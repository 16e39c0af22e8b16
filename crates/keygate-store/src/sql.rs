//! What the SQL stores share: the schema's column lists, the mapping between
//! rows and the domain types, and [`sql_store!`], which writes the `Store`
//! implementation once for every sqlx database. The SQL is the same on
//! SQLite and PostgreSQL (timestamps as Unix milliseconds, lists as JSON
//! text); only the placeholder syntax differs, which each backend's `sql_text`
//! translates.

pub(crate) use chrono::{DateTime, Utc};
pub(crate) use keygate_core::ip::IpAllowlist;
pub(crate) use keygate_core::model::{ApiKey, KeyStatus, Workspace};
pub(crate) use keygate_core::KeyHash;
pub(crate) use sqlx::Row;

pub(crate) use crate::changes::Change;
pub(crate) use keygate_core::events::{EventFilter, EventType};
pub(crate) use keygate_core::webhook::WebhookSecret;

pub(crate) use crate::{
    AuditEvent, AuditFilter, BucketCount, ClaimedDelivery, Delivery, DeliveryAttempt, DeliveryNext, DeliveryStatus,
    EventListFilter, KeyActivity, KeyEventScan, KeyFilter, KeyTotals, NewEvent, Page, Paged, RevokeOutcome, StoreError,
    StoredEvent, TopBy, UsageBatch, UsageCount, UsageCutoffs, UsageGrain, WebhookEndpoint, TOP_KEY_WINDOWS,
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
        secret: WebhookSecret::parse(&row.text("secret")?)
            .map_err(|e| StoreError::Corrupt(format!("webhook_endpoints.secret: {e}")))?,
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
        secret: WebhookSecret::parse(&row.text("secret")?)
            .map_err(|e| StoreError::Corrupt(format!("webhook_endpoints.secret: {e}")))?,
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

/// How long applied usage batch ids are remembered: far longer than any
/// retry of a failed flush (a node retries until the store answers).
/// Rows per multi-row statement of a usage flush: 6 values each stays far
/// below SQLite's and PostgreSQL's limits on bound parameters.
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

pub(crate) const USAGE_BATCH_MEMORY_MS: i64 = 7 * 24 * 3600 * 1000;

/// `to` in whole seconds, rounded up: a minute that starts before `to` is in
/// `[from, to)` even when `to` is a fraction of a second into that minute.
pub(crate) fn seconds_rounded_up(at: DateTime<Utc>) -> i64 {
    at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0)
}

pub(crate) const KEY_COLUMNS: &str = "k.id, k.workspace_id, k.lineage_id, k.name, k.environment, k.key_hash, k.hint, \
    k.scopes, k.ip_allowlist, k.expires_at, k.metadata, k.limits, k.created_at, k.created_by, k.last_used_at, \
    k.last_used_ip, k.revoked_at, k.revoked_reason, k.rotated_from, k.rotated_to, k.deleted_at";
pub(crate) const WORKSPACE_COLUMNS: &str = "w.id AS w_id, w.name AS w_name, w.plan AS w_plan, \
    w.ip_allowlist AS w_ip_allowlist, w.limits AS w_limits, w.disabled AS w_disabled, \
    w.created_at AS w_created_at, w.updated_at AS w_updated_at";

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

pub(crate) fn allowlist_from_json(text: String, column: &str) -> Result<IpAllowlist, StoreError> {
    let entries: Vec<String> = from_json(text, column)?;
    IpAllowlist::parse(&entries).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

pub(crate) fn workspace_from_row<R: StoreRow>(row: &R) -> Result<Workspace, StoreError> {
    Ok(Workspace {
        id: row.get_col("w_id")?,
        name: row.get_col("w_name")?,
        plan: row.get_col("w_plan")?,
        ip_allowlist: allowlist_from_json(row.get_col("w_ip_allowlist")?, "workspaces.ip_allowlist")?,
        limits: from_json(row.get_col("w_limits")?, "workspaces.limits")?,
        disabled: row.int("w_disabled")? != 0,
        created_at: from_ms(row.get_col("w_created_at")?)?,
        updated_at: from_ms(row.get_col("w_updated_at")?)?,
    })
}

pub(crate) fn key_from_row<R: StoreRow>(row: &R) -> Result<ApiKey, StoreError> {
    let hash: Vec<u8> = row.bytes("key_hash")?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Corrupt("api_keys.key_hash is not 32 bytes".into()))?;
    Ok(ApiKey {
        id: row.get_col("id")?,
        workspace_id: row.get_col("workspace_id")?,
        lineage_id: row.get_col("lineage_id")?,
        name: row.get_col("name")?,
        environment: row.get_col("environment")?,
        hash: KeyHash::from_bytes(hash),
        hint: row.get_col("hint")?,
        scopes: from_json(row.get_col("scopes")?, "api_keys.scopes")?,
        ip_allowlist: allowlist_from_json(row.get_col("ip_allowlist")?, "api_keys.ip_allowlist")?,
        expires_at: opt_from_ms(row.get_col("expires_at")?)?,
        metadata: from_json(row.get_col("metadata")?, "api_keys.metadata")?,
        limits: from_json(row.get_col("limits")?, "api_keys.limits")?,
        created_at: from_ms(row.get_col("created_at")?)?,
        created_by: row.get_col("created_by")?,
        last_used_at: opt_from_ms(row.get_col("last_used_at")?)?,
        last_used_ip: row.get_col("last_used_ip")?,
        revoked_at: opt_from_ms(row.get_col("revoked_at")?)?,
        revoked_reason: row.get_col("revoked_reason")?,
        rotated_from: row.get_col("rotated_from")?,
        rotated_to: row.get_col("rotated_to")?,
        deleted_at: opt_from_ms(row.get_col("deleted_at")?)?,
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

                async fn insert_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    sqlx::query(&$sql("INSERT INTO workspaces (id, name, plan, ip_allowlist, limits, disabled, created_at, updated_at) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?)"))
                    .bind(&ws.id)
                    .bind(&ws.name)
                    .bind(&ws.plan)
                    .bind(to_json(&ws.ip_allowlist.to_strings())?)
                    .bind(to_json(&ws.limits)?)
                    .bind(i64::from(ws.disabled))
                    .bind(ms(ws.created_at))
                    .bind(ms(ws.updated_at))
                    .execute(&mut *tx)
                    .await?;
                    Self::insert_audit(&mut tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn get_workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError> {
                    let row = sqlx::query(&$sql(&format!(
                        "SELECT {WORKSPACE_COLUMNS} FROM workspaces w WHERE w.id = ? AND w.deleted_at IS NULL"
                    )))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                    row.as_ref().map(workspace_from_row).transpose()
                }

                async fn list_workspaces(&self, page: &Page) -> Result<Paged<Workspace>, StoreError> {
                    let size = page.size();
                    let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT {WORKSPACE_COLUMNS} FROM workspaces w WHERE w.deleted_at IS NULL"
                    ));
                    if let Some(cursor) = &page.cursor {
                        q.push(" AND w.id < ").push_bind(cursor);
                    }
                    q.push(" ORDER BY w.id DESC LIMIT ").push_bind(i64::from(size) + 1);
                    let rows = q.build().fetch_all(&self.pool).await?;
                    let items = rows.iter().map(workspace_from_row).collect::<Result<Vec<_>, _>>()?;
                    Ok(paged(items, size, |w| &w.id))
                }

                async fn update_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    let done = sqlx::query(&$sql("UPDATE workspaces SET name = ?, plan = ?, ip_allowlist = ?, limits = ?, disabled = ?, updated_at = ? \
                         WHERE id = ? AND deleted_at IS NULL"))
                    .bind(&ws.name)
                    .bind(&ws.plan)
                    .bind(to_json(&ws.ip_allowlist.to_strings())?)
                    .bind(to_json(&ws.limits)?)
                    .bind(i64::from(ws.disabled))
                    .bind(ms(ws.updated_at))
                    .bind(&ws.id)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    Self::insert_audit(&mut tx, audit).await?;
                    self.announce(&mut tx, &Change::Workspace(ws.id.clone())).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn delete_workspace(&self, id: &str, at: DateTime<Utc>, audit: &AuditEvent) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    let done = sqlx::query(&$sql("UPDATE workspaces SET deleted_at = ?, disabled = 1, updated_at = ? WHERE id = ? AND deleted_at IS NULL"))
                    .bind(ms(at))
                    .bind(ms(at))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    sqlx::query(&$sql("UPDATE api_keys SET revoked_at = ?, revoked_reason = 'workspace deleted' \
                         WHERE workspace_id = ? AND revoked_at IS NULL"))
                    .bind(ms(at))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    Self::insert_audit(&mut tx, audit).await?;
                    self.announce(&mut tx, &Change::Workspace(id.to_owned())).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn insert_key(&self, key: &ApiKey, audit: &AuditEvent) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    Self::insert_key_row(&mut tx, key).await?;
                    Self::insert_audit(&mut tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn get_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
                    let row = sqlx::query(&$sql(&format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.id = ?")))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.as_ref().map(key_from_row).transpose()
                }

                async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<(ApiKey, Workspace)>, StoreError> {
                    let row = sqlx::query(&$sql(&format!(
                        "SELECT {KEY_COLUMNS}, {WORKSPACE_COLUMNS} FROM api_keys k \
                         JOIN workspaces w ON w.id = k.workspace_id WHERE k.key_hash = ?"
                    )))
                    .bind(&hash.as_bytes()[..])
                    .fetch_optional(&self.pool)
                    .await?;
                    row.map(|row| Ok((key_from_row(&row)?, workspace_from_row(&row)?)))
                        .transpose()
                }

                async fn list_keys(
                    &self,
                    workspace_id: &str,
                    filter: &KeyFilter,
                    page: &Page,
                    now: DateTime<Utc>,
                ) -> Result<Paged<ApiKey>, StoreError> {
                    let size = page.size();
                    let now = ms(now);
                    let mut q =
                        sqlx::QueryBuilder::<$db>::new(format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.workspace_id = "));
                    q.push_bind(workspace_id);
                    match filter.status {
                        None => {
                            q.push(" AND k.deleted_at IS NULL");
                        }
                        Some(KeyStatus::Deleted) => {
                            q.push(" AND k.deleted_at IS NOT NULL");
                        }
                        Some(KeyStatus::Revoked) => {
                            q.push(" AND k.deleted_at IS NULL AND k.revoked_at IS NOT NULL");
                        }
                        Some(KeyStatus::Expired) => {
                            q.push(" AND k.deleted_at IS NULL AND k.revoked_at IS NULL AND k.expires_at <= ")
                                .push_bind(now);
                        }
                        Some(KeyStatus::Active) => {
                            q.push(
                                " AND k.deleted_at IS NULL AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ",
                            )
                            .push_bind(now)
                            .push(")");
                        }
                    }
                    if let Some(env) = &filter.environment {
                        q.push(" AND k.environment = ").push_bind(env);
                    }
                    if let Some(cursor) = &page.cursor {
                        q.push(" AND k.id < ").push_bind(cursor);
                    }
                    q.push(" ORDER BY k.id DESC LIMIT ").push_bind(i64::from(size) + 1);
                    let rows = q.build().fetch_all(&self.pool).await?;
                    let items = rows.iter().map(key_from_row).collect::<Result<Vec<_>, _>>()?;
                    Ok(paged(items, size, |k| &k.id))
                }

                async fn count_keys(&self, workspace_id: &str) -> Result<u64, StoreError> {
                    let count: i64 = sqlx::query_scalar(&$sql("SELECT COUNT(*) FROM api_keys WHERE workspace_id = ?"))
                        .bind(workspace_id)
                        .fetch_one(&self.pool)
                        .await?;
                    Ok(count.unsigned_abs())
                }

                async fn update_key(&self, key: &ApiKey, audit: &AuditEvent) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    let done = sqlx::query(&$sql("UPDATE api_keys SET name = ?, scopes = ?, ip_allowlist = ?, expires_at = ?, metadata = ?, limits = ? \
                         WHERE id = ? AND deleted_at IS NULL"))
                    .bind(&key.name)
                    .bind(to_json(&key.scopes)?)
                    .bind(to_json(&key.ip_allowlist.to_strings())?)
                    .bind(key.expires_at.map(ms))
                    .bind(to_json(&key.metadata)?)
                    .bind(to_json(&key.limits)?)
                    .bind(&key.id)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    Self::insert_audit(&mut tx, audit).await?;
                    self.announce(&mut tx, &Change::Key(key.hash)).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn revoke_key(
                    &self,
                    id: &str,
                    at: DateTime<Utc>,
                    reason: Option<&str>,
                    audit: &AuditEvent,
                ) -> Result<RevokeOutcome, StoreError> {
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    let done =
                        sqlx::query(&$sql("UPDATE api_keys SET revoked_at = ?, revoked_reason = ? WHERE id = ? AND revoked_at IS NULL"))
                            .bind(ms(at))
                            .bind(reason)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                    let key = Self::fetch_key(&mut tx, id).await?;
                    if done.rows_affected() == 0 {
                        return Ok(RevokeOutcome::AlreadyRevoked(key));
                    }
                    Self::insert_audit(&mut tx, audit).await?;
                    self.announce(&mut tx, &Change::Key(key.hash)).await?;
                    tx.commit().await?;
                    Ok(RevokeOutcome::Revoked(key))
                }

                async fn delete_key(&self, id: &str, at: DateTime<Utc>, audit: &AuditEvent) -> Result<ApiKey, StoreError> {
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    let done = sqlx::query(&$sql("UPDATE api_keys SET deleted_at = ?, revoked_at = COALESCE(revoked_at, ?), \
                         revoked_reason = CASE WHEN revoked_at IS NULL THEN 'deleted' ELSE revoked_reason END \
                         WHERE id = ? AND deleted_at IS NULL"))
                    .bind(ms(at))
                    .bind(ms(at))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    let key = Self::fetch_key(&mut tx, id).await?;
                    if done.rows_affected() > 0 {
                        Self::insert_audit(&mut tx, audit).await?;
                        self.announce(&mut tx, &Change::Key(key.hash)).await?;
                    }
                    tx.commit().await?;
                    Ok(key)
                }

                async fn rotate_key(
                    &self,
                    old_id: &str,
                    old_expires_at: DateTime<Utc>,
                    new: &ApiKey,
                    audit: &AuditEvent,
                ) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    let done = sqlx::query(&$sql("UPDATE api_keys SET rotated_to = ?, \
                         expires_at = CASE WHEN expires_at IS NULL OR expires_at > ? THEN ? ELSE expires_at END \
                         WHERE id = ? AND rotated_to IS NULL AND revoked_at IS NULL AND deleted_at IS NULL"))
                    .bind(&new.id)
                    .bind(ms(old_expires_at))
                    .bind(ms(old_expires_at))
                    .bind(old_id)
                    .execute(&mut *tx)
                    .await?;
                    let old = Self::fetch_key(&mut tx, old_id).await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::Conflict("the key is revoked or was already rotated".into()));
                    }
                    Self::insert_key_row(&mut tx, new).await?;
                    Self::insert_audit(&mut tx, audit).await?;
                    self.announce(&mut tx, &Change::Key(old.hash)).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn list_audit_events(&self, filter: &AuditFilter, page: &Page) -> Result<Paged<AuditEvent>, StoreError> {
                    let size = page.size();
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT id, at, actor, actor_ip, action, object_type, object_id, workspace_id, details \
                         FROM audit_events WHERE 1 = 1",
                    );
                    if let Some(ws) = &filter.workspace_id {
                        q.push(" AND workspace_id = ").push_bind(ws);
                    }
                    if let Some(key) = &filter.key_id {
                        q.push(" AND object_id = ").push_bind(key);
                    }
                    if let Some(cursor) = &page.cursor {
                        q.push(" AND id < ").push_bind(cursor);
                    }
                    q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(size) + 1);
                    let rows = q.build().fetch_all(&self.pool).await?;
                    let items = rows.iter().map(audit_from_row).collect::<Result<Vec<_>, _>>()?;
                    Ok(paged(items, size, |e| &e.id))
                }

                async fn record_usage(&self, batch: &UsageBatch) -> Result<(), StoreError> {
                    if batch.is_empty() {
                        return Ok(());
                    }
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    // A retried batch whose first attempt did commit is applied once.
                    let first = sqlx::query(&$sql("INSERT INTO usage_batches (id, applied_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"))
                        .bind(&batch.id)
                        .bind(ms(batch.at))
                        .execute(&mut *tx)
                        .await?;
                    if first.rows_affected() == 0 {
                        return Ok(());
                    }
                    sqlx::query(&$sql("DELETE FROM usage_batches WHERE applied_at < ?"))
                        .bind(ms(batch.at) - USAGE_BATCH_MEMORY_MS)
                        .execute(&mut *tx)
                        .await?;
                    // Rows in one global order, so that flushes of many nodes
                    // touching the same rows wait for each other instead of deadlocking.
                    let mut counts: Vec<&UsageCount> = batch.counts.iter().collect();
                    counts.sort_by(|a, b| (&a.key_id, a.minute, &a.outcome).cmp(&(&b.key_id, b.minute, &b.outcome)));
                    let mut last_uses: Vec<&crate::LastUse> = batch.last_uses.iter().collect();
                    last_uses.sort_by(|a, b| a.key_id.cmp(&b.key_id));
                    // Many rows per statement: a flush of 10,000 keys is a
                    // few dozen statements, not 40,000 round trips.
                    for chunk in counts.chunks(ROWS_PER_STATEMENT) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO usage_minutes (key_id, workspace_id, minute, outcome, count) ",
                        );
                        q.push_values(chunk, |mut row, count| {
                            // Borrowed, not cloned: SQLite binds a `&str` as it is.
                            row.push_bind(count.key_id.as_str())
                                .push_bind(count.workspace_id.as_str())
                                .push_bind(count.minute)
                                .push_bind(count.outcome.as_str())
                                .push_bind(i64::try_from(count.count).unwrap_or(i64::MAX));
                        });
                        q.push(" ON CONFLICT (key_id, minute, outcome) DO UPDATE SET count = usage_minutes.count + excluded.count");
                        q.build().execute(&mut *tx).await?;
                    }
                    // The roll-up job rolls complete minutes into hours and
                    // days; minutes it has already passed (a retried batch, a
                    // node whose clock is behind) are rolled up here. Read
                    // after the minutes are written: on PostgreSQL that waits
                    // for a running job, whose result is then seen.
                    let rolled_until: i64 =
                        sqlx::query_scalar(&$sql("SELECT rolled_until FROM usage_rollup_progress WHERE id = 1"))
                            .fetch_one(&mut *tx)
                            .await?;
                    let late: Vec<UsageCount> =
                        batch.counts.iter().filter(|count| count.minute < rolled_until).cloned().collect();
                    for grain in [UsageGrain::Hour, UsageGrain::Day] {
                        let rolled: Vec<_> = roll_up(&late, grain).into_iter().collect();
                        for chunk in rolled.chunks(ROWS_PER_STATEMENT) {
                            let mut q = sqlx::QueryBuilder::<$db>::new(
                                "INSERT INTO usage_rollups (key_id, workspace_id, grain, start, outcome, count) ",
                            );
                            q.push_values(chunk, |mut row, ((key_id, start, outcome), (workspace_id, count))| {
                                row.push_bind(*key_id)
                                    .push_bind(*workspace_id)
                                    .push_bind(grain.seconds())
                                    .push_bind(*start)
                                    .push_bind(*outcome)
                                    .push_bind(i64::try_from(*count).unwrap_or(i64::MAX));
                            });
                            q.push(" ON CONFLICT (key_id, grain, start, outcome) DO UPDATE SET count = usage_rollups.count + excluded.count");
                            q.build().execute(&mut *tx).await?;
                        }
                    }
                    for grain in UsageGrain::ALL {
                        let rolled: Vec<_> = roll_up_workspaces(&late, grain).into_iter().collect();
                        for chunk in rolled.chunks(ROWS_PER_STATEMENT) {
                            let mut q = sqlx::QueryBuilder::<$db>::new(
                                "INSERT INTO usage_workspace_rollups (workspace_id, grain, start, outcome, count) ",
                            );
                            q.push_values(chunk, |mut row, ((workspace_id, start, outcome), count)| {
                                row.push_bind(*workspace_id)
                                    .push_bind(grain.seconds())
                                    .push_bind(*start)
                                    .push_bind(*outcome)
                                    .push_bind(i64::try_from(*count).unwrap_or(i64::MAX));
                            });
                            q.push(" ON CONFLICT (workspace_id, grain, start, outcome) DO UPDATE SET count = usage_workspace_rollups.count + excluded.count");
                            q.build().execute(&mut *tx).await?;
                        }
                    }
                    // One statement per day: a key appears once in each. A day
                    // the job has moved a window past is not counted in it.
                    let rolled_today = UsageGrain::Day.bucket_of(rolled_until);
                    for (day, keys) in per_day_and_key(&late) {
                        let keys: Vec<_> = keys.into_iter().collect();
                        for days in TOP_KEY_WINDOWS {
                            if day < rolled_today - (i64::from(days) - 1) * 86_400 {
                                continue;
                            }
                            for chunk in keys.chunks(ROWS_PER_STATEMENT) {
                                let mut q = sqlx::QueryBuilder::<$db>::new(
                                    "INSERT INTO usage_key_windows (key_id, workspace_id, days, since, requests, rejected) ",
                                );
                                q.push_values(chunk, |mut row, ((key_id, workspace_id), (requests, rejected))| {
                                    row.push_bind(*key_id)
                                        .push_bind(*workspace_id)
                                        .push_bind(i64::from(days))
                                        .push_bind(day)
                                        .push_bind(i64::try_from(*requests).unwrap_or(i64::MAX))
                                        .push_bind(i64::try_from(*rejected).unwrap_or(i64::MAX));
                                });
                                q.push(KEY_WINDOW_UPSERT);
                                q.build().execute(&mut *tx).await?;
                            }
                        }
                    }
                    for chunk in last_uses.chunks(ROWS_PER_STATEMENT) {
                        let mut q = sqlx::QueryBuilder::<$db>::new("WITH used (id, at, ip) AS (");
                        q.push_values(chunk, |mut row, used| {
                            row.push_bind(used.key_id.as_str()).push_bind(ms(used.at)).push_bind(used.ip.as_str());
                        });
                        q.push(") UPDATE api_keys SET last_used_at = used.at, last_used_ip = used.ip FROM used \
                             WHERE api_keys.id = used.id AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < used.at)");
                        q.build().execute(&mut *tx).await?;
                    }
                    for event in &batch.events {
                        Self::insert_event(&mut tx, event).await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }

                async fn key_usage(
                    &self,
                    key_id: &str,
                    grain: UsageGrain,
                    from: DateTime<Utc>,
                    to: DateTime<Utc>,
                ) -> Result<Vec<UsageCount>, StoreError> {
                    let size = grain.seconds();
                    let to = seconds_rounded_up(to);
                    let rows = match grain {
                        UsageGrain::Minute => sqlx::query(&$sql("SELECT key_id, workspace_id, minute, outcome, count FROM usage_minutes \
                             WHERE key_id = ? AND minute >= ? AND minute < ?"))
                            .bind(key_id)
                            .bind(from.timestamp())
                            .bind(to)
                            .fetch_all(&self.pool)
                            .await?,
                        // The rollups, and the minutes not rolled up yet, in one
                        // statement: one snapshot, so a job committing meanwhile
                        // is seen in neither or in both.
                        UsageGrain::Hour | UsageGrain::Day => sqlx::query(&$sql(&format!(
                            "SELECT key_id, workspace_id, start AS minute, outcome, count FROM usage_rollups \
                             WHERE grain = ? AND key_id = ? AND start >= ? AND start < ? \
                             UNION ALL \
                             SELECT key_id, workspace_id, minute - minute % {size} AS minute, outcome, count FROM usage_minutes \
                             WHERE key_id = ? AND minute >= (SELECT rolled_until FROM usage_rollup_progress WHERE id = 1) \
                             AND minute >= ? AND minute - minute % {size} < ?"
                        )))
                        .bind(size)
                        .bind(key_id)
                        .bind(from.timestamp())
                        .bind(to)
                        .bind(key_id)
                        .bind(from.timestamp())
                        .bind(to)
                        .fetch_all(&self.pool)
                        .await?,
                    };
                    let mut summed: std::collections::BTreeMap<(i64, String), UsageCount> = std::collections::BTreeMap::new();
                    for row in &rows {
                        let count = UsageCount {
                            key_id: row.try_get("key_id")?,
                            workspace_id: row.try_get("workspace_id")?,
                            minute: row.try_get("minute")?,
                            outcome: row.try_get("outcome")?,
                            count: row.try_get::<i64, _>("count")?.unsigned_abs(),
                        };
                        summed
                            .entry((count.minute, count.outcome.clone()))
                            .and_modify(|sum| sum.count += count.count)
                            .or_insert(count);
                    }
                    Ok(summed.into_values().collect())
                }

                async fn workspace_usage(
                    &self,
                    workspace_id: &str,
                    grain: UsageGrain,
                    from: DateTime<Utc>,
                    to: DateTime<Utc>,
                ) -> Result<Vec<BucketCount>, StoreError> {
                    let size = grain.seconds();
                    // The rollups and the minutes not rolled up yet, in one
                    // statement (one snapshot). The latter are the last minute
                    // or two, found by the minute index.
                    let rows = sqlx::query(&$sql(&format!(
                        "SELECT start, outcome, count FROM usage_workspace_rollups \
                         WHERE workspace_id = ? AND grain = ? AND start >= ? AND start < ? \
                         UNION ALL \
                         SELECT minute - minute % {size} AS start, outcome, count FROM usage_minutes \
                         WHERE minute >= (SELECT rolled_until FROM usage_rollup_progress WHERE id = 1) \
                         AND workspace_id = ? AND minute >= ? AND minute - minute % {size} < ?"
                    )))
                    .bind(workspace_id)
                    .bind(size)
                    .bind(from.timestamp())
                    .bind(seconds_rounded_up(to))
                    .bind(workspace_id)
                    .bind(from.timestamp())
                    .bind(seconds_rounded_up(to))
                    .fetch_all(&self.pool)
                    .await?;
                    let mut summed: std::collections::BTreeMap<(i64, String), u64> = std::collections::BTreeMap::new();
                    for row in &rows {
                        let count = row.int("count")?.unsigned_abs();
                        *summed.entry((row.int("start")?, row.text("outcome")?)).or_insert(0) += count;
                    }
                    Ok(summed
                        .into_iter()
                        .map(|((start, outcome), count)| BucketCount { start, outcome, count })
                        .collect())
                }

                async fn roll_up_usage(&self, until: i64) -> Result<u64, StoreError> {
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    // Flushes wait while the job runs, and it sees every flush committed before.
                    sqlx::query(&$sql(self.roll_up_lock())).execute(&mut *tx).await?;
                    let from: i64 =
                        sqlx::query_scalar(&$sql("SELECT rolled_until FROM usage_rollup_progress WHERE id = 1"))
                            .fetch_one(&mut *tx)
                            .await?;
                    let mut rows = 0;
                    if until > from {
                        rows += Self::roll_up_minutes(&mut tx, from, until).await?;
                    }
                    rows += Self::roll_key_windows_forward(&mut tx, UsageGrain::Day.bucket_of(until)).await?;
                    tx.commit().await?;
                    Ok(rows)
                }

                async fn top_keys(
                    &self,
                    workspace_id: &str,
                    days: u32,
                    today: i64,
                    by: TopBy,
                    limit: u32,
                ) -> Result<Vec<KeyTotals>, StoreError> {
                    let window_start = today - (i64::from(days) - 1) * 86_400;
                    let column = match by {
                        TopBy::Requests => "requests",
                        TopBy::Rejections => "rejected",
                    };
                    // One statement, one snapshot: the stored top keys and the
                    // keys active in the minutes not rolled up yet are the only
                    // candidates (any other key's stored total is its total, and
                    // no more than the stored top's), then each candidate's
                    // stored total plus its recent minutes.
                    let rows = sqlx::query(&$sql(&format!(
                        "WITH recent AS ( \
                           SELECT key_id, CAST(SUM(count) AS BIGINT) AS requests, \
                                  CAST(SUM(CASE WHEN outcome <> 'admitted' THEN count ELSE 0 END) AS BIGINT) AS rejected \
                           FROM usage_minutes \
                           WHERE minute >= (SELECT rolled_until FROM usage_rollup_progress WHERE id = 1) \
                             AND minute >= ? AND workspace_id = ? \
                           GROUP BY key_id), \
                         stored AS ( \
                           SELECT key_id FROM usage_key_windows WHERE workspace_id = ? AND days = ? \
                           ORDER BY {column} DESC, key_id DESC LIMIT ?), \
                         candidates AS (SELECT key_id FROM stored UNION SELECT key_id FROM recent) \
                         SELECT c.key_id, k.name, \
                                COALESCE(w.requests, 0) + COALESCE(r.requests, 0) AS requests, \
                                COALESCE(w.rejected, 0) + COALESCE(r.rejected, 0) AS rejected \
                         FROM candidates c \
                         JOIN api_keys k ON k.id = c.key_id \
                         LEFT JOIN usage_key_windows w ON w.key_id = c.key_id AND w.days = ? \
                         LEFT JOIN recent r ON r.key_id = c.key_id \
                         ORDER BY {column} DESC, c.key_id DESC LIMIT ?"
                    )))
                    .bind(window_start)
                    .bind(workspace_id)
                    .bind(workspace_id)
                    .bind(i64::from(days))
                    .bind(i64::from(limit))
                    .bind(i64::from(days))
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            Ok(KeyTotals {
                                key_id: row.get_col("key_id")?,
                                name: row.get_col("name")?,
                                requests: row.int("requests")?.unsigned_abs(),
                                rejected: row.int("rejected")?.unsigned_abs(),
                            })
                        })
                        // A key with nothing to rank by is not a top key.
                        .filter(|totals: &Result<KeyTotals, StoreError>| {
                            totals.as_ref().map_or(true, |t| match by {
                                TopBy::Requests => t.requests > 0,
                                TopBy::Rejections => t.rejected > 0,
                            })
                        })
                        .collect()
                }

                async fn prune_usage(&self, cutoffs: &UsageCutoffs) -> Result<u64, StoreError> {
                    // Only minutes the job has rolled up: their counts live on in the hours and days.
                    let mut deleted = sqlx::query(&$sql("DELETE FROM usage_minutes WHERE minute < ? \
                         AND minute < (SELECT rolled_until FROM usage_rollup_progress WHERE id = 1)"))
                        .bind(cutoffs.minutes_before.timestamp())
                        .execute(&self.pool)
                        .await?
                        .rows_affected();
                    for (grain, before) in [
                        (UsageGrain::Minute, cutoffs.minutes_before),
                        (UsageGrain::Hour, cutoffs.hours_before),
                        (UsageGrain::Day, cutoffs.days_before),
                    ] {
                        deleted += sqlx::query(&$sql("DELETE FROM usage_workspace_rollups WHERE grain = ? AND start < ?"))
                            .bind(grain.seconds())
                            .bind(before.timestamp())
                            .execute(&self.pool)
                            .await?
                            .rows_affected();
                    }
                    for (grain, before) in [(UsageGrain::Hour, cutoffs.hours_before), (UsageGrain::Day, cutoffs.days_before)] {
                        deleted += sqlx::query(&$sql("DELETE FROM usage_rollups WHERE grain = ? AND start < ?"))
                            .bind(grain.seconds())
                            .bind(before.timestamp())
                            .execute(&self.pool)
                            .await?
                            .rows_affected();
                    }
                    Ok(deleted)
                }

                async fn key_activity(
                    &self,
                    baseline_from: i64,
                    recent_from: i64,
                    to: i64,
                    min_recent: u64,
                ) -> Result<Vec<KeyActivity>, StoreError> {
                    let rows = sqlx::query(&$sql("SELECT u.key_id, u.workspace_id, k.created_at, \
                         CAST(SUM(CASE WHEN u.minute >= ? THEN u.count ELSE 0 END) AS BIGINT) AS recent, \
                         CAST(SUM(CASE WHEN u.minute < ? THEN u.count ELSE 0 END) AS BIGINT) AS baseline \
                         FROM usage_minutes u JOIN api_keys k ON k.id = u.key_id \
                         WHERE u.minute >= ? AND u.minute < ? \
                         GROUP BY u.key_id, u.workspace_id, k.created_at \
                         HAVING SUM(CASE WHEN u.minute >= ? THEN u.count ELSE 0 END) >= ? \
                         ORDER BY u.key_id"))
                    .bind(recent_from)
                    .bind(recent_from)
                    .bind(baseline_from)
                    .bind(to)
                    .bind(recent_from)
                    .bind(i64::try_from(min_recent).unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await?;
                    rows.iter()
                        .map(|row| {
                            Ok(KeyActivity {
                                key_id: row.get_col("key_id")?,
                                workspace_id: row.get_col("workspace_id")?,
                                key_created_at: from_ms(row.get_col("created_at")?)?,
                                recent: row.int("recent")?.unsigned_abs(),
                                baseline: row.int("baseline")?.unsigned_abs(),
                            })
                        })
                        .collect()
                }

                async fn insert_events(&self, events: &[NewEvent]) -> Result<u64, StoreError> {
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    let mut added = 0;
                    for event in events {
                        added += Self::insert_event(&mut tx, event).await?;
                    }
                    tx.commit().await?;
                    Ok(added)
                }

                async fn list_events(&self, filter: &EventListFilter, page: &Page) -> Result<Paged<StoredEvent>, StoreError> {
                    let size = page.size();
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT id, type, at, workspace_id, subject, body FROM events WHERE 1 = 1",
                    );
                    if let Some(ws) = &filter.workspace_id {
                        q.push(" AND workspace_id = ").push_bind(ws);
                    }
                    if let Some(subject) = &filter.subject {
                        q.push(" AND subject = ").push_bind(subject);
                    }
                    if let Some(cursor) = &page.cursor {
                        q.push(" AND id < ").push_bind(cursor);
                    }
                    q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(size) + 1);
                    let rows = q.build().fetch_all(&self.pool).await?;
                    let items = rows.iter().map(event_from_row).collect::<Result<Vec<_>, _>>()?;
                    Ok(paged(items, size, |e| &e.id))
                }

                async fn keys_due_for_events(&self, scan: &KeyEventScan) -> Result<Vec<(EventType, ApiKey)>, StoreError> {
                    let live = "k.revoked_at IS NULL AND k.deleted_at IS NULL AND k.rotated_to IS NULL";
                    let mut due = Vec::new();
                    for (kind, dedup) in LIFECYCLE_DEDUP_SQL {
                        let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                            "SELECT {KEY_COLUMNS} FROM api_keys k WHERE {live} \
                             AND NOT EXISTS (SELECT 1 FROM events e WHERE e.dedup_key = {dedup})"
                        ));
                        match kind {
                            EventType::KeyExpiring => {
                                q.push(" AND k.expires_at IS NOT NULL AND k.expires_at > ").push_bind(ms(scan.now));
                                q.push(" AND k.expires_at <= ").push_bind(ms(scan.expiring_before));
                                q.push(" ORDER BY k.expires_at");
                            }
                            EventType::KeyExpired => {
                                q.push(" AND k.expires_at IS NOT NULL AND k.expires_at > ").push_bind(ms(scan.expired_since));
                                q.push(" AND k.expires_at <= ").push_bind(ms(scan.now));
                                q.push(" ORDER BY k.expires_at");
                            }
                            _ => {
                                let Some(created_before) = scan.created_before else { continue };
                                q.push(" AND k.created_at < ").push_bind(ms(created_before));
                                q.push(" AND (k.expires_at IS NULL OR k.expires_at > ").push_bind(ms(scan.now)).push(")");
                                q.push(" ORDER BY k.created_at");
                            }
                        }
                        q.push(" LIMIT ").push_bind(i64::from(scan.limit));
                        for row in q.build().fetch_all(&self.pool).await? {
                            due.push((kind, key_from_row(&row)?));
                        }
                    }
                    Ok(due)
                }

                async fn insert_webhook(&self, endpoint: &WebhookEndpoint, audit: &AuditEvent) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    sqlx::query(&$sql("INSERT INTO webhook_endpoints (id, workspace_id, url, secret, events, description, created_at, created_by) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?)"))
                    .bind(&endpoint.id)
                    .bind(&endpoint.workspace_id)
                    .bind(&endpoint.url)
                    .bind(endpoint.secret.expose())
                    .bind(to_json(&endpoint.events.names())?)
                    .bind(&endpoint.description)
                    .bind(ms(endpoint.created_at))
                    .bind(&endpoint.created_by)
                    .execute(&mut *tx)
                    .await?;
                    Self::insert_audit(&mut tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn get_webhook(&self, id: &str) -> Result<Option<WebhookEndpoint>, StoreError> {
                    let row = sqlx::query(&$sql("SELECT * FROM webhook_endpoints WHERE id = ? AND deleted_at IS NULL"))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                    row.as_ref().map(webhook_from_row).transpose()
                }

                async fn list_webhooks(&self, workspace_id: Option<&str>, page: &Page) -> Result<Paged<WebhookEndpoint>, StoreError> {
                    let size = page.size();
                    let mut q = sqlx::QueryBuilder::<$db>::new("SELECT * FROM webhook_endpoints WHERE deleted_at IS NULL");
                    if let Some(ws) = workspace_id {
                        q.push(" AND workspace_id = ").push_bind(ws);
                    }
                    if let Some(cursor) = &page.cursor {
                        q.push(" AND id < ").push_bind(cursor);
                    }
                    q.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(size) + 1);
                    let rows = q.build().fetch_all(&self.pool).await?;
                    let items = rows.iter().map(webhook_from_row).collect::<Result<Vec<_>, _>>()?;
                    Ok(paged(items, size, |w| &w.id))
                }

                async fn delete_webhook(&self, id: &str, at: DateTime<Utc>, audit: &AuditEvent) -> Result<(), StoreError> {
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    let done = sqlx::query(&$sql("UPDATE webhook_endpoints SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL"))
                        .bind(ms(at))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound);
                    }
                    sqlx::query(&$sql("UPDATE webhook_deliveries SET status = 'failed', lease_until = NULL, lease_token = NULL \
                         WHERE endpoint_id = ? AND status = 'pending'"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    Self::insert_audit(&mut tx, audit).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn fan_out_events(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    let events = sqlx::query(&$sql("SELECT id, type, at, workspace_id FROM events WHERE fanned_out = 0 ORDER BY id LIMIT ?"))
                        .bind(i64::from(limit))
                        .fetch_all(&mut *tx)
                        .await?;
                    if events.is_empty() {
                        return Ok(0);
                    }
                    // Endpoints are few: read them once, match every event in memory.
                    let endpoints = sqlx::query(&$sql("SELECT * FROM webhook_endpoints WHERE deleted_at IS NULL ORDER BY id"))
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map(webhook_from_row)
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut deliveries = Vec::new();
                    for event in &events {
                        let event_id: String = event.get_col("id")?;
                        let kind = event.text("type")?.parse::<EventType>().ok();
                        let at = from_ms(event.int("at")?)?;
                        let workspace_id = event.opt_text("workspace_id")?;
                        for endpoint in &endpoints {
                            let receives = endpoint.created_at <= at
                                && (endpoint.workspace_id.is_none() || endpoint.workspace_id == workspace_id)
                                && kind.is_some_and(|kind| endpoint.events.matches(kind));
                            if receives {
                                deliveries.push((delivery_id(&event_id, &endpoint.id), endpoint.id.clone(), event_id.clone()));
                            }
                        }
                    }
                    let mut created = 0;
                    for chunk in deliveries.chunks(ROWS_PER_STATEMENT) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, status, attempts, created_at, next_attempt_at) ",
                        );
                        q.push_values(chunk, |mut row, (id, endpoint_id, event_id)| {
                            row.push_bind(id)
                                .push_bind(endpoint_id)
                                .push_bind(event_id)
                                .push_bind("pending")
                                .push_bind(0_i64)
                                .push_bind(ms(now))
                                .push_bind(ms(now));
                        });
                        q.push(" ON CONFLICT DO NOTHING");
                        created += q.build().execute(&mut *tx).await?.rows_affected();
                    }
                    // Exactly the events read: one committed meanwhile with a
                    // smaller id (another node's) is left for the next round.
                    let ids = events.iter().map(|event| event.text("id")).collect::<Result<Vec<_>, _>>()?;
                    for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                        let mut q = sqlx::QueryBuilder::<$db>::new("UPDATE events SET fanned_out = 1 WHERE id IN (");
                        let mut list = q.separated(", ");
                        for id in chunk {
                            list.push_bind(id);
                        }
                        q.push(")");
                        q.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(created)
                }

                async fn claim_deliveries(
                    &self,
                    now: DateTime<Utc>,
                    lease_until: DateTime<Utc>,
                    lease_token: &str,
                    limit: u32,
                ) -> Result<Vec<ClaimedDelivery>, StoreError> {
                    // The outer conditions repeat the inner ones: a row another
                    // node leased meanwhile is re-checked, and skipped, on PostgreSQL.
                    let claimed: Vec<String> = sqlx::query_scalar(&$sql("UPDATE webhook_deliveries SET lease_until = ?, lease_token = ? \
                         WHERE id IN (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ? \
                           AND (lease_until IS NULL OR lease_until <= ?) ORDER BY next_attempt_at LIMIT ?) \
                         AND status = 'pending' AND (lease_until IS NULL OR lease_until <= ?) RETURNING id"))
                    .bind(ms(lease_until))
                    .bind(lease_token)
                    .bind(ms(now))
                    .bind(ms(now))
                    .bind(i64::from(limit))
                    .bind(ms(now))
                    .fetch_all(&self.pool)
                    .await?;
                    if claimed.is_empty() {
                        return Ok(Vec::new());
                    }
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT d.id, d.attempts, d.event_id, d.endpoint_id, e.at, e.body, w.url, w.secret \
                         FROM webhook_deliveries d JOIN events e ON e.id = d.event_id \
                         JOIN webhook_endpoints w ON w.id = d.endpoint_id WHERE d.lease_token = ",
                    );
                    q.push_bind(lease_token).push(" AND d.id IN (");
                    let mut ids = q.separated(", ");
                    for id in &claimed {
                        ids.push_bind(id);
                    }
                    q.push(") ORDER BY d.next_attempt_at, d.id");
                    let rows = q.build().fetch_all(&self.pool).await?;
                    rows.iter().map(|row| claimed_from_row(row, lease_token)).collect()
                }

                async fn finish_delivery(
                    &self,
                    id: &str,
                    lease_token: &str,
                    attempt: &DeliveryAttempt,
                    next: DeliveryNext,
                ) -> Result<bool, StoreError> {
                    let (status, next_attempt_at, delivered_at) = match next {
                        DeliveryNext::Delivered => (DeliveryStatus::Delivered, attempt.at, Some(ms(attempt.at))),
                        DeliveryNext::RetryAt(at) => (DeliveryStatus::Pending, at, None),
                        DeliveryNext::GiveUp => (DeliveryStatus::Failed, attempt.at, None),
                    };
                    let mut tx = self.pool.begin_with(self.begin_write()).await?;
                    let done = sqlx::query(&$sql("UPDATE webhook_deliveries SET attempts = attempts + 1, status = ?, next_attempt_at = ?, \
                         delivered_at = ?, lease_until = NULL, lease_token = NULL WHERE id = ? AND lease_token = ?"))
                    .bind(status.as_str())
                    .bind(ms(next_attempt_at))
                    .bind(delivered_at)
                    .bind(id)
                    .bind(lease_token)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() == 0 {
                        return Ok(false);
                    }
                    sqlx::query(&$sql("INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error, duration_ms) \
                         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"))
                    .bind(id)
                    .bind(i64::from(attempt.attempt))
                    .bind(ms(attempt.at))
                    .bind(attempt.status_code.map(i64::from))
                    .bind(&attempt.error)
                    .bind(i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(true)
                }

                async fn list_deliveries(&self, endpoint_id: &str, page: &Page) -> Result<Paged<Delivery>, StoreError> {
                    let size = page.size();
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT d.id, d.endpoint_id, d.event_id, e.type, d.status, d.created_at, d.next_attempt_at, d.delivered_at \
                         FROM webhook_deliveries d JOIN events e ON e.id = d.event_id WHERE d.endpoint_id = ",
                    );
                    q.push_bind(endpoint_id);
                    if let Some(cursor) = &page.cursor {
                        q.push(" AND d.id < ").push_bind(cursor);
                    }
                    q.push(" ORDER BY d.id DESC LIMIT ").push_bind(i64::from(size) + 1);
                    let rows = q.build().fetch_all(&self.pool).await?;
                    let items = rows.iter().map(delivery_from_row).collect::<Result<Vec<_>, _>>()?;
                    let mut page = paged(items, size, |d| &d.id);
                    if page.items.is_empty() {
                        return Ok(page);
                    }
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT delivery_id, attempt, at, status_code, error, duration_ms FROM webhook_attempts WHERE delivery_id IN (",
                    );
                    let mut ids = q.separated(", ");
                    for delivery in &page.items {
                        ids.push_bind(&delivery.id);
                    }
                    q.push(") ORDER BY delivery_id, attempt");
                    for row in q.build().fetch_all(&self.pool).await? {
                        let (delivery_id, attempt) = attempt_from_row(&row)?;
                        if let Some(delivery) = page.items.iter_mut().find(|d| d.id == delivery_id) {
                            delivery.attempts.push(attempt);
                        }
                    }
                    Ok(page)
                }
            }

            impl $store {
                /// The job's work on `[from, until)`: per-key and per-workspace
                /// rollups and the key windows, one statement each, in the database.
                async fn roll_up_minutes(tx: &mut sqlx::Transaction<'_, $db>, from: i64, until: i64) -> Result<u64, StoreError> {
                    let mut rows = 0;
                    // (table, what a row counts for, its key columns, grains):
                    // per key in hours and days, per workspace at every grain.
                    let rollups: [(&str, &str, &str, &[UsageGrain]); 2] = [
                        ("usage_rollups", "key_id, workspace_id", "key_id", &[UsageGrain::Hour, UsageGrain::Day]),
                        ("usage_workspace_rollups", "workspace_id", "workspace_id", &UsageGrain::ALL),
                    ];
                    for (table, owner, conflict, grains) in rollups {
                        for grain in grains {
                            let size = grain.seconds();
                            rows += sqlx::query(&$sql(&format!(
                                "INSERT INTO {table} ({owner}, grain, start, outcome, count) \
                                 SELECT {owner}, {size}, minute - minute % {size}, outcome, SUM(count) \
                                 FROM usage_minutes WHERE minute >= ? AND minute < ? \
                                 GROUP BY {owner}, minute - minute % {size}, outcome \
                                 ON CONFLICT ({conflict}, grain, start, outcome) DO UPDATE SET count = {table}.count + excluded.count"
                            )))
                            .bind(from)
                            .bind(until)
                            .execute(&mut **tx)
                            .await?
                            .rows_affected();
                        }
                    }
                    let days: Vec<i64> = sqlx::query_scalar(&$sql(
                        "SELECT DISTINCT minute - minute % 86400 FROM usage_minutes WHERE minute >= ? AND minute < ? ORDER BY 1",
                    ))
                    .bind(from)
                    .bind(until)
                    .fetch_all(&mut **tx)
                    .await?;
                    for day in days {
                        for window in TOP_KEY_WINDOWS {
                            rows += sqlx::query(&$sql(&format!(
                                "INSERT INTO usage_key_windows (key_id, workspace_id, days, since, requests, rejected) \
                                 SELECT key_id, workspace_id, {window}, {day}, SUM(count), \
                                        SUM(CASE WHEN outcome <> 'admitted' THEN count ELSE 0 END) \
                                 FROM usage_minutes WHERE minute >= ? AND minute < ? \
                                 GROUP BY key_id, workspace_id{KEY_WINDOW_UPSERT}"
                            )))
                            .bind(from.max(day))
                            .bind(until.min(day + 86_400))
                            .execute(&mut **tx)
                            .await?
                            .rows_affected();
                        }
                    }
                    sqlx::query(&$sql("UPDATE usage_rollup_progress SET rolled_until = ? WHERE id = 1"))
                        .bind(until)
                        .execute(&mut **tx)
                        .await?;
                    Ok(rows)
                }

                /// Moves every key window to start `days - 1` days before
                /// `today`, subtracting the days that leave it (from the day
                /// rollups, which hold exactly the rolled-up minutes).
                async fn roll_key_windows_forward(tx: &mut sqlx::Transaction<'_, $db>, today: i64) -> Result<u64, StoreError> {
                    let mut rows = 0;
                    for window in TOP_KEY_WINDOWS {
                        let start = today - (i64::from(window) - 1) * 86_400;
                        let leaving = |rejected: &str| {
                            format!(
                                "CAST(COALESCE((SELECT SUM(r.count) FROM usage_rollups r \
                                 WHERE r.key_id = usage_key_windows.key_id AND r.grain = 86400 \
                                 AND r.start >= usage_key_windows.since AND r.start < ?{rejected}), 0) AS BIGINT)"
                            )
                        };
                        let moved = sqlx::query(&$sql(&format!(
                            "UPDATE usage_key_windows SET requests = requests - {}, rejected = rejected - {}, since = ? \
                             WHERE days = ? AND since < ?",
                            leaving(""),
                            leaving(" AND r.outcome <> 'admitted'"),
                        )))
                        .bind(start)
                        .bind(start)
                        .bind(start)
                        .bind(i64::from(window))
                        .bind(start)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected();
                        if moved > 0 {
                            sqlx::query(&$sql("DELETE FROM usage_key_windows WHERE days = ? AND requests = 0 AND rejected = 0"))
                                .bind(i64::from(window))
                                .execute(&mut **tx)
                                .await?;
                        }
                        rows += moved;
                    }
                    Ok(rows)
                }

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

                async fn fetch_key(tx: &mut sqlx::Transaction<'_, $db>, id: &str) -> Result<ApiKey, StoreError> {
                    let row = sqlx::query(&$sql(&format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.id = ?")))
                        .bind(id)
                        .fetch_optional(&mut **tx)
                        .await?
                        .ok_or(StoreError::NotFound)?;
                    key_from_row(&row)
                }

                async fn insert_key_row(tx: &mut sqlx::Transaction<'_, $db>, key: &ApiKey) -> Result<(), StoreError> {
                    sqlx::query(&$sql("INSERT INTO api_keys (id, workspace_id, lineage_id, name, environment, key_hash, hint, scopes, \
                         ip_allowlist, expires_at, metadata, limits, created_at, created_by, rotated_from) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
                    .bind(&key.id)
                    .bind(&key.workspace_id)
                    .bind(&key.lineage_id)
                    .bind(&key.name)
                    .bind(&key.environment)
                    .bind(&key.hash.as_bytes()[..])
                    .bind(&key.hint)
                    .bind(to_json(&key.scopes)?)
                    .bind(to_json(&key.ip_allowlist.to_strings())?)
                    .bind(key.expires_at.map(ms))
                    .bind(to_json(&key.metadata)?)
                    .bind(to_json(&key.limits)?)
                    .bind(ms(key.created_at))
                    .bind(&key.created_by)
                    .bind(&key.rotated_from)
                    .execute(&mut **tx)
                    .await?;
                    Ok(())
                }
            }
        }
    };
}

pub(crate) use sql_store;
