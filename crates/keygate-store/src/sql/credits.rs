//! Credit balances' spending: one row per balance, the latest period's.
//! Written once for both databases; `sql_store!` (crates/keygate-store/src/sql.rs) expands it.

/// `CreditStore` for `$store`, as `sql_store!` describes.
macro_rules! credits_sql {
    ($store:ident, $db:ty, $sql:path) => {
        #[async_trait::async_trait]
        impl $crate::CreditStore for $store {
            async fn save_credit_spends(&self, spends: &[CreditSpend]) -> Result<(), StoreError> {
                let mut sorted: Vec<&CreditSpend> = spends.iter().collect();
                // One global order, so concurrent writers wait rather than deadlock.
                sorted.sort_by(|a, b| (&a.owner, &a.counter).cmp(&(&b.owner, &b.counter)));
                let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                for chunk in sorted.chunks(ROWS_PER_STATEMENT) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO credit_spend (owner, counter, period, spent, newest_ms) ",
                    );
                    q.push_values(chunk, |mut row, spend| {
                        row.push_bind(spend.owner.as_str())
                            .push_bind(spend.counter.as_str())
                            .push_bind(clamp(spend.period))
                            .push_bind(clamp(spend.spent))
                            .push_bind(clamp(spend.newest_ms));
                    });
                    q.push(
                        " ON CONFLICT (owner, counter) DO UPDATE SET period = excluded.period, \
                         spent = excluded.spent, newest_ms = excluded.newest_ms \
                         WHERE excluded.period > credit_spend.period \
                         OR (excluded.period = credit_spend.period AND excluded.spent > credit_spend.spent)",
                    );
                    q.build().execute(&self.pool).await?;
                }
                Ok(())
            }

            async fn credit_spend(&self, owner: &str, counter: &str) -> Result<Option<CreditSpend>, StoreError> {
                let row = sqlx::query(&$sql(
                    "SELECT owner, counter, period, spent, newest_ms FROM credit_spend WHERE owner = ? AND counter = ?",
                ))
                .bind(owner)
                .bind(counter)
                .fetch_optional(&self.pool)
                .await?;
                let unsigned = |n: i64| u64::try_from(n).unwrap_or(0);
                row.map(|row| {
                    Ok(CreditSpend {
                        owner: row.get_col("owner")?,
                        counter: row.get_col("counter")?,
                        period: unsigned(row.get_col("period")?),
                        spent: unsigned(row.get_col("spent")?),
                        newest_ms: unsigned(row.get_col("newest_ms")?),
                    })
                })
                .transpose()
            }
        }
    };
}

pub(crate) use credits_sql;
