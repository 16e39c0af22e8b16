//! What this node has dropped from its key cache, numbered, for services
//! that cache keygate's answers themselves (keygate-client's remote layer
//! with `cache_for`): they ask what changed since their last cursor
//! (`GET /v1/keys/changes`, crates/keygate-server/src/http/admin/keys.rs)
//! and drop the same keys, so a revocation on any node reaches them as fast
//! as it reaches this node.
//!
//! Only hashes are kept, never keys. The log is short: a cursor older than
//! it, a cursor of another node (or of this node before a restart), and
//! any change that drops the whole cache all answer "reset": drop
//! everything.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use keygate_core::KeyHash;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Changes kept: a follower further behind than this starts over.
const KEPT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forgotten {
    Key(KeyHash),
    /// Every cached key (a workspace changed, the change feed reconnected).
    All,
}

/// The answer to "what changed after my cursor".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgottenSince {
    /// Where the next question starts.
    pub cursor: u64,
    /// Drop everything cached: what changed cannot be told key by key.
    pub reset: bool,
    /// The keys to drop (empty with `reset`).
    pub keys: Vec<KeyHash>,
}

pub(crate) struct ForgetLog {
    log: Mutex<Log>,
    /// Wakes followers waiting for the next change.
    changed: Notify,
}

struct Log {
    /// The number the next change gets; the first is 1, so 0 is "before anything".
    next: u64,
    entries: VecDeque<(u64, Forgotten)>,
}

impl ForgetLog {
    pub(crate) fn new() -> Self {
        Self {
            log: Mutex::new(Log {
                next: 1,
                entries: VecDeque::with_capacity(KEPT),
            }),
            changed: Notify::new(),
        }
    }

    pub(crate) fn key(&self, hash: KeyHash) {
        self.record(Forgotten::Key(hash));
    }

    pub(crate) fn all(&self) {
        self.record(Forgotten::All);
    }

    fn record(&self, change: Forgotten) {
        {
            let mut log = self.log.lock();
            if log.entries.len() == KEPT {
                log.entries.pop_front();
            }
            let number = log.next;
            log.entries.push_back((number, change));
            log.next += 1;
        }
        self.changed.notify_waiters();
    }

    /// What changed after `after` (`None`: a follower that starts, which
    /// gets a reset and the current cursor).
    pub(crate) fn since(&self, after: Option<u64>) -> ForgottenSince {
        self.log.lock().since(after)
    }

    /// The same, waiting up to `wait` for a change if there is none yet.
    pub(crate) async fn wait_since(&self, after: Option<u64>, wait: Duration) -> ForgottenSince {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the look, so a change in between is not missed.
            let changed = self.changed.notified();
            let answer = self.since(after);
            if answer.reset || !answer.keys.is_empty() {
                return answer;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return answer;
            }
        }
    }
}

impl Log {
    fn since(&self, after: Option<u64>) -> ForgottenSince {
        let current = self.next - 1;
        let reset = ForgottenSince {
            cursor: current,
            reset: true,
            keys: Vec::new(),
        };
        let Some(after) = after else { return reset };
        let oldest_kept = self.entries.front().map_or(self.next, |(number, _)| *number);
        // From the future (another node's, a restart's), or older than the log.
        if after > current || after + 1 < oldest_kept {
            return reset;
        }
        // A key is often forgotten twice: by this node's own change and
        // again when the change feed brings it back. A follower hears it once.
        let mut keys = Vec::new();
        let mut told = HashSet::new();
        for (_, change) in self.entries.iter().filter(|(number, _)| *number > after) {
            match change {
                Forgotten::Key(hash) if told.insert(*hash) => keys.push(*hash),
                Forgotten::Key(_) => {}
                Forgotten::All => return reset,
            }
        }
        ForgottenSince {
            cursor: current,
            reset: false,
            keys,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> KeyHash {
        KeyHash::of(&format!("kg_live_{n}"))
    }

    #[test]
    fn a_follower_gets_the_keys_forgotten_after_its_cursor_and_a_reset_when_it_cannot() {
        let log = ForgetLog::new();
        let start = log.since(None);
        assert_eq!((start.cursor, start.reset), (0, true), "a start is a reset");
        log.key(hash(1));
        log.key(hash(2));
        let next = log.since(Some(start.cursor));
        assert_eq!(
            (next.cursor, next.reset, next.keys.clone()),
            (2, false, vec![hash(1), hash(2)])
        );
        assert_eq!(log.since(Some(2)).keys, Vec::<KeyHash>::new(), "nothing new");
        assert_eq!(log.since(Some(1)).keys, vec![hash(2)]);
        log.all();
        log.key(hash(3));
        assert!(log.since(Some(2)).reset, "a whole-cache change is a reset");
        assert_eq!(log.since(Some(3)).keys, vec![hash(3)], "after it, keys again");
        assert!(log.since(Some(99)).reset, "a cursor from the future (another node)");
    }

    #[test]
    fn a_key_forgotten_twice_is_told_once() {
        let log = ForgetLog::new();
        let cursor = log.since(None).cursor;
        for n in [1, 2, 1, 1] {
            log.key(hash(n));
        }
        let heard = log.since(Some(cursor));
        assert_eq!((heard.cursor, heard.keys), (4, vec![hash(1), hash(2)]));
    }

    #[test]
    fn a_follower_further_behind_than_the_log_starts_over() {
        let log = ForgetLog::new();
        for n in 0..(KEPT + 10) {
            log.key(hash((n % 250) as u8));
        }
        assert!(log.since(Some(5)).reset);
        let current = log.since(None).cursor;
        assert_eq!(current, (KEPT + 10) as u64);
        let kept_from = current - KEPT as u64;
        assert!(
            !log.since(Some(kept_from)).reset,
            "the oldest kept change is still told"
        );
        assert!(log.since(Some(kept_from - 1)).reset);
    }

    #[tokio::test]
    async fn a_waiting_follower_hears_the_next_change_at_once_and_else_waits_out_its_wait() {
        let log = std::sync::Arc::new(ForgetLog::new());
        let cursor = log.since(None).cursor;
        let quiet = log.wait_since(Some(cursor), Duration::from_millis(50)).await;
        assert_eq!((quiet.cursor, quiet.reset, quiet.keys.len()), (cursor, false, 0));
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.wait_since(Some(cursor), Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        log.key(hash(7));
        let heard = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the change, not by its 10 s wait")
            .unwrap();
        assert_eq!(heard.keys, vec![hash(7)]);
    }
}
