//! Usage recording off the request path.
//!
//! The request path only bumps an in-memory counter; a background task flushes
//! the totals every few seconds (and at shutdown) in one store transaction. A
//! failed flush puts the counts back, so they are written when the store returns.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use keygate_store::{LastUse, Store, StoreError, UsageBatch, UsageCount};

/// The outcome recorded for an admitted request; rejections use their error code.
pub const ADMITTED: &str = "admitted";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    key_id: Arc<str>,
    workspace_id: Arc<str>,
    minute: i64,
    outcome: &'static str,
}

#[derive(Debug, Default)]
pub struct UsageRecorder {
    counts: DashMap<Slot, u64>,
    last_uses: DashMap<Arc<str>, (DateTime<Utc>, IpAddr)>,
}

impl UsageRecorder {
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

    /// Takes everything recorded so far. Increments racing with this call
    /// land either in this batch or the next, never nowhere.
    fn take(&self) -> UsageBatch {
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
            .map(|(key_id, (at, ip))| LastUse {
                key_id: key_id.to_string(),
                at,
                ip: ip.to_string(),
            })
            .collect();
        UsageBatch { counts, last_uses }
    }

    /// Puts a batch back after a failed write so that nothing is lost.
    fn restore(&self, batch: UsageBatch) {
        for row in batch.counts {
            let Some(outcome) = outcome_name(&row.outcome) else {
                continue;
            };
            let slot = Slot {
                key_id: row.key_id.into(),
                workspace_id: row.workspace_id.into(),
                minute: row.minute,
                outcome,
            };
            *self.counts.entry(slot).or_insert(0) += row.count;
        }
        for used in batch.last_uses {
            if let Ok(ip) = used.ip.parse() {
                self.last_uses
                    .entry(used.key_id.into())
                    .and_modify(|last| {
                        if used.at > last.0 {
                            *last = (used.at, ip);
                        }
                    })
                    .or_insert((used.at, ip));
            }
        }
    }

    /// Writes what was recorded. On failure the counts stay in memory.
    pub async fn flush(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(0);
        }
        let rows = batch.counts.len();
        match store.record_usage(&batch).await {
            Ok(()) => Ok(rows),
            Err(err) => {
                self.restore(batch);
                Err(err)
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.counts.len()
    }
}

fn outcome_name(outcome: &str) -> Option<&'static str> {
    if outcome == ADMITTED {
        return Some(ADMITTED);
    }
    keygate_core::ErrorCode::parse(outcome).map(keygate_core::ErrorCode::as_str)
}
