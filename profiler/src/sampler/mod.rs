//! The eBPF sampler: loads `profiler/bpf/sampler.bpf.o` with aya, attaches
//! it to a cpu-clock perf event on every online CPU, and turns the ring
//! buffer records into [`SamplerEvent`]s (samples with kernel and user
//! stacks, exec and exit of processes).
//!
//! Owns the kernel program's lifetime, its maps and the PID filter, and
//! keeps the kernel walker's unwind tables loaded (`unwind_maps`: a worker
//! thread loads a process's tables when its samples report unknown
//! mappings). It does not resolve addresses: PCs leave here raw, with unix
//! timestamps.
//!
//! ```no_run
//! # async fn run() -> Result<(), smolder::sampler::SamplerError> {
//! use smolder::sampler::{Sampler, SamplerConfig, SamplerEvent};
//!
//! let mut sampler = Sampler::start(SamplerConfig::default())?;
//! for event in sampler.next_events().await? {
//!     if let SamplerEvent::Sample { sample, .. } = event {
//!         println!("{} {} {} user frames", sample.pid, sample.thread_name, sample.user.len());
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod child;
mod clock;
mod prefetch;
pub mod python;
mod raw;
mod stats;
#[cfg(test)]
mod tests;
mod unwind_maps;

use std::{
    error::Error as StdError,
    io,
    os::fd::OwnedFd,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::{
    maps::MapType,
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
    programs::{
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        BtfTracePoint, PerfEvent, ProgramType,
    },
    sys::BpfHelper,
    Btf, Ebpf, EbpfLoader, Endianness,
};
use tokio::io::unix::AsyncFd;

pub use child::{ChildError, GatedChild};
pub use clock::BootClock;
pub use raw::{ParseError, SampleFlags};
pub use stats::SamplerStats;

use crate::pipeline::Sample;
use crate::unwind::Regs;
use prefetch::Prefetcher;
use unwind_maps::UnwindLoader;

/// The kernel program, built by `profiler/bpf/build.sh`.
static SAMPLER_OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/sampler.bpf.o");

const PROG_SAMPLE: &str = "smolder_sample";
const PROG_FORK: &str = "smolder_fork";
const PROG_EXEC: &str = "smolder_exec";
const PROG_EXIT: &str = "smolder_exit";
const PROG_SWITCH: &str = "smolder_switch";
const PROG_OFF_CPU_SAMPLE: &str = "smolder_off_cpu_sample";
const MAP_OFF_CPU_WAITS: &str = "OFF_CPU_WAITS";
const MAP_OFF_CPU_RESUMED: &str = "OFF_CPU_RESUMED";
const MAP_EVENTS: &str = "EVENTS";
const MAP_PROC_EVENTS: &str = "PROC_EVENTS";
const MAP_FILTER: &str = "FILTER_PIDS";
const MAP_STATS: &str = "STATS";
const MAP_UNWIND_ROWS: &str = "UNWIND_ROWS";
const MAP_UNWIND_TABLES: &str = "UNWIND_TABLES";
const MAP_PROC_MAPPINGS: &str = "PROC_MAPPINGS";
/// Where the kernel publishes its BTF.
pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
/// Environment variable that points the loader at another BTF file
/// (for a kernel without `/sys/kernel/btf/vmlinux`, or to test that case).
pub const BTF_PATH_ENV: &str = "SMOLDER_BTF_PATH";

/// Off-CPU sampling: where sampled threads block, and for how long.
///
/// A thread that blocks (is switched out other than by preemption) is
/// chosen with `probability`; when it next runs, if it was off the CPU for
/// at least `min_blocked`, its stacks (still those it blocked with) are
/// sent with the time it waited, scaled by `1 / probability` so that sums
/// estimate real time.
#[derive(Debug, Clone, PartialEq)]
pub struct OffCpuConfig {
    /// Waits shorter than this are not recorded (nor walked).
    pub min_blocked: Duration,
    /// The chance that a blocking switch is recorded, in (0, 1].
    pub probability: f64,
    /// Threads blocked at once that can be tracked; beyond that the least
    /// recently switched out are forgotten (their wait is not recorded).
    pub max_threads: u32,
}

impl Default for OffCpuConfig {
    fn default() -> Self {
        OffCpuConfig {
            min_blocked: Duration::from_millis(1),
            probability: 1.0,
            max_threads: 16384,
        }
    }
}

impl OffCpuConfig {
    /// `probability` as the kernel program compares it with
    /// `bpf_get_prandom_u32()`: `probability * 2^32`.
    fn threshold(&self) -> u64 {
        ((self.probability * 4_294_967_296.0).round() as u64).clamp(1, 1 << 32)
    }

    /// The estimate of real off-CPU time a recorded wait of `ns` stands for.
    fn scale(&self, ns: u64) -> u64 {
        if self.probability >= 1.0 {
            ns
        } else {
            (ns as f64 / self.probability).round() as u64
        }
    }
}

/// What to sample and how records reach user space.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Samples per second on each CPU (frequency mode).
    pub frequency_hz: u64,
    /// Sample only these processes (tgids) and the processes they start.
    /// `None` samples everything.
    pub pid_filter: Option<Vec<u32>>,
    /// Ring buffer size: a power of two, a multiple of the page size.
    pub ring_buffer_bytes: u32,
    /// How often [`Sampler::next_events`] returns when the ring buffer is
    /// less than half full.
    pub poll_interval: Duration,
    /// Turn on the kernel's BPF run-time statistics for the sampler's
    /// lifetime, for [`Sampler::bpf_run_stats`] (costs ~2 clock reads per
    /// run). Needs CAP_SYS_ADMIN; without it, a warning and no statistics.
    pub bpf_stats: bool,
    /// Kernel memory for unwind table rows (16 bytes a row), allocated when
    /// the sampler starts; tables the walker used least recently are evicted
    /// to stay under it. 0: no tables, user stacks by frame pointers only.
    pub unwind_table_bytes: u64,
    /// Memory one table build may use in this process (the CFI copied in,
    /// then the rows gathered, 16 bytes each): a binary whose table needs
    /// more is walked by frame pointers, and counted as a table failure.
    pub unwind_build_bytes: usize,
    /// Debug: send a copy of the user stack (up to 64 KiB) with every sample
    /// of this process, read with [`Sampler::take_stack_copies`].
    pub stack_copy_pid: Option<u32>,
    /// Unwind CPython frames in the kernel walker (needs unwind tables):
    /// Python frames replace the interpreter's eval loop. Off: native
    /// frames only (the benchmark's baseline).
    pub python_frames: bool,
    /// The kernel's BTF, for CO-RE relocations and BTF tracepoints. `None`:
    /// `$SMOLDER_BTF_PATH` if set, else `/sys/kernel/btf/vmlinux`.
    pub btf_path: Option<PathBuf>,
    /// Also sample where threads wait ([`OffCpuConfig`]); `None`: on-CPU only.
    pub off_cpu: Option<OffCpuConfig>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            frequency_hz: 99,
            pid_filter: None,
            ring_buffer_bytes: 1 << 20,
            poll_interval: Duration::from_millis(20),
            bpf_stats: false,
            unwind_table_bytes: 64 << 20,
            unwind_build_bytes: usize::MAX,
            stack_copy_pid: None,
            python_frames: true,
            btf_path: None,
            off_cpu: None,
        }
    }
}

