//! One ELF object held in memory: its bytes, identity (build-id, debug link),
//! load segments, and — parsed lazily, on the first address that needs them —
//! its symbol tables, DWARF and separate debug file.
//!
//! Owns the order in which names are looked up for an address: DWARF (own or
//! from the debug file), then `.symtab` (own or the debug file's), then `.dynsym`.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use object::{Object, ObjectSection, ObjectSegment};

use crate::demangle::NameCache;
use crate::dwarf::DwarfInfo;
use crate::stats::Counters;
use crate::symtab::{SymbolHit, SymbolTable, Which};
use crate::units::{UnitDwarf, UnitFrames};
use crate::{debugfile, Error, Frame};

/// Lookups in one symbol table of one object answered by a pass over its
/// symbols before the table is built: building it is one such pass plus a
/// sort, and most objects with DWARF are asked about a few addresses.
const SCANNED_LOOKUPS: usize = 4;

/// The bytes of an object: a read-only file mapping, or a copy (vDSO, tests).
pub(crate) enum Backing {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
    /// What lookups read of a profiled process's file.
    Copied(crate::process::ElfCopy),
}

/// Where the sections `names` lie in `file`'s bytes (those it has).
pub(crate) fn section_ranges(
    file: &object::File<'_>,
    names: &[&str],
) -> Vec<std::ops::Range<usize>> {
    names
        .iter()
        .filter_map(|name| file.section_by_name(name)?.file_range())
        .filter_map(|(at, size)| {
            let at = usize::try_from(at).ok()?;
            Some(at..at.checked_add(usize::try_from(size).ok()?)?)
        })
        .collect()
}

impl Backing {
    /// Gives back the resident pages that lie wholly within `range` of a
    /// mapped file (a pass over a symbol table faults in megabytes of it
    /// that later lookups do not read again); nothing for other backings.
    pub(crate) fn give_back(&self, range: std::ops::Range<usize>) {
        if let Backing::Mapped(m) = self {
            drop_resident(m.as_ptr(), m.len(), range.start, range.end);
        }
    }
}

/// Gives back the resident pages that lie wholly within bytes `from..to`
/// of the `len` bytes at `start`, in a read-only file mapping.
/// They are read again from the file if touched again: the mapping is
/// never written, so no content is lost.
fn drop_resident(start: *const u8, len: usize, from: usize, to: usize) {
    // SAFETY: sysconf has no memory effects.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let (from, to) = (from.min(len), to.min(len));
    let first = (start as usize + from).next_multiple_of(page);
    let last = (start as usize + to) / page * page;
    if last > first {
        // SAFETY: `first..last` lies in a read-only file mapping that the
        // caller keeps alive; MADV_DONTNEED on such pages only drops them
        // from memory (the next read faults them in from the file).
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_DONTNEED,
            );
        }
    }
}

impl Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(v) => v,
            Backing::Copied(c) => c,
        }
    }
}

impl Backing {
    /// Maps `file` read-only. Only for files no profiled process can
    /// change (the debug root, a path the user named): a file shrunk while
    /// mapped raises SIGBUS on access. Files of profiled processes are
    /// read with [`Backing::read`] instead.
    pub(crate) fn map(file: &File, path: &Path) -> Result<Backing, Error> {
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Err(Error::object(path, "empty file"));
        }
        // SAFETY: the mapping is read-only and private, of a trusted file
        // (see above) that nobody truncates in place.
        let map = unsafe { memmap2::Mmap::map(file) }.map_err(|e| Error::io(path, e))?;
        Ok(Backing::Mapped(map))
    }

    /// Copies what lookups read of `file` (at most `cap` bytes; code and
    /// data are not copied): a copy that the process owning the file
    /// cannot truncate under us.
    /// Debug sections, then `.symtab`, are left out when what would be
    /// copied comes to more than `max_bytes`.
    pub(crate) fn read(
        file: &File,
        path: &Path,
        cap: u64,
        max_bytes: u64,
    ) -> Result<Backing, Error> {
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Err(Error::object(path, "empty file"));
        }
        let parts = crate::process::ElfParts::Symbols { max_bytes };
        let copy =
            crate::process::read_elf_parts(file, cap, parts).map_err(|e| Error::io(path, e))?;
        Ok(Backing::Copied(copy))
    }
}

