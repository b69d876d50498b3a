//! Arbitrary bytes as an ELF file: build its unwind table from `.eh_frame`
//! (or `.debug_frame`) with `UnwindTable::from_elf`, then look up rows, load
//! biases and walk an empty stack with it. Err is fine; panics, aborts, hangs
//! and huge allocations are bugs.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use smolder::unwind::{MappedTable, Regs, UnwindTable, UnwindTables};

fuzz_target!(|data: &[u8]| {
    let Ok(table) = UnwindTable::from_elf(data, "fuzz") else {
        return;
    };
    let rows = table.rows();
    assert!(
        rows.windows(2).all(|w| w[0].pc <= w[1].pc),
        "rows not sorted by pc"
    );
    for row in rows.iter().take(64) {
        let _ = table.lookup(row.pc);
        let _ = table.lookup(row.pc.wrapping_sub(1));
    }
    let _ = table.lookup(0);
    let _ = table.lookup(u64::MAX);
    let _ = table.bytes();
    let _ = table.build_id();
    for offset in [0u64, 0x1000, u64::MAX] {
        let _ = table.load_bias(0x5555_0000_0000, offset);
    }
    if let Some(first) = rows.first() {
        let bias = table.load_bias(0x5555_0000_0000, 0).unwrap_or(0);
        let tables = UnwindTables::new(vec![MappedTable {
            start: 0x5555_0000_0000,
            end: 0x5555_0000_0000u64.saturating_add(0x10_0000),
            bias,
            table: Some(Arc::new(table.clone())),
        }]);
        let _ = tables.unwind(
            Regs {
                ip: first.pc.wrapping_add(bias),
                sp: 0x7fff_0000_0000,
                bp: 0,
            },
            &[],
            0x7fff_0000_0000,
        );
    }
});
