//! The local store of `--output-dir`: each interval as an OTLP file
//! (`profile-<unix ms>.otlp`, a binary `ProfilesData`) and a flamegraph
//! (`profile-<unix ms>.svg`); intervals older than `retention.compact_after`
//! merged into one OTLP file per 5 minutes (named after its first
//! interval, without SVG); the oldest removed beyond `retention.max_age`,
//! a count or a byte total.
//!
//! Owns only files named `profile-*` in its directory; files are written
//! under a temporary name and renamed, so readers never see half a file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use smolder_flamegraph::{render, FlamegraphOptions};
use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::{write_profile, Format, Merger};

use super::config::Retention;
use super::AgentError;

const PREFIX: &str = "profile-";
/// Compacted files each hold this much time, aligned to it.
pub const COMPACT_SPAN_MS: u64 = 5 * 60 * 1000;

pub struct LocalStore {
    dir: PathBuf,
    retention: Retention,
}

/// What one interval left on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub otlp: PathBuf,
    pub svg: Option<PathBuf>,
    /// Intervals removed by the retention.
    pub removed: usize,
    /// Intervals merged into compacted files.
    pub compacted: usize,
}

fn io_error(action: String) -> impl FnOnce(std::io::Error) -> AgentError {
    move |source| AgentError::Io { action, source }
}

impl LocalStore {
    /// Creates the directory if needed.
    pub fn open(dir: &Path, retention: Retention) -> Result<LocalStore, AgentError> {
        std::fs::create_dir_all(dir).map_err(io_error(format!(
            "creating the output directory {}",
            dir.display()
        )))?;
        Ok(LocalStore {
            dir: dir.to_owned(),
            retention,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one interval, then applies the retention.
    pub fn store(
        &self,
        data: &ProfilesData,
        stamp_ms: u64,
        title: &str,
    ) -> Result<Stored, AgentError> {
        let base = format!("{PREFIX}{stamp_ms:013}");
        let otlp = self.dir.join(format!("{base}.otlp"));
        let bytes = write_profile(data, Format::OtlpBinary)
            .map_err(|e| AgentError::Config(format!("encoding the interval: {e}")))?;
        self.write_atomic(&otlp, &bytes)?;
        let mut svg_bytes = Vec::new();
        let options = FlamegraphOptions {
            title: title.to_owned(),
            ..FlamegraphOptions::default()
        };
        // An interval without samples has no graph; its OTLP file says so.
        let svg = match render(data, &options, &mut svg_bytes) {
            Ok(_) => {
                let path = self.dir.join(format!("{base}.svg"));
                self.write_atomic(&path, &svg_bytes)?;
                Some(path)
            }
            Err(_) => None,
        };
        let compacted = self.compact(stamp_ms)?;
        let removed = self.apply_retention(stamp_ms)?;
        Ok(Stored {
            otlp,
            svg,
            removed,
            compacted,
        })
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
        let action = || format!("writing {}", path.display());
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io_error(action()))?;
        tmp.write_all(bytes).map_err(io_error(action()))?;
        tmp.persist(path).map_err(|e| io_error(action())(e.error))?;
        Ok(())
    }

    /// The stored intervals: base name (which sorts by time) -> its stamp,
    /// files and bytes.
    fn list(&self) -> Result<BTreeMap<String, Interval>, AgentError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(io_error(format!("listing {}", self.dir.display())))?;
        let mut intervals: BTreeMap<String, Interval> = BTreeMap::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(base) = name
                .strip_suffix(".otlp")
                .or_else(|| name.strip_suffix(".svg"))
                .filter(|b| b.starts_with(PREFIX))
            else {
                continue;
            };
            let Some(stamp_ms) = base.strip_prefix(PREFIX).and_then(|s| s.parse().ok()) else {
                continue;
            };
            let size = entry.metadata().map_or(0, |m| m.len());
            let slot = intervals.entry(base.to_owned()).or_insert(Interval {
                stamp_ms,
                files: Vec::new(),
                bytes: 0,
            });
            if name.ends_with(".otlp") {
                slot.files.insert(0, entry.path());
            } else {
                slot.files.push(entry.path());
            }
            slot.bytes += size;
        }
        Ok(intervals)
    }

