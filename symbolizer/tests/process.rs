//! Symbolizing live processes: binaries visible only inside the process's
//! mount namespace, deleted and replaced binaries, JIT perf maps, the vDSO,
//! and one parse of a binary shared by many processes.

mod common;

use std::path::Path;
use std::process::Command;

use smolder_symbolizer::{Source, Symbolizer};

const FUNCTIONS: [&str; 7] = [
    "hash_buffer",
    "fill_table",
    "fib",
    "sort_points",
    "blur",
    "count_words",
    "main",
];

/// Symbolizes the function addresses that a served fixture printed and checks
/// each is named, with a file and line from DWARF.
fn check_functions(s: &Symbolizer, served: &common::Served, expected_path: &Path) {
    let addrs: Vec<u64> = FUNCTIONS.iter().map(|f| served.addrs[*f]).collect();
    let out = s
        .symbolize(&Source::Process { pid: served.pid() }, &addrs)
        .unwrap();
    for (name, sym) in FUNCTIONS.iter().zip(&out) {
        assert_eq!(common::outer_function(sym), Some(*name), "{sym:?}");
        let frame = sym.frames.last().unwrap();
        assert!(
            frame.file.as_deref().unwrap().ends_with("fixture.c"),
            "{sym:?}"
        );
        assert!(frame.line.is_some(), "{sym:?}");
        let module = sym.module.as_ref().unwrap();
        assert_eq!(Path::new(&module.path), expected_path);
        assert!(module.build_id.is_some());
    }
}

fn serve(bin: &Path) -> common::Served {
    common::serve(Command::new(bin).arg("serve"))
}

#[test]
fn binary_visible_only_in_the_process_mount_namespace() {
    if !common::is_root("binary_visible_only_in_the_process_mount_namespace") {
        return;
    }
    let real = tempfile::tempdir().unwrap();
    let bin = common::build_c(real.path(), "hidden-prog", &[]);
    let mount_point = tempfile::tempdir().unwrap();
    let inside = mount_point.path().join("hidden-prog");
    let script = format!(
        "mount --bind '{}' '{}' && exec '{}' serve",
        real.path().display(),
        mount_point.path().display(),
        inside.display()
    );
    let served = common::serve(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(script),
    );
    assert!(!inside.exists(), "the bind mount leaked to our namespace");
    // Keep the original out of reach too: only the process's root can see it.
    std::fs::remove_file(&bin).unwrap();
    let s = Symbolizer::new();
    check_functions(&s, &served, &inside);
    assert_eq!(s.stats().errors(), 0, "{:?}", s.stats());
}

#[test]
fn deleted_binary_still_running() {
    if !common::is_root("deleted_binary_still_running") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = common::build_c(dir.path(), "doomed", &[]);
    let served = serve(&bin);
    std::fs::remove_file(&bin).unwrap();
    let s = Symbolizer::new();
    check_functions(&s, &served, &bin);
    assert_eq!(s.stats().errors(), 0, "{:?}", s.stats());
}

#[test]
fn replaced_binary_is_read_through_map_files() {
    if !common::is_root("replaced_binary_is_read_through_map_files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = common::build_c(dir.path(), "upgraded", &[]);
    let served = serve(&bin);
    let original_id = {
        let s = Symbolizer::new();
        let out = s
            .symbolize(
                &Source::Process { pid: served.pid() },
                &[served.addrs["fib"]],
            )
            .unwrap();
        out[0].module.as_ref().unwrap().build_id.clone().unwrap()
    };
    // An upgrade: a different binary renamed over the path (new inode).
    let newer = common::build_c(dir.path(), "upgraded.new", &["-DUPGRADED=1", "-O0"]);
    std::fs::rename(&newer, &bin).unwrap();
    let s = Symbolizer::new();
    check_functions(&s, &served, &bin);
    let out = s
        .symbolize(
            &Source::Process { pid: served.pid() },
            &[served.addrs["fib"]],
        )
        .unwrap();
    assert_eq!(
        out[0].module.as_ref().unwrap().build_id.as_ref(),
        Some(&original_id)
    );
}

#[test]
fn jit_code_named_by_perf_map() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::build_c(dir.path(), "jit-host", &[]);
    let served = serve(&bin);
    let jit = served.addrs["jit"];
    let map_path = format!("/tmp/perf-{}.map", served.pid());
    let _cleanup = RemoveOnDrop(map_path.clone().into());
    std::fs::write(
        &map_path,
        format!(
            "{:x} 20 LazyCompile:*fib /app/fib.js:3:13\n{:x} 40 py::main:/app/x.py\nnot a line\n",
            jit + 0x10,
            jit + 0x100
        ),
    )
    .unwrap();
    let s = Symbolizer::new();
    let pid = served.pid();
    let out = s
        .symbolize(
            &Source::Process { pid },
            &[jit + 0x18, jit + 0x13f, jit + 0x200],
        )
        .unwrap();
    assert_eq!(
        common::outer_function(&out[0]),
        Some("LazyCompile:*fib /app/fib.js:3:13")
    );
    assert_eq!(common::outer_function(&out[1]), Some("py::main:/app/x.py"));
    assert!(out[2].frames.is_empty());
    assert!(out[2].module.is_some(), "JIT memory is still a mapping");
    let stats = s.stats();
    assert_eq!(stats.resolved_perf_map, 2);
    assert_eq!(stats.perf_map_errors, 1, "the bad line is counted");

    // JITs append: the map is read again when it changes.
    let mut text = std::fs::read_to_string(&map_path).unwrap();
    text.push_str(&format!(
        "{:x} 10 LazyCompile:*later /app/fib.js:9:1\n",
        jit + 0x200
    ));
    std::fs::write(&map_path, text).unwrap();
    let out = s
        .symbolize(&Source::Process { pid }, &[jit + 0x204])
        .unwrap();
    assert_eq!(
        common::outer_function(&out[0]),
        Some("LazyCompile:*later /app/fib.js:9:1")
    );
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `[vdso]` start address in `/proc/PID/maps`.
fn vdso_start(pid: u32) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps
        .lines()
        .find(|l| l.ends_with("[vdso]"))
        .expect("a [vdso] mapping");
    u64::from_str_radix(line.split('-').next().unwrap(), 16).unwrap()
}

