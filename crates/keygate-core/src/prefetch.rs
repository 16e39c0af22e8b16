//! A hint to the CPU: start bringing a value's cache line in, and go on.
//!
//! A decision over 10,000 keys reads several lines no cache holds (the key,
//! its checks, its counter, its id). A plain read of such a line makes the
//! next locked instruction (any `Arc` count, lock or `arc_swap` load) wait
//! for it; a prefetch does not, so the line arrives while other work runs
//! (BENCHMARKS.md, "Prefetched lines").

/// Starts loading the cache line that holds the byte `at` points to (a
/// reference to a value will do). Reads nothing the program can see and
/// never faults, whatever the address: a no-op where the target has no
/// prefetch instruction.
#[inline(always)]
pub fn prefetch<T: ?Sized>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `prefetcht0` is part of SSE, which every x86_64 CPU has, and
    // it neither reads memory the program sees nor faults on any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefetch_changes_nothing_it_points_at() {
        let values = vec![7u64; 64];
        prefetch(&values[..]);
        prefetch("text");
        prefetch(values.as_ptr().wrapping_add(1 << 40));
        assert!(values.iter().all(|&v| v == 7));
    }
}