/// A `PT_LOAD` segment: how file offsets map to virtual addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoadSegment {
    pub(crate) vaddr: u64,
    pub(crate) offset: u64,
    pub(crate) filesz: u64,
}

/// What a lookup for one address drew its answer from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolution {
    Dwarf,
    Symtab,
    None,
}

/// What the lookup of one object needs to know about the symbolizer.
pub(crate) struct Env<'a> {
    pub(crate) debug_root: &'a Path,
    pub(crate) counters: &'a Counters,
    pub(crate) demangle: bool,
    pub(crate) inlined: bool,
    /// Bytes of found frames one object keeps ([`FoundCache`]).
    pub(crate) found_bytes: usize,
    /// A long list of lookups in one file, on several threads at once
    /// (see `units`): more parsed units are kept, and the pages of a mapped
    /// file's DWARF are given back at longer intervals, where each thread
    /// would otherwise fault in again what another just gave back.
    pub(crate) bulk: bool,
}

/// One parsed ELF object, shared through the cache.
pub(crate) struct ElfObject {
    /// Where the bytes were read from (may be under `/proc/PID/root` or `map_files`).
    pub(crate) path: PathBuf,
    /// The path its user knows it by (the `/proc/PID/maps` path), for debug-file search.
    pub(crate) logical_path: PathBuf,
    data: Arc<Backing>,
    build_id: Option<Vec<u8>>,
    debuglink: Option<(Vec<u8>, u32)>,
    altlink: Option<(Vec<u8>, Vec<u8>)>,
    loads: Vec<LoadSegment>,
    has_debug_info: bool,
    /// Code sections are `NOBITS`: a debug file, not a loadable binary.
    debug_only: bool,
    little_endian: bool,
    /// True for a file found as another object's separate debug file.
    is_debug_file: bool,
    /// Its directory may be searched for debug links: false for a file of a
    /// profiled process, whose directories that process controls.
    pub(crate) trusted_dir: bool,
    weight: AtomicUsize,
    symtab: OnceLock<SymbolTable>,
    dynsym: OnceLock<SymbolTable>,
    /// Lookups in `.symtab` and `.dynsym` answered by a pass over the
    /// symbols, before the table is built ([`SCANNED_LOOKUPS`]).
    scans: [AtomicUsize; 2],
    debug_file: OnceLock<Option<Arc<ElfObject>>>,
    dwarf: OnceLock<Option<DwarfInfo>>,
    /// DWARF parsed one compilation unit at a time ([`crate::units`]).
    units: OnceLock<Option<UnitDwarf>>,
    /// Demangled names, for this object and its debug file.
    names: NameCache,
    /// Frames found per address.
    found: FoundCache,
}

/// The frames found for the addresses of one object, so that an address
/// met again (the same hot code in every interval of the agent, a second
/// pass over a list) is answered without a lookup. Lookups that counted
/// an error are not kept (a later one counts it again). Past its byte
/// budget the cache starts over.
#[derive(Default)]
struct FoundCache {
    /// Read by every thread of a bulk lookup at once: the frames are
    /// shared, and copied out after the lock is released.
    found: RwLock<HashMap<u64, Found>>,
    bytes: AtomicUsize,
}

/// The frames found for one address, and how.
type Found = (Arc<[Frame]>, Resolution);

impl FoundCache {
    fn get(&self, vaddr: u64) -> Option<(Vec<Frame>, Resolution)> {
        let hit = {
            let found = self.found.read().unwrap_or_else(|p| p.into_inner());
            found.get(&vaddr).cloned()
        };
        hit.map(|(frames, resolution)| (frames.to_vec(), resolution))
    }

