//! Dashboard sessions, their reveal-once secrets and portal links.
//! Written once for both databases; `sql_store!` (crates/keygate-store/src/sql.rs) expands it.

/// `SessionStore` for `$store`, as `sql_store!` describes.
macro_rules! sessions_sql {
    ($store:ident, $db:ty, $sql:path) => {
        #[async_trait::async_trait]
        impl $crate::SessionStore for $store {
            async fn insert_session(&self, secret_hash: &str, session: &SessionRecord) -> Result<(), StoreError> {
                sqlx::query(&$sql(
                    "INSERT INTO dashboard_sessions (secret_hash, id, actor_id, workspace_id, environment, \
                     signed_in_with, created_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ))
                .bind(secret_hash)
                .bind(&session.id)
                .bind(&session.actor_id)
                .bind(&session.workspace_id)
                .bind(&session.environment)
                .bind(&session.signed_in_with)
                .bind(ms(session.created_at))
                .bind(ms(session.last_seen_at))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn session(&self, secret_hash: &str) -> Result<Option<SessionRecord>, StoreError> {
                let row = sqlx::query(&$sql(
                    "SELECT id, actor_id, workspace_id, environment, signed_in_with, created_at, last_seen_at \
                     FROM dashboard_sessions WHERE secret_hash = ?",
                ))
                .bind(secret_hash)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|row| {
                    Ok(SessionRecord {
                        id: row.get_col("id")?,
                        actor_id: row.get_col("actor_id")?,
                        workspace_id: row.get_col("workspace_id")?,
                        environment: row.get_col("environment")?,
                        signed_in_with: row.get_col("signed_in_with")?,
                        created_at: from_ms(row.get_col("created_at")?)?,
                        last_seen_at: from_ms(row.get_col("last_seen_at")?)?,
                    })
                })
                .transpose()
            }

            async fn touch_session(&self, secret_hash: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
                sqlx::query(&$sql(
                    "UPDATE dashboard_sessions SET last_seen_at = ? WHERE secret_hash = ? AND last_seen_at < ?",
                ))
                .bind(ms(at))
                .bind(secret_hash)
                .bind(ms(at))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn delete_session(&self, secret_hash: &str) -> Result<(), StoreError> {
                let mut tx = self.pool.begin_with(self.begin_write()).await?;
                sqlx::query(&$sql("DELETE FROM session_reveals WHERE secret_hash = ?"))
                    .bind(secret_hash)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&$sql("DELETE FROM dashboard_sessions WHERE secret_hash = ?"))
                    .bind(secret_hash)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn prune_sessions(
                &self,
                idle_before: DateTime<Utc>,
                opened_before: DateTime<Utc>,
                now: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin_with(self.begin_write()).await?;
                sqlx::query(&$sql(
                    "DELETE FROM dashboard_sessions WHERE last_seen_at < ? OR created_at < ?",
                ))
                .bind(ms(idle_before))
                .bind(ms(opened_before))
                .execute(&mut *tx)
                .await?;
                sqlx::query(&$sql(
                    "DELETE FROM session_reveals WHERE secret_hash NOT IN (SELECT secret_hash FROM dashboard_sessions)",
                ))
                .execute(&mut *tx)
                .await?;
                sqlx::query(&$sql("DELETE FROM portal_links WHERE expires_at <= ?"))
                    .bind(ms(now))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn hold_reveal(
                &self,
                secret_hash: &str,
                object_id: &str,
                sealed: &StoredSecret,
            ) -> Result<(), StoreError> {
                sqlx::query(&$sql(
                    "INSERT INTO session_reveals (secret_hash, object_id, sealed) VALUES (?, ?, ?) \
                     ON CONFLICT (secret_hash, object_id) DO UPDATE SET sealed = excluded.sealed",
                ))
                .bind(secret_hash)
                .bind(object_id)
                .bind(sealed.as_str())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn take_reveal(
                &self,
                secret_hash: &str,
                object_id: &str,
            ) -> Result<Option<StoredSecret>, StoreError> {
                let row = sqlx::query(&$sql(
                    "DELETE FROM session_reveals WHERE secret_hash = ? AND object_id = ? RETURNING sealed",
                ))
                .bind(secret_hash)
                .bind(object_id)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|row| Ok(StoredSecret::new(row.get_col("sealed")?)))
                    .transpose()
            }

            async fn insert_portal_link(
                &self,
                token_hash: &str,
                workspace_id: &str,
                expires_at: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                sqlx::query(&$sql(
                    "INSERT INTO portal_links (token_hash, workspace_id, expires_at) VALUES (?, ?, ?)",
                ))
                .bind(token_hash)
                .bind(workspace_id)
                .bind(ms(expires_at))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn redeem_portal_link(
                &self,
                token_hash: &str,
            ) -> Result<Option<(String, DateTime<Utc>)>, StoreError> {
                let row = sqlx::query(&$sql(
                    "DELETE FROM portal_links WHERE token_hash = ? RETURNING workspace_id, expires_at",
                ))
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|row| Ok((row.get_col("workspace_id")?, from_ms(row.get_col("expires_at")?)?)))
                    .transpose()
            }
        }
    };
}

pub(crate) use sessions_sql;
