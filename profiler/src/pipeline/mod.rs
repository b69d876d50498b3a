//! The pipeline from raw stacks to profiles, shared by `smolder record`, the
//! agent and the in-process profiler: the sampling loop's state
//! (`recording`), the symbolizing aggregator (`aggregate`) and the resource
//! attributes of a process (`process`). A process's mappings, files and
//! facts are read through the symbolizer's process model
//! ([`smolder_symbolizer::process`]). No eBPF here: every producer hands
//! over the one [`Sample`] shape.

pub mod aggregate;
pub mod process;
pub mod recording;
pub mod snapshots;

pub use aggregate::{Aggregator, AggregatorStats, AheadDone, AheadJob, Sample};
pub use process::resource_attributes;
pub use recording::{Interval, ProcessFilter, Recording, RecordingStats};
pub use smolder_symbolizer::process::{Mapping, ProcessMaps};
pub use smolder_symbolizer::ProcessFacts;
pub use snapshots::{ProcessSnapshots, SnapshotStats};

/// Now, in unix nanoseconds (the samples' clock); 0 before 1970, saturated
/// past 2554.
pub(crate) fn unix_nano_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
