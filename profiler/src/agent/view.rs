//! The view of any time range of the local store: `/profile` (the merged
//! range in every download format) and `/view` (the page: range picker,
//! CPU-over-time chart, top functions, flamegraph and icicle graph with
//! search, diff of two ranges, download links).
//!
//! Owns the query language (`last=`, `from=`/`to=`, filters), the
//! renderings of a merged range and their cache; reads the store only
//! through [`StoreReader`]. Everything the page needs is in the page: no
//! script or style from anywhere else.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use smolder_flamegraph::{render, render_diff, FlamegraphOptions, OFF_CPU_SAMPLE_TYPE};
use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::{
    encode_json, encode_pprof, fold, write_chrome_cpuprofile, write_folded, write_profile,
    write_speedscope, FoldOptions, Folded, Format, ProfileView, OTHER_STACKS,
};

use super::budget::MemoryBudget;
use super::config::{parse_duration, DEFAULT_MEMORY_LIMIT};
use super::report::CPU_SAMPLE_TYPE;
use super::store::{Merged, Selection, StoreReader, StoredInterval};

/// Renderings kept for reloads, all together at most this many bytes
/// unless told otherwise ([`ViewState::with_budget`]).
const CACHE_BYTES: usize = 32 << 20;
/// Peak bytes one distinct stack of a merged range takes while a request
/// is made: the merge (its interned stack and sample, the dictionary
/// rebuilt when it folds) and the costliest rendering of it (the page:
/// folded text, inferno's frames, the top table). Measured with
/// `smolder-bench view` at several `stacks=` (bench/README.md §9).
pub const BYTES_PER_STACK: usize = 5 << 10;
/// A range without `last=`/`from=` is the last hour.
const DEFAULT_LAST: Duration = Duration::from_secs(3600);

/// A download format of `/profile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViewFormat {
    Otlp,
    OtlpJson,
    Pprof,
    Svg,
    Folded,
    Speedscope,
    Cpuprofile,
}

impl ViewFormat {
    pub const ALL: [ViewFormat; 7] = [
        ViewFormat::Pprof,
        ViewFormat::Otlp,
        ViewFormat::OtlpJson,
        ViewFormat::Svg,
        ViewFormat::Folded,
        ViewFormat::Speedscope,
        ViewFormat::Cpuprofile,
    ];

    pub fn parse(text: &str) -> Option<ViewFormat> {
        Some(match text {
            "otlp" => ViewFormat::Otlp,
            "otlp-json" | "json" => ViewFormat::OtlpJson,
            "pprof" => ViewFormat::Pprof,
            "svg" => ViewFormat::Svg,
            "folded" => ViewFormat::Folded,
            "speedscope" => ViewFormat::Speedscope,
            "cpuprofile" | "chrome" => ViewFormat::Cpuprofile,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ViewFormat::Otlp => "otlp",
            ViewFormat::OtlpJson => "otlp-json",
            ViewFormat::Pprof => "pprof",
            ViewFormat::Svg => "svg",
            ViewFormat::Folded => "folded",
            ViewFormat::Speedscope => "speedscope",
            ViewFormat::Cpuprofile => "cpuprofile",
        }
    }

    fn label(self) -> &'static str {
        match self {
            ViewFormat::Otlp => "OTLP (protobuf)",
            ViewFormat::OtlpJson => "OTLP/JSON",
            ViewFormat::Pprof => "pprof (go tool pprof)",
            ViewFormat::Svg => "flamegraph SVG",
            ViewFormat::Folded => "folded stacks",
            ViewFormat::Speedscope => "speedscope",
            ViewFormat::Cpuprofile => "Chrome .cpuprofile (Firefox Profiler)",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ViewFormat::Otlp | ViewFormat::Pprof => "application/octet-stream",
            ViewFormat::OtlpJson | ViewFormat::Speedscope | ViewFormat::Cpuprofile => {
                "application/json"
            }
            ViewFormat::Svg => "image/svg+xml",
            ViewFormat::Folded => "text/plain; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            ViewFormat::Otlp => "otlp",
            ViewFormat::OtlpJson => "otlp.json",
            ViewFormat::Pprof => "pb.gz",
            ViewFormat::Svg => "svg",
            ViewFormat::Folded => "folded.txt",
            ViewFormat::Speedscope => "speedscope.json",
            ViewFormat::Cpuprofile => "cpuprofile",
        }
    }
}

/// A time range, unix nanoseconds, `[from, to)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Range {
    pub from_ns: u64,
    pub to_ns: u64,
}

impl Range {
    fn len_ns(&self) -> u64 {
        self.to_ns - self.from_ns
    }
}

/// A parsed query of `/profile` or `/view`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewQuery {
    pub range: Range,
    /// How the range was asked for (`last=1h`), to keep in links.
    pub last: Option<String>,
    pub selection: Selection,
    pub format: ViewFormat,
    pub icicle: bool,
    /// The page: also a diff against `before`.
    pub diff: bool,
    pub before: Option<Range>,
    pub search: String,
    /// `detail=full`: keep addresses, PIDs, thread ids and CPUs (a merge
    /// whose size grows with the processes of the range) instead of merging
    /// by what ran (the default, bounded by the distinct code paths).
    pub full_detail: bool,
    /// `stacks=N`: hold at most N distinct stacks (never more than the
    /// memory share allows), the rest folded into "[other stacks]".
    pub max_stacks: Option<usize>,
}

