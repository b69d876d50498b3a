//! Names from separate debug files (by build-id under a debug root, by
//! `.gnu_debuglink` with its CRC32) and from compressed debug sections.

mod common;

use std::path::Path;
use std::process::Command;

use smolder_symbolizer::{AddressKind, Source, Symbolized, Symbolizer};

/// Addresses inside `hash_buffer` where binutils (on the unstripped binary)
/// reports an inlined chain, and what it reports.
fn inlined_probe(bin: &Path) -> (Vec<u64>, Vec<common::Oracle>) {
    let f = common::functions(bin)
        .into_iter()
        .find(|f| f.name == "hash_buffer")
        .expect("hash_buffer in the fixture");
    let addrs: Vec<u64> = (f.addr..f.addr + f.size).collect();
    let oracle = common::addr2line(bin, &addrs, true);
    let (addrs, oracle): (Vec<_>, Vec<_>) = addrs
        .into_iter()
        .zip(oracle)
        .filter(|(_, o)| o.functions.len() > 1)
        .unzip();
    assert!(!addrs.is_empty(), "no inlined code in hash_buffer");
    (addrs, oracle)
}

fn vaddr(path: &Path) -> Source<'_> {
    Source::Elf {
        path,
        addresses: AddressKind::VirtualAddress,
    }
}

/// Asserts that every result carries binutils' inlined chain and line.
fn assert_matches(label: &str, ours: &[Symbolized], oracle: &[common::Oracle]) {
    for (sym, want) in ours.iter().zip(oracle) {
        let names: Vec<_> = sym
            .frames
            .iter()
            .map(|f| f.function.clone().unwrap_or_default())
            .collect();
        assert_eq!(names, want.functions, "{label} at {:#x}", sym.addr);
        assert_eq!(sym.frames[0].line, want.line, "{label} at {:#x}", sym.addr);
        assert!(sym.frames[0].inlined && !sym.frames.last().unwrap().inlined);
    }
}

fn objcopy(args: &[&str], files: &[&Path]) {
    common::run(Command::new("objcopy").args(args).args(files));
}

#[test]
fn separate_debug_file_by_build_id() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::build_c(dir.path(), "prog", &["-Wl,--build-id=sha1"]);
    let (addrs, oracle) = inlined_probe(&bin);

    let debug = dir.path().join("prog.debug");
    objcopy(&["--only-keep-debug"], &[&bin, &debug]);
    common::run(Command::new("strip").arg("--strip-all").arg(&bin));

    // Without a debug root holding the file, a fully stripped binary has only
    // .dynsym, which does not name the static functions.
    let empty_root = tempfile::tempdir().unwrap();
    let s = Symbolizer::builder().debug_root(empty_root.path()).build();
    let without = s.symbolize(&vaddr(&bin), &addrs).unwrap();
    assert!(without
        .iter()
        .all(|r| r.frames.iter().all(|f| f.line.is_none())));

    // Lay out ROOT/.build-id/xx/rest.debug.
    let root = tempfile::tempdir().unwrap();
    let id = build_id_of(&bin);
    let target = root
        .path()
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(&debug, &target).unwrap();

    let s = Symbolizer::builder().debug_root(root.path()).build();
    let ours = s.symbolize(&vaddr(&bin), &addrs).unwrap();
    assert_matches("build-id debug file", &ours, &oracle);
    assert_eq!(
        ours[0].module.as_ref().unwrap().build_id.as_deref(),
        Some(&id[..])
    );
    let stats = s.stats();
    assert_eq!(stats.debug_files_found, 1);
    assert_eq!(stats.errors(), 0, "{stats:?}");

    // The same object known only by build-id, as a backend would: file
    // offsets resolve through the cached binary...
    let offsets: Vec<u64> = ours
        .iter()
        .map(|r| r.module.as_ref().unwrap().file_offset)
        .collect();
    let by_id = |s: &Symbolizer, addresses, addrs: &[u64]| {
        s.symbolize(
            &Source::BuildId {
                build_id: &id,
                addresses,
            },
            addrs,
        )
        .unwrap()
    };
    for (a, b) in ours
        .iter()
        .zip(by_id(&s, AddressKind::FileOffset, &offsets))
    {
        assert_eq!(a.frames, b.frames);
    }
    // ...and a fresh symbolizer that has only the debug file takes virtual
    // addresses; file offsets it cannot map, which is counted.
    let fresh = Symbolizer::builder().debug_root(root.path()).build();
    for (a, b) in ours
        .iter()
        .zip(by_id(&fresh, AddressKind::VirtualAddress, &addrs))
    {
        assert_eq!(a.frames, b.frames);
    }
    assert_eq!(fresh.stats().errors(), 0);
    let unmapped = by_id(&fresh, AddressKind::FileOffset, &offsets);
    assert!(unmapped.iter().all(|r| r.frames.is_empty()));
    assert_eq!(fresh.stats().object_errors, 1);
}

fn build_id_of(bin: &Path) -> String {
    let text = common::run(Command::new("readelf").arg("-n").arg(bin));
    let line = text
        .lines()
        .find(|l| l.contains("Build ID:"))
        .expect("a build-id note");
    line.split("Build ID:").nth(1).unwrap().trim().to_owned()
}

