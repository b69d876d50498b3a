//! Reading the local store (`--output-dir`) for the page and `/profile`:
//! which stored intervals a time range covers, their sample totals, and
//! their merge, one file at a time into an interning [`Merger`].
//!
//! Owns only reading `profile-*.otlp` files; `local.rs` writes, compacts
//! and removes them. A file is decoded once for its summary (cached by
//! name, size and modification time), and again only to be merged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use smolder_profiles_proto::otlp::common::v1::any_value::Value;
use smolder_profiles_proto::otlp::common::v1::KeyValue;
use smolder_profiles_proto::otlp::profiles::v1development::{ProfilesData, Sample};
use smolder_profiles_proto::otlp::resource::v1::Resource;
use smolder_profiles_proto::{read_profile, sample_weight, Folded, Merger, ProfileView};

/// Stored intervals are at most this long (an agent interval, or a
/// compacted file): a file named more than this before a range cannot
/// reach into it, so it is not opened.
pub const MAX_SPAN_NS: u64 = 3_600_000_000_000;

/// Largest stored file read (a file of the store is a few MiB at most).
const MAX_FILE_BYTES: u64 = 256 << 20;

/// What one stored file covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntervalSummary {
    pub start_ns: u64,
    pub duration_ns: u64,
    /// Total weight of the samples of the first profile type (CPU samples).
    pub samples: i64,
    /// Samples per second per CPU the interval was taken at (0 if unknown).
    pub frequency_hz: u64,
}

/// One stored file and what it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredInterval {
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub summary: IntervalSummary,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("listing {dir}: {source}")]
    List {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which samples a view keeps; every list empty keeps all. Values of one
/// list are alternatives; lists must all match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selection {
    /// `service.name` of the resource.
    pub services: Vec<String>,
    /// `process.pid` of the resource.
    pub pids: Vec<i64>,
    /// `process.executable.name`, or the file name of `process.executable.path`.
    pub executables: Vec<String>,
    /// `thread.name` or `thread.id` of the sample.
    pub threads: Vec<String>,
}

fn text_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        _ => None,
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.pids.is_empty()
            && self.executables.is_empty()
            && self.threads.is_empty()
    }

    /// Whether a resource (a process) is selected, threads aside.
    pub fn keeps_resource(&self, resource: Option<&Resource>) -> bool {
        let attrs = resource.map_or(&[][..], |r| &r.attributes[..]);
        if !self.services.is_empty() {
            let service = text_of(attribute(attrs, "service.name"));
            if !service.is_some_and(|s| self.services.contains(&s)) {
                return false;
            }
        }
        if !self.pids.is_empty() {
            let pid = match attribute(attrs, "process.pid") {
                Some(Value::IntValue(pid)) => Some(*pid),
                _ => None,
            };
            if !pid.is_some_and(|p| self.pids.contains(&p)) {
                return false;
            }
        }
        if !self.executables.is_empty() {
            let name = text_of(attribute(attrs, "process.executable.name"));
            let path = text_of(attribute(attrs, "process.executable.path"))
                .map(|p| p.rsplit('/').next().unwrap_or_default().to_owned());
            let hit = [name, path]
                .into_iter()
                .flatten()
                .any(|n| self.executables.contains(&n));
            if !hit {
                return false;
            }
        }
        true
    }

    /// Whether a sample is selected.
    pub fn keeps(
        &self,
        view: &ProfileView<'_>,
        resource: Option<&Resource>,
        sample: &Sample,
    ) -> bool {
        if !self.keeps_resource(resource) {
            return false;
        }
        if self.threads.is_empty() {
            return true;
        }
        ["thread.name", "thread.id"].iter().any(|key| {
            view.attribute(&sample.attribute_indices, key)
                .and_then(|v| text_of(v.value.as_ref()))
                .is_some_and(|t| self.threads.contains(&t))
        })
    }
}

/// The stamp (unix ms) in a stored file's name: `profile-<ms>.otlp`.
pub fn stamp_of(name: &str) -> Option<u64> {
    name.strip_prefix("profile-")?
        .strip_suffix(".otlp")?
        .parse()
        .ok()
}

/// Reads one stored file; `None` (logged) when it cannot be read or
/// decoded (a file being replaced, or damaged).
pub fn read_stored(path: &Path) -> Option<ProfilesData> {
    let bytes = match std::fs::metadata(path) {
        Ok(m) if m.len() <= MAX_FILE_BYTES => std::fs::read(path),
        Ok(m) => {
            tracing::warn!("{}: {} bytes, not read", path.display(), m.len());
            return None;
        }
        Err(e) => Err(e),
    };
    match bytes.map(|b| read_profile(&b)) {
        Ok(Ok(decoded)) => Some(decoded.data),
        Ok(Err(e)) => {
            tracing::warn!("{}: {e}", path.display());
            None
        }
        // Removed by the retention between listing and reading.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!("reading {}: {e}", path.display());
            None
        }
    }
}

