//! Unwind tables for code without frame pointers, and the user-space stack
//! walker that uses them.
//!
//! Owns the conversion of `.eh_frame` (or `.debug_frame`) into one compact
//! [`UnwindRow`] per PC range, the lookup of a row, and walking a copied
//! stack with those rows. The same rows are what the eBPF walker in
//! `profiler/bpf/sampler.bpf.c` binary-searches (layout: `struct
//! smolder_unwind_row` in `sampler.h`), so the user-space walk is its test
//! oracle (the in-process profiler unwinds with framehop). Knows nothing of BPF
//! maps: loading tables into the kernel is the sampler's business.
//!
//! ```
//! use smolder::unwind::{UnwindTable, UnwindTables, MappedTable, Regs};
//! use std::sync::Arc;
//!
//! // The unwind table of this test binary, mapped where it runs now.
//! let exe = std::env::current_exe().unwrap();
//! let table = Arc::new(UnwindTable::from_path(&exe).unwrap());
//! assert!(table.rows().len() > 100);
//! let maps = smolder::pipeline::ProcessMaps::read(std::process::id()).unwrap();
//! let mut tables = UnwindTables::default();
//! for m in maps.entries().iter().filter(|m| m.path == exe.to_str().unwrap()) {
//!     if let Some(bias) = table.load_bias(m.start, m.offset) {
//!         tables.add(MappedTable { start: m.start, end: m.end, bias, table: Some(table.clone()) });
//!     }
//! }
//! // An empty stack: the walk returns the IP and stops on the first read.
//! let walk = tables.unwind(Regs { ip: 0, sp: 0, bp: 0 }, &[], 0);
//! assert!(walk.frames.len() <= 1);
//! ```

mod process;
mod table;
mod walk;

pub use process::{build_for_mapping, TableCache};
pub use table::{
    read_object, read_object_parts, read_object_within, ElfLayout, TableKey, UnwindError,
    UnwindSource, UnwindTable,
};
pub use walk::{MappedTable, Regs, StepEnd, UnwindTables, Walk, MAX_WALK_FRAMES};

/// How a row computes the CFA (`SMOLDER_CFA_*` in `sampler.h`).
pub mod cfa {
    /// No rule the walker can follow here (a gap between functions, a signal
    /// frame, a register or expression it does not model): stop.
    pub const INVALID: u8 = 0;
    /// CFA = SP + offset.
    pub const SP: u8 = 1;
    /// CFA = FP (rbp) + offset.
    pub const FP: u8 = 2;
    /// The PLT expression: CFA = SP + offset + ((IP & 15) >= threshold ? 8 : 0),
    /// threshold in `fp_offset`.
    pub const PLT: u8 = 3;
    /// The outermost frame (the return address is undefined: `_start`,
    /// `clone`): the stack is complete.
    pub const END: u8 = 4;
}

/// Where a row finds the caller's frame pointer (`SMOLDER_FP_*`).
pub mod fp {
    /// rbp is unchanged by this function (so far).
    pub const SAME: u8 = 0;
    /// rbp was saved at CFA + `fp_offset`.
    pub const AT_CFA: u8 = 1;
}

/// One row of an unwind table: the rule from `pc` (an ELF virtual address,
/// i.e. before the load bias) up to the next row's `pc`. The return address
/// is always at CFA - 8 (x86_64); rows where it is elsewhere are
/// [`cfa::INVALID`].
///
/// The layout is `struct smolder_unwind_row` in `profiler/bpf/sampler.h`:
/// 16 bytes, written as-is into the kernel's row array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindRow {
    pub pc: u64,
    pub cfa_offset: i32,
    /// [`fp::AT_CFA`]: offset of the saved rbp from the CFA;
    /// [`cfa::PLT`]: the `IP & 15` threshold.
    pub fp_offset: i16,
    pub cfa_type: u8,
    pub fp_type: u8,
}

const _: () = assert!(std::mem::size_of::<UnwindRow>() == 16);
const _: () = assert!(std::mem::offset_of!(UnwindRow, cfa_offset) == 8);
const _: () = assert!(std::mem::offset_of!(UnwindRow, fp_offset) == 12);
const _: () = assert!(std::mem::offset_of!(UnwindRow, cfa_type) == 14);
const _: () = assert!(std::mem::offset_of!(UnwindRow, fp_type) == 15);

impl UnwindRow {
    /// A row that stops the walk at `pc`.
    pub const fn invalid(pc: u64) -> UnwindRow {
        UnwindRow {
            pc,
            cfa_offset: 0,
            fp_offset: 0,
            cfa_type: cfa::INVALID,
            fp_type: fp::SAME,
        }
    }

    /// The same rule (ignoring where it starts).
    pub fn same_rule(&self, other: &UnwindRow) -> bool {
        (self.cfa_offset, self.fp_offset, self.cfa_type, self.fp_type)
            == (
                other.cfa_offset,
                other.fp_offset,
                other.cfa_type,
                other.fp_type,
            )
    }

    /// The row as the kernel's array stores it (native endian).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.pc.to_ne_bytes());
        b[8..12].copy_from_slice(&self.cfa_offset.to_ne_bytes());
        b[12..14].copy_from_slice(&self.fp_offset.to_ne_bytes());
        b[14] = self.cfa_type;
        b[15] = self.fp_type;
        b
    }
}
