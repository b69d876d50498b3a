//! The agent's one memory limit and how its caches and tables share it.
//!
//! Owns the split of `memory_limit` into the budgets the agent's parts are
//! started with, and the guard that reads the agent's resident memory after
//! each interval and trims the caches when it comes near the limit. Touches
//! nothing itself: the agent hands each part its budget and calls
//! [`MemoryGuard::check`].

/// The most kernel memory the unwind rows take, whatever the limit.
const MAX_UNWIND_TABLE_BYTES: u64 = 28 << 20;

/// The shares of one memory limit, in bytes.
///
/// The limit bounds the agent's resident memory. What is not shared out
/// here is left for the agent's own code, thread stacks, the allocator's
/// slack, sample buffers and the symbolization of one interval. The
/// kernel memory of the unwind-row map is sized from the limit too (and
/// reported beside the RSS), but it is not resident in the agent: rows are
/// written through a mapping of the pages being written, then unmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    pub limit: u64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget { limit }
    }

    /// Parsed binaries kept between intervals (the symbolizer's cache).
    pub fn symbol_cache_bytes(&self) -> usize {
        usize::try_from(self.limit / 4).unwrap_or(usize::MAX)
    }

    /// Kernel memory for unwind-table rows (`UNWIND_ROWS`): half the
    /// limit, at most 28 MiB (1.8 M rows: the largest shared library on a
    /// developer's host, libLLVM, takes 1.4 M), so that with the rings and
    /// hash maps (3.4 MiB) the BPF maps stay within 32 MiB. Not resident in
    /// the agent.
    pub fn unwind_table_bytes(&self) -> u64 {
        (self.limit / 2).min(MAX_UNWIND_TABLE_BYTES)
    }

    /// What one unwind table build may take of the agent's memory while it
    /// runs (the binary's CFI copied in, then its rows): a quarter of the
    /// limit. With the default limit, libLLVM (8.7 MiB of CFI, 1.4 M rows,
    /// 32 MiB to build) is walked by frame pointers; raising the limit to
    /// 128 MiB builds it.
    pub fn unwind_build_bytes(&self) -> usize {
        usize::try_from(self.limit / 4).unwrap_or(usize::MAX)
    }

    /// Distinct stacks one interval gathers before new ones are dropped
    /// (counted), at the aggregator's estimate of their size.
    pub fn interval_stack_bytes(&self) -> usize {
        usize::try_from(self.limit / 16).unwrap_or(usize::MAX)
    }

    /// Profiles waiting for the OTLP endpoint.
    pub fn export_queue_bytes(&self) -> usize {
        usize::try_from(self.limit / 8).unwrap_or(usize::MAX)
    }

    /// Renderings of `/profile` and `/view` kept for reloads.
    pub fn render_cache_bytes(&self) -> usize {
        usize::try_from(self.limit / 16).unwrap_or(usize::MAX)
    }

    /// One merged range of `/profile` or `/view` and its rendering, made
    /// one at a time: it sets how many distinct stacks a merge holds
    /// before folding the lightest into "[other stacks]".
    pub fn range_view_bytes(&self) -> usize {
        usize::try_from(self.limit / 8).unwrap_or(usize::MAX)
    }

    /// Resident memory above which the caches are emptied.
    pub fn trim_above(&self) -> u64 {
        self.limit / 8 * 7
    }
}

/// Reads the agent's resident memory and says when to trim.
#[derive(Debug, Default)]
pub struct MemoryGuard {
    /// Times the caches were emptied because of the limit.
    pub trims: u64,
    /// The highest resident memory seen at a check, in bytes.
    pub peak_rss: u64,
}

impl MemoryGuard {
    /// Resident memory now (`/proc/self/statm`), in bytes.
    pub fn rss() -> Option<u64> {
        let text = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        Some(pages * page)
    }

    /// Hands freed heap pages back to the kernel; then, when the resident
    /// memory is still above `budget.trim_above()`, returns it (the caller
    /// empties its caches and calls [`MemoryGuard::after_trim`]).
    pub fn check(&mut self, budget: &MemoryBudget) -> Option<u64> {
        release_free_heap();
        let rss = MemoryGuard::rss()?;
        self.peak_rss = self.peak_rss.max(rss);
        (rss > budget.trim_above()).then_some(rss)
    }

    /// The caches were emptied: count it, give their memory back, and log.
    pub fn after_trim(&mut self, budget: &MemoryBudget, before: u64) {
        self.trims += 1;
        release_free_heap();
        let after = MemoryGuard::rss().unwrap_or(0);
        tracing::warn!(
            "resident memory {} MiB came near the memory limit of {} MiB: caches emptied \
             (now {} MiB); raise memory_limit if this repeats",
            before >> 20,
            budget.limit >> 20,
            after >> 20
        );
    }
}

/// Limits the allocator to two arenas (threads that allocate at once share
/// them instead of each keeping its own free memory), so that memory freed
/// after an interval can go back to the kernel, and gives every block of
/// 128 KiB or more its own mapping, returned as soon as it is freed (by
/// default the threshold grows to the largest block freed, and a debug
/// section inflated at an interval's end then stays in the heap: 20 MiB
/// more at the peak under a compiler's churn). Call before threads start.
pub fn limit_allocator_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator settings.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

pub use crate::heap::{release_free_heap, release_free_heap_over};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shares_stay_within_the_limit() {
        let b = MemoryBudget::new(64 << 20);
        let shared = b.symbol_cache_bytes() as u64
            + b.interval_stack_bytes() as u64
            + b.export_queue_bytes() as u64
            + b.render_cache_bytes() as u64
            + b.range_view_bytes() as u64;
        assert!(shared < b.trim_above());
        assert_eq!(b.unwind_table_bytes(), 28 << 20);
        assert_eq!(MemoryBudget::new(32 << 20).unwind_table_bytes(), 16 << 20);
        assert_eq!(MemoryBudget::new(1 << 30).unwind_table_bytes(), 28 << 20);
    }

    #[test]
    fn resident_memory_is_read() {
        let rss = MemoryGuard::rss().expect("statm");
        assert!(rss > 0);
        let mut guard = MemoryGuard::default();
        // A limit far above this test's memory: nothing to trim.
        assert_eq!(guard.check(&MemoryBudget::new(1 << 40)), None);
        assert!(guard.peak_rss > 0);
        assert!(guard.check(&MemoryBudget::new(1)).is_some());
    }
}
