//! The pipeline from raw stacks to profiles, shared by `smolder record`, the
//! agent and the in-process profiler: process metadata (`process`) and the
//! symbolizing aggregator (`aggregate`). A process's mappings and files are
//! read through the symbolizer's process model
//! ([`smolder_symbolizer::process`]). No eBPF here: samples come in as plain
//! [`StackSample`]s.

pub mod aggregate;
pub mod process;

pub use aggregate::{Aggregator, AggregatorStats, StackSample};
pub use process::ProcessInfo;
pub use smolder_symbolizer::process::{Mapping, ProcessMaps};
