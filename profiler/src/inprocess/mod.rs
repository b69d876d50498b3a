//! The in-process profiler: a Rust program profiles itself, without root,
//! an agent or a signal handler.
//!
//! Every thread of the process (present ones, and new ones found by
//! scanning `/proc/self/task`) gets a `perf_event_open` cpu-clock event that
//! copies user registers and the top of the user stack into an mmap ring; a
//! single background thread reads the rings, unwinds the copied stacks
//! (`unwind`, `.eh_frame` through framehop) and feeds the shared pipeline,
//! which symbolizes at the end. Where perf events are refused
//! (`perf_event_paranoid` 3, seccomp), it falls back once, with a log line,
//! to the `pprof` crate's signal-based sampler.
//!
//! ```no_run
//! let guard = smolder::Profiler::builder().frequency_hz(99).start()?;
//! // ... the work to profile ...
//! let profile = guard.stop()?;
//! profile.write_flamegraph("profile.svg")?;
//! profile.write_otlp("profile.pb")?;
//! # Ok::<(), smolder::ProfilerError>(())
//! ```

mod labels;
mod perf;
#[cfg(feature = "tracing")]
mod tracing_layer;
mod unwind;

pub use labels::with_labels;
pub use perf::UserRegs;
#[cfg(feature = "tracing")]
pub use tracing_layer::{TracingLayer, SPAN_NAME_KEY};
pub use unwind::StackUnwinder;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use smolder_flamegraph::{render, FlamegraphOptions};
use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::{
    int_value, string_value, write_profile, Format, LocationSpec, ProfileBuilder, ProfileConfig,
    SourceLine,
};
use smolder_symbolizer::{ProcessFacts, Symbolizer};

use crate::pipeline::{resource_attributes, AheadDone, AheadJob, Recording, Sample};
use perf::ThreadEvent;

/// Why profiling could not start, or its result could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ProfilerError {
    #[error("invalid profiler setting: {0}")]
    Config(String),
    #[error(
        "perf events are unavailable ({perf}) and the signal-based fallback failed too: {fallback}"
    )]
    Unavailable {
        perf: std::io::Error,
        fallback: String,
    },
    #[error("the profiler thread failed: {0}")]
    Thread(String),
    #[error("{path}: {error}")]
    Write { path: String, error: String },
}

/// How the samples were taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    /// Per-thread perf events read by a background thread (the default).
    PerfEvents,
    /// The `pprof` crate's SIGPROF sampler (perf events were refused).
    SignalFallback,
}

/// Counts of a profiling run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProfileStats {
    pub samples: u64,
    /// Samples the kernel dropped because a ring was full.
    pub lost: u64,
    /// CPU time the samples stand for (the sum of their periods), in ns.
    pub sampled_cpu_ns: u64,
    /// Threads sampled.
    pub threads: usize,
    /// Samples whose stack could not be unwound past the first frame.
    pub unwind_failures: u64,
    /// CPU time of the profiler's own threads (reader and symbolizer), in ns.
    pub profiler_cpu_ns: u64,
    /// Times a thread changed its labels so often between two reads that
    /// older changes were dropped (their samples may carry wrong labels).
    pub label_log_overflows: u64,
}

/// A finished profile: the OTLP `ProfilesData` (symbolized), with writers.
#[derive(Clone, Debug)]
pub struct Profile {
    pub data: ProfilesData,
    pub stats: ProfileStats,
    pub sampler: SamplerKind,
}

impl std::ops::Deref for Profile {
    type Target = ProfilesData;
    fn deref(&self) -> &ProfilesData {
        &self.data
    }
}

