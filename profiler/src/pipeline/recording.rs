//! One sampling loop's state, shared by `smolder record`, the agent and the
//! in-process profiler: samples (and process exec/exit events) in, one
//! symbolized OTLP `ProfilesData` per interval out.
//!
//! Owns the aggregator, the interval's clock and the process filter, which
//! decides from the process's facts (read once, by the aggregator) whether
//! its samples are kept. Drivers own only where events come from and where
//! profiles go.
//!
//! ```
//! use std::sync::Arc;
//! use smolder::pipeline::{Recording, Sample};
//! use smolder::symbolizer::Symbolizer;
//!
//! let mut recording = Recording::new(Arc::new(Symbolizer::new()), 99);
//! recording.add(&Sample {
//!     pid: std::process::id(),
//!     tid: 1,
//!     thread_name: "main".into(),
//!     user: vec![0x10],
//!     ..Sample::default()
//! });
//! let interval = recording.finish_interval();
//! assert_eq!(interval.data.resource_profiles.len(), 1);
//! assert_eq!(recording.stats().samples_kept, 1);
//! ```

use std::sync::Arc;
use std::time::Duration;

use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::ProfileConfig;
use smolder_symbolizer::{ProcessFacts, Symbolizer};

use super::aggregate::{Aggregator, AggregatorStats, AheadDone, AheadJob, Sample};
use super::snapshots::ProcessSnapshots;
use super::unix_nano_now;

/// Decides from a process's facts whether its samples are kept.
pub type ProcessFilter = Arc<dyn Fn(&ProcessFacts) -> bool + Send + Sync>;

/// Counts of a recording since it started (over every interval).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordingStats {
    /// Samples offered, kept or not.
    pub samples_seen: u64,
    /// Samples the filter kept.
    pub samples_kept: u64,
    pub intervals: u64,
    /// What the aggregators met (unnamed frames, refused files, …).
    pub aggregator: AggregatorStats,
}

/// One interval's profile.
#[derive(Clone, Debug)]
pub struct Interval {
    pub data: ProfilesData,
    /// Where the interval starts, in unix nanoseconds.
    pub start_unix_nano: u64,
    pub duration: Duration,
}

/// Samples in, one `ProfilesData` per interval out.
pub struct Recording {
    aggregator: Aggregator,
    symbolizer: Arc<Symbolizer>,
    frequency_hz: u64,
    filter: Option<ProcessFilter>,
    interval_start_unix_nano: u64,
    samples_seen: u64,
    samples_kept: u64,
    intervals: u64,
    /// Stats of aggregators replaced by [`Recording::forget_processes`].
    aggregator_base: AggregatorStats,
    /// What the sampler read of processes at their exec.
    snapshots: Option<Arc<ProcessSnapshots>>,
    /// The bound on an interval's stacks ([`Recording::limiting_stack_bytes`]).
    stack_budget: Option<usize>,
}

impl Recording {
    /// A recording whose first interval starts now; `frequency_hz` is the
    /// sampling frequency the profiles state.
    pub fn new(symbolizer: Arc<Symbolizer>, frequency_hz: u64) -> Recording {
        Recording {
            aggregator: Aggregator::new(),
            symbolizer,
            frequency_hz,
            filter: None,
            interval_start_unix_nano: unix_nano_now(),
            samples_seen: 0,
            samples_kept: 0,
            intervals: 0,
            aggregator_base: AggregatorStats::default(),
            snapshots: None,
            stack_budget: None,
        }
    }

    /// Processes gone before their samples are read take their mappings,
    /// files and facts from `snapshots` (the sampler's, read at each exec:
    /// [`crate::sampler::Sampler::snapshots`]).
    pub fn with_snapshots(mut self, snapshots: Option<Arc<ProcessSnapshots>>) -> Recording {
        self.set_snapshots(snapshots);
        self
    }

