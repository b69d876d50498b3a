//! The runner of the fuzz regression tests of `profiles-proto` and
//! `symbolizer` (each includes this file): every minimised input a
//! cargo-fuzz target found is run through the target's body, which must
//! return without panicking, within a time limit. See bench/FUZZING.md.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn inputs(crate_dir: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(crate_dir).join("fuzz/regressions").join(target);
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

/// Runs `f` on every input of `target` (under `fuzz/regressions/` of the
/// crate at `crate_dir`); collects every failure (panic or time limit)
/// instead of stopping at the first.
pub fn check(crate_dir: &str, target: &str, f: fn(&[u8])) {
    let mut failures = Vec::new();
    for path in inputs(crate_dir, target) {
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