impl SamplerConfig {
    /// The BTF file the loader reads ([`SamplerConfig::btf_path`]).
    pub fn resolved_btf_path(&self) -> PathBuf {
        self.btf_path
            .clone()
            .or_else(|| std::env::var_os(BTF_PATH_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(BTF_PATH))
    }
}

/// One record from the kernel program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SamplerEvent {
    /// What one CPU was running at one tick, in the pipeline's one sample
    /// shape (unix time; user PCs leaf first, the interrupted IP then
    /// return addresses), with what the kernel walker says of the stack.
    Sample { sample: Sample, flags: SampleFlags },
    /// The process replaced its image: its mappings changed.
    Exec {
        pid: u32,
        comm: String,
        time_ns: u64,
    },
    /// The last thread of the process exited.
    Exit { pid: u32, time_ns: u64 },
}

/// A copy of the user stack of one sample ([`SamplerConfig::stack_copy_pid`]):
/// what the kernel walker read, for walking it again in user space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackCopy {
    pub pid: u32,
    pub tid: u32,
    /// Unix nanoseconds: the `time_ns` of the sample it belongs to.
    pub time_ns: u64,
    /// The user registers the kernel walk started from.
    pub regs: Regs,
    /// The bytes at `regs.sp ..`.
    pub stack: Vec<u8>,
}

