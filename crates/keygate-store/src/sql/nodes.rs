//! The nodes of a deployment and their receipts' confirmations.
//! Written once for both databases; `sql_store!` (crates/keygate-store/src/sql.rs) expands it.

/// `NodeStore` for `$store`, as `sql_store!` describes.
macro_rules! nodes_sql {
    ($store:ident, $db:ty, $sql:path) => {
        #[async_trait::async_trait]
        impl $crate::NodeStore for $store {
            async fn record_heartbeat(&self, node: &NodeRecord) -> Result<(), StoreError> {
                sqlx::query(&$sql(
                    "INSERT INTO nodes (id, version, gateway_addr, admin_addr, started_at, last_heartbeat, hearing, cache_size) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET \
                     last_heartbeat = excluded.last_heartbeat, hearing = excluded.hearing, cache_size = excluded.cache_size",
                ))
                .bind(&node.id)
                .bind(&node.version)
                .bind(&node.gateway_addr)
                .bind(&node.admin_addr)
                .bind(ms(node.started_at))
                .bind(ms(node.last_heartbeat))
                .bind(&node.hearing)
                .bind(i64::try_from(node.cache_size).unwrap_or(i64::MAX))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn nodes_seen_since(&self, since: DateTime<Utc>) -> Result<Vec<NodeRecord>, StoreError> {
                let rows = sqlx::query(&$sql(
                    "SELECT id, version, gateway_addr, admin_addr, started_at, last_heartbeat, hearing, cache_size \
                     FROM nodes WHERE last_heartbeat >= ? ORDER BY started_at, id",
                ))
                .bind(ms(since))
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(NodeRecord {
                            id: row.get_col("id")?,
                            version: row.get_col("version")?,
                            gateway_addr: row.get_col("gateway_addr")?,
                            admin_addr: row.get_col("admin_addr")?,
                            started_at: from_ms(row.get_col("started_at")?)?,
                            last_heartbeat: from_ms(row.get_col("last_heartbeat")?)?,
                            hearing: row.get_col("hearing")?,
                            cache_size: u64::try_from(row.get_col::<i64>("cache_size")?).unwrap_or(0),
                        })
                    })
                    .collect()
            }

            async fn remove_node(&self, id: &str) -> Result<(), StoreError> {
                sqlx::query(&$sql("DELETE FROM nodes WHERE id = ?"))
                    .bind(id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn announce_receipt(&self, receipt_id: &str) -> Result<bool, StoreError> {
                let Some((statement, channel)) = self.announcement() else {
                    return Ok(false);
                };
                // One statement, so its own transaction: it commits after
                // every change already acknowledged.
                sqlx::query(&$sql(statement))
                    .bind(channel)
                    .bind(Change::Receipt(receipt_id.to_owned()).encode())
                    .execute(&self.pool)
                    .await?;
                Ok(true)
            }

            async fn confirm_receipt(&self, receipt_id: &str, node_id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
                sqlx::query(&$sql(
                    "INSERT INTO receipt_confirmations (receipt_id, node_id, confirmed_at) VALUES (?, ?, ?) \
                     ON CONFLICT DO NOTHING",
                ))
                .bind(receipt_id)
                .bind(node_id)
                .bind(ms(at))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn receipt_confirmations(&self, receipt_id: &str) -> Result<Vec<Confirmation>, StoreError> {
                let rows = sqlx::query(&$sql(
                    "SELECT node_id, confirmed_at FROM receipt_confirmations WHERE receipt_id = ? ORDER BY confirmed_at, node_id",
                ))
                .bind(receipt_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(Confirmation {
                            node_id: row.get_col("node_id")?,
                            at: from_ms(row.get_col("confirmed_at")?)?,
                        })
                    })
                    .collect()
            }

            async fn prune_nodes(&self, before: DateTime<Utc>) -> Result<(), StoreError> {
                sqlx::query(&$sql("DELETE FROM nodes WHERE last_heartbeat < ?"))
                    .bind(ms(before))
                    .execute(&self.pool)
                    .await?;
                sqlx::query(&$sql("DELETE FROM receipt_confirmations WHERE confirmed_at < ?"))
                    .bind(ms(before))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }
        }
    };
}

pub(crate) use nodes_sql;
