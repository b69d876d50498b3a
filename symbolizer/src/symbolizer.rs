//! The [`Symbolizer`] front door: dispatches each [`Source`] to the object
//! cache, the process reader, perf maps or kallsyms, and assembles
//! [`Symbolized`] results. Owns the configuration and the counters.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cache::{ObjectCache, ReadFile};
use crate::elf::{unhex, ElfObject, Env, Resolution};
use crate::kernel::KernelSymbols;
use crate::perfmap::{PerfMap, PerfMapReader};
use crate::process::{self, Mapping, MappingKind, ProcessFacts, ProcessMaps};
use crate::stats::Counters;
use crate::{debugfile, AddressKind, Error, Frame, ModuleInfo, Source, Stats, Symbolized};

/// How long kallsyms is trusted for addresses outside the core kernel's
/// text before it is read again (modules and BPF programs come and go;
/// reading it costs tens of milliseconds of CPU).
const KALLSYMS_TTL: Duration = Duration::from_secs(60);
/// Perf maps kept parsed at once; beyond that the oldest are forgotten.
const PERF_MAPS_KEPT: usize = 64;

/// The perf map reader of a process, and when it was last used.
type CachedPerfMap = (Instant, PerfMapReader);

/// Turns addresses into frames; see the [crate] documentation.
///
/// `Symbolizer` is `Send + Sync`: share one (e.g. in an `Arc`) so that every
/// caller benefits from its cache.
pub struct Symbolizer {
    debug_root: PathBuf,
    demangle: bool,
    inlined: bool,
    perf_maps: bool,
    map_process_files: bool,
    cache: ObjectCache,
    perf_map_cache: Mutex<HashMap<u32, CachedPerfMap>>,
    kernel: Mutex<Option<(Instant, Arc<KernelSymbols>)>>,
    counters: Counters,
    /// Bytes of found frames one object keeps: a sixteenth of the cache
    /// budget (which counts them in the object's weight), at least 1 MiB.
    found_bytes: usize,
}

/// Addresses of one file per thread, at least, before the lookups of a
/// file the caller named are spread over the CPUs.
const PARALLEL_ADDRESSES: usize = 512;

/// Options for a [`Symbolizer`]; every one has a default.
#[derive(Debug, Clone)]
pub struct SymbolizerBuilder {
    debug_root: PathBuf,
    cache_bytes: usize,
    demangle: bool,
    inlined: bool,
    perf_maps: bool,
    map_process_files: bool,
}

impl Default for SymbolizerBuilder {
    fn default() -> Self {
        SymbolizerBuilder {
            debug_root: PathBuf::from("/usr/lib/debug"),
            cache_bytes: 1 << 30,
            demangle: true,
            inlined: true,
            perf_maps: true,
            map_process_files: false,
        }
    }
}

impl SymbolizerBuilder {
    /// Where separate debug files live (`.build-id/` and debug-link
    /// directories); default `/usr/lib/debug`.
    pub fn debug_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.debug_root = dir.into();
        self
    }

    /// Budget for cached objects, estimated from the sizes of the files they
    /// map plus their parsed tables; default 1 GiB. The most recently used
    /// object is kept even when it alone exceeds the budget.
    pub fn cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Demangle Rust and C++ names (default true).
    pub fn demangle(mut self, on: bool) -> Self {
        self.demangle = on;
        self
    }

    /// Report inlined frames (default true); when false, each address gets
    /// only its real function, with the innermost file and line.
    pub fn inlined(mut self, on: bool) -> Self {
        self.inlined = on;
        self
    }

    /// Read JIT perf maps (`/tmp/perf-PID.map`) for anonymous code (default true).
    pub fn perf_maps(mut self, on: bool) -> Self {
        self.perf_maps = on;
        self
    }

    /// For a process that symbolizes itself only (the in-process
    /// profiler): map the files given to [`Symbolizer::symbolize_process_file`]
    /// instead of copying what lookups read of them, so that only the
    /// pages lookups touch are read (default false). Never for another
    /// process's files: one it truncates while mapped raises SIGBUS here.
    pub fn map_own_process_files(mut self, on: bool) -> Self {
        self.map_process_files = on;
        self
    }

    pub fn build(self) -> Symbolizer {
        Symbolizer {
            debug_root: self.debug_root,
            demangle: self.demangle,
            inlined: self.inlined,
            perf_maps: self.perf_maps,
            map_process_files: self.map_process_files,
            cache: ObjectCache::new(self.cache_bytes),
            found_bytes: (self.cache_bytes / 16).max(1 << 20),
            perf_map_cache: Mutex::new(HashMap::new()),
            kernel: Mutex::new(None),
            counters: Counters::default(),
        }
    }
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer::new()
    }
}

