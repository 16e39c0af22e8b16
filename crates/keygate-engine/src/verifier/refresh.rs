//! Re-reading keys in use before their TTL ends, off the request path, many
//! at once.
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
//!
//! Keys falling due are queued, and one reader at a time reads what has
//! gathered in one store call (`KeyStore::find_keys_by_hashes`): at 10,000
//! keys in use that is about two hundred statements a minute instead of
//! 10,000, which on PostgreSQL were a fifth of the database's work in
//! steady state (BENCHMARKS.md, "PostgreSQL's work halved").

use std::sync::Arc;
use std::time::Duration;

use keygate_core::KeyHash;
use parking_lot::Mutex;
use rustc_hash::FxHashSet;

/// How long a reader lets keys gather before it reads them: keys fall due
/// spread over a fifth of the TTL ([`refresh_from_ms`]), and are due at
/// least 5 % of it before it ends (3 s of the default minute), so waiting
/// this long costs nothing and makes each read carry many keys.
pub(super) const GATHER: Duration = Duration::from_millis(100);

/// The most keys one read carries.
const MAX_BATCH: usize = 500;

/// Which keys are due for a re-read, each once, and whether a reader is at
/// work on them.
#[derive(Default)]
pub(super) struct Refreshes {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// Due and not being read yet, in the order they fell due.
    due: Vec<KeyHash>,
    /// Due or being read: a key is queued once.
    queued: FxHashSet<KeyHash>,
    /// A reader holds its [`Turn`].
    reading: bool,
}

impl Refreshes {
    /// Queues a key for a re-read, unless it is queued already. Returns the
    /// reader's turn when no reader is at work: the caller starts one.
    pub(super) fn queue(self: &Arc<Self>, hash: KeyHash) -> Option<Turn> {
        let mut queue = self.queue.lock();
        if queue.queued.insert(hash) {
            queue.due.push(hash);
        }
        if queue.reading {
            return None;
        }
        queue.reading = true;
        Some(Turn {
            refreshes: Arc::clone(self),
            batch: Vec::new(),
            over: false,
        })
    }
}

/// The one reader's hold on the queue, moved into the task that reads: it
/// takes batch after batch until the queue is empty. Dropped before that
/// (its task cancelled), it lets the next key that falls due start another.
pub(super) struct Turn {
    refreshes: Arc<Refreshes>,
    /// The keys of the batch being read.
    batch: Vec<KeyHash>,
    over: bool,
}

impl Turn {
    /// The next keys to read, up to [`MAX_BATCH`]; `None` ends the turn when
    /// nothing is due. The batch returned before is done.
    pub(super) fn next_batch(&mut self) -> Option<&[KeyHash]> {
        let mut queue = self.refreshes.queue.lock();
        for hash in self.batch.drain(..) {
            queue.queued.remove(&hash);
        }
        if queue.due.is_empty() {
            queue.reading = false;
            self.over = true;
            return None;
        }
        let taken = queue.due.len().min(MAX_BATCH);
        self.batch.extend(queue.due.drain(..taken));
        Some(&self.batch)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.over {
            return;
        }
        let mut queue = self.refreshes.queue.lock();
        for hash in &self.batch {
            queue.queued.remove(hash);
        }
        queue.reading = false;
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

    fn key(n: usize) -> KeyHash {
        KeyHash::of(&n.to_string())
    }

    #[test]
    fn keys_are_re_read_from_three_quarters_to_95_percent_of_the_ttl() {
        assert_eq!(refresh_from_ms(&hash_starting(0), 60_000), 45_000);
        assert_eq!(refresh_from_ms(&hash_starting(255), 60_000), 57_000);
        let middle = refresh_from_ms(&hash_starting(128), 60_000);
        assert!((50_000..52_000).contains(&middle), "{middle}");
    }

    #[test]
    fn one_reader_takes_every_key_due_once_in_batches() {
        let refreshes = Arc::new(Refreshes::default());
        let mut turn = refreshes.queue(key(0)).expect("the first key starts a reader");
        for n in 1..=MAX_BATCH {
            assert!(refreshes.queue(key(n)).is_none(), "one reader at a time");
        }
        assert!(refreshes.queue(key(0)).is_none());
        let first = turn.next_batch().unwrap().to_vec();
        assert_eq!(first.len(), MAX_BATCH);
        assert_eq!(first[0], key(0));
        assert_eq!(first.iter().filter(|h| **h == key(0)).count(), 1, "queued once");
        // A key of the batch being read is not queued again; one due meanwhile is.
        refreshes.queue(key(1));
        refreshes.queue(key(MAX_BATCH + 1));
        assert_eq!(turn.next_batch().unwrap(), [key(MAX_BATCH), key(MAX_BATCH + 1)]);
        assert!(turn.next_batch().is_none());
        // The turn is over: the next key due starts another reader.
        assert!(refreshes.queue(key(1)).is_some());
    }

    #[test]
    fn a_reader_dropped_midway_lets_another_start_with_what_is_left() {
        let refreshes = Arc::new(Refreshes::default());
        let mut turn = refreshes.queue(key(0)).unwrap();
        for n in 1..=MAX_BATCH {
            refreshes.queue(key(n));
        }
        turn.next_batch().unwrap();
        drop(turn);
        let mut next = refreshes.queue(key(0)).expect("a new reader");
        assert_eq!(next.next_batch().unwrap(), [key(MAX_BATCH), key(0)]);
    }
}
