//! API keys: created, looked up by hash, listed, changed, revoked, deleted and rotated.
//! Written once for both databases; `sql_store!` (crates/keygate-store/src/sql.rs) expands it.

/// `KeyStore` for `$store`, as `sql_store!` describes.
macro_rules! keys_sql {
    ($store:ident, $db:ty, $sql:path) => {
        #[async_trait::async_trait]
        impl $crate::KeyStore for $store {
        async fn insert_key(&self, key: &ApiKey, audit: &AuditEvent) -> Result<(), StoreError> {
            let mut tx = self.pool.begin_with(self.begin_write()).await?;
            Self::insert_key_row(&mut tx, key).await?;
            Self::insert_audit(&mut tx, audit).await?;
            tx.commit().await?;
            Ok(())
        }

        async fn stored_key_hashes(&self, hashes: &[KeyHash]) -> Result<Vec<(KeyHash, String)>, StoreError> {
            let mut found = Vec::new();
            for chunk in hashes.chunks(IMPORT_ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT key_hash, workspace_id FROM api_keys WHERE key_hash IN (");
                let mut list = q.separated(", ");
                for hash in chunk {
                    list.push_bind(&hash.as_bytes()[..]);
                }
                q.push(")");
                for row in q.build().fetch_all(&self.pool).await? {
                    found.push((hash_from_row(&row)?, row.get_col("workspace_id")?));
                }
            }
            Ok(found)
        }

        async fn import_keys(&self, keys: &[ApiKey], audit: &AuditEvent) -> Result<u64, StoreError> {
            let mut tx = self.pool.begin_with(self.begin_write()).await?;
            let mut inserted = 0;
            for chunk in keys.chunks(IMPORT_ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO api_keys (id, workspace_id, lineage_id, name, environment, key_hash, hint, scopes, \
                     roles, ip_allowlist, expires_at, metadata, limits, credits, credits_set_at, created_at, created_by, \
                     rotated_from, legacy) ",
                );
                let mut encoded = Vec::with_capacity(chunk.len());
                for key in chunk {
                    encoded.push((
                        to_json(&key.scopes)?,
                        to_json(&key.roles)?,
                        to_json(&key.ip_allowlist.to_strings())?,
                        to_json(&key.metadata)?,
                        to_json(&key.limits)?,
                        opt_to_json(key.credits.as_ref())?,
                    ));
                }
                q.push_values(chunk.iter().zip(&encoded), |mut row, (key, json)| {
                    row.push_bind(key.id.as_str())
                        .push_bind(key.workspace_id.as_str())
                        .push_bind(key.lineage_id.as_str())
                        .push_bind(key.name.as_str())
                        .push_bind(key.environment.as_str())
                        .push_bind(&key.hash.as_bytes()[..])
                        .push_bind(key.hint.as_str())
                        .push_bind(json.0.as_str())
                        .push_bind(json.1.as_str())
                        .push_bind(json.2.as_str())
                        .push_bind(key.expires_at.map(ms))
                        .push_bind(json.3.as_str())
                        .push_bind(json.4.as_str())
                        .push_bind(json.5.as_deref())
                        .push_bind(key.credits_set_at.map(ms))
                        .push_bind(ms(key.created_at))
                        .push_bind(key.created_by.as_deref())
                        .push_bind(key.rotated_from.as_deref())
                        .push_bind(i64::from(key.legacy));
                });
                // A concurrent import of the same key: the first one keeps it.
                q.push(" ON CONFLICT (key_hash) DO NOTHING");
                inserted += q.build().execute(&mut *tx).await?.rows_affected();
            }
            if inserted > 0 {
                Self::insert_audit(&mut tx, audit).await?;
            }
            tx.commit().await?;
            Ok(inserted)
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

        async fn find_keys_by_hashes(&self, hashes: &[KeyHash]) -> Result<Vec<(ApiKey, Workspace)>, StoreError> {
            let mut found = Vec::with_capacity(hashes.len());
            for chunk in hashes.chunks(ROWS_PER_STATEMENT) {
                let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {KEY_COLUMNS}, {WORKSPACE_COLUMNS} FROM api_keys k \
                     JOIN workspaces w ON w.id = k.workspace_id WHERE k.key_hash IN ("
                ));
                let mut list = q.separated(", ");
                for hash in chunk {
                    list.push_bind(&hash.as_bytes()[..]);
                }
                q.push(")");
                for row in q.build().fetch_all(&self.pool).await? {
                    found.push((key_from_row(&row)?, workspace_from_row(&row)?));
                }
            }
            Ok(found)
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
            if filter.leaked {
                q.push(" AND EXISTS (SELECT 1 FROM audit_events a WHERE a.object_id = k.id AND a.action = 'key.leaked')");
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
            let done = sqlx::query(&$sql("UPDATE api_keys SET name = ?, scopes = ?, roles = ?, ip_allowlist = ?, expires_at = ?, metadata = ?, limits = ?, \
                 credits = ?, credits_set_at = ? WHERE id = ? AND deleted_at IS NULL"))
            .bind(&key.name)
            .bind(to_json(&key.scopes)?)
            .bind(to_json(&key.roles)?)
            .bind(to_json(&key.ip_allowlist.to_strings())?)
            .bind(key.expires_at.map(ms))
            .bind(to_json(&key.metadata)?)
            .bind(to_json(&key.limits)?)
            .bind(opt_to_json(key.credits.as_ref())?)
            .bind(key.credits_set_at.map(ms))
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
            // A revoked key may be rotated too (its replacement after a leak):
            // it stays revoked, and its expiry is left as it is.
            let done = sqlx::query(&$sql("UPDATE api_keys SET rotated_to = ?, \
                 expires_at = CASE WHEN revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?) THEN ? ELSE expires_at END \
                 WHERE id = ? AND rotated_to IS NULL AND deleted_at IS NULL"))
            .bind(&new.id)
            .bind(ms(old_expires_at))
            .bind(ms(old_expires_at))
            .bind(old_id)
            .execute(&mut *tx)
            .await?;
            let old = Self::fetch_key(&mut tx, old_id).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict("the key was already rotated".into()));
            }
            Self::insert_key_row(&mut tx, new).await?;
            Self::insert_audit(&mut tx, audit).await?;
            self.announce(&mut tx, &Change::Key(old.hash)).await?;
            tx.commit().await?;
            Ok(())
        }
        }

        impl $store {
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
                 roles, ip_allowlist, expires_at, metadata, limits, credits, credits_set_at, created_at, created_by, rotated_from, legacy) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(&key.id)
            .bind(&key.workspace_id)
            .bind(&key.lineage_id)
            .bind(&key.name)
            .bind(&key.environment)
            .bind(&key.hash.as_bytes()[..])
            .bind(&key.hint)
            .bind(to_json(&key.scopes)?)
            .bind(to_json(&key.roles)?)
            .bind(to_json(&key.ip_allowlist.to_strings())?)
            .bind(key.expires_at.map(ms))
            .bind(to_json(&key.metadata)?)
            .bind(to_json(&key.limits)?)
            .bind(opt_to_json(key.credits.as_ref())?)
            .bind(key.credits_set_at.map(ms))
            .bind(ms(key.created_at))
            .bind(&key.created_by)
            .bind(&key.rotated_from)
            .bind(i64::from(key.legacy))
            .execute(&mut **tx)
            .await?;
            Ok(())
        }
        }
    };
}

pub(crate) use keys_sql;
