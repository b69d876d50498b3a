//! The errors of drawing a flamegraph.

use crate::DiffWidths;

/// Why a flamegraph could not be drawn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing to draw; nothing was written.
    #[error(
        "no samples to draw: the profile is empty, or none of its samples has the chosen \
         sample type (FlamegraphOptions::sample_type) and a positive count"
    )]
    NoSamples,
    /// The profile that gives a differential graph its frame widths is empty
    /// (the other one is not); nothing was written.
    #[error(
        "no samples to draw: the {0} profile, which gives the differential graph its frame \
         widths, is empty or has no samples of the chosen sample type; draw the other \
         profile's widths instead (FlamegraphOptions::diff_widths)"
    )]
    EmptyWidths(DiffWidths),
    /// Sample counts beyond what the SVG can show exactly.
    #[error(
        "{total} samples is too many to draw exactly (the limit is 2^53); \
         fold to a coarser sample type or split the profile"
    )]
    TooManySamples { total: u128 },
    /// The output failed; part of the SVG may have been written.
    #[error("cannot write the flamegraph SVG")]
    Write(#[source] std::io::Error),
}
