//! Shared helpers for the integration tests: building fixtures with the
//! system compilers, running binutils as the oracle, spawning fixture
//! processes, and the root-only gate.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

pub const FIXTURE_C: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/fixture.c");
pub const FIXTURE_RS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/fixture.rs");
pub const FIXTURE_CPP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/fixture.cpp");

/// Runs `cmd`, panicking with its stderr if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is the Debian package installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Compiles the C fixture with `gcc -O2 -g` plus `extra` flags.
pub fn build_c(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    run(Command::new("gcc")
        .args(["-O2", "-g", "-o"])
        .arg(&out)
        .arg(FIXTURE_C)
        .args(extra));
    out
}

/// Compiles the C++ fixture with `g++ -O2 -g`.
pub fn build_cpp(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    run(Command::new("g++")
        .args(["-O2", "-g", "-o"])
        .arg(&out)
        .arg(FIXTURE_CPP));
    out
}

/// Compiles the Rust fixture with `rustc -C opt-level=3 -g`.
pub fn build_rust(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    run(Command::new(rustc)
        .args(["-C", "opt-level=3", "-g", "--edition", "2021", "-o"])
        .arg(&out)
        .arg(FIXTURE_RS));
    out
}

/// A function from the symbol table.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub addr: u64,
    pub size: u64,
}

/// Sized text symbols of `bin`, from binutils `nm`.
pub fn functions(bin: &Path) -> Vec<Function> {
    let text = run(Command::new("nm").args(["-S", "--defined-only"]).arg(bin));
    let mut out: Vec<Function> = text
        .lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let addr = u64::from_str_radix(it.next()?, 16).ok()?;
            let size = u64::from_str_radix(it.next()?, 16).ok()?;
            let kind = it.next()?;
            let name = it.next()?;
            (matches!(kind, "t" | "T" | "W" | "w") && size > 0).then(|| Function {
                name: name.to_owned(),
                addr,
                size,
            })
        })
        .collect();
    out.sort_by_key(|f| f.addr);
    out.dedup_by_key(|f| f.addr);
    out
}

/// What `addr2line -f -i -C` says about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oracle {
    /// Function names, innermost first.
    pub functions: Vec<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// Runs binutils `addr2line -f -i -a [-C] -e bin` over `addrs`.
