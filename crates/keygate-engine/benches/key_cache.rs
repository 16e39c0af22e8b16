//! The key cache's probe with many keys, where each lookup misses the CPU's
//! caches: quick_cache (what the verifier uses: control bytes, then an
//! index, then a slab slot, then the key) against a DashMap keyed by the
//! same 128-bit slot whose hash is the slot itself (control bytes, then the
//! bucket holding the pointer, then the key), and against scc's
//! `HashCache`, which keeps the pointer beside its tag too and evicts the
//! least recently used entry of a full 32-way bucket, even with room
//! elsewhere (it is looked up only for the keys it kept). Each lookup reads
//! the value, as a decision reads the cached key, and between lookups the
//! loop reads 16 lines of a 4 MiB buffer, as the kernel's work between two
//! requests evicts the caches (BENCHMARKS.md, "What is left for 4 / 4a",
//! and "a library cache with the pointer beside its tag").
//!
//! Run: `cargo bench -p keygate-engine --bench key_cache`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hash::{BuildHasher, Hasher};
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// About the size of a cached key (crates/keygate-engine/src/verifier/cached_key.rs).
struct Value {
    first: u64,
    rest: [u64; 24],
}

type Slot = (u64, u64);

/// The slot is the first 128 bits of a SHA-256: its words are already random.
#[derive(Default, Clone, Copy)]
struct SlotIsHash;

struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, word: u64) {
        self.0 ^= word;
    }
}

impl BuildHasher for SlotIsHash {
    type Hasher = SlotHasher;
    fn build_hasher(&self) -> SlotHasher {
        SlotHasher(0)
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Reads 16 lines of `buffer`, a page and a line apart, from `at`.
fn pollute(buffer: &[u8], at: &mut usize) {
    for _ in 0..16 {
        *at = (*at + 4096 + 64) % buffer.len();
        black_box(buffer[*at]);
    }
}

/// Random lookups, each followed by the caches' pollution.
struct Walk<'b> {
    state: u64,
    at: usize,
    buffer: &'b [u8],
}

impl Walk<'_> {
    /// Finds a random one of `among` with `find`, and reads its value as a
    /// decision reads the cached key.
    fn lookup(&mut self, among: &[Slot], find: impl Fn(&Slot) -> Arc<Value>) {
        let slot = among[(xorshift(&mut self.state) % among.len() as u64) as usize];
        let value = find(&slot);
        black_box(value.first + value.rest[12]);
        pollute(self.buffer, &mut self.at);
    }
}

fn bench(c: &mut Criterion) {
    let buffer = vec![1u8; 4 << 20];
    let mut group = c.benchmark_group("key_cache");
    for keys in [10_000usize, 1_000_000] {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let slots: Vec<Slot> = (0..keys)
            .map(|_| (xorshift(&mut state), xorshift(&mut state)))
            .collect();
        let quick = quick_cache::sync::Cache::<Slot, Arc<Value>>::new(keys * 2);
        let dash = dashmap::DashMap::<Slot, Arc<Value>, SlotIsHash>::with_hasher(SlotIsHash);
        let scc =
            scc::HashCache::<Slot, Arc<Value>, SlotIsHash>::with_capacity_and_hasher(keys * 2, keys * 2, SlotIsHash);
        for slot in &slots {
            let value = Arc::new(Value {
                first: slot.0,
                rest: [slot.1; 24],
            });
            quick.insert(*slot, value.clone());
            // A full bucket evicts an entry to make room: `kept` is what it holds.
            let _ = scc.put_sync(*slot, value.clone());
            dash.insert(*slot, value);
        }
        let kept: Vec<Slot> = slots.iter().copied().filter(|slot| scc.contains_sync(slot)).collect();
        eprintln!("scc::HashCache kept {} of {keys} keys", kept.len());
        let mut walk = Walk {
            state,
            at: 0,
            buffer: &buffer,
        };
        group.bench_function(BenchmarkId::new("quick_cache", keys), |b| {
            b.iter(|| walk.lookup(&slots, |slot| quick.get(slot).unwrap()))
        });
        group.bench_function(BenchmarkId::new("dashmap", keys), |b| {
            b.iter(|| walk.lookup(&slots, |slot| dash.get(slot).unwrap().clone()))
        });
        group.bench_function(BenchmarkId::new("scc", keys), |b| {
            b.iter(|| walk.lookup(&kept, |slot| scc.read_sync(slot, |_, value| value.clone()).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
