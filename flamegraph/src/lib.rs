//! Flamegraphs (in progress).
