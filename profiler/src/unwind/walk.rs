//! The user-space stack walker: the same steps as the eBPF walker in
//! `sampler.bpf.c` (`unwind_step`), over a copied stack instead of live
//! memory. Per frame it uses the unwind table of the PC's mapping when there
//! is one and frame pointers otherwise.

use std::sync::Arc;

use super::{cfa, fp, UnwindTable};

/// The most user frames one walk returns (`SMOLDER_MAX_USER_FRAMES`).
pub const MAX_WALK_FRAMES: usize = 512;

/// x86_64 user addresses are below this (the lower canonical half).
const USER_ADDR_LIMIT: u64 = 0x0000_8000_0000_0000;

/// The registers a walk starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// One executable mapping of a process: `[start, end)`, the load bias of
/// its file, and the file's table (`None`: walk it with frame pointers).
#[derive(Clone, Debug)]
pub struct MappedTable {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub table: Option<Arc<UnwindTable>>,
}

/// Why a walk ended (the kernel reports the same as sample flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepEnd {
    /// Reached the outermost frame (undefined return address, a zero
    /// return address, or a zero frame pointer).
    Complete,
    /// Hit [`MAX_WALK_FRAMES`] (or the caller's limit).
    Truncated,
    /// A CFA, return address or frame pointer pointed outside the readable
    /// stack.
    ReadFault,
    /// The PC has no usable unwind rule, or a step did not move up the stack.
    NoUnwindInfo,
}

/// The result of one walk: PCs leaf first (the IP, then return addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    pub frames: Vec<u64>,
    pub end: StepEnd,
    /// Some PC lay in no known mapping (frame pointers were used for it).
    pub unknown_mapping: bool,
}

/// The executable mappings of one process with their tables: what the
/// kernel holds in `PROC_MAPPINGS` for that process.
#[derive(Clone, Debug, Default)]
pub struct UnwindTables {
    mappings: Vec<MappedTable>,
}

impl UnwindTables {
    pub fn new(mut mappings: Vec<MappedTable>) -> UnwindTables {
        mappings.sort_by_key(|m| m.start);
        UnwindTables { mappings }
    }

    pub fn add(&mut self, mapping: MappedTable) {
        let at = self.mappings.partition_point(|m| m.start < mapping.start);
        self.mappings.insert(at, mapping);
    }

    pub fn mappings(&self) -> &[MappedTable] {
        &self.mappings
    }

    /// The mapping holding `pc`.
    pub fn find(&self, pc: u64) -> Option<&MappedTable> {
        let i = self.mappings.partition_point(|m| m.start <= pc);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (pc < m.end).then_some(m)
    }

    /// Walks a copied stack: `stack` holds the bytes at `stack_base..`, the
    /// walk starts from `regs` and returns at most [`MAX_WALK_FRAMES`] PCs.
    pub fn unwind(&self, regs: Regs, stack: &[u8], stack_base: u64) -> Walk {
        self.unwind_with_limit(regs, stack, stack_base, MAX_WALK_FRAMES)
    }

    /// [`Self::unwind`] with another frame limit.
    pub fn unwind_with_limit(
        &self,
        regs: Regs,
        stack: &[u8],
        stack_base: u64,
        max_frames: usize,
    ) -> Walk {
        let read = |addr: u64| -> Option<u64> {
            let at = usize::try_from(addr.checked_sub(stack_base)?).ok()?;
            let bytes = stack.get(at..at.checked_add(8)?)?;
            Some(u64::from_ne_bytes(bytes.try_into().ok()?))
        };
        let Regs {
            mut ip,
            mut sp,
            mut bp,
        } = regs;
        let mut walk = Walk {
            frames: Vec::new(),
            end: StepEnd::Truncated,
            unknown_mapping: false,
        };
        loop {
            if ip == 0 {
                walk.end = StepEnd::Complete;
                return walk;
            }
            walk.frames.push(ip);
            if walk.frames.len() >= max_frames {
                walk.end = StepEnd::Truncated;
                return walk;
            }
            // A return address points after the call: look up the call.
            let lookup = if walk.frames.len() == 1 { ip } else { ip - 1 };
            let table = match self.find(lookup) {
                None => {
                    walk.unknown_mapping = true;
                    None
                }
                Some(m) => m.table.as_ref().map(|t| (t, m.bias)),
            };
            let step = match table {
                Some((table, bias)) => {
                    table_step(table, lookup.wrapping_sub(bias), ip, sp, bp, &read)
                }
                None => fp_step(sp, bp, &read),
            };
            match step {
                Ok(next) => (ip, sp, bp) = next,
                Err(end) => {
                    walk.end = end;
                    return walk;
                }
            }
        }
    }
}

