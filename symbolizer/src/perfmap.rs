//! JIT perf maps: `/tmp/perf-PID.map`, one `START SIZE name` line (hex) per
//! compiled function, as written by `node --perf-basic-prof` or
//! `python3 -X perf`. Owns parsing, lookup and [`PerfMapReader`], which reads
//! a process's map by the open rule of [`crate::process`] (inside its root,
//! no symbolic links, a regular file owned by the process's uid), capped in
//! bytes and lines, and reads only what was appended when it grows. The
//! reader keeps the process's root from its first read, so a map written as
//! the process exits (a JVM's `-XX:+DumpPerfMapAtExit`) is still read after.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use crate::process::{OpenCheck, OpenError, ProcessFacts, ProcessRoot};

/// At most this many bytes of a perf map are read.
pub const MAX_PERF_MAP_BYTES: u64 = 64 << 20;
/// At most this many entries of a perf map are kept.
pub const MAX_PERF_MAP_LINES: usize = 1 << 20;
/// Longer lines are skipped (a name is never this long).
const MAX_LINE_BYTES: usize = 8 << 10;
/// The bytes before the read offset that are compared on each refresh: a
/// map rewritten in place (a JVM's `jcmd PID Compiler.perfmap`, then its
/// map at exit) differs there, and is read again from the start.
const CHECKED_BYTES: usize = 64;

/// The parsed entries of one perf map, sorted by start address.
#[derive(Debug, Default)]
pub struct PerfMap {
    entries: Vec<(u64, u64, Box<str>)>,
}

impl PerfMap {
    /// Parses perf-map text; returns the map and the number of bad lines.
    pub fn parse(text: &str) -> (PerfMap, u64) {
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
        (PerfMap::from_entries(entries), bad)
    }

    /// Entries in file order; later ones win for the same start (JITs
    /// re-emit recompiled code).
    fn from_entries(mut entries: Vec<(u64, u64, Box<str>)>) -> PerfMap {
        entries.reverse();
        entries.sort_by_key(|e| e.0);
        entries.dedup_by_key(|e| e.0);
        PerfMap { entries }
    }

    /// The name of the entry that contains `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let idx = self.entries.partition_point(|e| e.0 <= addr);
        // Entries may overlap when code is freed and reused; check a few back.
        self.entries[..idx]
            .iter()
            .rev()
            .take(4)
            .find(|(start, size, _)| addr - start < *size)
            .map(|(_, _, name)| &**name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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

/// What a [`PerfMapReader`] skipped or refused, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerfMapCounts {
    /// Lines that were not `START SIZE name`, or too long.
    pub bad_lines: u64,
    /// Times the map was refused (FIFO, symbolic link, wrong owner…).
    pub refused: u64,
    /// Bytes or lines left unread because of the caps.
    pub capped: bool,
}

/// The perf map of one process, read by the open rule and re-read as it grows.
pub struct PerfMapReader {
    pid: u32,
    path: String,
    uid: Option<u32>,
    /// The process's root, opened on the first read.
    root: Option<ProcessRoot>,
    /// The file being read, its (dev, inode) and how far it was read.
    file: Option<(File, (u64, u64), u64)>,
    /// The last bytes read, up to [`CHECKED_BYTES`].
    last: Vec<u8>,
    /// A last line not yet ended by a newline.
    tail: Vec<u8>,
    raw: Vec<(u64, u64, Box<str>)>,
    map: Arc<PerfMap>,
    counts: PerfMapCounts,
    last_error: Option<String>,
}

impl PerfMapReader {
    /// A reader for `/tmp/perf-NSPID.map` inside the root of `facts.pid`,
    /// owned by its uid. Nothing is read until [`PerfMapReader::refresh`].
    pub fn new(facts: &ProcessFacts) -> PerfMapReader {
        let ns_pid = facts.namespace_pid.unwrap_or(facts.pid);
        PerfMapReader {
            pid: facts.pid,
            path: format!("/tmp/perf-{ns_pid}.map"),
            uid: facts.uid,
            root: None,
            file: None,
            last: Vec::new(),
            tail: Vec::new(),
            raw: Vec::new(),
            map: Arc::default(),
            counts: PerfMapCounts::default(),
            last_error: None,
        }
    }