    /// [`Recording::with_snapshots`], for a sampler started anew.
    pub fn set_snapshots(&mut self, snapshots: Option<Arc<ProcessSnapshots>>) {
        self.aggregator.use_snapshots(snapshots.clone());
        self.snapshots = snapshots;
    }

    /// Keeps each interval's distinct stacks within about `bytes`; samples
    /// of further new stacks are dropped and counted
    /// ([`AggregatorStats::stacks_dropped`]).
    pub fn limiting_stack_bytes(mut self, bytes: usize) -> Recording {
        self.stack_budget = Some(bytes);
        self.aggregator.limit_stack_bytes(bytes);
        self
    }

    /// The first interval starts at `unix_nano` instead of now.
    pub fn starting_at(mut self, unix_nano: u64) -> Recording {
        self.interval_start_unix_nano = unix_nano;
        self
    }

    /// Keeps only the samples of processes for which `filter` holds.
    pub fn with_filter(mut self, filter: Option<ProcessFilter>) -> Recording {
        self.filter = filter;
        self
    }

    /// Keeps what addresses were symbolized as across intervals (at most
    /// `max_entries`), see [`Aggregator::keep_symbols`].
    pub fn keeping_symbols(mut self, max_entries: usize) -> Recording {
        self.aggregator.keep_symbols(max_entries);
        self
    }

    /// An empty recording with the same settings whose interval starts now.
    pub fn successor(&self) -> Recording {
        let next = Recording::new(Arc::clone(&self.symbolizer), self.frequency_hz)
            .with_filter(self.filter.clone())
            .with_snapshots(self.snapshots.clone());
        match self.stack_budget {
            Some(bytes) => next.limiting_stack_bytes(bytes),
            None => next,
        }
    }

    pub fn symbolizer(&self) -> &Arc<Symbolizer> {
        &self.symbolizer
    }

    pub fn frequency_hz(&self) -> u64 {
        self.frequency_hz
    }

    /// New settings, from the next sample on. A new frequency or filter
    /// starts the processes afresh.
    pub fn reconfigure(&mut self, frequency_hz: u64, filter: Option<ProcessFilter>) {
        self.frequency_hz = frequency_hz;
        self.filter = filter;
        self.forget_processes();
    }

    /// Adds a sample if the filter keeps its process; says whether it did.
    pub fn add(&mut self, sample: &Sample) -> bool {
        self.keeps(sample) && {
            self.aggregator.add(sample);
            true
        }
    }

    /// [`Recording::add`] of a sample it may take apart.
    pub fn add_owned(&mut self, sample: Sample) -> bool {
        self.keeps(&sample) && {
            self.aggregator.add_owned(sample);
            true
        }
    }

    /// Counts the sample, and says whether the filter keeps its process.
    fn keeps(&mut self, sample: &Sample) -> bool {
        self.samples_seen += 1;
        if let Some(filter) = &self.filter {
            if !filter(self.aggregator.facts(sample.pid, &sample.thread_name)) {
                return false;
            }
        }
        self.samples_kept += 1;
        true
    }

    /// The process replaced its image: its facts and mappings change.
    pub fn on_exec(&mut self, pid: u32) {
        self.aggregator.on_exec(pid);
    }

    /// The process exited.
    pub fn on_exit(&mut self, pid: u32) {
        self.aggregator.on_exit(pid);
    }

    /// Hands the sampler's events over; returns the processes that exec'd.
    #[cfg(feature = "sampler")]
    pub fn feed(&mut self, events: Vec<crate::sampler::SamplerEvent>) -> Vec<u32> {
        use crate::sampler::SamplerEvent;
        let mut execs = Vec::new();
        for event in events {
            match event {
                SamplerEvent::Sample { sample, .. } => {
                    if let Some(snapshots) = &self.snapshots {
                        snapshots.reader_at(sample.time_unix_nano);
                    }
                    self.add_owned(sample);
                }
                SamplerEvent::Exec { pid, .. } => {
                    self.on_exec(pid);
                    execs.push(pid);
                }
                SamplerEvent::Exit { pid, .. } => self.on_exit(pid),
            }
        }
        execs
    }

