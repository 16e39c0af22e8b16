//! The remote layer's own cache of admitted answers (`cache_for`), kept
//! honest by following what keygate drops from its cache
//! (`GET /v1/keys/changes`, a long poll): a key revoked on any node is
//! dropped here as soon as keygate's node hears of it, in well under a
//! second. Answers are used only while the follower hears from keygate;
//! when it does not, every request is asked again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use keygate_core::KeyHash;

use crate::{Client, Verified};

/// Admitted answers by key hash, and when keygate gave them.
pub(crate) type Answers = quick_cache::sync::Cache<KeyHash, (Arc<Verified>, Instant)>;

/// How long one long poll waits for a change.
const POLL_WAIT: &str = "10s";
/// A follower that has not heard from keygate for this long stops vouching.
const SILENT_AFTER: Duration = Duration::from_secs(12);
/// How long a poll may take before it is given up (its wait, and some).
const POLL_TIMEOUT: Duration = Duration::from_secs(15);
/// The pause after a failed poll.
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub(crate) struct Fresh {
    ttl: Duration,
    answers: Answers,
    /// Bumped at every change heard, so an answer asked for before a change
    /// and received after it is not kept.
    generation: AtomicU64,
    /// When keygate last answered a poll.
    heard_at: Mutex<Option<Instant>>,
}

impl Fresh {
    /// A cache for answers of up to `ttl`, and its follower, which runs on
    /// the current tokio runtime until the layer is dropped. It drops what
    /// keygate drops here and from `last_good`.
    pub(crate) fn start(client: Client, ttl: Duration, capacity: usize, last_good: &Arc<Answers>) -> Arc<Self> {
        let fresh = Arc::new(Self {
            ttl,
            answers: Answers::new(capacity),
            generation: AtomicU64::new(0),
            heard_at: Mutex::new(None),
        });
        tokio::spawn(follow(client, Arc::downgrade(&fresh), Arc::downgrade(last_good)));
        fresh
    }

    /// The answer for `hash`, if it is recent and the follower vouches for it.
    pub(crate) fn get(&self, hash: &KeyHash) -> Option<Arc<Verified>> {
        if !self.vouches() {
            return None;
        }
        self.answers
            .get(hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(verified, _)| verified)
    }

    /// Where the changes stand before asking keygate.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Keeps an answer asked for at `generation`, unless a change came since.
    pub(crate) fn insert(&self, hash: KeyHash, verified: Arc<Verified>, generation: u64) {
        if self.generation() == generation {
            self.answers.insert(hash, (verified, Instant::now()));
        }
    }

    pub(crate) fn remove(&self, hash: &KeyHash) {
        self.answers.remove(hash);
    }

    fn vouches(&self) -> bool {
        let heard_at = *self.heard_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        heard_at.is_some_and(|at| at.elapsed() < SILENT_AFTER)
    }

    fn heard(&self, keys: &[KeyHash], reset: bool, last_good: &Answers) {
        if reset || !keys.is_empty() {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        if reset {
            self.answers.clear();
        }
        for hash in keys {
            self.answers.remove(hash);
            last_good.remove(hash);
        }
        *self.heard_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
    }

    fn lost(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        *self.heard_at.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        self.answers.clear();
    }
}

/// Polls keygate for dropped keys until the layer is gone.
async fn follow(client: Client, fresh: Weak<Fresh>, last_good: Weak<Answers>) {
    let mut cursor: Option<String> = None;
    loop {
        let polled = tokio::time::timeout(POLL_TIMEOUT, client.key_changes(cursor.as_deref(), POLL_WAIT)).await;
        let (Some(fresh), Some(last_good)) = (fresh.upgrade(), last_good.upgrade()) else {
            return;
        };
        match polled {
            Ok(Ok(changes)) => {
                let keys: Vec<KeyHash> = changes
                    .key_hashes
                    .iter()
                    .filter_map(|hex| KeyHash::from_hex(hex))
                    .collect();
                // A hash this client cannot read: drop everything rather than miss it.
                let reset = changes.reset || keys.len() != changes.key_hashes.len();
                fresh.heard(&keys, reset, &last_good);
                cursor = Some(changes.cursor);
            }
            // Not reachable, refused (a key that may not follow), or too slow.
            _ => {
                fresh.lost();
                cursor = None;
                drop((fresh, last_good));
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}
