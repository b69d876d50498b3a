//! Loading unwind tables into the kernel walker's maps, off the sampling
//! path: a worker thread reads a process's mappings, builds (or reuses) the
//! table of each binary, writes its rows into the memory-mapped
//! `UNWIND_ROWS` array, and publishes `UNWIND_TABLES` and `PROC_MAPPINGS`.
//!
//! Owns those three maps and the row memory: one table per binary (keyed by
//! build-id or file identity) shared by every process mapping it, under a
//! byte cap, evicting the tables the walker used least recently. Knows
//! nothing of samples: the sampler tells it which processes to (re)load.

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd},
    sync::{mpsc, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};

use super::python::PythonProcs;
use super::raw::{self, MappingEntry, ProcMappings, UnwindTableEntry};
use crate::pipeline::{Mapping, ProcessFacts, ProcessFilter, ProcessMaps};
use crate::unwind::{build_for_mapping, ElfLayout, TableKey, UnwindError, UnwindRow};

/// Bytes of one row in `UNWIND_ROWS`.
pub const ROW_BYTES: u64 = std::mem::size_of::<UnwindRow>() as u64;

/// What the loader did so far (merged into `SamplerStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoaderStats {
    pub tables: u64,
    pub table_bytes: u64,
    pub evicted: u64,
    pub failures: u64,
    pub processes_loaded: u64,
}

/// Why a process could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError(pub String);

enum Request {
    Load {
        pid: u32,
        done: Option<mpsc::Sender<Result<(), LoadError>>>,
    },
    Forget {
        pid: u32,
    },
}

/// The sampler's handle on the loader thread.
pub struct UnwindLoader {
    requests: Option<mpsc::Sender<Request>>,
    stats: Arc<Mutex<LoaderStats>>,
    thread: Option<JoinHandle<()>>,
    /// When each process was last asked for, so that a burst of partial
    /// samples asks once.
    asked: HashMap<u32, ReloadPace>,
    /// Which processes are worth tables ([`UnwindLoader::set_filter`]),
    /// decided once per process image.
    filter: Option<ProcessFilter>,
    wanted: HashMap<u32, bool>,
}

/// How soon the same process may be reloaded because of partial samples.
const RELOAD_INTERVAL: Duration = Duration::from_millis(500);
/// How many of those quick reloads one process gets per
/// [`RELOAD_INTERVAL`]: a program importing its libraries gets each one
/// read at once, and a process that maps files again and again (a
/// `dlopen`/`dlclose` loop, hostile or not) costs at most this many reads
/// of its mappings per half second, not one every 10 ms.
const NEW_FILE_RELOADS_PER_INTERVAL: u32 = 8;

/// When a process was last asked for, and its quick reloads in the current
/// [`RELOAD_INTERVAL`] window.
#[derive(Clone, Copy, Debug)]
struct ReloadPace {
    /// `None`: never; its first reload goes ahead.
    last: Option<Instant>,
    window_start: Instant,
    quick: u32,
}

impl ReloadPace {
    fn new(now: Instant) -> ReloadPace {
        ReloadPace {
            last: None,
            window_start: now,
            quick: 0,
        }
    }

    /// Whether a reload asked for at `now` goes ahead (and is counted):
    /// `new_file` ones after [`NEW_FILE_RELOAD_INTERVAL`] while the
    /// window's quick ones last, others after [`RELOAD_INTERVAL`].
    fn allow(&mut self, now: Instant, new_file: bool) -> bool {
        if now.duration_since(self.window_start) >= RELOAD_INTERVAL {
            self.window_start = now;
            self.quick = 0;
        }
        let quick = new_file && self.quick < NEW_FILE_RELOADS_PER_INTERVAL;
        if let Some(last) = self.last {
            let since = now.duration_since(last);
            if since < RELOAD_INTERVAL && !(quick && since >= NEW_FILE_RELOAD_INTERVAL) {
                return false;
            }
        }
        self.last = Some(now);
        self.quick += u32::from(quick);
        true
    }
}