    fn put(&self, vaddr: u64, frames: &[Frame], resolution: Resolution, budget: usize) {
        let bytes = 64
            + frames
                .iter()
                .map(|f| {
                    std::mem::size_of::<Frame>()
                        + f.function.as_ref().map_or(0, String::len)
                        + f.file.as_ref().map_or(0, String::len)
                })
                .sum::<usize>();
        let frames: Arc<[Frame]> = frames.into();
        let mut found = self.found.write().unwrap_or_else(|p| p.into_inner());
        if self.bytes.load(Ordering::Relaxed) + bytes > budget {
            *found = HashMap::new();
            self.bytes.store(0, Ordering::Relaxed);
        }
        if found.insert(vaddr, (frames, resolution)).is_none() {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Errors counted so far, of the kinds a lookup in an object can count.
fn lookup_errors(env: &Env<'_>) -> u64 {
    let c = env.counters;
    [
        &c.io_errors,
        &c.object_errors,
        &c.dwarf_errors,
        &c.decompression_refused,
    ]
    .iter()
    .map(|n| n.load(Ordering::Relaxed))
    .sum()
}

impl std::fmt::Debug for ElfObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElfObject")
            .field("path", &self.path)
            .field("build_id", &self.build_id_hex())
            .field("loads", &self.loads)
            .field("has_debug_info", &self.has_debug_info)
            .finish_non_exhaustive()
    }
}

impl ElfObject {
    /// Maps and parses the headers of the file at `path`.
    pub(crate) fn open(path: &Path, logical_path: &Path) -> Result<ElfObject, Error> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let backing = Backing::map(&file, path)?;
        let mut obj = ElfObject::parse(Arc::new(backing), path, logical_path)?;
        obj.trusted_dir = true;
        Ok(obj)
    }

