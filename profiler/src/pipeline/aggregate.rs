//! The aggregator: raw stacks in, a symbolized OTLP `ProfilesData` out.
//!
//! On arrival, each user PC is resolved to (object, file offset) through the
//! process's mappings ([`ProcessMaps`] of the symbolizer's process model,
//! read when the process is first seen, re-read on a miss or after exec),
//! and the object file is opened right away by the one open rule
//! ([`open_mapped_file`]), so processes that exit and binaries that are
//! deleted before the end of the recording still symbolize. A file the rule
//! refuses is never looked up elsewhere: its frames keep the mapping's name
//! and their offsets, and it is counted. PCs in anonymous executable memory
//! are JIT code, named from the process's perf map ([`PerfMapReader`], read
//! while the process lives and re-read as it grows). Identical stacks are
//! counted once with their timestamps. [`Aggregator::finish`] symbolizes
//! every distinct address once per object and builds the profile.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::{
    int_value, string_value, FrameType, LocationSpec, MappingSpec, ProfileBuilder, ProfileConfig,
    SourceLine, TraceLink,
};
use smolder_symbolizer::process::{open_mapped_file, Mapping, MappingKind, ProcessMaps};
use smolder_symbolizer::{PerfMapReader, ProcessFacts, Source, Symbolized, Symbolizer};

use super::process::resource_attributes;
use super::snapshots::ProcessSnapshots;
use super::unix_nano_now;
use crate::python::code::{CodeInfo, CodeReader};
use crate::python::{self, Detection, FrameRef};

/// The aggregator's tables (PIDs, mappings, stacks: hashed on every
/// sample) use a fast hash. Its seed is random per agent, so a profiled
/// process cannot aim its addresses at collisions, and an interval's
/// stacks are bounded anyway ([`Aggregator::limit_stack_bytes`]).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A process's mappings are re-read on a miss at most this often, once it
/// has had [`EARLY_MAPS_READS`] reads: a new program maps its libraries in
/// its first milliseconds, when a miss is nearly always a new mapping;
/// later, misses are mostly anonymous or JIT code that a re-read won't find.
const MAPS_REFRESH_INTERVAL: Duration = Duration::from_millis(50);
const EARLY_MAPS_READS: u32 = 8;

/// One sampled stack: the one shape every producer (the eBPF sampler, the
/// in-process profiler) hands the aggregator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Process (tgid).
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    pub cpu: u32,
    /// When it was taken, in unix nanoseconds.
    pub time_unix_nano: u64,
    /// `comm` of the thread.
    pub thread_name: String,
    /// Kernel PCs, leaf first (the interrupted PC, then return addresses);
    /// empty when the sample hit user mode.
    pub kernel: Vec<u64>,
    /// User PCs, leaf first (the user IP, then return addresses).
    pub user: Vec<u64>,
    /// Extra sample attributes (the in-process profiler's scope labels).
    pub labels: Vec<(String, String)>,
    /// The trace span it was taken in (the in-process profiler's
    /// `TracingLayer`).
    pub link: Option<TraceLink>,
    /// `Some(ns)`: an off-CPU sample. The thread blocked at
    /// `time_unix_nano` with these stacks and stayed off the CPU for `ns`
    /// nanoseconds (an estimate: already scaled by the probability it was
    /// recorded with). It goes to the `off_cpu` profile, not the CPU one.
    pub off_cpu_ns: Option<u64>,
}

/// What went missing on the way, for the run summary and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggregatorStats {
    /// Samples added, on-CPU and off-CPU.
    pub samples: u64,
    /// Of those, off-CPU samples (waits).
    pub off_cpu_samples: u64,
    /// User PCs outside every executable mapping of their process.
    pub unmapped_frames: u64,
    /// Processes whose `/proc/PID/maps` could not be read (gone too early).
    pub maps_unreadable: u64,
    /// Object files that the open rule refused or could not open (replaced,
    /// deleted without `map_files`, not a regular file, too large, outside
    /// the process's root): their frames keep the mapping name and offset.
    pub objects_unopenable: u64,
    /// JIT frames (anonymous executable memory) named from a perf map.
    pub jit_frames_named: u64,
    /// Perf maps refused by the open rule (FIFO, symbolic link, another
    /// owner) or cut at their caps.
    pub perf_maps_refused: u64,
    /// Frames that got no function name.
    pub unsymbolized_frames: u64,
    /// Samples with user frames of a process that exited before its
    /// mappings could be read: their frames stay raw addresses.
    pub samples_of_vanished_processes: u64,
    /// Processes that were gone when their samples were read, whose
    /// mappings and files came from the snapshot taken at their exec.
    pub processes_read_at_exec: u64,
    /// Processes running a CPython whose frames are unwound.
    pub python_processes: u64,
    /// Processes running a CPython smolder has no layout for (native
    /// frames only), each counted once.
    pub python_unsupported: u64,
    /// Python frames named, and Python frames whose code object could not
    /// be read (freed, or not a code object): unnamed, never guessed.
    pub python_frames_named: u64,
    pub python_frames_unreadable: u64,
    /// Samples of new distinct stacks dropped because the interval's
    /// stacks had reached their memory bound.
    pub stacks_dropped: u64,
}

impl std::ops::AddAssign for AggregatorStats {
    fn add_assign(&mut self, b: AggregatorStats) {
        self.samples += b.samples;
        self.off_cpu_samples += b.off_cpu_samples;
        self.unmapped_frames += b.unmapped_frames;
        self.maps_unreadable += b.maps_unreadable;
        self.objects_unopenable += b.objects_unopenable;
        self.jit_frames_named += b.jit_frames_named;
        self.perf_maps_refused += b.perf_maps_refused;
        self.unsymbolized_frames += b.unsymbolized_frames;
        self.samples_of_vanished_processes += b.samples_of_vanished_processes;
        self.processes_read_at_exec += b.processes_read_at_exec;
        self.python_processes += b.python_processes;
        self.python_unsupported += b.python_unsupported;
        self.python_frames_named += b.python_frames_named;
        self.python_frames_unreadable += b.python_frames_unreadable;
        self.stacks_dropped += b.stacks_dropped;
    }
}

impl std::ops::Add for AggregatorStats {
    type Output = AggregatorStats;
    fn add(mut self, b: AggregatorStats) -> AggregatorStats {
        self += b;
        self
    }
}