    /// Merges the intervals of each 5-minute span that ended more than
    /// `compact_after` before `newest_ms` into one OTLP file (named after
    /// the span's first interval), by what ran ([`Merger::coarse`]:
    /// timestamps, addresses, PIDs, thread ids, CPUs and SVGs dropped);
    /// returns how many intervals were merged.
    fn compact(&self, newest_ms: u64) -> Result<usize, AgentError> {
        let horizon = newest_ms.saturating_sub(self.retention.compact_after.as_millis() as u64);
        let mut spans: BTreeMap<u64, Vec<Interval>> = BTreeMap::new();
        for (_, interval) in self.list()? {
            let span = interval.stamp_ms / COMPACT_SPAN_MS;
            if (span + 1) * COMPACT_SPAN_MS <= horizon {
                spans.entry(span).or_default().push(interval);
            }
        }
        let mut compacted = 0;
        for (_, intervals) in spans {
            let done = intervals.len() == 1 && intervals[0].files.len() == 1;
            if done {
                continue;
            }
            let mut merger = Merger::coarse();
            for interval in &intervals {
                let Some(otlp) = interval
                    .files
                    .first()
                    .filter(|p| p.extension().is_some_and(|e| e == "otlp"))
                else {
                    continue;
                };
                if let Some(data) = super::store::read_stored(otlp) {
                    merger.add(&data);
                }
            }
            let target = self
                .dir
                .join(format!("{PREFIX}{:013}.otlp", intervals[0].stamp_ms));
            let bytes = write_profile(&merger.finish(), Format::OtlpBinary)
                .map_err(|e| AgentError::Config(format!("encoding a compacted span: {e}")))?;
            let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)
                .map_err(io_error(format!("compacting into {}", target.display())))?;
            tmp.write_all(&bytes)
                .map_err(io_error(format!("writing {}", target.display())))?;
            // Readers may miss the span for a moment, never count it twice.
            for file in intervals.iter().flat_map(|i| &i.files) {
                if *file != target {
                    remove(file);
                }
            }
            tmp.persist(&target)
                .map_err(|e| io_error(format!("writing {}", target.display()))(e.error))?;
            compacted += intervals.len();
        }
        Ok(compacted)
    }

    /// Removes the intervals (all their files) that started more than
    /// `max_age` before `newest_ms`, then the oldest while more than
    /// `count` intervals or `bytes` bytes are kept; returns how many went.
    fn apply_retention(&self, newest_ms: u64) -> Result<usize, AgentError> {
        let intervals = self.list()?;
        let oldest_kept = newest_ms.saturating_sub(self.retention.max_age.as_millis() as u64);
        let mut total: u64 = intervals.values().map(|i| i.bytes).sum();
        let mut count = intervals.len();
        let mut removed = 0;
        for interval in intervals.values() {
            // The newest interval always stays, whatever its size.
            let too_old = interval.stamp_ms < oldest_kept && interval.stamp_ms < newest_ms;
            if count <= 1
                || (!too_old && count <= self.retention.count && total <= self.retention.bytes)
            {
                break;
            }
            for file in &interval.files {
                remove(file);
            }
            total -= interval.bytes;
            count -= 1;
            removed += 1;
        }
        Ok(removed)
    }
}

struct Interval {
    stamp_ms: u64,
    /// The OTLP file first, when there is one.
    files: Vec<PathBuf>,
    bytes: u64,
}