/// Why the sampler could not start or read.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error(
        "{action}: permission denied (EPERM). {detail} Run as root, or grant \
         CAP_BPF and CAP_PERFMON (and CAP_SYSLOG to read kernel symbols), e.g. \
         `setcap cap_bpf,cap_perfmon,cap_syslog+ep <binary>`"
    )]
    Permission {
        action: String,
        detail: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    #[error(
        "the kernel has no BTF: {} is missing (the eBPF sampler needs a kernel \
         built with CONFIG_DEBUG_INFO_BTF=y; the minimum kernel is 5.17)",
        path.display()
    )]
    NoBtf { path: PathBuf },
    /// The kernel lacks a feature the kernel program uses: probed before
    /// loading, so that an old kernel gets this rather than a verifier log.
    #[error(
        "the kernel ({release}) lacks {feature}, which the eBPF sampler needs \
         (Linux {since} or later; the minimum kernel is 5.17)"
    )]
    MissingFeature {
        feature: &'static str,
        since: &'static str,
        release: String,
    },
    /// `perf_event_open` refused with EACCES under `kernel.perf_event_paranoid`
    /// above 2: Debian's and Ubuntu's kernels then demand CAP_SYS_ADMIN, which
    /// CAP_PERFMON does not replace.
    #[error(
        "{action}: refused (EACCES) with kernel.perf_event_paranoid = {level}: this \
         kernel (a Debian or Ubuntu patch) then allows perf events only with \
         CAP_SYS_ADMIN; set `sysctl kernel.perf_event_paranoid=2`, or keep \
         CAP_SYS_ADMIN (`smolder agent --keep-capabilities`)"
    )]
    PerfParanoid {
        action: String,
        level: i32,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    #[error("invalid sampler configuration: {0}")]
    Config(String),
    #[error("{action}")]
    Kernel {
        action: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    #[error("waiting for the ring buffer: {0}")]
    Io(#[from] io::Error),
}

impl SamplerError {
    /// True when the machine or the caller's privileges cannot run eBPF at
    /// all (as opposed to a bug in the sampler).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            SamplerError::Permission { .. }
                | SamplerError::PerfParanoid { .. }
                | SamplerError::NoBtf { .. }
                | SamplerError::MissingFeature { .. }
        )
    }

    fn kernel(action: impl Into<String>, source: impl StdError + Send + Sync + 'static) -> Self {
        let action = action.into();
        let eperm = {
            let mut cause: Option<&(dyn StdError + 'static)> = Some(&source);
            let mut found = false;
            while let Some(e) = cause {
                if let Some(io) = e.downcast_ref::<io::Error>() {
                    found |= io.raw_os_error() == Some(libc::EPERM);
                }
                cause = e.source();
            }
            found
        };
        if eperm {
            SamplerError::Permission {
                action,
                detail: capability_report(),
                source: Box::new(source),
            }
        } else {
            SamplerError::Kernel {
                action,
                source: Box::new(source),
            }
        }
    }
}

/// Which of the capabilities the sampler needs this process lacks.
fn capability_report() -> String {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_SYSLOG: u32 = 34;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        });
    let Some(caps) = effective else {
        return "Could not read CapEff from /proc/self/status.".into();
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYSLOG, "CAP_SYSLOG"),
    ]
    .into_iter()
    .filter(|&(cap, _)| !has(cap) && !has(CAP_SYS_ADMIN))
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        "The process has the capabilities; the kernel still refused (lockdown, \
         seccomp, or a container without BPF access?)."
            .into()
    } else {
        format!("Missing: {}.", missing.join(", "))
    }
}

/// The ring buffer, registered with tokio on the first async read.
enum Ring {
    Plain(RingBuf<MapData>),
    Async(AsyncFd<RingBuf<MapData>>),
    Moving,
}

impl Ring {
    fn get_mut(&mut self) -> Option<&mut RingBuf<MapData>> {
        match self {
            Ring::Plain(r) => Some(r),
            Ring::Async(a) => Some(a.get_mut()),
            Ring::Moving => None,
        }
    }
}

/// The loaded and attached kernel program. Dropping it detaches everything.
pub struct Sampler {
    // Declared before `bpf`: the ring buffers and stats fd go first.
    ring: Ring,
    prefetch: Prefetcher,
    _stats_fd: Option<OwnedFd>,
    bpf: Ebpf,
    filtering: bool,
    off_cpu: Option<OffCpuConfig>,
    poll_interval: Duration,
    next_poll: Instant,
    cpus: Vec<u32>,
    parsed: u64,
    malformed: u64,
    unwind: Option<UnwindLoader>,
    stack_copies: Vec<StackCopy>,
}

impl Sampler {
    /// What the process prefetcher read of each process at its exec: hand
    /// it to the [`crate::pipeline::Recording`] fed from this sampler
    /// ([`crate::pipeline::Recording::with_snapshots`]), so that processes
    /// gone before their samples are read still get their mappings.
    pub fn snapshots(&self) -> Arc<crate::pipeline::ProcessSnapshots> {
        Arc::clone(self.prefetch.snapshots())
    }
}

