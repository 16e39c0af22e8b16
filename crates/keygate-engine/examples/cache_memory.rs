//! Memory per cached key (issue 18): the heap bytes the engine keeps for each
//! key it has verified, counted by a global allocator that tallies live bytes.
//!
//!     cargo run --release -p keygate-engine --example cache_memory -- 100000 1000000
//!
//! For each count: that many keys are created through the engine (no HTTP)
//! in one workspace on a SQLite store in a temporary directory (on `/dev/shm`
//! when there is one: a million commits at `synchronous = FULL` take minutes
//! on a disk, and the store is not what is measured), then each is
//! verified once, as a node does when its traffic first arrives. The figure is
//! the growth of live Rust heap bytes during the verifications, divided by the
//! number of keys: the cache entry, the key and its workspace as cached, the
//! usage tally, the limiter counter and the memoized limit checks. SQLite's
//! own memory (C `malloc`) is not counted: the store is not what is measured.
//! The growth of the resident set over the same span is printed too: it adds
//! the allocator's own overhead (and SQLite's page cache, which reads grow).
//! With `CACHE_MEMORY_SIZES=1` it also prints, by allocation size, what each
//! key added: which parts a key costs (BENCHMARKS.md lists them). Last, the
//! same growth after one usage flush: what a node in use keeps per key
//! between flushes. With `CACHE_MEMORY_MINUTES=N` each key is then verified
//! once a minute for N more minutes on the engine's clock, with a usage
//! flush each minute, as under steady use: its counter holds a bucket for
//! each minute of its window (the plan's limit is per hour) that saw a
//! request, and the figure says what that costs.

// A measurement tool: a failure should stop it where it happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate_core::limits::Plan;
use keygate_core::throttle::FailurePolicy;
use keygate_core::KeyFormat;
use keygate_engine::admin::{NewKey, NewWorkspace};
use keygate_engine::plans::PlanBook;
use keygate_engine::{Actor, Engine, EngineSettings, ManualClock, VerifyRequest};
use keygate_store::sqlite::SqliteStore;

/// Live heap bytes: allocations minus frees.
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Live allocations by size (the last slot counts every larger one), for
/// the breakdown `CACHE_MEMORY_SIZES=1` prints: which allocations each key adds.
static BY_SIZE: [AtomicIsize; SIZES] = [const { AtomicIsize::new(0) }; SIZES];
const SIZES: usize = 2049;

fn count_size(size: usize, delta: isize) {
    BY_SIZE[size.min(SIZES - 1)].fetch_add(delta, Ordering::Relaxed);
}

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        count_size(layout.size(), 1);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        count_size(layout.size(), -1);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        count_size(layout.size(), -1);
        count_size(new_size, 1);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn settings(capacity: u64) -> EngineSettings {
    let plan: Plan = serde_json::from_value(serde_json::json!({
        "limits": [{"requests": 100_000_000, "per": "1h"}]
    }))
    .unwrap();
    EngineSettings {
        verifier: keygate_engine::VerifierSettings {
            key_format: KeyFormat::new("kg", &["live".into(), "test".into()]).unwrap(),
            cache_capacity: capacity,
            // A day, so that no key is re-read during `CACHE_MEMORY_MINUTES`.
            cache_ttl: Duration::from_secs(86_400),
            cache_ttl_unheard: Duration::from_secs(86_400),
            max_stale: Duration::from_secs(300),
            store_timeout: Duration::from_secs(5),
            negative_cache_ttl: Duration::from_secs(10),
            legacy_keys: false,
            failed_attempts: FailurePolicy {
                max_failures: 1_000_000,
                window: Duration::from_secs(60),
            },
            plans: PlanBook::new([("bench".to_owned(), plan)].into_iter().collect(), None),
            roles: Default::default(),
        },
        admin: keygate_engine::admin::AdminSettings {
            default_rotation_grace: Duration::from_secs(3600),
            max_metadata_bytes: 4096,
            on_leak: keygate_core::model::OnLeak::Revoke,
            leak_grace: Duration::from_secs(3600),
        },
        usage: keygate_engine::usage::UsageSettings::default(),
        ..Default::default()
    }
}

