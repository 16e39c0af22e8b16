//! Credit balances kept across restarts where the limiter counts in memory.
//!
//! A balance is spent in the limiter, in the same decision as the rate
//! limits (crates/keygate-core/src/credits.rs). Redis keeps its counts; the
//! memory limiter forgets them when the node stops, which for a rate limit
//! costs at most a window but for credits would hand a month's spending
//! back. So, with the memory limiter only, this ledger notes what each
//! balance has spent after every charged decision, the usage flusher writes
//! it to the store (crates/keygate-store/src/sql/credits.rs), and the first
//! time this process loads a key with credits its balance is restored from
//! there before the key is used (docs/decisions.md, "Credits").

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use keygate_core::ratelimit::{Bucket, Decision};
use keygate_limiter::{ArcStr, LimitCheck};
use keygate_store::CreditSpend;
use parking_lot::Mutex;

/// A balance: its owner (the key lineage) and counter name.
type BalanceId = (ArcStr, Arc<str>);

/// What a balance had spent in a period at its newest spending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Spent {
    period: u64,
    spent: u64,
    newest_ms: u64,
}

pub(crate) struct CreditLedger {
    /// Off where the limiter keeps its counts (Redis).
    enabled: bool,
    /// Spending not yet written, the latest per balance.
    pending: Mutex<HashMap<BalanceId, Spent>>,
    /// Balances this process has restored (or found nothing to restore).
    restored: Mutex<HashSet<BalanceId>>,
}

fn id_of(check: &LimitCheck) -> BalanceId {
    (check.key.owner.clone(), check.key.resource().clone())
}

impl CreditLedger {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            pending: Mutex::new(HashMap::new()),
            restored: Mutex::new(HashSet::new()),
        }
    }

    /// Notes what the balance among `checks` has spent after `decision`
    /// charged it. Requests without credits take no lock.
    pub(crate) fn record(&self, checks: &[LimitCheck], decision: &Decision) {
        if !self.enabled {
            return;
        }
        let Some((index, bucket)) = decision.balance_bucket() else {
            return;
        };
        let Some(check) = checks.get(index) else {
            return;
        };
        let spent = Spent {
            period: bucket.index,
            spent: bucket.count,
            newest_ms: bucket.newest_ms,
        };
        let mut pending = self.pending.lock();
        let entry = pending.entry(id_of(check)).or_insert(spent);
        *entry = (*entry).max(spent);
    }

    /// Whether `check`'s balance is still to be restored in this process.
    pub(crate) fn needs_restore(&self, check: &LimitCheck) -> bool {
        self.enabled && !self.restored.lock().contains(&id_of(check))
    }

    pub(crate) fn mark_restored(&self, check: &LimitCheck) {
        self.restored.lock().insert(id_of(check));
    }

    /// The saved spend as the counter's bucket.
    pub(crate) fn bucket_of(saved: &CreditSpend) -> Bucket {
        Bucket {
            index: saved.period,
            count: saved.spent,
            newest_ms: saved.newest_ms,
        }
    }

    /// Takes what is pending, to be written.
    pub(crate) fn drain(&self) -> Vec<CreditSpend> {
        let pending = std::mem::take(&mut *self.pending.lock());
        pending
            .into_iter()
            .map(|((owner, counter), spent)| CreditSpend {
                owner: owner.to_string(),
                counter: counter.to_string(),
                period: spent.period,
                spent: spent.spent,
                newest_ms: spent.newest_ms,
            })
            .collect()
    }

    /// Gives back what could not be written, for the next flush; anything
    /// recorded meanwhile is newer or larger and wins.
    pub(crate) fn put_back(&self, spends: Vec<CreditSpend>) {
        let mut pending = self.pending.lock();
        for spend in spends {
            let spent = Spent {
                period: spend.period,
                spent: spend.spent,
                newest_ms: spend.newest_ms,
            };
            let entry = pending
                .entry((ArcStr::from(spend.owner), Arc::from(spend.counter)))
                .or_insert(spent);
            *entry = (*entry).max(spent);
        }
    }
}

#[cfg(test)]
mod tests {
    use keygate_core::credits::CreditSpec;
    use keygate_core::ratelimit::{decide, Counter, Rule};
    use keygate_limiter::CounterKey;

    use super::*;

    fn balance_check() -> LimitCheck {
        let rule = CreditSpec {
            remaining: 10,
            refill: None,
        }
        .rule(0);
        LimitCheck::new(CounterKey::new("key_lineage", "~credits@0:10", rule.window_ms), rule)
    }

    fn spend(ledger: &CreditLedger, checks: &[LimitCheck], counters: &mut [Counter], at: u64, cost: u64) {
        let mut limits: Vec<(Rule, &mut Counter)> = checks.iter().map(|c| *c.rule).zip(counters.iter_mut()).collect();
        let decision = decide(&mut limits, at, cost, true);
        ledger.record(checks, &decision);
    }

    #[test]
    fn notes_the_latest_spend_of_a_balance_and_nothing_else() {
        let ledger = CreditLedger::new(true);
        let rolling = LimitCheck::new(
            CounterKey::new("key_lineage", "default", 60_000),
            Rule::new(100, 60_000),
        );
        spend(&ledger, std::slice::from_ref(&rolling), &mut [Counter::default()], 5, 1);
        assert!(ledger.drain().is_empty(), "no balance, nothing noted");
        let checks = [rolling, balance_check()];
        let mut counters = [Counter::default(), Counter::default()];
        spend(&ledger, &checks, &mut counters, 5, 3);
        spend(&ledger, &checks, &mut counters, 6, 4);
        let drained = ledger.drain();
        assert_eq!(drained.len(), 1);
        assert_eq!(
            (drained[0].counter.as_str(), drained[0].spent, drained[0].newest_ms),
            ("~credits@0:10", 7, 6)
        );
        assert!(ledger.drain().is_empty());
        // A failed write comes back, but never over something newer.
        spend(&ledger, &checks, &mut counters, 7, 1);
        ledger.put_back(drained);
        assert_eq!(ledger.drain()[0].spent, 8);
    }

    #[test]
    fn a_disabled_ledger_notes_and_restores_nothing() {
        let ledger = CreditLedger::new(false);
        let checks = [balance_check()];
        spend(&ledger, &checks, &mut [Counter::default()], 5, 3);
        assert!(ledger.drain().is_empty());
        assert!(!ledger.needs_restore(&checks[0]));
        let enabled = CreditLedger::new(true);
        assert!(enabled.needs_restore(&checks[0]));
        enabled.mark_restored(&checks[0]);
        assert!(!enabled.needs_restore(&checks[0]));
    }
}
