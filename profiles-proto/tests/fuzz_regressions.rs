//! Inputs the cargo-fuzz targets of `profiles-proto/fuzz` found to panic,
//! hang or blow up memory, minimised, under
//! `profiles-proto/fuzz/regressions/<target>/`. Each is run through the body
//! of the target that found it and must return (Ok or Err) without
//! panicking, within a time limit. See bench/FUZZING.md.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::{
    decode_binary, decode_json, decode_pprof, detect, fold, read_folded, read_perf_script,
    read_perf_script_from, read_profile, validate, FoldOptions,
};

const LIMIT: Duration = Duration::from_secs(60);

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `f` on every input of `target`; collects every failure (panic or
/// time limit) instead of stopping at the first.
fn check(target: &str, f: fn(&[u8])) {
    let mut failures = Vec::new();
    for path in inputs(target) {
        let data = std::fs::read(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let result = std::panic::catch_unwind(|| f(&data));
            let _ = tx.send(result.is_ok());
        });
        match rx.recv_timeout(LIMIT) {
            Ok(true) => {}
            Ok(false) => failures.push(format!("{}: panicked", path.display())),
            Err(_) => failures.push(format!("{}: still running after {LIMIT:?}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What the targets do with a profile a decoder accepted.
fn accepted(data: &ProfilesData) {
    validate(data).expect("a decoded profile passes validate");
    let _ = fold(data, &FoldOptions::default());
}

#[test]
fn otlp_binary() {
    check("otlp_binary", |data| {
        if let Ok(p) = decode_binary(data) {
            accepted(&p);
        }
    });
}

#[test]
fn otlp_json() {
    check("otlp_json", |data| {
        if let Ok(p) = decode_json(data) {
            accepted(&p);
        }
    });
}

#[test]
fn pprof() {
    check("pprof", |data| {
        if let Ok(p) = decode_pprof(data) {
            accepted(&p);
        }
    });
}

#[test]
fn folded() {
    check("folded", |data| {
        if let Ok(p) = read_folded(&String::from_utf8_lossy(data)) {
            accepted(&p);
        }
    });
}

#[test]
fn perf_script() {
    // As the target: the first byte picks the slice or a small BufReader.
    check("perf_script", |data| {
        let Some((&mode, text)) = data.split_first() else {
            return;
        };
        let result = if mode & 1 == 0 {
            read_perf_script(text)
        } else {
            let capacity = 1 + usize::from(mode >> 1);
            read_perf_script_from(std::io::BufReader::with_capacity(capacity, text))
        };
        if let Ok(p) = result {
            accepted(&p);
        }
    });
}

#[test]
fn detect_and_read_profile() {
    check("detect", |data| {
        let _ = detect(data);
        if let Ok(d) = read_profile(data) {
            accepted(&d.data);
        }
    });
}