impl Sampler {
    /// Loads the kernel program and attaches it on every online CPU; samples
    /// flow from the moment this returns.
    ///
    /// Read `/proc/kallsyms` (or anything else slow) *before* calling this:
    /// a reader that stalls between attach and its first poll loses samples
    /// once the ring buffer fills.
    ///
    /// Errors: [`SamplerError::Permission`] names the missing capabilities
    /// (CAP_BPF + CAP_PERFMON suffice to load, attach and read, kernel stacks
    /// included; CAP_SYSLOG is for reading `/proc/kallsyms` addresses),
    /// [`SamplerError::NoBtf`] when the kernel has no BTF,
    /// [`SamplerError::MissingFeature`] when it lacks a helper, map or
    /// program type the kernel program uses.
    pub fn start(config: SamplerConfig) -> Result<Sampler, SamplerError> {
        validate(&config)?;
        let btf_path = config.resolved_btf_path();
        if !btf_path.exists() {
            return Err(SamplerError::NoBtf { path: btf_path });
        }
        probe_kernel_features()?;
        // aya 0.14's `EbpfLoader::new` parses the kernel's BTF itself, with
        // no way around it. It is made and emptied before our own parse, so
        // that the two copies are never held together: they were the
        // agent's start-up peak (a parse of this machine's 5.5 MB vmlinux
        // BTF holds about 18 MiB at its height, 9.4 MiB of it the type list).
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        let btf = Btf::parse_file(&btf_path, Endianness::default())
            .map_err(|e| SamplerError::kernel(format!("reading {}", btf_path.display()), e))?;
        let filtering = config.pid_filter.is_some();
        // Best effort: BPF_ENABLE_STATS needs CAP_SYS_ADMIN, sampling does not.
        let stats_fd = if config.bpf_stats {
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .inspect_err(|e| {
                    tracing::warn!(
                        "BPF run-time statistics stay off (they need CAP_SYS_ADMIN): {e}"
                    )
                })
                .ok()
        } else {
            None
        };
        let filter_flag = u8::from(filtering);
        let copy_tgid = config.stack_copy_pid.unwrap_or(0);
        let table_rows = u32::try_from(config.unwind_table_bytes / unwind_maps::ROW_BYTES)
            .unwrap_or(u32::MAX)
            .max(1);
        let off_cpu_min_ns = config.off_cpu.as_ref().map_or(0, |o| {
            u64::try_from(o.min_blocked.as_nanos()).unwrap_or(u64::MAX)
        });
        let off_cpu_threshold = config.off_cpu.as_ref().map_or(0, OffCpuConfig::threshold);
        let off_cpu_threads = config.off_cpu.as_ref().map_or(1, |o| o.max_threads);
        let mut bpf = loader
            .btf(Some(&btf))
            .override_global("filter_enabled", &filter_flag, true)
            .override_global("stack_copy_tgid", &copy_tgid, true)
            .override_global("off_cpu_min_ns", &off_cpu_min_ns, true)
            .override_global("off_cpu_threshold", &off_cpu_threshold, true)
            .map_max_entries(MAP_EVENTS, config.ring_buffer_bytes)
            .map_max_entries(MAP_UNWIND_ROWS, table_rows)
            .map_max_entries(MAP_OFF_CPU_WAITS, off_cpu_threads)
            // About 1 KiB a thread (its kernel stack): only threads between
            // switch-in and their return to user space, a few per CPU.
            .map_max_entries(
                MAP_OFF_CPU_RESUMED,
                if config.off_cpu.is_some() { 1024 } else { 1 },
            )
            .load(SAMPLER_OBJECT)
            .map_err(|e| {
                SamplerError::kernel("loading the eBPF sampler (maps, BTF relocations)", e)
            })?;

        {
            let map = bpf
                .map_mut(MAP_FILTER)
                .ok_or_else(|| missing("map", MAP_FILTER))?;
            let mut filter: BpfHashMap<&mut MapData, u32, u8> = BpfHashMap::try_from(map)
                .map_err(|e| SamplerError::kernel("opening FILTER_PIDS", e))?;
            for &pid in config.pid_filter.iter().flatten() {
                filter.insert(pid, 1, 0).map_err(|e| {
                    SamplerError::kernel(format!("adding PID {pid} to the filter"), e)
                })?;
            }
        }

        let mut unwind = if config.unwind_table_bytes >= unwind_maps::ROW_BYTES {
            let mut take = |name| bpf.take_map(name).ok_or_else(|| missing("map", name));
            let loader = UnwindLoader::start(
                take(MAP_UNWIND_ROWS)?,
                take(MAP_UNWIND_TABLES)?,
                take(MAP_PROC_MAPPINGS)?,
                if config.python_frames {
                    Some(take(python::MAP_PYTHON_PROCS)?)
                } else {
                    None
                },
                config.unwind_build_bytes,
            )
            .map_err(|e| SamplerError::Kernel {
                action: "setting up the unwind table maps".into(),
                source: e.into(),
            })?;
            Some(loader)
        } else {
            None
        };
        if let Some(loader) = &mut unwind {
            for &pid in config.pid_filter.iter().flatten() {
                loader.request(pid);
            }
        }

        // Process events first, so that no exec or fork after the first
        // sample is missed. Raw BTF tracepoints: no tracefs needed.
        let mut process_events = vec![
            (PROG_EXEC, "sched_process_exec"),
            (PROG_EXIT, "sched_process_exit"),
        ];
        if filtering {
            process_events.push((PROG_FORK, "sched_process_fork"));
        }
        for (prog, tracepoint) in process_events {
            let tp: &mut BtfTracePoint = program(&mut bpf, prog)?;
            tp.load(tracepoint, &btf)
                .map_err(|e| SamplerError::kernel(format!("loading {prog} (verifier)"), e))?;
            tp.attach().map_err(|e| {
                SamplerError::kernel(format!("attaching to tp_btf/{tracepoint}"), e)
            })?;
        }

        if config.off_cpu.is_some() {
            attach_off_cpu(&mut bpf, &btf)?;
        }

        let cpus = aya::util::online_cpus()
            .map_err(|(path, e)| SamplerError::kernel(format!("reading {path}"), e))?;
        let perf: &mut PerfEvent = program(&mut bpf, PROG_SAMPLE)?;
        perf.load()
            .map_err(|e| SamplerError::kernel(format!("loading {PROG_SAMPLE} (verifier)"), e))?;
        for &cpu in &cpus {
            perf.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(config.frequency_hz),
                false,
            )
            .map_err(|e| {
                let action = format!(
                    "opening the cpu-clock perf event at {} Hz on CPU {cpu}",
                    config.frequency_hz
                );
                match perf_paranoid_refusal(&e) {
                    Some(level) => SamplerError::PerfParanoid {
                        action,
                        level,
                        source: Box::new(e),
                    },
                    None => SamplerError::kernel(action, e),
                }
            })?;
        }
        log_program_sizes(&bpf);