type Step = Result<(u64, u64, u64), StepEnd>;

/// One step by the table row covering `svma`; `(ip, sp, bp)` of the caller.
fn table_step(
    table: &UnwindTable,
    svma: u64,
    ip: u64,
    sp: u64,
    bp: u64,
    read: &impl Fn(u64) -> Option<u64>,
) -> Step {
    // Code the table does not cover (a gap between FDEs: hand-written or
    // generated code such as V8's embedded builtins) is walked by frame
    // pointer, back to the table at the next PC it covers.
    let Some(row) = table.lookup(svma).filter(|r| r.cfa_type != cfa::INVALID) else {
        return fp_step(sp, bp, read);
    };
    let cfa = match row.cfa_type {
        cfa::SP => sp.wrapping_add_signed(i64::from(row.cfa_offset)),
        cfa::FP => bp.wrapping_add_signed(i64::from(row.cfa_offset)),
        cfa::PLT => {
            let extra = if (ip & 15) >= row.fp_offset as u64 {
                8
            } else {
                0
            };
            sp.wrapping_add_signed(i64::from(row.cfa_offset))
                .wrapping_add(extra)
        }
        cfa::END => return Err(StepEnd::Complete),
        _ => return Err(StepEnd::NoUnwindInfo),
    };
    if cfa <= sp || cfa >= USER_ADDR_LIMIT {
        return Err(StepEnd::NoUnwindInfo);
    }
    let ra = read(cfa - 8).ok_or(StepEnd::ReadFault)?;
    let next_bp = if row.fp_type == fp::AT_CFA && row.cfa_type != cfa::PLT {
        read(cfa.wrapping_add_signed(i64::from(row.fp_offset))).ok_or(StepEnd::ReadFault)?
    } else {
        bp
    };
    Ok((ra, cfa, next_bp))
}

/// One step by the frame pointer: `[bp]` is the caller's bp, `[bp + 8]` the
/// return address.
fn fp_step(sp: u64, bp: u64, read: &impl Fn(u64) -> Option<u64>) -> Step {
    if bp == 0 {
        return Err(StepEnd::Complete);
    }
    if bp & 7 != 0 || bp >= USER_ADDR_LIMIT || bp < sp {
        return Err(StepEnd::NoUnwindInfo);
    }
    let next_bp = read(bp).ok_or(StepEnd::ReadFault)?;
    let ra = read(bp + 8).ok_or(StepEnd::ReadFault)?;
    Ok((ra, bp + 16, next_bp))
}

#[cfg(test)]
mod tests {
    use super::super::UnwindRow;
    use super::*;

    fn row(pc: u64, cfa_type: u8, cfa_offset: i32, fp_type: u8, fp_offset: i16) -> UnwindRow {
        UnwindRow {
            pc,
            cfa_offset,
            fp_offset,
            cfa_type,
            fp_type,
        }
    }