/// How soon, when the kernel saw a PC in an executable file mapping it
/// lacks ([`SampleFlags::USER_NEW_FILE`]): a library just loaded (Python
/// importing an extension module, `dlopen`) leaves every stack through it
/// partial until the mappings are read again, and a program that calls
/// into it at once would lose half a second of stacks to the pause above.
///
/// [`SampleFlags::USER_NEW_FILE`]: super::SampleFlags::USER_NEW_FILE
const NEW_FILE_RELOAD_INTERVAL: Duration = Duration::from_millis(10);

impl UnwindLoader {
    /// Starts the loader over the maps taken from the loaded object.
    pub fn start(
        rows: Map,
        tables: Map,
        procs: Map,
        python: Option<Map>,
        build_bytes: usize,
    ) -> Result<UnwindLoader, String> {
        let mut worker = Worker::new(rows, tables, procs, build_bytes)?;
        worker.python = python.map(PythonProcs::new).transpose()?;
        let stats = worker.stats.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("smolder-unwind".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| format!("starting the unwind table thread: {e}"))?;
        Ok(UnwindLoader {
            requests: Some(tx),
            stats,
            thread: Some(thread),
            asked: HashMap::new(),
            filter: None,
            wanted: HashMap::new(),
        })
    }

    /// Load tables only for processes whose facts `filter` keeps (the
    /// driver's own process filter: the samples of the others are dropped
    /// anyway, and building their tables would delay the ones kept).
    pub fn set_filter(&mut self, filter: Option<ProcessFilter>) {
        self.filter = filter;
        self.wanted.clear();
    }

    /// Queues loading the tables of `pid` (after a partial sample or a new
    /// PID); at most once per [`RELOAD_INTERVAL`] per process.
    pub fn request(&mut self, pid: u32) {
        self.request_paced(pid, false);
    }

    /// Queues loading the tables of `pid` after a sample met a library its
    /// mappings lack; at most once per [`NEW_FILE_RELOAD_INTERVAL`], and
    /// [`NEW_FILE_RELOADS_PER_INTERVAL`] times per [`RELOAD_INTERVAL`].
    pub fn request_new_file(&mut self, pid: u32) {
        self.request_paced(pid, true);
    }

    fn request_paced(&mut self, pid: u32, new_file: bool) {
        let now = Instant::now();
        let pace = self
            .asked
            .entry(pid)
            .or_insert_with(|| ReloadPace::new(now));
        if !pace.allow(now, new_file) {
            return;
        }
        if let Some(filter) = &self.filter {
            let wanted = *self
                .wanted
                .entry(pid)
                .or_insert_with(|| filter(&ProcessFacts::read(pid, "")));
            if !wanted {
                return;
            }
        }
        self.send(Request::Load { pid, done: None });
    }

    /// Loads the tables of `pid` and waits until the walker can use them.
    pub fn load_blocking(&mut self, pid: u32) -> Result<(), LoadError> {
        let (tx, rx) = mpsc::channel();
        // Not counted against RELOAD_INTERVAL: loaded at exec, a process
        // has not mapped its libraries yet, and its first partial sample
        // (off-CPU samples arrive only when a wait ends) must reload it now.
        self.send(Request::Load {
            pid,
            done: Some(tx),
        });
        rx.recv()
            .map_err(|_| LoadError("the unwind table thread stopped".into()))?
    }

    /// The process exited or replaced its image: drop its mappings.
    pub fn forget(&mut self, pid: u32) {
        self.asked.remove(&pid);
        self.wanted.remove(&pid);
        self.send(Request::Forget { pid });
    }

    pub fn stats(&self) -> LoaderStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, request: Request) {
        if let Some(tx) = &self.requests {
            if tx.send(request).is_err() {
                tracing::warn!(
                    "the unwind table thread has stopped: stacks fall back to frame pointers"
                );
            }
        }
    }
}