        let events = bpf
            .take_map(MAP_EVENTS)
            .ok_or_else(|| missing("map", MAP_EVENTS))?;
        let ring = RingBuf::try_from(events)
            .map_err(|e| SamplerError::kernel("opening the EVENTS ring buffer", e))?;
        let proc_events = bpf
            .take_map(MAP_PROC_EVENTS)
            .ok_or_else(|| missing("map", MAP_PROC_EVENTS))?;
        let proc_ring = RingBuf::try_from(proc_events)
            .map_err(|e| SamplerError::kernel("opening the PROC_EVENTS ring buffer", e))?;
        let prefetch = Prefetcher::start(proc_ring).map_err(|e| SamplerError::Kernel {
            action: "starting the process prefetcher thread".into(),
            source: e.into(),
        })?;
        Ok(Sampler {
            ring: Ring::Plain(ring),
            _stats_fd: stats_fd,
            bpf,
            filtering,
            off_cpu: config.off_cpu,
            poll_interval: config.poll_interval,
            next_poll: Instant::now() + config.poll_interval,
            cpus,
            parsed: 0,
            malformed: 0,
            unwind,
            stack_copies: Vec::new(),
            prefetch,
        })
    }

    /// Loads the unwind tables of process `pid` into the kernel walker's
    /// maps and waits until they are in use (tables are otherwise loaded in
    /// the background on the first partial sample of a process). Does
    /// nothing when table unwinding is off.
    pub fn load_process(&mut self, pid: u32) -> Result<(), SamplerError> {
        let Some(loader) = &mut self.unwind else {
            return Ok(());
        };
        loader.load_blocking(pid).map_err(|e| SamplerError::Kernel {
            action: format!("loading the unwind tables of process {pid}"),
            source: e.0.into(),
        })
    }

    /// Loads unwind tables only for the processes `filter` keeps (the
    /// driver's process filter, decided from each process's facts once per
    /// image); `None`: for every process with a partial stack. Without it,
    /// a host-wide sampler filtered in user space builds tables for every
    /// process that runs or waits, and those it keeps wait behind them.
    pub fn set_table_filter(&mut self, filter: Option<crate::pipeline::ProcessFilter>) {
        if let Some(loader) = &mut self.unwind {
            loader.set_filter(filter);
        }
    }

    /// The stack copies received since the last call
    /// ([`SamplerConfig::stack_copy_pid`]).
    pub fn take_stack_copies(&mut self) -> Vec<StackCopy> {
        std::mem::take(&mut self.stack_copies)
    }

    /// The CPUs the perf event is attached on.
    pub fn cpus(&self) -> &[u32] {
        &self.cpus
    }

    /// Adds a process to the PID filter. Its threads are covered (they share
    /// the tgid) and so are the processes it starts from now on. The filter
    /// holds 16384 processes; a child forked beyond that is not followed.
    /// Unwind tables are loaded on its first partial sample.
    pub fn add_pid(&mut self, pid: u32) -> Result<(), SamplerError> {
        if !self.filtering {
            return Err(SamplerError::Config(
                "add_pid needs a sampler started with a pid_filter (without one, every process is sampled)".into(),
            ));
        }
        let map = self
            .bpf
            .map_mut(MAP_FILTER)
            .ok_or_else(|| missing("map", MAP_FILTER))?;
        let mut filter: BpfHashMap<&mut MapData, u32, u8> = BpfHashMap::try_from(map)
            .map_err(|e| SamplerError::kernel("opening FILTER_PIDS", e))?;
        filter
            .insert(pid, 1, 0)
            .map_err(|e| SamplerError::kernel(format!("adding PID {pid} to the filter"), e))?;
        // No table load here: a process added before its exec (`record --
        // CMD`) would have the tables of the image it is about to replace
        // built for nothing. Its first partial sample asks for them, or the
        // caller does with `load_process`.
        Ok(())
    }

    /// Waits until the next poll (the poll interval, or earlier when the
    /// kernel program reports the ring buffer more than half full) and
    /// returns every event read since the last call. Needs a tokio runtime
    /// with timers and I/O enabled. Cancel-safe: records are only read after
    /// the wait, so dropping the future (in a `select!`) loses nothing.
    pub async fn next_events(&mut self) -> Result<Vec<SamplerEvent>, SamplerError> {
        self.ring = match std::mem::replace(&mut self.ring, Ring::Moving) {
            // SAFETY: the RingBuf owns its map fd (MapData) and neither closes
            // nor replaces it while the AsyncFd owns the RingBuf.
            Ring::Plain(ring) => match unsafe {
                AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
            } {
                Ok(fd) => Ring::Async(fd),
                Err(e) => {
                    let (ring, e) = e.into_parts();
                    self.ring = Ring::Plain(ring);
                    return Err(e.into());
                }
            },
            other => other,
        };
        let deadline = tokio::time::Instant::from_std(self.next_poll);
        if let Ring::Async(fd) = &mut self.ring {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                guard = fd.readable_mut() => guard?.clear_ready(),
            }
        }
        self.next_poll = Instant::now() + self.poll_interval;
        Ok(self.drain())
    }

    /// [`Self::next_events`] for callers without a runtime: sleeps until the
    /// next poll interval (ignores early wakeups) and drains the ring buffer.
    pub fn next_events_blocking(&mut self) -> Vec<SamplerEvent> {
        let now = Instant::now();
        if self.next_poll > now {
            std::thread::sleep(self.next_poll - now);
        }
        self.next_poll = Instant::now() + self.poll_interval;
        self.drain()
    }

    fn drain(&mut self) -> Vec<SamplerEvent> {
        let clock = BootClock::measure();
        let mut out = Vec::new();
        let Some(ring) = self.ring.get_mut() else {
            return out;
        };
        while let Some(item) = ring.next() {
            let event = match raw::parse_record(&item) {
                Ok(event) => event,
                Err(e) => {
                    self.malformed += 1;
                    tracing::debug!("malformed sampler record: {e}");
                    continue;
                }
            };
            self.parsed += 1;
            let unix = |boot_ns: u64| clock.map_or(0, |c| c.to_unix_ns(boot_ns));
            if let Some(loader) = &mut self.unwind {
                match &event {
                    raw::RawEvent::Sample(s) if s.flags.contains(SampleFlags::USER_NEW_FILE) => {
                        loader.request_new_file(s.pid)
                    }
                    raw::RawEvent::Sample(s)
                        if s.flags.contains(SampleFlags::USER_UNKNOWN_MAPPING)
                            || s.flags.contains(SampleFlags::USER_TABLE_MISSING) =>
                    {
                        loader.request(s.pid)
                    }
                    raw::RawEvent::Exec { pid, .. } | raw::RawEvent::Exit { pid, .. } => {
                        loader.forget(*pid)
                    }
                    _ => {}
                }
            }
            out.push(match event {
                raw::RawEvent::StackCopy(c) => {
                    self.stack_copies.push(StackCopy {
                        pid: c.pid,
                        tid: c.tid,
                        time_ns: unix(c.boot_time_ns),
                        regs: Regs {
                            ip: c.ip,
                            sp: c.sp,
                            bp: c.bp,
                        },
                        stack: c.stack,
                    });
                    continue;
                }
                raw::RawEvent::Sample(s) => SamplerEvent::Sample {
                    sample: Sample {
                        pid: s.pid,
                        tid: s.tid,
                        cpu: s.cpu,
                        time_unix_nano: unix(s.boot_time_ns),
                        thread_name: s.comm,
                        kernel: s.kernel_stack,
                        user: s.user_stack,
                        labels: Vec::new(),
                        link: None,
                        off_cpu_ns: s
                            .off_cpu_ns
                            .map(|ns| self.off_cpu.as_ref().map_or(ns, |o| o.scale(ns))),
                    },
                    flags: s.flags,
                },
                raw::RawEvent::Exec { pid, time_ns, comm } => SamplerEvent::Exec {
                    pid,
                    comm,
                    time_ns: unix(time_ns),
                },
                raw::RawEvent::Exit { pid, time_ns } => SamplerEvent::Exit {
                    pid,
                    time_ns: unix(time_ns),
                },
            });
        }
        out
    }

    /// Drop counters summed over CPUs, plus the records parsed or rejected
    /// here. A kernel counter that cannot be read stays 0 (logged).
    pub fn stats(&self) -> SamplerStats {
        let mut stats = SamplerStats {
            events_parsed: self.parsed,
            events_malformed: self.malformed,
            ..SamplerStats::default()
        };
        match self.bpf.map(MAP_STATS) {
            Some(map) => {
                if let Err(e) = stats::read_kernel(map, &mut stats) {
                    tracing::warn!("reading the sampler's STATS map: {e}");
                }
            }
            None => tracing::warn!("the sampler object has no STATS map"),
        }
        if let Some(map) = self.bpf.map(python::MAP_PYTHON_STATS) {
            if let Err(e) = python::read_stats(map, &mut stats) {
                tracing::warn!("reading the sampler's {}: {e}", python::MAP_PYTHON_STATS);
            }
        }
        if let Some(loader) = &self.unwind {
            let l = loader.stats();
            stats.unwind_tables = l.tables;
            stats.unwind_table_bytes = l.table_bytes;
            stats.unwind_tables_evicted = l.evicted;
            stats.unwind_table_failures = l.failures;
            stats.unwind_processes_loaded = l.processes_loaded;
        }
        stats
    }

    /// `(run_time_ns, run_cnt)` of the sampling program, i.e. the cost per
    /// sample is `run_time_ns / run_cnt`. `None` unless statistics are on:
    /// [`SamplerConfig::bpf_stats`] or `sysctl kernel.bpf_stats_enabled=1`.
    pub fn bpf_run_stats(&self) -> Option<(u64, u64)> {
        let enabled = self._stats_fd.is_some()
            || std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
                .is_ok_and(|s| s.trim() == "1");
        if !enabled {
            return None;
        }
        let info = self.bpf.program(PROG_SAMPLE)?.info().ok()?;
        let run_time_ns = u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
        Some((run_time_ns, info.run_count()))
    }
}

