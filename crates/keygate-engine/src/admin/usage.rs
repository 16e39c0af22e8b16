//! Usage reports of the admin API: one key's, one workspace's, and the
//! workspace's top keys, each checked against what the caller may see.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use keygate_core::model::ApiKey;
use keygate_store::{UsageCount, UsageGrain};

use super::{Actor, Admin};
use crate::AdminError;

/// Longest usage range one call may ask for, per minute or per hour.
pub const MAX_USAGE_RANGE_DAYS: i64 = 31;
/// Longest usage range one call may ask for, per day.
pub const MAX_DAILY_USAGE_RANGE_DAYS: i64 = 366;

/// Buckets of a usage series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "minute" => Some(Self::Minute),
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            _ => None,
        }
    }

    /// The stored counts this granularity is read from.
    fn grain(self) -> UsageGrain {
        match self {
            Self::Minute => UsageGrain::Minute,
            Self::Hour => UsageGrain::Hour,
            Self::Day => UsageGrain::Day,
        }
    }

    fn max_range_days(self) -> i64 {
        match self {
            Self::Minute | Self::Hour => MAX_USAGE_RANGE_DAYS,
            Self::Day => MAX_DAILY_USAGE_RANGE_DAYS,
        }
    }
}

/// Requests in one bucket, by outcome (`admitted` or an error code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBucket {
    pub start: DateTime<Utc>,
    pub outcomes: BTreeMap<String, u64>,
}

/// One key's requests (every outcome) in each of the last 24 hours, oldest
/// first; the last is the hour `now` is in, so far.
pub type HourlyRequests = [u64; 24];

/// Sums `rows` (hourly buckets) into each key's last 24 hours ending with
/// the hour of `now` (Unix seconds); rows outside them are left out.
fn hourly_by_key(rows: &[UsageCount], now: i64) -> HashMap<String, HourlyRequests> {
    let first = UsageGrain::Hour.bucket_of(now) - 23 * 3_600;
    let mut by_key: HashMap<String, HourlyRequests> = HashMap::new();
    for row in rows {
        let Ok(hour) = usize::try_from((row.minute - first).div_euclid(3_600)) else {
            continue;
        };
        if let Some(slot) = by_key.entry(row.key_id.clone()).or_default().get_mut(hour) {
            *slot = slot.saturating_add(row.count);
        }
    }
    by_key
}

