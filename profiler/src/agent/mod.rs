//! The node agent: samples the whole host (or the processes a filter
//! selects) with the eBPF sampler, and every interval turns what it saw
//! into one OTLP `ProfilesData` with a resource per process, which goes to
//! the OTLP exporter, the local store and the HTTP page.
//!
//! Drives the pipeline's [`Recording`] (the one sampling loop, which reads
//! each process's facts once: the filters and `service.name` come from
//! there); owns the configuration (file, environment, flags), the sinks,
//! reloads and the bounded shutdown. Signals and the command line are the CLI's business:
//! they arrive here as [`Control`] messages.
//!
//! ```no_run
//! # async fn run() -> Result<(), smolder::agent::AgentError> {
//! use smolder::agent::{run, AgentConfig, Control};
//!
//! let (control, rx) = tokio::sync::mpsc::unbounded_channel();
//! let config = AgentConfig { http: Some("127.0.0.1:7070".parse().unwrap()), ..AgentConfig::default() };
//! tokio::spawn(async move {
//!     tokio::time::sleep(std::time::Duration::from_secs(60)).await;
//!     let _ = control.send(Control::Stop);
//! });
//! let summary = run(config, rx, None).await?; // inside a multi-threaded runtime
//! println!("{} intervals", summary.intervals);
//! # Ok(())
//! # }
//! ```

pub mod budget;
pub mod config;
pub mod filter;
pub mod http;
pub mod local;
pub mod privileges;
pub mod report;
pub mod store;
pub mod view;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use smolder_symbolizer::{Source, Symbolizer};
use tokio::sync::{mpsc, oneshot};

use crate::exporter::{Exporter, ExporterConfig, ExporterError, ExporterStats, ResourceAttributes};
use crate::pipeline::{Interval, Recording};
use crate::sampler::{Sampler, SamplerConfig, SamplerError, SamplerEvent, SamplerStats};

pub use budget::{MemoryBudget, MemoryGuard};
pub use config::{AgentConfig, ExporterSettings, FilterConfig, Retention};
pub use privileges::{drop_capabilities, UnprivilegedRuntime};
pub use report::{AgentState, Counters, IntervalReport};

/// SIGTERM to exit: the agent is gone within this long.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid agent configuration: {0}")]
    Config(String),
    #[error("{action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the eBPF sampler")]
    Sampler(#[from] SamplerError),
    #[error("cannot set up the OTLP exporter")]
    Exporter(#[source] ExporterError),
    #[error("dropping capabilities: {0}")]
    Privileges(String),
}

/// What the CLI (signals) tells a running agent.
#[derive(Debug)]
pub enum Control {
    /// SIGHUP: apply this configuration (re-read by the caller).
    Reload(Box<AgentConfig>),
    /// SIGTERM or SIGINT: stop sampling, flush, return.
    Stop,
}

/// Where a started agent can be reached; sent once everything runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub http: Option<SocketAddr>,
    pub exporter_endpoint: Option<String>,
}

/// What a finished run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentSummary {
    pub intervals: u64,
    pub counters: Counters,
    pub exporter: Option<ExporterStats>,
}

fn unix_nano_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// What one sample read while an interval is symbolized is taken to
/// hold (its user and kernel frames, its thread's name), for the bound on
/// how many are held.
const HELD_EVENT_BYTES: usize = 1024;

/// Free heap below this stays with the allocator between intervals.
const FREE_HEAP_WORTH_TRIMMING: usize = 4 << 20;

/// How often the ring buffer is read while it is less than half full (the
/// kernel program wakes the reader past half): the agent has no one
/// waiting on a sample, and every wakeup costs CPU on a quiet host.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Runs CPU-bound work without stalling the runtime's other tasks (the
/// HTTP server, the exporter) when the runtime has threads to spare.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// The sampling loop's state.
struct Running {
    config: AgentConfig,
    exporter_config: Option<ExporterConfig>,
    resource: ResourceAttributes,
    state: Arc<AgentState>,
    sampler: Option<Sampler>,
    recording: Recording,
    exporter: Option<Exporter>,
    store: Option<local::LocalStore>,
    intervals: u64,
    local_write_errors: u64,
    sampler_base: SamplerStats,
    /// Stats of exporters replaced by a reload, added when they finish.
    exporter_base: Arc<Mutex<ExporterStats>>,
    /// Where exporters run: threads without capabilities.
    export_threads: UnprivilegedRuntime,
    /// Events read while an interval was symbolized that did not fit the
    /// share of the memory limit held for them.
    samples_held_back_dropped: u64,
    /// Resident memory against the limit, checked after each interval.
    memory: MemoryGuard,
}

