//! DWARF lookups that parse only the compilation units the looked-up
//! addresses fall in, not every unit of the object.
//!
//! Owns the address → unit index (`.debug_aranges`, and the root entries of
//! the units it does not list) and a bounded, least-recently-used set of
//! one-unit `addr2line` contexts. A unit that refers into other units
//! (`DW_FORM_ref_addr`, as LTO emits) is read with the units its function
//! names lead to, found by following those references entry by entry; where
//! that cannot be done (a compressed `.debug_info`, broken DWARF) its
//! addresses are left to the whole-object context ([`DwarfInfo::load`]).
//!
//! A compressed `.debug_info` (a distribution's separate debug file) is not
//! inflated whole: each unit is inflated alone, streaming the section up to
//! it and keeping only its bytes; so are its abbreviation table and line
//! program where `.debug_abbrev` and `.debug_line` are compressed too
//! ([`crate::compressed`]).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use gimli::{Reader as _, Section as _};
use lru::LruCache;

use crate::compressed::{self, Compressed, Piece};
use crate::demangle::NameCache;
use crate::dwarf::{self, DwarfInfo, Reader, SectionBytes};
use crate::elf::{section_ranges, Backing, ElfObject, Env};
use crate::stats::Counters;
use crate::{Error, Frame};

/// Bytes of `.debug_info` whose parsed units one object keeps between
/// lookups; past it the least recently used unit goes (and is parsed again
/// if an address needs it). The unit last parsed always stays.
const KEPT_UNIT_BYTES: usize = 4 << 20;

/// [`KEPT_UNIT_BYTES`] in a bulk lookup ([`Env::bulk`]): a long sorted
/// list meets each unit once, and a unit given up costs the freeing of
/// its rows and functions while the other threads allocate theirs.
/// Measured on a 114 MiB debug build of `smolder` (10,000 addresses over
/// 600 units, `smolder-bench-symbolize`, medians of 10 in one run, pages
/// given back every 4 MiB): 16 MiB took 261 ms at a peak of 137 MiB,
/// 32 MiB 248 ms at 149 MiB (blazesym: 322 ms, 178 MiB); with 4 MiB and
/// no give-back, 264 ms at 140 MiB in an earlier run.
const BULK_KEPT_UNIT_BYTES: usize = 32 << 20;

/// An address range of one unit, as in `addr2line`'s own index: sorted by
/// end, with the smallest start of this and every later entry.
#[derive(Debug, Clone, Copy)]
struct UnitRange {
    begin: u64,
    end: u64,
    min_begin: u64,
    /// Offset of the unit in `.debug_info`.
    unit: usize,
}

/// What the units say about one address.
pub(crate) enum UnitFrames {
    /// The frames of the first covering unit that knows the address
    /// (empty when none does); on broken DWARF, those found before the error.
    Frames(Result<Vec<Frame>, (Vec<Frame>, Error)>),
    /// A covering unit cannot be read alone: ask the whole-object context.
    Whole,
}

/// A unit as kept: its context, or why there is none.
#[derive(Clone)]
enum Parsed {
    Unit(Arc<DwarfInfo>),
    /// Refers into other units in a way [`UnitDwarf::parse_linked`] cannot
    /// follow: the whole-object context reads it.
    NotAlone,
    /// Its header, abbreviations or root entry do not parse (counted once).
    Broken,
}

struct Kept {
    units: LruCache<usize, (usize, Parsed)>,
    bytes: usize,
}

/// Where the bytes of the units come from.
enum Info {
    /// `.debug_info` as loaded: mapped, or not compressed.
    Loaded,
    /// `.debug_info` compressed in the file: inflated a unit at a time.
    Compressed(Compressed),
}

