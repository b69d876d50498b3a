//! The pipeline from raw stacks to profiles, shared by `smolder record`, the
//! agent and the in-process profiler: process mappings (`maps`), process
//! metadata (`process`) and the symbolizing aggregator (`aggregate`). No
//! eBPF here: samples come in as plain [`StackSample`]s.

pub mod aggregate;
pub mod maps;
pub mod process;

pub use aggregate::{Aggregator, AggregatorStats, StackSample};
pub use maps::{MapEntry, ProcessMaps};
pub use process::ProcessInfo;
