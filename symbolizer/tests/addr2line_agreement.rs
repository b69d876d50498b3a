//! Agreement with binutils `addr2line -f -i -C` on fixtures built here: the
//! whole inlined chain of function names and the innermost file:line, for
//! every 7th byte of every function in the symbol table.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use smolder_symbolizer::{AddressKind, Source, Symbolizer};

/// Most addresses compared per binary; beyond that the stride grows.
const MAX_ADDRESSES: usize = 60_000;

fn sample_addresses(bin: &Path) -> Vec<u64> {
    let funcs = common::functions(bin);
    let total: u64 = funcs.iter().map(|f| f.size.div_ceil(7)).sum();
    let stride = 7 * (total as usize).div_ceil(MAX_ADDRESSES).max(1) as u64;
    funcs
        .iter()
        .flat_map(|f| {
            (0..f.size)
                .step_by(stride as usize)
                .map(move |off| f.addr + off)
        })
        .collect()
}

/// The share of sampled addresses on which smolder and binutils agree, with
/// both demangling or neither.
fn agreement(bin: &Path, label: &str, min_addresses: usize, demangle: bool) -> Agreement {
    agreement_by(bin, label, min_addresses, demangle, |a, b| a == b)
}

/// [`agreement`], with `same_file` telling whether two file names are the
/// same file.
fn agreement_by(
    bin: &Path,
    label: &str,
    min_addresses: usize,
    demangle: bool,
    same_file: fn(&str, &str) -> bool,
) -> Agreement {
    let addrs = sample_addresses(bin);
    assert!(
        addrs.len() >= min_addresses,
        "{label}: only {} addresses",
        addrs.len()
    );
    let oracle = common::addr2line(bin, &addrs, demangle);
    let debug_root = tempfile::tempdir().unwrap();
    let symbolizer = Symbolizer::builder()
        .debug_root(debug_root.path())
        .demangle(demangle)
        .build();
    let ours = symbolizer
        .symbolize(
            &Source::Elf {
                path: bin,
                addresses: AddressKind::VirtualAddress,
            },
            &addrs,
        )
        .unwrap();

    let mut agree = 0usize;
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    let mut location_only: Vec<(u64, Option<String>, Option<u32>)> = Vec::new();
    let mut shown = 0;
    for ((addr, theirs), sym) in addrs.iter().zip(&oracle).zip(&ours) {
        let functions: Vec<String> = if sym.frames.is_empty() {
            vec!["??".to_owned()]
        } else {
            sym.frames
                .iter()
                .map(|f| f.function.clone().unwrap_or_else(|| "??".into()))
                .collect()
        };
        let (file, line) = sym
            .frames
            .first()
            .map_or((None, None), |f| (f.file.clone(), f.line));
        let same_functions = functions == theirs.functions;
        let same_file = match (&file, &theirs.file) {
            (Some(a), Some(b)) => same_file(a, b),
            (a, b) => a == b,
        };
        let same_location = same_file && line == theirs.line;
        if same_functions && same_location {
            agree += 1;
            continue;
        }
        let reason = match (same_functions, same_location) {
            (false, true) if functions.len() != theirs.functions.len() => "inline depth differs",
            (false, true) => "function names differ",
            (true, false) if !same_file => "file differs",
            (true, false) => "line differs",
            _ => "names and location differ",
        };
        if same_functions {
            location_only.push((*addr, file.clone(), line));
        }
        *reasons.entry(reason).or_default() += 1;
        if shown < 25 {
            shown += 1;
            println!(
                "{label} {addr:#x}: {reason}\n  addr2line: {:?} at {:?}:{:?}\n  smolder:   {:?} at {:?}:{:?}",
                theirs.functions, theirs.file, theirs.line, functions, file, line
            );
        }
    }
    // Where only the location differs, ask a second, independent oracle.
    let arbitrated = if location_only.is_empty() {
        0
    } else {
        let probe: Vec<u64> = location_only.iter().map(|(a, _, _)| *a).collect();
        let llvm = common::llvm_symbolizer_locations(bin, &probe);
        location_only
            .iter()
            .zip(&llvm)
            .filter(|((_, file, line), (their_file, their_line))| {
                let same = match (file, their_file) {
                    (Some(a), Some(b)) => same_file(a, b),
                    (a, b) => a == b,
                };
                same && line == their_line
            })
            .count()
    };
    let n = addrs.len() as f64;
    let ratio = agree as f64 / n;
    println!(
        "{label}: {agree}/{} addresses agree with binutils addr2line ({:.3}%); disagreements by reason: {reasons:?}",
        addrs.len(),
        ratio * 100.0
    );
    println!(
        "{label}: of {} location-only disagreements, llvm-symbolizer sides with smolder on {arbitrated}",
        location_only.len()
    );
    println!("{label}: {:?}", symbolizer.stats());
    assert_eq!(
        symbolizer.stats().errors(),
        0,
        "{label}: errors while symbolizing"
    );
    Agreement {
        with_binutils: ratio,
        with_either: (agree + arbitrated) as f64 / n,
        stats: symbolizer.stats(),
    }
}

