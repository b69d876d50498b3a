//! `smolder symbolize` against binutils `addr2line -f -i -C` on a program
//! built in the test, and its JSON output.

use std::process::Command;

use smolder_e2e::{compile_c, require_tool, run_ok, smolder};

const INLINING_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
static inline __attribute__((always_inline)) long square(long x) { return x * x; }
static inline __attribute__((always_inline)) long sum_squares(long n) { long s = 0; for (long i = 0; i < n; i++) s += square(i); return s; }
__attribute__((noinline)) long compute(long n) { return sum_squares(n) + square(n); }
__attribute__((noinline)) long twice(long n) { return compute(n) + compute(n + 1); }
int main(int argc, char **argv) { printf("%ld\n", twice(argc > 1 ? atol(argv[1]) : 1000)); return 0; }
"#;

/// Addresses every few bytes through the program's own functions.
fn text_addresses(bin: &std::path::Path) -> Vec<String> {
    let nm = run_ok(
        Command::new(require_tool("nm", "binutils"))
            .args(["--defined-only", "-S"])
            .arg(bin),
    );
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(&nm.stdout).lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() == 4
            && (cols[2] == "T" || cols[2] == "t")
            && ["main", "twice", "compute"].contains(&cols[3])
        {
            let start = u64::from_str_radix(cols[0], 16).unwrap();
            let size = u64::from_str_radix(cols[1], 16).unwrap();
            out.extend((start..start + size).step_by(3).map(|a| format!("{a:#x}")));
        }
    }
    assert!(out.len() > 30, "too few addresses: {out:?}");
    out
}

#[test]
fn symbolize_elf_prints_what_addr2line_prints() {
    let dir = tempfile::tempdir().unwrap();
    let bin = compile_c(dir.path(), "inlining", INLINING_C, &["-O2", "-g"]);
    let addrs = text_addresses(&bin);
    let theirs = run_ok(
        Command::new(require_tool("addr2line", "binutils"))
            .args(["-f", "-i", "-C", "-e"])
            .arg(&bin)
            .args(&addrs),
    );
    let ours = smolder(
        ["symbolize".as_ref(), "--elf".as_ref(), bin.as_os_str()]
            .into_iter()
            .chain(addrs.iter().map(|a| a.as_ref())),
    );
    assert!(
        ours.status.success(),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    // binutils adds "(discriminator N)" notes that carry no name or line.
    let theirs: String = String::from_utf8_lossy(&theirs.stdout)
        .lines()
        .map(|l| l.split(" (discriminator").next().unwrap_or(l).to_owned() + "\n")
        .collect();
    assert_eq!(String::from_utf8_lossy(&ours.stdout), theirs);
    assert!(
        theirs.contains("square\n"),
        "the fixture has inlined frames"
    );
}

#[test]
fn symbolize_json_has_the_inlined_chain_innermost_first() {
    let dir = tempfile::tempdir().unwrap();
    let bin = compile_c(dir.path(), "inlining", INLINING_C, &["-O2", "-g"]);
    let addrs = text_addresses(&bin);
    let out = smolder(
        [
            "symbolize".as_ref(),
            "--json".as_ref(),
            "--elf".as_ref(),
            bin.as_os_str(),
        ]
        .into_iter()
        .chain(addrs.iter().map(|a| a.as_ref())),
    );
    assert!(out.status.success());
    let mut saw_inlined = false;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
        assert!(v["addr"].as_str().unwrap().starts_with("0x"));
        let frames = v["frames"].as_array().unwrap();
        if frames.len() > 1 {
            saw_inlined = true;
            assert_eq!(frames[0]["inlined"], true, "{v}");
            assert_eq!(frames.last().unwrap()["inlined"], false, "{v}");
            assert!(frames[0]["line"].as_u64().is_some_and(|l| l > 0), "{v}");
        }
    }
    assert!(saw_inlined);
}

#[test]
fn symbolize_reports_bad_arguments_in_one_line() {
    for args in [
        vec!["symbolize", "--elf", "/nonexistent/binary", "0x10"],
        vec!["symbolize", "-p", "4000000000", "0x10"],
        vec!["symbolize", "--kernel", "not-hex"],
    ] {
        let out = smolder(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("panicked"));
    }
}
