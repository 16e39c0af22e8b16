//! Usage: per-minute counts, roll-ups to hours and days, reads at every grain, top keys, pruning.
//! Written once for both databases; `sql_store!` (crates/keygate-store/src/sql.rs) expands it.

/// `UsageStore` for `$store`, as `sql_store!` describes.
macro_rules! usage_sql {
    ($store:ident, $db:ty, $sql:path) => {
        #[async_trait::async_trait]
        impl $crate::UsageStore for $store {
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
            // Many rows per statement, but not too many: a flush of 10,000
            // keys is a few hundred short statements, not 40,000 round
            // trips, nor a few long ones (`ROWS_PER_STATEMENT`).
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
                    if day < $crate::window_first_day(rolled_today, days) {
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
                // `<=`: a use at the same millisecond as the stored one comes
                // from a later batch (a node writes its batches in order), so
                // it is the later use and its address wins.
                q.push(") UPDATE api_keys SET last_used_at = used.at, last_used_ip = used.ip FROM used \
                     WHERE api_keys.id = used.id AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at <= used.at)");
                q.build().execute(&mut *tx).await?;
            }
            for event in &batch.events {
                Self::insert_event(&mut tx, event).await?;
            }
            tx.commit().await?;
            Ok(())
        }

        async fn keys_usage(
            &self,
            key_ids: &[String],
            grain: UsageGrain,
            from: DateTime<Utc>,
            to: DateTime<Utc>,
        ) -> Result<Vec<UsageCount>, StoreError> {
            if key_ids.is_empty() {
                return Ok(Vec::new());
            }
            let size = grain.seconds();
            let to = seconds_rounded_up(to);
            let in_keys = |q: &mut sqlx::QueryBuilder<'_, $db>| {
                let mut ids = q.separated(", ");
                for id in key_ids {
                    ids.push_bind(id.clone());
                }
                ids.push_unseparated(")");
            };
            let mut q = sqlx::QueryBuilder::<$db>::new("");
            match grain {
                UsageGrain::Minute => {
                    q.push("SELECT key_id, workspace_id, minute, outcome, count FROM usage_minutes WHERE key_id IN (");
                    in_keys(&mut q);
                    q.push(" AND minute >= ").push_bind(from.timestamp()).push(" AND minute < ").push_bind(to);
                }
                // The rollups, and the minutes not rolled up yet, in one
                // statement: one snapshot, so a job committing meanwhile
                // is seen in neither or in both.
                UsageGrain::Hour | UsageGrain::Day => {
                    q.push("SELECT key_id, workspace_id, start AS minute, outcome, count FROM usage_rollups WHERE grain = ")
                        .push_bind(size)
                        .push(" AND key_id IN (");
                    in_keys(&mut q);
                    q.push(" AND start >= ").push_bind(from.timestamp()).push(" AND start < ").push_bind(to);
                    q.push(format!(
                        " UNION ALL SELECT key_id, workspace_id, minute - minute % {size} AS minute, outcome, count \
                         FROM usage_minutes WHERE key_id IN ("
                    ));
                    in_keys(&mut q);
                    q.push(" AND minute >= (SELECT rolled_until FROM usage_rollup_progress WHERE id = 1) AND minute >= ")
                        .push_bind(from.timestamp())
                        .push(format!(" AND minute - minute % {size} < "))
                        .push_bind(to);
                }
            }
            let rows = q.build().fetch_all(&self.pool).await?;
            let mut summed: std::collections::BTreeMap<(i64, String, String), UsageCount> =
                std::collections::BTreeMap::new();
            for row in &rows {
                let count = UsageCount {
                    key_id: row.try_get("key_id")?,
                    workspace_id: row.try_get("workspace_id")?,
                    minute: row.try_get("minute")?,
                    outcome: row.try_get("outcome")?,
                    count: row.try_get::<i64, _>("count")?.unsigned_abs(),
                };
                summed
                    .entry((count.minute, count.key_id.clone(), count.outcome.clone()))
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
            // statement (one snapshot). The latter are the minutes since
            // the last roll-up (`usage.rollup_every`, ten by default),
            // found by the minute index.
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
            let today = UsageGrain::Day.bucket_of(until);
            if let Some(refresh) = self.before_windows_move() {
                if Self::windows_leave_a_day(&mut tx, today).await? {
                    sqlx::query(refresh).execute(&mut *tx).await?;
                }
            }
            rows += Self::roll_key_windows_forward(&mut tx, today).await?;
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
            let window_start = $crate::window_first_day(today, days);
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

        /// Whether any key window starts before its first day as of
        /// `today`: once a day, when the windows move.
        async fn windows_leave_a_day(tx: &mut sqlx::Transaction<'_, $db>, today: i64) -> Result<bool, StoreError> {
            for window in TOP_KEY_WINDOWS {
                let start = $crate::window_first_day(today, window);
                let due: i64 = sqlx::query_scalar(&$sql(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM usage_key_windows WHERE days = ? AND since < ? LIMIT 1) AS due",
                ))
                .bind(i64::from(window))
                .bind(start)
                .fetch_one(&mut **tx)
                .await?;
                if due > 0 {
                    return Ok(true);
                }
            }
            Ok(false)
        }

        /// Moves every key window to start `days - 1` days before
        /// `today`, subtracting the days that leave it (from the day
        /// rollups, which hold exactly the rolled-up minutes).
        async fn roll_key_windows_forward(tx: &mut sqlx::Transaction<'_, $db>, today: i64) -> Result<u64, StoreError> {
            let mut rows = 0;
            for window in TOP_KEY_WINDOWS {
                let start = $crate::window_first_day(today, window);
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
        }
    };
}

pub(crate) use usage_sql;