struct Agreement {
    /// Share of addresses where names and innermost file:line match binutils.
    with_binutils: f64,
    /// Also counting location disagreements where llvm-symbolizer sides with us.
    with_either: f64,
    stats: smolder_symbolizer::Stats,
}

#[test]
fn c_fixture_agrees_with_binutils() {
    let dir = tempfile::tempdir().unwrap();
    let generated = common::generated_c(dir.path(), 80);
    let bin = common::build_c(dir.path(), "fixture-c", &[generated.to_str().unwrap()]);
    let a = agreement(&bin, "C -O2 -g", 2000, true);
    assert!(a.with_binutils >= 0.99, "agreement {}", a.with_binutils);
}

/// C++ frames are compared on mangled names, so that this checks the DWARF
/// walk; demangling is compared with `c++filt` below. binutils 2.40 puts a few
/// `std::` lines of GCC 12's DWARF 5 in the main file (line numbers past its
/// end); llvm-symbolizer arbitrates those.
#[test]
fn cpp_fixture_agrees_with_binutils() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::build_cpp(dir.path(), "fixture-cpp");
    let a = agreement(&bin, "C++ -O2 -g (mangled)", 400, false);
    assert!(a.with_binutils >= 0.95, "agreement {}", a.with_binutils);
    assert!(a.with_either >= 0.99, "agreement {}", a.with_either);
}

/// Our C++ demangling (the `cpp_demangle` crate) against binutils `c++filt`
/// (libiberty) on every mangled name in the C++ fixture's DWARF and symbols.
/// `cpp_demangle` is known to differ on some template-heavy names (return
/// types of functions enclosing lambdas, `(unsigned long)0` for `0ul`, the
/// parameters of some template constructors); the differences are printed.
#[test]
fn cpp_demangling_agrees_with_cxxfilt() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::build_cpp(dir.path(), "fixture-cpp");
    let strings = common::run(
        std::process::Command::new("strings")
            .arg("-n")
            .arg("4")
            .arg(&bin),
    );
    let mut names: Vec<&str> = strings
        .lines()
        .filter(|s| s.starts_with("_Z") && s.bytes().all(|b| b.is_ascii_graphic()))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 100, "only {} mangled names", names.len());
    let theirs = common::cxxfilt(&names);
    let mut agree = 0;
    for (name, want) in names.iter().zip(&theirs) {
        let ours = smolder_symbolizer::demangle(name);
        if ours == want.as_str() {
            agree += 1;
        } else {
            println!("{name}\n  c++filt: {want}\n  smolder: {ours}");
        }
    }
    let ratio = agree as f64 / names.len() as f64;
    println!(
        "C++ demangling: {agree}/{} names agree with c++filt ({:.1}%)",
        names.len(),
        ratio * 100.0
    );
    assert!(ratio >= 0.85, "demangling agreement {ratio}");
}

#[test]
fn rust_fixture_agrees_with_binutils() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::build_rust(dir.path(), "fixture-rs");
    let a = agreement(&bin, "Rust opt-level=3 -g", 2000, true);
    assert!(a.with_binutils >= 0.99, "agreement {}", a.with_binutils);
}

