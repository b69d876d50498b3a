//! Folded stacks (`root;caller;leaf COUNT`, one line a stack), the text
//! format of Brendan Gregg's FlameGraph and inferno, in both directions.
//!
//! Frame annotations follow inferno: `_[k]` marks a kernel frame and `_[i]`
//! a function inlined into the frame before it. Reading and writing with the
//! default options is lossless for folded input: folded -> OTLP -> folded
//! gives back the same lines in the same order (duplicates merged).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};

use crate::builder::{
    FrameType, LocationSpec, ProfileBuilder, ProfileConfig, ProfileTypeId, ResourceId, SourceLine,
};
use crate::error::{Error, Result};
use crate::otlp::profiles::v1development::ProfilesData;
use crate::pprof::any_value_to_string;
use crate::view::{sample_weight, ProfileView};

pub(crate) const KERNEL_SUFFIX: &str = "_[k]";
/// inferno's mark of a JIT-compiled frame (JavaScript, JVM, …).
const JIT_SUFFIX: &str = "_[j]";
pub(crate) const INLINE_SUFFIX: &str = "_[i]";

/// How a profile is folded into stacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoldOptions {
    /// A root frame per process: `name [pid]`.
    pub process_roots: bool,
    /// A frame per thread under the process: `name [tid]`.
    pub thread_roots: bool,
    /// Keep kernel frames.
    pub kernel_frames: bool,
    /// Keep inlined frames (otherwise only the function they were inlined into).
    pub inlined_frames: bool,
    /// Suffix kernel frames with `_[k]` and inlined frames with `_[i]`.
    pub annotate: bool,
    /// Fold only profiles of this sample type (`type/unit` or `type`);
    /// `None` takes the type of the first profile.
    pub sample_type: Option<String>,
}

impl Default for FoldOptions {
    fn default() -> Self {
        FoldOptions {
            process_roots: false,
            thread_roots: false,
            kernel_frames: true,
            inlined_frames: true,
            annotate: true,
            sample_type: None,
        }
    }
}

/// The folded stacks of `data`, merged, in order of first appearance.
pub fn fold(data: &ProfilesData, options: &FoldOptions) -> Vec<(String, i64)> {
    fold_with(data, options, false)
}

/// Like [`fold`], with the command name of each sample as its root frame,
/// as inferno's perf collapser writes by default: the sample's
/// `thread.name` (perf's comm), else the process's executable name or
/// service name; no root frame when none is known.
pub fn fold_comm_rooted(data: &ProfilesData, options: &FoldOptions) -> Vec<(String, i64)> {
    fold_with(data, options, true)
}

/// Writes [`fold_comm_rooted`] stacks as text, one `stack count` line each.
pub fn write_folded_comm_rooted(data: &ProfilesData, options: &FoldOptions) -> String {
    let mut out = String::new();
    for (stack, count) in fold_comm_rooted(data, options) {
        let _ = writeln!(out, "{stack} {count}");
    }
    out
}