    /// Parses the headers of an object held in `data`.
    pub(crate) fn parse(
        data: Arc<Backing>,
        path: &Path,
        logical_path: &Path,
    ) -> Result<ElfObject, Error> {
        let file = object::File::parse(&**data).map_err(|e| Error::object(path, e))?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(Error::object(path, "not an ELF file"));
        }
        // A damaged note or link section loses that feature only, not the object.
        let build_id = file
            .build_id()
            .ok()
            .flatten()
            .filter(|id| !id.is_empty())
            .map(<[u8]>::to_vec);
        let debuglink = file
            .gnu_debuglink()
            .ok()
            .flatten()
            .map(|(name, crc)| (name.to_vec(), crc));
        let altlink = file
            .gnu_debugaltlink()
            .ok()
            .flatten()
            .map(|(name, id)| (name.to_vec(), id.to_vec()));
        let loads = file
            .segments()
            .map(|seg| {
                let (offset, filesz) = seg.file_range();
                LoadSegment {
                    vaddr: seg.address(),
                    offset,
                    filesz,
                }
            })
            .collect();
        let debug_left_out = matches!(&*data, Backing::Copied(c) if c.left_out().debug);
        let has_debug_info = !debug_left_out
            && file
                .section_by_name(".debug_info")
                .is_some_and(|s| s.file_range().is_some_and(|(_, size)| size > 0));
        let debug_only = file
            .section_by_name(".text")
            .is_some_and(|s| s.file_range().is_none());
        let little_endian = file.is_little_endian();
        let weight = match &*data {
            Backing::Copied(copy) => copy.copied_bytes(),
            other => other.len(),
        };
        Ok(ElfObject {
            path: path.to_owned(),
            logical_path: logical_path.to_owned(),
            data,
            build_id,
            debuglink,
            altlink,
            loads,
            has_debug_info,
            debug_only,
            little_endian,
            is_debug_file: false,
            trusted_dir: false,
            weight: AtomicUsize::new(weight),
            symtab: OnceLock::new(),
            dynsym: OnceLock::new(),
            scans: [AtomicUsize::new(0), AtomicUsize::new(0)],
            debug_file: OnceLock::new(),
            dwarf: OnceLock::new(),
            units: OnceLock::new(),
            names: NameCache::default(),
            found: FoundCache::default(),
        })
    }

    pub(crate) fn into_debug_file(mut self) -> ElfObject {
        self.is_debug_file = true;
        self
    }

    pub(crate) fn data(&self) -> &Arc<Backing> {
        &self.data
    }

    pub(crate) fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    pub(crate) fn build_id_hex(&self) -> Option<String> {
        self.build_id.as_deref().map(hex)
    }

    pub(crate) fn debuglink(&self) -> Option<(&[u8], u32)> {
        self.debuglink.as_ref().map(|(n, c)| (n.as_slice(), *c))
    }

    pub(crate) fn altlink(&self) -> Option<(&[u8], &[u8])> {
        self.altlink
            .as_ref()
            .map(|(n, id)| (n.as_slice(), id.as_slice()))
    }

    pub(crate) fn little_endian(&self) -> bool {
        self.little_endian
    }

    /// Estimated bytes this object keeps alive (file bytes plus lazily built parts).
    pub(crate) fn weight(&self) -> usize {
        self.weight.load(Ordering::Relaxed)
            + self.names.heap_bytes()
            + self.found.heap_bytes()
            + self
                .units
                .get()
                .and_then(Option::as_ref)
                .map_or(0, UnitDwarf::kept_unit_bytes)
    }

    fn add_weight(&self, bytes: usize) {
        self.weight.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The virtual address that file offset `offset` is loaded at.
    pub(crate) fn file_offset_to_vaddr(&self, offset: u64) -> Option<u64> {
        if self.debug_only {
            return None;
        }
        if self.loads.is_empty() {
            // Relocatable objects have no segments; their addresses are offsets.
            return Some(offset);
        }
        self.loads
            .iter()
            .find(|s| offset >= s.offset && offset - s.offset < s.filesz)
            .map(|s| s.vaddr.wrapping_add(offset - s.offset))
    }

    /// False for a debug-only file (`objcopy --only-keep-debug`), whose
    /// segments no longer say where their bytes were in the original file.
    pub(crate) fn can_translate_offsets(&self) -> bool {
        !self.debug_only
    }

    /// The file offset that holds the byte at virtual address `vaddr`.
    pub(crate) fn vaddr_to_file_offset(&self, vaddr: u64) -> Option<u64> {
        if self.debug_only {
            return None;
        }
        if self.loads.is_empty() {
            return Some(vaddr);
        }
        self.loads
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
            .and_then(|s| s.offset.checked_add(vaddr - s.vaddr))
    }

    /// The symbol of table `which` that contains `vaddr`: from a pass over
    /// the symbols for the first [`SCANNED_LOOKUPS`] lookups, from the
    /// table after (an object whose DWARF names nearly every address never
    /// builds it).
    fn symbol_in(&self, which: Which, vaddr: u64, env: &Env<'_>) -> Option<SymbolHit<'_>> {
        let (cell, scans) = match which {
            Which::Symtab => (&self.symtab, &self.scans[0]),
            Which::Dynsym => (&self.dynsym, &self.scans[1]),
        };
        if cell.get().is_none() && scans.fetch_add(1, Ordering::Relaxed) < SCANNED_LOOKUPS {
            return self
                .read_symbols(which, env, |file| {
                    SymbolTable::scan(file, &self.data, which, vaddr)
                })
                .flatten();
        }
        self.symbols(which, env).lookup(vaddr, &self.data)
    }

    /// What `read` reads of table `which` in the parsed object, after
    /// which the pages of the table and its names are given back (a pass
    /// over them faults in megabytes that lookups do not read again);
    /// `None` when the object does not parse (counted).
    fn read_symbols<T>(
        &self,
        which: Which,
        env: &Env<'_>,
        read: impl FnOnce(&object::File<'_>) -> T,
    ) -> Option<T> {
        match object::File::parse(&**self.data) {
            Ok(file) => {
                let found = read(&file);
                for range in crate::symtab::file_ranges(&file, which) {
                    self.data.give_back(range);
                }
                Some(found)
            }
            Err(e) => {
                env.counters.error(&Error::object(&self.path, e));
                None
            }
        }
    }

    fn symbols(&self, which: Which, env: &Env<'_>) -> &SymbolTable {
        let cell = match which {
            Which::Symtab => &self.symtab,
            Which::Dynsym => &self.dynsym,
        };
        cell.get_or_init(|| {
            let table = self
                .read_symbols(which, env, |file| {
                    SymbolTable::read(file, &self.data, which)
                })
                .unwrap_or_default();
            if which == Which::Symtab {
                Counters::bump(&env.counters.symtabs_parsed);
            }
            self.add_weight(table.heap_bytes());
            table
        })
    }

    /// Gives back the pages of its mapped DWARF sections (and its debug
    /// file's) that lookups faulted in.
    pub(crate) fn give_back_pages(&self) {
        if let Some(Some(units)) = self.units.get() {
            units.give_back_all();
        }
        if let Some(Some(debug)) = self.debug_file.get() {
            debug.give_back_pages();
        }
    }

    /// The separate debug file, searched for once.
    fn debug_file(&self, env: &Env<'_>) -> Option<&Arc<ElfObject>> {
        if self.is_debug_file {
            return None;
        }
        self.debug_file
            .get_or_init(|| {
                let found = debugfile::find(self, env)?;
                Counters::bump(&env.counters.debug_files_found);
                self.add_weight(found.weight());
                Some(Arc::new(found))
            })
            .as_ref()
    }

    /// The DWARF for this object: its own, or its debug file's.
    fn dwarf(&self, env: &Env<'_>) -> Option<&DwarfInfo> {
        if !self.has_debug_info {
            return self.debug_file(env)?.dwarf(env);
        }
        self.dwarf
            .get_or_init(|| {
                let sup = self
                    .altlink()
                    .and_then(|link| debugfile::find_alt(self, link, env));
                match DwarfInfo::load(self, sup.as_ref()) {
                    Ok((info, broken)) => {
                        Counters::bump(&env.counters.dwarf_parsed);
                        self.add_weight(info.owned_bytes);
                        if let Some(e) = broken {
                            env.counters.error(&e);
                        }
                        Some(info)
                    }
                    Err(e) => {
                        env.counters.error(&e);
                        None
                    }
                }
            })
            .as_ref()
    }

    /// The per-unit DWARF for this object: its own, or its debug file's.
    /// None for an object with a supplementary (dwz) file, whose units
    /// refer into it: the whole-object context reads those.
    fn units(&self, env: &Env<'_>) -> Option<&UnitDwarf> {
        if !self.has_debug_info {
            return self.debug_file(env)?.units(env);
        }
        self.units
            .get_or_init(|| {
                if self.altlink().is_some() {
                    return None;
                }
                // A load error (a section over the inflate cap) is left to
                // the whole-object context, which meets and counts it.
                let units = UnitDwarf::load(self, env).ok()?;
                Counters::bump(&env.counters.dwarf_parsed);
                self.add_weight(units.heap_bytes);
                Some(units)
            })
            .as_ref()
    }

    /// Ahead of a long list of lookups (one thread each, at once): the
    /// unit index, and the symbol table that addresses DWARF does not
    /// name fall back to, built without the first passes over the symbols
    /// that a few lookups get (a long list would make them all, and wait
    /// for one thread's build of the table on the others).
    pub(crate) fn prepare_units(&self, env: &Env<'_>) {
        self.units(env);
    }

    /// See [`Self::prepare_units`].
    pub(crate) fn prepare_symbols(&self, env: &Env<'_>) {
        self.symbols(Which::Symtab, env);
    }

    /// The DWARF frames for `vaddr`: from the units that cover it, parsed
    /// alone, or from the whole-object context where a unit cannot be.
    fn dwarf_frames(&self, vaddr: u64, env: &Env<'_>) -> Vec<Frame> {
        let found = match self.units(env).map(|u| u.frames(vaddr, env, &self.names)) {
            Some(UnitFrames::Frames(found)) => found,
            Some(UnitFrames::Whole) | None => match self.dwarf(env) {
                Some(dwarf) => dwarf.frames(vaddr, env, &self.names),
                None => Ok(Vec::new()),
            },
        };
        found.unwrap_or_else(|(frames, e)| {
            env.counters.error(&e);
            frames
        })
    }

    /// The symbol containing `vaddr`, from `.symtab` (own, then the debug
    /// file's) and then `.dynsym`: its name and, when `STT_FILE` says, its file.
    pub(crate) fn symbol(&self, vaddr: u64, env: &Env<'_>) -> Option<(String, Option<String>)> {
        let found = |hit: crate::symtab::SymbolHit<'_>| {
            let file = hit.file.map(|f| String::from_utf8_lossy(f).into_owned());
            (self.names.name(hit.name, env.demangle), file)
        };
        if let Some(hit) = self.symbol_in(Which::Symtab, vaddr, env) {
            return Some(found(hit));
        }
        if let Some(debug) = self.debug_file(env) {
            if let Some(hit) = debug.symbol_in(Which::Symtab, vaddr, env) {
                return Some(found(hit));
            }
        }
        self.symbol_in(Which::Dynsym, vaddr, env).map(found)
    }

    /// The frames for virtual address `vaddr`, innermost first: found
    /// before, or looked up.
    pub(crate) fn lookup(&self, vaddr: u64, env: &Env<'_>) -> (Vec<Frame>, Resolution) {
        if let Some(found) = self.found.get(vaddr) {
            return found;
        }
        let errors = lookup_errors(env);
        let (frames, resolution) = self.look_up(vaddr, env);
        if lookup_errors(env) == errors {
            self.found.put(vaddr, &frames, resolution, env.found_bytes);
        }
        (frames, resolution)
    }

    fn look_up(&self, vaddr: u64, env: &Env<'_>) -> (Vec<Frame>, Resolution) {
        let mut frames = self.dwarf_frames(vaddr, env);
        let dwarf_named = frames.last().is_some_and(|f| f.function.is_some());
        if dwarf_named {
            return (frames, Resolution::Dwarf);
        }
        match self.symbol(vaddr, env) {
            Some((name, file)) => {
                match frames.last_mut() {
                    Some(outer) => outer.function = Some(name),
                    None => frames.push(Frame {
                        function: Some(name),
                        file,
                        line: None,
                        inlined: false,
                    }),
                }
                (frames, Resolution::Symtab)
            }
            None => (frames, Resolution::None),
        }
    }

    /// Addresses worth probing: symbol starts and the entry point (fuzzing, tests).
    pub(crate) fn probe_addresses(&self, env: &Env<'_>) -> Vec<u64> {
        let mut out: Vec<u64> = self.symbols(Which::Symtab, env).addresses().collect();
        out.extend(self.symbols(Which::Dynsym, env).addresses());
        out.extend(self.loads.iter().map(|s| s.vaddr));
        out
    }

    pub(crate) fn symbol_count(&self, env: &Env<'_>) -> usize {
        self.symbols(Which::Symtab, env).len() + self.symbols(Which::Dynsym, env).len()
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes of a hex string, or `None` if it is not an even number of hex digits.
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.is_empty() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(unhex("00ab7f"), Some(vec![0x00, 0xab, 0x7f]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(""), None);
    }

    #[test]
    fn garbage_is_an_object_error_not_a_panic() {
        let data = Arc::new(Backing::Owned(b"\x7fELF\x02\x01\x01garbage".to_vec()));
        let err = ElfObject::parse(data, Path::new("x"), Path::new("x")).unwrap_err();
        assert!(matches!(err, Error::Object { .. }), "{err}");
    }

    #[test]
    fn own_executable_translates_offsets_both_ways() {
        let exe = std::env::current_exe().unwrap();
        let obj = ElfObject::open(&exe, &exe).unwrap();
        assert!(!obj.loads.is_empty());
        for seg in &obj.loads {
            if seg.filesz == 0 {
                continue;
            }
            let off = seg.offset + seg.filesz / 2;
            let vaddr = obj.file_offset_to_vaddr(off).unwrap();
            assert_eq!(obj.vaddr_to_file_offset(vaddr), Some(off));
        }
    }
}
