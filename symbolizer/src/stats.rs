//! Counters of what the symbolizer parsed, cached, resolved and failed on.
//!
//! Owned by one [`crate::Symbolizer`]; updated with relaxed atomics from any
//! thread and read as a [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a symbolizer's counters, from [`crate::Symbolizer::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// ELF objects whose headers were parsed (one per distinct build-id or file).
    pub objects_parsed: u64,
    /// DWARF contexts built (lazily, on the first address that needs one).
    pub dwarf_parsed: u64,
    /// Compilation units parsed alone, for the addresses that fell in
    /// them (the object's other units are not parsed).
    pub dwarf_units_parsed: u64,
    /// Symbol tables (`.symtab` + `.dynsym`) read.
    pub symtabs_parsed: u64,
    /// Separate debug files found by build-id or `.gnu_debuglink`.
    pub debug_files_found: u64,
    /// Object lookups answered from the cache.
    pub cache_hits: u64,
    /// Object lookups that had to open a file.
    pub cache_misses: u64,
    /// Objects dropped from the cache to stay within the byte budget.
    pub cache_evictions: u64,
    /// Estimated bytes held by the cache now.
    pub cache_bytes: u64,
    /// Addresses asked for.
    pub addresses: u64,
    /// Addresses named from DWARF.
    pub resolved_dwarf: u64,
    /// Addresses named from `.symtab` or `.dynsym` only.
    pub resolved_symtab: u64,
    /// Addresses named from a JIT perf map.
    pub resolved_perf_map: u64,
    /// Addresses named from kallsyms.
    pub resolved_kernel: u64,
    /// Addresses for which no name was found.
    pub unresolved: u64,
    /// Files or `/proc` entries that could not be read.
    pub io_errors: u64,
    /// Files that are not readable ELF (truncated, corrupt).
    pub object_errors: u64,
    /// DWARF that failed to parse or to answer a lookup.
    pub dwarf_errors: u64,
    /// `.gnu_debuglink` candidates rejected because of a CRC32 mismatch.
    pub debuglink_crc_mismatches: u64,
    /// Perf map lines that could not be parsed.
    pub perf_map_errors: u64,
    /// Perf maps refused by the open rule (FIFO, symbolic link, not owned
    /// by the process's uid) or cut at their byte or line cap.
    pub perf_maps_refused: u64,
    /// Mapped files of processes that the open rule refused or could not
    /// open (replaced, deleted without `map_files`, FIFO, too large, outside
    /// the process's root): their frames keep the mapping and offset.
    pub files_refused: u64,
    /// Debug links refused before any lookup: a `.gnu_debuglink` that is
    /// not a plain file name, a `.gnu_debugaltlink` outside the debug root.
    pub debug_links_refused: u64,
    /// Compressed sections whose declared size is over the cap: not inflated.
    pub decompression_refused: u64,
    /// Files of processes read without their debug sections (and, if still
    /// too large, without `.symtab`) because these were over the cache's
    /// byte budget: their frames get names but no lines or inlined frames.
    pub objects_cut_to_budget: u64,
}

impl Stats {
    /// All counted errors together.
    pub fn errors(&self) -> u64 {
        self.io_errors
            + self.object_errors
            + self.dwarf_errors
            + self.debuglink_crc_mismatches
            + self.perf_map_errors
            + self.perf_maps_refused
            + self.files_refused
            + self.debug_links_refused
            + self.decompression_refused
    }
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                Stats {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters!(
    objects_parsed,
    dwarf_parsed,
    dwarf_units_parsed,
    symtabs_parsed,
    debug_files_found,
    cache_hits,
    cache_misses,
    cache_evictions,
    cache_bytes,
    addresses,
    resolved_dwarf,
    resolved_symtab,
    resolved_perf_map,
    resolved_kernel,
    unresolved,
    io_errors,
    object_errors,
    dwarf_errors,
    debuglink_crc_mismatches,
    perf_map_errors,
    perf_maps_refused,
    files_refused,
    debug_links_refused,
    decompression_refused,
    objects_cut_to_budget,
);

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts an error under the counter that matches its kind and logs it.
    pub(crate) fn error(&self, err: &crate::Error) {
        use crate::Error;
        let counter = match err {
            Error::Io { .. } | Error::ProcessAccess { .. } | Error::ProcessGone { .. } => {
                &self.io_errors
            }
            Error::Object { .. } | Error::BuildIdNotFound { .. } | Error::InvalidBuildId(_) => {
                &self.object_errors
            }
            Error::Dwarf { .. } => &self.dwarf_errors,
            Error::Decompression { .. } => &self.decompression_refused,
            Error::KallsymsRestricted => &self.io_errors,
        };
        Self::bump(counter);
        tracing::debug!(error = %err, "symbolizer error");
    }
}
