//! The embedded default store: SQLite in WAL mode with `synchronous = FULL`,
//! so an acknowledged write survives a crash of the process (and of the machine).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use keygate_core::ip::IpAllowlist;
use keygate_core::model::{ApiKey, KeyStatus, Workspace};
use keygate_core::KeyHash;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool, Transaction};

use crate::{
    AuditEvent, AuditFilter, KeyFilter, Page, Paged, RevokeOutcome, Store, StoreError, UsageBatch, UsageCount,
};

const KEY_COLUMNS: &str = "k.id, k.workspace_id, k.lineage_id, k.name, k.environment, k.key_hash, k.hint, \
    k.scopes, k.ip_allowlist, k.expires_at, k.metadata, k.limits, k.created_at, k.created_by, k.last_used_at, \
    k.last_used_ip, k.revoked_at, k.revoked_reason, k.rotated_from, k.rotated_to, k.deleted_at";
const WORKSPACE_COLUMNS: &str = "w.id AS w_id, w.name AS w_name, w.plan AS w_plan, \
    w.ip_allowlist AS w_ip_allowlist, w.limits AS w_limits, w.disabled AS w_disabled, \
    w.created_at AS w_created_at, w.updated_at AS w_updated_at";

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating the file and its folder if needed) and migrates.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(parent) = options.get_filename().parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Closes every connection and checkpoints the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn from_ms(millis: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(millis).ok_or_else(|| StoreError::Corrupt(format!("timestamp {millis}")))
}