#[test]
fn vdso_of_our_own_process_and_of_a_child() {
    // Dump our vDSO and let binutils `nm -D` list its functions: the oracle.
    let start = vdso_start(std::process::id());
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    assert_eq!(base, start);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps.lines().find(|l| l.ends_with("[vdso]")).unwrap();
    let range = line.split_whitespace().next().unwrap();
    let end = u64::from_str_radix(range.split('-').nth(1).unwrap(), 16).unwrap();
    // SAFETY: the kernel keeps the vDSO mapped readable at AT_SYSINFO_EHDR.
    let image = unsafe { std::slice::from_raw_parts(base as *const u8, (end - start) as usize) };
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("vdso.so");
    std::fs::write(&dump, image).unwrap();
    let nm = common::run(Command::new("nm").args(["-D", "--defined-only"]).arg(&dump));
    let mut by_addr: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for line in nm.lines() {
        let mut it = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if matches!(kind, "T" | "t" | "W" | "w") {
            let addr = u64::from_str_radix(addr, 16).unwrap();
            let name = name.split('@').next().unwrap().to_owned();
            by_addr.entry(addr).or_default().push(name);
        }
    }
    assert!(!by_addr.is_empty(), "nm found no vDSO functions:\n{nm}");
    // The vDSO is linked at 0 (older kernels: at its load address); take the
    // image's first PT_LOAD from readelf.
    let phdrs = common::run(Command::new("readelf").args(["-lW"]).arg(&dump));
    let load_vaddr = phdrs
        .lines()
        .find(|l| l.trim_start().starts_with("LOAD"))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
        .unwrap();

    let s = Symbolizer::new();
    let check = |pid: u32, start: u64| {
        let addrs: Vec<u64> = by_addr
            .keys()
            .map(|a| start + (a - load_vaddr) + 1)
            .collect();
        let out = s.symbolize(&Source::Process { pid }, &addrs).unwrap();
        for ((addr, names), sym) in by_addr.iter().zip(&out) {
            let got = common::outer_function(sym).unwrap_or("??");
            assert!(
                names.iter().any(|n| n == got),
                "{addr:#x}: {got} not in {names:?}"
            );
            assert_eq!(sym.module.as_ref().unwrap().path, "[vdso]");
        }
    };
    check(std::process::id(), start);
    assert_eq!(s.stats().objects_parsed, 1);

    // A child's vDSO: the kernel's image again (smolder's own copy, not the
    // child's memory), cached by build-id.
    let child =
        common::serve(Command::new(common::build_c(dir.path(), "vdso-child", &[])).arg("serve"));
    check(child.pid(), vdso_start(child.pid()));
    assert_eq!(s.stats().objects_parsed, 1);
    assert_eq!(s.stats().errors(), 0, "{:?}", s.stats());
}

#[test]
fn one_binary_shared_by_many_processes_is_parsed_once() {
    let dir = tempfile::tempdir().unwrap();
    let bin = common::build_c(dir.path(), "shared", &[]);
    let processes: Vec<common::Served> = (0..25).map(|_| serve(&bin)).collect();
    let s = Symbolizer::new();
    for round in 0..40 {
        for p in &processes {
            let addrs = [p.addrs["fib"] + 3, p.addrs["blur"] + round];
            let out = s
                .symbolize(&Source::Process { pid: p.pid() }, &addrs)
                .unwrap();
            assert_eq!(common::outer_function(&out[0]), Some("fib"));
        }
    }
    let stats = s.stats();
    println!("{stats:?}");
    assert_eq!(stats.addresses, 2 * 25 * 40);
    assert_eq!(
        stats.objects_parsed, 1,
        "one binary, 1,000 process symbolizations"
    );
    assert_eq!(stats.dwarf_parsed, 1);
    assert_eq!(stats.symtabs_parsed, 0, "DWARF named everything");
    assert_eq!(stats.errors(), 0);
}

#[test]
fn exited_process_is_an_error() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let s = Symbolizer::new();
    let err = s
        .symbolize(&Source::Process { pid }, &[0x1000])
        .unwrap_err();
    assert!(err.to_string().contains(&pid.to_string()), "{err}");
}
