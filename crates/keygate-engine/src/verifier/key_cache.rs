//! The key cache: quick_cache, bounded and evicting by use (S3-FIFO), with
//! a small table in front of it that reaches a key in one memory line.
//!
//! With 10,000 keys in turn, quick_cache's probe waits on four lines that
//! are rarely in the CPU's caches: its shard, its table's control bytes, the
//! table's index of the slot, and the slot in its slab (BENCHMARKS.md,
//! "Where auth's cost is, line by line"). The front table keeps a key's
//! slot beside its pointer, two to a line with the line's lock, so a key it
//! holds costs that one line. It is lossy (a third key of a line displaces
//! the oldest of two), so it cannot be the cache: a key it lost is still in
//! quick_cache, which drops none while it has room, and is put back in
//! front on its next request.
//!
//! Removal and replacement go through the front's line lock first, then
//! quick_cache, and a lookup that misses in front fills it under the same
//! lock: a lookup can never put back in front a key that was just removed.

use std::hash::Hash;

use parking_lot::Mutex;

/// Most lines in front: 1 MiB, whatever the cache's capacity, so that a
/// node's memory per cached key stays within its goal (BENCHMARKS.md,
/// "Memory per cached key"). 32,768 keys fit; with more, the front holds
/// those seen last.
const MAX_LINES: usize = 16_384;

/// Keys a line holds.
const WAYS: usize = 2;

/// Where a key is: 128 bits of its hash, random already, so its first word
/// picks the line and quick_cache's hasher sees both.
pub(crate) trait Slot: Copy + Eq + Hash {
    fn line_bits(&self) -> u64;
}

/// The key cache: up to `capacity` keys.
pub(crate) struct KeyCache<S, V> {
    front: Box<[Line<S, V>]>,
    back: quick_cache::sync::Cache<S, V>,
}

/// A memory line of the front: its lock and two keys, the newest first.
#[repr(align(64))]
struct Line<S, V>(Mutex<[Option<(S, V)>; WAYS]>);

impl<S, V> Default for Line<S, V> {
    fn default() -> Self {
        Self(Mutex::new([None, None]))
    }
}

impl<S: Slot, V: Clone> KeyCache<S, V> {
    /// Memory for the first few thousand keys of quick_cache is set aside
    /// up front, the rest as keys arrive; the front's lines all at once.
    pub(crate) fn new(capacity: u64) -> Self {
        const PREALLOCATED: u64 = 4096;
        let estimated = usize::try_from(capacity.min(PREALLOCATED)).unwrap_or(4096);
        let lines = usize::try_from(capacity)
            .unwrap_or(MAX_LINES)
            .clamp(1, MAX_LINES)
            .next_power_of_two();
        Self {
            front: (0..lines).map(|_| Line::default()).collect(),
            back: quick_cache::sync::Cache::with(
                estimated,
                capacity,
                quick_cache::UnitWeighter,
                quick_cache::DefaultHashBuilder::default(),
                quick_cache::sync::DefaultLifecycle::default(),
            ),
        }
    }

    fn line(&self, slot: &S) -> &Mutex<[Option<(S, V)>; WAYS]> {
        let at = usize::try_from(slot.line_bits()).unwrap_or_default() & (self.front.len() - 1);
        &self.front[at].0
    }

    pub(crate) fn get(&self, slot: &S) -> Option<V> {
        let mut line = self.line(slot).lock();
        if let Some((_, value)) = line.iter().flatten().find(|(held, _)| held == slot) {
            return Some(value.clone());
        }
        let value = self.back.get(slot)?;
        line.rotate_right(1);
        line[0] = Some((*slot, value.clone()));
        Some(value)
    }

    /// Caches `value`, in place of what `slot` held.
    pub(crate) fn insert(&self, slot: S, value: V) {
        let mut line = self.line(&slot).lock();
        self.back.insert(slot, value);
        forget(&mut line, &slot);
    }

