//! The process's allocator, as the agent and the in-process profiler use it.

/// Returns the free pages of the allocator's heaps to the kernel.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
