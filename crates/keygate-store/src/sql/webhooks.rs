//! Webhook endpoints and deliveries: fan-out, leases, attempts.
//! Written once for both databases; `sql_store!` (crates/keygate-store/src/sql.rs) expands it.

/// `WebhookStore` for `$store`, as `sql_store!` describes.
macro_rules! webhooks_sql {
    ($store:ident, $db:ty, $sql:path) => {
        #[async_trait::async_trait]
        impl $crate::WebhookStore for $store {
        async fn insert_webhook(&self, endpoint: &WebhookEndpoint, audit: &AuditEvent) -> Result<(), StoreError> {
            let mut tx = self.pool.begin_with(self.begin_write()).await?;
            sqlx::query(&$sql("INSERT INTO webhook_endpoints (id, workspace_id, url, secret, events, description, created_at, created_by) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)"))
            .bind(&endpoint.id)
            .bind(&endpoint.workspace_id)
            .bind(&endpoint.url)
            .bind(endpoint.secret.as_str())
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

        async fn webhook_secrets(&self) -> Result<Vec<(String, StoredSecret)>, StoreError> {
            let rows = sqlx::query(&$sql("SELECT id, secret FROM webhook_endpoints ORDER BY id"))
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|row| Ok((row.get_col("id")?, StoredSecret::new(row.text("secret")?))))
                .collect()
        }

        async fn replace_webhook_secret(&self, id: &str, old: &StoredSecret, new: &StoredSecret) -> Result<bool, StoreError> {
            let done = sqlx::query(&$sql("UPDATE webhook_endpoints SET secret = ? WHERE id = ? AND secret = ?"))
                .bind(new.as_str())
                .bind(id)
                .bind(old.as_str())
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected() == 1)
        }
        }
    };
}

pub(crate) use webhooks_sql;