impl Profile {
    fn write(&self, path: &Path, bytes: Result<Vec<u8>, String>) -> Result<(), ProfilerError> {
        let fail = |error: String| ProfilerError::Write {
            path: path.display().to_string(),
            error,
        };
        let bytes = bytes.map_err(fail)?;
        if crate::output::is_special(path) {
            use std::io::Write;
            return crate::output::open_special(path)
                .and_then(|mut out| out.write_all(&bytes))
                .map_err(|e| fail(e.to_string()));
        }
        // Written beside the target and renamed, so a failure leaves no partial file.
        let tmp = path.with_extension("smolder-tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                fail(e.to_string())
            })
    }

    /// Writes OTLP protobuf (`ProfilesData`).
    pub fn write_otlp(&self, path: impl AsRef<Path>) -> Result<(), ProfilerError> {
        self.write(
            path.as_ref(),
            write_profile(&self.data, Format::OtlpBinary).map_err(|e| e.to_string()),
        )
    }

    /// Writes pprof (gzip).
    pub fn write_pprof(&self, path: impl AsRef<Path>) -> Result<(), ProfilerError> {
        self.write(
            path.as_ref(),
            write_profile(&self.data, Format::Pprof).map_err(|e| e.to_string()),
        )
    }

    /// Draws a flamegraph SVG with default options.
    pub fn write_flamegraph(&self, path: impl AsRef<Path>) -> Result<(), ProfilerError> {
        self.write_flamegraph_with(path, &FlamegraphOptions::default())
    }

    pub fn write_flamegraph_with(
        &self,
        path: impl AsRef<Path>,
        options: &FlamegraphOptions,
    ) -> Result<(), ProfilerError> {
        let mut svg = Vec::new();
        let drawn = render(&self.data, options, &mut svg)
            .map(|_| svg)
            .map_err(|e| e.to_string());
        self.write(path.as_ref(), drawn)
    }
}

/// Entry point: `Profiler::builder()`.
pub struct Profiler;

impl Profiler {
    pub fn builder() -> ProfilerBuilder {
        ProfilerBuilder::default()
    }
}

/// Settings of an in-process profiling run.
#[derive(Clone, Debug)]
pub struct ProfilerBuilder {
    frequency_hz: u64,
    stack_bytes: u32,
    ring_pages: usize,
    /// How often thread names are read again.
    thread_scan_interval: Duration,
    signal_fallback_only: bool,
    /// Long-running mode: a profile per interval, exported over OTLP.
    #[cfg(feature = "exporter")]
    export: Option<(Duration, crate::exporter::ExporterConfig)>,
}

impl Default for ProfilerBuilder {
    fn default() -> Self {
        ProfilerBuilder {
            frequency_hz: 99,
            stack_bytes: 8 * 1024,
            ring_pages: 512,
            thread_scan_interval: Duration::from_millis(500),
            signal_fallback_only: false,
            #[cfg(feature = "exporter")]
            export: None,
        }
    }
}

impl ProfilerBuilder {
    /// Samples per second of each thread's CPU time (default 99).
    pub fn frequency_hz(mut self, hz: u64) -> Self {
        self.frequency_hz = hz;
        self
    }

    /// Bytes of user stack copied per sample (default 8 KiB, as
    /// `perf record --call-graph dwarf`; deeper stacks are cut where the
    /// copy ends).
    pub fn stack_bytes(mut self, bytes: u32) -> Self {
        self.stack_bytes = bytes;
        self
    }

    /// Ring pages per thread, a power of two (default 512: 2 MiB, 250 ms of
    /// samples at 999 Hz). Where the locked-memory limit
    /// (`perf_event_mlock_kb`, RLIMIT_MEMLOCK) refuses it, smaller rings are
    /// tried down to 16 pages.
    pub fn ring_pages(mut self, pages: usize) -> Self {
        self.ring_pages = pages;
        self
    }

    /// Use the signal-based sampler even where perf events work (tests).
    pub fn signal_fallback_only(mut self, yes: bool) -> Self {
        self.signal_fallback_only = yes;
        self
    }

    /// Long-running mode (feature `exporter`): every `interval`, the
    /// profile of that interval is symbolized and exported to the OTLP
    /// endpoint of `config` (see `ExporterConfig::from_env`: the agent's
    /// `OTEL_EXPORTER_OTLP_*` variables) from the background threads;
    /// `stop` exports and returns the last, partial interval.
    #[cfg(feature = "exporter")]
    pub fn export_every(
        mut self,
        interval: Duration,
        config: crate::exporter::ExporterConfig,
    ) -> Self {
        self.export = Some((interval, config));
        self
    }