impl Admin {
    /// [`HourlyRequests`] of each of `keys`, which the caller has already
    /// read (and so may see), in one store read.
    pub(super) async fn last_day_by_hour(
        &self,
        keys: &[ApiKey],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, HourlyRequests>, AdminError> {
        let first = UsageGrain::Hour.bucket_of(now.timestamp()) - 23 * 3_600;
        let from = DateTime::from_timestamp(first, 0).unwrap_or(now);
        let ids: Vec<String> = keys.iter().map(|key| key.id.clone()).collect();
        let rows = self
            .context
            .store()
            .keys_usage(&ids, UsageGrain::Hour, from, now)
            .await?;
        Ok(hourly_by_key(&rows, now.timestamp()))
    }

    /// Usage of a key in the buckets that overlap `[from, to)`; empty buckets are omitted.
    /// The caller resolves defaults, since it reports the range it used.
    pub async fn key_usage(
        &self,
        actor: &Actor,
        id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        granularity: Granularity,
    ) -> Result<Vec<UsageBucket>, AdminError> {
        let key = self.get_key(actor, id).await?;
        self.usage_of(&key, from, to, granularity).await
    }

    /// [`Self::key_usage`] of a key the caller has already read (and so may see).
    pub async fn usage_of(
        &self,
        key: &ApiKey,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        granularity: Granularity,
    ) -> Result<Vec<UsageBucket>, AdminError> {
        let first_bucket = usage_range(from, to, granularity)?;
        let rows = self
            .context
            .store()
            .key_usage(&key.id, granularity.grain(), first_bucket, to)
            .await?;
        Ok(bucket_usage(
            rows.iter().map(|row| (row.minute, row.outcome.as_str(), row.count)),
            granularity,
        ))
    }

    /// The keys of a workspace with the most requests (or rejections) over
    /// the last `days` whole UTC days (today included), most first. The
    /// roll-up job runs first, so the windows start today and the answer is
    /// exact. Returns the first day counted, and the keys.
    pub async fn top_keys(
        &self,
        actor: &Actor,
        workspace_id: &str,
        days: u32,
        by: keygate_store::TopBy,
        limit: u32,
    ) -> Result<(DateTime<Utc>, Vec<keygate_store::KeyTotals>), AdminError> {
        self.get_workspace(actor, workspace_id).await?;
        if !keygate_store::TOP_KEY_WINDOWS.contains(&days) {
            return Err(AdminError::validation("window", "must be 1d, 7d or 30d"));
        }
        if !(1..=MAX_TOP_KEYS).contains(&limit) {
            return Err(AdminError::validation(
                "limit",
                format!("must be between 1 and {MAX_TOP_KEYS}"),
            ));
        }
        self.usage.roll_up().await?;
        let today = UsageGrain::Day.bucket_of(self.context.now().timestamp());
        let keys = self
            .context
            .store()
            .top_keys(workspace_id, days, today, by, limit)
            .await?;
        let since = keygate_store::window_first_day(today, days);
        Ok((DateTime::from_timestamp(since, 0).unwrap_or_default(), keys))
    }

    /// Usage of all of a workspace's keys in the buckets that overlap
    /// `[from, to)`, from the workspace's own rollups: one row per bucket and
    /// outcome, however many keys it has.
    pub async fn workspace_usage(
        &self,
        actor: &Actor,
        workspace_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        granularity: Granularity,
    ) -> Result<Vec<UsageBucket>, AdminError> {
        self.get_workspace(actor, workspace_id).await?;
        let first_bucket = usage_range(from, to, granularity)?;
        let rows = self
            .context
            .store()
            .workspace_usage(workspace_id, granularity.grain(), first_bucket, to)
            .await?;
        Ok(bucket_usage(
            rows.iter().map(|row| (row.start, row.outcome.as_str(), row.count)),
            granularity,
        ))
    }
}

/// Most keys one top-keys call returns.
pub const MAX_TOP_KEYS: u32 = 100;

/// Checks a usage range and returns the start of the bucket `from` falls
/// in: every bucket that overlaps the range is reported.
fn usage_range(from: DateTime<Utc>, to: DateTime<Utc>, granularity: Granularity) -> Result<DateTime<Utc>, AdminError> {
    if from >= to {
        return Err(AdminError::validation("from", "must be before `to`"));
    }
    let max_days = granularity.max_range_days();
    if to - from > chrono::Duration::days(max_days) {
        return Err(AdminError::validation(
            "from",
            format!("the range may span at most {max_days} days at this granularity"),
        ));
    }
    let grain = granularity.grain();
    Ok(DateTime::from_timestamp(grain.bucket_of(from.timestamp()), 0).unwrap_or(from))
}

/// `(bucket start, outcome, count)` rows summed per bucket and outcome.
fn bucket_usage<'a>(rows: impl Iterator<Item = (i64, &'a str, u64)>, granularity: Granularity) -> Vec<UsageBucket> {
    let size = granularity.grain().seconds();
    let mut buckets: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
    for (start, outcome, count) in rows {
        let start = start.div_euclid(size) * size;
        *buckets.entry(start).or_default().entry(outcome.to_owned()).or_default() += count;
    }
    buckets
        .into_iter()
        .map(|(start, outcomes)| UsageBucket {
            start: DateTime::from_timestamp(start, 0).unwrap_or_default(),
            outcomes,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key_id: &str, minute: i64, count: u64) -> UsageCount {
        UsageCount {
            key_id: key_id.into(),
            workspace_id: "ws_1".into(),
            minute,
            outcome: "admitted".into(),
            count,
        }
    }

    #[test]
    fn the_last_day_ends_with_the_hour_of_now_and_sums_outcomes() {
        let hour = 1_800_000_000 / 3_600 * 3_600;
        let now = hour + 1_234;
        let rows = [
            row("key_a", hour, 3),
            row("key_a", hour, 2),
            row("key_a", hour - 23 * 3_600, 7),
            row("key_a", hour - 24 * 3_600, 100),
            row("key_a", hour + 3_600, 100),
            row("key_b", hour - 3_600, 1),
        ];
        let by_key = hourly_by_key(&rows, now);
        let a = by_key["key_a"];
        assert_eq!((a[0], a[23]), (7, 5), "oldest first, the current hour last");
        assert_eq!(a.iter().sum::<u64>(), 12, "hours outside the day are left out");
        assert_eq!(by_key["key_b"][22], 1);
        assert!(!by_key.contains_key("key_c"));
    }
}
