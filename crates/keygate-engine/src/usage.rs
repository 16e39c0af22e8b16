//! Usage recording off the request path.
//!
//! The request path only bumps an in-memory counter; a background task flushes
//! the totals every few seconds (and at shutdown) in one store transaction. A
//! failed batch is kept and retried, with its id, before anything newer: the
//! store applies a batch id once, so a retry after a commit whose answer was
//! lost does not count twice, and nothing is lost while the store is down.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use keygate_store::{LastUse, NewEvent, Store, StoreError, UsageBatch, UsageCount, UsageCutoffs};

/// The outcome recorded for an admitted request; rejections use their error code.
pub const ADMITTED: &str = "admitted";

/// How long usage counts are kept at each grain (`usage.keep_*`). Old
/// minutes go first; their hours and days stay for the longer views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRetention {
    pub minutes: chrono::Duration,
    pub hours: chrono::Duration,
    pub days: chrono::Duration,
}

impl Default for UsageRetention {
    fn default() -> Self {
        Self {
            minutes: chrono::Duration::days(7),
            hours: chrono::Duration::days(90),
            days: chrono::Duration::days(400),
        }
    }
}

impl UsageRetention {
    pub fn cutoffs(&self, now: DateTime<Utc>) -> UsageCutoffs {
        UsageCutoffs {
            minutes_before: now - self.minutes,
            hours_before: now - self.hours,
            days_before: now - self.days,
        }
    }
}

/// How often a node prunes old usage counts: deleting is cheap, but need not be frequent.
pub const PRUNE_EVERY_MS: i64 = 3_600_000;

/// A key's last use is written again only once it is this much later than
/// what this node last wrote, or from another address: a key in constant use
/// costs one row update a minute, not one per flush (the events benchmark,
/// BENCHMARKS.md). "Last used" is therefore exact to the minute.
pub const LAST_USE_PRECISION: chrono::Duration = chrono::Duration::seconds(60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    key_id: Arc<str>,
    workspace_id: Arc<str>,
    minute: i64,
    outcome: &'static str,
}

#[derive(Debug)]
pub struct UsageRecorder {
    counts: DashMap<Slot, u64>,
    last_uses: DashMap<Arc<str>, (DateTime<Utc>, IpAddr)>,
    /// What this node last wrote per key (see [`LAST_USE_PRECISION`]).
    written_last_uses: moka::sync::Cache<Arc<str>, (DateTime<Utc>, IpAddr)>,
    /// Events the gateway decided, stored with the next flush.
    events: std::sync::Mutex<Vec<NewEvent>>,
    /// The batch whose write failed, retried as it is. The lock also keeps
    /// two flushes (the ticker and shutdown) from running at once.
    unsent: tokio::sync::Mutex<Option<UsageBatch>>,
    unsent_rows: AtomicUsize,
}

impl Default for UsageRecorder {
    fn default() -> Self {
        Self {
            counts: DashMap::new(),
            last_uses: DashMap::new(),
            written_last_uses: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(std::time::Duration::from_secs(600))
                .build(),
            events: std::sync::Mutex::new(Vec::new()),
            unsent: tokio::sync::Mutex::new(None),
            unsent_rows: AtomicUsize::new(0),
        }
    }
}

impl UsageRecorder {
    /// Whether a use is news enough to write: see [`LAST_USE_PRECISION`].
    fn worth_writing(&self, key_id: &Arc<str>, at: DateTime<Utc>, ip: IpAddr) -> bool {
        match self.written_last_uses.get(key_id) {
            Some((written_at, written_ip)) => written_ip != ip || at - written_at >= LAST_USE_PRECISION,
            None => true,
        }
    }

    pub fn record(
        &self,
        key_id: &Arc<str>,
        workspace_id: &Arc<str>,
        outcome: &'static str,
        client_ip: Option<IpAddr>,
        now: DateTime<Utc>,
    ) {
        let minute = now.timestamp().div_euclid(60) * 60;
        let slot = Slot {
            key_id: key_id.clone(),
            workspace_id: workspace_id.clone(),
            minute,
            outcome,
        };
        *self.counts.entry(slot).or_insert(0) += 1;
        if let Some(ip) = client_ip {
            self.last_uses
                .entry(key_id.clone())
                .and_modify(|last| {
                    if now >= last.0 {
                        *last = (now, ip);
                    }
                })
                .or_insert((now, ip));
        }
    }