fn start_sampler(config: &AgentConfig) -> Result<Sampler, AgentError> {
    // The kernel's PID filter is exact only when PIDs are the only filter;
    // cgroup and name filters need every sample in user space.
    let pid_filter = (!config.filter.pids.is_empty()
        && config.filter.cgroups.is_empty()
        && config.filter.executables.is_empty())
    .then(|| config.filter.pids.clone());
    let mut sampler = Sampler::start(SamplerConfig {
        frequency_hz: config.frequency_hz,
        pid_filter,
        off_cpu: config.off_cpu.sampler_config(),
        unwind_table_bytes: config.budget().unwind_table_bytes(),
        unwind_build_bytes: config.budget().unwind_build_bytes(),
        poll_interval: POLL_INTERVAL,
        ..SamplerConfig::default()
    })?;
    sampler.set_table_filter(config.filter.process_filter());
    Ok(sampler)
}

/// Starts the exporter's tasks on `threads` (no capabilities).
fn start_exporter(
    config: Option<&ExporterConfig>,
    threads: &UnprivilegedRuntime,
) -> Result<Option<Exporter>, AgentError> {
    let _inside = threads.handle().enter();
    config
        .map(|c| Exporter::start(c.clone()).map_err(AgentError::Exporter))
        .transpose()
}

fn open_store(config: &AgentConfig) -> Result<Option<local::LocalStore>, AgentError> {
    config
        .output_dir
        .as_deref()
        .map(|dir| local::LocalStore::open(dir, config.retention))
        .transpose()
}

impl Running {
    fn feed(&mut self, events: Vec<SamplerEvent>) {
        self.recording.feed(events);
    }