fn validate(config: &SamplerConfig) -> Result<(), SamplerError> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let size = config.ring_buffer_bytes;
    if !size.is_power_of_two() || size < page {
        return Err(SamplerError::Config(format!(
            "ring_buffer_bytes = {size}: must be a power of two and at least one page ({page} bytes)"
        )));
    }
    if config.frequency_hz == 0 {
        return Err(SamplerError::Config("frequency_hz must be > 0".into()));
    }
    if config.poll_interval.is_zero() {
        return Err(SamplerError::Config("poll_interval must be > 0".into()));
    }
    if let Some(off_cpu) = &config.off_cpu {
        let p = off_cpu.probability;
        if !(p > 0.0 && p <= 1.0) {
            return Err(SamplerError::Config(format!(
                "off-CPU probability {p}: must be in (0, 1]"
            )));
        }
        if off_cpu.max_threads == 0 {
            return Err(SamplerError::Config(
                "off-CPU max_threads must be > 0".into(),
            ));
        }
    }
    Ok(())
}

/// Checks, before anything is loaded, that the kernel has what the kernel
/// program uses (newest first, so the error names the feature that sets the
/// minimum): the helpers it calls from its perf_event program and the ring
/// buffer map. Probes load a two-instruction
/// program per helper and read the verifier's answer, as libbpf does.
fn probe_kernel_features() -> Result<(), SamplerError> {
    check_kernel_features(
        |helper| aya::sys::is_helper_supported(ProgramType::PerfEvent, helper),
        || aya::sys::is_map_supported(MapType::RingBuf),
        kernel_release,
    )
}

