//! DWARF line and inline-function lookups through the `addr2line` crate.
//!
//! Owns the reader type (zero-copy slices of the mapped file, or owned bytes
//! for compressed sections) and turns `addr2line` frames into [`Frame`]s.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gimli::Reader as _;
use object::{Object, ObjectSection};

use crate::demangle::NameCache;
use crate::elf::{Backing, ElfObject, Env};
use crate::{Error, Frame};

/// Bytes of one DWARF section: a range of the mapped file, or decompressed bytes.
#[derive(Clone)]
pub(crate) enum SectionBytes {
    Mapped {
        backing: Arc<Backing>,
        start: usize,
        end: usize,
    },
    /// Inflated or copied bytes, kept as the `Vec` they were read into
    /// (an `Arc<[u8]>` would copy them once more: a section of libc's
    /// debug file is megabytes).
    Owned(Arc<Vec<u8>>),
    /// An anonymous mapping, for a large section that is mostly zero
    /// pages never touched (see `units`): a heap allocation of that size
    /// may be zeroed page by page.
    Anonymous(Arc<memmap2::Mmap>),
}

/// `bytes` as kept: a large buffer gives back its spare capacity in place
/// (the allocator remaps it), a small one is copied at most once.
pub(crate) fn owned_bytes(mut bytes: Vec<u8>) -> Arc<Vec<u8>> {
    bytes.shrink_to_fit();
    Arc::new(bytes)
}

impl Deref for SectionBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            SectionBytes::Mapped {
                backing,
                start,
                end,
            } => backing.get(*start..*end).unwrap_or(&[]),
            SectionBytes::Owned(bytes) => bytes,
            SectionBytes::Anonymous(map) => map,
        }
    }
}

impl fmt::Debug for SectionBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SectionBytes({} bytes)", self.len())
    }
}

// SAFETY: every variant derefs to bytes owned by an `Arc` that is never
// mutated; cloning the `Arc` does not move them (an `Mmap` or `Vec` buffer).
unsafe impl gimli::StableDeref for SectionBytes {}
// SAFETY: as above; a clone derefs to the same address.
unsafe impl gimli::CloneStableDeref for SectionBytes {}

pub(crate) type Reader = gimli::EndianReader<gimli::RunTimeEndian, SectionBytes>;

/// A DWARF lookup context for one object (the binary or its debug file).
pub(crate) struct DwarfInfo {
    // `addr2line::Context` fills its caches through `&self` with cells that are
    // not `Sync`; the mutex makes the context shareable between threads.
    ctx: Mutex<addr2line::Context<Reader>>,
    path: PathBuf,
    /// Bytes of decompressed sections, held on the heap (not in the mapping).
    pub(crate) owned_bytes: usize,
}

impl DwarfInfo {
    /// Builds the context for `obj`'s DWARF, with `sup` as the supplementary
    /// (`.gnu_debugaltlink`, dwz) file when there is one.
    ///
    /// Units that fail to parse are skipped (by `addr2line` too, silently);
    /// the first such failure comes back beside the context so it is counted.
    pub(crate) fn load(
        obj: &ElfObject,
        sup: Option<&Arc<ElfObject>>,
    ) -> Result<(DwarfInfo, Option<Error>), Error> {
        let (mut dwarf, mut owned) = load_sections(obj)?;
        if let Some(sup) = sup {
            let (sup_dwarf, sup_owned) = load_sections(sup)?;
            dwarf.set_sup(sup_dwarf);
            owned += sup_owned;
        }
        // Units share abbreviation tables (a Rust binary's codegen units
        // often use one): parsed once each, not once per unit and again in
        // the check below (54 MB of heap for the 70 MB release bench binary
        // before, heaptrack).
        dwarf.populate_abbreviations_cache(gimli::AbbreviationsCacheStrategy::All);
        let broken = check_units(&dwarf).map(|source| Error::Dwarf {
            path: obj.path.clone(),
            source,
        });
        let info = DwarfInfo::from_dwarf(dwarf, &obj.path, owned)?;
        Ok((info, broken))
    }

    /// The context over `dwarf` (the whole object's sections, or one
    /// compilation unit's, see [`crate::units`]).
    pub(crate) fn from_dwarf(
        dwarf: gimli::Dwarf<Reader>,
        path: &std::path::Path,
        owned_bytes: usize,
    ) -> Result<DwarfInfo, Error> {
        let ctx = addr2line::Context::from_dwarf(dwarf).map_err(|source| Error::Dwarf {
            path: path.to_owned(),
            source,
        })?;
        Ok(DwarfInfo {
            ctx: Mutex::new(ctx),
            path: path.to_owned(),
            owned_bytes,
        })
    }