async fn measure(count: usize) {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let store = Arc::new(
        SqliteStore::open(&format!("sqlite://{}/k.db", dir.path().display()))
            .await
            .unwrap(),
    );
    let limiter = Arc::new(keygate_limiter::memory::MemoryLimiter::new(count as u64 * 2));
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let engine = Engine::new(store, clock.clone(), limiter, settings(count as u64));
    let workspace = engine
        .admin()
        .create_workspace(
            &Actor::cli(),
            NewWorkspace {
                name: "bench".into(),
                // `CACHE_MEMORY_PLAN=none`: no limits, to see what they cost.
                plan: (std::env::var("CACHE_MEMORY_PLAN").as_deref() != Ok("none")).then(|| "bench".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut keys = Vec::with_capacity(count);
    for index in 0..count {
        let new = NewKey {
            name: format!("k{index}"),
            scopes: vec!["bench:read".into()],
            ..Default::default()
        };
        let (_, plaintext) = engine
            .admin()
            .create_key(&Actor::cli(), &workspace.id, new)
            .await
            .unwrap();
        keys.push(plaintext.expose().to_owned());
    }
    let created_in = started.elapsed();
    let (before, resident_before) = (LIVE.load(Ordering::Relaxed), resident_bytes());
    let sizes_before: Vec<isize> = BY_SIZE.iter().map(|n| n.load(Ordering::Relaxed)).collect();
    verify_each(&engine, &keys).await;
    let grown = LIVE.load(Ordering::Relaxed) - before;
    let resident = resident_bytes() - resident_before;
    println!(
        "{count} keys (created in {:.0} s): {:.1} MiB of heap for the cached keys, {:.1} bytes per key; resident set {} bytes per key",
        created_in.as_secs_f64(),
        grown as f64 / (1024.0 * 1024.0),
        grown as f64 / count as f64,
        resident / count as isize
    );
    if std::env::var_os("CACHE_MEMORY_SIZES").is_some() {
        print_sizes(&sizes_before, count);
    }
    // What a node in use keeps between flushes: the flush list is emptied,
    // and whatever the recorder remembers per key stays.
    engine.usage().flush().await.unwrap();
    let after_flush = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "after a usage flush: {:.1} bytes per key",
        after_flush as f64 / count as f64
    );
    let minutes: u32 = std::env::var("CACHE_MEMORY_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if minutes > 0 {
        for _ in 0..minutes {
            clock.advance(chrono::Duration::minutes(1));
            verify_each(&engine, &keys).await;
            engine.usage().flush().await.unwrap();
        }
        let in_use = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "after {minutes} more minutes of a request a key each, flushed: {:.1} bytes per key",
            in_use as f64 / count as f64
        );
    }
}

/// Verifies each key once, as a request from 127.0.0.1.
async fn verify_each(engine: &Engine, keys: &[String]) {
    let scopes = ["bench:read".to_owned()];
    for key in keys {
        let request = VerifyRequest {
            required_scopes: &scopes,
            ..VerifyRequest::new(key, Some([127, 0, 0, 1].into()))
        };
        assert!(engine.verifier().verify(request).await.is_ok());
    }
}

/// Each allocation size that grew by at least one in ten keys: how many per
/// key, and the bytes per key they make.
fn print_sizes(before: &[isize], count: usize) {
    for (size, (now, before)) in BY_SIZE.iter().zip(before).enumerate() {
        let grown = now.load(Ordering::Relaxed) - before;
        if grown.unsigned_abs() * 10 >= count {
            let per_key = grown as f64 / count as f64;
            println!(
                "  {size:>5} bytes x {per_key:.2} per key = {:.0} bytes",
                per_key * size as f64
            );
        }
    }
}

/// The process's resident set (Linux), in bytes.
fn resident_bytes() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: isize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let counts: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    println!(
        "inline sizes: CachedKey {} bytes (ApiKey {}, Workspace {})",
        std::mem::size_of::<keygate_engine::CachedKey>(),
        std::mem::size_of::<keygate_core::model::ApiKey>(),
        std::mem::size_of::<keygate_core::model::Workspace>()
    );
    for count in if counts.is_empty() { vec![100_000] } else { counts } {
        measure(count).await;
    }
}