    /// Ends the interval now: symbolizes what it gathered into one profile
    /// (a resource per process); the next interval starts here.
    pub fn finish_interval(&mut self) -> Interval {
        self.finish_interval_at(unix_nano_now())
    }

    /// The addresses gathered in the interval so far that are still to be
    /// symbolized, as jobs for another thread ([`Aggregator::ahead_jobs`];
    /// none unless the recording keeps symbols,
    /// [`Recording::keeping_symbols`]).
    pub fn ahead_jobs(&mut self) -> Vec<AheadJob> {
        self.aggregator.ahead_jobs()
    }

    /// Keeps what a job of [`Recording::ahead_jobs`] found.
    pub fn remember_ahead(&mut self, done: AheadDone) {
        self.aggregator.remember_ahead(done);
    }

    /// Ends the interval at `end_unix_nano`.
    pub fn finish_interval_at(&mut self, end_unix_nano: u64) -> Interval {
        let start = self.interval_start_unix_nano;
        let duration_nano = end_unix_nano.saturating_sub(start);
        let data = self.aggregator.finish(
            &self.symbolizer,
            ProfileConfig::cpu(self.frequency_hz, start, duration_nano),
        );
        self.symbolizer.give_back_pages();
        self.aggregator
            .forget_facts_unless(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        self.interval_start_unix_nano = end_unix_nano;
        self.intervals += 1;
        Interval {
            data,
            start_unix_nano: start,
            duration: Duration::from_nanos(duration_nano),
        }
    }

    /// Closes every file and forgets every process read so far: a
    /// long-running recording does this now and then so that it holds no
    /// stale files. The counts stay.
    pub fn forget_processes(&mut self) {
        self.aggregator_base += self.aggregator.stats();
        self.aggregator = Aggregator::new();
        self.aggregator.use_snapshots(self.snapshots.clone());
        if let Some(bytes) = self.stack_budget {
            self.aggregator.limit_stack_bytes(bytes);
        }
    }

    /// Processes known now.
    pub fn processes(&self) -> usize {
        self.aggregator.processes()
    }

    pub fn stats(&self) -> RecordingStats {
        RecordingStats {
            samples_seen: self.samples_seen,
            samples_kept: self.samples_kept,
            intervals: self.intervals,
            aggregator: self.aggregator_base + self.aggregator.stats(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smolder_profiles_proto::validate;

    fn sample(pid: u32) -> Sample {
        Sample {
            pid,
            tid: pid,
            thread_name: "t".into(),
            user: vec![0x10],
            ..Sample::default()
        }
    }

    #[test]
    fn the_filter_decides_from_the_facts() {
        let me = std::process::id();
        let filter: ProcessFilter = Arc::new(move |facts: &ProcessFacts| facts.pid == me);
        let mut recording =
            Recording::new(Arc::new(Symbolizer::new()), 99).with_filter(Some(filter));
        assert!(recording.add(&sample(me)));
        assert!(!recording.add(&sample(1)));
        let interval = recording.finish_interval();
        validate(&interval.data).unwrap();
        assert_eq!(interval.data.resource_profiles.len(), 1);
        let stats = recording.stats();
        assert_eq!((stats.samples_seen, stats.samples_kept), (2, 1));
        assert_eq!(stats.intervals, 1);
    }

    #[test]
    fn intervals_follow_each_other() {
        let mut recording = Recording::new(Arc::new(Symbolizer::new()), 19).starting_at(1_000);
        let first = recording.finish_interval_at(5_000);
        let second = recording.finish_interval_at(9_000);
        assert_eq!(first.start_unix_nano, 1_000);
        assert_eq!(second.start_unix_nano, 5_000);
        assert_eq!(second.duration, Duration::from_nanos(4_000));
        assert!(first.data.resource_profiles.is_empty());
    }
}