/// `format_addr2line` prints what `addr2line -f -i -C` prints (binutils'
/// discriminator notes aside).
#[test]
fn addr2line_text_format_matches_binutils() {
    let dir = tempfile::tempdir().unwrap();
    let generated = common::generated_c(dir.path(), 20);
    let bin = common::build_c(dir.path(), "fixture-c", &[generated.to_str().unwrap()]);
    let addrs = sample_addresses(&bin);
    let input: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    let mut child = std::process::Command::new("addr2line")
        .args(["-f", "-i", "-C", "-e"])
        .arg(&bin)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let theirs = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    let theirs: String = theirs
        .lines()
        .map(|l| l.split(" (discriminator").next().unwrap().to_owned() + "\n")
        .collect();
    let s = Symbolizer::new();
    let src = Source::Elf {
        path: &bin,
        addresses: AddressKind::VirtualAddress,
    };
    let mut ours = Vec::new();
    for sym in s.symbolize(&src, &addrs).unwrap() {
        smolder_symbolizer::format_addr2line(&sym, &mut ours).unwrap();
    }
    let ours = String::from_utf8(ours).unwrap();
    assert!(addrs.len() > 500);
    assert_eq!(ours, theirs);
}

/// Builds the C fixture and generated functions with `cc` and `flags`.
fn build_c_with(dir: &Path, cc: &str, name: &str, flags: &[&str]) -> std::path::PathBuf {
    let generated = common::generated_c(dir, 40);
    let out = dir.join(name);
    common::run(
        std::process::Command::new(cc)
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(common::FIXTURE_C)
            .arg(&generated),
    );
    out
}

/// clang writes no `.debug_aranges`: the symbolizer finds each address's
/// unit from the units' own ranges.
#[test]
fn clang_fixture_without_aranges_agrees_with_binutils() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c_with(
        dir.path(),
        "clang-16",
        "fixture-clang",
        &["-O2", "-gdwarf-4"],
    );
    let sections = common::run(std::process::Command::new("readelf").arg("-S").arg(&bin));
    assert!(!sections.contains(".debug_aranges"), "{sections}");
    let a = agreement(&bin, "C clang -O2 -gdwarf-4", 1000, true);
    assert!(a.with_binutils >= 0.99, "agreement {}", a.with_binutils);
}

/// GCC's link-time optimisation writes units that refer into other units
/// (`DW_FORM_ref_addr`); those are read with the units they refer to.
/// binutils 2.40 names the file of many LTO lines `<artificial>` (the LTO
/// unit's name); llvm-symbolizer arbitrates those.
#[test]
fn lto_fixture_agrees_with_binutils() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_c_with(dir.path(), "gcc", "fixture-lto", &["-O2", "-g", "-flto"]);
    let a = agreement(&bin, "C gcc -O2 -g -flto", 200, true);
    assert!(a.with_either >= 0.99, "agreement {}", a.with_either);
}

/// A Rust crate built as a release build is (ThinLTO across 16 codegen
/// units): functions inlined across units keep their abstract origin in
/// the unit they came from (`DW_FORM_ref_addr`). Each sampled unit is read
/// with the units its names lead to; the whole-object context is never built.
#[test]
fn rust_thin_lto_fixture_agrees_with_binutils() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("fixture-thin-lto");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    common::run(
        std::process::Command::new(rustc)
            .args(["-C", "opt-level=3", "-g", "-C", "codegen-units=16"])
            .args(["-C", "lto=thin", "--edition", "2021", "-o"])
            .arg(&bin)
            .arg(common::FIXTURE_RS),
    );
    let abbrevs = common::run(
        std::process::Command::new("readelf")
            .arg("--debug-dump=abbrev")
            .arg(&bin),
    );
    assert!(
        abbrevs.contains("DW_FORM_ref_addr"),
        "no cross-unit references in the ThinLTO fixture"
    );
    let a = agreement(&bin, "Rust opt-level=3 -g ThinLTO", 2000, true);
    assert!(a.with_binutils >= 0.99, "agreement {}", a.with_binutils);
    assert_eq!(a.stats.dwarf_parsed, 1, "{:?}", a.stats);
    assert!(a.stats.dwarf_units_parsed >= 2, "{:?}", a.stats);
}