/// The unit at `offset` of a compressed `.debug_info`, inflated alone or
/// sliced from the whole section (see [`compressed`]).
fn compressed_unit(c: &Compressed, offset: usize) -> Result<Reader, String> {
    let piece = c.piece(offset, |r| compressed::initial_length_piece(r, c.endian));
    let whole = match piece.map_err(|e| e.to_string())? {
        Piece::Alone(bytes) => return Ok(c.reader(bytes)),
        Piece::Whole(whole) => whole,
    };
    let header = gimli::DebugInfo::from(whole.clone())
        .header_from_offset(gimli::DebugInfoOffset(offset))
        .map_err(|e| e.to_string())?;
    let mut bytes = whole;
    bytes
        .skip(offset)
        .and_then(|()| bytes.truncate(header.length_including_self()))
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The per-unit DWARF of one object (its own sections, or its debug file's).
pub(crate) struct UnitDwarf {
    dwarf: gimli::Dwarf<Reader>,
    info: Info,
    /// `.debug_abbrev` and `.debug_line` where they are compressed beside a
    /// compressed `.debug_info` (a distribution's debug file): read a
    /// table or a line program at a time for the unit that needs it, not
    /// inflated whole (libc's are 2.2 MiB together).
    abbrev: Option<Compressed>,
    line: Option<Compressed>,
    /// Ranges of the units `.debug_aranges` lists.
    ranges: Box<[UnitRange]>,
    listed: HashSet<usize>,
    /// The offsets of the listed units, sorted: where a walk over unit
    /// headers to the unit of a cross-unit reference starts.
    starts: Box<[usize]>,
    /// Start → end of the units that [`UnitDwarf::unit_containing`] has
    /// read the header of (at most one entry per unit).
    walked: Mutex<std::collections::BTreeMap<usize, usize>>,
    /// `.debug_info` in a mapping of the file, whose pages the walk over
    /// unit headers gives back.
    mapped: Option<MappedInfo>,
    /// Ranges of the other units, found on the first address outside
    /// `ranges` (most objects list every unit that has code).
    unlisted: OnceLock<Box<[UnitRange]>>,
    kept: Mutex<Kept>,
    /// The file's mapping and where its DWARF sections lie in it: a unit's
    /// lookups fault in pages of them all (its entries, line program,
    /// names, range lists) that later units do not read.
    backing: Arc<Backing>,
    sections: Vec<std::ops::Range<usize>>,
    /// Bytes of `.debug_info` of the units parsed since those pages were
    /// last given back ([`GIVE_BACK_EVERY`]).
    parsed_since: std::sync::atomic::AtomicUsize,
    path: PathBuf,
    /// Heap bytes held for good: decompressed sections and the index.
    pub(crate) heap_bytes: usize,
}

/// The sections a one-unit `addr2line` context reads; the others (location
/// lists, macros, type units, name indexes) are not loaded, nor inflated.
fn needed(id: gimli::SectionId) -> bool {
    use gimli::SectionId::*;
    matches!(
        id,
        DebugAbbrev
            | DebugAddr
            | DebugAranges
            | DebugInfo
            | DebugLine
            | DebugLineStr
            | DebugRanges
            | DebugRngLists
            | DebugStr
            | DebugStrOffsets
    )
}

impl UnitDwarf {
    /// Loads the sections of `obj` and indexes its units by address. Index
    /// errors (a garbled `.debug_aranges` or unit header) are counted and
    /// end the index there: the units read so far still answer.
    pub(crate) fn load(obj: &ElfObject, env: &Env<'_>) -> Result<UnitDwarf, Error> {
        let file = object::File::parse(&***obj.data()).map_err(|e| Error::object(&obj.path, e))?;
        let info = match Compressed::of(obj, &file, ".debug_info")? {
            Some(c) => Info::Compressed(c),
            None => Info::Loaded,
        };
        let compressed = matches!(info, Info::Compressed(_));
        let (abbrev, line) = if compressed {
            (
                Compressed::of(obj, &file, ".debug_abbrev")?,
                Compressed::of(obj, &file, ".debug_line")?,
            )
        } else {
            (None, None)
        };
        let (dwarf, owned) = dwarf::load_sections_where(obj, |id| {
            use gimli::SectionId::{DebugAbbrev, DebugInfo, DebugLine};
            needed(id)
                && !(compressed && id == DebugInfo)
                && !(abbrev.is_some() && id == DebugAbbrev)
                && !(line.is_some() && id == DebugLine)
        })?;
        let (ranges, listed) = listed_index(&dwarf, |source| {
            env.counters.error(&Error::Dwarf {
                path: obj.path.clone(),
                source,
            })
        });
        // The index holds what lookups need of `.debug_aranges`.
        for aranges in section_ranges(&file, &[".debug_aranges"]) {
            obj.data().give_back(aranges);
        }
        let sections = section_ranges(&file, &DWARF_SECTIONS);
        let mapped = MappedInfo::of(&dwarf, obj, &file);
        let mut starts: Vec<usize> = listed.iter().copied().collect();
        starts.sort_unstable();
        let heap_bytes = owned
            + ranges.len() * std::mem::size_of::<UnitRange>()
            + starts.len() * std::mem::size_of::<usize>()
            + listed.capacity() * 2 * std::mem::size_of::<usize>();
        Ok(UnitDwarf {
            dwarf,
            info,
            abbrev,
            line,
            ranges,
            listed,
            starts: starts.into_boxed_slice(),
            walked: Mutex::new(std::collections::BTreeMap::new()),
            mapped,
            unlisted: OnceLock::new(),
            kept: Mutex::new(Kept {
                units: LruCache::unbounded(),
                bytes: 0,
            }),
            backing: Arc::clone(obj.data()),
            sections,
            parsed_since: std::sync::atomic::AtomicUsize::new(0),
            path: obj.path.clone(),
            heap_bytes,
        })
    }

    /// Bytes of `.debug_info` of the units kept parsed now, and of
    /// compressed sections inflated whole.
    pub(crate) fn kept_unit_bytes(&self) -> usize {
        let whole = match &self.info {
            Info::Compressed(c) => c.whole_bytes(),
            Info::Loaded => 0,
        } + [&self.abbrev, &self.line]
            .into_iter()
            .flatten()
            .map(Compressed::whole_bytes)
            .sum::<usize>();
        self.lock().bytes + whole
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        // Every update is a put or a pop with its byte count: consistent
        // even after a panic elsewhere.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The frames for `vaddr`, from the units that cover it, in the order
    /// `addr2line` tries them (weak symbols can put an address in several).
    pub(crate) fn frames(&self, vaddr: u64, env: &Env<'_>, names: &NameCache) -> UnitFrames {
        let mut candidates: Vec<usize> = units_at(&self.ranges, vaddr).collect();
        if candidates.is_empty() {
            let unlisted = self.unlisted.get_or_init(|| {
                unlisted_index(
                    &self.dwarf,
                    &self.info,
                    self.abbrev.as_ref(),
                    self.mapped.as_ref(),
                    &self.listed,
                    |source| {
                        env.counters.error(&Error::Dwarf {
                            path: self.path.clone(),
                            source,
                        })
                    },
                )
            });
            candidates.extend(units_at(unlisted, vaddr));
        }
        let mut tried = Vec::new();
        for unit in candidates {
            if tried.contains(&unit) {
                continue;
            }
            tried.push(unit);
            match self.parsed(unit, env) {
                Parsed::Unit(info) => match info.frames(vaddr, env, names) {
                    Ok(frames) if frames.is_empty() => continue,
                    found => return UnitFrames::Frames(found),
                },
                Parsed::NotAlone => return UnitFrames::Whole,
                Parsed::Broken => continue,
            }
        }
        UnitFrames::Frames(Ok(Vec::new()))
    }

    /// The context of the unit at `offset`, parsed on first use and kept
    /// within [`KEPT_UNIT_BYTES`].
    fn parsed(&self, offset: usize, env: &Env<'_>) -> Parsed {
        if let Some((_, parsed)) = self.lock().units.get(&offset) {
            return parsed.clone();
        }
        self.give_back_pages(env);
        let (parsed, weight) = self.parse(offset, env);
        self.parsed_since
            .fetch_add(weight, std::sync::atomic::Ordering::Relaxed);
        // Units given up are dropped after the lock is released: freeing a
        // parsed unit takes a while, and the other threads need the lock.
        let mut evicted = Vec::new();
        let mut kept = self.lock();
        if let Some((old, unit)) = kept.units.put(offset, (weight, parsed.clone())) {
            // Another thread parsed it meanwhile.
            kept.bytes -= old;
            evicted.push(unit);
        }
        kept.bytes += weight;
        let cap = if env.bulk {
            BULK_KEPT_UNIT_BYTES
        } else {
            KEPT_UNIT_BYTES
        };
        while kept.bytes > cap && kept.units.len() > 1 {
            match kept.units.pop_lru() {
                Some((_, (w, unit))) => {
                    kept.bytes -= w;
                    evicted.push(unit);
                }
                None => break,
            }
        }
        drop(kept);
        drop(evicted);
        parsed
    }

    /// Gives back the pages of the DWARF sections that lookups faulted in.
    pub(crate) fn give_back_all(&self) {
        self.parsed_since
            .store(0, std::sync::atomic::Ordering::Relaxed);
        for range in &self.sections {
            self.backing.give_back(range.clone());
        }
    }

    /// Past [`GIVE_BACK_EVERY`] bytes of units parsed, gives back the
    /// pages of the DWARF sections that lookups faulted in: the lookups
    /// still to come read a few of them again, from the page cache.
    fn give_back_pages(&self, env: &Env<'_>) {
        use std::sync::atomic::Ordering;
        let every = if env.bulk {
            BULK_GIVE_BACK_EVERY
        } else {
            GIVE_BACK_EVERY
        };
        if self.parsed_since.load(Ordering::Relaxed) < every {
            return;
        }
        self.give_back_all();
    }

    /// A context over the one unit at `offset` of `.debug_info`, and the
    /// unit's length (what it weighs while kept).
    fn parse(&self, offset: usize, env: &Env<'_>) -> (Parsed, usize) {
        let broken = |source| {
            env.counters.error(&Error::Dwarf {
                path: self.path.clone(),
                source,
            });
            (Parsed::Broken, 0)
        };
        let bytes = match &self.info {
            Info::Loaded => {
                let header = match self
                    .dwarf
                    .debug_info
                    .header_from_offset(gimli::DebugInfoOffset(offset))
                {
                    Ok(header) => header,
                    Err(e) => return broken(e),
                };
                let mut bytes = self.dwarf.debug_info.reader().clone();
                let len = header.length_including_self();
                if let Err(e) = bytes.skip(offset).and_then(|()| bytes.truncate(len)) {
                    return broken(e);
                }
                bytes
            }
            Info::Compressed(c) => match compressed_unit(c, offset) {
                Ok(bytes) => bytes,
                Err(e) => {
                    env.counters.error(&Error::object(
                        &self.path,
                        format!("inflating the unit at {offset:#x} of .debug_info: {e}"),
                    ));
                    return (Parsed::Broken, 0);
                }
            },
        };
        let len = bytes.len();
        let header = match gimli::DebugInfo::from(bytes.clone())
            .header_from_offset(gimli::DebugInfoOffset(0))
        {
            Ok(header) => header,
            Err(e) => return broken(e),
        };
        let mut dwarf = one_unit(&self.dwarf, bytes);
        let mut weight = len;
        let inflating = |what: &str, at: usize, e: std::io::Error| {
            env.counters.error(&Error::object(
                &self.path,
                format!("inflating the {what} at {at:#x}: {e}"),
            ));
            (Parsed::Broken, 0)
        };
        if let Some(c) = &self.abbrev {
            let at = header.debug_abbrev_offset().0;
            match piece_of(c, at, compressed::abbreviation_table) {
                Ok((abbrev, w)) => {
                    dwarf.debug_abbrev = abbrev.into();
                    weight += w;
                }
                Err(e) => return inflating("abbreviations of .debug_abbrev", at, e),
            }
        }
        if refers_outside(&dwarf, &header) {
            return self.parse_linked(offset, env);
        }
        if let Some(c) = &self.line {
            let at = match stmt_list(&dwarf, &header) {
                Ok(at) => at,
                Err(e) => return broken(e),
            };
            if let Some(at) = at {
                let program =
                    |r: &mut dyn std::io::Read| compressed::initial_length_piece(r, c.endian);
                match piece_of(c, at, program) {
                    Ok((line, w)) => {
                        dwarf.debug_line = line.into();
                        weight += w;
                    }
                    Err(e) => return inflating("line program of .debug_line", at, e),
                }
            }
        }
        match DwarfInfo::from_dwarf(dwarf, &self.path, 0) {
            Ok(info) => {
                Counters::bump(&env.counters.dwarf_units_parsed);
                (Parsed::Unit(Arc::new(info)), weight)
            }
            Err(Error::Dwarf { source, .. }) => broken(source),
            Err(e) => {
                env.counters.error(&e);
                (Parsed::Broken, 0)
            }
        }
    }
}

/// The piece of compressed section `c` at `at` that `read` reads, as a
/// section reader with the piece at its own offset, and the bytes it
/// holds (none when the section was inflated whole and kept: that is
/// counted once, in [`UnitDwarf::kept_unit_bytes`]).
fn piece_of(
    c: &Compressed,
    at: usize,
    read: impl FnOnce(&mut dyn std::io::Read) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<(Reader, usize)> {
    match c.piece(at, read)? {
        Piece::Alone(bytes) => compressed::sparse(at, &bytes, c.endian)
            .map(|r| (r, bytes.len()))
            .ok_or_else(|| std::io::Error::other("no memory for the piece")),
        Piece::Whole(whole) => Ok((whole, 0)),
    }
}

/// Where the unit's line program starts in `.debug_line` (its root
/// entry's `DW_AT_stmt_list`), read with `dwarf`'s abbreviations.
fn stmt_list(
    dwarf: &gimli::Dwarf<Reader>,
    header: &gimli::UnitHeader<Reader>,
) -> gimli::Result<Option<usize>> {
    let abbreviations = dwarf.abbreviations(header)?;
    let mut cursor = header.entries(&abbreviations);
    cursor.next_dfs()?;
    let root = cursor.current().ok_or(gimli::Error::MissingUnitDie)?;
    Ok(match root.attr_value(gimli::constants::DW_AT_stmt_list) {
        Some(gimli::AttributeValue::DebugLineRef(at)) => Some(at.0),
        Some(gimli::AttributeValue::SecOffset(at)) => Some(at),
        _ => None,
    })
}

/// Units one context may take in besides its own, for the names its
/// functions and inlined calls borrow from them; past it the whole-object
/// context reads the unit.
const MAX_LINKED_UNITS: usize = 512;

/// Whether `addr2line` follows attribute `at` to name a function or an
/// inlined call (its abstract origin, or the declaration it specifies).
fn names_through(at: gimli::DwAt) -> bool {
    at == gimli::DW_AT_abstract_origin || at == gimli::DW_AT_specification
}

impl UnitDwarf {
    /// A context over the unit at `offset`, which refers into other units
    /// (`DW_FORM_ref_addr`, as LTO writes an inlined function's abstract
    /// origin): that unit and the units its names lead to, each read
    /// whole but none of their line programs or function trees unless an
    /// address falls in them. [`Parsed::NotAlone`] where the links cannot
    /// be followed (compressed `.debug_info`, broken DWARF, too many units).
    fn parse_linked(&self, offset: usize, env: &Env<'_>) -> (Parsed, usize) {
        if !matches!(self.info, Info::Loaded) {
            return (Parsed::NotAlone, 0);
        }
        let Ok(units) = self.linked_units(offset) else {
            return (Parsed::NotAlone, 0);
        };
        let Some((section, weight)) = self.assemble(&units) else {
            return (Parsed::NotAlone, 0);
        };
        match DwarfInfo::from_dwarf(one_unit(&self.dwarf, section), &self.path, 0) {
            Ok(info) => {
                Counters::bump(&env.counters.dwarf_units_parsed);
                (Parsed::Unit(Arc::new(info)), weight)
            }
            Err(_) => (Parsed::NotAlone, 0),
        }
    }

    /// The unit at `offset` and every unit that the names of its functions
    /// and inlined calls lead to (through `DW_AT_abstract_origin` and
    /// `DW_AT_specification`, across units and then within them, as
    /// `addr2line` follows them), by offset in `.debug_info`. Reads the
    /// entries of the first unit, and only the linked entries of the others.
    fn linked_units(
        &self,
        offset: usize,
    ) -> Result<std::collections::BTreeMap<usize, gimli::UnitHeader<Reader>>, gimli::Error> {
        use gimli::AttributeValue;
        let mut abbrevs: std::collections::HashMap<usize, Arc<gimli::Abbreviations>> =
            std::collections::HashMap::new();
        let mut abbreviations = |h: &gimli::UnitHeader<Reader>| -> gimli::Result<_> {
            let at = h.debug_abbrev_offset().0;
            if let Some(a) = abbrevs.get(&at) {
                return Ok(Arc::clone(a));
            }
            let a = self.dwarf.abbreviations(h)?;
            abbrevs.insert(at, Arc::clone(&a));
            Ok(a)
        };
        let header = self
            .dwarf
            .debug_info
            .header_from_offset(gimli::DebugInfoOffset(offset))?;
        let mut pending = Vec::new();
        let abbrev = abbreviations(&header)?;
        let mut entries = header.entries_raw(&abbrev, None)?;
        while !entries.is_empty() {
            let Some(entry) = entries.read_abbreviation()? else {
                continue;
            };
            for spec in entry.attributes() {
                if !names_through(spec.name()) {
                    entries.skip_attributes(std::slice::from_ref(spec))?;
                    continue;
                }
                if let AttributeValue::DebugInfoRef(to) = entries.read_attribute(*spec)?.value() {
                    pending.push(to.0);
                }
            }
        }
        let mut units = std::collections::BTreeMap::new();
        units.insert(offset, header);
        let mut seen = HashSet::new();
        while let Some(target) = pending.pop() {
            if !seen.insert(target) {
                continue;
            }
            let known = units
                .range(..=target)
                .next_back()
                .filter(|(start, h)| target < *start + h.length_including_self())
                .map(|(start, h)| (*start, h.clone()));
            let (start, header) = match known {
                Some(found) => found,
                None => {
                    let (start, header) = self.unit_containing(target)?;
                    units.insert(start, header.clone());
                    if units.len() > MAX_LINKED_UNITS {
                        return Err(gimli::Error::NoEntryAtGivenOffset(target as u64));
                    }
                    (start, header)
                }
            };
            // A target outside its unit's entries is left for `addr2line`
            // to meet (and report) as it would in the whole object.
            let Some(at) = gimli::DebugInfoOffset(target).to_unit_offset(&header) else {
                continue;
            };
            let abbrev = abbreviations(&header)?;
            let mut entry = header.entries_raw(&abbrev, Some(at))?;
            let Some(kind) = entry.read_abbreviation()? else {
                continue;
            };
            for spec in kind.attributes() {
                let attr = entry.read_attribute(*spec)?;
                if !names_through(attr.name()) {
                    continue;
                }
                match attr.value() {
                    AttributeValue::UnitRef(to) => pending.push(start + to.0),
                    AttributeValue::DebugInfoRef(to) => pending.push(to.0),
                    _ => {}
                }
            }
        }
        Ok(units)
    }

    /// The unit of `.debug_info` that `target` falls in: from the nearest
    /// unit `.debug_aranges` lists at or before it, header by header.
    fn unit_containing(
        &self,
        target: usize,
    ) -> Result<(usize, gimli::UnitHeader<Reader>), gimli::Error> {
        let below = self.starts.partition_point(|&s| s <= target);
        let listed = below.checked_sub(1).map_or(0, |i| self.starts[i]);
        let mut walked = self.walked.lock().unwrap_or_else(|p| p.into_inner());
        // The units that earlier walks passed: each header is read once.
        let mut start = match walked.range(..=target).next_back() {
            Some((&s, &end)) if s >= listed => {
                if target < end {
                    return Ok((
                        s,
                        self.dwarf
                            .debug_info
                            .header_from_offset(gimli::DebugInfoOffset(s))?,
                    ));
                }
                end
            }
            _ => listed,
        };
        loop {
            let header = self
                .dwarf
                .debug_info
                .header_from_offset(gimli::DebugInfoOffset(start))?;
            let end = start + header.length_including_self();
            walked.insert(start, end);
            if target < end {
                return Ok((start, header));
            }
            start = end;
        }
    }

    /// A `.debug_info` that holds `units` at their own offsets, so that
    /// references between them stay right, and in each gap between them a
    /// unit header whose abbreviations do not parse (`addr2line` skips such
    /// a unit). The gaps stay zero pages that are never touched. Returns it
    /// with what it weighs in memory.
    fn assemble(
        &self,
        units: &std::collections::BTreeMap<usize, gimli::UnitHeader<Reader>>,
    ) -> Option<(Reader, usize)> {
        let full = self.dwarf.debug_info.reader();
        let endian = full.endian();
        let end = units
            .iter()
            .next_back()
            .map(|(start, h)| start + h.length_including_self())?;
        if end > full.len() {
            return None;
        }
        // An anonymous mapping: the gaps stay pages never touched (a heap
        // block of this size may come zeroed page by page).
        let mut bytes = memmap2::MmapMut::map_anon(end).ok()?;
        let mut at = 0;
        let mut weight = 0;
        for (&start, header) in units {
            if start > at {
                filler(&mut bytes[at..start], endian, header.address_size())?;
                weight += 4096;
            }
            let len = header.length_including_self();
            bytes[start..start + len].copy_from_slice(full.bytes().get(start..start + len)?);
            weight += len;
            at = start + len;
        }
        Some((
            Reader::new(
                SectionBytes::Anonymous(Arc::new(bytes.make_read_only().ok()?)),
                endian,
            ),
            weight,
        ))
    }
}

/// Fills `gap` with one DWARF 4 unit header that spans it and whose
/// abbreviations lie past the end of `.debug_abbrev`.
fn filler(gap: &mut [u8], endian: gimli::RunTimeEndian, address_size: u8) -> Option<()> {
    use gimli::Endianity;
    let length = u32::try_from(gap.len().checked_sub(4)?)
        .ok()
        .filter(|&l| l < 0xffff_fff0)?;
    if gap.len() < 11 {
        return None;
    }
    endian.write_u32(&mut gap[0..4], length);
    endian.write_u16(&mut gap[4..6], 4);
    endian.write_u32(&mut gap[6..10], u32::MAX);
    gap[10] = address_size;
    Some(())
}

/// The sections of `d` with `unit` as `.debug_info`: one unit that refers
/// to no other (at offset 0: offsets within it stay right), or units at
/// their own offsets ([`UnitDwarf::assemble`]). No `.debug_aranges`: the
/// units' root entries give their ranges.
fn one_unit(d: &gimli::Dwarf<Reader>, unit: Reader) -> gimli::Dwarf<Reader> {
    gimli::Dwarf {
        debug_abbrev: d.debug_abbrev.clone(),
        debug_addr: d.debug_addr.clone(),
        debug_aranges: gimli::DebugAranges::from(empty_like(&unit)),
        debug_info: gimli::DebugInfo::from(unit),
        debug_line: d.debug_line.clone(),
        debug_line_str: d.debug_line_str.clone(),
        debug_macinfo: d.debug_macinfo.clone(),
        debug_macro: d.debug_macro.clone(),
        debug_names: d.debug_names.clone(),
        debug_str: d.debug_str.clone(),
        debug_str_offsets: d.debug_str_offsets.clone(),
        debug_types: d.debug_types.clone(),
        locations: d.locations.clone(),
        ranges: d.ranges.clone(),
        file_type: d.file_type,
        sup: None,
        abbreviations_cache: gimli::AbbreviationsCache::new(),
    }
}

/// Offsets of the units whose `ranges` contain `probe`.
fn units_at(ranges: &[UnitRange], probe: u64) -> impl Iterator<Item = usize> + '_ {
    let pos = ranges.partition_point(|r| r.end <= probe);
    ranges[pos..]
        .iter()
        .take_while(move |r| probe >= r.min_begin)
        .filter(move |r| r.begin <= probe && probe < r.end)
        .map(|r| r.unit)
}

/// An empty reader with `r`'s byte order.
fn empty_like(r: &Reader) -> Reader {
    let mut empty = r.clone();
    empty.empty();
    empty
}

/// Whether the unit's abbreviations allow a reference into another unit
/// (`DW_FORM_ref_addr`) or a form chosen per entry (`DW_FORM_indirect`).
/// An abbreviation table that does not parse counts as yes: the
/// whole-object context then decides what the unit is worth.
fn refers_outside(dwarf: &gimli::Dwarf<Reader>, header: &gimli::UnitHeader<Reader>) -> bool {
    let mut r = dwarf.debug_abbrev.reader().clone();
    let scan = |r: &mut Reader| -> gimli::Result<bool> {
        r.skip(header.debug_abbrev_offset().0)?;
        loop {
            if r.read_uleb128()? == 0 {
                return Ok(false);
            }
            r.read_uleb128()?; // tag
            r.read_u8()?; // children
            loop {
                let name = r.read_uleb128()?;
                let form = r.read_uleb128()?;
                if name == 0 && form == 0 {
                    break;
                }
                if form == u64::from(gimli::DW_FORM_implicit_const.0) {
                    r.read_sleb128()?;
                }
                if form == u64::from(gimli::DW_FORM_ref_addr.0)
                    || form == u64::from(gimli::DW_FORM_indirect.0)
                {
                    return Ok(true);
                }
            }
        }
    };
    scan(&mut r).unwrap_or(true)
}

/// Adds `range` of `unit` to `ranges`, merged with the last one where
/// they touch: functions of one unit are mostly laid out back to back.
fn push(ranges: &mut Vec<UnitRange>, range: gimli::Range, unit: usize) {
    if range.begin >= range.end {
        return;
    }
    if let Some(last) = ranges.last_mut() {
        if last.unit == unit && last.end == range.begin {
            last.end = range.end;
            return;
        }
    }
    ranges.push(UnitRange {
        begin: range.begin,
        end: range.end,
        min_begin: 0,
        unit,
    });
}

/// The address ranges of the units `.debug_aranges` lists, sorted for
/// [`units_at`], and the units it lists.
fn listed_index(
    dwarf: &gimli::Dwarf<Reader>,
    mut error: impl FnMut(gimli::Error),
) -> (Box<[UnitRange]>, HashSet<usize>) {
    let mut ranges = Vec::new();
    let mut listed = HashSet::new();
    let mut headers = dwarf.debug_aranges.headers();
    loop {
        let header = match headers.next() {
            Ok(Some(header)) => header,
            Ok(None) => break,
            Err(e) => {
                error(e);
                break;
            }
        };
        let unit = header.debug_info_offset().0;
        let mut entries = header.entries();
        // Errors in one set (an address overflow) end that set only, as
        // in `addr2line`.
        while let Ok(Some(entry)) = entries.next() {
            if entry.length() != 0 {
                listed.insert(unit);
                push(&mut ranges, entry.range(), unit);
            }
        }
    }
    (sorted(ranges), listed)
}

/// The address ranges of the compilation units that `.debug_aranges` does
/// not list, from their root entry (`DW_AT_ranges`, `DW_AT_low_pc`): a walk
/// over every unit header, which reads a page of every unit (and the
/// kernel maps up to 64 KiB around each). Where `.debug_info` is mapped
/// from the file, the pages walked are given back every
/// [`WALK_RESIDENT_BYTES`], so the walk does not raise the peak RSS by the
/// section's size.
fn unlisted_index(
    dwarf: &gimli::Dwarf<Reader>,
    info: &Info,
    abbrev: Option<&Compressed>,
    mapped: Option<&MappedInfo>,
    listed: &HashSet<usize>,
    mut error: impl FnMut(gimli::Error),
) -> Box<[UnitRange]> {
    let mut ranges = Vec::new();
    if let Info::Compressed(c) = info {
        unlisted_compressed(dwarf, c, abbrev, listed, |range, unit| {
            push(&mut ranges, range, unit)
        });
        return sorted(ranges);
    }
    let mut abbreviations = HashMap::new();
    let mut dropped = 0;
    let mut units = dwarf.units();
    loop {
        let header = match units.next() {
            Ok(Some(header)) => header,
            Ok(None) => break,
            Err(e) => {
                error(e);
                break;
            }
        };
        let Some(offset) = header.debug_info_offset() else {
            continue;
        };
        if listed.contains(&offset.0)
            || !matches!(
                header.type_(),
                gimli::UnitType::Compilation | gimli::UnitType::Skeleton(_)
            )
        {
            continue;
        }
        // A unit whose root does not parse is skipped here; a lookup in
        // it would fail the same way in `addr2line`.
        if let Ok(unit) = root_unit(dwarf, header, &mut abbreviations) {
            if let Ok(mut iter) = dwarf.unit_ranges(&unit) {
                while let Ok(Some(range)) = iter.next() {
                    push(&mut ranges, range, offset.0);
                }
            }
        }
        if let Some(mapped) = mapped {
            let walked = offset.0.saturating_sub(dropped);
            if walked >= WALK_RESIDENT_BYTES {
                mapped.drop_pages(dropped, offset.0);
                dropped = offset.0;
            }
        }
    }
    if let Some(mapped) = mapped {
        mapped.drop_pages(dropped, mapped.len());
    }
    sorted(ranges)
}

/// Bytes of a mapped `.debug_info` that the walk over unit headers lets
/// stay resident before it gives their pages back.
const WALK_RESIDENT_BYTES: usize = 2 << 20;

/// `.debug_info`, and the range lists its root entries point into, as
/// ranges of a read-only mapping of the file (`backing`).
struct MappedInfo {
    backing: Arc<Backing>,
    info: std::ops::Range<usize>,
    /// `.debug_ranges` and `.debug_rnglists`.
    range_lists: Vec<std::ops::Range<usize>>,
}

impl MappedInfo {
    /// `dwarf`'s `.debug_info` when it lies in `obj`'s bytes (parsed as
    /// `file`) and those are a mapping.
    fn of(
        dwarf: &gimli::Dwarf<Reader>,
        obj: &ElfObject,
        file: &object::File<'_>,
    ) -> Option<MappedInfo> {
        let backing = obj.data();
        if !matches!(**backing, Backing::Mapped(_)) {
            return None;
        }
        let section = dwarf.debug_info.reader().bytes();
        let start = (section.as_ptr() as usize).checked_sub(backing.as_ptr() as usize)?;
        let end = start.checked_add(section.len())?;
        if section.is_empty() || end > backing.len() {
            return None;
        }
        Some(MappedInfo {
            backing: Arc::clone(backing),
            info: start..end,
            range_lists: section_ranges(file, &[".debug_ranges", ".debug_rnglists"]),
        })
    }

    /// Bytes of `.debug_info`.
    fn len(&self) -> usize {
        self.info.len()
    }

    /// Gives back the resident pages that lie wholly within bytes
    /// `from..to` of `.debug_info`, and those of the range lists.
    fn drop_pages(&self, from: usize, to: usize) {
        let at = |offset: usize| self.info.start + offset.min(self.len());
        self.backing.give_back(at(from)..at(to));
        for range in &self.range_lists {
            self.backing.give_back(range.clone());
        }
    }
}

/// Bytes of `.debug_info` of the units parsed between two give-backs of
/// the pages their lookups faulted in ([`UnitDwarf::give_back_pages`]).
/// A unit's lookups touch its entries, its line program, its names and
/// its range lists, spread over sections tens of megabytes long in a
/// large binary: without this, the in-process benchmark's `stop()`
/// peaked at 16 MiB of file pages (4 of them the program's own), and
/// they stayed; every 256 KiB, its first lookups still held 4.7-6.1 MiB
/// of the program's mapping at their peak (3-4 MiB of `.debug_str`, as
/// each fault maps the pages around it too); every 64 KiB, 3.6-3.7 MiB.
const GIVE_BACK_EVERY: usize = 64 << 10;

/// [`GIVE_BACK_EVERY`] in a bulk lookup ([`Env::bulk`]), where several
/// threads read one file at once and each would fault in again what
/// another just gave back. In the lookup measured at
/// [`BULK_KEPT_UNIT_BYTES`], never giving them back held 54 MiB of file
/// pages at the peak (with 32 MiB of units kept; 82 MiB with 4); every 8
/// MiB also 54 MiB, every 4 MiB 34 MiB, every 2 MiB 34 MiB (the pages
/// every unit reads: names, abbreviations).
const BULK_GIVE_BACK_EVERY: usize = 4 << 20;

/// The DWARF sections a lookup reads, whose pages
/// [`UnitDwarf::give_back_all`] gives back.
const DWARF_SECTIONS: [&str; 9] = [
    ".debug_info",
    ".debug_abbrev",
    ".debug_line",
    ".debug_line_str",
    ".debug_str",
    ".debug_str_offsets",
    ".debug_addr",
    ".debug_ranges",
    ".debug_rnglists",
];

/// `header`'s unit with the root entry's bases and address read, but not
/// its line program (which [`gimli::Dwarf::unit`] parses, reading
/// `.debug_line` of every unit walked), with abbreviation tables shared
/// between the units through `cache`.
fn root_unit(
    dwarf: &gimli::Dwarf<Reader>,
    header: gimli::UnitHeader<Reader>,
    cache: &mut HashMap<usize, Arc<gimli::Abbreviations>>,
) -> gimli::Result<gimli::Unit<Reader>> {
    use gimli::{constants as dw, AttributeValue};
    let at = header.debug_abbrev_offset().0;
    let abbreviations = match cache.get(&at) {
        Some(a) => Arc::clone(a),
        None => {
            let a = dwarf.abbreviations(&header)?;
            cache.insert(at, Arc::clone(&a));
            a
        }
    };
    let encoding = header.encoding();
    let mut unit = gimli::Unit {
        abbreviations,
        name: None,
        comp_dir: None,
        low_pc: 0,
        str_offsets_base: gimli::DebugStrOffsetsBase::default_for_encoding_and_file(
            encoding,
            dwarf.file_type,
        ),
        addr_base: gimli::DebugAddrBase(0),
        loclists_base: gimli::DebugLocListsBase::default_for_encoding_and_file(
            encoding,
            dwarf.file_type,
        ),
        rnglists_base: gimli::DebugRngListsBase::default_for_encoding_and_file(
            encoding,
            dwarf.file_type,
        ),
        line_program: None,
        dwo_id: match header.type_() {
            gimli::UnitType::Skeleton(id) | gimli::UnitType::SplitCompilation(id) => Some(id),
            _ => None,
        },
        header,
    };
    let mut low_pc = None;
    {
        let mut cursor = unit.header.entries(&unit.abbreviations);
        cursor.next_dfs()?;
        let root = cursor.current().ok_or(gimli::Error::MissingUnitDie)?;
        for attr in root.attrs() {
            match (attr.name(), attr.value()) {
                (dw::DW_AT_low_pc, value) => low_pc = Some(value),
                (
                    dw::DW_AT_addr_base | dw::DW_AT_GNU_addr_base,
                    AttributeValue::DebugAddrBase(b),
                ) => unit.addr_base = b,
                (
                    dw::DW_AT_rnglists_base | dw::DW_AT_GNU_ranges_base,
                    AttributeValue::DebugRngListsBase(b),
                ) => unit.rnglists_base = b,
                (dw::DW_AT_str_offsets_base, AttributeValue::DebugStrOffsetsBase(b)) => {
                    unit.str_offsets_base = b
                }
                _ => {}
            }
        }
    }
    if let Some(value) = low_pc {
        if let Some(addr) = dwarf.attr_address(&unit, value)? {
            unit.low_pc = addr;
        }
    }
    Ok(unit)
}

/// The ranges of the units of a compressed `.debug_info` that
/// `.debug_aranges` does not list, in one streaming pass (with the whole
/// of a compressed `.debug_abbrev`: every unit's root entry is read).
fn unlisted_compressed(
    dwarf: &gimli::Dwarf<Reader>,
    c: &Compressed,
    abbrev: Option<&Compressed>,
    listed: &HashSet<usize>,
    mut push: impl FnMut(gimli::Range, usize),
) {
    let abbrev = match abbrev.map(Compressed::whole) {
        None => None,
        Some(Some(whole)) => Some(whole.clone()),
        // Counted when a lookup in one of those units fails the same way.
        Some(None) => return,
    };
    let Ok(mut r) = c.stream() else { return };
    let mut abbreviations = HashMap::new();
    let mut offset = 0usize;
    // A stream that ends early or is corrupt ends the index there; the
    // lookups of those units count the error.
    while let Ok(Some((len, bytes))) =
        compressed::next_unit(&mut *r, c.endian, !listed.contains(&offset))
    {
        let unit_offset = offset;
        offset += len;
        if listed.contains(&unit_offset) {
            continue;
        }
        let mut one = one_unit(dwarf, c.reader(bytes));
        if let Some(abbrev) = &abbrev {
            one.debug_abbrev = abbrev.clone().into();
        }
        let Ok(Some(header)) = one.units().next() else {
            continue;
        };
        if !matches!(
            header.type_(),
            gimli::UnitType::Compilation | gimli::UnitType::Skeleton(_)
        ) {
            continue;
        }
        let Ok(unit) = root_unit(&one, header, &mut abbreviations) else {
            continue;
        };
        let Ok(mut iter) = one.unit_ranges(&unit) else {
            continue;
        };
        while let Ok(Some(range)) = iter.next() {
            push(range, unit_offset);
        }
    }
}

/// `ranges` sorted for [`units_at`].
fn sorted(mut ranges: Vec<UnitRange>) -> Box<[UnitRange]> {
    ranges.sort_unstable_by_key(|r| (r.end, r.unit));
    let mut min = u64::MAX;
    for r in ranges.iter_mut().rev() {
        min = min.min(r.begin);
        r.min_begin = min;
    }
    ranges.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// The test fixture built with ThinLTO across 16 codegen units, as a
    /// release build of a Rust crate is: a function imported into another
    /// unit and inlined there keeps its abstract origin in its own unit
    /// (`DW_FORM_ref_addr`).
    fn thin_lto_fixture(dir: &Path) -> PathBuf {
        let out = dir.join("fixture-thin-lto");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let status = Command::new(rustc)
            .args(["-C", "opt-level=3", "-g", "-C", "codegen-units=16"])
            .args(["-C", "lto=thin", "--edition", "2021", "-o"])
            .arg(&out)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/common/fixture.rs"
            ))
            .status()
            .expect("rustc runs");
        assert!(status.success(), "rustc failed to build the fixture");
        out
    }

    /// Each unit of the LTO fixture read with only the units its names lead
    /// to gives the same frames as the whole-object context, at every 5th
    /// byte of every unit, and no address is left to the whole context.
    #[test]
    fn linked_units_give_the_frames_of_the_whole_object() {
        let dir = tempfile::tempdir().unwrap();
        let bin = thin_lto_fixture(dir.path());
        let obj = ElfObject::open(&bin, &bin).unwrap();
        let counters = Counters::default();
        let env = Env {
            debug_root: dir.path(),
            counters: &counters,
            demangle: true,
            inlined: true,
            found_bytes: 1 << 20,
            bulk: false,
        };
        let units = UnitDwarf::load(&obj, &env).unwrap();
        let (whole, broken) = DwarfInfo::load(&obj, None).unwrap();
        assert!(broken.is_none());

        let mut offsets: Vec<usize> = units.ranges.iter().map(|r| r.unit).collect();
        offsets.sort_unstable();
        offsets.dedup();
        let mut linked = 0;
        for &offset in &offsets {
            let header = units
                .dwarf
                .debug_info
                .header_from_offset(gimli::DebugInfoOffset(offset))
                .unwrap();
            if refers_outside(&units.dwarf, &header) {
                let found = units.linked_units(offset).unwrap();
                assert!(found.contains_key(&offset));
                if found.len() > 1 {
                    linked += 1;
                }
            }
        }
        assert!(
            linked >= 2,
            "only {linked} of {} units lead into other units: not the LTO case",
            offsets.len()
        );

        let (names_a, names_b) = (NameCache::default(), NameCache::default());
        let mut compared = 0;
        let mut inlined = 0;
        for r in units.ranges.iter() {
            for vaddr in (r.begin..r.end).step_by(5) {
                let ours = match units.frames(vaddr, &env, &names_a) {
                    UnitFrames::Frames(Ok(frames)) => frames,
                    UnitFrames::Frames(Err((_, e))) => panic!("{vaddr:#x}: {e}"),
                    UnitFrames::Whole => panic!("{vaddr:#x} was left to the whole object"),
                };
                let theirs = whole.frames(vaddr, &env, &names_b).unwrap();
                assert_eq!(ours, theirs, "{vaddr:#x}");
                compared += 1;
                inlined += usize::from(ours.len() > 1);
            }
        }
        assert!(compared > 1000, "only {compared} addresses");
        assert!(
            inlined > 100,
            "only {inlined} addresses with inlined frames"
        );
        assert_eq!(counters.snapshot().errors(), 0);
    }
}
