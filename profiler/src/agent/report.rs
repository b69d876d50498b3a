//! What the agent shows of itself: the latest interval (its profile, the
//! processes by CPU share, the host-wide flamegraph) and the counters of
//! `/metrics`, shared between the sampling loop (writer) and the HTTP
//! server (reader).

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use smolder_flamegraph::{render, FlamegraphOptions, OFF_CPU_SAMPLE_TYPE};
use smolder_profiles_proto::otlp::common::v1::any_value::Value;
use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::{sample_weight, ProfileView};

/// The sample type of the CPU profiles the sampler makes (`samples`/`count`).
pub const CPU_SAMPLE_TYPE: &str = "samples";

use crate::exporter::ExporterStats;

/// One process of an interval.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessShare {
    pub pid: i64,
    pub name: String,
    pub service_name: Option<String>,
    pub samples: i64,
    /// Share of one CPU over the interval, in percent.
    pub cpu_percent: f64,
    /// Index of its `ResourceProfiles`.
    pub resource: usize,
}

/// The latest finished interval.
pub struct IntervalReport {
    pub data: ProfilesData,
    pub start_unix_nano: u64,
    pub duration: Duration,
    pub frequency_hz: u64,
    /// Busiest first.
    pub processes: Vec<ProcessShare>,
    pub samples: i64,
    /// The host-wide flamegraph, drawn when first asked for.
    host_svg: std::sync::OnceLock<Option<Vec<u8>>>,
}

fn attribute<'a>(
    attrs: &'a [smolder_profiles_proto::otlp::common::v1::KeyValue],
    key: &str,
) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

impl IntervalReport {
    pub fn new(
        data: ProfilesData,
        start_unix_nano: u64,
        duration: Duration,
        frequency_hz: u64,
    ) -> IntervalReport {
        let seconds = duration.as_secs_f64().max(1e-3);
        let view = ProfileView::new(&data);
        let mut processes: Vec<ProcessShare> = data
            .resource_profiles
            .iter()
            .enumerate()
            .map(|(index, rp)| {
                let attrs = rp
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.as_slice())
                    .unwrap_or_default();
                // CPU samples: off-CPU profiles weigh nanoseconds waited.
                let samples: i64 = rp
                    .scope_profiles
                    .iter()
                    .flat_map(|sp| &sp.profiles)
                    .filter(|p| view.value_type(p.sample_type.as_ref()).0 != OFF_CPU_SAMPLE_TYPE)
                    .flat_map(|p| &p.samples)
                    .map(sample_weight)
                    .sum();
                ProcessShare {
                    pid: match attribute(attrs, "process.pid") {
                        Some(Value::IntValue(pid)) => *pid,
                        _ => 0,
                    },
                    name: match attribute(attrs, "process.executable.name") {
                        Some(Value::StringValue(name)) => name.clone(),
                        _ => "?".to_owned(),
                    },
                    service_name: match attribute(attrs, "service.name") {
                        Some(Value::StringValue(name)) => Some(name.clone()),
                        _ => None,
                    },
                    samples,
                    cpu_percent: 100.0 * samples as f64 / (frequency_hz as f64 * seconds),
                    resource: index,
                }
            })
            .collect();
        processes.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.pid.cmp(&b.pid)));
        let samples = processes.iter().map(|p| p.samples).sum();
        IntervalReport {
            data,
            start_unix_nano,
            duration,
            frequency_hz,
            processes,
            samples,
            host_svg: std::sync::OnceLock::new(),
        }
    }

    /// The host-wide flamegraph (a root per process), drawn on the first
    /// call (the page's, not every interval's); `None` without samples.
    pub fn host_svg(&self) -> Option<&[u8]> {
        self.host_svg.get_or_init(|| self.render(None)).as_deref()
    }

    /// The flamegraph of the whole host (`None`) or of one process.
    pub fn render(&self, pid: Option<i64>) -> Option<Vec<u8>> {
        let mut options = FlamegraphOptions {
            title: format!(
                "{} over {:.1}s at {} Hz",
                match pid {
                    None => "every process".to_owned(),
                    Some(pid) => {
                        let name = self
                            .processes
                            .iter()
                            .find(|p| p.pid == pid)
                            .map_or("?", |p| p.name.as_str());
                        format!("{name} [{pid}]")
                    }
                },
                self.duration.as_secs_f64(),
                self.frequency_hz
            ),
            // The CPU profile; off-CPU time is on /view.
            sample_type: Some(CPU_SAMPLE_TYPE.into()),
            ..FlamegraphOptions::default()
        };
        let mut svg = Vec::new();
        let drawn = match pid {
            None => {
                options.process_roots = true;
                render(&self.data, &options, &mut svg)
            }
            Some(pid) => {
                let process = self.processes.iter().find(|p| p.pid == pid)?;
                let one = ProfilesData {
                    resource_profiles: vec![self.data.resource_profiles[process.resource].clone()],
                    dictionary: self.data.dictionary.clone(),
                };
                options.thread_roots = true;
                render(&one, &options, &mut svg)
            }
        };
        drawn.ok().map(|_| svg)
    }
}