    pub(crate) fn remove(&self, slot: &S) {
        let mut line = self.line(slot).lock();
        self.back.remove(slot);
        forget(&mut line, slot);
    }

    pub(crate) fn clear(&self) {
        self.back.clear();
        for line in &*self.front {
            *line.0.lock() = [None, None];
        }
    }

    /// Keys held (the front only holds keys quick_cache holds or held).
    pub(crate) fn len(&self) -> usize {
        self.back.len()
    }
}

fn forget<S: Eq, V>(line: &mut [Option<(S, V)>; WAYS], slot: &S) {
    for way in line.iter_mut() {
        if way.as_ref().is_some_and(|(held, _)| held == slot) {
            *way = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A slot whose line is chosen by the test.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    struct TestSlot(u64, u64);

    impl Slot for TestSlot {
        fn line_bits(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn a_line_holds_two_keys_and_a_third_is_still_found_behind_it() {
        let cache = KeyCache::new(64);
        let slots = [TestSlot(3, 1), TestSlot(3, 2), TestSlot(3, 3)];
        for (n, slot) in slots.iter().enumerate() {
            cache.insert(*slot, n);
        }
        for _ in 0..3 {
            for (n, slot) in slots.iter().enumerate() {
                assert_eq!(cache.get(slot), Some(n));
            }
        }
        assert_eq!(cache.get(&TestSlot(3, 4)), None);
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_removed_or_replaced_key_is_not_served_from_the_front() {
        let cache = KeyCache::new(64);
        let (a, b) = (TestSlot(5, 1), TestSlot(5, 2));
        cache.insert(a, "a1");
        cache.insert(b, "b1");
        assert_eq!((cache.get(&a), cache.get(&b)), (Some("a1"), Some("b1")));
        cache.insert(a, "a2");
        assert_eq!(cache.get(&a), Some("a2"));
        cache.remove(&b);
        assert_eq!(cache.get(&b), None);
        cache.clear();
        assert_eq!((cache.get(&a), cache.len()), (None, 0));
    }

    #[test]
    fn the_front_stays_within_its_memory() {
        assert_eq!(std::mem::size_of::<Line<TestSlot, std::sync::Arc<()>>>(), 64);
        assert_eq!(KeyCache::<TestSlot, u8>::new(10_000).front.len(), 16_384);
        assert_eq!(KeyCache::<TestSlot, u8>::new(1_000_000).front.len(), MAX_LINES);
        assert_eq!(KeyCache::<TestSlot, u8>::new(0).front.len(), 1);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Insert(u64, u32),
        Remove(u64),
        Get(u64),
        Clear,
    }

    fn step() -> impl Strategy<Value = Step> {
        // Eight keys over two lines of a four-line front: lines overflow.
        prop_oneof![
            (0u64..8, any::<u32>()).prop_map(|(key, value)| Step::Insert(key, value)),
            (0u64..8).prop_map(Step::Remove),
            (0u64..8).prop_map(Step::Get),
            Just(Step::Clear),
        ]
    }

    proptest! {
        /// While quick_cache has room (64 keys, 8 used), the cache answers
        /// as a map does.
        #[test]
        fn it_answers_as_a_map(steps in proptest::collection::vec(step(), 1..200)) {
            let cache = KeyCache::new(64);
            let mut model = HashMap::new();
            let slot = |key: u64| TestSlot(key % 2, key);
            for step in steps {
                match step {
                    Step::Insert(key, value) => {
                        cache.insert(slot(key), value);
                        model.insert(key, value);
                    }
                    Step::Remove(key) => {
                        cache.remove(&slot(key));
                        model.remove(&key);
                    }
                    Step::Get(key) => prop_assert_eq!(cache.get(&slot(key)), model.get(&key).copied()),
                    Step::Clear => {
                        cache.clear();
                        model.clear();
                    }
                }
            }
        }
    }
}