/// A kernel feature the kernel program needs: a helper or a map type, with
/// the Linux version that brought it.
const NEEDED_HELPERS: &[(BpfHelper, &str, &str)] = &[
    (BpfHelper::BPF_FUNC_loop, "the bpf_loop helper", "5.17"),
    (
        BpfHelper::BPF_FUNC_find_vma,
        "the bpf_find_vma helper",
        "5.17",
    ),
    (
        BpfHelper::BPF_FUNC_task_pt_regs,
        "the bpf_task_pt_regs helper",
        "5.15",
    ),
    (
        BpfHelper::BPF_FUNC_get_current_task_btf,
        "the bpf_get_current_task_btf helper",
        "5.11",
    ),
    (
        BpfHelper::BPF_FUNC_ringbuf_reserve,
        "the BPF ring buffer helpers",
        "5.8",
    ),
    (
        BpfHelper::BPF_FUNC_ktime_get_boot_ns,
        "the bpf_ktime_get_boot_ns helper",
        "5.8",
    ),
];

/// [`probe_kernel_features`] with the kernel's answers given: a unit test
/// plays an older kernel through them.
fn check_kernel_features<E, F>(
    helper_supported: impl Fn(BpfHelper) -> Result<bool, E>,
    ring_buffer_supported: impl FnOnce() -> Result<bool, F>,
    release: impl Fn() -> String,
) -> Result<(), SamplerError>
where
    E: StdError + Send + Sync + 'static,
    F: StdError + Send + Sync + 'static,
{
    let missing = |feature, since| SamplerError::MissingFeature {
        feature,
        since,
        release: release(),
    };
    for &(helper, feature, since) in NEEDED_HELPERS {
        let supported = helper_supported(helper)
            .map_err(|e| SamplerError::kernel(format!("probing the kernel for {feature}"), e))?;
        if !supported {
            return Err(missing(feature, since));
        }
    }
    let ring = ring_buffer_supported()
        .map_err(|e| SamplerError::kernel("probing the kernel for the BPF ring buffer", e))?;
    if !ring {
        return Err(missing("the BPF ring buffer map", "5.8"));
    }
    // BTF tracepoints (tp_btf, 5.5) are older than bpf_loop: not probed (a
    // tracing-program probe needs CAP_SYS_ADMIN, which the agent drops).
    Ok(())
}