/// Compressed debug sections (`-gz`, as distributions ship debug files):
/// `.debug_info` is inflated a unit at a time.
#[test]
fn compressed_debug_sections_agree_with_binutils() {
    let dir = tempfile::tempdir().unwrap();
    // ELF compression; binutils 2.40 reads no line of GCC's `.zdebug_*`
    // (`-gz=zlib-gnu`), so that form has no oracle here.
    let (name, gz) = ("fixture-zlib", "-gz=zlib");
    let bin = build_c_with(dir.path(), "gcc", name, &["-O2", "-g", gz]);
    let sections = common::run(std::process::Command::new("readelf").arg("-S").arg(&bin));
    let info = sections
        .lines()
        .skip_while(|l| !l.contains("debug_info"))
        .take(2)
        .collect::<String>();
    assert!(
        info.contains(".zdebug_info") || info.contains(" C "),
        "{name}: .debug_info not compressed: {sections}"
    );
    let a = agreement(&bin, name, 1000, true);
    assert!(
        a.with_binutils >= 0.99,
        "{name}: agreement {}",
        a.with_binutils
    );
}

/// glibc's debug file from Debian's `libc6-dbg`, which `.ci/run` installs:
/// DWARF 5 with every debug section compressed, over a thousand units.
/// Its `.debug_info`, `.debug_abbrev` and `.debug_line` are read a piece
/// at a time (a unit, its abbreviation table, its line program) until
/// enough pieces were asked for that each is inflated whole.
#[test]
fn glibc_debug_file_agrees_with_binutils() {
    let libc = std::path::Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    let notes = common::run(std::process::Command::new("readelf").arg("-n").arg(libc));
    let id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("libc.so.6 has a build ID");
    let debug = std::path::PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &id[..2],
        &id[2..]
    ));
    assert!(
        debug.is_file(),
        "{} is missing: install Debian's libc6-dbg",
        debug.display()
    );
    // binutils 2.40 joins a DWARF 5 file's directory to the unit's own
    // (`./csu/./csu/init-first.c` where the line table says
    // `./csu/init-first.c`), so paths are compared without `.` parts and
    // repeated leading directories.
    fn same_file(ours: &str, theirs: &str) -> bool {
        let parts = |p: &str| -> Vec<String> {
            p.split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_owned)
                .collect()
        };
        let (ours, theirs) = (parts(ours), parts(theirs));
        ours == theirs || (theirs.len() > ours.len() && theirs.ends_with(&ours))
    }
    let a = agreement_by(&debug, "glibc", 10_000, true, same_file);
    // binutils 2.40 also names the unit's primary file for lines from
    // other files of a DWARF 5 unit (`strfromd.c` for a line of
    // `strfrom-skeleton.c` that the unit includes): there llvm-symbolizer
    // decides.
    assert!(a.with_either >= 0.99, "glibc: agreement {}", a.with_either);
    assert!(a.stats.dwarf_units_parsed >= 100, "{:?}", a.stats);

    // A few units far apart, from the end of the file backwards: each
    // piece read alone, most from the start of its section again.
    let all = sample_addresses(&debug);
    let few: Vec<u64> = (1..=6)
        .rev()
        .map(|i| all[i * (all.len() - 1) / 6])
        .collect();
    let oracle = common::addr2line(&debug, &few, true);
    let symbolizer = Symbolizer::builder()
        .debug_root(tempfile::tempdir().unwrap().path())
        .build();
    let ours = symbolizer
        .symbolize(
            &Source::Elf {
                path: &debug,
                addresses: AddressKind::VirtualAddress,
            },
            &few,
        )
        .unwrap();
    for ((addr, theirs), sym) in few.iter().zip(&oracle).zip(&ours) {
        let functions: Vec<String> = sym
            .frames
            .iter()
            .map(|f| f.function.clone().unwrap_or_else(|| "??".into()))
            .collect();
        assert_eq!(functions, theirs.functions, "{addr:#x}");
        assert_eq!(
            sym.frames.first().and_then(|f| f.line),
            theirs.line,
            "{addr:#x}"
        );
    }
    let stats = symbolizer.stats();
    assert_eq!(stats.errors(), 0, "{stats:?}");
    assert!(stats.dwarf_units_parsed >= 6, "{stats:?}");
}