    /// A synthetic stack: leaf at 0x1010 (CFA = SP + 24), its caller at
    /// 0x2020 uses rbp (CFA = FP + 16, rbp saved at CFA - 16), whose caller
    /// 0x3030 is in code without a table (frame pointers), whose caller
    /// 0x4040 is the outermost frame.
    #[test]
    fn mixes_tables_and_frame_pointers() {
        let table = Arc::new(UnwindTable::from_rows(vec![
            row(0x1000, cfa::SP, 24, fp::SAME, 0),
            row(0x1100, cfa::INVALID, 0, fp::SAME, 0),
            row(0x2000, cfa::FP, 16, fp::AT_CFA, -16),
            row(0x2100, cfa::INVALID, 0, fp::SAME, 0),
            row(0x4000, cfa::END, 0, fp::SAME, 0),
        ]));
        let tables = UnwindTables::new(vec![
            MappedTable {
                start: 0x1000,
                end: 0x3000,
                bias: 0,
                table: Some(table.clone()),
            },
            MappedTable {
                start: 0x3000,
                end: 0x4000,
                bias: 0,
                table: None,
            },
            MappedTable {
                start: 0x4000,
                end: 0x5000,
                bias: 0,
                table: Some(table),
            },
        ]);
        let base = 0x7ff0_0000u64;
        let mut stack = vec![0u8; 256];
        let mut put = |addr: u64, v: u64| {
            let at = (addr - base) as usize;
            stack[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        };
        // leaf: sp = base, CFA = base + 24, RA at base + 16.
        put(base + 16, 0x2021);
        // 0x2020: bp = base + 48 -> CFA = base + 64; RA at +56, saved bp at +48.
        put(base + 56, 0x3031);
        put(base + 48, base + 96);
        // 0x3030 by frame pointer (bp = base + 96): [bp] = 0, the outermost.
        put(base + 96, 0);
        put(base + 104, 0x4041);
        let walk = tables.unwind(
            Regs {
                ip: 0x1010,
                sp: base,
                bp: base + 48,
            },
            &stack,
            base,
        );
        assert_eq!(walk.frames, vec![0x1010, 0x2021, 0x3031, 0x4041]);
        assert_eq!(walk.end, StepEnd::Complete);
        assert!(!walk.unknown_mapping);
        // The same walk with a short copy stops on a read fault.
        let short = tables.unwind(
            Regs {
                ip: 0x1010,
                sp: base,
                bp: base + 48,
            },
            &stack[..60],
            base,
        );
        assert_eq!(short.frames, vec![0x1010, 0x2021]);
        assert_eq!(short.end, StepEnd::ReadFault);
        let limited = tables.unwind_with_limit(
            Regs {
                ip: 0x1010,
                sp: base,
                bp: base + 48,
            },
            &stack,
            base,
            2,
        );
        assert_eq!(limited.end, StepEnd::Truncated);
    }

    #[test]
    fn gaps_are_walked_by_frame_pointer_and_unknown_pcs_stop_cleanly() {
        let table = Arc::new(UnwindTable::from_rows(vec![
            row(0x1000, cfa::SP, 8, fp::SAME, 0),
            row(0x1010, cfa::INVALID, 0, fp::SAME, 0),
        ]));
        let tables = UnwindTables::new(vec![MappedTable {
            start: 0x1000,
            end: 0x2000,
            bias: 0,
            table: Some(table),
        }]);
        let walk = tables.unwind(
            Regs {
                ip: 0x1800,
                sp: 0x100,
                bp: 0,
            },
            &[],
            0x100,
        );
        assert_eq!(
            (walk.frames, walk.end),
            (vec![0x1800], StepEnd::Complete),
            "a gap with bp 0 is the outermost frame, as for frame pointers"
        );
        // In a gap, [bp] and [bp + 8] lead back into table-covered code.
        let mut stack = vec![0u8; 64];
        stack[16..24].copy_from_slice(&0u64.to_ne_bytes());
        stack[24..32].copy_from_slice(&0x1005u64.to_ne_bytes());
        let through = tables.unwind(
            Regs {
                ip: 0x1800,
                sp: 0x100,
                bp: 0x110,
            },
            &stack,
            0x100,
        );
        assert_eq!(through.frames, vec![0x1800, 0x1005]);
        let unknown = tables.unwind(
            Regs {
                ip: 0x9000,
                sp: 0x100,
                bp: 0x101,
            },
            &[],
            0x100,
        );
        assert!(unknown.unknown_mapping);
        assert_eq!(unknown.end, StepEnd::NoUnwindInfo);
    }
}