pub fn addr2line(bin: &Path, addrs: &[u64], demangle: bool) -> Vec<Oracle> {
    let mut child = Command::new("addr2line")
        .args(["-f", "-i", "-a", "-e"])
        .arg(bin)
        .args(demangle.then_some("-C"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("binutils addr2line (Debian package binutils)");
    let mut stdin = child.stdin.take().unwrap();
    let input: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut results: Vec<Oracle> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        assert!(
            is_address_line(line),
            "unexpected addr2line output {line:?}"
        );
        let mut functions = Vec::new();
        let mut locations = Vec::new();
        while let Some(next) = lines.peek() {
            if is_address_line(next) {
                break;
            }
            let function = lines.next().unwrap().to_owned();
            let location = lines.next().unwrap_or("??:0").to_owned();
            functions.push(function);
            locations.push(location);
        }
        let (file, line) = parse_location(locations.first().map_or("??:0", String::as_str));
        results.push(Oracle {
            functions,
            file,
            line,
        });
    }
    assert_eq!(results.len(), addrs.len());
    results
}

fn is_address_line(line: &str) -> bool {
    line.len() == 18 && line.starts_with("0x") && line[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// `file:line (discriminator N)` -> (file, line); `??` and `?`/`0` are unknown.
pub fn parse_location(loc: &str) -> (Option<String>, Option<u32>) {
    let loc = loc.split(" (discriminator").next().unwrap_or(loc);
    let (file, line) = loc.rsplit_once(':').unwrap_or((loc, "?"));
    let file = (file != "??").then(|| file.to_owned());
    let line = line.parse().ok().filter(|&l| l != 0);
    (file, line)
}

/// True when running as root. Otherwise a root-only test fails loudly in CI
/// (`CI` set) and is skipped with a message elsewhere.
pub fn is_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root, and CI is set: run the tests as root");
    }
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// A running fixture (killed on drop) and the `name address` lines it printed.
pub struct Served {
    pub child: Child,
    pub addrs: HashMap<String, u64>,
    _stdout: BufReader<ChildStdout>,
}

impl Served {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` and reads `name 0xADDR` lines until `ready`.
pub fn serve(cmd: &mut Command) -> Served {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut addrs = HashMap::new();
    loop {
        let mut line = String::new();
        let n = stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "{cmd:?} exited before printing `ready`");
        let line = line.trim();
        if line == "ready" {
            break;
        }
        if let Some((name, addr)) = line.split_once(' ') {
            let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).unwrap();
            addrs.insert(name.to_owned(), addr);
        }
    }
    Served {
        child,
        addrs,
        _stdout: stdout,
    }
}

/// The outermost (real) function name of a result.
pub fn outer_function(sym: &smolder_symbolizer::Symbolized) -> Option<&str> {
    sym.frames.last()?.function.as_deref()
}

/// Writes a C file with `n` generated functions, each with an always-inline
/// leaf, an inline middle layer and branches, so that the comparison with
/// binutils sees thousands of addresses and real line variety.
pub fn generated_c(dir: &Path, n: usize) -> PathBuf {
    let mut src = String::from("#include <stddef.h>\n\n");
    for i in 0..n {
        src.push_str(&format!(
            r#"static inline __attribute__((always_inline)) unsigned gen{i}_leaf(unsigned x) {{
    x ^= x << {shift};
    x += {mul}u;
    return x ^ (x >> {rshift});
}}

static inline unsigned gen{i}_mid(const unsigned *v, size_t n) {{
    unsigned acc = {i}u;
    for (size_t j = 0; j < n; j++) {{
        if (v[j] & {bit}u)
            acc += gen{i}_leaf(v[j]);
        else
            acc ^= gen{i}_leaf(acc + (unsigned)j);
    }}
    return acc;
}}

__attribute__((noinline)) unsigned gen{i}_entry(const unsigned *v, size_t n) {{
    switch (n % 4) {{
    case 0:
        return gen{i}_mid(v, n);
    case 1:
        return gen{i}_leaf((unsigned)n) + gen{i}_mid(v, n / 2);
    case 2:
        return gen{i}_mid(v + 1, n - 1) * 3u;
    default:
        return (unsigned)n;
    }}
}}

"#,
            shift = i % 13 + 1,
            mul = i * 7919 + 1,
            rshift = i % 7 + 3,
            bit = 1u32 << (i % 5),
        ));
    }
    let path = dir.join("generated.c");
    std::fs::write(&path, src).unwrap();
    path
}

/// Demangles `names` with binutils `c++filt`, one output line per name.
pub fn cxxfilt(names: &[&str]) -> Vec<String> {
    let mut child = Command::new("c++filt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("binutils c++filt");
    let mut stdin = child.stdin.take().unwrap();
    let input = names.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let out: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(out.len(), names.len());
    out
}

/// The innermost `file:line` that `llvm-symbolizer` gives for each address.
pub fn llvm_symbolizer_locations(bin: &Path, addrs: &[u64]) -> Vec<(Option<String>, Option<u32>)> {
    let mut cmd = Command::new("llvm-symbolizer");
    cmd.arg("--obj").arg(bin).arg("--functions=none");
    cmd.args(addrs.iter().map(|a| format!("{a:#x}")));
    let text = run(&mut cmd);
    // One block per address, separated by blank lines; first line innermost.
    let out: Vec<_> = text
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let first = block.lines().next().unwrap_or("??:0:0");
            let mut parts = first.rsplitn(3, ':');
            let _column = parts.next();
            let line = parts
                .next()
                .and_then(|l| l.parse().ok())
                .filter(|&l| l != 0);
            let file = parts.next().filter(|f| *f != "??").map(str::to_owned);
            (file, line)
        })
        .collect();
    assert_eq!(out.len(), addrs.len(), "llvm-symbolizer output: {text}");
    out
}
