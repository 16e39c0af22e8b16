//! The event outbox: events inserted once, listed, and the keys due for lifecycle events.
//! Written once for both databases; `sql_store!` (crates/keygate-store/src/sql.rs) expands it.

/// `EventStore` for `$store`, as `sql_store!` describes.
macro_rules! events_sql {
    ($store:ident, $db:ty, $sql:path) => {
        #[async_trait::async_trait]
        impl $crate::EventStore for $store {
            async fn insert_events(&self, events: &[NewEvent]) -> Result<u64, StoreError> {
                let mut tx = self.pool.begin_with(self.begin_write()).await?;
                let mut added = 0;
                for event in events {
                    added += Self::insert_event(&mut tx, event).await?;
                }
                tx.commit().await?;
                Ok(added)
            }

            async fn list_events(
                &self,
                filter: &EventListFilter,
                page: &Page,
            ) -> Result<Paged<StoredEvent>, StoreError> {
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
                            q.push(" AND k.expires_at IS NOT NULL AND k.expires_at > ")
                                .push_bind(ms(scan.now));
                            q.push(" AND k.expires_at <= ")
                                .push_bind(ms(scan.expiring_before));
                            q.push(" ORDER BY k.expires_at");
                        }
                        EventType::KeyExpired => {
                            q.push(" AND k.expires_at IS NOT NULL AND k.expires_at > ")
                                .push_bind(ms(scan.expired_since));
                            q.push(" AND k.expires_at <= ").push_bind(ms(scan.now));
                            q.push(" ORDER BY k.expires_at");
                        }
                        _ => {
                            let Some(created_before) = scan.created_before else {
                                continue;
                            };
                            q.push(" AND k.created_at < ").push_bind(ms(created_before));
                            q.push(" AND (k.expires_at IS NULL OR k.expires_at > ")
                                .push_bind(ms(scan.now))
                                .push(")");
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
        }
    };
}

pub(crate) use events_sql;
