//! The local store of `--output-dir`: each interval as an OTLP file
//! (`profile-<unix ms>.otlp`, a binary `ProfilesData`) and a flamegraph
//! (`profile-<unix ms>.svg`), the oldest removed beyond a count or a byte
//! total.
//!
//! Owns only files named `profile-*` in its directory; files are written
//! under a temporary name and renamed, so readers never see half a file.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use smolder_flamegraph::{render, FlamegraphOptions};
use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::{write_profile, Format};

use super::config::Retention;
use super::AgentError;

const PREFIX: &str = "profile-";

pub struct LocalStore {
    dir: PathBuf,
    retention: Retention,
}

/// What one interval left on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub otlp: PathBuf,
    pub svg: Option<PathBuf>,
    pub removed: usize,
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
        let removed = self.apply_retention()?;
        Ok(Stored { otlp, svg, removed })
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
        let action = || format!("writing {}", path.display());
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io_error(action()))?;
        tmp.write_all(bytes).map_err(io_error(action()))?;
        tmp.persist(path).map_err(|e| io_error(action())(e.error))?;
        Ok(())
    }

    /// Removes the oldest intervals (both files) while more than
    /// `count` intervals or `bytes` bytes are kept; returns how many went.
    fn apply_retention(&self) -> Result<usize, AgentError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(io_error(format!("listing {}", self.dir.display())))?;
        // interval base name -> (files, total bytes); names sort by time.
        let mut intervals: std::collections::BTreeMap<String, (Vec<PathBuf>, u64)> =
            Default::default();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(base) = name
                .strip_suffix(".otlp")
                .or_else(|| name.strip_suffix(".svg"))
                .filter(|b| b.starts_with(PREFIX))
            else {
                continue;
            };
            let size = entry.metadata().map_or(0, |m| m.len());
            let slot = intervals.entry(base.to_owned()).or_default();
            slot.0.push(entry.path());
            slot.1 += size;
        }
        let mut total: u64 = intervals.values().map(|(_, b)| b).sum();
        let mut count = intervals.len();
        let mut removed = 0;
        for (files, bytes) in intervals.values() {
            // The newest interval always stays, whatever its size.
            if count <= 1 || (count <= self.retention.count && total <= self.retention.bytes) {
                break;
            }
            for file in files {
                if let Err(e) = std::fs::remove_file(file) {
                    tracing::warn!("removing {}: {e}", file.display());
                }
            }
            total -= bytes;
            count -= 1;
            removed += 1;
        }
        Ok(removed)
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
            },
        )
        .unwrap();
        let stored = by_bytes.store(&data, 6, "t").unwrap();
        assert_eq!(stored.removed, 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
    }
}