fn remove(file: &Path) {
    if let Err(e) = std::fs::remove_file(file) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {e}", file.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smolder_profiles_proto::read_folded;

    #[test]
    fn keeps_the_newest_within_count_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data = read_folded("main;work 5\n").unwrap();
        let store = LocalStore::open(
            dir.path(),
            Retention {
                count: 3,
                bytes: u64::MAX,
                ..Retention::default()
            },
        )
        .unwrap();
        for stamp in 1..=5 {
            let stored = store.store(&data, stamp, "t").unwrap();
            assert!(stored.svg.is_some());
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 6);
        assert!(names[0].starts_with("profile-0000000000003"), "{names:?}");
        let back = smolder_profiles_proto::read_profile(
            &std::fs::read(dir.path().join("profile-0000000000005.otlp")).unwrap(),
        )
        .unwrap();
        assert_eq!(back.data, data);

        let one = std::fs::metadata(dir.path().join("profile-0000000000005.otlp"))
            .unwrap()
            .len()
            + std::fs::metadata(dir.path().join("profile-0000000000005.svg"))
                .unwrap()
                .len();
        let by_bytes = LocalStore::open(
            dir.path(),
            Retention {
                count: 100,
                bytes: one * 2,
                ..Retention::default()
            },
        )
        .unwrap();
        let stored = by_bytes.store(&data, 6, "t").unwrap();
        assert_eq!(stored.removed, 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn retention_by_time_removes_old_intervals_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        // Not the store's: left alone.
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        std::fs::write(dir.path().join("profile-old.otlp"), "not a stamp").unwrap();
        let data = read_folded("main;work 5\n").unwrap();
        let hour = 3_600_000u64;
        let store = LocalStore::open(
            dir.path(),
            Retention {
                max_age: std::time::Duration::from_secs(2 * 3600),
                compact_after: std::time::Duration::from_secs(100 * 3600),
                ..Retention::default()
            },
        )
        .unwrap();
        let t0 = 1_700_000_000_000u64;
        for stamp in [t0, t0 + hour, t0 + 2 * hour] {
            let stored = store.store(&data, stamp, "t").unwrap();
            assert_eq!(stored.removed, 0, "{stamp}");
        }
        // At t0 + 2 h, t0 is 2 h old exactly and stays; at t0 + 3 h it goes,
        // and t0 + 1 h is 2 h old exactly.
        let stored = store.store(&data, t0 + 3 * hour, "t").unwrap();
        assert_eq!(stored.removed, 1);
        let names = names(dir.path());
        assert!(
            !names.iter().any(|n| n.contains(&t0.to_string())),
            "{names:?}"
        );
        for kept in [t0 + hour, t0 + 2 * hour, t0 + 3 * hour] {
            assert!(
                names.contains(&format!("profile-{kept:013}.otlp")),
                "{kept}: {names:?}"
            );
            assert!(
                names.contains(&format!("profile-{kept:013}.svg")),
                "{kept}: {names:?}"
            );
        }
        assert!(names.contains(&"notes.txt".to_owned()));
        assert!(names.contains(&"profile-old.otlp".to_owned()));
        assert_eq!(names.len(), 8, "{names:?}");
    }

    #[test]
    fn old_intervals_are_compacted_per_five_minutes_with_the_same_samples() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(
            dir.path(),
            Retention {
                compact_after: std::time::Duration::from_secs(600),
                ..Retention::default()
            },
        )
        .unwrap();
        // 30 intervals of 10 s from a 5-minute boundary, then 20 minutes later.
        let t0 = 1_700_000_100_000u64 - 1_700_000_100_000 % COMPACT_SPAN_MS;
        let mut expected = 0;
        for i in 0..30u64 {
            let data = read_folded(&format!("main;work {}\nmain;idle 1\n", i + 1)).unwrap();
            expected += i + 2;
            store.store(&data, t0 + i * 10_000, "t").unwrap();
        }
        let last = read_folded("main;late 7\n").unwrap();
        let stored = store.store(&last, t0 + 20 * 60_000, "t").unwrap();
        assert_eq!(stored.compacted, 30);
        let names = names(dir.path());
        assert_eq!(
            names,
            [
                format!("profile-{t0:013}.otlp"),
                format!("profile-{:013}.otlp", t0 + 20 * 60_000),
                format!("profile-{:013}.svg", t0 + 20 * 60_000),
            ]
        );
        let merged = smolder_profiles_proto::read_profile(
            &std::fs::read(dir.path().join(&names[0])).unwrap(),
        )
        .unwrap()
        .data;
        let summary = super::super::store::summarize(&merged);
        assert_eq!(summary.samples as u64, expected);
        // Compacting again changes nothing.
        let again = store.store(&last, t0 + 20 * 60_000 + 10_000, "t").unwrap();
        assert_eq!(again.compacted, 0);
    }
}
