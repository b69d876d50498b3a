//! Counters of what the sampler saw and lost: the kernel program's per-CPU
//! `STATS` array summed over CPUs, plus what user space parsed or rejected.
//!
//! Owns only reading and adding up; the indexes are declared in `sampler.h`
//! and mirrored in `raw.rs`.

use aya::maps::{Map, MapError, PerCpuArray};

use super::raw;

/// Totals since the sampler started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SamplerStats {
    /// perf events that passed the PID filter, i.e. samples taken.
    pub samples: u64,
    /// Samples lost because the ring buffer was full.
    pub lost: u64,
    /// Exec/exit records lost because the ring buffer was full.
    pub events_lost: u64,
    /// User stack walks that stopped on an unreadable frame.
    pub user_read_faults: u64,
    /// User stack walks that hit the frame limit.
    pub truncated: u64,
    /// Samples whose kernel stack could not be read.
    pub kernel_stack_errors: u64,
    /// Records read from the ring buffer and decoded.
    pub events_parsed: u64,
    /// Records read from the ring buffer that failed to decode.
    pub events_malformed: u64,
    /// Samples with a user PC in no loaded mapping (partial: the process
    /// or library was new; its tables are then loaded).
    pub user_unknown_mapping: u64,
    /// Samples whose user walk stopped on a PC without a usable rule.
    pub user_no_unwind_info: u64,
    /// Samples that met an evicted table (partial; reloaded).
    pub user_table_missing: u64,
    /// User frames unwound with a table row, and with the frame pointer.
    pub table_frames: u64,
    pub fp_frames: u64,
    /// Debug stack copies lost (ring buffer full).
    pub stack_copies_lost: u64,
    /// Off-CPU: blocking switch-outs of sampled threads, those left out by
    /// the probability, those that ran again within the minimum blocked
    /// time, waits recorded, and records lost (ring buffer full).
    pub off_cpu_switches: u64,
    pub off_cpu_skipped_probability: u64,
    pub off_cpu_skipped_short: u64,
    pub off_cpu_recorded: u64,
    pub off_cpu_lost: u64,
    /// Off-CPU waits dropped because the thread was back in user space
    /// before a system call returned (it blocked outside one, e.g. in a
    /// page fault), so the stack it blocked with is unknown.
    pub off_cpu_unmatched: u64,
    /// Exec/exit records lost on the process prefetcher's own ring (full):
    /// those processes are read only when the main reader gets to them.
    pub prefetch_events_lost: u64,
    /// Unwind tables in the kernel's maps now, and the bytes of their rows.
    pub unwind_tables: u64,
    pub unwind_table_bytes: u64,
    /// Tables evicted to stay under the memory cap, tables that could not
    /// be built (frame pointers for those binaries), processes loaded.
    pub unwind_tables_evicted: u64,
    pub unwind_table_failures: u64,
    pub unwind_processes_loaded: u64,
    /// Python frames the kernel walker emitted, and Python walks it ended
    /// because memory was not laid out as the interpreter's layout says.
    pub python_frames: u64,
    pub python_layout_stops: u64,
}

/// Totals of two sampler lifetimes (the agent restarts its sampler):
/// counters add up, gauges (tables resident now) are the later one's.
impl std::ops::AddAssign for SamplerStats {
    fn add_assign(&mut self, b: SamplerStats) {
        self.samples += b.samples;
        self.lost += b.lost;
        self.events_lost += b.events_lost;
        self.user_read_faults += b.user_read_faults;
        self.truncated += b.truncated;
        self.kernel_stack_errors += b.kernel_stack_errors;
        self.events_parsed += b.events_parsed;
        self.events_malformed += b.events_malformed;
        self.user_unknown_mapping += b.user_unknown_mapping;
        self.user_no_unwind_info += b.user_no_unwind_info;
        self.user_table_missing += b.user_table_missing;
        self.table_frames += b.table_frames;
        self.fp_frames += b.fp_frames;
        self.stack_copies_lost += b.stack_copies_lost;
        self.off_cpu_switches += b.off_cpu_switches;
        self.off_cpu_skipped_probability += b.off_cpu_skipped_probability;
        self.off_cpu_skipped_short += b.off_cpu_skipped_short;
        self.off_cpu_recorded += b.off_cpu_recorded;
        self.off_cpu_lost += b.off_cpu_lost;
        self.off_cpu_unmatched += b.off_cpu_unmatched;
        self.prefetch_events_lost += b.prefetch_events_lost;
        self.unwind_tables = b.unwind_tables;
        self.unwind_table_bytes = b.unwind_table_bytes;
        self.unwind_tables_evicted += b.unwind_tables_evicted;
        self.unwind_table_failures += b.unwind_table_failures;
        self.unwind_processes_loaded += b.unwind_processes_loaded;
        self.python_frames += b.python_frames;
        self.python_layout_stops += b.python_layout_stops;
    }
}

impl std::ops::Add for SamplerStats {
    type Output = SamplerStats;
    fn add(mut self, b: SamplerStats) -> SamplerStats {
        self += b;
        self
    }
}

/// Reads the kernel-side counters from the `STATS` map.
pub(super) fn read_kernel(map: &Map, into: &mut SamplerStats) -> Result<(), MapError> {
    let array: PerCpuArray<&aya::maps::MapData, u64> = PerCpuArray::try_from(map)?;
    if array.len() != raw::STAT_COUNT {
        tracing::warn!(
            "STATS map has {} counters, sampler.h declares {}: is sampler.bpf.o stale?",
            array.len(),
            raw::STAT_COUNT
        );
    }
    let sum = |index: u32| -> Result<u64, MapError> {
        Ok(array
            .get(&index, 0)?
            .iter()
            .fold(0u64, |a, v| a.wrapping_add(*v)))
    };
    into.samples = sum(raw::STAT_SAMPLES)?;
    into.lost = sum(raw::STAT_RINGBUF_FULL)?;
    into.user_read_faults = sum(raw::STAT_USER_READ_FAULTS)?;
    into.truncated = sum(raw::STAT_USER_TRUNCATED)?;
    into.kernel_stack_errors = sum(raw::STAT_KERNEL_STACK_ERRORS)?;
    into.events_lost = sum(raw::STAT_EVENTS_LOST)?;
    if array.len() >= raw::STAT_COUNT {
        into.user_unknown_mapping = sum(raw::STAT_USER_UNKNOWN_MAPPING)?;
        into.user_no_unwind_info = sum(raw::STAT_USER_NO_UNWIND_INFO)?;
        into.user_table_missing = sum(raw::STAT_USER_TABLE_MISSING)?;
        into.table_frames = sum(raw::STAT_TABLE_FRAMES)?;
        into.fp_frames = sum(raw::STAT_FP_FRAMES)?;
        into.stack_copies_lost = sum(raw::STAT_STACK_COPIES_LOST)?;
        into.off_cpu_switches = sum(raw::STAT_OFF_CPU_SWITCHES)?;
        into.off_cpu_skipped_probability = sum(raw::STAT_OFF_CPU_SKIPPED_PROBABILITY)?;
        into.off_cpu_skipped_short = sum(raw::STAT_OFF_CPU_SKIPPED_SHORT)?;
        into.off_cpu_recorded = sum(raw::STAT_OFF_CPU_RECORDED)?;
        into.off_cpu_lost = sum(raw::STAT_OFF_CPU_LOST)?;
        into.off_cpu_unmatched = sum(raw::STAT_OFF_CPU_UNMATCHED)?;
        into.prefetch_events_lost = sum(raw::STAT_PREFETCH_EVENTS_LOST)?;
    }
    Ok(())
}