impl Drop for UnwindLoader {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `UNWIND_ROWS`, written through a short-lived memory mapping of just
/// the pages a table lands on: the map's memory is the kernel's (reported
/// as its `memlock`), and keeping all of it mapped here would count every
/// page of it in the agent's RSS, used or not.
struct RowMemory {
    capacity: u32,
    page: usize,
    map: MapData,
}

impl RowMemory {
    fn new(map: Map) -> Result<RowMemory, String> {
        let Map::Array(data) = map else {
            return Err("UNWIND_ROWS is not an array map".into());
        };
        let info = data
            .info()
            .map_err(|e| format!("reading UNWIND_ROWS info: {e}"))?;
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        Ok(RowMemory {
            capacity: info.max_entries(),
            page,
            map: data,
        })
    }

    /// Writes `rows` at row `start`, 1 MiB of rows at a time, each through
    /// a mapping of its own pages (so at most 1 MiB is mapped at once).
    fn write(&mut self, start: u32, rows: &[UnwindRow]) -> Result<(), String> {
        let end = start as usize + rows.len();
        if end > self.capacity as usize {
            return Err(format!(
                "rows {start}..{end} past the {} rows of UNWIND_ROWS",
                self.capacity
            ));
        }
        let per_window = (1 << 20) / ROW_BYTES as usize;
        for (i, chunk) in rows.chunks(per_window).enumerate() {
            self.write_window(start as usize + i * per_window, chunk)?;
        }
        Ok(())
    }

    fn write_window(&mut self, start: usize, rows: &[UnwindRow]) -> Result<(), String> {
        let row = ROW_BYTES as usize;
        let end = start + rows.len();
        let first = start * row / self.page * self.page;
        let len = (end * row).div_ceil(self.page) * self.page - first;
        // SAFETY: maps `len` bytes at page offset `first` of a
        // BPF_F_MMAPABLE array, both within what the kernel allocated
        // (checked by the caller; the kernel checks again), shared and
        // writable.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.map.fd().as_fd().as_raw_fd(),
                first as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "memory-mapping {len} bytes of UNWIND_ROWS: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: the destination is inside the mapping made above (rows
        // start..end lie within pages first..first+len), UnwindRow is plain
        // old data with the kernel's layout, and only this thread writes
        // the map; the mapping is dropped right after.
        unsafe {
            let at = ptr.cast::<u8>().add(start * row - first);
            std::ptr::copy_nonoverlapping(rows.as_ptr(), at.cast::<UnwindRow>(), rows.len());
            libc::munmap(ptr, len);
        }
        Ok(())
    }
}

/// First-fit allocation of row extents in `UNWIND_ROWS`.
#[derive(Debug)]
pub struct Extents {
    /// Free `(start, len)`, sorted, never adjacent.
    free: Vec<(u32, u32)>,
}

impl Extents {
    pub fn new(capacity: u32) -> Extents {
        Extents {
            free: if capacity > 0 {
                vec![(0, capacity)]
            } else {
                Vec::new()
            },
        }
    }

    pub fn alloc(&mut self, len: u32) -> Option<u32> {
        let i = self.free.iter().position(|&(_, l)| l >= len)?;
        let (start, l) = self.free[i];
        if l == len {
            self.free.remove(i);
        } else {
            self.free[i] = (start + len, l - len);
        }
        Some(start)
    }