    /// The frames for `vaddr`, innermost first. On broken DWARF, the frames
    /// found before the error come back with it. DWARF that makes the
    /// parser itself panic (an arithmetic overflow in addr2line on a
    /// garbled unit) is broken DWARF too, not the end of the profiler.
    pub(crate) fn frames(
        &self,
        vaddr: u64,
        env: &Env<'_>,
        names: &NameCache,
    ) -> Result<Vec<Frame>, (Vec<Frame>, Error)> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.frames_of(vaddr, env, names)
        }))
        .unwrap_or_else(|_| {
            Err((
                Vec::new(),
                Error::object(
                    &self.path,
                    "the DWARF parser failed on this file's debug info",
                ),
            ))
        })
    }

    fn frames_of(
        &self,
        vaddr: u64,
        env: &Env<'_>,
        names: &NameCache,
    ) -> Result<Vec<Frame>, (Vec<Frame>, Error)> {
        let ctx = self
            .ctx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut frames = Vec::new();
        let err = |frames, source| {
            Err((
                frames,
                Error::Dwarf {
                    path: self.path.clone(),
                    source,
                },
            ))
        };
        let mut iter = match ctx.find_frames(vaddr).skip_all_loads() {
            Ok(iter) => iter,
            Err(e) => return err(frames, e),
        };
        loop {
            let frame = match iter.next() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return err(mark_inlined(frames), e),
            };
            let function = match &frame.function {
                // `EndianReader` slices borrow the pinned section bytes, so
                // the name cache may key on their address.
                Some(name) => match name.name.to_slice() {
                    Ok(Cow::Borrowed(raw)) => Some(names.name(raw, env.demangle)),
                    Ok(Cow::Owned(raw)) => Some(NameCache::uncached(&raw, env.demangle)),
                    Err(e) => return err(mark_inlined(frames), e),
                },
                None => None,
            };
            let (file, line) = match &frame.location {
                Some(loc) => (loc.file.map(str::to_owned), loc.line),
                None => (None, None),
            };
            frames.push(Frame {
                function,
                file,
                line,
                inlined: false,
            });
        }
        if frames.first().is_some_and(|f| f.file.is_none()) {
            // No line row for the address: name the compilation unit instead,
            // as binutils addr2line and llvm-symbolizer do.
            let unit = ctx.find_dwarf_and_unit(vaddr).skip_all_loads();
            if let Some(Ok(name)) = unit.and_then(|u| u.name.as_ref().map(|n| n.to_string_lossy()))
            {
                frames[0].file = Some(name.into_owned());
            }
        }
        let mut frames = mark_inlined(frames);
        if !env.inlined && frames.len() > 1 {
            // Keep the real function, with the innermost file and line.
            let innermost = frames.remove(0);
            if let Some(mut outer) = frames.pop() {
                outer.file = innermost.file;
                outer.line = innermost.line;
                outer.inlined = false;
                frames = vec![outer];
            }
        }
        Ok(frames)
    }
}

/// The first error in the unit headers, abbreviations or root entries.
fn check_units(dwarf: &gimli::Dwarf<Reader>) -> Option<gimli::Error> {
    let mut headers = dwarf.units();
    loop {
        match headers.next() {
            Ok(Some(header)) => {
                if let Err(e) = dwarf.unit(header) {
                    return Some(e);
                }
            }
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

/// All frames but the outermost are inlined into the next one.
fn mark_inlined(mut frames: Vec<Frame>) -> Vec<Frame> {
    let n = frames.len();
    for (i, f) in frames.iter_mut().enumerate() {
        f.inlined = i + 1 < n;
    }
    frames
}

/// The compressed DWARF sections of one object are inflated to at most
/// this many bytes together.
pub(crate) const MAX_DECOMPRESSED_BYTES: u64 = 512 << 20;
/// ... and at most this many times its compressed size (deflate cannot do
/// better than 1032:1).
pub(crate) const MAX_RATIO: u64 = 1100;

/// Loads the DWARF sections of `obj`, decompressing `.zdebug_*` and
/// `SHF_COMPRESSED` sections and borrowing the rest from the mapping.
/// Returns the bytes decompressed too.
fn load_sections(obj: &ElfObject) -> Result<(gimli::Dwarf<Reader>, usize), Error> {
    load_sections_where(obj, |_| true)
}

/// [`load_sections`], leaving the sections `wanted` refuses empty.
pub(crate) fn load_sections_where(
    obj: &ElfObject,
    wanted: impl Fn(gimli::SectionId) -> bool,
) -> Result<(gimli::Dwarf<Reader>, usize), Error> {
    let backing = obj.data();
    let file = object::File::parse(&***backing).map_err(|e| Error::object(&obj.path, e))?;
    let endian = if obj.little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let base = backing.as_ptr() as usize;
    let owned = std::cell::Cell::new(0usize);
    let load = |id: gimli::SectionId| -> Result<Reader, Error> {
        let Some(section) = file.section_by_name(id.name()).filter(|_| wanted(id)) else {
            return Ok(Reader::new(SectionBytes::Owned(Arc::default()), endian));
        };
        // The header's size would size the allocation: bound it first, by
        // a cap and by the best ratio deflate or zstd reach on real DWARF.
        if let Ok(c) = section.compressed_data() {
            let compressed = c.data.len() as u64;
            let left = MAX_DECOMPRESSED_BYTES.saturating_sub(owned.get() as u64);
            let cap = left.min(compressed.saturating_mul(MAX_RATIO));
            if c.format != object::CompressionFormat::None && c.uncompressed_size > cap {
                return Err(Error::Decompression {
                    path: obj.path.clone(),
                    section: id.name().to_owned(),
                    size: c.uncompressed_size,
                    cap,
                });
            }
        }
        let data = section
            .uncompressed_data()
            .map_err(|e| Error::object(&obj.path, format!("section {}: {e}", id.name())))?;
        let bytes = match data {
            Cow::Borrowed(slice) => {
                let start = (slice.as_ptr() as usize).wrapping_sub(base);
                match start.checked_add(slice.len()) {
                    Some(end) if end <= backing.len() => SectionBytes::Mapped {
                        backing: Arc::clone(backing),
                        start,
                        end,
                    },
                    _ => SectionBytes::Owned(Arc::new(slice.to_vec())),
                }
            }
            Cow::Owned(vec) => {
                owned.set(owned.get() + vec.len());
                SectionBytes::Owned(owned_bytes(vec))
            }
        };
        Ok(Reader::new(bytes, endian))
    };
    let dwarf = gimli::Dwarf::load(load)?;
    Ok((dwarf, owned.get()))
}