fn opt_from_ms(millis: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    millis.map(from_ms).transpose()
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, column: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn allowlist_from_json(text: &str, column: &str) -> Result<IpAllowlist, StoreError> {
    let entries: Vec<String> = from_json(text, column)?;
    IpAllowlist::parse(&entries).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

fn workspace_from_row(row: &SqliteRow) -> Result<Workspace, StoreError> {
    Ok(Workspace {
        id: row.try_get("w_id")?,
        name: row.try_get("w_name")?,
        plan: row.try_get("w_plan")?,
        ip_allowlist: allowlist_from_json(row.try_get("w_ip_allowlist")?, "workspaces.ip_allowlist")?,
        limits: from_json(row.try_get("w_limits")?, "workspaces.limits")?,
        disabled: row.try_get::<i64, _>("w_disabled")? != 0,
        created_at: from_ms(row.try_get("w_created_at")?)?,
        updated_at: from_ms(row.try_get("w_updated_at")?)?,
    })
}

fn key_from_row(row: &SqliteRow) -> Result<ApiKey, StoreError> {
    let hash: Vec<u8> = row.try_get("key_hash")?;
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Corrupt("api_keys.key_hash is not 32 bytes".into()))?;
    Ok(ApiKey {
        id: row.try_get("id")?,
        workspace_id: row.try_get("workspace_id")?,
        lineage_id: row.try_get("lineage_id")?,
        name: row.try_get("name")?,
        environment: row.try_get("environment")?,
        hash: KeyHash::from_bytes(hash),
        hint: row.try_get("hint")?,
        scopes: from_json(row.try_get("scopes")?, "api_keys.scopes")?,
        ip_allowlist: allowlist_from_json(row.try_get("ip_allowlist")?, "api_keys.ip_allowlist")?,
        expires_at: opt_from_ms(row.try_get("expires_at")?)?,
        metadata: from_json(row.try_get("metadata")?, "api_keys.metadata")?,
        limits: from_json(row.try_get("limits")?, "api_keys.limits")?,
        created_at: from_ms(row.try_get("created_at")?)?,
        created_by: row.try_get("created_by")?,
        last_used_at: opt_from_ms(row.try_get("last_used_at")?)?,
        last_used_ip: row.try_get("last_used_ip")?,
        revoked_at: opt_from_ms(row.try_get("revoked_at")?)?,
        revoked_reason: row.try_get("revoked_reason")?,
        rotated_from: row.try_get("rotated_from")?,
        rotated_to: row.try_get("rotated_to")?,
        deleted_at: opt_from_ms(row.try_get("deleted_at")?)?,
    })
}

fn audit_from_row(row: &SqliteRow) -> Result<AuditEvent, StoreError> {
    Ok(AuditEvent {
        id: row.try_get("id")?,
        at: from_ms(row.try_get("at")?)?,
        actor: row.try_get("actor")?,
        actor_ip: row.try_get("actor_ip")?,
        action: row.try_get("action")?,
        object_type: row.try_get("object_type")?,
        object_id: row.try_get("object_id")?,
        workspace_id: row.try_get("workspace_id")?,
        details: from_json(row.try_get("details")?, "audit_events.details")?,
    })
}

/// Turns `size + 1` fetched rows into a page and the cursor of the next one.
fn paged<T>(mut items: Vec<T>, size: u32, id_of: impl Fn(&T) -> &str) -> Paged<T> {
    let has_more = items.len() > size as usize;
    items.truncate(size as usize);
    let next_cursor = if has_more {
        items.last().map(|item| id_of(item).to_owned())
    } else {
        None
    };
    Paged { items, next_cursor }
}

async fn insert_audit(tx: &mut Transaction<'_, Sqlite>, event: &AuditEvent) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_events (id, at, actor, actor_ip, action, object_type, object_id, workspace_id, details) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
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
    Ok(())
}

async fn fetch_key(tx: &mut Transaction<'_, Sqlite>, id: &str) -> Result<ApiKey, StoreError> {
    let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.id = ?"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::NotFound)?;
    key_from_row(&row)
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO workspaces (id, name, plan, ip_allowlist, limits, disabled, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
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
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_workspace(&self, id: &str) -> Result<Option<Workspace>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {WORKSPACE_COLUMNS} FROM workspaces w WHERE w.id = ? AND w.deleted_at IS NULL"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(workspace_from_row).transpose()
    }

    async fn list_workspaces(&self, page: &Page) -> Result<Paged<Workspace>, StoreError> {
        let size = page.size();
        let mut q = QueryBuilder::<Sqlite>::new(format!(
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE workspaces SET name = ?, plan = ?, ip_allowlist = ?, limits = ?, disabled = ?, updated_at = ? \
             WHERE id = ? AND deleted_at IS NULL",
        )
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
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_workspace(&self, id: &str, at: DateTime<Utc>, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE workspaces SET deleted_at = ?, disabled = 1, updated_at = ? WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(ms(at))
        .bind(ms(at))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        sqlx::query(
            "UPDATE api_keys SET revoked_at = ?, revoked_reason = 'workspace deleted' \
             WHERE workspace_id = ? AND revoked_at IS NULL",
        )
        .bind(ms(at))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_key(&self, key: &ApiKey, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_key_row(&mut tx, key).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn find_key_by_hash(&self, hash: &KeyHash) -> Result<Option<(ApiKey, Workspace)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS}, {WORKSPACE_COLUMNS} FROM api_keys k \
             JOIN workspaces w ON w.id = k.workspace_id WHERE k.key_hash = ?"
        ))
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
            QueryBuilder::<Sqlite>::new(format!("SELECT {KEY_COLUMNS} FROM api_keys k WHERE k.workspace_id = "));
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
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE workspace_id = ?")
            .bind(workspace_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(count.unsigned_abs())
    }

    async fn update_key(&self, key: &ApiKey, audit: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET name = ?, scopes = ?, ip_allowlist = ?, expires_at = ?, metadata = ?, limits = ? \
             WHERE id = ? AND deleted_at IS NULL",
        )
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
        insert_audit(&mut tx, audit).await?;
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
        let mut tx = self.pool.begin().await?;
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = ?, revoked_reason = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(ms(at))
                .bind(reason)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        let key = fetch_key(&mut tx, id).await?;
        if done.rows_affected() == 0 {
            return Ok(RevokeOutcome::AlreadyRevoked(key));
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(RevokeOutcome::Revoked(key))
    }

    async fn delete_key(&self, id: &str, at: DateTime<Utc>, audit: &AuditEvent) -> Result<ApiKey, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET deleted_at = ?, revoked_at = COALESCE(revoked_at, ?), \
             revoked_reason = CASE WHEN revoked_at IS NULL THEN 'deleted' ELSE revoked_reason END \
             WHERE id = ? AND deleted_at IS NULL",
        )
        .bind(ms(at))
        .bind(ms(at))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let key = fetch_key(&mut tx, id).await?;
        if done.rows_affected() > 0 {
            insert_audit(&mut tx, audit).await?;
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET rotated_to = ?, \
             expires_at = CASE WHEN expires_at IS NULL OR expires_at > ? THEN ? ELSE expires_at END \
             WHERE id = ? AND rotated_to IS NULL AND revoked_at IS NULL AND deleted_at IS NULL",
        )
        .bind(&new.id)
        .bind(ms(old_expires_at))
        .bind(ms(old_expires_at))
        .bind(old_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            fetch_key(&mut tx, old_id).await?;
            return Err(StoreError::Conflict("the key is revoked or was already rotated".into()));
        }
        insert_key_row(&mut tx, new).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn list_audit_events(&self, filter: &AuditFilter, page: &Page) -> Result<Paged<AuditEvent>, StoreError> {
        let size = page.size();
        let mut q = QueryBuilder::<Sqlite>::new(
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
        let mut tx = self.pool.begin().await?;
        for row in &batch.counts {
            sqlx::query(
                "INSERT INTO usage_minutes (key_id, workspace_id, minute, outcome, count) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (key_id, minute, outcome) DO UPDATE SET count = count + excluded.count",
            )
            .bind(&row.key_id)
            .bind(&row.workspace_id)
            .bind(row.minute)
            .bind(&row.outcome)
            .bind(i64::try_from(row.count).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        }
        for used in &batch.last_uses {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = ?, last_used_ip = ? \
                 WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
            )
            .bind(ms(used.at))
            .bind(&used.ip)
            .bind(&used.key_id)
            .bind(ms(used.at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn key_usage(
        &self,
        key_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, workspace_id, minute, outcome, count FROM usage_minutes \
             WHERE key_id = ? AND minute >= ? AND minute < ? ORDER BY minute, outcome",
        )
        .bind(key_id)
        .bind(from.timestamp())
        .bind(to.timestamp())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(UsageCount {
                    key_id: row.try_get("key_id")?,
                    workspace_id: row.try_get("workspace_id")?,
                    minute: row.try_get("minute")?,
                    outcome: row.try_get("outcome")?,
                    count: row.try_get::<i64, _>("count")?.unsigned_abs(),
                })
            })
            .collect()
    }
}

async fn insert_key_row(tx: &mut Transaction<'_, Sqlite>, key: &ApiKey) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO api_keys (id, workspace_id, lineage_id, name, environment, key_hash, hint, scopes, \
         ip_allowlist, expires_at, metadata, limits, created_at, created_by, rotated_from) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
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
