//! Inputs the cargo-fuzz target `elf_bytes` (symbolizer/fuzz) found to
//! panic, hang or blow up memory, minimised, under
//! `symbolizer/fuzz/regressions/elf_bytes/`. Each is run through the target's
//! body, `fuzzing::symbolize_elf_bytes`, which must return (anything) without
//! panicking, within a time limit. See bench/FUZZING.md.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

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

#[test]
fn elf_bytes_regressions_do_not_panic() {
    check("elf_bytes", |data| {
        let _ = smolder_symbolizer::fuzzing::symbolize_elf_bytes(data);
    });
}
