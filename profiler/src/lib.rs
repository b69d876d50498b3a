//! smolder: a continuous profiler for Linux that speaks OpenTelemetry
//! Profiles.
//!
//! This crate is the front of the project: the `smolder` binary (feature
//! `cli`, on by default), the eBPF sampler and agent (features `sampler`,
//! `agent`), and the in-process profiler, [`Profiler`], which a program uses
//! to profile itself without root or an agent. Profiles are always the OTLP
//! `ProfilesData` of [`profiles`]; flamegraphs come from [`flamegraph`] and
//! symbols from [`symbolizer`], whose process model is the one way any part
//! of smolder reads a running process.
//!
//! ```no_run
//! let guard = smolder::Profiler::builder().frequency_hz(99).start()?;
//! // ... the work to profile ...
//! let profile = guard.stop()?;
//! profile.write_flamegraph("profile.svg")?;
//! # Ok::<(), smolder::ProfilerError>(())
//! ```
//!
//! Any profile, from any input, renders the same way:
//!
//! ```
//! use smolder::profiles::{read_folded, write_profile, Format};
//!
//! let profile = read_folded("main;parse;lex 7\nmain;eval 3\n").unwrap();
//! let mut svg = Vec::new();
//! smolder::flamegraph::render(&profile, &Default::default(), &mut svg).unwrap();
//! assert!(String::from_utf8(svg).unwrap().contains("parse"));
//! let pprof = write_profile(&profile, Format::Pprof).unwrap();
//! assert!(!pprof.is_empty());
//! ```

pub use smolder_flamegraph as flamegraph;
pub use smolder_profiles_proto as profiles;
pub use smolder_symbolizer as symbolizer;

mod heap;
pub mod inprocess;
pub mod output;
pub mod pipeline;
pub mod python;

pub use inprocess::{
    with_labels, Profile, ProfileStats, Profiler, ProfilerBuilder, ProfilerError, ProfilerGuard,
    SamplerKind,
};
#[cfg(feature = "tracing")]
pub use inprocess::{TracingLayer, SPAN_NAME_KEY};

#[cfg(feature = "sampler")]
pub mod sampler;

#[cfg(feature = "exporter")]
pub mod exporter;

#[cfg(feature = "agent")]
pub mod agent;

pub mod unwind;