/// Decodes `application/x-www-form-urlencoded` text.
fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(a), Some(b)) => {
                        out.push((a * 16 + b) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes a query value.
fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Query pairs, decoded, in order.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-11-30T05:43:36Z` for unix nanoseconds.
pub fn format_time(ns: u64) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// A point in time: unix seconds (`1764481416`, `1764481416.5`) or RFC
/// 3339 (`2026-11-30T05:43:36Z`, `…+01:00`; without an offset, UTC; the
/// seconds may be left out, as an HTML `datetime-local` field sends).
pub fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && (0.0..1e11).contains(&secs) {
            return Ok((secs * 1e9) as u64);
        }
        return Err(format!("{text}: unix seconds out of range"));
    }
    let bad = || format!("{text}: not unix seconds nor RFC 3339 (2026-11-30T05:43:36Z)");
    let b = text.as_bytes();
    if b.len() < 16 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, String> {
        text.get(r).and_then(|s| s.parse().ok()).ok_or_else(bad)
    };
    let (y, mo, d, h, mi) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
    );
    let mut rest = &text[16..];
    let mut sec = 0.0f64;
    if let Some(r) = rest.strip_prefix(':') {
        let end = r
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(r.len());
        sec = r[..end].parse().map_err(|_| bad())?;
        rest = &r[end..];
    }
    let offset_s: i64 = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(bad()),
            };
            let (oh, om) = rest[1..].split_once(':').ok_or_else(bad)?;
            let (oh, om): (i64, i64) = (
                oh.parse().map_err(|_| bad())?,
                om.parse().map_err(|_| bad())?,
            );
            sign * (oh * 3600 + om * 60)
        }
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec >= 61.0 {
        return Err(bad());
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 - offset_s;
    if secs < 0 {
        return Err(bad());
    }
    Ok(secs as u64 * 1_000_000_000 + (sec * 1e9) as u64)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn list<T>(
    pairs: &[(String, String)],
    key: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, String> {
    let mut out = Vec::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == key) {
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out.push(parse(item).ok_or_else(|| format!("{key}={item}: not understood"))?);
        }
    }
    Ok(out)
}

fn range_of(
    pairs: &[(String, String)],
    last_key: &str,
    from_key: &str,
    to_key: &str,
    now: u64,
) -> Result<Option<(Range, Option<String>)>, String> {
    let get = |key: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, v)| k == key && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_owned())
    };
    let (last, from, to) = (get(last_key), get(from_key), get(to_key));
    let to_ns = match &to {
        Some(t) => parse_time(t).map_err(|e| format!("{to_key}={e}"))?,
        None => now,
    };
    let (from_ns, last) = match (&from, &last) {
        (Some(f), _) => (parse_time(f).map_err(|e| format!("{from_key}={e}"))?, None),
        (None, Some(l)) => {
            let d = parse_duration(l).map_err(|e| format!("{last_key}={e}"))?;
            (to_ns.saturating_sub(d.as_nanos() as u64), Some(l.clone()))
        }
        (None, None) if to.is_some() => {
            return Err(format!("{to_key}= needs {from_key}= or {last_key}="))
        }
        (None, None) => return Ok(None),
    };
    if from_ns >= to_ns {
        return Err(format!(
            "the range is empty: {} is not before {}",
            format_time(from_ns),
            format_time(to_ns)
        ));
    }
    Ok(Some((Range { from_ns, to_ns }, last)))
}

impl ViewQuery {
    /// Parses a query string; `default_format` when it names none.
    pub fn parse(query: &str, default_format: ViewFormat) -> Result<ViewQuery, String> {
        let pairs = query_pairs(query);
        let now = now_ns();
        let (range, last) = match range_of(&pairs, "last", "from", "to", now)? {
            Some(r) => r,
            None => (
                Range {
                    from_ns: now - DEFAULT_LAST.as_nanos() as u64,
                    to_ns: now,
                },
                Some("1h".to_owned()),
            ),
        };
        let format = match pairs.iter().rev().find(|(k, _)| k == "format") {
            Some((_, f)) => ViewFormat::parse(f).ok_or_else(|| {
                format!(
                    "format={f}: use one of {}",
                    ViewFormat::ALL.map(ViewFormat::name).join(", ")
                )
            })?,
            None => default_format,
        };
        let flag = |key: &str| {
            pairs
                .iter()
                .any(|(k, v)| k == key && matches!(v.as_str(), "1" | "true" | "on" | ""))
        };
        let before = range_of(
            &pairs,
            "before_last",
            "before_from",
            "before_to",
            range.from_ns,
        )?
        .map(|(r, _)| r);
        Ok(ViewQuery {
            range,
            last,
            selection: Selection {
                services: list(&pairs, "service", |s| Some(s.to_owned()))?,
                pids: list(&pairs, "pid", |s| s.parse().ok())?,
                executables: list(&pairs, "exe", |s| Some(s.to_owned()))?,
                threads: list(&pairs, "thread", |s| Some(s.to_owned()))?,
            },
            format,
            icicle: flag("icicle"),
            diff: flag("diff") || before.is_some(),
            before,
            search: pairs
                .iter()
                .rev()
                .find(|(k, _)| k == "search")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            full_detail: match pairs.iter().rev().find(|(k, _)| k == "detail") {
                None => false,
                Some((_, d)) if d == "full" => true,
                Some((_, d)) if d == "coarse" => false,
                Some((_, d)) => return Err(format!("detail={d}: use full or coarse")),
            },
            max_stacks: match pairs.iter().rev().find(|(k, _)| k == "stacks") {
                None => None,
                Some((_, n)) => Some(
                    n.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("stacks={n}: a number of stacks, at least 1"))?,
                ),
            },
        })
    }

    /// The range compared against in a diff: the one asked for, else the
    /// same length just before.
    pub fn before_range(&self) -> Range {
        self.before.unwrap_or(Range {
            from_ns: self.range.from_ns.saturating_sub(self.range.len_ns()),
            to_ns: self.range.from_ns,
        })
    }

    /// The query string of the range and filters (no format), for links.
    pub fn range_query(&self) -> String {
        let mut q = match &self.last {
            Some(last) => format!("last={}", url_encode(last)),
            None => format!(
                "from={}&to={}",
                url_encode(&format_time(self.range.from_ns)),
                url_encode(&format_time(self.range.to_ns))
            ),
        };
        q.push_str(&self.filter_query());
        q
    }

    fn filter_query(&self) -> String {
        let mut q = String::new();
        let s = &self.selection;
        for (key, values) in [
            ("service", &s.services),
            ("exe", &s.executables),
            ("thread", &s.threads),
        ] {
            if !values.is_empty() {
                let _ = write!(q, "&{key}={}", url_encode(&values.join(",")));
            }
        }
        if !s.pids.is_empty() {
            let pids: Vec<String> = s.pids.iter().map(i64::to_string).collect();
            let _ = write!(q, "&pid={}", pids.join(","));
        }
        if let Some(n) = self.max_stacks {
            let _ = write!(q, "&stacks={n}");
        }
        q
    }
}

/// What identifies a rendering: what was asked and which files (by name
/// and size) it came from, so a new interval makes a new key.
fn cache_key(what: &str, query: &ViewQuery, files: &[&[StoredInterval]]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    what.hash(&mut h);
    query.selection.hash(&mut h);
    query.format.hash(&mut h);
    query.icicle.hash(&mut h);
    query.diff.hash(&mut h);
    query.full_detail.hash(&mut h);
    query.max_stacks.hash(&mut h);
    for list in files {
        list.len().hash(&mut h);
        for f in *list {
            f.name.hash(&mut h);
            f.bytes.hash(&mut h);
        }
    }
    h.finish()
}

/// A response of `/profile` or `/view`, and what its merge folded.
#[derive(Debug, Default)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    pub folded: Folded,
}

/// Renderings by key, bounded in bytes, oldest out first.
struct RenderCache {
    entries: HashMap<u64, Arc<Rendered>>,
    order: VecDeque<u64>,
    bytes: usize,
    capacity: usize,
}

impl Default for RenderCache {
    fn default() -> Self {
        RenderCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            capacity: CACHE_BYTES,
        }
    }
}

impl RenderCache {
    fn get(&self, key: u64) -> Option<Arc<Rendered>> {
        self.entries.get(&key).cloned()
    }

    fn put(&mut self, key: u64, value: Arc<Rendered>) {
        if value.bytes.len() > self.capacity / 4 || self.entries.contains_key(&key) {
            return;
        }
        self.bytes += value.bytes.len();
        self.entries.insert(key, value);
        self.order.push_back(key);
        while self.bytes > self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(v) = self.entries.remove(&old) {
                self.bytes -= v.bytes.len();
            }
        }
    }
}

/// Cache statistics, for tests and `/metrics`-like checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViewStats {
    pub renders: u64,
    pub cache_hits: u64,
    /// Merges that folded stacks into "[other stacks]".
    pub folding_merges: u64,
    /// Stacks they folded ([`Folded::stacks`]).
    pub stacks_folded: u64,
}

/// The state behind `/profile` and `/view`.
pub struct ViewState {
    store: Option<StoreReader>,
    cache: Mutex<RenderCache>,
    /// One merge at a time: memory stays that of one merged range.
    turn: Mutex<()>,
    stats: Mutex<ViewStats>,
    /// Distinct stacks one request may hold, from its memory share.
    max_stacks: usize,
}

/// A failed request: status and a line for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewError {
    pub status: u16,
    pub message: String,
}

fn no_store() -> ViewError {
    ViewError {
        status: 404,
        message: "the agent keeps no local store: start it with --output-dir DIR".into(),
    }
}

impl ViewState {
    /// The view within the default memory limit's shares.
    pub fn new(store: Option<StoreReader>) -> ViewState {
        ViewState {
            store,
            cache: Mutex::new(RenderCache::default()),
            turn: Mutex::new(()),
            stats: Mutex::new(ViewStats::default()),
            max_stacks: 0,
        }
        .with_budget(&MemoryBudget::new(DEFAULT_MEMORY_LIMIT))
    }

    /// Keeps renderings for reloads within `budget.render_cache_bytes()`,
    /// and each merge within `budget.range_view_bytes()`.
    pub fn with_budget(mut self, budget: &MemoryBudget) -> ViewState {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .capacity = budget.render_cache_bytes();
        self.max_stacks = (budget.range_view_bytes() / BYTES_PER_STACK).max(1);
        self
    }

    /// Distinct stacks a merged range holds at most.
    pub fn max_stacks(&self) -> usize {
        self.max_stacks
    }

    /// The bound of one request's merge: its `stacks=`, at most the share's.
    fn stack_limit(&self, query: &ViewQuery) -> usize {
        query
            .max_stacks
            .map_or(self.max_stacks, |n| n.min(self.max_stacks))
    }

    fn count_folded(&self, folded: Folded) {
        if folded.stacks > 0 {
            let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
            stats.folding_merges += 1;
            stats.stacks_folded += folded.stacks;
        }
    }

    pub fn stats(&self) -> ViewStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached rendering of `key`, counted as a hit.
    fn cache_hit(&self, key: u64) -> Option<Arc<Rendered>> {
        let hit = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)?;
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cache_hits += 1;
        Some(hit)
    }

    fn cached(
        &self,
        key: u64,
        make: impl FnOnce() -> Result<Rendered, ViewError>,
    ) -> Result<Arc<Rendered>, ViewError> {
        if let Some(hit) = self.cache_hit(key) {
            return Ok(hit);
        }
        let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        // Made while waiting for the turn?
        if let Some(hit) = self.cache_hit(key) {
            return Ok(hit);
        }
        let value = Arc::new(make()?);
        self.count_folded(value.folded);
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .renders += 1;
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(key, Arc::clone(&value));
        Ok(value)
    }

    fn intervals(&self, range: Range) -> Result<Vec<StoredInterval>, ViewError> {
        let store = self.store.as_ref().ok_or_else(no_store)?;
        store
            .intervals(range.from_ns, range.to_ns)
            .map_err(|e| ViewError {
                status: 500,
                message: e.to_string(),
            })
    }

    /// `/profile`: the merged range in the format asked for.
    pub fn profile(&self, query: &ViewQuery) -> Result<Arc<Rendered>, ViewError> {
        let store = self.store.as_ref().ok_or_else(no_store)?;
        let files = self.intervals(query.range)?;
        if files.is_empty() {
            return Err(ViewError {
                status: 404,
                message: format!(
                    "no interval stored between {} and {} in {}",
                    format_time(query.range.from_ns),
                    format_time(query.range.to_ns),
                    store.dir().display()
                ),
            });
        }
        let key = cache_key("profile", query, &[&files]);
        let max_stacks = self.stack_limit(query);
        self.cached(key, || {
            let merged = store.merge(&files, &query.selection, query.full_detail, max_stacks);
            let cpu_samples = merged.samples - off_cpu_ns(&merged.data);
            let mut title = title(query, cpu_samples);
            if merged.folded.stacks > 0 {
                let _ = write!(
                    title,
                    " ({} stacks folded into {OTHER_STACKS})",
                    merged.folded.stacks
                );
            }
            Ok(Rendered {
                bytes: encode(&merged.data, query, &title)?,
                folded: merged.folded,
            })
        })
    }

    /// `/view`: the page.
    pub fn page(&self, query: &ViewQuery) -> Result<Arc<Rendered>, ViewError> {
        let store = self.store.as_ref().ok_or_else(no_store)?;
        let files = self.intervals(query.range)?;
        let before_files = if query.diff {
            self.intervals(query.before_range())?
        } else {
            Vec::new()
        };
        let key = cache_key(
            &format!("page {}", query.search),
            query,
            &[&files, &before_files],
        );
        // A diff holds two merges: half the stacks each.
        let max_stacks = match query.diff {
            true => (self.stack_limit(query) / 2).max(1),
            false => self.stack_limit(query),
        };
        self.cached(key, || {
            let merged = store.merge(&files, &query.selection, query.full_detail, max_stacks);
            let before = query.diff.then(|| {
                store
                    .merge(
                        &before_files,
                        &query.selection,
                        query.full_detail,
                        max_stacks,
                    )
                    .data
            });
            let cpu_samples = merged.samples - off_cpu_ns(&merged.data);
            let html = page_html(
                query,
                &files,
                &merged,
                cpu_samples,
                max_stacks,
                before.as_ref(),
            );
            Ok(Rendered {
                bytes: html.into_bytes(),
                folded: merged.folded,
            })
        })
    }
}

/// Nanoseconds waited in the off-CPU profiles of `data`.
fn off_cpu_ns(data: &ProfilesData) -> i64 {
    ProfileView::new(data).total_of_sample_type(OFF_CPU_SAMPLE_TYPE)
}

fn title(query: &ViewQuery, samples: i64) -> String {
    format!(
        "smolder: {} to {}, {samples} samples",
        format_time(query.range.from_ns),
        format_time(query.range.to_ns)
    )
}

fn encode(data: &ProfilesData, query: &ViewQuery, title: &str) -> Result<Vec<u8>, ViewError> {
    let failed = |e: String| ViewError {
        status: 500,
        message: e,
    };
    Ok(match query.format {
        ViewFormat::Otlp => {
            write_profile(data, Format::OtlpBinary).map_err(|e| failed(e.to_string()))?
        }
        ViewFormat::OtlpJson => encode_json(data).map_err(|e| failed(e.to_string()))?,
        ViewFormat::Pprof => encode_pprof(data),
        ViewFormat::Folded => write_folded(data, &FoldOptions::default()).into_bytes(),
        ViewFormat::Speedscope => write_speedscope(data, title),
        ViewFormat::Cpuprofile => write_chrome_cpuprofile(data),
        ViewFormat::Svg => {
            let mut svg = Vec::new();
            let options = FlamegraphOptions {
                title: title.to_owned(),
                process_roots: true,
                icicle: query.icicle,
                sample_type: Some(CPU_SAMPLE_TYPE.into()),
                ..FlamegraphOptions::default()
            };
            render(data, &options, &mut svg).map_err(|e| ViewError {
                status: 404,
                message: format!("no flamegraph: {e}"),
            })?;
            svg
        }
    })
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An inferno SVG as an element of the page: without its XML prologue,
/// and without its script (the page's own script searches every graph;
/// the standalone SVG keeps inferno's zoom).
fn inline_graph(svg: &[u8]) -> String {
    let text = String::from_utf8_lossy(svg);
    let Some(start) = text.find("<svg") else {
        return String::new();
    };
    let mut out = text[start..].replacen(" onload=\"init(evt)\"", "", 1);
    while let (Some(a), Some(b)) = (out.find("<script"), out.find("</script>")) {
        if b < a {
            break;
        }
        out.replace_range(a..b + "</script>".len(), "");
    }
    out
}

/// Self and total samples per function, most self first (as `pprof -top`).
pub fn top_functions(data: &ProfilesData) -> Vec<(String, i64, i64)> {
    let options = FoldOptions {
        annotate: false,
        sample_type: Some(CPU_SAMPLE_TYPE.into()),
        ..FoldOptions::default()
    };
    let mut by_name: HashMap<String, (i64, i64)> = HashMap::new();
    let mut seen: Vec<&str> = Vec::new();
    let stacks = fold(data, &options);
    for (stack, count) in &stacks {
        seen.clear();
        let frames: Vec<&str> = stack.split(';').collect();
        for (i, frame) in frames.iter().enumerate() {
            let entry = by_name.entry((*frame).to_owned()).or_default();
            if i + 1 == frames.len() {
                entry.0 += count;
            }
            if !seen.contains(frame) {
                seen.push(frame);
                entry.1 += count;
            }
        }
    }
    let mut rows: Vec<(String, i64, i64)> = by_name
        .into_iter()
        .map(|(name, (own, total))| (name, own, total))
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
    rows
}

const TOP_ROWS: usize = 200;

const PAGE_STYLE: &str = "body{font-family:sans-serif;margin:1.2em;color:#222}\
a{color:#1a5fb4}nav a,nav button{margin-right:.6em}.on{font-weight:bold}\
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.15em .7em;text-align:left;border-bottom:1px solid #ddd}\
th{cursor:pointer;user-select:none}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.graph{border:1px solid #ccc;margin-top:.5em}.graph svg{display:block;width:100%;height:auto}\
.muted{color:#777}#chart{border:1px solid #ccc;cursor:crosshair;display:block;width:100%;height:120px}\
#chart rect.bar{fill:#e8623c}#chart rect.sel{fill:rgba(26,95,180,.25)}\
.tabs button{padding:.3em .8em}.hidden{display:none}.scroll{max-height:24em;overflow:auto;display:inline-block}\
g.searched rect{fill:rgb(230,0,230)!important}tr.searched td{background:#f6d0f6}\
form{display:inline}input[type=text]{width:14em}";

/// The page's own script: range selection on the chart, sorting the
/// table, search in the graphs and table, flame/icicle tabs.
const PAGE_SCRIPT: &str = r#"
(function(){
var base = document.body.dataset.filters || '';
var chart = document.getElementById('chart');
if (chart) {
  var from = +chart.dataset.from, to = +chart.dataset.to, start = null;
  var sel = document.getElementById('chart-selection');
  var at = function(e){ var r = chart.getBoundingClientRect(); return Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)); };
  chart.addEventListener('mousedown', function(e){ start = at(e); e.preventDefault(); });
  chart.addEventListener('mousemove', function(e){ if (start === null) return; var x = at(e);
    sel.setAttribute('x', (Math.min(start, x) * 1000).toFixed(1)); sel.setAttribute('width', (Math.abs(x - start) * 1000).toFixed(1)); });
  chart.addEventListener('mouseup', function(e){ if (start === null) return; var x = at(e);
    var a = Math.min(start, x), b = Math.max(start, x); start = null;
    if (b - a < 0.005) return;
    var f = Math.floor((from + a * (to - from)) / 1000), t = Math.ceil((from + b * (to - from)) / 1000);
    window.location.search = '?from=' + f + '&to=' + t + base; });
}
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var desc = th.dataset.dir !== 'desc'; th.dataset.dir = desc ? 'desc' : 'asc';
    rows.sort(function(a, b){ var x = a.cells[col].dataset.v || a.cells[col].textContent, y = b.cells[col].dataset.v || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y); var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y); return desc ? -c : c; });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
function search(term){
  var out = document.getElementById('search-result');
  var re = null;
  if (term) { try { re = new RegExp(term); } catch (e) { out.textContent = 'not a regular expression: ' + e.message; return; } }
  var text = [];
  document.querySelectorAll('.graph[data-total]').forEach(function(graph){
    var total = +graph.dataset.total, matched = 0, spans = [];
    graph.querySelectorAll('g').forEach(function(g){
      var t = g.querySelector('title'), r = g.querySelector('rect');
      if (!t || !r) return;
      var name = t.textContent.replace(/ \([^()]*\)$/, '');
      var hit = re !== null && re.test(name);
      g.classList.toggle('searched', hit);
      if (hit) {
        var x = +r.getAttribute('fg:x'), w = +r.getAttribute('fg:w');
        if (!spans.some(function(s){ return x >= s[0] && x + w <= s[0] + s[1]; })) { spans.push([x, w]); matched += w; }
      }
    });
    if (re !== null && total > 0) text.push(graph.dataset.name + ': ' + (100 * matched / total).toFixed(1) + '% of ' + total + ' samples match');
  });
  document.querySelectorAll('#top tbody tr').forEach(function(tr){ tr.classList.toggle('searched', re !== null && re.test(tr.cells[0].textContent)); });
  out.textContent = re === null ? '' : (text.join('; ') || 'no graph to search');
}
var box = document.getElementById('search');
if (box) {
  box.addEventListener('input', function(){ search(box.value); });
  search(box.value);
}
document.querySelectorAll('.tabs button').forEach(function(b){
  b.addEventListener('click', function(){
    document.querySelectorAll('.tabs button').forEach(function(o){ o.classList.toggle('on', o === b); document.getElementById(o.dataset.show).classList.toggle('hidden', o !== b); });
  });
});
})();
"#;

fn chart_svg(query: &ViewQuery, files: &[StoredInterval]) -> String {
    let (from, to) = (query.range.from_ns, query.range.to_ns);
    let span = (to - from) as f64;
    // CPU cores busy: samples / (seconds × samples per second per CPU).
    let cores = |f: &StoredInterval| {
        let s = &f.summary;
        let secs = s.duration_ns.max(1) as f64 / 1e9;
        f.summary.samples as f64 / secs / s.frequency_hz.max(1) as f64
    };
    let max = files.iter().map(cores).fold(0.0f64, f64::max).max(0.01);
    let mut bars = String::new();
    for f in files {
        let s = &f.summary;
        let x0 = (s.start_ns.max(from) - from) as f64 / span * 1000.0;
        let x1 = ((s.start_ns + s.duration_ns)
            .min(to)
            .max(s.start_ns.max(from))
            - from) as f64
            / span
            * 1000.0;
        let h = cores(f) / max * 100.0;
        let _ = write!(
            bars,
            "<rect class=\"bar\" x=\"{x0:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{h:.2}\" data-samples=\"{}\"><title>{}: {} samples, {:.2} CPUs</title></rect>",
            100.0 - h,
            (x1 - x0).max(0.5),
            s.samples,
            format_time(s.start_ns),
            s.samples,
            cores(f)
        );
    }
    format!(
        "<svg id=\"chart\" viewBox=\"0 0 1000 100\" preserveAspectRatio=\"none\" data-from=\"{}\" data-to=\"{}\" data-intervals=\"{}\">{bars}<rect id=\"chart-selection\" class=\"sel\" x=\"0\" y=\"0\" width=\"0\" height=\"100\"/></svg>\
         <p class=\"muted\">CPU over time: {} stored intervals, highest {max:.2} CPUs. Drag across the chart to narrow the range.</p>",
        from / 1_000_000,
        to / 1_000_000,
        files.len(),
        files.len()
    )
}

fn page_html(
    query: &ViewQuery,
    files: &[StoredInterval],
    merged: &Merged,
    samples: i64,
    max_stacks: usize,
    before: Option<&ProfilesData>,
) -> String {
    let (folded, merged_weight) = (merged.folded, merged.samples);
    let merged = &merged.data;
    let range_q = query.range_query();
    let filters = query.filter_query();
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>smolder agent: {} to {}</h1>\n<nav><a href=\"/\">latest interval</a> Range:",
        format_time(query.range.from_ns),
        format_time(query.range.to_ns)
    );
    for (last, label) in [
        ("5m", "last 5 min"),
        ("1h", "last 1 h"),
        ("24h", "last 24 h"),
    ] {
        let on = if query.last.as_deref() == Some(last) {
            " class=\"on\""
        } else {
            ""
        };
        let _ = write!(
            body,
            " <a id=\"range-{last}\"{on} href=\"/view?last={last}{}\">{label}</a>",
            escape(&filters)
        );
    }
    let s = &query.selection;
    let _ = writeln!(
        body,
        "</nav>\n<form id=\"custom\" action=\"/view\" method=\"get\">custom: from <input type=\"text\" name=\"from\" value=\"{}\"> to <input type=\"text\" name=\"to\" value=\"{}\"> (RFC 3339 or unix seconds, UTC) \
         service <input type=\"text\" name=\"service\" value=\"{}\"> exe <input type=\"text\" name=\"exe\" value=\"{}\"> pid <input type=\"text\" name=\"pid\" value=\"{}\"> thread <input type=\"text\" name=\"thread\" value=\"{}\"> <button type=\"submit\">show</button></form>",
        format_time(query.range.from_ns),
        format_time(query.range.to_ns),
        escape(&s.services.join(",")),
        escape(&s.executables.join(",")),
        s.pids.iter().map(i64::to_string).collect::<Vec<_>>().join(","),
        escape(&s.threads.join(",")),
    );
    body.push_str(&chart_svg(query, files));
    let _ = write!(
        body,
        "<p>Merged: <span id=\"intervals\">{}</span> intervals, <span id=\"total\">{samples}</span> samples. Download: ",
        files.len()
    );
    for format in ViewFormat::ALL {
        let _ = write!(
            body,
            "<a class=\"download\" href=\"/profile?{}&amp;format={}\">{}</a> · ",
            escape(&range_q),
            format.name(),
            format.label()
        );
    }
    body.push_str("</p>\n");
    if folded.stacks > 0 {
        let _ = writeln!(
            body,
            "<p id=\"folded\">This range has more distinct stacks than one view holds in its share of the agent's memory limit ({max_stacks}): \
             the lightest, <span id=\"folded-stacks\">{}</span> stacks ({:.1} % of the range's weight), are summed in one \"{}\" frame per program, so every total is exact. \
             A narrower range or a filter shows them.</p>",
            folded.stacks,
            100.0 * folded.samples as f64 / merged_weight.max(1) as f64,
            escape(OTHER_STACKS)
        );
    }
    let _ = writeln!(
        body,
        "<p>Search (regular expression): <input type=\"text\" id=\"search\" value=\"{}\"> <span id=\"search-result\"></span></p>",
        escape(&query.search)
    );

    let graph = |icicle: bool| -> Option<String> {
        let mut svg = Vec::new();
        let options = FlamegraphOptions {
            title: title(query, samples),
            process_roots: true,
            icicle,
            sample_type: Some(CPU_SAMPLE_TYPE.into()),
            ..FlamegraphOptions::default()
        };
        render(merged, &options, &mut svg).ok()?;
        Some(inline_graph(&svg))
    };
    match (graph(false), graph(true)) {
        (Some(flame), Some(icicle)) => {
            let _ = writeln!(
                body,
                "<div class=\"tabs\"><button class=\"on\" data-show=\"flamegraph\">flamegraph</button><button data-show=\"icicle\">icicle</button> \
                 <a href=\"/profile?{q}&amp;format=svg\">interactive SVG (zoom)</a></div>\
                 <div class=\"graph\" id=\"flamegraph\" data-name=\"flamegraph\" data-total=\"{samples}\">{flame}</div>\
                 <div class=\"graph hidden\" id=\"icicle\" data-name=\"icicle\" data-total=\"{samples}\">{icicle}</div>",
                q = escape(&range_q)
            );
        }
        _ => body.push_str("<p id=\"empty\">No samples stored in this range.</p>\n"),
    }
    off_cpu_section(&mut body, query, merged);

    let top = top_functions(merged);
    let _ = writeln!(
        body,
        "<h2>Top functions</h2><p class=\"muted\">{} functions; self: samples in the function itself, total: samples with it on the stack. Click a heading to sort.</p>\
         <div class=\"scroll\"><table id=\"top\" class=\"sortable\"><thead><tr><th>function</th><th>self</th><th>self %</th><th>total</th><th>total %</th></tr></thead><tbody>",
        top.len()
    );
    let pct = |n: i64| 100.0 * n as f64 / samples.max(1) as f64;
    for (name, own, total) in top.iter().take(TOP_ROWS) {
        let _ = writeln!(
            body,
            "<tr><td>{}</td><td class=\"n\" data-v=\"{own}\">{own}</td><td class=\"n\" data-v=\"{:.4}\">{:.2}</td><td class=\"n\" data-v=\"{total}\">{total}</td><td class=\"n\" data-v=\"{:.4}\">{:.2}</td></tr>",
            escape(name),
            pct(*own),
            pct(*own),
            pct(*total),
            pct(*total)
        );
    }
    body.push_str("</tbody></table></div>\n");

    let before_range = query.before_range();
    let compare_href = format!(
        "/view?{}&diff=1&before_from={}&before_to={}",
        range_q,
        before_range.from_ns / 1_000_000_000,
        before_range.to_ns / 1_000_000_000
    );
    let _ = writeln!(
        body,
        "<h2>Compare</h2><p><a id=\"diff-link\" href=\"{}\">diff against the {} before</a> (red grew, blue shrank; shares, not counts).</p>",
        escape(&compare_href),
        escape(&human_span(query.range.len_ns()))
    );
    if let Some(before) = before {
        let options = FlamegraphOptions {
            title: format!(
                "{} to {} against {} to {}",
                format_time(query.range.from_ns),
                format_time(query.range.to_ns),
                format_time(before_range.from_ns),
                format_time(before_range.to_ns)
            ),
            process_roots: true,
            normalize: true,
            ..FlamegraphOptions::default()
        };
        let mut svg = Vec::new();
        match render_diff(before, merged, &options, &mut svg) {
            Ok(summary) => {
                let _ = writeln!(
                    body,
                    "<p>Before: {} to {}, {} samples; after: {} samples.</p><div class=\"graph\" id=\"diff-flamegraph\" data-name=\"diff\" data-total=\"{}\">{}</div>",
                    format_time(before_range.from_ns),
                    format_time(before_range.to_ns),
                    summary.before_samples,
                    summary.after_samples,
                    summary.after_samples,
                    inline_graph(&svg)
                );
            }
            Err(e) => {
                let _ = writeln!(
                    body,
                    "<p id=\"diff-flamegraph\">No diff: {}</p>",
                    escape(&e.to_string())
                );
            }
        }
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>smolder: {}</title><style>{PAGE_STYLE}</style></head>\n<body data-filters=\"{}\">\n{body}\n<script>{PAGE_SCRIPT}</script>\n</body></html>\n",
        escape(&human_span(query.range.len_ns())),
        escape(&filters)
    )
}

/// Where threads waited (the off-CPU profiles, with `[off_cpu] enabled`):
/// its own graph, in blues, weighed in nanoseconds.
fn off_cpu_section(body: &mut String, query: &ViewQuery, merged: &ProfilesData) {
    let waited = off_cpu_ns(merged);
    if waited <= 0 {
        return;
    }
    let options = FlamegraphOptions {
        title: format!(
            "off-CPU: {} to {}, {:.3} s waited",
            format_time(query.range.from_ns),
            format_time(query.range.to_ns),
            waited as f64 / 1e9
        ),
        process_roots: true,
        sample_type: Some(OFF_CPU_SAMPLE_TYPE.into()),
        ..FlamegraphOptions::default()
    };
    let mut svg = Vec::new();
    if render(merged, &options, &mut svg).is_ok() {
        let _ = writeln!(
            body,
            "<h2>Off-CPU</h2><p class=\"muted\">Where threads waited (blocked, not running), by the stack they blocked with; widths are time waited.</p>\
             <div class=\"graph\" id=\"off-cpu\" data-name=\"off-cpu\" data-total=\"{waited}\">{}</div>",
            inline_graph(&svg)
        );
    }
}

fn human_span(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        s if s % 86_400 == 0 && s > 0 => format!("{} d", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_unix_seconds() {
        assert_eq!(parse_time("1764481416").unwrap(), 1_764_481_416_000_000_000);
        assert_eq!(
            parse_time("1764481416.5").unwrap(),
            1_764_481_416_500_000_000
        );
        let t = parse_time("2025-11-30T05:43:36Z").unwrap();
        assert_eq!(t, 1_764_481_416_000_000_000);
        assert_eq!(format_time(t), "2025-11-30T05:43:36Z");
        assert_eq!(parse_time("2025-11-30T06:43:36+01:00").unwrap(), t);
        assert_eq!(parse_time("2025-11-30T05:43").unwrap(), t - 36_000_000_000);
        assert_eq!(
            parse_time("2025-11-30T05:43:36.25Z").unwrap(),
            t + 250_000_000
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2025-13-30T05:43:36Z").is_err());
    }

    #[test]
    fn queries_give_ranges_filters_and_formats() {
        let q = ViewQuery::parse(
            "from=1000&to=2000&format=folded&pid=7,8&exe=a%20b&thread=w",
            ViewFormat::Pprof,
        )
        .unwrap();
        assert_eq!(
            q.range,
            Range {
                from_ns: 1_000_000_000_000,
                to_ns: 2_000_000_000_000
            }
        );
        assert_eq!(q.format, ViewFormat::Folded);
        assert_eq!(q.selection.pids, [7, 8]);
        assert_eq!(q.selection.executables, ["a b"]);
        assert_eq!(q.selection.threads, ["w"]);
        assert_eq!(q.before_range().from_ns, 0);
        let q = ViewQuery::parse("last=5m", ViewFormat::Pprof).unwrap();
        assert_eq!(q.range.to_ns - q.range.from_ns, 300_000_000_000);
        assert_eq!(q.range_query(), "last=5m");
        assert!(ViewQuery::parse("last=5m&format=gif", ViewFormat::Pprof).is_err());
        assert!(ViewQuery::parse("from=2000&to=1000", ViewFormat::Pprof).is_err());
        assert!(ViewQuery::parse("pid=x", ViewFormat::Pprof).is_err());
    }

    #[test]
    fn top_functions_count_self_and_total_once_per_stack() {
        let data = smolder_profiles_proto::read_folded("main;f;f 3\nmain;g 1\n").unwrap();
        let top = top_functions(&data);
        assert_eq!(top[0], ("f".to_owned(), 3, 3));
        assert_eq!(top[1], ("g".to_owned(), 1, 1));
        assert_eq!(top[2], ("main".to_owned(), 0, 4));
    }

    #[test]
    fn a_range_with_more_stacks_than_its_share_folds_the_rest_with_exact_totals() {
        use smolder_profiles_proto::{read_folded, write_profile, Format};
        let dir = tempfile::tempdir().unwrap();
        // Six intervals: each a hot stack and 40 stacks of its own.
        let now_ms = now_ns() / 1_000_000;
        let mut total = 0;
        for n in 0..6u64 {
            let mut text = String::from("main;hot 30\n");
            for i in 0..40 {
                text.push_str(&format!("main;tail_{n}_{i} 1\n"));
            }
            total += 30 + 40;
            let mut data = read_folded(&text).unwrap();
            let start = (now_ms - 600_000 + n * 10_000) * 1_000_000;
            for rp in &mut data.resource_profiles {
                for p in &mut rp.scope_profiles[0].profiles {
                    (p.time_unix_nano, p.duration_nano) = (start, 10_000_000_000);
                }
            }
            let bytes = write_profile(&data, Format::OtlpBinary).unwrap();
            std::fs::write(
                dir.path()
                    .join(format!("profile-{:013}.otlp", start / 1_000_000)),
                bytes,
            )
            .unwrap();
        }
        let view = ViewState::new(Some(StoreReader::new(dir.path())));
        assert!(view.max_stacks() > 1000, "{}", view.max_stacks());
        let folded_text = |q: &str| {
            let r = view
                .profile(&ViewQuery::parse(q, ViewFormat::Folded).unwrap())
                .unwrap();
            (String::from_utf8(r.bytes.clone()).unwrap(), r.folded)
        };
        let sum = |text: &str| -> i64 {
            text.lines()
                .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
                .sum()
        };
        // Within the share: nothing folded.
        let (all, folded) = folded_text("last=1h");
        assert_eq!((sum(&all), folded.stacks), (total, 0));
        assert!(!all.contains(OTHER_STACKS));
        // At most 20 stacks: the hot one stays whole, the rest is folded
        // and counted, and the total is the same.
        let (bounded, folded) = folded_text("last=1h&stacks=20");
        assert_eq!(sum(&bounded), total);
        assert!(bounded.contains("main;hot 180\n"), "{bounded}");
        let other: i64 = bounded
            .lines()
            .filter(|l| l.starts_with(OTHER_STACKS))
            .map(sum)
            .sum();
        assert!(other > 0 && other == folded.samples, "{bounded}");
        let held = bounded.lines().count() as u64 - 1;
        assert!(held <= 20 + 40, "{held} stacks held");
        assert_eq!(
            folded.stacks + held - 1,
            6 * 40,
            "every tail stack is held or folded"
        );
        // The page says so, and its total is the same.
        let page = view
            .page(&ViewQuery::parse("last=1h&stacks=20", ViewFormat::Svg).unwrap())
            .unwrap();
        assert_eq!(page.folded, folded);
        let html = String::from_utf8_lossy(&page.bytes);
        assert!(html.contains(&format!(
            "<span id=\"folded-stacks\">{}</span>",
            folded.stacks
        )));
        assert!(html.contains(&format!("<span id=\"total\">{total}</span>")));
        assert_eq!(view.stats().folding_merges, 2);
        assert_eq!(view.stats().stacks_folded, 2 * folded.stacks);
    }

    #[test]
    fn the_cache_stays_within_its_bytes() {
        let mut cache = RenderCache::default();
        for key in 0..100u64 {
            cache.put(
                key,
                Arc::new(Rendered {
                    bytes: vec![0u8; CACHE_BYTES / 8],
                    folded: Folded::default(),
                }),
            );
        }
        assert!(cache.bytes <= CACHE_BYTES);
        assert!(cache.get(99).is_some() && cache.get(0).is_none());
    }
}