    pub fn start(self) -> Result<ProfilerGuard, ProfilerError> {
        if !(1..=10_000).contains(&self.frequency_hz) {
            return Err(ProfilerError::Config(format!(
                "frequency {} Hz is not in 1..=10000",
                self.frequency_hz
            )));
        }
        if !self.ring_pages.is_power_of_two() {
            return Err(ProfilerError::Config(format!(
                "ring_pages {} is not a power of two",
                self.ring_pages
            )));
        }
        if self.stack_bytes < 512 || self.stack_bytes > 65_528 {
            return Err(ProfilerError::Config(format!(
                "stack_bytes {} is not in 512..=65528",
                self.stack_bytes
            )));
        }
        let started = Started::now(self.frequency_hz);
        if !self.signal_fallback_only {
            // Probe on this thread: if perf events are refused here, they are everywhere.
            match ThreadEvent::open(
                gettid(),
                self.frequency_hz,
                self.stack_bytes,
                self.ring_pages,
            ) {
                Ok(first) => return Ok(self.start_perf(first, started)),
                Err(perf) => {
                    tracing::warn!("perf events unavailable ({perf}); using the signal-based sampler (pprof) instead");
                    return self
                        .start_signal(started)
                        .map_err(|fallback| ProfilerError::Unavailable { perf, fallback });
                }
            }
        }
        self.start_signal(started)
            .map_err(|fallback| ProfilerError::Unavailable {
                perf: std::io::Error::other("not tried"),
                fallback,
            })
    }

    fn start_perf(self, first: ThreadEvent, started: Started) -> ProfilerGuard {
        // Built before the reader starts: reading unwind sections while the
        // rings fill would lose the first samples.
        let unwinder = StackUnwinder::new();
        labels::start_recording();
        let stop = Arc::new(AtomicBool::new(false));
        let intervals = Arc::new(AtomicU64::new(0));
        let shared = Shared {
            stop: stop.clone(),
            intervals: intervals.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("smolder-profiler".into())
            .spawn(move || reader(self, first, unwinder, started, &shared))
            .map_err(|e| ProfilerError::Thread(e.to_string()));
        ProfilerGuard {
            backend: Backend::Perf {
                stop: StopOnDrop(stop),
                thread,
                intervals,
            },
            started,
        }
    }

    fn start_signal(&self, started: Started) -> Result<ProfilerGuard, String> {
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(self.frequency_hz as i32)
            .blocklist(&["libc", "libgcc", "pthread", "vdso"])
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ProfilerGuard {
            backend: Backend::Signal(Box::new(guard)),
            started,
        })
    }
}

#[derive(Clone, Copy)]
struct Started {
    hz: u64,
    unix_nano: u64,
    /// unix - monotonic, to put sample times on the wall clock.
    monotonic_to_unix: i128,
    at: Instant,
}

impl Started {
    fn now(hz: u64) -> Started {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mono = labels::monotonic_ns();
        Started {
            hz,
            unix_nano: unix as u64,
            monotonic_to_unix: unix as i128 - i128::from(mono),
            at: Instant::now(),
        }
    }

    fn config(&self) -> ProfileConfig {
        ProfileConfig::cpu(self.hz, self.unix_nano, self.at.elapsed().as_nanos() as u64)
    }
}

enum Backend {
    Perf {
        stop: StopOnDrop,
        thread: Result<JoinHandle<Collected>, ProfilerError>,
        intervals: Arc<AtomicU64>,
    },
    Signal(Box<pprof::ProfilerGuard<'static>>),
}

/// A running profiler; [`ProfilerGuard::stop`] ends it and returns the profile.
pub struct ProfilerGuard {
    backend: Backend,
    started: Started,
}

impl ProfilerGuard {
    pub fn sampler(&self) -> SamplerKind {
        match self.backend {
            Backend::Perf { .. } => SamplerKind::PerfEvents,
            Backend::Signal(_) => SamplerKind::SignalFallback,
        }
    }

    /// Intervals ended so far in long-running mode (`export_every`); each
    /// one with samples was exported.
    pub fn intervals_exported(&self) -> u64 {
        match &self.backend {
            Backend::Perf { intervals, .. } => intervals.load(Ordering::Acquire),
            Backend::Signal(_) => 0,
        }
    }