/// An object file, opened while its process was alive.
struct ObjectFile {
    /// The path as the process saw it.
    path: String,
    /// Open handle: symbolized through `/proc/self/fd/N` even after the
    /// process exited or the file was deleted.
    file: Option<File>,
    /// For the vDSO (no file): its size, to be named from the kernel's image.
    vdso_len: Option<u64>,
}

impl ObjectFile {
    /// Symbolizes file offsets of the object; `None` for a file the open
    /// rule refused, which is never looked up by its path.
    fn symbolize(&self, symbolizer: &Symbolizer, offsets: &[u64]) -> Option<Vec<Symbolized>> {
        match (&self.file, self.vdso_len) {
            (Some(file), _) => Some(symbolizer.symbolize_process_file(file, &self.path, offsets)),
            (None, Some(len)) => Some(symbolizer.symbolize_vdso(len, offsets)),
            (None, None) => None,
        }
    }

    /// The same object with its own handle on the file, for another
    /// thread; `None` if the handle cannot be duplicated.
    fn try_clone(&self) -> Option<ObjectFile> {
        Some(ObjectFile {
            path: self.path.clone(),
            file: match &self.file {
                Some(file) => Some(file.try_clone().ok()?),
                None => None,
            },
            vdso_len: self.vdso_len,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct MappingId(u32);

#[derive(Clone, PartialEq, Eq, Hash)]
struct MappingRecord {
    object: u32,
    start: u64,
    end: u64,
    offset: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum UserFrame {
    Mapped {
        mapping: MappingId,
        pc: u64,
    },
    /// In anonymous executable memory: named from the perf map, if any.
    Jit {
        pc: u64,
    },
    Unmapped {
        pc: u64,
    },
    /// A Python frame the kernel walker read from the interpreter: the
    /// code object (an index into `Aggregator::python_code`) and the line.
    Python {
        code: u32,
        line: i64,
    },
    /// A Python frame whose code object could not be read.
    PythonUnreadable {
        code: u64,
    },
}

/// The perf map of a process and when it was last read.
struct JitNames {
    reader: PerfMapReader,
    read_at: Instant,
    refused: bool,
    /// The process maps HotSpot (`libjvm.so`): its perf-map names are
    /// Java methods and the JVM's own stubs, of no common prefix.
    jvm: bool,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct StackKey {
    pid: u32,
    tid: u32,
    cpu: u32,
    thread_name: String,
    kernel: Vec<u64>,
    user: Vec<UserFrame>,
    labels: Vec<(String, String)>,
    link: Option<TraceLink>,
    off_cpu: bool,
}

impl StackKey {
    /// Memory a stack holds in the interval's table, roughly: the key,
    /// its vectors and strings, and the table's own overhead.
    fn estimated_bytes(&self) -> usize {
        std::mem::size_of::<StackKey>()
            + std::mem::size_of::<Vec<(u64, i64)>>()
            + 16
            + self.thread_name.len()
            + std::mem::size_of_val(self.kernel.as_slice())
            + std::mem::size_of_val(self.user.as_slice())
            + self
                .labels
                .iter()
                .map(|(k, v)| 48 + k.len() + v.len())
                .sum::<usize>()
    }
}

struct ProcessState {
    maps: ProcessMaps,
    /// The mapping each entry of `maps` was resolved to, once it was
    /// (a frame's PC finds its entry, and the entry its mapping, with
    /// neither a copy nor a hash).
    mapping_ids: Vec<Option<MappingId>>,
    maps_read_at: Option<Instant>,
    /// The same moment in the samples' clock (unix nanoseconds).
    maps_read_unix_nano: u64,
    maps_reads: u32,
    exited: bool,
    jit: Option<JitNames>,
    /// `None` until the mappings are read; then the interpreter's code
    /// reader if the process runs a CPython smolder knows.
    python: Option<Option<CodeReader>>,
}

pub struct Aggregator {
    /// What each process seen is (name, command line, cgroup, service
    /// name, uid), read once per process image: the resource attributes,
    /// the perf map's owner and the callers' filters all come from here.
    facts: FastMap<u32, ProcessFacts>,
    processes: FastMap<u32, ProcessState>,
    objects: Vec<ObjectFile>,
    object_index: FastMap<(u64, u64), u32>,
    /// The vDSO objects, by mapping size.
    vdso_index: HashMap<u64, u32>,
    mappings: Vec<MappingRecord>,
    mapping_index: FastMap<MappingRecord, MappingId>,
    /// Per stack: (timestamp, value) of each sample (value 1 on-CPU,
    /// nanoseconds off-CPU).
    stacks: FastMap<StackKey, Vec<(u64, i64)>>,
    /// Code objects of Python frames, interned by their reading (the
    /// `Arc` the process's reader keeps; `python_code` holds it, so the
    /// address is not reused while it is a key).
    python_code: Vec<std::sync::Arc<CodeInfo>>,
    python_code_index: HashMap<usize, u32>,
    stats: AggregatorStats,
    /// The user frames of the sample being added, kept for the next one.
    user_frames: Vec<UserFrame>,
    /// Estimated bytes of `stacks`, and their bound, if any.
    stack_bytes: usize,
    stack_budget: Option<usize>,
    /// How many stacks there were at the last [`Aggregator::ahead_jobs`].
    stacks_ahead: usize,
    /// What addresses of objects were symbolized as, kept across intervals
    /// when the driver asked for it ([`Aggregator::keep_symbols`]).
    memo: Option<SymbolMemo>,
    /// What the sampler's prefetcher read of processes at their exec, for
    /// those gone before their samples are read here.
    snapshots: Option<Arc<ProcessSnapshots>>,
    /// Processes already counted as running a CPython of an unknown
    /// layout, with its path: a process whose mappings are read again
    /// (after an exec the reader met late) is not counted twice.
    python_unsupported_seen: std::collections::HashSet<(u32, String)>,
}

/// Addresses of one object that [`Aggregator::ahead_jobs`] found no
/// symbols kept for: looked up by [`AheadJob::run`] on any thread, and
/// what it found kept by [`Aggregator::remember_ahead`].
pub struct AheadJob {
    object: u32,
    file: ObjectFile,
    offsets: Vec<u64>,
}

/// What an [`AheadJob`] found.
pub struct AheadDone {
    object: u32,
    path: String,
    symbols: Vec<Symbolized>,
}

impl AheadJob {
    /// Looks the addresses up.
    pub fn run(self, symbolizer: &Symbolizer) -> AheadDone {
        AheadDone {
            symbols: self
                .file
                .symbolize(symbolizer, &self.offsets)
                .unwrap_or_default(),
            object: self.object,
            path: self.file.path,
        }
    }
}

/// Symbolized file offsets per object, and each object's build-id, at
/// most `max_entries` of them: when full, it is emptied and refilled.
struct SymbolMemo {
    max_entries: usize,
    symbols: HashMap<(u32, u64), Symbolized>,
    build_ids: HashMap<u32, String>,
}

impl SymbolMemo {
    /// Keeps what an address of `object` was symbolized as, and the
    /// object's build-id if it names one.
    fn keep(&mut self, object: u32, sym: Symbolized) {
        if let Some(id) = sym.module.as_ref().and_then(|m| m.build_id.clone()) {
            self.build_ids.insert(object, id);
        }
        if self.symbols.len() >= self.max_entries {
            self.symbols.clear();
        }
        self.symbols.insert((object, sym.addr), sym);
    }
}

impl Default for Aggregator {
    fn default() -> Self {
        Aggregator::new()
    }
}

impl Aggregator {
    pub fn new() -> Aggregator {
        Aggregator {
            facts: FastMap::default(),
            processes: FastMap::default(),
            objects: Vec::new(),
            object_index: FastMap::default(),
            vdso_index: HashMap::new(),
            mappings: Vec::new(),
            mapping_index: FastMap::default(),
            stacks: FastMap::default(),
            python_code: Vec::new(),
            python_code_index: HashMap::new(),
            stats: AggregatorStats::default(),
            user_frames: Vec::new(),
            stack_bytes: 0,
            stack_budget: None,
            stacks_ahead: 0,
            memo: None,
            snapshots: None,
            python_unsupported_seen: Default::default(),
        }
    }

    /// Takes the mappings, files and facts of processes that are gone by
    /// the time their samples arrive from `snapshots` (read at their exec).
    pub fn use_snapshots(&mut self, snapshots: Option<Arc<ProcessSnapshots>>) {
        self.snapshots = snapshots;
    }

    /// Keeps what each object address was symbolized as (at most
    /// `max_entries` addresses), so that a later interval symbolizes only
    /// addresses not seen before and the symbolizer may drop its parsed
    /// objects in between. Only for a recording whose objects stay the
    /// same files (the in-process profiler: its own mappings).
    pub fn keep_symbols(&mut self, max_entries: usize) {
        self.memo = Some(SymbolMemo {
            max_entries,
            symbols: HashMap::new(),
            build_ids: HashMap::new(),
        });
    }

    pub fn stats(&self) -> AggregatorStats {
        self.stats
    }

    /// Number of processes seen so far.
    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    /// The facts of `pid`, read from `/proc/PID` on first sight (`comm`,
    /// the sample's thread name, names a process that is already gone).
    pub fn facts(&mut self, pid: u32, comm: &str) -> &ProcessFacts {
        let snapshots = &self.snapshots;
        self.facts.entry(pid).or_insert_with(|| {
            let gone = || !std::path::Path::new(&format!("/proc/{pid}")).exists();
            snapshots
                .as_ref()
                .filter(|_| gone())
                .and_then(|s| s.facts(pid))
                .unwrap_or_else(|| ProcessFacts::read(pid, comm))
        })
    }

    /// The process replaced its image: its facts and mappings are read anew.
    pub fn on_exec(&mut self, pid: u32) {
        if let Some(old) = self.facts.remove(&pid) {
            self.facts.insert(pid, ProcessFacts::read(pid, &old.comm));
        }
        if let Some(p) = self.processes.get_mut(&pid) {
            p.maps_read_at = None;
            p.jit = None;
            p.python = None;
        }
    }

    /// The process exited: what was read of it stays until `finish`.
    pub fn on_exit(&mut self, pid: u32) {
        match self.processes.get_mut(&pid) {
            Some(p) => p.exited = true,
            // Never sampled (filtered out): nothing to keep.
            None => {
                self.facts.remove(&pid);
            }
        }
    }

    /// Forgets the facts of processes with no samples here for which
    /// `alive` no longer holds (their exit was not seen).
    pub fn forget_facts_unless(&mut self, alive: impl Fn(u32) -> bool) {
        let processes = &self.processes;
        self.facts
            .retain(|pid, _| processes.contains_key(pid) || alive(*pid));
    }

    /// Reads (or re-reads) a process's mappings and opens their files. If
    /// the process is gone, they come from the snapshot taken at its exec,
    /// when there is one of the image that ran at `sample_unix_nano`.
    fn refresh_maps(&mut self, pid: u32, sample_unix_nano: u64) {
        let Some(state) = self.processes.get_mut(&pid) else {
            return;
        };
        state.maps_read_at = Some(Instant::now());
        state.maps_read_unix_nano = unix_nano_now();
        state.maps_reads = state.maps_reads.saturating_add(1);
        match ProcessMaps::read(pid) {
            Ok(maps) => {
                state.mapping_ids = vec![None; maps.entries().len()];
                state.maps = maps;
                if let Some(snapshots) = &self.snapshots {
                    snapshots.discard(pid);
                }
            }
            Err(_) => {
                state.exited = true;
                let snapshot = self
                    .snapshots
                    .as_ref()
                    .and_then(|s| s.take(pid, sample_unix_nano));
                let Some(mut snapshot) = snapshot else {
                    self.stats.maps_unreadable += 1;
                    return;
                };
                self.stats.processes_read_at_exec += 1;
                state.mapping_ids = vec![None; snapshot.maps.entries().len()];
                state.maps = snapshot.maps;
                state.maps_read_unix_nano = snapshot.read_unix_nano;
                let entries: Vec<Mapping> = state.maps.entries().to_vec();
                for entry in entries.iter().filter(|e| e.is_file()) {
                    let file = snapshot.files.remove(&(entry.dev, entry.inode));
                    self.object_opened(entry, file.ok_or(()));
                }
                return;
            }
        }
        let entries: Vec<Mapping> = state.maps.entries().to_vec();
        if state.python.is_none() {
            match python::detect(pid, &state.maps) {
                Detection::Python(interpreter) => {
                    self.stats.python_processes += 1;
                    state.python = Some(Some(CodeReader::new(pid, interpreter)));
                }
                Detection::Unsupported { path, reason } => {
                    state.python = Some(None);
                    if self.python_unsupported_seen.insert((pid, path.clone())) {
                        tracing::info!(
                            "process {pid}: Python frames of {path} are not unwound (native frames only): {reason}"
                        );
                        self.stats.python_unsupported += 1;
                    }
                }
                // libpython may not be mapped yet: asked again on the next read.
                Detection::NotPython => {}
            }
        }
        for entry in entries.iter().filter(|e| e.is_file()) {
            self.object(pid, entry);
        }
    }

    /// The Python frame the walker wrote as `frame`, named from the code
    /// object in the process's memory (read once per code object, its
    /// header checked on each use).
    fn resolve_python(&mut self, pid: u32, frame: FrameRef) -> UserFrame {
        // The reader checks on each use that the address still holds the
        // code object it read; the same reading is interned once.
        let info = self
            .processes
            .get_mut(&pid)
            .and_then(|p| p.python.as_mut()?.as_mut()?.code(frame.code));
        let Some(info) = info else {
            return UserFrame::PythonUnreadable { code: frame.code };
        };
        let line = info.line(frame.instr);
        let next = self.python_code.len() as u32;
        let code = *self
            .python_code_index
            .entry(Arc::as_ptr(&info) as usize)
            .or_insert(next);
        if code == next {
            self.python_code.push(info);
        }
        UserFrame::Python { code, line }
    }

    /// The object of a file mapping, opened on first sight.
    fn object(&mut self, pid: u32, entry: &Mapping) -> u32 {
        if let Some(&id) = self.object_index.get(&(entry.dev, entry.inode)) {
            return id;
        }
        let file = open_mapped_file(pid, entry).map_err(|e| {
            tracing::debug!("frames stay unnamed: {e}");
        });
        self.object_opened(entry, file)
    }

    /// The object of a file mapping whose file was opened (or not) by the
    /// one open rule; a file already known keeps its first handle.
    fn object_opened(&mut self, entry: &Mapping, file: Result<File, ()>) -> u32 {
        if let Some(&id) = self.object_index.get(&(entry.dev, entry.inode)) {
            return id;
        }
        if file.is_err() {
            self.stats.objects_unopenable += 1;
        }
        let file = file.ok();
        let id = self.objects.len() as u32;
        self.objects.push(ObjectFile {
            path: entry.path.clone(),
            file,
            vdso_len: None,
        });
        self.object_index.insert((entry.dev, entry.inode), id);
        id
    }

    /// The object of a `[vdso]` mapping of `len` bytes: one per size, as
    /// every process of a kind shares the kernel's image.
    fn vdso_object(&mut self, len: u64) -> u32 {
        if let Some(&id) = self.vdso_index.get(&len) {
            return id;
        }
        let id = self.objects.len() as u32;
        self.objects.push(ObjectFile {
            path: "[vdso]".to_owned(),
            file: None,
            vdso_len: Some(len),
        });
        self.vdso_index.insert(len, id);
        id
    }

    /// `time_unix_nano` is when the sample was taken: mappings read before
    /// it may lack the one it hit, mappings read after it cannot gain it.
    fn resolve_user_pc(&mut self, pid: u32, pc: u64, time_unix_nano: u64) -> UserFrame {
        let known = self.processes.get(&pid).and_then(|p| {
            let i = p.maps.position(pc)?;
            p.mapping_ids.get(i).copied().flatten()
        });
        if let Some(mapping) = known {
            return UserFrame::Mapped { mapping, pc };
        }
        let found = self
            .processes
            .get(&pid)
            .and_then(|p| p.maps.find(pc).cloned());
        let entry = match found {
            Some(e) => Some(e),
            None => {
                let stale = self.processes.get(&pid).is_some_and(|p| {
                    let older_than_sample = p.maps_read_unix_nano < time_unix_nano;
                    let due = match p.maps_read_at {
                        None => true,
                        Some(t) => {
                            (older_than_sample && p.maps_reads < EARLY_MAPS_READS)
                                || t.elapsed() >= MAPS_REFRESH_INTERVAL
                        }
                    };
                    !p.exited && due
                });
                if stale {
                    self.refresh_maps(pid, time_unix_nano);
                    self.processes
                        .get(&pid)
                        .and_then(|p| p.maps.find(pc).cloned())
                } else {
                    None
                }
            }
        };
        if entry.as_ref().map(Mapping::kind) == Some(MappingKind::Anonymous) {
            self.read_perf_map(pid, pc);
            return UserFrame::Jit { pc };
        }
        let Some(entry) = entry.filter(|e| e.is_file() || e.kind() == MappingKind::Vdso) else {
            self.stats.unmapped_frames += 1;
            return UserFrame::Unmapped { pc };
        };
        let object = if entry.is_file() {
            self.object(pid, &entry)
        } else {
            self.vdso_object(entry.end - entry.start)
        };
        let record = MappingRecord {
            object,
            start: entry.start,
            end: entry.end,
            offset: entry.offset,
        };
        let next = MappingId(self.mappings.len() as u32);
        let mapping = *self.mapping_index.entry(record.clone()).or_insert_with(|| {
            self.mappings.push(record);
            next
        });
        if let Some(p) = self.processes.get_mut(&pid) {
            if let Some(slot) = p.maps.position(pc).and_then(|i| p.mapping_ids.get_mut(i)) {
                *slot = Some(mapping);
            }
        }
        UserFrame::Mapped { mapping, pc }
    }

    /// Reads the perf map of `pid` the first time it has a JIT frame, and
    /// again (what was appended) when `pc` is not in it, at most every
    /// [`MAPS_REFRESH_INTERVAL`], while the process lives.
    fn read_perf_map(&mut self, pid: u32, pc: u64) {
        let Some(state) = self.processes.get_mut(&pid) else {
            return;
        };
        if state.exited {
            return;
        }
        let facts = &self.facts;
        let jit = state.jit.get_or_insert_with(|| {
            let facts = facts
                .get(&pid)
                .cloned()
                .unwrap_or_else(|| ProcessFacts::read(pid, ""));
            JitNames {
                reader: PerfMapReader::new(&facts),
                read_at: Instant::now() - MAPS_REFRESH_INTERVAL * 2,
                refused: false,
                jvm: state
                    .maps
                    .entries()
                    .iter()
                    .any(|m| m.path.ends_with("/libjvm.so")),
            }
        });
        if jit.read_at.elapsed() < MAPS_REFRESH_INTERVAL || jit.reader.map().lookup(pc).is_some() {
            return;
        }
        jit.read_at = Instant::now();
        let result = jit.reader.refresh();
        let counts = jit.reader.counts();
        if !jit.refused && (counts.refused > 0 || counts.capped) {
            jit.refused = true;
            self.stats.perf_maps_refused += 1;
            if let Err(e) = result {
                tracing::info!("perf map not read: {e}");
            }
        }
    }

    /// Adds one sampled stack.
    pub fn add(&mut self, sample: &Sample) {
        self.add_owned(sample.clone());
    }

    /// [`Aggregator::add`] of a sample it may take apart (the sampler's
    /// path: the stack's key takes the sample's vectors, not copies).
    pub fn add_owned(&mut self, sample: Sample) {
        self.stats.samples += 1;
        self.stats.off_cpu_samples += u64::from(sample.off_cpu_ns.is_some());
        self.facts(sample.pid, &sample.thread_name);
        self.processes
            .entry(sample.pid)
            .or_insert_with(|| ProcessState {
                maps: ProcessMaps::default(),
                mapping_ids: Vec::new(),
                maps_read_at: None,
                maps_read_unix_nano: 0,
                maps_reads: 0,
                exited: false,
                jit: None,
                python: None,
            });
        if self
            .processes
            .get(&sample.pid)
            .is_some_and(|p| p.maps_read_at.is_none() && !p.exited)
        {
            self.refresh_maps(sample.pid, sample.time_unix_nano);
        }
        if !sample.user.is_empty()
            && self
                .processes
                .get(&sample.pid)
                .is_some_and(|p| p.exited && p.maps.entries().is_empty())
        {
            self.stats.samples_of_vanished_processes += 1;
        }
        // The frames go into the last sample's vector: a sample of a stack
        // already seen (most samples) allocates nothing for them.
        let mut user = std::mem::take(&mut self.user_frames);
        user.clear();
        for &pc in &sample.user {
            user.push(match FrameRef::decode(pc) {
                Some(frame) => self.resolve_python(sample.pid, frame),
                None => self.resolve_user_pc(sample.pid, pc, sample.time_unix_nano),
            });
        }
        let mut key = StackKey {
            pid: sample.pid,
            tid: sample.tid,
            cpu: sample.cpu,
            thread_name: sample.thread_name,
            kernel: sample.kernel,
            user,
            labels: sample.labels,
            link: sample.link,
            off_cpu: sample.off_cpu_ns.is_some(),
        };
        let value = sample
            .off_cpu_ns
            .map_or(1, |ns| i64::try_from(ns).unwrap_or(i64::MAX));
        let observation = (sample.time_unix_nano, value);
        if let Some(observations) = self.stacks.get_mut(&key) {
            self.stack_bytes += std::mem::size_of_val(&observation);
            observations.push(observation);
            self.user_frames = key.user;
            return;
        }
        let bytes = key.estimated_bytes() + std::mem::size_of_val(&observation);
        if self
            .stack_budget
            .is_some_and(|budget| self.stack_bytes + bytes > budget)
        {
            self.stats.stacks_dropped += 1;
            self.user_frames = key.user;
            return;
        }
        self.stack_bytes += bytes;
        // As many frames as it holds, as the estimate counts.
        key.user.shrink_to_fit();
        self.stacks.insert(key, vec![observation]);
    }

    /// Keeps an interval's stacks within about `bytes` (an estimate of
    /// their memory): once reached, samples of stacks not seen yet in the
    /// interval are dropped and counted (`stacks_dropped`); samples of
    /// stacks already there still count.
    pub fn limit_stack_bytes(&mut self, bytes: usize) {
        self.stack_budget = Some(bytes);
    }

    /// The addresses of objects in the stacks gathered since the last call
    /// that no interval or earlier job symbolized, one job per object: a
    /// driver that keeps symbols ([`Aggregator::keep_symbols`]) has them
    /// looked up while it samples ([`AheadJob::run`], on another thread)
    /// and gives back what they found ([`Aggregator::remember_ahead`]), so
    /// that [`Aggregator::finish`] has only the addresses first seen since
    /// to look up. None without kept symbols.
    pub fn ahead_jobs(&mut self) -> Vec<AheadJob> {
        if self.memo.is_none() || self.stacks.len() == self.stacks_ahead {
            return Vec::new();
        }
        self.stacks_ahead = self.stacks.len();
        self.object_offsets(self.stacks.keys(), None)
            .into_iter()
            .filter_map(|(object, offsets)| {
                let obj = &self.objects[object as usize];
                // A file the open rule refused is never looked up by its path;
                // a handle that cannot be duplicated waits for the interval's end.
                if obj.file.is_none() && obj.vdso_len.is_none() {
                    return None;
                }
                Some(AheadJob {
                    object,
                    file: obj.try_clone()?,
                    offsets,
                })
            })
            .collect()
    }

    /// Keeps what an [`AheadJob`] of this aggregator found.
    pub fn remember_ahead(&mut self, done: AheadDone) {
        let ours = self
            .objects
            .get(done.object as usize)
            .is_some_and(|obj| obj.path == done.path);
        let Some(memo) = self.memo.as_mut().filter(|_| ours) else {
            return;
        };
        for sym in done.symbols {
            memo.keep(done.object, sym);
        }
    }

    /// The distinct file offsets of the mapped user frames of `stacks`, per
    /// object, sorted; without those the kept symbols hold, which are
    /// copied into `known` when given.
    fn object_offsets<'a>(
        &self,
        stacks: impl Iterator<Item = &'a StackKey>,
        mut known: Option<&mut HashMap<(u32, u64), Symbolized>>,
    ) -> HashMap<u32, Vec<u64>> {
        let mut per_object: HashMap<u32, Vec<u64>> = HashMap::new();
        for key in stacks {
            for (i, frame) in key.user.iter().enumerate() {
                if let UserFrame::Mapped { mapping, pc } = frame {
                    let m = &self.mappings[mapping.0 as usize];
                    let offset = lookup_offset(m, *pc, i);
                    let kept = self
                        .memo
                        .as_ref()
                        .and_then(|memo| memo.symbols.get(&(m.object, offset)));
                    if let Some(sym) = kept {
                        if let Some(known) = known.as_deref_mut() {
                            known
                                .entry((m.object, offset))
                                .or_insert_with(|| sym.clone());
                        }
                        continue;
                    }
                    per_object.entry(m.object).or_default().push(offset);
                }
            }
        }
        for offsets in per_object.values_mut() {
            offsets.sort_unstable();
            offsets.dedup();
        }
        per_object
    }

    /// Looks up the offsets of each object into `symbols` (and the kept
    /// symbols, if any); returns the build-ids of the objects, those the
    /// kept symbols know included.
    fn symbolize_objects(
        &mut self,
        symbolizer: &Symbolizer,
        per_object: HashMap<u32, Vec<u64>>,
        symbols: &mut HashMap<(u32, u64), Symbolized>,
    ) -> HashMap<u32, String> {
        let mut build_ids: HashMap<u32, String> = self
            .memo
            .as_ref()
            .map(|memo| memo.build_ids.clone())
            .unwrap_or_default();
        for (object, offsets) in per_object {
            let Some(symbolized) = self.objects[object as usize].symbolize(symbolizer, &offsets)
            else {
                continue;
            };
            for sym in symbolized {
                if let Some(id) = sym.module.as_ref().and_then(|m| m.build_id.clone()) {
                    build_ids.insert(object, id);
                }
                if let Some(memo) = &mut self.memo {
                    memo.keep(object, sym.clone());
                }
                symbols.insert((object, sym.addr), sym);
            }
        }
        build_ids
    }

    /// Symbolizes everything gathered so far and returns it as one profile
    /// (one resource per process; on-CPU samples in a profile of `config`,
    /// off-CPU samples in an `off_cpu`/`nanoseconds` one over the same time
    /// range, both sharing the one dictionary); the gathered stacks are
    /// cleared, what is known of processes and objects is kept for the next
    /// interval except for processes that exited.
    pub fn finish(&mut self, symbolizer: &Symbolizer, config: ProfileConfig) -> ProfilesData {
        // The next interval likely has as many stacks: no regrowing.
        let room = FastMap::with_capacity_and_hasher(self.stacks.len(), Default::default());
        let stacks = std::mem::replace(&mut self.stacks, room);
        self.stack_bytes = 0;
        self.stacks_ahead = 0;

        // Every distinct address once: user frames per object, kernel frames together.
        let mut symbols: HashMap<(u32, u64), Symbolized> = HashMap::new();
        let per_object = self.object_offsets(stacks.keys(), Some(&mut symbols));
        let mut kernel_pcs: Vec<u64> = Vec::new();
        for key in stacks.keys() {
            // Return addresses point after their call; the call is one byte before.
            kernel_pcs.extend(
                key.kernel
                    .iter()
                    .enumerate()
                    .map(|(i, &pc)| lookup_pc(pc, i)),
            );
        }
        let build_ids = self.symbolize_objects(symbolizer, per_object, &mut symbols);
        // JIT frames, per process, from its perf map, read once more (also
        // for a process that exited: the reader kept its root, and a JVM
        // writes its map as it exits).
        let mut jit_pcs: HashMap<u32, Vec<u64>> = HashMap::new();
        for key in stacks.keys() {
            for (i, frame) in key.user.iter().enumerate() {
                if let UserFrame::Jit { pc } = frame {
                    jit_pcs.entry(key.pid).or_default().push(lookup_pc(*pc, i));
                }
            }
        }
        let mut jit_symbols: HashMap<(u32, u64), Symbolized> = HashMap::new();
        let mut jvm_processes: Vec<u32> = Vec::new();
        for (pid, mut pcs) in jit_pcs {
            pcs.sort_unstable();
            pcs.dedup();
            let Some(jit) = self.processes.get_mut(&pid).and_then(|p| {
                if let Some(j) = p.jit.as_mut() {
                    let _ = j.reader.refresh();
                }
                p.jit.as_ref()
            }) else {
                continue;
            };
            if jit.jvm {
                jvm_processes.push(pid);
            }
            let map = jit.reader.map();
            for sym in symbolizer.symbolize_perf_map(&map, None, &pcs) {
                jit_symbols.insert((pid, sym.addr), sym);
            }
        }
        kernel_pcs.sort_unstable();
        kernel_pcs.dedup();
        // kallsyms is read only when a sample has kernel frames (never in-process).
        let kernel_symbols: HashMap<u64, Symbolized> = match kernel_pcs.is_empty() {
            true => HashMap::new(),
            false => symbolizer
                .symbolize(&Source::Kernel, &kernel_pcs)
                .map(|v| v.into_iter().map(|s| (s.addr, s)).collect())
                .unwrap_or_default(),
        };

        let off_cpu_config = ProfileConfig::off_cpu(config.time_unix_nano, config.duration_nano);
        let mut builder = ProfileBuilder::new(config);
        let cpu = builder.default_profile_type();
        let off_cpu = stacks
            .keys()
            .any(|k| k.off_cpu)
            .then(|| builder.add_profile_type(off_cpu_config));
        let mut entries: Vec<(StackKey, Vec<(u64, i64)>)> = stacks.into_iter().collect();
        // A stable order: by process, thread, then first timestamp.
        entries.sort_by_key(|(k, ts)| (k.pid, k.tid, ts.first().map_or(0, |&(t, _)| t)));
        for (key, observations) in entries {
            // `add` read the facts of every process it kept a stack of.
            let attributes = self.facts.get(&key.pid).map_or_else(
                || {
                    resource_attributes(&ProcessFacts {
                        pid: key.pid,
                        comm: key.thread_name.clone(),
                        ..ProcessFacts::default()
                    })
                },
                resource_attributes,
            );
            let resource = builder.resource(attributes);
            let mut locations = Vec::with_capacity(key.kernel.len() + key.user.len());
            for (i, &pc) in key.kernel.iter().enumerate() {
                let lines = frame_lines(kernel_symbols.get(&lookup_pc(pc, i)), &mut self.stats);
                locations.push(builder.location(&LocationSpec {
                    mapping: None,
                    address: pc,
                    lines,
                    frame_type: FrameType::Kernel,
                }));
            }
            for (i, frame) in key.user.iter().enumerate() {
                let spec = match *frame {
                    UserFrame::Mapped { mapping, pc } => {
                        let m = &self.mappings[mapping.0 as usize];
                        let sym = symbols.get(&(m.object, lookup_offset(m, pc, i)));
                        LocationSpec {
                            mapping: Some(MappingSpec {
                                memory_start: m.start,
                                memory_limit: m.end,
                                file_offset: m.offset,
                                filename: self.objects[m.object as usize].path.clone(),
                                build_id: build_ids.get(&m.object).cloned(),
                            }),
                            address: pc,
                            lines: frame_lines(sym, &mut self.stats),
                            frame_type: FrameType::Native,
                        }
                    }
                    UserFrame::Jit { pc } => {
                        let sym = jit_symbols.get(&(key.pid, lookup_pc(pc, i)));
                        let lines = frame_lines(sym, &mut self.stats);
                        let frame_type = match lines.first() {
                            Some(_) if jvm_processes.contains(&key.pid) => {
                                self.stats.jit_frames_named += 1;
                                FrameType::Jvm
                            }
                            Some(l) => {
                                self.stats.jit_frames_named += 1;
                                jit_frame_type(&l.function)
                            }
                            None => FrameType::Native,
                        };
                        LocationSpec {
                            address: pc,
                            lines,
                            frame_type,
                            ..LocationSpec::default()
                        }
                    }
                    UserFrame::Unmapped { pc } => {
                        self.stats.unsymbolized_frames += 1;
                        LocationSpec {
                            address: pc,
                            ..LocationSpec::default()
                        }
                    }
                    UserFrame::Python { code, line } => {
                        self.stats.python_frames_named += 1;
                        let info = &self.python_code[code as usize];
                        LocationSpec {
                            lines: vec![SourceLine {
                                function: info.name.clone(),
                                file: info.file.clone(),
                                line,
                                ..SourceLine::default()
                            }],
                            frame_type: FrameType::CPython,
                            ..LocationSpec::default()
                        }
                    }
                    UserFrame::PythonUnreadable { code } => {
                        self.stats.python_frames_unreadable += 1;
                        LocationSpec {
                            address: code,
                            frame_type: FrameType::CPython,
                            ..LocationSpec::default()
                        }
                    }
                };
                locations.push(builder.location(&spec));
            }
            let stack = builder.stack(&locations);
            let mut attrs = vec![
                builder.attribute("thread.id", int_value(i64::from(key.tid)), ""),
                builder.attribute("thread.name", string_value(&key.thread_name), ""),
                builder.attribute("cpu.logical_number", int_value(i64::from(key.cpu)), ""),
            ];
            for (k, v) in &key.labels {
                attrs.push(builder.attribute(k, string_value(v), ""));
            }
            let link = key.link.map_or(0, |l| builder.link(l.trace_id, l.span_id));
            let profile = match (key.off_cpu, off_cpu) {
                (true, Some(off_cpu)) => off_cpu,
                _ => cpu,
            };
            for (ts, value) in observations {
                builder.add_linked_sample(resource, profile, stack, &attrs, link, value, Some(ts));
            }
        }
        let gone: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, p)| p.exited)
            .map(|(&pid, _)| pid)
            .collect();
        for pid in gone {
            self.processes.remove(&pid);
            self.facts.remove(&pid);
        }
        // A code object can be freed and its address reused: names are
        // read again each interval.
        self.python_code.clear();
        self.python_code_index.clear();
        for reader in self
            .processes
            .values_mut()
            .filter_map(|p| p.python.as_mut()?.as_mut())
        {
            reader.clear_cache();
        }
        builder.finish()
    }
}

/// The address to symbolize for frame `index` of a stack: return addresses
/// (every frame but the leaf) are moved back into their call instruction.
fn lookup_pc(pc: u64, index: usize) -> u64 {
    if index == 0 {
        pc
    } else {
        pc.saturating_sub(1)
    }
}

fn lookup_offset(m: &MappingRecord, pc: u64, index: usize) -> u64 {
    lookup_pc(pc, index).saturating_sub(m.start) + m.offset
}

fn frame_lines(sym: Option<&Symbolized>, stats: &mut AggregatorStats) -> Vec<SourceLine> {
    let frames = sym.map(|s| s.frames.as_slice()).unwrap_or_default();
    if frames.iter().all(|f| f.function.is_none()) {
        stats.unsymbolized_frames += 1;
        return Vec::new();
    }
    frames
        .iter()
        .map(|f| SourceLine {
            function: f.function.clone().unwrap_or_default(),
            file: f.file.clone().unwrap_or_default(),
            line: f.line.map_or(0, i64::from),
            ..SourceLine::default()
        })
        .collect()
}

/// The runtime a perf-map name comes from, by the prefixes runtimes write:
/// V8 (`JS:`, `LazyCompile:`, `Function:`, `Builtin:`…), CPython (`py::`);
/// the semantic conventions have no type for "JIT of an unknown runtime",
/// so others stay native.
fn jit_frame_type(name: &str) -> FrameType {
    const V8: [&str; 9] = [
        "JS:",
        "LazyCompile:",
        "Function:",
        "Builtin:",
        "BytecodeHandler:",
        "Script:",
        "Eval:",
        "Stub:",
        "RegExp:",
    ];
    if name.starts_with("py::") {
        FrameType::CPython
    } else if V8.iter().any(|p| name.starts_with(p)) || name.contains(".js:") {
        FrameType::V8Js
    } else {
        FrameType::Native
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smolder_profiles_proto::{validate, write_folded, FoldOptions};

    #[inline(never)]
    fn leaf_marker() -> u64 {
        std::hint::black_box(leaf_marker as *const () as usize as u64)
    }

    #[test]
    fn our_own_pcs_symbolize_with_mapping_and_build_id() {
        let pc = leaf_marker();
        let caller =
            our_own_pcs_symbolize_with_mapping_and_build_id as *const () as usize as u64 + 1;
        let mut agg = Aggregator::new();
        for t in 0..3 {
            agg.add(&Sample {
                pid: std::process::id(),
                tid: 7,
                cpu: 1,
                time_unix_nano: 1_000 + t,
                thread_name: "tester".into(),
                user: vec![pc, caller],
                ..Sample::default()
            });
        }
        let symbolizer = Symbolizer::new();
        let data = agg.finish(&symbolizer, ProfileConfig::cpu(99, 1_000, 10));
        validate(&data).unwrap();
        let folded = write_folded(&data, &FoldOptions::default());
        assert!(folded.contains("leaf_marker 3"), "{folded}");
        let dict = data.dictionary.as_ref().unwrap();
        assert!(dict.mapping_table.len() > 1);
        assert!(dict
            .string_table
            .iter()
            .any(|s| s == smolder_profiles_proto::BUILD_ID_KEY));
        let resource = data.resource_profiles[0].resource.as_ref().unwrap();
        assert!(resource
            .attributes
            .iter()
            .any(|kv| kv.key == "process.executable.path"));
        assert_eq!(agg.stats().samples, 3);
    }

    /// Symbolizing ahead, as the in-process reader does while it samples,
    /// looks each address up once: the interval's end looks up only what
    /// came after, and its profile is the same.
    #[test]
    fn symbolizing_ahead_leaves_the_end_only_the_new_addresses() {
        let pc = leaf_marker();
        let caller = symbolizing_ahead_leaves_the_end_only_the_new_addresses as *const () as usize
            as u64
            + 1;
        let sample = |user: Vec<u64>, t: u64| Sample {
            pid: std::process::id(),
            tid: 7,
            cpu: 1,
            time_unix_nano: 1_000 + t,
            thread_name: "tester".into(),
            user,
            ..Sample::default()
        };
        let mut agg = Aggregator::new();
        agg.keep_symbols(1024);
        let symbolizer = Symbolizer::new();
        let ahead = |agg: &mut Aggregator| {
            let jobs = agg.ahead_jobs();
            let n = jobs.len();
            for job in jobs {
                let done = job.run(&symbolizer);
                agg.remember_ahead(done);
            }
            n
        };
        agg.add(&sample(vec![pc, caller], 0));
        assert_eq!(ahead(&mut agg), 1);
        assert_eq!(symbolizer.stats().addresses, 2);
        // Nothing new: nothing to look up.
        agg.add(&sample(vec![pc, caller], 1));
        assert_eq!(ahead(&mut agg), 0);
        // One new address (the leaf as a caller) for the end to look up.
        agg.add(&sample(vec![caller, pc + 1], 2));
        let data = agg.finish(&symbolizer, ProfileConfig::cpu(99, 1_000, 10));
        assert_eq!(symbolizer.stats().addresses, 3);
        validate(&data).unwrap();
        let folded = write_folded(&data, &FoldOptions::default());
        assert!(
            folded.contains("addresses;smolder::pipeline::aggregate::tests::leaf_marker 2"),
            "{folded}"
        );
        assert!(
            folded.contains("leaf_marker;smolder::pipeline::aggregate::tests::symbolizing_ahead"),
            "{folded}"
        );
    }

    /// A process that exited before its samples were read: with what the
    /// prefetcher read at its exec, its frames land in its executable and
    /// its facts name it; without, they stay raw addresses, counted.
    #[test]
    fn a_process_gone_before_its_samples_takes_its_exec_snapshot() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let snapshots = ProcessSnapshots::new();
        // The image is read once `sleep` has replaced the forked test binary
        // and mapped itself.
        let sleep_text = |maps: &ProcessMaps| {
            maps.entries()
                .iter()
                .find(|e| e.is_file() && e.path.ends_with("/sleep") && e.executable)
                .cloned()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        // The kernel maps the new program's segments before it sets its
        // arguments' place: until then `cmdline` reads empty.
        let cmdline_set =
            || std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep"));
        let text = loop {
            let maps = ProcessMaps::read(pid).unwrap();
            if let Some(text) = sleep_text(&maps).filter(|_| cmdline_set()) {
                break text;
            }
            assert!(
                Instant::now() < deadline,
                "no executable mapping of sleep (exe {:?}): {:#?}",
                std::fs::read_link(format!("/proc/{pid}/exe")),
                maps.entries()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        snapshots.on_exec(pid, 1_000, "sleep");
        assert!(snapshots.reread(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(ProcessMaps::read(pid).is_err());

        let sample = Sample {
            pid,
            tid: pid,
            time_unix_nano: 2_000,
            thread_name: "t".into(),
            user: vec![text.start + 16],
            ..Sample::default()
        };
        let mapping_files = |data: &ProfilesData| -> Vec<String> {
            let dict = data.dictionary.as_ref().unwrap();
            dict.mapping_table
                .iter()
                .map(|m| dict.string_table[m.filename_strindex as usize].clone())
                .collect()
        };
        let mut without = Aggregator::new();
        without.add(&sample);
        let data = without.finish(&Symbolizer::new(), ProfileConfig::cpu(99, 0, 10));
        assert_eq!(without.stats().samples_of_vanished_processes, 1);
        assert!(!mapping_files(&data).iter().any(|f| f.ends_with("/sleep")));

        let mut with = Aggregator::new();
        with.use_snapshots(Some(Arc::clone(&snapshots)));
        with.add(&sample);
        let data = with.finish(&Symbolizer::new(), ProfileConfig::cpu(99, 0, 10));
        validate(&data).unwrap();
        assert_eq!(with.stats().samples_of_vanished_processes, 0);
        assert_eq!(with.stats().processes_read_at_exec, 1);
        assert_eq!(with.stats().objects_unopenable, 0);
        assert!(
            mapping_files(&data).iter().any(|f| f.ends_with("/sleep")),
            "{:?}",
            mapping_files(&data)
        );
        let resource = data.resource_profiles[0].resource.as_ref().unwrap();
        assert!(resource
            .attributes
            .iter()
            .any(|kv| kv.key == "process.command_line"
                && format!("{:?}", kv.value).contains("sleep 30")));
        assert_eq!(snapshots.stats().used, 1);
        assert!(snapshots.is_empty());
    }

    /// A snapshot of a later image (exec'd after the sample) is not used.
    #[test]
    fn a_snapshot_of_a_later_image_is_not_used() {
        let snapshots = ProcessSnapshots::new();
        let me = std::process::id();
        snapshots.on_exec(me, 5_000, "me");
        assert!(snapshots.take(me, 4_999).is_none());
        assert!(snapshots.take(me, 5_000).is_some());
        assert!(snapshots.take(me, 5_000).is_none());
    }

    #[test]
    fn unknown_addresses_are_kept_and_counted() {
        let mut agg = Aggregator::new();
        agg.add(&Sample {
            pid: std::process::id(),
            tid: 1,
            time_unix_nano: 5,
            thread_name: "t".into(),
            user: vec![0x10],
            ..Sample::default()
        });
        let data = agg.finish(&Symbolizer::new(), ProfileConfig::cpu(99, 0, 10));
        validate(&data).unwrap();
        assert_eq!(agg.stats().unmapped_frames, 1);
        assert_eq!(write_folded(&data, &FoldOptions::default()), "0x10 1\n");
    }
}
