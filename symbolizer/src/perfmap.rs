//! JIT perf maps: `/tmp/perf-PID.map`, one `START SIZE name` line (hex) per
//! compiled function, as written by `node --perf-basic-prof` or
//! `python3 -X perf`. Owns parsing and lookup; the file is re-read when it grows.

use std::path::{Path, PathBuf};

use crate::process;

/// The parsed entries of one perf map, sorted by start address.
#[derive(Debug, Default)]
pub(crate) struct PerfMap {
    entries: Vec<(u64, u64, Box<str>)>,
}

impl PerfMap {
    /// Parses perf-map text; returns the map and the number of bad lines.
    pub(crate) fn parse(text: &str) -> (PerfMap, u64) {
        let mut bad = 0;
        let mut entries = Vec::new();
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(line) {
                Some(entry) => entries.push(entry),
                None => bad += 1,
            }
        }
        // Later lines win for the same start: JITs re-emit recompiled code.
        entries.reverse();
        entries.sort_by_key(|e| e.0);
        entries.dedup_by_key(|e| e.0);
        (PerfMap { entries }, bad)
    }

    /// The name of the entry that contains `addr`.
    pub(crate) fn lookup(&self, addr: u64) -> Option<&str> {
        let idx = self.entries.partition_point(|e| e.0 <= addr);
        // Entries may overlap when code is freed and reused; check a few back.
        self.entries[..idx]
            .iter()
            .rev()
            .take(4)
            .find(|(start, size, _)| addr - start < *size)
            .map(|(_, _, name)| &**name)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

fn parse_line(line: &str) -> Option<(u64, u64, Box<str>)> {
    let mut parts = line.splitn(3, ' ');
    let start = parse_hex(parts.next()?)?;
    let size = parse_hex(parts.next()?)?;
    let name = parts.next()?.trim_end();
    if name.is_empty() || size == 0 {
        return None;
    }
    Some((start, size, name.into()))
}

fn parse_hex(s: &str) -> Option<u64> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    u64::from_str_radix(s, 16).ok()
}

/// Where the perf map of `pid` may be: its own `/tmp` (inside its mount and
/// PID namespaces) first, then ours.
pub(crate) fn candidates(pid: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let ns_pid = process::namespace_pid(pid).unwrap_or(pid);
    out.push(Path::new(&format!("/proc/{pid}/root/tmp")).join(format!("perf-{ns_pid}.map")));
    let host = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    if !out.contains(&host) {
        out.push(host);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_node_and_python_lines() {
        let text = "\
7f3a4c000040 1a0 LazyCompile:*fib /app/x.js:3:13
0x7f3a4c000200 0x40 py::main:/app/x.py

bogus line
7f3a4c000300 0 zero-sized
";
        let (map, bad) = PerfMap::parse(text);
        assert_eq!(map.len(), 2);
        assert_eq!(bad, 2);
        assert_eq!(
            map.lookup(0x7f3a4c000040),
            Some("LazyCompile:*fib /app/x.js:3:13")
        );
        assert_eq!(
            map.lookup(0x7f3a4c0001df),
            Some("LazyCompile:*fib /app/x.js:3:13")
        );
        assert_eq!(map.lookup(0x7f3a4c0001e0), None);
        assert_eq!(map.lookup(0x7f3a4c000210), Some("py::main:/app/x.py"));
        assert_eq!(map.lookup(0x10), None);
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let (map, _) = PerfMap::parse("1000 10 old\n1000 10 new\n");
        assert_eq!(map.lookup(0x1005), Some("new"));
    }
}
