//! smolder's pprof output read by `go tool pprof -top` (Debian golang-go):
//! the same top functions with the same sample counts, and the same total.

use std::collections::BTreeMap;
use std::process::Command;

use smolder_e2e::{require_tool, rich_profile, smolder_ok};
use smolder_profiles_proto::{encode_binary, fold, FoldOptions};

/// Parses `go tool pprof -top -sample_index=samples` rows: flat count and name.
fn go_top(file: &std::path::Path) -> (i64, BTreeMap<String, i64>) {
    require_tool("go", "golang-go");
    let out = Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            "-nodecount=1000",
            "-sample_index=samples",
        ])
        .arg(file)
        .env("HOME", std::env::temp_dir())
        .env("PPROF_TMPDIR", std::env::temp_dir())
        .output()
        .expect("run go tool pprof");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut total = None;
    let mut flat = BTreeMap::new();
    for line in text.lines() {
        // "Showing nodes accounting for 74, 100% of 74 total"
        if let Some(rest) = line.trim().strip_prefix("Showing nodes accounting for ") {
            let of = rest.split(" of ").nth(1).expect("'of N total'");
            total = Some(
                of.trim_end_matches(" total")
                    .trim()
                    .parse::<i64>()
                    .expect("total"),
            );
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() >= 6 && cols[1].ends_with('%') && cols[4].ends_with('%') {
            // Functions with no self samples are listed with 0; inlined ones
            // are marked "(inline)".
            match cols[0].parse::<i64>() {
                Ok(0) | Err(_) => {}
                Ok(n) => {
                    let name = cols[5..].join(" ");
                    flat.insert(name.trim_end_matches(" (inline)").to_owned(), n);
                }
            }
        }
    }
    (
        total.unwrap_or_else(|| panic!("no total in go tool pprof output:\n{text}")),
        flat,
    )
}

#[test]
fn go_tool_pprof_reports_the_same_top_functions_and_total() {
    let data = rich_profile();
    let dir = tempfile::tempdir().unwrap();
    let otlp = dir.path().join("p.pb");
    std::fs::write(&otlp, encode_binary(&data)).unwrap();
    let pprof = dir.path().join("p.pb.gz");
    smolder_ok([
        "convert".as_ref(),
        otlp.as_os_str(),
        "-o".as_ref(),
        pprof.as_os_str(),
        "-f".as_ref(),
        "pprof".as_ref(),
    ]);

    // smolder's own view: self samples per leaf function (innermost line).
    let options = FoldOptions {
        annotate: false,
        ..FoldOptions::default()
    };
    let mut want = BTreeMap::new();
    let mut want_total = 0;
    for (stack, n) in fold(&data, &options) {
        let leaf = stack.rsplit(';').next().unwrap().to_owned();
        *want.entry(leaf).or_insert(0) += n;
        want_total += n;
    }
    let (total, flat) = go_top(&pprof);
    assert_eq!(total, want_total);
    assert_eq!(flat, want, "go tool pprof -top disagrees with smolder");
}
