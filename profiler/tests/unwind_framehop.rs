//! The user-space unwinder against `framehop` (the unwinder samply uses),
//! on stacks of this very test process: the registers captured at a known
//! point, the stack copied from there to its top, both walkers over the
//! same bytes and the same binaries. Needs no privileges.

use std::arch::asm;

use framehop::{
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
};
use object::{Object, ObjectSection};
use smolder::pipeline::ProcessMaps;
use smolder::unwind::{Regs, StepEnd, TableCache, UnwindTables};

/// Registers of the caller's frame at the point of the call, and a copy
/// of the stack from its SP to the top of the stack mapping.
#[inline(never)]
fn capture() -> (Regs, Vec<u8>) {
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: reads three registers, touches no memory.
    unsafe {
        asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
        );
    }
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    let top = maps
        .lines()
        .filter_map(|l| {
            let range = l.split(' ').next()?;
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .find(|&(a, b)| a <= sp && sp < b)
        .expect("the stack mapping")
        .1;
    let len = (top - sp) as usize;
    // SAFETY: [sp, top) is this thread's mapped stack; the part above this
    // function's frame does not change while it runs.
    let stack = unsafe { std::slice::from_raw_parts(sp as *const u8, len) }.to_vec();
    (Regs { ip, sp, bp }, stack)
}

#[inline(never)]
fn recurse(depth: u32, out: &mut Vec<(Regs, Vec<u8>)>) -> u32 {
    // Frames of different sizes on the way down.
    let pad = std::hint::black_box([depth; 9]);
    if depth == 0 {
        out.push(capture());
        return pad[3];
    }
    let r = if depth.is_multiple_of(3) {
        recurse_big(depth - 1, out)
    } else {
        recurse(depth - 1, out)
    };
    std::hint::black_box(r + pad[(depth % 9) as usize])
}

#[inline(never)]
fn recurse_big(depth: u32, out: &mut Vec<(Regs, Vec<u8>)>) -> u32 {
    let pad = std::hint::black_box([depth as u64; 100]);
    std::hint::black_box(recurse(depth, out) + pad[7] as u32)
}

fn framehop_unwinder() -> UnwinderX86_64<Vec<u8>> {
    let mut unwinder = UnwinderX86_64::new();
    let maps = ProcessMaps::read(std::process::id()).expect("maps");
    for m in maps.entries().iter().filter(|m| m.is_file()) {
        let Ok(data) = std::fs::read(&m.path) else {
            continue;
        };
        let Ok(obj) = object::File::parse(&*data) else {
            continue;
        };
        let table = smolder::unwind::UnwindTable::from_elf(&data, &m.path).ok();
        let Some(bias) = table.and_then(|t| t.load_bias(m.start, m.offset)) else {
            continue;
        };
        let section = |name: &str| {
            obj.section_by_name(name).map(|s| {
                (
                    s.address()..s.address() + s.size(),
                    s.data().unwrap_or_default().to_vec(),
                )
            })
        };
        let text = section(".text");
        let eh = section(".eh_frame");
        let hdr = section(".eh_frame_hdr");
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: text.as_ref().map(|t| t.0.clone()),
            text: text.map(|t| t.1),
            got_svma: section(".got").map(|g| g.0),
            eh_frame_svma: eh.as_ref().map(|e| e.0.clone()),
            eh_frame: eh.map(|e| e.1),
            eh_frame_hdr_svma: hdr.as_ref().map(|h| h.0.clone()),
            eh_frame_hdr: hdr.map(|h| h.1),
            ..Default::default()
        };
        unwinder.add_module(Module::new(m.path.clone(), m.start..m.end, bias, info));
    }
    unwinder
}

fn framehop_walk(unwinder: &UnwinderX86_64<Vec<u8>>, regs: Regs, stack: &[u8]) -> Vec<u64> {
    let mut cache = CacheX86_64::<_>::new();
    let mut read = |addr: u64| -> Result<u64, ()> {
        let at = usize::try_from(addr.checked_sub(regs.sp).ok_or(())?).map_err(|_| ())?;
        let b = stack.get(at..at + 8).ok_or(())?;
        Ok(u64::from_ne_bytes(b.try_into().map_err(|_| ())?))
    };
    let mut frames = Vec::new();
    let mut iter = unwinder.iter_frames(
        regs.ip,
        UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp),
        &mut cache,
        &mut read,
    );
    while let Ok(Some(frame)) = iter.next() {
        frames.push(match frame {
            FrameAddress::InstructionPointer(a) => a,
            FrameAddress::ReturnAddress(a) => a.get(),
        });
    }
    frames
}

#[test]
fn same_frames_as_framehop_on_our_own_stack() {
    for depth in [0u32, 5, 60, 300] {
        let mut captured = Vec::new();
        // A fresh thread with room for the deepest recursion.
        std::thread::Builder::new()
            .stack_size(16 << 20)
            .spawn(move || {
                recurse(depth, &mut captured);
                captured
            })
            .expect("thread")
            .join()
            .map(|c| {
                let (regs, stack) = &c[0];
                let mut cache = TableCache::default();
                let tables = UnwindTables::for_process(std::process::id(), &mut cache)
                    .expect("tables of this process");
                let ours = tables.unwind(*regs, stack, regs.sp);
                let theirs = framehop_walk(&framehop_unwinder(), *regs, stack);
                assert!(
                    ours.frames.len() as u32 > depth + 3,
                    "depth {depth}: only {} frames ({:?})",
                    ours.frames.len(),
                    ours.end
                );
                assert!(!ours.unknown_mapping);
                // framehop and smolder must agree on every frame smolder
                // found; at the end, smolder stops at the thread's outermost
                // frame (clone3's undefined return address).
                assert_eq!(ours.end, StepEnd::Complete, "depth {depth}");
                assert_eq!(
                    ours.frames,
                    theirs[..ours.frames.len().min(theirs.len())],
                    "depth {depth}: smolder and framehop disagree"
                );
                assert!(theirs.len() >= ours.frames.len());
            })
            .expect("the capturing thread panicked");
    }
}