/// `Some(level)` when `err` is EACCES and `kernel.perf_event_paranoid` is
/// above 2 (the level at which Debian's and Ubuntu's patch wants
/// CAP_SYS_ADMIN for any perf event).
fn perf_paranoid_refusal(err: &(dyn StdError + 'static)) -> Option<i32> {
    let mut cause = Some(err);
    let mut eacces = false;
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            eacces |= io.raw_os_error() == Some(libc::EACCES);
        }
        cause = e.source();
    }
    let level: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (eacces && level > 2).then_some(level)
}

/// Logs the size of each loaded program as the kernel reports it: the
/// instructions after verification (xlated) and how many the verifier
/// processed (its limit is 1,000,000; reported by kernels 5.16 and later).
fn log_program_sizes(bpf: &Ebpf) {
    for name in [
        PROG_SAMPLE,
        PROG_FORK,
        PROG_EXEC,
        PROG_EXIT,
        PROG_SWITCH,
        PROG_OFF_CPU_SAMPLE,
    ] {
        let Some(info) = bpf.program(name).and_then(|p| p.info().ok()) else {
            continue;
        };
        let xlated = info.size_translated().map_or(0, |bytes| bytes / 8);
        let verified = info
            .verified_instruction_count()
            .map_or_else(|| "not reported".to_owned(), |n| n.to_string());
        tracing::info!(
            "eBPF program {name}: {xlated} instructions (xlated), verifier processed {verified} (limit 1000000)"
        );
    }
}

/// Loads and attaches the off-CPU programs (raw BTF tracepoints): the
/// consumer at system call exit first, so that no wait is recorded before
/// something can send it.
fn attach_off_cpu(bpf: &mut Ebpf, btf: &Btf) -> Result<(), SamplerError> {
    for (prog, tracepoint) in [
        (PROG_OFF_CPU_SAMPLE, "sys_exit"),
        (PROG_SWITCH, "sched_switch"),
    ] {
        let tp: &mut BtfTracePoint = program(bpf, prog)?;
        tp.load(tracepoint, btf)
            .map_err(|e| SamplerError::kernel(format!("loading {prog} (verifier)"), e))?;
        tp.attach()
            .map_err(|e| SamplerError::kernel(format!("attaching to tp_btf/{tracepoint}"), e))?;
    }
    Ok(())
}

/// `uname -r`, for error messages.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown release".into())
}

fn missing(what: &str, name: &str) -> SamplerError {
    SamplerError::Kernel {
        action: format!("the embedded sampler.bpf.o has no {what} {name}"),
        source: "rebuild it with profiler/bpf/build.sh".into(),
    }
}

fn program<'a, T>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, SamplerError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = bpf
        .program_mut(name)
        .ok_or_else(|| missing("program", name))?;
    prog.try_into()
        .map_err(|e| SamplerError::kernel(format!("program {name} has an unexpected type"), e))
}