impl std::fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbolizer")
            .field("debug_root", &self.debug_root)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Symbolizer {
    /// A symbolizer with default options.
    pub fn new() -> Symbolizer {
        SymbolizerBuilder::default().build()
    }

    pub fn builder() -> SymbolizerBuilder {
        SymbolizerBuilder::default()
    }

    /// Symbolizes `addrs` of `source`, one result per address, in order.
    ///
    /// Fails only when the whole source is unusable: the process is gone or
    /// unreadable, kallsyms is restricted, a build-id is unknown. A missing or
    /// broken file gives results without frames, and is counted in [`Stats`].
    pub fn symbolize(&self, source: &Source<'_>, addrs: &[u64]) -> Result<Vec<Symbolized>, Error> {
        Counters::add(&self.counters.addresses, addrs.len() as u64);
        let result = match *source {
            Source::Elf { path, addresses } => Ok(self.symbolize_elf(path, addresses, addrs)),
            Source::BuildId {
                build_id,
                addresses,
            } => self.symbolize_build_id(build_id, addresses, addrs),
            Source::Process { pid } => self.symbolize_process(pid, addrs),
            Source::Kernel => self.symbolize_kernel(addrs),
        };
        self.cache.enforce_budget(&self.counters);
        if let Err(e) = &result {
            self.counters.error(e);
        }
        result
    }

    /// Symbolizes `(file, offset)` pairs as collected by the sampler: `offsets`
    /// are file offsets into the object at `path`.
    pub fn symbolize_file_offsets(&self, path: &Path, offsets: &[u64]) -> Vec<Symbolized> {
        Counters::add(&self.counters.addresses, offsets.len() as u64);
        let out = self.symbolize_elf(path, AddressKind::FileOffset, offsets);
        self.cache.enforce_budget(&self.counters);
        out
    }

    /// Symbolizes file offsets into `file`, a file of a profiled process
    /// opened by [`crate::process::open_mapped_file`]; `name` is its path
    /// as the process sees it. The file is read into owned memory (so the
    /// process truncating it cannot hurt), at most
    /// [`crate::process::MAX_OBJECT_BYTES`].
    pub fn symbolize_process_file(
        &self,
        file: &File,
        name: &str,
        offsets: &[u64],
    ) -> Vec<Symbolized> {
        Counters::add(&self.counters.addresses, offsets.len() as u64);
        let read = match self.map_process_files {
            true => ReadFile::Map,
            false => ReadFile::Copy {
                cap: process::MAX_OBJECT_BYTES,
            },
        };
        let out = match self
            .cache
            .open_file(file, Path::new(name), read, &self.counters)
        {
            Ok(obj) => self.in_object_all(&obj, name, AddressKind::FileOffset, offsets),
            Err(e) => {
                self.counters.error(&e);
                offsets
                    .iter()
                    .map(|&addr| self.unresolved(addr, Some(module(name, None, addr))))
                    .collect()
            }
        };
        self.cache.enforce_budget(&self.counters);
        out
    }

    /// Symbolizes file offsets into the vDSO of a process whose `[vdso]`
    /// mapping is `len` bytes long. The names come from the kernel's image
    /// (smolder's own vDSO), never from the process's memory, so they can be
    /// looked up after the process exited; a vDSO of another size (a 32-bit
    /// process) is left unnamed and counted.
    pub fn symbolize_vdso(&self, len: u64, offsets: &[u64]) -> Vec<Symbolized> {
        Counters::add(&self.counters.addresses, offsets.len() as u64);
        let object = process::kernel_vdso()
            .filter(|image| image.len() as u64 == len)
            .ok_or_else(|| Error::object("[vdso]", "not the kernel's vDSO layout"))
            .and_then(|image| {
                self.cache
                    .open_bytes(image.to_vec(), Path::new("[vdso]"), &self.counters)
            });
        match object {
            Ok(obj) => self.in_object_all(&obj, "[vdso]", AddressKind::FileOffset, offsets),
            Err(e) => {
                self.counters.error(&e);
                offsets
                    .iter()
                    .map(|&addr| self.unresolved(addr, Some(module("[vdso]", None, addr))))
                    .collect()
            }
        }
    }

    /// Names absolute addresses of JIT code from a perf map, one result per
    /// address; `mapping` is the anonymous mapping they fall in.
    pub fn symbolize_perf_map(
        &self,
        map: &PerfMap,
        mapping: Option<&Mapping>,
        addrs: &[u64],
    ) -> Vec<Symbolized> {
        Counters::add(&self.counters.addresses, addrs.len() as u64);
        addrs
            .iter()
            .map(|&addr| self.in_perf_map(Some(map), mapping, addr))
            .collect()
    }

    /// Counts files of profiled processes that the open rule refused.
    pub fn count_refused_files(&self, n: u64) {
        Counters::add(&self.counters.files_refused, n);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Number of objects in the cache now.
    pub fn cached_objects(&self) -> usize {
        self.cache.len()
    }

    /// Gives back to the kernel the pages of mapped debug information that
    /// lookups faulted in (lookups to come read what they need again, from
    /// the page cache): a caller that symbolizes in batches calls it after
    /// each, so that its resident memory holds what it parsed, not every
    /// page of debug sections it read.
    pub fn give_back_pages(&self) {
        self.cache.give_back_pages();
    }

    /// Forgets every cached object, perf map and kallsyms.
    pub fn clear_cache(&self) {
        self.cache.clear();
        lock(&self.perf_map_cache).clear();
        *lock(&self.kernel) = None;
    }

    fn env(&self, bulk: bool) -> Env<'_> {
        Env {
            debug_root: &self.debug_root,
            counters: &self.counters,
            demangle: self.demangle,
            inlined: self.inlined,
            found_bytes: self.found_bytes,
            bulk,
        }
    }

    fn symbolize_elf(&self, path: &Path, kind: AddressKind, addrs: &[u64]) -> Vec<Symbolized> {
        let display = path.display().to_string();
        match self.cache.open(path, path, &self.counters) {
            Ok(obj) => self.in_object_parallel(&obj, &display, kind, addrs),
            Err(e) => {
                self.counters.error(&e);
                addrs
                    .iter()
                    .map(|&addr| self.unresolved(addr, Some(module(&display, None, addr))))
                    .collect()
            }
        }
    }

    fn symbolize_build_id(
        &self,
        build_id: &str,
        kind: AddressKind,
        addrs: &[u64],
    ) -> Result<Vec<Symbolized>, Error> {
        let id = unhex(build_id).ok_or_else(|| Error::InvalidBuildId(build_id.to_owned()))?;
        let obj = match self.cache.by_build_id(&id) {
            Some(obj) => obj,
            None => self
                .open_build_id(&id)
                .ok_or_else(|| Error::BuildIdNotFound {
                    build_id: build_id.to_owned(),
                    debug_root: self.debug_root.clone(),
                })?,
        };
        let display = obj.logical_path.display().to_string();
        Ok(self.in_object_parallel(&obj, &display, kind, addrs))
    }

    fn in_object_all(
        &self,
        obj: &ElfObject,
        path: &str,
        kind: AddressKind,
        addrs: &[u64],
    ) -> Vec<Symbolized> {
        if kind == AddressKind::FileOffset && !obj.can_translate_offsets() {
            self.counters.error(&Error::object(
                &obj.path,
                "a debug-only file cannot map file offsets to addresses; \
                 give virtual addresses or make the binary itself available",
            ));
        }
        let build_id = obj.build_id_hex();
        addrs
            .iter()
            .map(|&addr| self.in_object(obj, path, build_id.as_deref(), addr, kind, false))
            .collect()
    }

    /// [`Self::in_object_all`] on every CPU for a long list of addresses
    /// of a file the caller named (`Source::Elf`, `Source::BuildId`): the
    /// addresses are sorted and cut into one run per thread, so that each
    /// thread parses the compilation units its run falls in (two threads
    /// meet only at the edges of their runs). The lookups are bulk ones
    /// ([`Env::bulk`]: more units kept, pages given back less often), and
    /// the unit index and symbol table are loaded side by side first.
    fn in_object_parallel(
        &self,
        obj: &ElfObject,
        path: &str,
        kind: AddressKind,
        addrs: &[u64],
    ) -> Vec<Symbolized> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(addrs.len() / PARALLEL_ADDRESSES);
        // Offsets a debug-only file cannot translate are an error counted
        // once, by `in_object_all`.
        if threads <= 1 || (kind == AddressKind::FileOffset && !obj.can_translate_offsets()) {
            return self.in_object_all(obj, path, kind, addrs);
        }
        let build_id = obj.build_id_hex();
        let mut order: Vec<usize> = (0..addrs.len()).collect();
        order.sort_unstable_by_key(|&i| addrs[i]);
        let run = order.len().div_ceil(threads);
        let parts: Vec<Vec<(usize, Symbolized)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = order
                .chunks(run)
                .enumerate()
                .map(|(part, indices)| {
                    let build_id = build_id.as_deref();
                    scope.spawn(move || {
                        // The two one-time loads, side by side.
                        match part {
                            0 => obj.prepare_units(&self.env(true)),
                            1 => obj.prepare_symbols(&self.env(true)),
                            _ => {}
                        }
                        indices
                            .iter()
                            .map(|&i| {
                                let found =
                                    self.in_object(obj, path, build_id, addrs[i], kind, true);
                                (i, found)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut out: Vec<Option<Symbolized>> = (0..addrs.len()).map(|_| None).collect();
        for (i, found) in parts.into_iter().flatten() {
            out[i] = Some(found);
        }
        out.into_iter().flatten().collect()
    }

    /// The object with build-id `id` under the debug root: the binary itself
    /// (`.build-id/xx/rest`, a link to it in distribution layouts) first, as
    /// it maps file offsets, then the debug file (`rest.debug`).
    fn open_build_id(&self, id: &[u8]) -> Option<Arc<ElfObject>> {
        let debug = debugfile::build_id_path(&self.debug_root, id)?;
        let binary = debug.with_extension("");
        [binary, debug].into_iter().find_map(|path| {
            let obj = self.cache.open(&path, &path, &self.counters).ok()?;
            (obj.build_id() == Some(id)).then_some(obj)
        })
    }

    /// Symbolizes one address of `obj`, given as a file offset or vaddr.
    fn in_object(
        &self,
        obj: &ElfObject,
        path: &str,
        build_id: Option<&str>,
        addr: u64,
        kind: AddressKind,
        bulk: bool,
    ) -> Symbolized {
        let (vaddr, offset) = match kind {
            AddressKind::FileOffset => (obj.file_offset_to_vaddr(addr), Some(addr)),
            AddressKind::VirtualAddress => (Some(addr), obj.vaddr_to_file_offset(addr)),
        };
        let frames = match vaddr {
            Some(vaddr) => self.lookup(obj, vaddr, bulk),
            None => {
                Counters::bump(&self.counters.unresolved);
                Vec::new()
            }
        };
        Symbolized {
            addr,
            frames,
            module: Some(module(
                path,
                build_id.map(str::to_owned),
                offset.unwrap_or(addr),
            )),
        }
    }

    fn lookup(&self, obj: &ElfObject, vaddr: u64, bulk: bool) -> Vec<Frame> {
        let (frames, resolution) = obj.lookup(vaddr, &self.env(bulk));
        let counter = match resolution {
            Resolution::Dwarf => &self.counters.resolved_dwarf,
            Resolution::Symtab => &self.counters.resolved_symtab,
            Resolution::None => &self.counters.unresolved,
        };
        Counters::bump(counter);
        frames
    }

    fn unresolved(&self, addr: u64, module: Option<ModuleInfo>) -> Symbolized {
        Counters::bump(&self.counters.unresolved);
        Symbolized {
            addr,
            frames: Vec::new(),
            module,
        }
    }

    fn symbolize_process(&self, pid: u32, addrs: &[u64]) -> Result<Vec<Symbolized>, Error> {
        let maps = ProcessMaps::read(pid)?;
        // Group addresses by mapping so each object is resolved once per call.
        let mut by_mapping: HashMap<Option<&Mapping>, Vec<usize>> = HashMap::new();
        for (i, &addr) in addrs.iter().enumerate() {
            by_mapping.entry(maps.find(addr)).or_default().push(i);
        }
        let mut out: Vec<Option<Symbolized>> = vec![None; addrs.len()];
        let mut perf_map: Option<Option<Arc<PerfMap>>> = None;
        for (entry, indices) in by_mapping {
            let kind = entry.map(Mapping::kind);
            let object = match (entry, kind) {
                (Some(entry), Some(MappingKind::File)) => {
                    let opened = process::open_mapped_file(pid, entry);
                    Some(match opened {
                        Ok(file) => self.cache.open_file(
                            &file,
                            Path::new(&entry.path),
                            ReadFile::Copy {
                                cap: process::MAX_OBJECT_BYTES,
                            },
                            &self.counters,
                        ),
                        Err(e) => {
                            Counters::bump(&self.counters.files_refused);
                            tracing::debug!("not symbolized: {e}");
                            Err(Error::io(&entry.path, std::io::Error::other(e.to_string())))
                        }
                    })
                }
                (Some(entry), Some(MappingKind::Vdso)) => {
                    Some(process::read_vdso(pid, entry).and_then(|bytes| {
                        self.cache
                            .open_bytes(bytes, Path::new("[vdso]"), &self.counters)
                    }))
                }
                _ => None,
            };
            for i in indices {
                let addr = addrs[i];
                out[i] = Some(match (entry, kind, &object) {
                    (Some(entry), _, Some(Ok(obj))) => {
                        let offset = entry.file_offset(addr);
                        let build_id = obj.build_id_hex();
                        self.in_object(
                            obj,
                            entry.display_name(),
                            build_id.as_deref(),
                            offset,
                            AddressKind::FileOffset,
                            true,
                        )
                        .with_addr(addr)
                    }
                    (Some(entry), _, Some(Err(_))) => self.unresolved(
                        addr,
                        Some(module(entry.display_name(), None, entry.file_offset(addr))),
                    ),
                    (_, None | Some(MappingKind::Anonymous), None) => {
                        let map = perf_map.get_or_insert_with(|| self.perf_map(pid));
                        self.in_perf_map(map.as_deref(), entry, addr)
                    }
                    (entry, _, _) => {
                        let m = entry.map(|e| module(e.display_name(), None, e.file_offset(addr)));
                        self.unresolved(addr, m)
                    }
                });
            }
            if let Some(Err(e)) = &object {
                if !matches!(kind, Some(MappingKind::File)) {
                    self.counters.error(e);
                }
            }
        }
        Ok(out
            .into_iter()
            .zip(addrs)
            .map(|(s, &addr)| {
                s.unwrap_or(Symbolized {
                    addr,
                    frames: Vec::new(),
                    module: None,
                })
            })
            .collect())
    }

    fn in_perf_map(&self, map: Option<&PerfMap>, entry: Option<&Mapping>, addr: u64) -> Symbolized {
        let module = entry.map(|e| module(e.display_name(), None, e.file_offset(addr)));
        match map.and_then(|m| m.lookup(addr)) {
            Some(name) => {
                Counters::bump(&self.counters.resolved_perf_map);
                let function = if self.demangle {
                    crate::demangle(name).into_owned()
                } else {
                    name.to_owned()
                };
                Symbolized {
                    addr,
                    frames: vec![Frame {
                        function: Some(function),
                        file: None,
                        line: None,
                        inlined: false,
                    }],
                    module,
                }
            }
            None => self.unresolved(addr, module),
        }
    }

    /// The perf map of `pid`, with what was appended since it was last read.
    fn perf_map(&self, pid: u32) -> Option<Arc<PerfMap>> {
        if !self.perf_maps {
            return None;
        }
        let mut cache = lock(&self.perf_map_cache);
        if !cache.contains_key(&pid) && cache.len() >= PERF_MAPS_KEPT {
            if let Some(oldest) = cache.iter().min_by_key(|(_, (t, _))| *t).map(|(p, _)| *p) {
                cache.remove(&oldest);
            }
        }
        let (used, reader) = cache.entry(pid).or_insert_with(|| {
            (
                Instant::now(),
                PerfMapReader::new(&ProcessFacts::read(pid, "")),
            )
        });
        *used = Instant::now();
        let before = reader.counts();
        let result = reader.refresh();
        let after = reader.counts();
        Counters::add(
            &self.counters.perf_map_errors,
            after.bad_lines - before.bad_lines,
        );
        if after.refused > before.refused || (after.capped && !before.capped) {
            Counters::bump(&self.counters.perf_maps_refused);
        }
        match result {
            Ok(_) => Some(reader.map()),
            Err(e) => {
                tracing::debug!("no perf map: {e}");
                (!reader.map().is_empty()).then(|| reader.map())
            }
        }
    }

    /// The kernel's symbols for `addrs`: read again past [`KALLSYMS_TTL`]
    /// only when one of them is outside the core kernel's text.
    fn kernel_symbols(&self, addrs: &[u64]) -> Result<Arc<KernelSymbols>, Error> {
        let mut guard = lock(&self.kernel);
        if let Some((loaded, syms)) = &*guard {
            if loaded.elapsed() < KALLSYMS_TTL || addrs.iter().all(|&a| syms.in_core_text(a)) {
                return Ok(Arc::clone(syms));
            }
        }
        let syms = Arc::new(KernelSymbols::load()?);
        *guard = Some((Instant::now(), Arc::clone(&syms)));
        Ok(syms)
    }

    fn symbolize_kernel(&self, addrs: &[u64]) -> Result<Vec<Symbolized>, Error> {
        let syms = self.kernel_symbols(addrs)?;
        Ok(addrs
            .iter()
            .map(|&addr| match syms.lookup(addr) {
                Some(sym) => {
                    Counters::bump(&self.counters.resolved_kernel);
                    Symbolized {
                        addr,
                        frames: vec![Frame {
                            function: Some(sym.name.to_owned()),
                            file: None,
                            line: None,
                            inlined: false,
                        }],
                        module: Some(module(sym.module, syms.build_id(sym.module), addr)),
                    }
                }
                None => self.unresolved(addr, None),
            })
            .collect())
    }
}

impl Symbolized {
    fn with_addr(mut self, addr: u64) -> Symbolized {
        self.addr = addr;
        self
    }
}

fn module(path: &str, build_id: Option<String>, file_offset: u64) -> ModuleInfo {
    ModuleInfo {
        path: path.to_owned(),
        build_id,
        file_offset,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn probe_target() -> u32 {
        std::hint::black_box(7)
    }

    #[test]
    fn symbolizer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Symbolizer>();
    }

    #[test]
    fn own_process_function_is_named() {
        let s = Symbolizer::new();
        let pc = probe_target as *const () as usize as u64;
        let out = s
            .symbolize(
                &Source::Process {
                    pid: std::process::id(),
                },
                &[pc, 8],
            )
            .unwrap();
        let outer = out[0].frames.last().expect("frames for our own function");
        assert!(
            outer
                .function
                .as_deref()
                .unwrap_or("")
                .ends_with("probe_target"),
            "{:?}",
            out[0]
        );
        let exe = std::env::current_exe().unwrap();
        let module = out[0].module.as_ref().unwrap();
        assert_eq!(Path::new(&module.path), exe);
        // The same address, as a file offset into the executable.
        let again = s.symbolize_file_offsets(&exe, &[module.file_offset]);
        assert_eq!(again[0].frames, out[0].frames);
        assert_eq!(s.stats().objects_parsed, 1);
        // Address 8 is in no mapping.
        assert!(out[1].frames.is_empty() && out[1].module.is_none());
    }

    #[test]
    fn missing_file_is_counted_not_fatal() {
        let s = Symbolizer::new();
        let out = s
            .symbolize(
                &Source::Elf {
                    path: Path::new("/nonexistent/binary"),
                    addresses: AddressKind::VirtualAddress,
                },
                &[0x1000],
            )
            .unwrap();
        assert!(out[0].frames.is_empty());
        assert_eq!(out[0].module.as_ref().unwrap().path, "/nonexistent/binary");
        assert_eq!(s.stats().io_errors, 1);
    }

    #[test]
    fn unknown_build_id_and_bad_hex_are_errors() {
        let dir = std::env::temp_dir();
        let s = Symbolizer::builder().debug_root(&dir).build();
        let src = |id| Source::BuildId {
            build_id: id,
            addresses: AddressKind::FileOffset,
        };
        assert!(matches!(
            s.symbolize(&src("00112233"), &[1]),
            Err(Error::BuildIdNotFound { .. })
        ));
        assert!(matches!(
            s.symbolize(&src("xyz"), &[1]),
            Err(Error::InvalidBuildId(_))
        ));
    }
}
