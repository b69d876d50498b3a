//! DWARF lookups that parse only the compilation units the looked-up
//! addresses fall in, not every unit of the object.
//!
//! Owns the address → unit index (`.debug_aranges`, and the root entries of
//! the units it does not list) and a bounded, least-recently-used set of
//! one-unit `addr2line` contexts. A unit that refers into other units
//! (`DW_FORM_ref_addr`, as LTO emits) cannot be read alone: its addresses
//! are left to the whole-object context ([`DwarfInfo::load`]).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use gimli::{Reader as _, Section as _};
use lru::LruCache;

use crate::demangle::NameCache;
use crate::dwarf::{self, DwarfInfo, Reader};
use crate::elf::{ElfObject, Env};
use crate::stats::Counters;
use crate::{Error, Frame};

/// Bytes of `.debug_info` whose parsed units one object keeps between
/// lookups; past it the least recently used unit goes (and is parsed again
/// if an address needs it). The unit last parsed always stays.
const KEPT_UNIT_BYTES: usize = 4 << 20;

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
    /// Refers into other units.
    NotAlone,
    /// Its header, abbreviations or root entry do not parse (counted once).
    Broken,
}

struct Kept {
    units: LruCache<usize, (usize, Parsed)>,
    bytes: usize,
}

/// The per-unit DWARF of one object (its own sections, or its debug file's).
pub(crate) struct UnitDwarf {
    dwarf: gimli::Dwarf<Reader>,
    ranges: Box<[UnitRange]>,
    kept: Mutex<Kept>,
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
        let (dwarf, owned) = dwarf::load_sections_where(obj, needed)?;
        let ranges = index(&dwarf, |source| {
            env.counters.error(&Error::Dwarf {
                path: obj.path.clone(),
                source,
            })
        });
        let heap_bytes = owned + ranges.len() * std::mem::size_of::<UnitRange>();
        Ok(UnitDwarf {
            dwarf,
            ranges,
            kept: Mutex::new(Kept {
                units: LruCache::unbounded(),
                bytes: 0,
            }),
            path: obj.path.clone(),
            heap_bytes,
        })
    }

    /// Bytes of `.debug_info` of the units kept parsed now.
    pub(crate) fn kept_unit_bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        // Every update is a put or a pop with its byte count: consistent
        // even after a panic elsewhere.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The frames for `vaddr`, from the units that cover it, in the order
    /// `addr2line` tries them (weak symbols can put an address in several).
    pub(crate) fn frames(&self, vaddr: u64, env: &Env<'_>, names: &NameCache) -> UnitFrames {
        let mut tried = Vec::new();
        for unit in self.units_at(vaddr) {
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

    /// Offsets of the units whose ranges contain `probe`.
    fn units_at(&self, probe: u64) -> impl Iterator<Item = usize> + '_ {
        let pos = self.ranges.partition_point(|r| r.end <= probe);
        self.ranges[pos..]
            .iter()
            .take_while(move |r| probe >= r.min_begin)
            .filter(move |r| r.begin <= probe && probe < r.end)
            .map(|r| r.unit)
    }

    /// The context of the unit at `offset`, parsed on first use and kept
    /// within [`KEPT_UNIT_BYTES`].
    fn parsed(&self, offset: usize, env: &Env<'_>) -> Parsed {
        if let Some((_, parsed)) = self.lock().units.get(&offset) {
            return parsed.clone();
        }
        let (parsed, weight) = self.parse(offset, env);
        let mut kept = self.lock();
        if let Some((old, _)) = kept.units.put(offset, (weight, parsed.clone())) {
            // Another thread parsed it meanwhile.
            kept.bytes -= old;
        }
        kept.bytes += weight;
        while kept.bytes > KEPT_UNIT_BYTES && kept.units.len() > 1 {
            match kept.units.pop_lru() {
                Some((_, (w, _))) => kept.bytes -= w,
                None => break,
            }
        }
        parsed
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
        let header = match self
            .dwarf
            .debug_info
            .header_from_offset(gimli::DebugInfoOffset(offset))
        {
            Ok(header) => header,
            Err(e) => return broken(e),
        };
        if refers_outside(&self.dwarf, &header) {
            return (Parsed::NotAlone, 0);
        }
        let len = header.length_including_self();
        let mut bytes = self.dwarf.debug_info.reader().clone();
        if let Err(e) = bytes.skip(offset).and_then(|()| bytes.truncate(len)) {
            return broken(e);
        }
        // The unit alone as `.debug_info`: offsets within it stay right, as
        // it refers to no other unit. No `.debug_aranges`: its own root
        // entry gives its ranges.
        let d = &self.dwarf;
        let one = gimli::Dwarf {
            debug_abbrev: d.debug_abbrev.clone(),
            debug_addr: d.debug_addr.clone(),
            debug_aranges: gimli::DebugAranges::from(empty_like(&bytes)),
            debug_info: gimli::DebugInfo::from(bytes),
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
        };
        match DwarfInfo::from_dwarf(one, &self.path, 0) {
            Ok(info) => {
                Counters::bump(&env.counters.dwarf_units_parsed);
                (Parsed::Unit(Arc::new(info)), len)
            }
            Err(Error::Dwarf { source, .. }) => broken(source),
            Err(e) => {
                env.counters.error(&e);
                (Parsed::Broken, 0)
            }
        }
    }
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

/// The address ranges of every compilation unit, sorted for
/// [`UnitDwarf::units_at`]: from `.debug_aranges`, and for the units it
/// does not list, from their root entry (`DW_AT_ranges`, `DW_AT_low_pc`).
fn index(dwarf: &gimli::Dwarf<Reader>, mut error: impl FnMut(gimli::Error)) -> Box<[UnitRange]> {
    let mut ranges: Vec<UnitRange> = Vec::new();
    let mut listed = HashSet::new();
    let push = |ranges: &mut Vec<UnitRange>, range: gimli::Range, unit: usize| {
        if range.begin >= range.end {
            return;
        }
        // Functions of one unit are mostly laid out back to back.
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
    };
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
        // A unit that does not parse is skipped here; a lookup in it
        // would fail the same way in `addr2line`.
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let Ok(mut iter) = dwarf.unit_ranges(&unit) else {
            continue;
        };
        while let Ok(Some(range)) = iter.next() {
            push(&mut ranges, range, offset.0);
        }
    }
    ranges.sort_unstable_by_key(|r| (r.end, r.unit));
    let mut min = u64::MAX;
    for r in ranges.iter_mut().rev() {
        min = min.min(r.begin);
        r.min_begin = min;
    }
    ranges.into_boxed_slice()
}
