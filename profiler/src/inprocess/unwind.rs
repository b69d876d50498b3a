//! Unwinding copied user stacks of this process with `framehop`: one
//! module per executable mapping, built from the ELF file's `.eh_frame`,
//! `.eh_frame_hdr`, `.debug_frame` and `.text`, refreshed from
//! `/proc/self/maps` when an address falls outside every known module
//! (a library loaded with `dlopen`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, Module, Unwinder};
use object::{Object, ObjectSection, ObjectSegment};

use super::perf::UserRegs;
use crate::pipeline::{Mapping, ProcessMaps};

/// A missing module triggers at most one re-read of the maps this often.
const REFRESH_INTERVAL: Duration = Duration::from_millis(200);
/// Deeper stacks are cut here.
pub const MAX_FRAMES: usize = 512;

pub struct StackUnwinder {
    unwinder: UnwinderX86_64<SectionBytes>,
    cache: CacheX86_64,
    /// Start addresses of the mappings already added as modules.
    known: HashSet<u64>,
    ranges: Vec<(u64, u64)>,
    refreshed_at: Option<Instant>,
}

impl Default for StackUnwinder {
    fn default() -> Self {
        StackUnwinder::new()
    }
}

impl StackUnwinder {
    pub fn new() -> StackUnwinder {
        let mut unwinder = StackUnwinder {
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            known: HashSet::new(),
            ranges: Vec::new(),
            refreshed_at: None,
        };
        unwinder.refresh();
        unwinder
    }

    /// Adds the executable mappings not seen before.
    fn refresh(&mut self) {
        self.refreshed_at = Some(Instant::now());
        let Ok(maps) = ProcessMaps::read(std::process::id()) else {
            return;
        };
        for entry in maps.entries() {
            if !entry.is_file() || !self.known.insert(entry.start) {
                continue;
            }
            if let Some(module) = module_for(entry) {
                self.ranges.push((entry.start, entry.end));
                self.unwinder.add_module(module);
            }
        }
    }

    fn covers(&self, pc: u64) -> bool {
        self.ranges.iter().any(|&(s, e)| s <= pc && pc < e)
    }

    /// The PCs of a stack, leaf first: the sampled IP, then return addresses.
    pub fn unwind(&mut self, regs: UserRegs, stack: &[u8]) -> Vec<u64> {
        if !self.covers(regs.ip)
            && self
                .refreshed_at
                .is_none_or(|t| t.elapsed() >= REFRESH_INTERVAL)
        {
            self.refresh();
        }
        let sp = regs.sp;
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let offset = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
            let bytes = stack
                .get(offset..offset.checked_add(8).ok_or(())?)
                .ok_or(())?;
            Ok(u64::from_ne_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut frames = Vec::with_capacity(32);
        let mut iter = self.unwinder.iter_frames(
            regs.ip,
            UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp),
            &mut self.cache,
            &mut read_stack,
        );
        // An error ends the walk where it is: the frames so far are right.
        while let Ok(Some(frame)) = iter.next() {
            frames.push(frame.address());
            if frames.len() >= MAX_FRAMES {
                break;
            }
        }
        frames
    }
}

/// A section of a mapped file, borrowed from the mapping (no copy).
#[derive(Clone)]
pub struct SectionBytes {
    map: std::sync::Arc<memmap2::Mmap>,
    range: std::ops::Range<usize>,
}

impl std::ops::Deref for SectionBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

/// A framehop module for one executable mapping of an ELF file.
fn module_for(entry: &Mapping) -> Option<Module<SectionBytes>> {
    let file = std::fs::File::open(format!(
        "/proc/self/map_files/{:x}-{:x}",
        entry.start, entry.end
    ))
    .or_else(|_| std::fs::File::open(&entry.path))
    .ok()?;
    // SAFETY: a read-only private mapping of a file we only read; a file
    // truncated underneath would fault, as it would for the process itself.
    let map = std::sync::Arc::new(unsafe { memmap2::Mmap::map(&file) }.ok()?);
    let data: &[u8] = &map;
    let file = object::File::parse(data).ok()?;
    // The load bias. The mapping starts at a page-aligned file offset, which
    // may lie below its segment's p_offset; the segment's p_vaddr - p_offset
    // holds for the whole page range. Prefer the executable segment.
    let page_down = |x: u64| x & !0xfff;
    let holds = |s: &object::Segment<'_, '_>| {
        let (offset, size) = s.file_range();
        page_down(offset) <= entry.offset && entry.offset < offset + size.max(1)
    };
    let executable = |s: &object::Segment<'_, '_>| matches!(s.flags(), object::SegmentFlags::Elf { p_flags, .. } if p_flags.0 & object::elf::PF_X.0 != 0);
    let segment = file
        .segments()
        .filter(holds)
        .max_by_key(|s| executable(s))?;
    let (seg_offset, _) = segment.file_range();
    let svma_of_start = segment
        .address()
        .wrapping_sub(seg_offset)
        .wrapping_add(entry.offset);
    let bias = entry.start.wrapping_sub(svma_of_start);
    let section = |name: &str| {
        let s = file.section_by_name(name)?;
        let (offset, size) = s.file_range()?;
        let range = usize::try_from(offset).ok()?..usize::try_from(offset + size).ok()?;
        (range.end <= map.len()).then(|| {
            (
                s.address()..s.address() + s.size(),
                SectionBytes {
                    map: map.clone(),
                    range,
                },
            )
        })
    };
    let text = section(".text");
    let eh_frame = section(".eh_frame");
    let eh_frame_hdr = section(".eh_frame_hdr");
    let debug_frame = section(".debug_frame");
    let got = file
        .section_by_name(".got")
        .map(|s| s.address()..s.address() + s.size());
    let info = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: text.as_ref().map(|(r, _)| r.clone()),
        text: text.map(|(_, d)| d),
        got_svma: got,
        eh_frame_svma: eh_frame.as_ref().map(|(r, _)| r.clone()),
        eh_frame: eh_frame.map(|(_, d)| d),
        eh_frame_hdr_svma: eh_frame_hdr.as_ref().map(|(r, _)| r.clone()),
        eh_frame_hdr: eh_frame_hdr.map(|(_, d)| d),
        debug_frame: debug_frame.map(|(_, d)| d),
        stubs_svma: None,
        stub_helper_svma: None,
        unwind_info: None,
        text_segment_svma: None,
        text_segment: None,
    };
    Some(Module::new(
        entry.path.clone(),
        entry.start..entry.end,
        bias,
        info,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_executable_is_a_module() {
        let u = StackUnwinder::new();
        let pc = our_executable_is_a_module as *const () as usize as u64;
        assert!(u.covers(pc), "ranges {:x?}", u.ranges);
    }
}
