//! What was read of new processes as they started, kept for the aggregator
//! in case they are gone by the time it gets to their samples.
//!
//! The sampler's process prefetcher (a thread woken by every exec) reads a
//! new image's mappings, opens their files by the one open rule and reads
//! its facts, then reads the mappings again a few times in the image's first
//! milliseconds (the dynamic loader maps the libraries then). The aggregator
//! reads `/proc` itself while a process lives; only when that read fails
//! (the process exited while the reader was behind) does it take the
//! snapshot. Bounded: at most [`MAX_SNAPSHOTS`] processes and
//! [`MAX_FILES_PER_SNAPSHOT`] open files each (what a process maps sizes
//! nothing); snapshots of processes whose exit the aggregator has passed are
//! dropped, the oldest go first when full, and both are counted.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use smolder_symbolizer::process::{open_mapped_file, ProcessMaps};
use smolder_symbolizer::ProcessFacts;

use super::unix_nano_now;

/// Processes kept at most; the oldest image is dropped for a new one.
pub const MAX_SNAPSHOTS: usize = 512;
/// Open files kept per process at most.
pub const MAX_FILES_PER_SNAPSHOT: usize = 64;

/// One process image as read soon after its exec.
pub struct Snapshot {
    /// When the image was exec'd, in unix nanoseconds.
    pub exec_unix_nano: u64,
    /// When the mappings were last read, in unix nanoseconds.
    pub read_unix_nano: u64,
    pub maps: ProcessMaps,
    /// The mapped files, by (device, inode), opened while the process lived.
    pub files: HashMap<(u64, u64), File>,
    pub facts: ProcessFacts,
    /// When the process exited (unix nanoseconds), once seen.
    exit_unix_nano: Option<u64>,
}

/// Counts, for the run summary and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Process images read at exec.
    pub taken: u64,
    /// Snapshots the aggregator used: the process was gone when it read.
    pub used: u64,
    /// Snapshots dropped to stay under [`MAX_SNAPSHOTS`] before any use.
    pub evicted: u64,
}

/// The snapshots, shared by the prefetcher (writes) and the aggregator
/// (takes).
#[derive(Default)]
pub struct ProcessSnapshots {
    by_pid: Mutex<HashMap<u32, Snapshot>>,
    /// The time of the newest sample the aggregator has been handed (unix
    /// ns): a process that exited before it has no samples still to come.
    reader_at_unix_nano: AtomicU64,
    taken: AtomicU64,
    used: AtomicU64,
    evicted: AtomicU64,
}

impl ProcessSnapshots {
    pub fn new() -> Arc<ProcessSnapshots> {
        Arc::new(ProcessSnapshots::default())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, Snapshot>> {
        self.by_pid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `pid` exec'd at `exec_unix_nano`: reads its image now (mappings,
    /// their files, facts). `comm` names it if its facts are unreadable.
    pub fn on_exec(&self, pid: u32, exec_unix_nano: u64, comm: &str) {
        let Ok(maps) = ProcessMaps::read(pid) else {
            return; // already gone: nothing to keep
        };
        let facts = ProcessFacts::read(pid, comm);
        let read_unix_nano = unix_nano_now();
        let files = open_new_files(pid, &maps, &[]).into_iter().collect();
        let snapshot = Snapshot {
            exec_unix_nano,
            read_unix_nano,
            maps,
            files,
            facts,
            exit_unix_nano: None,
        };
        self.taken.fetch_add(1, Ordering::Relaxed);
        let mut by_pid = self.lock();
        by_pid.insert(pid, snapshot);
        self.sweep(&mut by_pid);
    }

    /// Reads `pid`'s mappings again (libraries mapped since) and opens
    /// the files new to the snapshot; false once there is nothing to update
    /// (no snapshot, or the process is gone).
    pub fn reread(&self, pid: u32) -> bool {
        let open: Vec<(u64, u64)> = match self.lock().get(&pid) {
            Some(s) => s.files.keys().copied().collect(),
            None => return false,
        };
        // Read and open without the lock: the aggregator may be waiting.
        let Ok(maps) = ProcessMaps::read(pid) else {
            return false;
        };
        let read_unix_nano = unix_nano_now();
        let opened = open_new_files(pid, &maps, &open);
        let mut by_pid = self.lock();
        let Some(s) = by_pid.get_mut(&pid) else {
            return false;
        };
        s.maps = maps;
        s.read_unix_nano = read_unix_nano;
        for (key, file) in opened {
            if s.files.len() >= MAX_FILES_PER_SNAPSHOT {
                break;
            }
            s.files.insert(key, file);
        }
        true
    }

    /// `pid` exited at `exit_unix_nano`.
    pub fn on_exit(&self, pid: u32, exit_unix_nano: u64) {
        if let Some(s) = self.lock().get_mut(&pid) {
            s.exit_unix_nano = Some(exit_unix_nano);
        }
    }

    /// The aggregator has been handed samples up to `unix_nano`.
    pub fn reader_at(&self, unix_nano: u64) {
        self.reader_at_unix_nano
            .fetch_max(unix_nano, Ordering::Relaxed);
    }

    /// The snapshot of `pid` for a sample taken at `sample_unix_nano`, if
    /// one was read of the image that sample ran (exec'd before it).
    pub fn take(&self, pid: u32, sample_unix_nano: u64) -> Option<Snapshot> {
        let mut by_pid = self.lock();
        let fits = by_pid
            .get(&pid)
            .is_some_and(|s| s.exec_unix_nano <= sample_unix_nano);
        let taken = fits.then(|| by_pid.remove(&pid)).flatten();
        if taken.is_some() {
            self.used.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// The facts read of `pid`'s image at exec, if any.
    pub fn facts(&self, pid: u32) -> Option<ProcessFacts> {
        self.lock().get(&pid).map(|s| s.facts.clone())
    }

    /// The aggregator read `pid` itself: its snapshot is not needed.
    pub fn discard(&self, pid: u32) {
        self.lock().remove(&pid);
    }

    pub fn stats(&self) -> SnapshotStats {
        SnapshotStats {
            taken: self.taken.load(Ordering::Relaxed),
            used: self.used.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }

    /// Snapshots kept now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the processes whose exit the aggregator has passed (no samples
    /// of theirs can still come), then the oldest images over the cap.
    fn sweep(&self, by_pid: &mut HashMap<u32, Snapshot>) {
        let reader_at = self.reader_at_unix_nano.load(Ordering::Relaxed);
        by_pid.retain(|_, s| s.exit_unix_nano.is_none_or(|exit| exit >= reader_at));
        while by_pid.len() > MAX_SNAPSHOTS {
            let Some(oldest) = by_pid
                .iter()
                .min_by_key(|(_, s)| s.exec_unix_nano)
                .map(|(pid, _)| *pid)
            else {
                break;
            };
            by_pid.remove(&oldest);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Opens the files of `maps` that are not in `open`, by the one open rule,
/// up to [`MAX_FILES_PER_SNAPSHOT`] in all.
fn open_new_files(pid: u32, maps: &ProcessMaps, open: &[(u64, u64)]) -> Vec<((u64, u64), File)> {
    let mut opened: Vec<((u64, u64), File)> = Vec::new();
    for entry in maps.entries().iter().filter(|e| e.is_file()) {
        if open.len() + opened.len() >= MAX_FILES_PER_SNAPSHOT {
            break;
        }
        let key = (entry.dev, entry.inode);
        if open.contains(&key) || opened.iter().any(|(k, _)| *k == key) {
            continue;
        }
        if let Ok(file) = open_mapped_file(pid, entry) {
            opened.push((key, file));
        }
    }
    opened
}