    /// The entries read so far.
    pub fn map(&self) -> Arc<PerfMap> {
        Arc::clone(&self.map)
    }

    pub fn counts(&self) -> PerfMapCounts {
        self.counts
    }

    /// Why the last refresh found no map, if it did not.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Reads what was appended since the last call (all of it the first
    /// time, or when the file was replaced, shrank or was rewritten). The
    /// first call takes the process's root: later calls read under it even
    /// after the process exited. Returns whether the map changed.
    pub fn refresh(&mut self) -> Result<bool, OpenError> {
        let check = OpenCheck {
            // A larger file is read up to the cap, not refused.
            max_bytes: u64::MAX,
            identity: None,
            owner: self.uid,
        };
        let root = match self.root.take() {
            Some(root) => root,
            None => match ProcessRoot::open(self.pid, &self.path) {
                Ok(root) => root,
                Err(e) => {
                    self.last_error = Some(e.to_string());
                    return Err(e);
                }
            },
        };
        let opened = root.open_file(&self.path, &check);
        self.root = Some(root);
        let file = match opened {
            Ok(f) => f,
            Err(e @ OpenError::Io { .. }) if self.file.is_some() => {
                // The process exited: what was read stays.
                self.last_error = Some(e.to_string());
                return Ok(false);
            }
            Err(e) => {
                if !matches!(e, OpenError::NotFound { .. } | OpenError::Io { .. }) {
                    self.counts.refused += 1;
                }
                self.last_error = Some(e.to_string());
                return Err(e);
            }
        };
        self.last_error = None;
        let meta = file.metadata().map_err(|source| OpenError::Io {
            pid: self.pid,
            path: self.path.clone(),
            source,
        })?;
        let identity = (meta.dev(), meta.ino());
        let offset = match &self.file {
            Some((_, id, offset))
                if *id == identity
                    && meta.len() >= *offset
                    && self.unchanged_before(&file, *offset) =>
            {
                *offset
            }
            _ => {
                self.raw.clear();
                self.tail.clear();
                self.last.clear();
                0
            }
        };
        let changed = meta.len() > offset || offset == 0;
        let mut new_offset = offset;
        if meta.len() > offset && offset < MAX_PERF_MAP_BYTES {
            let want = (meta.len().min(MAX_PERF_MAP_BYTES) - offset).min(MAX_PERF_MAP_BYTES);
            let mut buf = Vec::new();
            let read = {
                use std::io::{Seek, SeekFrom};
                let mut f = &file;
                f.seek(SeekFrom::Start(offset))
                    .and_then(|_| f.take(want).read_to_end(&mut buf))
            };
            if let Err(source) = read {
                return Err(OpenError::Io {
                    pid: self.pid,
                    path: self.path.clone(),
                    source,
                });
            }
            new_offset = offset + buf.len() as u64;
            let keep = buf.len().min(CHECKED_BYTES);
            let drop = (self.last.len() + keep).saturating_sub(CHECKED_BYTES);
            self.last.drain(..drop);
            self.last.extend_from_slice(&buf[buf.len() - keep..]);
            self.ingest(&buf);
        }
        if meta.len() > MAX_PERF_MAP_BYTES || self.raw.len() >= MAX_PERF_MAP_LINES {
            self.counts.capped = true;
        }
        self.file = Some((file, identity, new_offset));
        if changed {
            self.map = Arc::new(PerfMap::from_entries(self.raw.clone()));
        }
        Ok(changed)
    }

    /// Whether the bytes before `offset` are still those read there.
    fn unchanged_before(&self, file: &File, offset: u64) -> bool {
        use std::os::unix::fs::FileExt;
        let mut now = vec![0u8; self.last.len()];
        let at = offset - self.last.len() as u64;
        file.read_exact_at(&mut now, at).is_ok() && now == self.last
    }