    pub fn record_event(&self, event: NewEvent) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }

    /// Takes everything recorded so far. Increments racing with this call
    /// land either in this batch or the next, never nowhere.
    fn take(&self, id: String, at: DateTime<Utc>) -> UsageBatch {
        let slots: Vec<Slot> = self.counts.iter().map(|entry| entry.key().clone()).collect();
        let counts = slots
            .into_iter()
            .filter_map(|slot| self.counts.remove(&slot))
            .map(|(slot, count)| UsageCount {
                key_id: slot.key_id.to_string(),
                workspace_id: slot.workspace_id.to_string(),
                minute: slot.minute,
                outcome: slot.outcome.to_owned(),
                count,
            })
            .collect();
        let keys: Vec<Arc<str>> = self.last_uses.iter().map(|entry| entry.key().clone()).collect();
        let last_uses = keys
            .into_iter()
            .filter_map(|key| self.last_uses.remove(&key))
            .filter(|(key_id, (at, ip))| self.worth_writing(key_id, *at, *ip))
            .map(|(key_id, (at, ip))| {
                self.written_last_uses.insert(key_id.clone(), (at, ip));
                LastUse {
                    key_id: key_id.to_string(),
                    at,
                    ip: ip.to_string(),
                }
            })
            .collect();
        let events = std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()));
        UsageBatch {
            id,
            at,
            counts,
            last_uses,
            events,
        }
    }

    /// Writes the batch that failed last time (if any), then what was recorded
    /// since, as a new batch named by `new_id`. Returns the rows written. On
    /// failure the failed batch is kept for the next call.
    pub async fn flush(
        &self,
        store: &dyn Store,
        now: DateTime<Utc>,
        new_id: impl FnOnce() -> String,
    ) -> Result<usize, StoreError> {
        let mut unsent = self.unsent.lock().await;
        let mut rows = 0;
        if let Some(batch) = unsent.as_ref() {
            store.record_usage(batch).await?;
            rows += batch.counts.len() + batch.events.len();
            *unsent = None;
            self.unsent_rows.store(0, Ordering::Release);
        }
        let batch = self.take(new_id(), now);
        if batch.is_empty() {
            return Ok(rows);
        }
        match store.record_usage(&batch).await {
            Ok(()) => Ok(rows + batch.counts.len() + batch.events.len()),
            Err(err) => {
                self.unsent_rows
                    .store(batch.counts.len() + batch.events.len(), Ordering::Release);
                *unsent = Some(batch);
                Err(err)
            }
        }
    }

    /// Rows not yet written: recorded since the last flush, plus a failed batch.
    pub fn pending(&self) -> usize {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner()).len();
        self.counts.len() + events + self.unsent_rows.load(Ordering::Acquire)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_last_use_is_written_when_a_minute_later_or_from_another_address() {
        let recorder = UsageRecorder::default();
        let (key, ws): (Arc<str>, Arc<str>) = (Arc::from("key_1"), Arc::from("ws_1"));
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let here: IpAddr = "192.0.2.1".parse().unwrap();
        let there: IpAddr = "192.0.2.2".parse().unwrap();
        let written = |at: DateTime<Utc>, ip: IpAddr| {
            recorder.record(&key, &ws, ADMITTED, Some(ip), at);
            let batch = recorder.take("ub".into(), at);
            assert_eq!(batch.counts.len(), 1, "every request is counted");
            batch.last_uses.iter().map(|u| (u.at, u.ip.clone())).collect::<Vec<_>>()
        };
        assert_eq!(written(t0, here), [(t0, "192.0.2.1".to_owned())], "the first use");
        assert_eq!(written(t0 + chrono::Duration::seconds(59), here), [], "59 s later");
        let moved = t0 + chrono::Duration::seconds(70);
        assert_eq!(
            written(moved, there),
            [(moved, "192.0.2.2".to_owned())],
            "another address"
        );
        let later = moved + chrono::Duration::seconds(60);
        assert_eq!(
            written(later, there),
            [(later, "192.0.2.2".to_owned())],
            "a minute later"
        );
    }
}