    pub fn release(&mut self, start: u32, len: u32) {
        let i = self.free.partition_point(|&(s, _)| s < start);
        self.free.insert(i, (start, len));
        // Merge with the next, then with the previous.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }

    #[cfg(test)]
    pub fn free_rows(&self) -> u64 {
        self.free.iter().map(|&(_, l)| u64::from(l)).sum()
    }
}

struct Resident {
    id: u32,
    generation: u32,
    start: u32,
    count: u32,
    layout: Arc<ElfLayout>,
}

struct Worker {
    rows: RowMemory,
    tables: Array<MapData, UnwindTableEntry>,
    procs: BpfHashMap<MapData, u32, ProcMappings>,
    /// CPython processes for the walker (`PYTHON_PROCS`).
    python: Option<PythonProcs>,
    extents: Extents,
    resident: HashMap<TableKey, Resident>,
    by_file: HashMap<(u64, u64), TableKey>,
    /// Files whose table could not be built: walked by frame pointers.
    failed: HashMap<(u64, u64), ()>,
    free_ids: Vec<u32>,
    generation: u32,
    stats: Arc<Mutex<LoaderStats>>,
    /// What one table build may use of our memory (`unwind_build_bytes`).
    build_bytes: usize,
}

impl Worker {
    fn new(rows: Map, tables: Map, procs: Map, build_bytes: usize) -> Result<Worker, String> {
        let rows = RowMemory::new(rows)?;
        let tables = Array::try_from(tables).map_err(|e| format!("opening UNWIND_TABLES: {e}"))?;
        let procs =
            BpfHashMap::try_from(procs).map_err(|e| format!("opening PROC_MAPPINGS: {e}"))?;
        Ok(Worker {
            extents: Extents::new(rows.capacity),
            rows,
            tables,
            procs,
            python: None,
            resident: HashMap::new(),
            by_file: HashMap::new(),
            failed: HashMap::new(),
            // Id 0 means "no table"; hand out low ids first.
            free_ids: (1..raw::MAX_TABLES).rev().collect(),
            generation: 0,
            stats: Arc::new(Mutex::new(LoaderStats::default())),
            build_bytes,
        })
    }

    /// Serves requests, cheapest load first: a process whose files all
    /// have resident tables is loaded at once, and one mapping a huge new
    /// binary (a compiler's 100 MiB library) waits behind the small ones,
    /// so that on a busy host (`record -a`, the agent) most processes get
    /// their tables, and interpreters their Python frames, early. The
    /// estimate halves for each second a request waits: none starves.
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        let mut pending: Vec<(Instant, Request)> = Vec::new();
        // What loading each pending process costs, estimated once per request.
        let mut costs: HashMap<u32, u64> = HashMap::new();
        loop {
            if pending.is_empty() {
                match requests.recv() {
                    Ok(request) => pending.push((Instant::now(), request)),
                    Err(_) => return,
                }
            }
            for request in requests.try_iter() {
                // A load already waiting covers another of the same process.
                let queued = |r: &Request| match (r, &request) {
                    (Request::Load { pid, done: None }, Request::Load { pid: p, done: None }) => {
                        pid == p
                    }
                    _ => false,
                };
                if !pending.iter().any(|(_, r)| queued(r)) {
                    pending.push((Instant::now(), request));
                }
            }
            let next = pending
                .iter()
                .enumerate()
                .min_by_key(|(_, (since, request))| match request {
                    // Forgetting, and a driver waiting for a load, come first.
                    Request::Forget { .. } | Request::Load { done: Some(_), .. } => 0,
                    Request::Load { pid, done: None } => {
                        let cost = *costs
                            .entry(*pid)
                            .or_insert_with(|| self.load_cost(*pid).saturating_add(1));
                        cost.checked_shr(since.elapsed().as_secs() as u32)
                            .unwrap_or(0)
                            .max(1)
                    }
                })
                .map_or(0, |(i, _)| i);
            let (_, request) = pending.remove(next);
            let (Request::Load { pid, .. } | Request::Forget { pid }) = &request;
            costs.remove(pid);
            match request {
                Request::Load { pid, done } => {
                    let result = self.load_process(pid);
                    if let Err(e) = &result {
                        tracing::debug!("unwind tables of process {pid}: {}", e.0);
                    }
                    if let Some(done) = done {
                        let _ = done.send(result);
                    }
                }
                Request::Forget { pid } => {
                    let _ = self.procs.remove(&pid);
                    if let Some(python) = &mut self.python {
                        python.forget(pid);
                    }
                }
            }
            self.publish_stats();
        }
    }

    /// Bytes of executable file mappings of `pid` that have no table (nor
    /// a failed attempt) yet: what building its tables costs, roughly.
    fn load_cost(&self, pid: u32) -> u64 {
        let Ok(maps) = ProcessMaps::read(pid) else {
            return 0;
        };
        maps.entries()
            .iter()
            .filter(|e| self.needs_build(e))
            .map(|e| e.end - e.start)
            .sum()
    }