/// Everything `/metrics` reports, as totals since the agent started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Samples the kernel program took (after its PID filter).
    pub samples: u64,
    /// Samples that passed the cgroup and name filters into profiles.
    pub samples_kept: u64,
    /// Samples lost to a full ring buffer.
    pub samples_lost: u64,
    /// Samples read while an interval was symbolized that did not fit the
    /// share of the memory limit held for them.
    pub samples_held_back_dropped: u64,
    /// Exec/exit records lost to a full ring buffer.
    pub events_lost: u64,
    /// Stack walks that stopped early or failed (user read faults, frame
    /// limit, kernel stack errors).
    pub unwind_failures: u64,
    /// Frames that got no function name.
    pub unsymbolized_frames: u64,
    /// Errors the symbolizer counted (unreadable files, corrupt ELF or DWARF).
    pub symbolization_errors: u64,
    /// Binaries that could not be opened (gone, too large, outside the root).
    pub objects_unopenable: u64,
    /// Perf maps refused by the open rule or cut at their caps.
    pub perf_maps_refused: u64,
    /// JIT frames named from perf maps.
    pub jit_frames_named: u64,
    /// Python frames named from code objects; processes running a CPython
    /// of a layout smolder does not know (native frames only).
    pub python_frames_named: u64,
    pub python_unsupported: u64,
    pub python_frames_unreadable: u64,
    /// Samples of processes that exited before their mappings were read.
    pub samples_of_vanished_processes: u64,
    /// Processes gone before their samples were read whose mappings were
    /// read at their exec (by the prefetcher), and exec/exit records the
    /// prefetcher's ring lost.
    pub processes_read_at_exec: u64,
    pub prefetch_events_lost: u64,
    /// Intervals finished.
    pub intervals: u64,
    /// Intervals that could not be written to the output directory.
    pub local_write_errors: u64,
    /// Unwind tables loaded into the kernel (0 until `.eh_frame` unwinding lands).
    pub unwind_tables_loaded: u64,
    /// Off-CPU: blocking switches of profiled threads, waits recorded,
    /// waits skipped (shorter than the minimum; left out by the
    /// probability; not back through a system call, stack unknown), and
    /// records lost to a full ring buffer.
    pub off_cpu_switches: u64,
    pub off_cpu_recorded: u64,
    pub off_cpu_skipped_short: u64,
    pub off_cpu_skipped_probability: u64,
    pub off_cpu_unmatched: u64,
    pub off_cpu_lost: u64,
    /// Processes in the latest interval.
    pub processes: u64,
    /// The memory limit, the agent's resident memory at the last check and
    /// the highest seen, the symbolizer cache's bytes, the unwind rows'
    /// bytes in the kernel (and their cap), tables evicted to stay under
    /// it, and what the limit dropped: distinct stacks of an interval
    /// beyond its share, and times the caches were emptied because
    /// resident memory came near the limit.
    pub memory_limit_bytes: u64,
    pub rss_bytes: u64,
    pub rss_peak_bytes: u64,
    pub symbol_cache_bytes: u64,
    pub unwind_table_bytes: u64,
    pub unwind_table_cap_bytes: u64,
    pub unwind_tables_evicted: u64,
    /// Binaries walked by frame pointers because their table could not be
    /// built (no CFI, malformed, or over the table memory or build budget).
    pub unwind_table_failures: u64,
    pub stacks_dropped: u64,
    pub memory_trims: u64,
    /// Binaries read without their debug sections (or `.symtab`) to stay
    /// within the symbol cache's share of the limit.
    pub objects_cut_to_budget: u64,
    pub exporter: Option<ExporterStats>,
}

/// The state the HTTP server reads.
pub struct AgentState {
    latest: RwLock<Option<Arc<IntervalReport>>>,
    counters: Mutex<Counters>,
    last_interval_at: Mutex<Instant>,
    /// When the interval being finished (symbolized, written) ended, while
    /// that work runs.
    finishing_since: Mutex<Option<Instant>>,
    /// Whether any interval finished yet.
    finished_one: std::sync::atomic::AtomicBool,
    /// The interval length now (for `/healthz`).
    interval: Mutex<Duration>,
}

