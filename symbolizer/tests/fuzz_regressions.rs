//! Inputs the cargo-fuzz target `elf_bytes` (symbolizer/fuzz) found to
//! panic, hang or blow up memory, minimised, under
//! `symbolizer/fuzz/regressions/elf_bytes/`. Each is run through the target's
//! body, `fuzzing::symbolize_elf_bytes`, which must return (anything) without
//! panicking, within a time limit. See bench/FUZZING.md.

#[path = "../../profiles-proto/tests/support/mod.rs"]
mod support;

#[test]
fn elf_bytes_regressions_do_not_panic() {
    support::check(env!("CARGO_MANIFEST_DIR"), "elf_bytes", |data| {
        let _ = smolder_symbolizer::fuzzing::symbolize_elf_bytes(data);
    });
}