    /// Whether the file behind `entry` has neither a resident table nor a
    /// failed attempt: its table must be built before the walker can use it.
    fn needs_build(&self, entry: &Mapping) -> bool {
        let identity = (entry.dev, entry.inode);
        entry.is_file()
            && !self.failed.contains_key(&identity)
            && !self
                .by_file
                .get(&identity)
                .is_some_and(|k| self.resident.contains_key(k))
    }

    fn publish_stats(&self) {
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.tables = self.resident.len() as u64;
        stats.table_bytes = self
            .resident
            .values()
            .map(|r| u64::from(r.count) * ROW_BYTES)
            .sum();
    }

    /// This file gets no table (frame pointers for it from now on): counted once.
    fn give_up(&mut self, identity: (u64, u64)) {
        self.failed.insert(identity, ());
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failures += 1;
    }

    /// Reads the mappings of `pid` and gives the walker each one with its
    /// table. The mappings whose files already have a table (or none to
    /// have) are published first; then the new tables are built, smallest
    /// file first, and the list is published again after each: a library
    /// just loaded (`import ctypes` maps libffi beside libc and a dozen
    /// modules) is walked as soon as its own table is in, not after every
    /// other new table of the process (libc's alone took 44 ms in a debug
    /// build, and every stack through libffi stopped there meanwhile).
    /// Until then a mapping is left out, not given without a table: the
    /// walker flags its samples partial and asks for the process again.
    fn load_process(&mut self, pid: u32) -> Result<(), LoadError> {
        let started = Instant::now();
        let maps = ProcessMaps::read(pid)
            .map_err(|e| LoadError(format!("reading /proc/{pid}/maps: {e}")))?;
        let mut pinned: Vec<TableKey> = Vec::new();
        let all = maps.entries();
        if all.len() > raw::MAX_MAPPINGS {
            tracing::debug!(
                "process {pid} has {} executable mappings; the walker knows the first {}",
                all.len(),
                raw::MAX_MAPPINGS
            );
        }
        let entries = &all[..all.len().min(raw::MAX_MAPPINGS)];
        // Each mapping's walker entry, `None` while its table is to be built.
        let mut ready: Vec<Option<MappingEntry>> = Vec::with_capacity(entries.len());
        let mut to_build: Vec<usize> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            if self.needs_build(entry) {
                to_build.push(i);
                ready.push(None);
            } else {
                ready.push(Some(self.walker_entry(pid, entry, &mut pinned)));
            }
        }
        if !to_build.is_empty() {
            self.publish(pid, &ready)?;
            to_build.sort_by_key(|&i| entries[i].end - entries[i].start);
            for (n, &i) in to_build.iter().enumerate() {
                ready[i] = Some(self.walker_entry(pid, &entries[i], &mut pinned));
                // The last one is published below, with the Python frames.
                if n + 1 < to_build.len() {
                    self.publish(pid, &ready)?;
                }
            }
        }
        // The interpreter's frames once the tables are in: before them, the
        // native frames between two runs of Python frames (a C function
        // called from Python calling back) would be walked by frame pointer,
        // and a stack could read Python -> Python with the C call lost.
        if let Some(python) = &mut self.python {
            python.load(pid, &maps);
        }
        self.publish(pid, &ready)?;
        tracing::debug!(
            "process {pid}: {} executable mappings loaded ({} with a table, {} new) in {:?}",
            entries.len(),
            pinned.len(),
            to_build.len(),
            started.elapsed()
        );
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .processes_loaded += 1;
        Ok(())
    }

    /// The walker's entry for `entry`: its bounds, and for a file its
    /// table (built if needed; none walks it by frame pointers).
    fn walker_entry(
        &mut self,
        pid: u32,
        entry: &Mapping,
        pinned: &mut Vec<TableKey>,
    ) -> MappingEntry {
        let mut slot = MappingEntry {
            start: entry.start,
            end: entry.end,
            ..MappingEntry::default()
        };
        if !entry.is_file() {
            return slot;
        }
        if let Some((key, r)) = self.table_for(pid, entry, pinned) {
            if let Some(bias) = r.layout.load_bias(entry.start, entry.offset) {
                slot.bias = bias;
                slot.table_id = r.id;
                slot.generation = r.generation;
                pinned.push(key);
            }
        }
        slot
    }

