//! Re-reading a key in use before its TTL ends, off the request path.
//!
//! Without this, every cached key is re-read by the first request after its
//! TTL, and that request waits for the store. Keys first used together (a
//! node's start, a cache dropped on a workspace change) then expire together:
//! at `cache.ttl` thousands of requests wait for thousands of reads at once,
//! which is a node's worst tail (BENCHMARKS.md, "Keys re-read ahead of their
//! TTL"). So a key in use is re-read in the background a little before its
//! TTL: the request that notices is answered from the cache, and the key's
//! TTL starts over when the read lands. The TTL itself is unchanged: a key
//! nobody re-read in time is still re-read, waiting, once it passes.

use std::sync::Arc;

use keygate_core::KeyHash;
use parking_lot::Mutex;
use rustc_hash::FxHashSet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Re-reads at once, at most: they share the store's connections with the
/// reads of cache misses, which a request waits for.
const MAX_REFRESHING: usize = 4;

/// Which keys are being re-read, each once.
pub(super) struct Refreshes {
    pending: Mutex<FxHashSet<KeyHash>>,
    permits: Arc<Semaphore>,
}

impl Default for Refreshes {
    fn default() -> Self {
        Self {
            pending: Mutex::new(FxHashSet::default()),
            permits: Arc::new(Semaphore::new(MAX_REFRESHING)),
        }
    }
}

/// A key's claim on its re-read, moved into the task that reads it:
/// released when dropped, read or not.
pub(super) struct Claim {
    refreshes: Arc<Refreshes>,
    hash: KeyHash,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.refreshes.pending.lock().remove(&self.hash);
    }
}

impl Refreshes {
    /// The key's claim, unless it is being re-read already or as many keys
    /// as allowed are. A key not claimed now is claimed by a later request,
    /// or re-read at its TTL as before.
    pub(super) fn claim(self: &Arc<Self>, hash: KeyHash) -> Option<Claim> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        self.pending.lock().insert(hash).then(|| Claim {
            refreshes: Arc::clone(self),
            hash,
            _permit: permit,
        })
    }
}

/// Age (ms) from which a key is re-read ahead: from three quarters of the TTL
/// to 95 % of it, at a point set by the key's hash. Keys read at the same
/// moment are then re-read spread over a fifth of the TTL, not all at once.
pub(super) fn refresh_from_ms(hash: &KeyHash, ttl_ms: i64) -> i64 {
    let spread = i64::from(hash.as_bytes()[0]);
    ttl_ms / 4 * 3 + ttl_ms / 5 * spread / 255
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_starting(byte: u8) -> KeyHash {
        (0..)
            .map(|n: u32| KeyHash::of(&n.to_string()))
            .find(|hash| hash.as_bytes()[0] == byte)
            .unwrap()
    }

    #[test]
    fn keys_are_re_read_from_three_quarters_to_95_percent_of_the_ttl() {
        assert_eq!(refresh_from_ms(&hash_starting(0), 60_000), 45_000);
        assert_eq!(refresh_from_ms(&hash_starting(255), 60_000), 57_000);
        let middle = refresh_from_ms(&hash_starting(128), 60_000);
        assert!((50_000..52_000).contains(&middle), "{middle}");
    }

    #[test]
    fn a_key_is_claimed_once_until_its_claim_is_dropped() {
        let refreshes = Arc::new(Refreshes::default());
        let key = KeyHash::of("a");
        let claim = refreshes.claim(key).unwrap();
        assert!(refreshes.claim(key).is_none());
        drop(claim);
        assert!(refreshes.claim(key).is_some());
    }

    #[test]
    fn at_most_a_few_keys_are_re_read_at_once() {
        let refreshes = Arc::new(Refreshes::default());
        let claims: Vec<_> = (0..MAX_REFRESHING)
            .map(|n| refreshes.claim(KeyHash::of(&n.to_string())).unwrap())
            .collect();
        assert!(refreshes.claim(KeyHash::of("one more")).is_none());
        drop(claims);
        assert!(refreshes.claim(KeyHash::of("one more")).is_some());
    }
}
