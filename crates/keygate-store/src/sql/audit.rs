//! The audit log: every change, newest first.
//! Written once for both databases; `sql_store!` (crates/keygate-store/src/sql.rs) expands it.

/// `AuditStore` for `$store`, as `sql_store!` describes.
macro_rules! audit_sql {
    ($store:ident, $db:ty, $sql:path) => {
        #[async_trait::async_trait]
        impl $crate::AuditStore for $store {
            async fn list_audit_events(
                &self,
                filter: &AuditFilter,
                page: &Page,
            ) -> Result<Paged<AuditEvent>, StoreError> {
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

            async fn last_audit_event(&self, object_id: &str, action: &str) -> Result<Option<AuditEvent>, StoreError> {
                let row = sqlx::query(&$sql(
                    "SELECT id, at, actor, actor_ip, action, object_type, object_id, workspace_id, details \
                     FROM audit_events WHERE object_id = ? AND action = ? ORDER BY id DESC LIMIT 1",
                ))
                .bind(object_id)
                .bind(action)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(audit_from_row).transpose()
            }

            async fn record_audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
                let mut tx = self.pool.begin_with(self.begin_write()).await?;
                Self::insert_audit(&mut tx, event).await?;
                tx.commit().await?;
                Ok(())
            }
        }
    };
}

pub(crate) use audit_sql;
