//! Arbitrary bytes as an ELF object: parse, look up addresses drawn from its
//! own symbols and segments, format the results. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = smolder_symbolizer::fuzzing::symbolize_elf_bytes(data);
});
