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
    Ok(())
}