    /// Stops sampling and returns the symbolized profile: everything since
    /// the start, or with `export_every` what came after the last export
    /// (exported too), which may hold no sample.
    pub fn stop(self) -> Result<Profile, ProfilerError> {
        match self.backend {
            Backend::Perf { stop, thread, .. } => {
                drop(stop);
                let collected = thread?
                    .join()
                    .map_err(|_| ProfilerError::Thread("it panicked".into()));
                labels::stop_recording();
                let mut collected = collected?;
                let data = collected.recording.finish_interval().data;
                #[cfg(feature = "exporter")]
                if let Some(export) = collected.export.take() {
                    export.finish(data.clone());
                }
                Ok(Profile {
                    data,
                    stats: collected.stats,
                    sampler: SamplerKind::PerfEvents,
                })
            }
            Backend::Signal(guard) => {
                let report = guard
                    .report()
                    .build()
                    .map_err(|e| ProfilerError::Thread(e.to_string()))?;
                Ok(from_pprof_report(&report, &self.started))
            }
        }
    }
}

/// Tells the reader thread to finish, also when the guard is dropped
/// without `stop`.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// What the reader thread shares with the guard.
struct Shared {
    stop: Arc<AtomicBool>,
    /// Intervals exported (counted by the reader only with `exporter`).
    #[cfg_attr(not(feature = "exporter"), allow(dead_code))]
    intervals: Arc<AtomicU64>,
}

struct Collected {
    recording: Recording,
    stats: ProfileStats,
    #[cfg(feature = "exporter")]
    export: Option<exporting::ExportThread>,
}

#[cfg(feature = "exporter")]
mod exporting {
    //! The long-running mode's exporter: its own thread and tokio runtime,
    //! fed one `ProfilesData` per interval over a channel.
    use std::sync::mpsc;
    use std::time::Duration;

    use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;

    use crate::exporter::{Exporter, ExporterConfig};