    /// Writes the process's mappings for the walker: those in `ready`
    /// that are, in address order.
    fn publish(&mut self, pid: u32, ready: &[Option<MappingEntry>]) -> Result<(), LoadError> {
        let mut value = ProcMappings {
            count: 0,
            _pad: 0,
            mappings: [MappingEntry::default(); raw::MAX_MAPPINGS],
        };
        for (slot, entry) in value.mappings.iter_mut().zip(ready.iter().flatten()) {
            *slot = *entry;
            value.count += 1;
        }
        self.procs
            .insert(pid, value, 0)
            .map_err(|e| LoadError(format!("writing PROC_MAPPINGS for process {pid}: {e}")))
    }

    /// The resident table of the file behind `entry`, built and uploaded
    /// if needed; `None` walks the file by frame pointers.
    fn table_for(
        &mut self,
        pid: u32,
        entry: &Mapping,
        pinned: &[TableKey],
    ) -> Option<(TableKey, &Resident)> {
        let identity = (entry.dev, entry.inode);
        if self.failed.contains_key(&identity) {
            return None;
        }
        let cached = self
            .by_file
            .get(&identity)
            .filter(|k| self.resident.contains_key(*k))
            .cloned();
        let key = match cached {
            Some(key) => key,
            None => {
                let started = Instant::now();
                // The most `place` can give: all of the map but the tables
                // this process already holds (every other one can be evicted).
                let held: u64 = pinned
                    .iter()
                    .filter_map(|k| self.resident.get(k))
                    .map(|r| u64::from(r.count))
                    .sum();
                let room = u64::from(self.rows.capacity).saturating_sub(held) as usize;
                let built = build_for_mapping(pid, entry, room, self.build_bytes, |k| {
                    self.resident.contains_key(k)
                });
                let (key, table) = match built {
                    Ok(b) => b,
                    Err(e) => {
                        // Over a cap is worth a warning; a binary without
                        // usable CFI is common.
                        if matches!(
                            e,
                            UnwindError::TooLarge { .. } | UnwindError::OverBudget { .. }
                        ) {
                            tracing::warn!("no unwind table: frame pointers for {e}");
                        } else {
                            tracing::debug!(
                                "no unwind table: frame pointers for {}: {e}",
                                entry.path
                            );
                        }
                        self.give_up(identity);
                        return None;
                    }
                };
                if let Some(table) = table {
                    let rows = table.rows();
                    if rows.is_empty() {
                        // No code to unwind (a data-only library): not a failure.
                        self.failed.insert(identity, ());
                        return None;
                    }
                    let Some((id, start)) = self.place(rows.len() as u32, pinned) else {
                        tracing::warn!(
                            "unwind table of {} ({} rows) does not fit the table memory cap: frame pointers for it",
                            entry.path,
                            rows.len()
                        );
                        self.give_up(identity);
                        return None;
                    };
                    if let Err(e) = self.rows.write(start, rows) {
                        tracing::warn!("unwind table of {}: {e}", entry.path);
                        self.extents.release(start, rows.len() as u32);
                        self.free_ids.push(id);
                        self.give_up(identity);
                        return None;
                    }
                    self.generation = self.generation.wrapping_add(1).max(1);
                    let published = UnwindTableEntry {
                        row_start: start,
                        row_count: rows.len() as u32,
                        generation: self.generation,
                        _pad: 0,
                        last_used_ns: now_ns(),
                    };
                    if let Err(e) = self.tables.set(id, published, 0) {
                        tracing::warn!("writing UNWIND_TABLES[{id}]: {e}");
                        self.extents.release(start, rows.len() as u32);
                        self.free_ids.push(id);
                        return None;
                    }
                    tracing::debug!(
                        "unwind table of {}: {} rows ({} KiB) from {} KiB of CFI in {:?}",
                        entry.path,
                        rows.len(),
                        table.bytes() / 1024,
                        table.section_bytes() / 1024,
                        started.elapsed()
                    );
                    self.resident.insert(
                        key.clone(),
                        Resident {
                            id,
                            generation: self.generation,
                            start,
                            count: rows.len() as u32,
                            layout: Arc::new(table.layout().clone()),
                        },
                    );
                }
                self.by_file.insert(identity, key.clone());
                key
            }
        };
        let r = self.resident.get(&key)?;
        Some((key, r))
    }