fn fold_with(data: &ProfilesData, options: &FoldOptions, comm_roots: bool) -> Vec<(String, i64)> {
    let view = ProfileView::new(data);
    let wanted = options.sample_type.clone().or_else(|| {
        view.profiles().next().map(|(_, p)| {
            let (t, u) = view.value_type(p.sample_type.as_ref());
            format!("{t}/{u}")
        })
    });
    let mut order: Vec<(String, i64)> = Vec::new();
    // Stacks by the hash of their text, each a chain through `next`: the
    // text is held once, in `order` (a long range folds to many MiB).
    let hasher = RandomState::new();
    let mut index: HashMap<u64, usize> = HashMap::new();
    let mut next: Vec<usize> = Vec::new();
    let mut line = String::new();
    for (resource, profile) in view.profiles() {
        let (t, u) = view.value_type(profile.sample_type.as_ref());
        if let Some(w) = &wanted {
            if *w != format!("{t}/{u}") && *w != t {
                continue;
            }
        }
        let process_root = options.process_roots.then(|| process_label(resource));
        let process_name = process_name(resource);
        for sample in &profile.samples {
            line.clear();
            if comm_roots {
                let comm = view
                    .attribute(&sample.attribute_indices, "thread.name")
                    .map(any_value_to_string)
                    .or_else(|| process_name.clone());
                if let Some(comm) = comm {
                    push_frame(&mut line, &comm);
                }
            }
            if let Some(root) = &process_root {
                push_frame(&mut line, root);
            }
            if options.thread_roots {
                let name = view
                    .attribute(&sample.attribute_indices, "thread.name")
                    .map(any_value_to_string);
                let id = view
                    .attribute(&sample.attribute_indices, "thread.id")
                    .map(any_value_to_string);
                push_frame(
                    &mut line,
                    &labelled(name.as_deref().unwrap_or("[unknown thread]"), id.as_deref()),
                );
            }
            let locations: Vec<_> = view.stack(sample.stack_index).collect();
            for location in locations.into_iter().rev() {
                let frame_type = view.frame_type(location);
                let kernel = frame_type == FrameType::Kernel;
                if kernel && !options.kernel_frames {
                    continue;
                }
                let suffix = match frame_type {
                    _ if !options.annotate => "",
                    FrameType::Kernel => KERNEL_SUFFIX,
                    FrameType::Native | FrameType::Rust | FrameType::Go => "",
                    _ => JIT_SUFFIX,
                };
                if location.lines.is_empty() {
                    let name = match view.mapping_name(location) {
                        Some(m) if !m.is_empty() => {
                            let base = m.rsplit('/').next().unwrap_or(m);
                            format!("[{base}+{:#x}]", location.address)
                        }
                        _ => format!("{:#x}", location.address),
                    };
                    push_frame(&mut line, &format!("{name}{suffix}"));
                    continue;
                }
                for l in view.lines(location).rev() {
                    if l.inlined && !options.inlined_frames {
                        continue;
                    }
                    let name = if l.function.is_empty() {
                        "[unknown]"
                    } else {
                        l.function
                    };
                    let suffix = if l.inlined && options.annotate {
                        INLINE_SUFFIX
                    } else {
                        suffix
                    };
                    push_frame(&mut line, &format!("{name}{suffix}"));
                }
            }
            if line.is_empty() {
                continue;
            }
            let weight = sample_weight(sample);
            let hash = hasher.hash_one(&line);
            let mut at = index.get(&hash).copied();
            while let Some(i) = at.filter(|&i| order[i].0 != line) {
                at = Some(next[i]).filter(|&n| n != usize::MAX);
            }
            match at {
                Some(i) => order[i].1 = order[i].1.saturating_add(weight),
                None => {
                    let head = index.insert(hash, order.len());
                    next.push(head.unwrap_or(usize::MAX));
                    order.push((line.clone(), weight));
                }
            }
        }
    }
    order
}

/// `name [id]`, or just the name.
fn labelled(name: &str, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{name} [{id}]"),
        None => name.to_owned(),
    }
}

/// The executable (or else service) name of a process.
fn process_name(resource: Option<&crate::otlp::resource::v1::Resource>) -> Option<String> {
    let attr = |key: &str| -> Option<String> {
        resource?
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .map(any_value_to_string)
    };
    attr("process.executable.name").or_else(|| attr("service.name"))
}

pub(crate) fn process_label(resource: Option<&crate::otlp::resource::v1::Resource>) -> String {
    let attr = |key: &str| -> Option<String> {
        resource?
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .map(any_value_to_string)
    };
    let name = process_name(resource).unwrap_or_else(|| "[unknown process]".into());
    labelled(&name, attr("process.pid").as_deref())
}

/// Appends a frame, keeping the folded syntax intact: `;` separates frames
/// and a newline ends the stack, so neither may appear inside a name.
pub(crate) fn push_frame(line: &mut String, frame: &str) {
    if !line.is_empty() {
        line.push(';');
    }
    line.extend(frame.chars().map(|c| match c {
        ';' => ':',
        '\n' | '\r' => ' ',
        c => c,
    }));
}

/// Writes folded stacks as text, one `stack count` line each.
pub fn write_folded(data: &ProfilesData, options: &FoldOptions) -> String {
    let mut out = String::new();
    for (stack, count) in fold(data, options) {
        let _ = writeln!(out, "{stack} {count}");
    }
    out
}

