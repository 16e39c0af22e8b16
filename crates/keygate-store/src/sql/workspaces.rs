//! Workspaces: created, read, listed, changed and deleted (their keys revoked with them).
//! Written once for both databases; `sql_store!` (crates/keygate-store/src/sql.rs) expands it.

/// `WorkspaceStore` for `$store`, as `sql_store!` describes.
macro_rules! workspaces_sql {
    ($store:ident, $db:ty, $sql:path) => {
        #[async_trait::async_trait]
        impl $crate::WorkspaceStore for $store {
        async fn insert_workspace(&self, ws: &Workspace, audit: &AuditEvent) -> Result<(), StoreError> {
            let mut tx = self.pool.begin_with(self.begin_write()).await?;
            sqlx::query(&$sql("INSERT INTO workspaces (id, name, plan, ip_allowlist, limits, credits, disabled, leak_policy, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(&ws.id)
            .bind(&ws.name)
            .bind(&ws.plan)
            .bind(to_json(&ws.ip_allowlist.to_strings())?)
            .bind(to_json(&ws.limits)?)
            .bind(opt_to_json(ws.credits.as_ref())?)
            .bind(i64::from(ws.disabled))
            .bind(ws.leak_policy.map(OnLeak::as_str))
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
            let done = sqlx::query(&$sql("UPDATE workspaces SET name = ?, plan = ?, ip_allowlist = ?, limits = ?, credits = ?, disabled = ?, \
                 leak_policy = ?, updated_at = ? WHERE id = ? AND deleted_at IS NULL"))
            .bind(&ws.name)
            .bind(&ws.plan)
            .bind(to_json(&ws.ip_allowlist.to_strings())?)
            .bind(to_json(&ws.limits)?)
            .bind(opt_to_json(ws.credits.as_ref())?)
            .bind(i64::from(ws.disabled))
            .bind(ws.leak_policy.map(OnLeak::as_str))
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
        }
    };
}

pub(crate) use workspaces_sql;