/// How long `/healthz` waits for the first interval after the start (BPF
/// load, then the first symbolization of every binary on the host) and for
/// the finishing of one interval, before it calls the agent stalled.
pub const HEALTH_GRACE: Duration = Duration::from_secs(60);

impl AgentState {
    pub fn new(interval: Duration) -> AgentState {
        AgentState {
            latest: RwLock::new(None),
            counters: Mutex::new(Counters::default()),
            last_interval_at: Mutex::new(Instant::now()),
            finishing_since: Mutex::new(None),
            finished_one: std::sync::atomic::AtomicBool::new(false),
            interval: Mutex::new(interval),
        }
    }

    /// An interval ended; its symbolization and writing start now.
    pub fn finishing(&self) {
        *self
            .finishing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    pub fn latest(&self) -> Option<Arc<IntervalReport>> {
        self.latest
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_latest(&self, report: IntervalReport) {
        *self.latest.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(report));
        *self
            .last_interval_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.interval_done();
    }

    /// The interval being finished is done (stored and published, or dropped).
    pub fn interval_done(&self) {
        *self
            .finishing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.finished_one
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn counters(&self) -> Counters {
        *self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_counters(&self, counters: Counters) {
        *self.counters.lock().unwrap_or_else(PoisonError::into_inner) = counters;
    }

    pub fn set_interval(&self, interval: Duration) {
        *self.interval.lock().unwrap_or_else(PoisonError::into_inner) = interval;
    }

    /// Healthy while intervals keep finishing: the last one ended less
    /// than three intervals ago. A slow host is not a stalled agent: the
    /// first interval may take [`HEALTH_GRACE`] after the start, and so may
    /// the symbolization of an interval that has ended.
    pub fn healthy(&self) -> bool {
        let interval = *self.interval.lock().unwrap_or_else(PoisonError::into_inner);
        let since_last = self
            .last_interval_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .elapsed();
        if since_last < interval * 3 + Duration::from_secs(1) {
            return true;
        }
        if !self.finished_one.load(std::sync::atomic::Ordering::Relaxed)
            && since_last < HEALTH_GRACE + interval
        {
            return true;
        }
        self.finishing_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < HEALTH_GRACE)
    }
}

/// The counters in the Prometheus text exposition format (0.0.4).
pub fn prometheus_text(c: &Counters) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    family(
        "smolder_samples_total",
        "counter",
        "Samples taken by the eBPF program (after the in-kernel PID filter).",
        &[("", c.samples)],
    );
    family(
        "smolder_samples_kept_total",
        "counter",
        "Samples that passed the cgroup and executable filters into profiles.",
        &[("", c.samples_kept)],
    );
    family(
        "smolder_samples_lost_total",
        "counter",
        "Samples lost because the ring buffer was full.",
        &[("", c.samples_lost)],
    );
    family(
        "smolder_samples_held_back_dropped_total",
        "counter",
        "Samples read while an interval was symbolized and dropped: more than the memory limit's share for them.",
        &[("", c.samples_held_back_dropped)],
    );
    family(
        "smolder_events_lost_total",
        "counter",
        "Process exec/exit records lost because the ring buffer was full.",
        &[("", c.events_lost)],
    );
    family(
        "smolder_unwind_failures_total",
        "counter",
        "Stack walks that faulted, hit the frame limit, or lost the kernel stack.",
        &[("", c.unwind_failures)],
    );
    family(
        "smolder_unsymbolized_frames_total",
        "counter",
        "Frames that got no function name.",
        &[("", c.unsymbolized_frames)],
    );
    family(
        "smolder_symbolization_errors_total",
        "counter",
        "Errors while symbolizing: unreadable files, corrupt ELF or DWARF.",
        &[("", c.symbolization_errors)],
    );
    family(
        "smolder_objects_unopenable_total",
        "counter",
        "Binaries that could not be opened (gone, too large, or outside the process's root).",
        &[("", c.objects_unopenable)],
    );
    family(
        "smolder_perf_maps_refused_total",
        "counter",
        "Perf maps not read: not a regular file owned by the process inside its root, or over the cap.",
        &[("", c.perf_maps_refused)],
    );
    family(
        "smolder_jit_frames_named_total",
        "counter",
        "Frames in anonymous executable memory named from the process's perf map.",
        &[("", c.jit_frames_named)],
    );
    family(
        "smolder_python_frames_named_total",
        "counter",
        "Python frames unwound in the kernel and named from their code objects.",
        &[("", c.python_frames_named)],
    );
    family(
        "smolder_python_processes_unsupported_total",
        "counter",
        "Processes running a CPython whose layout smolder does not know: native frames only.",
        &[("", c.python_unsupported)],
    );
    family(
        "smolder_python_frames_unreadable_total",
        "counter",
        "Python frames whose code object, name, file or line table was not readable as one (freed or forged): kept by address.",
        &[("", c.python_frames_unreadable)],
    );
    family(
        "smolder_samples_of_vanished_processes_total",
        "counter",
        "Samples whose process exited before its mappings were read (frames kept as addresses).",
        &[("", c.samples_of_vanished_processes)],
    );
    family(
        "smolder_processes_read_at_exec_total",
        "counter",
        "Processes gone before their samples were read, symbolized from what was read at their exec.",
        &[("", c.processes_read_at_exec)],
    );
    family(
        "smolder_prefetch_events_lost_total",
        "counter",
        "Exec/exit records lost on the process prefetcher's ring (full): those processes are read late.",
        &[("", c.prefetch_events_lost)],
    );
    family(
        "smolder_intervals_total",
        "counter",
        "Profiling intervals finished.",
        &[("", c.intervals)],
    );
    family(
        "smolder_local_write_errors_total",
        "counter",
        "Intervals that could not be written to the output directory.",
        &[("", c.local_write_errors)],
    );
    family(
        "smolder_unwind_tables_loaded",
        "gauge",
        "Unwind tables loaded into the kernel for frame-pointer-less code.",
        &[("", c.unwind_tables_loaded)],
    );
    family(
        "smolder_off_cpu_switches_total",
        "counter",
        "Off-CPU: times a profiled thread blocked (switched out, not preempted).",
        &[("", c.off_cpu_switches)],
    );
    family(
        "smolder_off_cpu_recorded_total",
        "counter",
        "Off-CPU: waits recorded with their stacks.",
        &[("", c.off_cpu_recorded)],
    );
    family(
        "smolder_off_cpu_skipped_total",
        "counter",
        "Off-CPU: waits not recorded, by reason: shorter than the minimum, left out by the probability, back in user space other than through a system call (stack unknown).",
        &[
            ("{reason=\"short\"}", c.off_cpu_skipped_short),
            ("{reason=\"probability\"}", c.off_cpu_skipped_probability),
            ("{reason=\"unmatched\"}", c.off_cpu_unmatched),
        ],
    );
    family(
        "smolder_off_cpu_lost_total",
        "counter",
        "Off-CPU: recorded waits lost because the ring buffer was full.",
        &[("", c.off_cpu_lost)],
    );
    family(
        "smolder_processes",
        "gauge",
        "Processes in the latest interval.",
        &[("", c.processes)],
    );
    family(
        "smolder_memory_limit_bytes",
        "gauge",
        "The agent's memory limit (memory_limit): every cache and table is sized from it.",
        &[("", c.memory_limit_bytes)],
    );
    family(
        "smolder_resident_memory_bytes",
        "gauge",
        "The agent's resident memory after the latest interval.",
        &[("", c.rss_bytes)],
    );
    family(
        "smolder_resident_memory_peak_bytes",
        "gauge",
        "The highest resident memory seen after an interval.",
        &[("", c.rss_peak_bytes)],
    );
    family(
        "smolder_symbol_cache_bytes",
        "gauge",
        "Bytes held by the symbolizer's cache of parsed binaries.",
        &[("", c.symbol_cache_bytes)],
    );
    family(
        "smolder_unwind_table_bytes",
        "gauge",
        "Kernel memory used by unwind-table rows, and its cap (a share of the memory limit).",
        &[
            ("{kind=\"used\"}", c.unwind_table_bytes),
            ("{kind=\"cap\"}", c.unwind_table_cap_bytes),
        ],
    );
    family(
        "smolder_unwind_tables_evicted_total",
        "counter",
        "Unwind tables evicted to stay under their cap (reloaded when walked again).",
        &[("", c.unwind_tables_evicted)],
    );
    family(
        "smolder_unwind_table_failures_total",
        "counter",
        "Binaries walked by frame pointers: no table could be built (no CFI, malformed, over the table memory or the build budget).",
        &[("", c.unwind_table_failures)],
    );
    family(
        "smolder_stacks_dropped_total",
        "counter",
        "Samples of new distinct stacks dropped because an interval's stacks reached their share of the memory limit.",
        &[("", c.stacks_dropped)],
    );
    family(
        "smolder_objects_cut_to_budget_total",
        "counter",
        "Binaries read without their debug sections (names, no lines) because these were over the symbol cache's share of the memory limit.",
        &[("", c.objects_cut_to_budget)],
    );
    family(
        "smolder_memory_trims_total",
        "counter",
        "Times the caches were emptied because resident memory came near the memory limit.",
        &[("", c.memory_trims)],
    );
    let e = c.exporter.unwrap_or_default();
    family(
        "smolder_exporter_enabled",
        "gauge",
        "1 when profiles are exported over OTLP/gRPC.",
        &[("", u64::from(c.exporter.is_some()))],
    );
    family(
        "smolder_exports_total",
        "counter",
        "Export requests by outcome: accepted, or dropped after a permanent error.",
        &[
            ("{result=\"success\"}", e.exported_batches),
            ("{result=\"failure\"}", e.failed_batches),
        ],
    );
    family(
        "smolder_export_failed_attempts_total",
        "counter",
        "Export attempts that failed, retried or not.",
        &[("", e.failed_attempts)],
    );
    family(
        "smolder_export_retries_total",
        "counter",
        "Export attempts after the first of a batch.",
        &[("", e.retries)],
    );
    family(
        "smolder_export_dropped_batches_total",
        "counter",
        "Batches dropped because the export queue was full.",
        &[("", e.dropped_batches)],
    );
    family(
        "smolder_export_dropped_bytes_total",
        "counter",
        "Bytes of the batches dropped because the export queue was full.",
        &[("", e.dropped_bytes)],
    );
    family(
        "smolder_export_rejected_profiles_total",
        "counter",
        "Profiles the collector rejected in a partial success.",
        &[("", e.rejected_profiles)],
    );
    family(
        "smolder_export_queue_bytes",
        "gauge",
        "Bytes waiting in the export queue, the batch being sent included.",
        &[("", e.queue_bytes)],
    );
    family(
        "smolder_export_queue_limit_bytes",
        "gauge",
        "The export queue's bound.",
        &[("", e.queue_limit_bytes)],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_allows_a_slow_start_and_a_slow_interval_but_not_a_stall() {
        let state = AgentState::new(Duration::from_secs(1));
        let ago = |s: u64| Instant::now().checked_sub(Duration::from_secs(s)).unwrap();
        let set_last = |t: Instant| *state.last_interval_at.lock().unwrap() = t;
        assert!(state.healthy(), "just started");
        set_last(ago(10));
        assert!(
            state.healthy(),
            "no interval yet, within the start-up grace"
        );
        set_last(ago(62));
        assert!(!state.healthy(), "no interval a minute after the start");
        state.interval_done();
        set_last(ago(2));
        assert!(state.healthy(), "intervals finishing");
        set_last(ago(10));
        assert!(
            !state.healthy(),
            "stalled: nothing finished for 10 intervals"
        );
        state.finishing();
        assert!(state.healthy(), "an interval is being symbolized");
        *state.finishing_since.lock().unwrap() = Some(ago(61));
        assert!(
            !state.healthy(),
            "its symbolization has taken over a minute"
        );
    }

    #[test]
    fn processes_by_share_and_graphs() {
        use smolder_profiles_proto::*;
        let mut b = ProfileBuilder::new(ProfileConfig::cpu(10, 0, 1_000_000_000));
        let cpu = b.default_profile_type();
        for (pid, name, n) in [(1, "idle", 1), (2, "busy", 8)] {
            let r = b.resource(vec![
                key_value("process.pid", int_value(pid)),
                key_value("process.executable.name", string_value(name)),
            ]);
            let loc = b.location(&LocationSpec {
                lines: vec![SourceLine::function(format!("{name}_work"))],
                ..LocationSpec::default()
            });
            let stack = b.stack(&[loc]);
            b.add_sample(r, cpu, stack, &[], n, None);
        }
        let report = IntervalReport::new(b.finish(), 0, Duration::from_secs(1), 10);
        assert_eq!(report.processes[0].name, "busy");
        assert_eq!(report.processes[0].cpu_percent, 80.0);
        assert_eq!(report.samples, 9);
        let host = String::from_utf8(report.host_svg().unwrap().to_vec()).unwrap();
        assert!(host.contains("busy_work") && host.contains("idle_work"));
        let one = String::from_utf8(report.render(Some(1)).unwrap()).unwrap();
        assert!(one.contains("idle_work") && !one.contains("busy_work"));
        assert!(report.render(Some(99)).is_none());
    }

    #[test]
    fn metrics_text_has_a_type_for_every_family() {
        let text = prometheus_text(&Counters {
            samples: 5,
            ..Counters::default()
        });
        assert!(text.contains("smolder_samples_total 5\n"));
        assert!(text.contains("smolder_exports_total{result=\"failure\"} 0\n"));
        assert!(text.contains("smolder_off_cpu_skipped_total{reason=\"short\"} 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }
}