    pub struct ExportThread {
        tx: Option<mpsc::Sender<ProfilesData>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl ExportThread {
        pub fn start(config: ExporterConfig) -> Result<ExportThread, String> {
            let (tx, rx) = mpsc::channel::<ProfilesData>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let exporter = runtime
                .block_on(async { Exporter::start(config) })
                .map_err(|e| e.to_string())?;
            let thread = std::thread::Builder::new()
                .name("smolder-export".into())
                .spawn(move || {
                    runtime.block_on(async move {
                        loop {
                            // Poll the channel without blocking the runtime, so
                            // the exporter's sending task runs meanwhile.
                            match rx.try_recv() {
                                Ok(data) => exporter.export(data),
                                Err(mpsc::TryRecvError::Empty) => {
                                    tokio::time::sleep(Duration::from_millis(20)).await
                                }
                                Err(mpsc::TryRecvError::Disconnected) => break,
                            }
                        }
                        let stats = exporter.shutdown(Duration::from_secs(5)).await;
                        tracing::info!("in-process exporter stopped: {stats:?}");
                    })
                })
                .map_err(|e| e.to_string())?;
            Ok(ExportThread {
                tx: Some(tx),
                thread: Some(thread),
            })
        }

        /// Queues an interval for export; one without samples (no
        /// resource) is not sent: a request with nothing in it tells the
        /// collector nothing.
        pub fn send(&self, data: ProfilesData) {
            if data.resource_profiles.is_empty() {
                return;
            }
            if let Some(tx) = &self.tx {
                let _ = tx.send(data);
            }
        }

        /// Sends the last interval and waits for the flush (at most ~5 s).
        pub fn finish(mut self, data: ProfilesData) {
            self.send(data);
            drop(self.tx.take());
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until a ring passes its watermark or `timeout` passes.
fn wait_for_samples(events: &HashMap<u32, ThreadEvent>, timeout: Duration) {
    let mut fds: Vec<libc::pollfd> = events
        .values()
        .map(|e| libc::pollfd {
            fd: e.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: fds points at fds.len() initialised pollfd structs.
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        )
    };
}

/// This process's threads.
fn thread_ids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

fn thread_name(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|n| n.trim_end().to_owned())
        .unwrap_or_default()
}

/// Addresses whose symbols are kept from one interval to the next (a few
/// hundred bytes each): a later interval parses debug info only for
/// addresses it has not seen.
const KEPT_SYMBOLS: usize = 16_384;

/// In long-running mode, how much the process's anonymous memory may grow
/// past its lowest size after an interval before the symbolizer's parsed
/// objects are dropped (and the freed heap handed back).
#[cfg(feature = "exporter")]
const PARSED_BYTES: u64 = 16 << 20;

/// Samples taken from each ring before they are unwound and the rings
/// read again.
const READ_CHUNK: usize = 64;

/// How often the reader hands the addresses first seen since the last
/// pass to its helper thread ([`Ahead`]) to symbolize: a stop looks up
/// little more than this long's worth of new addresses.
const SYMBOLIZE_AHEAD_EVERY: Duration = Duration::from_millis(250);

/// Free heap bytes worth giving back after a pass of the symbolizing
/// thread.
const FREE_HEAP_WORTH_TRIMMING: usize = 2 << 20;

/// This process's resident anonymous memory (`RssAnon` of
/// `/proc/self/status`), bytes: the heap that parsed debug info takes.
/// Pages of mapped files are left out: the symbolizer gives back those of
/// debug sections after each interval, and the kernel may drop them.
#[cfg(feature = "exporter")]
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib << 10)
}

/// The reader's helper thread, which symbolizes the addresses of the
/// samples gathered so far while the reader goes on reading the rings (a
/// compilation unit's parse never holds up a ring), and at an interval's
/// end the addresses first seen since its last pass, so that all parsed
/// debug info is allocated on one thread. It is not sampled.
struct Ahead {
    tid: u32,
    jobs: std::sync::mpsc::Sender<Vec<AheadJob>>,
    done: std::sync::mpsc::Receiver<Vec<AheadDone>>,
    /// Its CPU time, in ns, when it ends.
    thread: JoinHandle<u64>,
    /// A pass was handed over and its results are not back yet.
    pending: bool,
    begun_at: Instant,
}

impl Ahead {
    /// Starts the thread; `None` if it cannot be (the reader then looks
    /// everything up itself at an interval's end).
    fn start(symbolizer: Arc<Symbolizer>) -> Option<Ahead> {
        let (jobs, job_rx) = std::sync::mpsc::channel::<Vec<AheadJob>>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let (tid_tx, tid_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("smolder-symbolize".into())
            .spawn(move || {
                let _ = tid_tx.send(gettid());
                for pass in job_rx {
                    let found: Vec<AheadDone> =
                        pass.into_iter().map(|job| job.run(&symbolizer)).collect();
                    symbolizer.give_back_pages();
                    // A pass's transients were allocated in this thread's
                    // own heap arena, which the reader's never reuses.
                    crate::heap::release_free_heap_over(FREE_HEAP_WORTH_TRIMMING);
                    if done_tx.send(found).is_err() {
                        break;
                    }
                }
                thread_cpu_ns()
            })
            .map_err(|e| tracing::warn!("cannot start the symbolizing thread: {e}"))
            .ok()?;
        let tid = tid_rx.recv().ok()?;
        Some(Ahead {
            tid,
            jobs,
            done,
            thread,
            pending: false,
            begun_at: Instant::now(),
        })
    }

    /// Keeps what the last pass found, once it is back, and hands the
    /// next pass over when it is due.
    fn poll(&mut self, recording: &mut Recording) {
        if let Ok(found) = self.done.try_recv() {
            found.into_iter().for_each(|d| recording.remember_ahead(d));
            self.pending = false;
        }
        if !self.pending && self.begun_at.elapsed() >= SYMBOLIZE_AHEAD_EVERY {
            self.begun_at = Instant::now();
            self.hand_over(recording);
        }
    }

    fn hand_over(&mut self, recording: &mut Recording) {
        let pass = recording.ahead_jobs();
        if !pass.is_empty() {
            self.pending = self.jobs.send(pass).is_ok();
        }
    }

    /// Waits for the pass under way, then has what came since looked up
    /// too and waits for it: the interval can end with nothing left to
    /// parse.
    fn complete(&mut self, recording: &mut Recording) {
        self.wait(recording);
        self.hand_over(recording);
        self.wait(recording);
    }

    /// Waits for the pass under way, if any, and keeps what it found.
    fn wait(&mut self, recording: &mut Recording) {
        if self.pending {
            if let Ok(found) = self.done.recv() {
                found.into_iter().for_each(|d| recording.remember_ahead(d));
            }
            self.pending = false;
        }
    }

    /// Completes the last pass and ends the thread; returns its CPU time
    /// in ns.
    fn finish(mut self, recording: &mut Recording) -> u64 {
        self.complete(recording);
        drop(self.jobs);
        self.thread.join().unwrap_or(0)
    }
}

/// The background thread: follows threads, reads rings, unwinds.
fn reader(
    settings: ProfilerBuilder,
    first: ThreadEvent,
    mut unwinder: StackUnwinder,
    started: Started,
    shared: &Shared,
) -> Collected {
    let me = gettid();
    let mut events: HashMap<u32, ThreadEvent> = HashMap::from([(first.tid, first)]);
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut refused: std::collections::HashSet<u32> = std::collections::HashSet::new();
    // Every file symbolized is one this process maps itself: mapped, so
    // that only the pages of the units and symbols looked up are read.
    let symbolizer = Symbolizer::builder().map_own_process_files(true).build();
    let mut recording = Recording::new(Arc::new(symbolizer), settings.frequency_hz)
        .starting_at(started.unix_nano)
        .keeping_symbols(KEPT_SYMBOLS);
    #[cfg(feature = "exporter")]
    let mut interval_start = started.unix_nano;
    let mut stats = ProfileStats::default();
    let mut timeline = labels::Timeline::default();
    let mut batch = Vec::new();
    let mut seen = std::collections::HashSet::new();
    #[cfg(feature = "exporter")]
    let export = settings.export.clone().and_then(|(every, config)| {
        match exporting::ExportThread::start(config) {
            Ok(thread) => Some((every, thread)),
            Err(e) => {
                tracing::warn!("cannot start the in-process OTLP exporter: {e}");
                None
            }
        }
    });
    let mut names_read_at: Option<Instant> = None;
    #[cfg(feature = "exporter")]
    let mut parsed_since: Option<u64> = None;
    let mut found_at: HashMap<u32, Instant> = HashMap::new();
    let mut ahead = Ahead::start(Arc::clone(recording.symbolizer()));
    let ahead_tid = ahead.as_ref().map(|a| a.tid);
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        if !stopping {
            // New threads are found within one loop (~10 ms): every thread
            // present gets its event before the unwinder's set-up below.
            let live = thread_ids();
            let refresh_names =
                names_read_at.is_none_or(|t| t.elapsed() >= settings.thread_scan_interval);
            for &tid in &live {
                // A new thread names itself just after it starts: read the
                // names of young threads on every round.
                let found = *found_at.entry(tid).or_insert_with(Instant::now);
                if refresh_names || found.elapsed() < Duration::from_millis(200) {
                    names.insert(tid, thread_name(tid));
                }
                if tid == me
                    || Some(tid) == ahead_tid
                    || events.contains_key(&tid)
                    || refused.contains(&tid)
                {
                    continue;
                }
                match ThreadEvent::open(
                    tid,
                    settings.frequency_hz,
                    settings.stack_bytes,
                    settings.ring_pages,
                ) {
                    Ok(e) => {
                        events.insert(tid, e);
                    }
                    // The thread may have exited between the scan and the open.
                    Err(_) => {
                        refused.insert(tid);
                    }
                }
            }
            if refresh_names {
                names_read_at = Some(Instant::now());
            }
            // Threads gone: read their rings one last time, then drop them.
            let alive: std::collections::HashSet<u32> = live.into_iter().collect();
            let gone: Vec<u32> = events
                .keys()
                .copied()
                .filter(|t| !alive.contains(t))
                .collect();
            for tid in gone {
                if let Some(mut e) = events.remove(&tid) {
                    let counts = e.read(&mut batch, usize::MAX);
                    stats.lost += counts.lost;
                }
            }
        }
        if stopping {
            for e in events.values() {
                e.disable();
            }
        }
        let read_at = labels::monotonic_ns();
        loop {
            let mut more = false;
            for e in events.values_mut() {
                let counts = e.read(&mut batch, READ_CHUNK);
                stats.lost += counts.lost;
                more |= counts.more;
            }
            // After the rings: every change earlier than a sample read is logged.
            timeline.collect();
            for s in batch.drain(..) {
                seen.insert(s.tid);
                stats.samples += 1;
                stats.sampled_cpu_ns += s.period;
                let Some(regs) = s.regs else { continue };
                let user = unwinder.unwind(regs, &s.stack);
                if user.len() <= 1 {
                    stats.unwind_failures += 1;
                }
                let context = timeline.at(s.tid, s.time);
                let name = names.get(&s.tid).map_or("", String::as_str);
                recording.add(&Sample {
                    pid: s.pid,
                    tid: s.tid,
                    cpu: s.cpu,
                    time_unix_nano: (i128::from(s.time) + started.monotonic_to_unix).max(0) as u64,
                    thread_name: name.to_owned(),
                    kernel: Vec::new(),
                    user,
                    labels: context.map(|c| c.labels.clone()).unwrap_or_default(),
                    link: context.and_then(|c| c.link),
                    off_cpu_ns: None,
                });
            }
            if !more {
                break;
            }
        }
        // A sample still to come was taken after the rings were read (a
        // margin for one being written meanwhile).
        timeline.prune_before(read_at.saturating_sub(5_000_000));
        if stopping {
            break;
        }
        // Addresses are symbolized as they come, not all at the stop: what
        // `stop()` or an export looks up is what was first seen since.
        if let Some(ahead) = &mut ahead {
            ahead.poll(&mut recording);
        }
        #[cfg(feature = "exporter")]
        if let Some((every, thread)) = &export {
            if Instant::now()
                >= started.at + Duration::from_nanos(interval_start - started.unix_nano) + *every
            {
                if let Some(ahead) = &mut ahead {
                    ahead.complete(&mut recording);
                }
                let interval = recording.finish_interval();
                // Debug info parsed for one interval is kept for the next
                // while the process grew by less than `PARSED_BYTES` since
                // the last drop; past it, what was parsed goes (what it gave
                // stays, `KEPT_SYMBOLS`) and a later new address parses again.
                // The base is the lowest resident size seen after an
                // interval: the first intervals' transients (the first
                // parse of large debug sections) must not raise it.
                let rss = resident_bytes();
                match parsed_since {
                    Some(base) if rss > base + PARSED_BYTES => {
                        recording.symbolizer().clear_cache();
                        // What was parsed goes back to the kernel, not only
                        // to the allocator.
                        crate::heap::release_free_heap();
                        parsed_since = Some(resident_bytes());
                    }
                    Some(base) => parsed_since = Some(base.min(rss)),
                    None => parsed_since = Some(rss),
                }
                interval_start = interval.start_unix_nano + interval.duration.as_nanos() as u64;
                thread.send(interval.data);
                shared.intervals.fetch_add(1, Ordering::Release);
            }
        }
        wait_for_samples(&events, Duration::from_millis(10));
    }
    stats.threads = seen.len();
    stats.label_log_overflows = timeline.overflows;
    stats.profiler_cpu_ns = thread_cpu_ns() + ahead.map_or(0, |a| a.finish(&mut recording));
    Collected {
        recording,
        stats,
        #[cfg(feature = "exporter")]
        export: export.map(|(_, thread)| thread),
    }
}

/// The signal-based fallback's report as an OTLP profile (pprof-rs
/// symbolizes on its own; its frames carry names, files and lines).
fn from_pprof_report(report: &pprof::Report, started: &Started) -> Profile {
    let mut builder = ProfileBuilder::new(started.config());
    let cpu = builder.default_profile_type();
    let facts = ProcessFacts::read(std::process::id(), "");
    let resource = builder.resource(resource_attributes(&facts));
    let mut stats = ProfileStats {
        sampled_cpu_ns: 0,
        ..ProfileStats::default()
    };
    let period = 1_000_000_000 / started.hz.max(1);
    let mut threads = std::collections::HashSet::new();
    for (frames, &count) in &report.data {
        let locations: Vec<i32> = frames
            .frames
            .iter()
            .map(|symbols| {
                let lines = symbols
                    .iter()
                    .map(|s| SourceLine {
                        function: s.name(),
                        file: s
                            .filename
                            .as_ref()
                            .map(|f| f.display().to_string())
                            .unwrap_or_default(),
                        line: i64::from(s.lineno.unwrap_or(0)),
                        ..SourceLine::default()
                    })
                    .collect();
                builder.location(&LocationSpec {
                    lines,
                    ..LocationSpec::default()
                })
            })
            .collect();
        let stack = builder.stack(&locations);
        let attrs = [
            builder.attribute("thread.id", int_value(frames.thread_id as i64), ""),
            builder.attribute("thread.name", string_value(&frames.thread_name), ""),
        ];
        let count = count.max(0) as i64;
        builder.add_sample(resource, cpu, stack, &attrs, count, None);
        threads.insert(frames.thread_id);
        stats.samples += count as u64;
        stats.sampled_cpu_ns += count as u64 * period;
    }
    stats.threads = threads.len();
    Profile {
        data: builder.finish(),
        stats,
        sampler: SamplerKind::SignalFallback,
    }
}