    /// Ends the current interval: symbolize, label, hand to every sink.
    /// With `within`, an interval that takes longer to symbolize is
    /// dropped (the shutdown has a deadline).
    async fn finish_interval(&mut self, within: Option<Duration>) {
        // The next interval starts where this one ends: samples that arrive
        // while this one is symbolized belong to the next.
        let end_unix = unix_nano_now();
        self.state.finishing();
        // What the interval left freed goes back before symbolizing takes
        // more (when it is worth a trim).
        budget::release_free_heap_over(FREE_HEAP_WORTH_TRIMMING);
        // Symbolizing runs on a thread of its own while this task keeps
        // reading the ring buffer (a full ring loses samples), holding what
        // it reads for the next interval, within a share of the memory limit.
        let successor = self.recording.successor();
        let mut recording = std::mem::replace(&mut self.recording, successor);
        let mut work = tokio::task::spawn_blocking(move || {
            let interval = recording.finish_interval_at(end_unix);
            (recording, interval)
        });
        let limit = within.map(|d| tokio::time::Instant::now() + d);
        let mut held: Vec<SamplerEvent> = Vec::new();
        let hold_max = self.config.budget().interval_stack_bytes() / HELD_EVENT_BYTES;
        let mut reading = within.is_none();
        let finished = loop {
            let expired = async {
                match limit {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let sampler = self.sampler.as_mut().filter(|_| reading);
            let read = async {
                match sampler {
                    Some(sampler) => sampler.next_events().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = &mut work => break done.ok(),
                () = expired => break None,
                events = read => match events {
                    Ok(events) => {
                        for event in events {
                            if held.len() < hold_max {
                                held.push(event);
                            } else {
                                self.samples_held_back_dropped += 1;
                            }
                        }
                    }
                    Err(e) => {
                        // The main loop meets it again and stops.
                        tracing::warn!("reading samples while symbolizing: {e}");
                        reading = false;
                    }
                },
            }
        };
        let Some((recording, interval)) = finished else {
            // Only a shutdown gives a deadline; what is left is dropped.
            tracing::warn!(
                "the last interval was not symbolized within {:?}: dropped",
                within.unwrap_or_default()
            );
            self.state.interval_done();
            return;
        };
        self.recording = recording;
        self.recording.feed(held);
        let Interval {
            mut data,
            start_unix_nano: start_unix,
            duration,
        } = interval;
        self.intervals += 1;

        self.resource.apply(&mut data);
        let report =
            blocking(|| IntervalReport::new(data, start_unix, duration, self.config.frequency_hz));
        if let Some(exporter) = &self.exporter {
            if report.samples > 0 {
                exporter.export(report.data.clone());
            }
        }
        if let Some(store) = &self.store {
            let title = format!(
                "smolder agent: every process, {:.1}s at {} Hz",
                duration.as_secs_f64(),
                self.config.frequency_hz
            );
            match blocking(|| store.store(&report.data, start_unix / 1_000_000, &title)) {
                Ok(stored) => tracing::debug!("wrote {}", stored.otlp.display()),
                Err(e) => {
                    self.local_write_errors += 1;
                    tracing::warn!("keeping the interval in {}: {e}", store.dir().display());
                }
            }
        }
        tracing::info!(
            "interval {}: {:.1}s, {} samples, {} processes",
            self.intervals,
            duration.as_secs_f64(),
            report.samples,
            report.processes.len()
        );
        let processes = report.processes.len() as u64;
        self.state.set_latest(report);

        // Opened binaries stay open until the recording forgets them: start
        // afresh now and then, so that a long-running agent holds no stale files.
        let reset = u64::from(self.config.aggregator_reset_intervals.max(1));
        if self.intervals.is_multiple_of(reset) {
            self.recording.forget_processes();
        }
        self.check_memory();
        self.publish_counters(processes);
    }

    /// Near the memory limit, the caches go: parsed binaries, and what
    /// is known of processes (their open files, maps, perf maps).
    fn check_memory(&mut self) {
        let budget = self.config.budget();
        if let Some(rss) = self.memory.check(&budget) {
            self.recording.symbolizer().clear_cache();
            self.recording.forget_processes();
            self.memory.after_trim(&budget, rss);
        }
    }

    fn counters(&self, processes: u64) -> Counters {
        let sampler = self.sampler_base
            + self
                .sampler
                .as_ref()
                .map(Sampler::stats)
                .unwrap_or_default();
        let recording = self.recording.stats();
        let aggregator = recording.aggregator;
        let exporter = self.exporter.as_ref().map(|e| {
            let base = *self
                .exporter_base
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            base + e.stats()
        });
        Counters {
            samples: sampler.samples,
            samples_kept: recording.samples_kept,
            samples_lost: sampler.lost,
            samples_held_back_dropped: self.samples_held_back_dropped,
            events_lost: sampler.events_lost,
            unwind_failures: sampler.user_read_faults
                + sampler.truncated
                + sampler.kernel_stack_errors
                + sampler.user_no_unwind_info,
            unsymbolized_frames: aggregator.unsymbolized_frames,
            symbolization_errors: self.recording.symbolizer().stats().errors(),
            objects_unopenable: aggregator.objects_unopenable,
            perf_maps_refused: aggregator.perf_maps_refused,
            jit_frames_named: aggregator.jit_frames_named,
            python_frames_named: aggregator.python_frames_named,
            python_unsupported: aggregator.python_unsupported,
            python_frames_unreadable: aggregator.python_frames_unreadable,
            samples_of_vanished_processes: aggregator.samples_of_vanished_processes,
            processes_read_at_exec: aggregator.processes_read_at_exec,
            prefetch_events_lost: sampler.prefetch_events_lost,
            intervals: self.intervals,
            local_write_errors: self.local_write_errors,
            unwind_tables_loaded: sampler.unwind_tables,
            off_cpu_switches: sampler.off_cpu_switches,
            off_cpu_recorded: sampler.off_cpu_recorded,
            off_cpu_skipped_short: sampler.off_cpu_skipped_short,
            off_cpu_skipped_probability: sampler.off_cpu_skipped_probability,
            off_cpu_unmatched: sampler.off_cpu_unmatched,
            off_cpu_lost: sampler.off_cpu_lost,
            processes,
            memory_limit_bytes: self.config.memory_limit,
            rss_bytes: MemoryGuard::rss().unwrap_or(0),
            rss_peak_bytes: self.memory.peak_rss,
            symbol_cache_bytes: self.recording.symbolizer().stats().cache_bytes,
            unwind_table_bytes: sampler.unwind_table_bytes,
            unwind_table_cap_bytes: self.config.budget().unwind_table_bytes(),
            unwind_tables_evicted: sampler.unwind_tables_evicted,
            unwind_table_failures: sampler.unwind_table_failures,
            stacks_dropped: aggregator.stacks_dropped,
            memory_trims: self.memory.trims,
            objects_cut_to_budget: self.recording.symbolizer().stats().objects_cut_to_budget,
            exporter,
        }
    }

    fn publish_counters(&self, processes: u64) {
        self.state.set_counters(self.counters(processes));
    }

    /// Stops reading samples. The sampler is dropped on a thread of its
    /// own: dropping it waits for its unwind-table loader, which may be busy
    /// for a while, and the shutdown has a deadline (the kernel detaches the
    /// program at the latest when the process exits).
    fn stop_sampler(&mut self) {
        if let Some(sampler) = self.sampler.take() {
            self.sampler_base += sampler.stats();
            // Should the thread not start, the closure, sampler and all, is
            // dropped right here instead.
            let _ = std::thread::Builder::new()
                .name("sampler-drop".into())
                .spawn(move || drop(sampler));
        }
    }

    /// Applies a new configuration between two intervals.
    async fn reload(&mut self, new: AgentConfig) -> Result<(), AgentError> {
        new.validate()?;
        let exporter_config = new.exporter_config(env)?;
        // Fail before changing anything.
        let new_store =
            if new.output_dir != self.config.output_dir || new.retention != self.config.retention {
                Some(open_store(&new)?)
            } else {
                None
            };
        if let Some(events) = self.drain().await {
            self.feed(events);
        }
        self.finish_interval(None).await;
        if new.frequency_hz != self.config.frequency_hz
            || new.filter != self.config.filter
            || new.off_cpu != self.config.off_cpu
        {
            self.stop_sampler();
            match start_sampler(&new) {
                Ok(sampler) => self.sampler = Some(sampler),
                Err(e) => {
                    tracing::error!(
                        "the new sampler settings did not start ({e}); keeping the old ones"
                    );
                    self.sampler = Some(start_sampler(&self.config)?);
                    return Err(e);
                }
            }
            self.recording
                .reconfigure(new.frequency_hz, new.filter.process_filter());
            self.recording
                .set_snapshots(self.sampler.as_ref().map(Sampler::snapshots));
        }
        if exporter_config != self.exporter_config {
            let replacement = start_exporter(exporter_config.as_ref(), &self.export_threads)?;
            if let Some(old) = std::mem::replace(&mut self.exporter, replacement) {
                let base = Arc::clone(&self.exporter_base);
                tokio::spawn(async move {
                    let stats = old.shutdown(SHUTDOWN_BUDGET).await;
                    let mut base = base.lock().unwrap_or_else(PoisonError::into_inner);
                    *base += stats;
                });
            }
            self.exporter_config = exporter_config;
        }
        if let Some(store) = new_store {
            self.store = store;
        }
        if new.http != self.config.http || new.http_allow_remote != self.config.http_allow_remote {
            tracing::warn!("the HTTP address is not changed by a reload: restart the agent");
        }
        let mut new = new;
        if new.memory_limit != self.config.memory_limit {
            tracing::warn!("memory_limit is not changed by a reload: restart the agent");
            new.memory_limit = self.config.memory_limit;
        }
        self.resource = new.resource(env);
        self.state.set_interval(new.interval);
        self.config = new;
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Whatever the ring buffer holds now (waits at most one poll interval).
    async fn drain(&mut self) -> Option<Vec<SamplerEvent>> {
        let sampler = self.sampler.as_mut()?;
        match tokio::time::timeout(Duration::from_millis(200), sampler.next_events()).await {
            Ok(Ok(events)) => Some(events),
            Ok(Err(e)) => {
                tracing::warn!("reading the last samples: {e}");
                None
            }
            Err(_) => None,
        }
    }
}

/// Runs the agent until [`Control::Stop`] (or the control channel closes);
/// returns within [`SHUTDOWN_BUDGET`] of it, having flushed the last
/// interval. `started` learns the HTTP address once everything runs.
///
/// Must run inside a tokio runtime with I/O and timers; a multi-threaded
/// one keeps the page and the exporter responsive while an interval is
/// symbolized.
pub async fn run(
    config: AgentConfig,
    mut control: mpsc::UnboundedReceiver<Control>,
    started: Option<oneshot::Sender<Started>>,
) -> Result<AgentSummary, AgentError> {
    config.validate()?;
    let exporter_config = config.exporter_config(env)?;
    let state = Arc::new(AgentState::new(config.interval));
    let budget = config.budget();
    let symbol_cache = budget.symbol_cache_bytes();
    let symbolizer = Arc::new(
        Symbolizer::builder()
            .cache_bytes(
                config
                    .symbol_cache_bytes
                    .map_or(symbol_cache, |b| b.min(symbol_cache)),
            )
            .build(),
    );
    // kallsyms is slow to read: before the sampler, or samples pile up.
    let _ = symbolizer.symbolize(&Source::Kernel, &[0]);
    // The page and the exporter run on threads that hold no capability.
    let http_threads = config
        .http
        .map(|_| UnprivilegedRuntime::start("smolder-http"))
        .transpose()?;
    let http = match (config.http, &http_threads) {
        (Some(addr), Some(threads)) => Some(
            threads
                .handle()
                .spawn(http::HttpServer::start(
                    addr,
                    Arc::clone(&state),
                    config.output_dir.clone(),
                    budget,
                ))
                .await
                .map_err(|e| AgentError::Io {
                    action: format!("starting the HTTP server on {addr}"),
                    source: std::io::Error::other(e.to_string()),
                })??,
        ),
        _ => None,
    };
    let export_threads = UnprivilegedRuntime::start("smolder-export")?;
    let exporter = start_exporter(exporter_config.as_ref(), &export_threads)?;
    let store = open_store(&config)?;
    let sampler = start_sampler(&config)?;
    // Loading parsed the kernel's BTF (tens of MiB, freed): give it back.
    budget::release_free_heap();
    let mut running = Running {
        resource: config.resource(env),
        recording: Recording::new(symbolizer, config.frequency_hz)
            .with_filter(config.filter.process_filter())
            .with_snapshots(Some(sampler.snapshots()))
            .limiting_stack_bytes(budget.interval_stack_bytes()),
        exporter_config,
        state: Arc::clone(&state),
        sampler: Some(sampler),
        exporter,
        store,
        intervals: 0,
        local_write_errors: 0,
        sampler_base: SamplerStats::default(),
        exporter_base: Arc::new(Mutex::new(ExporterStats::default())),
        export_threads,
        samples_held_back_dropped: 0,
        memory: MemoryGuard::default(),
        config,
    };
    running.publish_counters(0);
    tracing::info!(
        "sampling {} at {} Hz, one profile every {:.1?}; {}{}{}",
        if running.config.filter.is_empty() {
            "every process"
        } else {
            "the selected processes"
        },
        running.config.frequency_hz,
        running.config.interval,
        running
            .exporter
            .as_ref()
            .map_or("no OTLP endpoint".to_owned(), |e| format!(
                "exporting to {}",
                e.endpoint()
            )),
        running.store.as_ref().map_or(String::new(), |s| format!(
            ", keeping intervals in {}",
            s.dir().display()
        )),
        http.as_ref()
            .map_or(String::new(), |h| format!(", page on http://{}", h.addr)),
    );
    if let Some(tx) = started {
        let _ = tx.send(Started {
            http: http.as_ref().map(|h| h.addr),
            exporter_endpoint: running.exporter.as_ref().map(|e| e.endpoint().to_owned()),
        });
    }

    let mut deadline = tokio::time::Instant::now() + running.config.interval;
    while let Some(sampler) = running.sampler.as_mut() {
        tokio::select! {
            events = sampler.next_events() => match events {
                Ok(events) => running.feed(events),
                Err(e) => {
                    tracing::error!("reading samples: {e}");
                    break;
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                running.finish_interval(None).await;
                deadline = tokio::time::Instant::now() + running.config.interval;
            }
            message = control.recv() => match message {
                None | Some(Control::Stop) => break,
                Some(Control::Reload(new)) => {
                    if let Err(e) = running.reload(*new).await {
                        tracing::error!("reload failed, the previous settings stay: {e}");
                    }
                    deadline = tokio::time::Instant::now() + running.config.interval;
                }
            },
        }
    }

    // Stop: the last samples, the last interval, the flush; all within budget.
    let stop_started = Instant::now();
    if let Some(events) = running.drain().await {
        running.feed(events);
    }
    running.stop_sampler();
    // Leave time for the flush: symbolizing the last interval gets 3 of the 5 s.
    running
        .finish_interval(Some(
            (SHUTDOWN_BUDGET - Duration::from_secs(2)).saturating_sub(stop_started.elapsed()),
        ))
        .await;
    let exporter = match running.exporter.take() {
        Some(exporter) => {
            let left = SHUTDOWN_BUDGET
                .saturating_sub(stop_started.elapsed())
                .saturating_sub(Duration::from_millis(700));
            let stats = exporter.shutdown(left).await;
            let base = *running
                .exporter_base
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Some(base + stats)
        }
        None => None,
    };
    let mut counters = state.counters();
    counters.exporter = exporter;
    state.set_counters(counters);
    if let Some(http) = http {
        http.stop().await;
    }
    Ok(AgentSummary {
        intervals: running.intervals,
        counters,
        exporter,
    })
}
