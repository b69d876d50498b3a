//! The process's allocator, as the agent and the in-process profiler use it.

/// Returns the free pages of the allocator's heaps to the kernel.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`release_free_heap`], only when the allocator holds at least
/// `min_free` bytes free: trimming a few pages costs more CPU (the walk,
/// then the faults that bring them back) than the memory is worth.
pub fn release_free_heap_over(min_free: usize) {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 has no preconditions.
        let free = unsafe { libc::mallinfo2() }.fordblks;
        if free >= min_free {
            release_free_heap();
        }
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = min_free;
}