/// A sample count: a decimal integer, saturated at the bounds of `i64`
/// (a count too large to represent is as large as a count can be).
pub(crate) fn parse_count(text: &str) -> Option<i64> {
    if let Ok(n) = text.parse::<i64>() {
        return Some(n);
    }
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(if negative {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn folded_config() -> ProfileConfig {
    ProfileConfig {
        sample_type: ("samples".into(), "count".into()),
        period_type: ("cpu".into(), "nanoseconds".into()),
        period: 0,
        time_unix_nano: 0,
        duration_nano: 0,
    }
}

/// Parses folded stacks into a profile with one resource. `_[k]` frames
/// become kernel locations; `_[i]` frames become inlined lines of the
/// location before them.
pub fn read_folded(text: &str) -> Result<ProfilesData> {
    let mut builder = ProfileBuilder::new(folded_config());
    let resource = builder.resource(Vec::new());
    add_folded(&mut builder, text, |_, _| (resource, Vec::new(), 0))?;
    Ok(builder.finish())
}

/// Reads folded stacks from a stream, one line at a time: `first` is line
/// `number` (already read by detection), `rest` the lines after it. Lines
/// need not be UTF-8 (they are decoded lossily); a line longer than the
/// input limit is refused.
pub(crate) fn read_folded_lines(
    first: Vec<u8>,
    number: usize,
    mut rest: Box<dyn std::io::BufRead + '_>,
    options: &crate::format::ReadOptions,
) -> Result<ProfilesData> {
    let mut builder = ProfileBuilder::new(folded_config());
    let resource = builder.resource(Vec::new());
    let mut lines = FoldedLines::new(&mut builder);
    let mut root = |_: &mut ProfileBuilder, _: &str| (resource, Vec::new(), 0);
    let mut line = first;
    let mut n = number;
    loop {
        lines.add(&mut builder, n, &String::from_utf8_lossy(&line), &mut root)?;
        line.clear();
        let read = crate::format::read_line_capped(&mut rest, &mut line, options.max_input_size)
            .map_err(|e| crate::format::read_error(e, n + 1))?;
        if read == 0 {
            break;
        }
        n += 1;
    }
    Ok(builder.finish())
}

/// Adds every line of folded `text` to `builder` and returns how many.
/// `root` looks at the first frame of a line and returns the resource and
/// sample attributes of the line, and how many leading frames it consumed.
pub(crate) fn add_folded(
    builder: &mut ProfileBuilder,
    text: &str,
    mut root: impl FnMut(&mut ProfileBuilder, &str) -> (ResourceId, Vec<i32>, usize),
) -> Result<usize> {
    let mut lines = FoldedLines::new(builder);
    for (n, raw) in text.lines().enumerate() {
        lines.add(builder, n + 1, raw, &mut root)?;
    }
    Ok(lines.added)
}

/// The state of reading folded lines into a builder: the locations made so
/// far, by the text of their frames.
struct FoldedLines {
    profile_type: ProfileTypeId,
    known: HashMap<String, i32>,
    added: usize,
}

impl FoldedLines {
    fn new(builder: &mut ProfileBuilder) -> Self {
        FoldedLines {
            profile_type: builder.default_profile_type(),
            known: HashMap::new(),
            added: 0,
        }
    }

    /// Adds line `n` (1-based) unless it is blank.
    fn add(
        &mut self,
        builder: &mut ProfileBuilder,
        n: usize,
        raw: &str,
        root: &mut impl FnMut(&mut ProfileBuilder, &str) -> (ResourceId, Vec<i32>, usize),
    ) -> Result<()> {
        let line = raw.trim_end();
        if line.trim().is_empty() {
            return Ok(());
        }
        let bad = |problem: &str| Error::Folded {
            line: n,
            problem: problem.to_owned(),
        };
        let (stack, count) = line
            .rsplit_once(' ')
            .ok_or_else(|| bad("no sample count after the stack"))?;
        let count = parse_count(count)
            .ok_or_else(|| bad(&format!("sample count {count:?} is not an integer")))?;
        if stack.is_empty() {
            return Err(bad("empty stack"));
        }
        let frames: Vec<&str> = stack.split(';').collect();
        let (resource_id, attributes, skip) = root(builder, frames[0]);
        // A location is a frame and the `_[i]` frames inlined into it;
        // the same text always makes the same location.
        let mut groups: Vec<(usize, usize)> = Vec::with_capacity(frames.len());
        let mut i = skip;
        while i < frames.len() {
            let mut end = i + 1;
            while end < frames.len() && frames[end].ends_with(INLINE_SUFFIX) {
                end += 1;
            }
            groups.push((i, end));
            i = end;
        }
        // Leaf first, as stacks are stored.
        let indices: Vec<i32> = groups
            .iter()
            .rev()
            .map(|&(start, end)| {
                let text = group_text(stack, &frames, start, end);
                match self.known.get(text) {
                    Some(&index) => index,
                    None => {
                        let index = builder.location(&location_of(&frames[start..end]));
                        self.known.insert(text.to_owned(), index);
                        index
                    }
                }
            })
            .collect();
        let stack = builder.stack(&indices);
        builder.add_sample(
            resource_id,
            self.profile_type,
            stack,
            &attributes,
            count,
            None,
        );
        self.added += 1;
        Ok(())
    }
}

/// The text of `frames[start..end]` as it stands in `stack` (the frames
/// are consecutive slices of it).
fn group_text<'a>(stack: &'a str, frames: &[&'a str], start: usize, end: usize) -> &'a str {
    let first = frames[start].as_ptr() as usize - stack.as_ptr() as usize;
    let last = frames[end - 1].as_ptr() as usize - stack.as_ptr() as usize + frames[end - 1].len();
    &stack[first..last]
}

/// The location of a frame and the frames inlined into it (root first).
fn location_of(group: &[&str]) -> LocationSpec {
    let (name, frame_type) = match group[0].strip_suffix(KERNEL_SUFFIX) {
        Some(name) => (name, FrameType::Kernel),
        None => (group[0], FrameType::Native),
    };
    // Lines are innermost first: the last inlined frame leads.
    let mut lines: Vec<SourceLine> = group[1..]
        .iter()
        .rev()
        .map(|f| SourceLine::function(f.strip_suffix(INLINE_SUFFIX).unwrap_or(f)))
        .collect();
    lines.push(SourceLine::function(name));
    LocationSpec {
        lines,
        frame_type,
        ..LocationSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_round_trip_is_identical() {
        let input = "main;work;leaf 10\nmain;other_[i];inl_[i] 3\nmain;read;sys_read_[k];vfs_read_[k] 7\nsolo 1\n";
        let data = read_folded(input).unwrap();
        crate::validate::validate(&data).unwrap();
        assert_eq!(write_folded(&data, &FoldOptions::default()), input);
    }

    #[test]
    fn duplicates_merge_and_options_filter() {
        let data = read_folded("a;b 1\na;b 2\na;k_[k] 4\n").unwrap();
        assert_eq!(
            write_folded(&data, &FoldOptions::default()),
            "a;b 3\na;k_[k] 4\n"
        );
        let no_kernel = FoldOptions {
            kernel_frames: false,
            ..FoldOptions::default()
        };
        assert_eq!(write_folded(&data, &no_kernel), "a;b 3\na 4\n");
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let err = read_folded("a;b 1\na;b x\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(read_folded("nocount\n").is_err());
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let max = i64::MAX;
        let data = read_folded(&format!("a;b {max}\na;b 1\nc 99999999999999999999\n")).unwrap();
        assert_eq!(
            write_folded(&data, &FoldOptions::default()),
            format!("a;b {max}\nc {max}\n")
        );
        // Folding (and so writing) saturates too, when stacks merge there.
        let no_kernel = FoldOptions {
            kernel_frames: false,
            ..FoldOptions::default()
        };
        let data = read_folded(&format!("a {max}\na;k_[k] {max}\n")).unwrap();
        assert_eq!(write_folded(&data, &no_kernel), format!("a {max}\n"));
    }
}