    fn ingest(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(nl);
            rest = &after[1..];
            if self.tail.len() + line.len() > MAX_LINE_BYTES {
                self.tail.clear();
                self.counts.bad_lines += 1;
                continue;
            }
            let full;
            let line = if self.tail.is_empty() {
                line
            } else {
                self.tail.extend_from_slice(line);
                full = std::mem::take(&mut self.tail);
                &full[..]
            };
            self.add_line(line);
        }
        if self.tail.len() + rest.len() > MAX_LINE_BYTES {
            self.tail.clear();
            self.counts.bad_lines += 1;
        } else {
            self.tail.extend_from_slice(rest);
        }
    }

    fn add_line(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        if text.trim().is_empty() {
            return;
        }
        match parse_line(&text) {
            Some(e) if self.raw.len() < MAX_PERF_MAP_LINES => self.raw.push(e),
            Some(_) => self.counts.capped = true,
            None => self.counts.bad_lines += 1,
        }
    }
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

    #[test]
    fn reader_reads_appended_lines_only_and_skips_long_ones() {
        use std::io::Write;
        let pid = std::process::id();
        let facts = ProcessFacts::read(pid, "t");
        let mut reader = PerfMapReader::new(&facts);
        let path = format!("/tmp/perf-{}.map", facts.namespace_pid.unwrap_or(pid));
        let _ = std::fs::remove_file(&path);
        assert!(matches!(reader.refresh(), Err(OpenError::NotFound { .. })));
        let mut f = std::fs::File::create(&path).unwrap();
        write!(f, "1000 10 first\n2000 10 sec").unwrap();
        f.flush().unwrap();
        assert!(reader.refresh().unwrap());
        assert_eq!(reader.map().lookup(0x1001), Some("first"));
        assert_eq!(reader.map().lookup(0x2001), None, "line not ended yet");
        writeln!(f, "ond").unwrap();
        writeln!(f, "3000 10 {}", "x".repeat(MAX_LINE_BYTES)).unwrap();
        f.flush().unwrap();
        assert!(reader.refresh().unwrap());
        assert_eq!(reader.map().lookup(0x2001), Some("second"));
        assert_eq!(reader.map().lookup(0x3001), None);
        assert_eq!(reader.counts().bad_lines, 1);
        assert!(!reader.refresh().unwrap(), "nothing new");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_map_rewritten_in_place_is_read_again_from_the_start() {
        use std::io::{Seek, Write};
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let facts = ProcessFacts::read(child.id(), "sleep");
        let path = format!("/tmp/perf-{}.map", child.id());
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "1000 10 first\n2000 10 second").unwrap();
        let mut reader = PerfMapReader::new(&facts);
        assert!(reader.refresh().unwrap());
        // Truncated and written anew, longer, as the JVM does.
        f.set_len(0).unwrap();
        f.rewind().unwrap();
        writeln!(
            f,
            "1000 10 first\n1800 10 between\n2000 10 second\n3000 10 third"
        )
        .unwrap();
        assert!(reader.refresh().unwrap());
        let map = reader.map();
        assert_eq!(map.lookup(0x1801), Some("between"));
        assert_eq!(map.lookup(0x3001), Some("third"));
        assert_eq!(map.len(), 4);
        let _ = child.kill();
        let _ = child.wait();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_map_written_as_the_process_exits_is_read_after() {
        use std::io::Write;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let facts = ProcessFacts::read(child.id(), "sleep");
        let path = format!("/tmp/perf-{}.map", child.id());
        let _ = std::fs::remove_file(&path);
        let mut reader = PerfMapReader::new(&facts);
        assert!(matches!(reader.refresh(), Err(OpenError::NotFound { .. })));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!std::path::Path::new(&format!("/proc/{}", child.id())).exists());
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "1000 10 at_exit").unwrap();
        assert!(reader.refresh().unwrap());
        assert_eq!(reader.map().lookup(0x1001), Some("at_exit"));
        std::fs::remove_file(&path).unwrap();
    }
}