/// What a stored profile covers: its time range and the weight of its
/// first profile type.
pub fn summarize(data: &ProfilesData) -> IntervalSummary {
    let view = ProfileView::new(data);
    let first = view
        .profiles()
        .next()
        .map(|(_, p)| view.value_type(p.sample_type.as_ref()));
    let (mut start, mut end, mut samples, mut period) = (u64::MAX, 0u64, 0i64, 0i64);
    for (_, p) in view.profiles() {
        if p.time_unix_nano > 0 {
            start = start.min(p.time_unix_nano);
            end = end.max(p.time_unix_nano.saturating_add(p.duration_nano));
        }
        if Some(view.value_type(p.sample_type.as_ref())) == first {
            samples = p
                .samples
                .iter()
                .fold(samples, |a, s| a.saturating_add(sample_weight(s)));
            if period == 0 {
                period = p.period;
            }
        }
    }
    if start == u64::MAX {
        (start, end) = (0, 0);
    }
    IntervalSummary {
        start_ns: start,
        duration_ns: end - start,
        samples,
        frequency_hz: if period > 0 {
            (1_000_000_000 / period) as u64
        } else {
            0
        },
    }
}

type FileKey = (u64, Option<SystemTime>);

/// The store's files as the page sees them.
pub struct StoreReader {
    dir: PathBuf,
    summaries: Mutex<HashMap<String, (FileKey, IntervalSummary)>>,
}

/// A merged range.
pub struct Merged {
    pub data: ProfilesData,
    /// Total weight of the samples kept.
    pub samples: i64,
    /// Files merged.
    pub intervals: usize,
    /// What the bound on distinct stacks folded into "[other stacks]".
    pub folded: Folded,
}

impl StoreReader {
    pub fn new(dir: &Path) -> StoreReader {
        StoreReader {
            dir: dir.to_owned(),
            summaries: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stored intervals that overlap `[from_ns, to_ns)`, oldest first.
    pub fn intervals(&self, from_ns: u64, to_ns: u64) -> Result<Vec<StoredInterval>, StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| StoreError::List {
            dir: self.dir.clone(),
            source,
        })?;
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stamp_ms) = stamp_of(&name) else {
                continue;
            };
            let stamp_ns = stamp_ms.saturating_mul(1_000_000);
            if stamp_ns >= to_ns || stamp_ns.saturating_add(MAX_SPAN_NS) < from_ns {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let key = (meta.len(), meta.modified().ok());
            let cached = self
                .summaries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .filter(|(k, _)| *k == key)
                .map(|(_, s)| *s);
            let summary = match cached {
                Some(s) => s,
                None => {
                    let Some(data) = read_stored(&entry.path()) else {
                        continue;
                    };
                    let s = summarize(&data);
                    self.summaries
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(name.clone(), (key, s));
                    s
                }
            };
            seen.push(name.clone());
            let end = summary.start_ns.saturating_add(summary.duration_ns.max(1));
            if summary.start_ns < to_ns && end > from_ns {
                out.push(StoredInterval {
                    path: entry.path(),
                    name,
                    bytes: meta.len(),
                    summary,
                });
            }
        }
        out.sort_by(|a, b| {
            a.summary
                .start_ns
                .cmp(&b.summary.start_ns)
                .then(a.name.cmp(&b.name))
        });
        // Forget files the retention removed.
        let mut summaries = self
            .summaries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if summaries.len() > 2 * seen.len() + 64 {
            summaries.retain(|name, _| self.dir.join(name).exists());
        }
        Ok(out)
    }

    /// Merges `intervals`, keeping what `selection` selects: one file read
    /// and decoded at a time, timestamps dropped, so memory grows with the
    /// distinct stacks of the range, not with its length. By default the
    /// merge is by what ran ([`Merger::coarse`]: no addresses, PIDs, thread
    /// ids or CPUs), so it does not grow with the processes a churning host
    /// starts either; `full_detail` keeps them. It holds at most
    /// `max_stacks` distinct stacks ([`Merger::limiting_stacks`]): past
    /// that, the lightest are summed into one "[other stacks]" frame per
    /// program, so its totals stay exact whatever the range.
    pub fn merge(
        &self,
        intervals: &[StoredInterval],
        selection: &Selection,
        full_detail: bool,
        max_stacks: usize,
    ) -> Merged {
        let merger = if full_detail {
            Merger::without_timestamps()
        } else {
            Merger::coarse()
        };
        let mut merger = merger.limiting_stacks(max_stacks);
        let mut merged = 0;
        for interval in intervals {
            let Some(data) = read_stored(&interval.path) else {
                continue;
            };
            if selection.is_empty() {
                merger.add(&data);
            } else {
                merger.add_selected(&data, |view, resource, sample| {
                    selection.keeps(view, resource, sample)
                });
            }
            merged += 1;
        }
        let (samples, folded) = (merger.total(), merger.folded());
        Merged {
            data: merger.finish(),
            samples,
            intervals: merged,
            folded,
        }
    }
}