#[test]
fn gnu_debuglink_next_to_binary_in_dot_debug_and_under_root() {
    let dir = tempfile::tempdir().unwrap();
    // No build-id, so that only the debug link can find the file.
    let bin = common::build_c(dir.path(), "linked", &["-Wl,--build-id=none"]);
    let (addrs, oracle) = inlined_probe(&bin);
    let debug = dir.path().join("linked.dbg");
    objcopy(&["--only-keep-debug"], &[&bin, &debug]);
    common::run(Command::new("strip").arg("--strip-debug").arg(&bin));
    objcopy(
        &[&format!("--add-gnu-debuglink={}", debug.display())],
        &[&bin],
    );
    let empty_root = tempfile::tempdir().unwrap();

    // 1. Next to the binary.
    let s = Symbolizer::builder().debug_root(empty_root.path()).build();
    assert_matches(
        "debuglink beside",
        &s.symbolize(&vaddr(&bin), &addrs).unwrap(),
        &oracle,
    );
    assert_eq!(s.stats().debug_files_found, 1);

    // 2. In .debug/ beside it.
    let dot_debug = dir.path().join(".debug");
    std::fs::create_dir(&dot_debug).unwrap();
    std::fs::rename(&debug, dot_debug.join("linked.dbg")).unwrap();
    let s = Symbolizer::builder().debug_root(empty_root.path()).build();
    assert_matches(
        "debuglink .debug/",
        &s.symbolize(&vaddr(&bin), &addrs).unwrap(),
        &oracle,
    );

    // 3. Under the debug root plus the binary's directory.
    let root = tempfile::tempdir().unwrap();
    let under = root
        .path()
        .join(dir.path().strip_prefix("/").unwrap())
        .join("linked.dbg");
    std::fs::create_dir_all(under.parent().unwrap()).unwrap();
    std::fs::rename(dot_debug.join("linked.dbg"), &under).unwrap();
    let s = Symbolizer::builder().debug_root(root.path()).build();
    assert_matches(
        "debuglink root",
        &s.symbolize(&vaddr(&bin), &addrs).unwrap(),
        &oracle,
    );

    // 4. A file with the right name but another CRC32 is rejected and counted;
    //    the symbol table still names the functions.
    let mut bytes = std::fs::read(&under).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&under, bytes).unwrap();
    let s = Symbolizer::builder().debug_root(root.path()).build();
    let ours = s.symbolize(&vaddr(&bin), &addrs).unwrap();
    assert_eq!(s.stats().debuglink_crc_mismatches, 1);
    assert_eq!(s.stats().debug_files_found, 0);
    for r in &ours {
        assert_eq!(r.frames.len(), 1);
        assert_eq!(r.frames[0].function.as_deref(), Some("hash_buffer"));
    }
}

#[test]
fn compressed_debug_sections() {
    let dir = tempfile::tempdir().unwrap();
    let plain = common::build_c(dir.path(), "plain", &[]);
    let (addrs, oracle) = inlined_probe(&plain);
    // SHF_COMPRESSED (zlib, and zstd where binutils supports it) and the
    // older GNU `.zdebug_*` sections.
    for style in ["zlib", "zlib-gnu", "zstd"] {
        let out = dir.path().join(format!("compressed-{style}"));
        let ok = Command::new("objcopy")
            .arg(format!("--compress-debug-sections={style}"))
            .arg(&plain)
            .arg(&out)
            .status()
            .unwrap()
            .success();
        if !ok {
            assert_ne!(style, "zlib", "objcopy cannot compress with zlib");
            println!("objcopy cannot write {style} sections; skipped that style");
            continue;
        }
        let headers = common::run(Command::new("readelf").arg("-S").arg("-W").arg(&out));
        if style == "zlib-gnu" {
            assert!(headers.contains(".zdebug_info"), "{headers}");
        } else {
            assert!(headers.contains(".debug_info"), "{headers}");
        }
        let s = Symbolizer::new();
        assert_matches(style, &s.symbolize(&vaddr(&out), &addrs).unwrap(), &oracle);
        assert_eq!(s.stats().errors(), 0);
    }
}

#[test]
fn fully_stripped_shared_library_is_named_from_dynsym() {
    let dir = tempfile::tempdir().unwrap();
    let lib = common::build_c(dir.path(), "libfixture.so", &["-shared", "-fPIC"]);
    let exported: Vec<common::Function> = common::functions(&lib)
        .into_iter()
        .filter(|f| ["hash_buffer", "fib", "count_words"].contains(&f.name.as_str()))
        .collect();
    assert_eq!(exported.len(), 3);
    common::run(Command::new("strip").arg("--strip-all").arg(&lib));
    let empty_root = tempfile::tempdir().unwrap();
    let s = Symbolizer::builder().debug_root(empty_root.path()).build();
    let addrs: Vec<u64> = exported.iter().map(|f| f.addr + f.size / 2).collect();
    let out = s.symbolize(&vaddr(&lib), &addrs).unwrap();
    for (f, sym) in exported.iter().zip(&out) {
        assert_eq!(
            common::outer_function(sym),
            Some(f.name.as_str()),
            "{sym:?}"
        );
        assert_eq!(sym.frames[0].file, None);
    }
    assert_eq!(s.stats().resolved_symtab, 3);
    assert_eq!(s.stats().errors(), 0);
}

#[test]
fn without_inlined_frames_the_real_function_keeps_the_innermost_line() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::build_c(dir.path(), "prog", &[]);
    let (addrs, oracle) = inlined_probe(&bin);
    let s = Symbolizer::builder().inlined(false).build();
    let out = s.symbolize(&vaddr(&bin), &addrs).unwrap();
    for (sym, want) in out.iter().zip(&oracle) {
        assert_eq!(sym.frames.len(), 1);
        assert_eq!(
            sym.frames[0].function.as_deref(),
            want.functions.last().map(String::as_str)
        );
        assert_eq!(sym.frames[0].line, want.line);
        assert!(!sym.frames[0].inlined);
    }
}
