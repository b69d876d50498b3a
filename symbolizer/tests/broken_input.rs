//! Broken inputs: truncated and corrupted ELF files and DWARF must yield
//! whatever can still be found, counted errors, and never a panic. Also runs
//! the fuzz target's body over deterministic mutations of a real ELF file.

mod common;

use std::path::Path;
use std::process::Command;

use smolder_symbolizer::{AddressKind, Source, Symbolizer};

fn section_range(bin: &Path, name: &str) -> (usize, usize) {
    let text = common::run(Command::new("readelf").args(["-S", "-W"]).arg(bin));
    for line in text.lines() {
        let line = line.trim_start().trim_start_matches('[');
        let mut fields = line.split_whitespace();
        let _index = fields.next();
        if fields.next() != Some(name) {
            continue;
        }
        let rest: Vec<&str> = fields.collect();
        // Type, Address, Off, Size, ...
        let off = usize::from_str_radix(rest[2], 16).unwrap();
        let size = usize::from_str_radix(rest[3], 16).unwrap();
        return (off, size);
    }
    panic!("no section {name} in {}", bin.display());
}

#[test]
fn corrupt_debug_info_falls_back_to_the_symbol_table() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::build_c(dir.path(), "prog", &[]);
    let funcs = common::functions(&bin);
    let pick: Vec<&common::Function> = funcs
        .iter()
        .filter(|f| ["hash_buffer", "fib", "blur", "count_words"].contains(&f.name.as_str()))
        .collect();
    assert_eq!(pick.len(), 4);
    let addrs: Vec<u64> = pick.iter().map(|f| f.addr + 2).collect();

    let mut bytes = std::fs::read(&bin).unwrap();
    let (off, size) = section_range(&bin, ".debug_info");
    // Unit headers that claim absurd lengths and versions, and garbage after.
    for (i, b) in bytes[off..off + size].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(151).wrapping_add(0xa5);
    }
    let broken = dir.path().join("broken-dwarf");
    std::fs::write(&broken, &bytes).unwrap();

    let s = Symbolizer::new();
    let out = s
        .symbolize(
            &Source::Elf {
                path: &broken,
                addresses: AddressKind::VirtualAddress,
            },
            &addrs,
        )
        .unwrap();
    for (f, sym) in pick.iter().zip(&out) {
        assert_eq!(
            common::outer_function(sym),
            Some(f.name.as_str()),
            "{sym:?}"
        );
    }
    let stats = s.stats();
    println!("{stats:?}");
    assert!(stats.dwarf_errors >= 1, "{stats:?}");
    assert_eq!(stats.resolved_symtab, 4);
}

#[test]
fn truncated_file_gives_raw_addresses_and_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::build_c(dir.path(), "prog", &[]);
    let bytes = std::fs::read(&bin).unwrap();
    let fib = common::functions(&bin)
        .into_iter()
        .find(|f| f.name == "fib")
        .unwrap();
    for keep in [0, 3, 64, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        let cut = dir.path().join(format!("cut-{keep}"));
        std::fs::write(&cut, &bytes[..keep]).unwrap();
        let s = Symbolizer::new();
        let out = s.symbolize_file_offsets(&cut, &[fib.addr, fib.addr + 5]);
        assert_eq!(out.len(), 2);
        for sym in &out {
            let module = sym.module.as_ref().unwrap();
            assert_eq!(Path::new(&module.path), cut);
            // Whatever is left may still name the function; nothing else may.
            if let Some(name) = common::outer_function(sym) {
                assert_eq!(name, "fib");
            }
        }
        assert!(s.stats().errors() >= 1, "keep={keep}: {:?}", s.stats());
    }
}

#[test]
fn garbage_line_abbrev_and_string_sections_keep_the_symbol_table() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::build_c(dir.path(), "prog", &[]);
    let mut bytes = std::fs::read(&bin).unwrap();
    for name in [".debug_line", ".debug_abbrev", ".debug_str"] {
        let (off, size) = section_range(&bin, name);
        bytes[off..off + size].fill(0xff);
    }
    let broken = dir.path().join("broken-lines");
    std::fs::write(&broken, &bytes).unwrap();
    let fib = common::functions(&bin)
        .into_iter()
        .find(|f| f.name == "fib")
        .unwrap();
    let s = Symbolizer::new();
    let out = s
        .symbolize(
            &Source::Elf {
                path: &broken,
                addresses: AddressKind::VirtualAddress,
            },
            &[fib.addr + 1],
        )
        .unwrap();
    assert_eq!(common::outer_function(&out[0]), Some("fib"), "{out:?}");
    assert!(s.stats().dwarf_errors >= 1, "{:?}", s.stats());
}

/// A small deterministic PRNG (xorshift64*), so that failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The fuzz target's body (`fuzz/fuzz_targets/elf_bytes.rs`) over a few
/// hundred mutations of a real ELF object with DWARF.
#[test]
fn fuzz_body_survives_mutated_elf_files() {
    let dir = tempfile::tempdir().unwrap();
    // A small object keeps each case fast; -O1 still inlines.
    let bin = dir.path().join("small.o");
    common::run(
        Command::new("gcc")
            .args(["-O1", "-g", "-c", "-o"])
            .arg(&bin)
            .arg(common::FIXTURE_C),
    );
    let exe = common::build_c(dir.path(), "exe", &[]);
    let seeds = [std::fs::read(&bin).unwrap(), std::fs::read(&exe).unwrap()];
    let (found, _) = smolder_symbolizer::fuzzing::symbolize_elf_bytes(&seeds[1]);
    assert!(found > 0, "the unmutated executable must symbolize");

    let mut rng = Rng(0x5eed_5eed_1234_5678);
    let mut cases = 0;
    let mut errors = 0;
    for case in 0..400 {
        let mut data = seeds[case % 2].clone();
        match case % 5 {
            // Flip a handful of random bytes anywhere.
            0 => {
                for _ in 0..1 + rng.below(16) {
                    let i = rng.below(data.len());
                    data[i] ^= 1 << rng.below(8);
                }
            }
            // Overwrite one header field region (ELF, program or section headers).
            1 => {
                let i = rng.below(64.min(data.len()));
                data[i] = rng.next() as u8;
            }
            // Truncate.
            2 => {
                let keep = rng.below(data.len());
                data.truncate(keep);
            }
            // Splat a run of 0xff or 0x00 (lengths, offsets, counts).
            3 => {
                let start = rng.below(data.len());
                let len = rng.below(256).min(data.len() - start);
                let v = if rng.next() & 1 == 0 { 0 } else { 0xff };
                data[start..start + len].fill(v);
            }
            // Copy a chunk of the file over another place.
            _ => {
                let len = 1 + rng.below(512);
                let from = rng.below(data.len().saturating_sub(len));
                let to = rng.below(data.len().saturating_sub(len));
                let chunk = data[from..from + len.min(data.len() - from)].to_vec();
                let end = (to + chunk.len()).min(data.len());
                data[to..end].copy_from_slice(&chunk[..end - to]);
            }
        }
        let (_, stats) = smolder_symbolizer::fuzzing::symbolize_elf_bytes(&data);
        errors += stats.errors();
        cases += 1;
    }
    println!("{cases} mutated ELF files symbolized without panic; {errors} errors counted");
    assert!(errors > 0);
}