    /// A table id and `len` rows of room, evicting the least recently used
    /// tables (except `pinned`) until they fit.
    fn place(&mut self, len: u32, pinned: &[TableKey]) -> Option<(u32, u32)> {
        if len == 0 || u64::from(len) > u64::from(self.rows.capacity) {
            return None;
        }
        loop {
            if !self.free_ids.is_empty() {
                if let Some(start) = self.extents.alloc(len) {
                    let id = self.free_ids.pop()?;
                    return Some((id, start));
                }
            }
            let victim = self
                .resident
                .iter()
                .filter(|(k, _)| !pinned.contains(k))
                .map(|(k, r)| {
                    let used = self.tables.get(&r.id, 0).map_or(0, |t| t.last_used_ns);
                    (used, k.clone())
                })
                .min()?
                .1;
            self.evict(&victim);
        }
    }

    fn evict(&mut self, key: &TableKey) {
        let Some(r) = self.resident.remove(key) else {
            return;
        };
        // Unpublish first: the walker sees row_count 0, flags the sample
        // and user space reloads that process.
        if let Err(e) = self.tables.set(r.id, UnwindTableEntry::default(), 0) {
            tracing::warn!("clearing UNWIND_TABLES[{}]: {e}", r.id);
        }
        self.extents.release(r.start, r.count);
        self.free_ids.push(r.id);
        self.by_file.retain(|_, k| k != key);
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).evicted += 1;
    }
}

/// CLOCK_MONOTONIC nanoseconds, the clock of `bpf_ktime_get_ns`.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod pace_tests {
    use super::*;

    /// Asks every millisecond for `ms` milliseconds; the reloads let through.
    fn reloads(ms: u64, new_file: bool) -> usize {
        let t0 = Instant::now();
        let mut pace = ReloadPace::new(t0);
        (0..ms)
            .filter(|&i| pace.allow(t0 + Duration::from_millis(i), new_file))
            .count()
    }

    #[test]
    fn partial_samples_reload_twice_a_second() {
        assert_eq!(reloads(2000, false), 4);
    }

    #[test]
    fn new_files_reload_at_once_but_at_most_eight_times_per_half_second() {
        // Every 10 ms while the window's eight last, then the next window.
        assert_eq!(reloads(500, true), 8);
        assert_eq!(reloads(2000, true), 32);
        // The first quick ones come 10 ms apart.
        let t0 = Instant::now();
        let mut pace = ReloadPace::new(t0);
        assert!(pace.allow(t0, true));
        assert!(!pace.allow(t0 + Duration::from_millis(5), true));
        assert!(pace.allow(t0 + Duration::from_millis(10), true));
        // A plain partial sample does not jump the half-second pause.
        assert!(!pace.allow(t0 + Duration::from_millis(30), false));
    }
}

#[cfg(test)]
mod extent_tests {
    use super::Extents;

    #[test]
    fn first_fit_and_merging() {
        let mut e = Extents::new(100);
        let a = e.alloc(30).expect("a");
        let b = e.alloc(30).expect("b");
        let c = e.alloc(30).expect("c");
        assert_eq!((a, b, c), (0, 30, 60));
        assert_eq!(e.alloc(20), None);
        e.release(b, 30);
        assert_eq!(e.alloc(31), None);
        e.release(a, 30);
        assert_eq!(e.alloc(55), Some(0));
        e.release(0, 55);
        e.release(c, 30);
        assert_eq!(e.free_rows(), 100);
        assert_eq!(e.alloc(100), Some(0));
    }
}
