//! `perf script` text straight to folded stacks, for the outputs that need
//! nothing more (an SVG, folded text): no OTLP profile is built.
//!
//! The text is cut into blocks at empty lines (where the collapser's state
//! is reset), the blocks are collapsed on every CPU, each thread interning
//! frames by the bytes of their stack lines and stacks as lists of frame
//! ids, and the per-thread tables are merged (on one CPU the text is
//! collapsed where the reader's buffer holds it, no blocks). The rules
//! are those of inferno's perf collapser as `read_perf_script` runs it
//! (root frame `comm-PID/TID`, `_[k]`/`_[j]`/`_[i]` annotations, only the
//! first event type, weights by period), and the stacks are then folded as
//! [`crate::fold`] folds the profile `read_perf_script` makes of the same
//! text; `tests::same_stacks_as_the_otlp_path` holds the two paths to the
//! same output.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use crate::error::{Error, Result};
use crate::folded::{FoldOptions, INLINE_SUFFIX, KERNEL_SUFFIX};
use crate::format::event_line_end;
use crate::otlp::profiles::v1development::ProfilesData;
use crate::view::ProfileView;

type Hasher = foldhash::fast::FixedState;
type Map<K, V> = HashMap<K, V, Hasher>;

fn new_map<K, V>() -> Map<K, V> {
    HashMap::with_hasher(Hasher::default())
}

/// Blocks handed to the collapsing threads are about this large (tiny in
/// tests, so that small inputs are cut too). 256 KiB blocks, filled again
/// as they come back, and a 128 KiB reader buffer took the peak RSS of
/// `smolder flamegraph` on a 698 MiB `perf script` recording from 15.5 to
/// 11.4 MiB at the same speed (1 MiB blocks, each a new allocation, and a
/// 1 MiB buffer before; bench/README.md §1); 256 KiB of stack texts per
/// thread ([`BODY_BYTES`]) would take 1.3 MiB more off but cost a third
/// more time.
const BLOCK_SIZE: usize = if cfg!(test) { 4096 } else { 256 << 10 };

/// The folded stacks of a profile, with the type of its values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoldedStacks {
    /// `(stack, count)`, merged, sorted by stack; stacks as [`crate::fold`]
    /// writes them (frames root first, `;`-separated, annotated).
    pub stacks: Vec<(String, i64)>,
    /// The sample type and unit of the values (`cpu`/`nanoseconds` for
    /// `perf script` weighed by cpu-clock periods, `samples`/`count`, …).
    pub value_type: (String, String),
}

impl FoldedStacks {
    /// The folded stacks of a profile: [`crate::fold`], merged and sorted,
    /// and the value type of the first profile folded.
    pub fn of(data: &ProfilesData, options: &FoldOptions) -> FoldedStacks {
        let mut merged: Map<String, i64> = new_map();
        for (stack, count) in crate::folded::fold(data, options) {
            let slot = merged.entry(stack).or_default();
            *slot = slot.saturating_add(count);
        }
        let mut stacks: Vec<(String, i64)> = merged.into_iter().collect();
        stacks.sort_unstable();
        let view = ProfileView::new(data);
        let value_type = view
            .profiles()
            .map(|(_, p)| view.value_type(p.sample_type.as_ref()))
            .find(|(t, u)| {
                options
                    .sample_type
                    .as_ref()
                    .is_none_or(|w| w == t || *w == format!("{t}/{u}"))
            })
            .unwrap_or_else(|| ("samples".into(), "count".into()));
        FoldedStacks { stacks, value_type }
    }
}

/// Stack lines (their text after the address) to a range of `line_frames`.
type StackLines = Map<Box<[u8]>, (u32, u32)>;

/// The text of an event's stack lines to its stack id and line count.
type Bodies = Map<Box<[u8]>, (u32, u32)>;

/// Bytes of stack text one collapser keeps in its [`Bodies`] (tiny in
/// tests, so that a full table is tested too).
const BODY_BYTES: usize = if cfg!(test) { 2048 } else { 1 << 20 };
/// Lookups in [`Bodies`] after which the table is given up when fewer
/// than a quarter of them found the stack (every stack text new: an input
/// of many distinct stacks, where the lookups are only a cost).
const BODY_TRIAL: u64 = if cfg!(test) { 64 } else { 4096 };

/// One collapser's view of the text: the per-event state of inferno's perf
/// collapser, and what it has counted so far, interned.
struct Collapser<'a> {
    /// The one event type counted (the first line's).
    event_filter: &'a str,
    limit: u64,
    // Interned tables of this thread.
    frames: Vec<Box<str>>,
    frame_ids: Map<Box<str>, u32>,
    /// What a stack line (the text after its address) adds to the stack,
    /// as a range of `line_frames`; `[1]` for `java` comms (other rules).
    stack_lines: [StackLines; 2],
    line_frames: Vec<u32>,
    /// Whole stacks by the text of their lines (`[1]` for `java` comms):
    /// an event whose stack text was met before is counted from one
    /// lookup instead of line by line. At most [`BODY_BYTES`] of text.
    bodies: [Bodies; 2],
    body_bytes: usize,
    body_lookups: u64,
    body_hits: u64,
    bodies_on: bool,
    /// The key of the stack line being looked up (kept for its buffer).
    key: Vec<u8>,
    /// An event line just opened an event (counted, no frames yet).
    opened: bool,
    /// Events ended so far.
    ended: u64,
    stacks: Map<Box<[u32]>, u32>,
    roots: Map<Box<str>, u32>,
    counts: Map<(u32, u32), u64>,
    /// Sum of every event's period (1 when none), `None` once past 2^64.
    periods: Option<u64>,
    // State within the current event.
    in_event: bool,
    skip: bool,
    java: bool,
    period: Option<u64>,
    root: String,
    /// Frame ids of the event, leaf first; each stack line's frames reversed.
    stack: Vec<u32>,
}

/// A line longer than the limit: which block, which line in it.
#[derive(Clone, Copy, Debug)]
struct LongLine {
    block: usize,
    line: usize,
}

impl<'a> Collapser<'a> {
    fn new(event_filter: &'a str, limit: u64) -> Self {
        Collapser {
            event_filter,
            limit,
            frames: Vec::new(),
            frame_ids: new_map(),
            stack_lines: [new_map(), new_map()],
            line_frames: Vec::new(),
            bodies: [new_map(), new_map()],
            body_bytes: 0,
            body_lookups: 0,
            body_hits: 0,
            bodies_on: true,
            key: Vec::new(),
            opened: false,
            ended: 0,
            stacks: new_map(),
            roots: new_map(),
            counts: new_map(),
            periods: Some(0),
            in_event: false,
            skip: false,
            java: false,
            period: None,
            root: String::new(),
            stack: Vec::new(),
        }
    }

    /// Collapses the complete lines of `block` (each ends with `\n` except
    /// perhaps the last, at the end of the input); returns how many lines
    /// it had, or the first line over the limit.
    fn block(&mut self, block: &[u8]) -> std::result::Result<usize, usize> {
        let mut lines = 0;
        let mut start = 0;
        while start < block.len() {
            let end = memchr::memchr(b'\n', &block[start..]).map_or(block.len(), |i| start + i);
            let with_newline = (end + 1).min(block.len()) - start;
            lines += 1;
            if with_newline as u64 > self.limit {
                return Err(lines);
            }
            self.line(&block[start..end]);
            start = end + 1;
            if std::mem::take(&mut self.opened) && self.bodies_on {
                match self.body(&block[start..]) {
                    Ok(Some((n, len))) => {
                        lines += n;
                        start += len;
                    }
                    Ok(None) => {}
                    Err(line) => return Err(lines + line),
                }
            }
        }
        Ok(lines)
    }

    /// The lines of `text` one by one, without looking whole stacks up:
    /// how many there were, or the first one over the limit.
    fn plain_lines(&mut self, text: &[u8]) -> std::result::Result<usize, usize> {
        let mut lines = 0;
        for line in text.split_inclusive(|&b| b == b'\n') {
            lines += 1;
            if line.len() as u64 > self.limit {
                return Err(lines);
            }
            self.line(line.strip_suffix(b"\n").unwrap_or(line));
        }
        Ok(lines)
    }

    /// The stack lines of the event an event line just opened, `text`
    /// being what follows that line: when they run to an empty line in
    /// `text` and the same lines were met before, the event is counted at
    /// once and its empty line taken too; else they are collapsed line by
    /// line, and remembered when they made the event's whole stack.
    /// Returns the lines and bytes taken, `None` when nothing was, or the
    /// first line over the limit.
    fn body(&mut self, text: &[u8]) -> std::result::Result<Option<(usize, usize)>, usize> {
        if text.first() == Some(&b'\n') {
            return Ok(None);
        }
        let Some(len) = memchr::memmem::find(text, b"\n\n").map(|i| i + 1) else {
            return Ok(None);
        };
        let body = &text[..len];
        let java = usize::from(self.java);
        self.body_lookups += 1;
        if let Some(&(stack, lines)) = self.bodies[java].get(body) {
            self.body_hits += 1;
            self.count(stack);
            self.reset_event();
            return Ok(Some((lines as usize + 1, len + 1)));
        }
        if self.body_lookups >= BODY_TRIAL && self.body_hits * 4 < self.body_lookups {
            self.bodies_on = false;
            self.bodies = [new_map(), new_map()];
        }
        let ended = self.ended;
        let lines = self.plain_lines(body)?;
        // Still the same event, with frames: the lines are its whole stack
        // (the empty line after them ends it), whatever text surrounds them.
        if self.bodies_on
            && self.ended == ended
            && !self.skip
            && !self.stack.is_empty()
            && self.body_bytes + len <= BODY_BYTES
        {
            let stack = self.intern_stack();
            self.bodies[java].insert(body.into(), (stack, lines as u32));
            self.body_bytes += len;
        }
        Ok(Some((lines, len)))
    }

    /// One line, without its `\n`.
    fn line(&mut self, bytes: &[u8]) {
        if bytes.first() == Some(&b'#') {
            return;
        }
        // Valid UTF-8 (nearly every line) is read in place; the rest lossily.
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(bytes),
        };
        let line = trim_end(&text);
        if line.is_empty() {
            self.end_event();
        } else if self.in_event {
            self.stack_line(line);
        } else {
            self.event_line(line);
            if !self.stack.is_empty() {
                self.end_event();
            }
        }
    }

    fn event_line(&mut self, line: &str) {
        self.in_event = true;
        let Some((start, end)) = event_line_end(line) else {
            self.in_event = false;
            return;
        };
        let ids = &line[start..end - 1];
        let (pid, tid) = match ids.rfind('/') {
            Some(slash) => (&ids[..slash], &ids[slash + 1..]),
            None => ("?", ids),
        };
        let comm = line[..start - 1].trim();
        let mut by_colons = line[end..].splitn(3, ':').skip(1);
        let mut event = None;
        let mut period = 1;
        if let Some(words) = by_colons.next() {
            let mut words = words.rsplit(' ');
            event = words.next();
            self.period = words.next().and_then(|p| p.parse().ok());
            period = self.period.unwrap_or(1);
        }
        self.periods = self.periods.and_then(|sum| sum.checked_add(period));
        if event.is_some_and(|e| e != self.event_filter) {
            self.skip = true;
            return;
        }
        // A one-frame stack may follow the event on its line; `cycles:u:`
        // alone is not one.
        let single = by_colons.next().and_then(|after| {
            let from = after.find([':', ' ']).map_or(0, |i| i + 1);
            Some(after[from..].trim()).filter(|s| !s.is_empty())
        });
        self.root.clear();
        self.root
            .extend(comm.chars().map(|c| if c == ' ' { '_' } else { c }));
        self.root.push('-');
        self.root.push_str(pid);
        self.root.push('/');
        self.root.push_str(tid);
        self.java = self.root.starts_with("java");
        match single {
            Some(frame) => {
                self.stack_line(frame);
                self.in_event = false;
            }
            None => self.opened = true,
        }
    }

    fn stack_line(&mut self, line: &str) {
        if self.skip {
            return;
        }
        // The address does not change the frames: the rest of the line is the key.
        let line = trim_start(line);
        let Some(space) = memchr::memchr(b' ', line.as_bytes()) else {
            return;
        };
        let rest = &line[space + 1..];
        // The offset does not change the frames either: a line is looked up
        // by its text without it (a 0xff byte, never in text, where it was),
        // so that the other offsets of a function are found too.
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        match offset_span(rest) {
            Some((from, to)) => {
                key.extend_from_slice(&rest.as_bytes()[..from]);
                key.push(0xff);
                key.extend_from_slice(&rest.as_bytes()[to..]);
            }
            None => key.extend_from_slice(rest.as_bytes()),
        }
        let range = match self.stack_lines[usize::from(self.java)].get(key.as_slice()) {
            Some(&range) => range,
            None => {
                let from = self.line_frames.len() as u32;
                for name in stack_line_frames(rest, self.java) {
                    let id = match self.frame_ids.get(name.as_str()) {
                        Some(&id) => id,
                        None => {
                            let id = self.frames.len() as u32;
                            self.frames.push(name.clone().into_boxed_str());
                            self.frame_ids.insert(name.into_boxed_str(), id);
                            id
                        }
                    };
                    self.line_frames.push(id);
                }
                let range = (from, self.line_frames.len() as u32);
                self.stack_lines[usize::from(self.java)].insert(key.as_slice().into(), range);
                range
            }
        };
        self.key = key;
        let frames = &self.line_frames[range.0 as usize..range.1 as usize];
        self.stack.extend(frames.iter().rev());
    }

    fn end_event(&mut self) {
        if !self.stack.is_empty() {
            let stack = self.intern_stack();
            self.count(stack);
        }
        self.reset_event();
    }

    /// The id of the event's stack so far.
    fn intern_stack(&mut self) -> u32 {
        match self.stacks.get(self.stack.as_slice()) {
            Some(&id) => id,
            None => {
                let id = self.stacks.len() as u32;
                self.stacks.insert(self.stack.as_slice().into(), id);
                id
            }
        }
    }

    /// Counts the event's period for `stack` under its root.
    fn count(&mut self, stack: u32) {
        let root = match self.roots.get(self.root.as_str()) {
            Some(&id) => id,
            None => {
                let id = self.roots.len() as u32;
                self.roots.insert(self.root.as_str().into(), id);
                id
            }
        };
        let count = self.counts.entry((root, stack)).or_default();
        *count = count.saturating_add(self.period.unwrap_or(1));
    }

    fn reset_event(&mut self) {
        self.ended += 1;
        self.in_event = false;
        self.skip = false;
        self.opened = false;
        self.stack.clear();
        self.period = None;
    }
}

/// Whitespace as `char::is_whitespace` has it, in ASCII.
fn is_ascii_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `str::trim_start`, quicker over ASCII.
fn trim_start(text: &str) -> &str {
    let skip = text.bytes().take_while(|&b| is_ascii_space(b)).count();
    match text.as_bytes().get(skip) {
        Some(b) if !b.is_ascii() => text[skip..].trim_start(),
        _ => &text[skip..],
    }
}

/// `str::trim_end`, quicker over ASCII.
fn trim_end(text: &str) -> &str {
    let keep = text.len()
        - text
            .bytes()
            .rev()
            .take_while(|&b| is_ascii_space(b))
            .count();
    match keep.checked_sub(1).map(|last| text.as_bytes()[last]) {
        Some(b) if !b.is_ascii() => text[..keep].trim_end(),
        _ => &text[..keep],
    }
}

/// Where the offset (`+0xOFF`) that [`stack_line_frames`] takes off the
/// symbol of `rest` lies in it, if it has one.
fn offset_span(rest: &str) -> Option<(usize, usize)> {
    let (symbol, _) = rest.rsplit_once(' ')?;
    let start = symbol.len() - symbol.trim_start().len();
    let trimmed = symbol.trim();
    let plus = trimmed.rfind("+0x")?;
    trimmed[plus + 3..]
        .bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then_some((start + plus, start + trimmed.len()))
}

/// The frames one stack line adds, outermost first: `rest` is the line
/// after its address, `SYMBOL[+0xOFF] (DSO)`. None for a line that is not
/// a stack line or names a process (`(`…).
fn stack_line_frames(rest: &str, java: bool) -> Vec<String> {
    let Some((symbol, module)) = rest.rsplit_once(' ') else {
        return Vec::new();
    };
    let Some(module) = module.strip_prefix('(').and_then(|m| m.strip_suffix(')')) else {
        return Vec::new();
    };
    let mut symbol = match symbol.trim() {
        "" => " ",
        s => s,
    };
    if let Some(plus) = symbol.rfind("+0x") {
        if symbol[plus + 3..].bytes().all(|b| b.is_ascii_hexdigit()) {
            symbol = &symbol[..plus];
        }
    }
    if symbol.starts_with('(') {
        return Vec::new();
    }
    let symbol = legacy_rust_demangle(symbol);
    let kernel = is_kernel_module(module);
    let jit = (module.starts_with("/tmp/perf-") && module.ends_with(".map"))
        || (module.contains("/jitted-") && module.ends_with(".so"));
    symbol
        .split("->")
        .enumerate()
        .map(|(i, part)| {
            let mut name = if part != "[unknown]" || module == "[unknown]" {
                part.to_owned()
            } else {
                format!("[{}]", module.rsplit('/').next().unwrap_or(module))
            };
            name = without_arguments(&name.replace(';', ":"));
            if java && name.starts_with('L') && name.contains('/') {
                name.remove(0);
            }
            if i > 0 {
                if !name.contains(INLINE_SUFFIX) {
                    name.push_str(INLINE_SUFFIX);
                }
            } else if kernel {
                name.push_str(KERNEL_SUFFIX);
            } else if jit && !name.contains("_[j]") {
                name.push_str("_[j]");
            }
            name
        })
        .collect()
}

/// A kernel DSO as perf names it: `[kernel.kallsyms]`, a `[module]`, a
/// `.ko` file or a `vmlinux` image (`[unknown]` is not one).
fn is_kernel_module(module: &str) -> bool {
    let vmlinux = module.rfind("vmlinux").is_some_and(|at| {
        module[at..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    });
    (module.starts_with('[') || module.ends_with(".ko") || vmlinux) && module != "[unknown]"
}

/// A function name without its argument list: the first `(` outside any
/// `<>`, `{}`, `[]` or `()` ends it, unless it opens a Go receiver
/// (`pkg.(*T).M`) or `(anonymous namespace)`.
fn without_arguments(name: &str) -> String {
    let mut depth = 0i64;
    let mut after_dot = None;
    for (at, c) in name.char_indices() {
        match c {
            '<' | '{' | '[' => depth += 1,
            '>' | '}' | ']' | ')' => depth -= 1,
            '(' => {
                if depth == 0
                    && after_dot != Some(at)
                    && !name[at..].starts_with("(anonymous namespace)")
                {
                    return name[..at].to_owned();
                }
                depth += 1;
            }
            '.' => after_dot = Some(at + 1),
            _ => {}
        }
    }
    name.to_owned()
}

/// Finishes what perf leaves of a legacy-mangled Rust name
/// (`a..b..c$LT$T$GT$::f::h0123456789abcdef` -> `a::b::c<T>::f`); any
/// other name is returned as it is.
fn legacy_rust_demangle(symbol: &str) -> std::borrow::Cow<'_, str> {
    const HASH: usize = 17;
    let bytes = symbol.as_bytes();
    let hashed = bytes.len() >= HASH
        && bytes[bytes.len() - HASH] == b'h'
        && bytes[bytes.len() - HASH + 1..]
            .iter()
            .all(u8::is_ascii_hexdigit);
    if !hashed {
        return symbol.into();
    }
    let mut rest = &symbol[..symbol.len() - HASH];
    rest = rest.strip_suffix("::").unwrap_or(rest);
    if rest.starts_with("_$") {
        rest = &rest[1..];
    }
    const ESCAPES: [(&str, &str); 20] = [
        ("$SP$", "@"),
        ("$BP$", "*"),
        ("$RF$", "&"),
        ("$LT$", "<"),
        ("$GT$", ">"),
        ("$LP$", "("),
        ("$RP$", ")"),
        ("$C$", ","),
        ("$u7e$", "~"),
        ("$u20$", " "),
        ("$u27$", "'"),
        ("$u3d$", "="),
        ("$u5b$", "["),
        ("$u5d$", "]"),
        ("$u7b$", "{"),
        ("$u7d$", "}"),
        ("$u3b$", ";"),
        ("$u2b$", "+"),
        ("$u21$", "!"),
        ("$u22$", "\""),
    ];
    let mut out = String::with_capacity(rest.len());
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("..") {
            out.push_str("::");
            rest = after;
        } else if let Some(after) = rest.strip_prefix('.') {
            out.push('.');
            rest = after;
        } else if rest.starts_with('$') {
            match ESCAPES.iter().find(|(from, _)| rest.starts_with(from)) {
                Some((from, to)) => {
                    out.push_str(to);
                    rest = &rest[from.len()..];
                }
                None => {
                    out.push_str(rest);
                    break;
                }
            }
        } else {
            let plain = rest.find(['$', '.']).unwrap_or(rest.len());
            out.push_str(&rest[..plain]);
            rest = &rest[plain..];
        }
    }
    out.into()
}

/// What the collapsing threads found, merged: frames, stacks and roots by
/// text, counts by (root, stack).
struct Collapsed {
    frames: Vec<Box<str>>,
    stacks: Vec<Box<[u32]>>,
    roots: Vec<Box<str>>,
    counts: Map<(u32, u32), u64>,
    periods: Option<u64>,
}

impl Collapsed {
    fn merge(parts: Vec<Collapser<'_>>) -> Collapsed {
        let mut frame_ids: Map<Box<str>, u32> = new_map();
        let mut stack_ids: Map<Box<[u32]>, u32> = new_map();
        let mut root_ids: Map<Box<str>, u32> = new_map();
        let mut all = Collapsed {
            frames: Vec::new(),
            stacks: Vec::new(),
            roots: Vec::new(),
            counts: new_map(),
            periods: Some(0),
        };
        fn intern<K: std::hash::Hash + Eq + Clone>(
            ids: &mut Map<K, u32>,
            list: &mut Vec<K>,
            key: K,
        ) -> u32 {
            *ids.entry(key).or_insert_with_key(|key| {
                list.push(key.clone());
                list.len() as u32 - 1
            })
        }
        for part in parts {
            all.periods = all
                .periods
                .zip(part.periods)
                .and_then(|(a, b)| a.checked_add(b));
            let frames: Vec<u32> = part
                .frames
                .into_iter()
                .map(|f| intern(&mut frame_ids, &mut all.frames, f))
                .collect();
            let mut stacks = vec![0; part.stacks.len()];
            for (stack, local) in part.stacks {
                let global: Box<[u32]> = stack.iter().map(|&f| frames[f as usize]).collect();
                stacks[local as usize] = intern(&mut stack_ids, &mut all.stacks, global);
            }
            let mut roots = vec![0; part.roots.len()];
            for (root, local) in part.roots {
                roots[local as usize] = intern(&mut root_ids, &mut all.roots, root);
            }
            for ((root, stack), count) in part.counts {
                let key = (roots[root as usize], stacks[stack as usize]);
                let slot = all.counts.entry(key).or_default();
                *slot = slot.saturating_add(count);
            }
        }
        all
    }
}

/// Reads the blocks of the text after its first event line, collapses them
/// on `threads` threads (the reading one included), and merges what they
/// found. The reader never waits for a helper: a block no helper is free
/// to take is collapsed by the reader itself, so a helper that the
/// scheduler is slow to wake (a loaded machine) costs no time.
fn collapse(
    first: Vec<u8>,
    first_number: usize,
    mut rest: Box<dyn BufRead + '_>,
    event_filter: &str,
    limit: u64,
    threads: usize,
) -> Result<Collapsed> {
    if threads <= 1 {
        return collapse_alone(first, first_number, rest, event_filter, limit);
    }
    let failed = AtomicBool::new(false);
    let helpers = threads.saturating_sub(1);
    let (send, receive) = mpsc::sync_channel::<(usize, Vec<u8>)>(helpers);
    let receive = std::sync::Mutex::new(receive);
    // Blocks collapsed by a helper come back to the reader to be filled
    // again: the blocks in flight are all the text held at once.
    let (give_back, take_back) = mpsc::channel::<Vec<u8>>();
    type Outcome<'a> = (Collapser<'a>, Vec<(usize, usize)>, Option<LongLine>, bool);
    let (workers, reader): (Vec<Outcome<'_>>, ReadEnd<'_>) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..helpers)
            .map(|_| {
                let (receive, failed) = (&receive, &failed);
                let give_back = give_back.clone();
                scope.spawn(move || {
                    let mut collapser = Collapser::new(event_filter, limit);
                    let mut lines = Vec::new();
                    let mut long = None;
                    let mut panicked = false;
                    loop {
                        let next = match receive.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => break,
                        };
                        let Ok((index, block)) = next else { break };
                        if failed.load(Ordering::Relaxed) {
                            continue;
                        }
                        // A panic here is a bug, but must not leave the
                        // reader waiting on a channel nobody empties.
                        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            let done = collapser.block(&block);
                            // Only the last block may end inside an event.
                            collapser.end_event();
                            done
                        }));
                        // The reader may be gone (it stopped on an error).
                        let _ = give_back.send(block);
                        match done {
                            Ok(Ok(n)) => lines.push((index, n)),
                            Ok(Err(line)) => {
                                long.get_or_insert(LongLine { block: index, line });
                                failed.store(true, Ordering::Relaxed);
                            }
                            Err(_) => {
                                panicked = true;
                                failed.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    (collapser, lines, long, panicked)
                })
            })
            .collect();
        let reader = read_blocks(
            first,
            &mut *rest,
            limit,
            event_filter,
            &failed,
            |index, block| match send.try_send((index, block)) {
                Ok(()) => None,
                Err(mpsc::TrySendError::Full((_, block))) => Some(block),
                Err(mpsc::TrySendError::Disconnected((_, block))) => Some(block),
            },
            || take_back.try_recv().ok(),
        );
        drop(send);
        let workers = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        (workers, reader)
    });
    let mut block_lines: Map<usize, usize> = new_map();
    let mut long: Option<LongLine> = None;
    let mut parts = Vec::with_capacity(workers.len() + 1);
    for (collapser, lines, too_long, panicked) in workers {
        if panicked {
            return Err(Error::PerfScript(
                "internal error while collapsing the stacks".into(),
            ));
        }
        block_lines.extend(lines);
        if let Some(l) = too_long {
            if long.is_none_or(|known| l.block < known.block) {
                long = Some(l);
            }
        }
        parts.push(collapser);
    }
    block_lines.extend(reader.lines);
    // The line number of a place in the text: `block`'s `line`.
    let line_number = |block: usize, line: usize| {
        first_number - 1
            + (0..block)
                .map(|b| block_lines.get(&b).copied().unwrap_or(0))
                .sum::<usize>()
            + line
    };
    if let Some(l) = reader.long.into_iter().chain(long).min_by_key(|l| l.block) {
        return Err(Error::LineTooLong {
            line: line_number(l.block, l.line),
            limit,
        });
    }
    if let Some((block, line, e)) = reader.error {
        return Err(read_failed(e, line_number(block, line)));
    }
    parts.push(reader.collapser);
    Ok(Collapsed::merge(parts))
}

/// [`collapse`] on one thread, where nobody takes blocks: the complete
/// lines are collapsed where the reader's buffer holds them, and only a
/// line cut by the buffer's end is copied. On a 364 MB recording on one
/// CPU, `smolder flamegraph` took 0.36 s and 8.5 MiB instead of 0.42 s
/// and 8.8 MiB copying every byte into blocks (medians of ten,
/// bench/README.md §1).
fn collapse_alone(
    first: Vec<u8>,
    first_number: usize,
    mut rest: Box<dyn BufRead + '_>,
    event_filter: &str,
    limit: u64,
) -> Result<Collapsed> {
    let mut collapser = Collapser::new(event_filter, limit);
    // Lines collapsed so far, counting those before the first event line.
    let mut done = first_number - 1;
    let collapse_lines = |collapser: &mut Collapser<'_>, done: &mut usize, text: &[u8]| {
        match collapser.block(text) {
            Ok(n) => {
                *done += n;
                Ok(())
            }
            Err(line) => Err(Error::LineTooLong {
                line: *done + line,
                limit,
            }),
        }
    };
    // The start of a line the buffer cut, never a whole line.
    let mut open = Vec::new();
    if first.ends_with(b"\n") {
        collapse_lines(&mut collapser, &mut done, &first)?;
    } else {
        open = first;
    }
    loop {
        let bytes = match rest.fill_buf() {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_failed(e, done + 1)),
        };
        if bytes.is_empty() {
            break;
        }
        let available = bytes.len();
        let mut from = 0;
        // The cut line ends in this buffer: collapse it whole. (When it
        // does not, no line is complete and all of the buffer joins it.)
        if let (false, Some(newline)) = (open.is_empty(), memchr::memchr(b'\n', bytes)) {
            open.extend_from_slice(&bytes[..=newline]);
            collapse_lines(&mut collapser, &mut done, &open)?;
            open.clear();
            // A long line's buffer is not kept.
            open.shrink_to(BLOCK_SIZE);
            from = newline + 1;
        }
        let complete = memchr::memrchr(b'\n', &bytes[from..]).map_or(from, |i| from + i + 1);
        collapse_lines(&mut collapser, &mut done, &bytes[from..complete])?;
        open.extend_from_slice(&bytes[complete..]);
        rest.consume(available);
        // The line still open must not pass the limit.
        if open.len() as u64 > limit {
            return Err(Error::LineTooLong {
                line: done + 1,
                limit,
            });
        }
    }
    // The last line, without its `\n`.
    collapse_lines(&mut collapser, &mut done, &open)?;
    collapser.end_event();
    Ok(Collapsed::merge(vec![collapser]))
}

/// The error of a read that failed at `line`: a `perf script` error
/// unless the line was too long.
fn read_failed(e: std::io::Error, line: usize) -> Error {
    match crate::format::read_error(e, line) {
        Error::Read(message) => Error::PerfScript(message),
        other => other,
    }
}

/// What the reading thread ends with.
struct ReadEnd<'a> {
    /// Blocks it collapsed itself (no helper free, or no empty line to cut at).
    collapser: Collapser<'a>,
    lines: Vec<(usize, usize)>,
    long: Option<LongLine>,
    error: Option<(usize, usize, std::io::Error)>,
}

/// Cuts the text into blocks that end with an empty line and offers them to
/// `send` (numbered in order), which hands back what no helper took. Text
/// that goes on for a whole block without an empty line is collapsed here,
/// in order, until the next empty line.
fn read_blocks<'a>(
    first: Vec<u8>,
    input: &mut dyn BufRead,
    limit: u64,
    event_filter: &'a str,
    failed: &AtomicBool,
    mut send: impl FnMut(usize, Vec<u8>) -> Option<Vec<u8>>,
    mut returned: impl FnMut() -> Option<Vec<u8>>,
) -> ReadEnd<'a> {
    let mut end = ReadEnd {
        collapser: Collapser::new(event_filter, limit),
        lines: Vec::new(),
        long: None,
        error: None,
    };
    let mut index = 0;
    let mut buf = first;
    buf.reserve(BLOCK_SIZE);
    // How much to hold before cutting: more while one line fills a block.
    let mut want = BLOCK_SIZE;
    // The reader's collapser is inside an event: its next lines are its own.
    let mut carrying = false;
    let mut eof = false;
    // A block this thread collapsed itself, to be filled again.
    let mut spare: Option<Vec<u8>> = None;
    while !eof && !failed.load(Ordering::Relaxed) {
        while buf.len() < want {
            match input.fill_buf() {
                Ok([]) => {
                    eof = true;
                    break;
                }
                Ok(bytes) => {
                    let n = bytes.len().min(want - buf.len());
                    buf.extend_from_slice(&bytes[..n]);
                    input.consume(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let lines = memchr::memchr_iter(b'\n', &buf).count();
                    end.error = Some((index, lines + 1, e));
                    return end;
                }
            }
        }
        let complete = if eof {
            buf.len()
        } else {
            memchr::memrchr(b'\n', &buf).map_or(0, |i| i + 1)
        };
        // The line still open must not pass the limit.
        if (buf.len() - complete) as u64 > limit {
            let lines = memchr::memchr_iter(b'\n', &buf).count();
            end.long = Some(LongLine {
                block: index,
                line: lines + 1,
            });
            return end;
        }
        if complete == 0 {
            want = buf.len() + BLOCK_SIZE;
            continue;
        }
        want = BLOCK_SIZE;
        let cut = if carrying {
            memchr::memmem::find(&buf[..complete], b"\n\n").map(|i| i + 2)
        } else if eof {
            Some(complete)
        } else {
            memchr::memmem::rfind(&buf[..complete], b"\n\n").map(|i| i + 2)
        };
        let (take, parallel) = match cut {
            Some(cut) => (cut, !std::mem::replace(&mut carrying, false)),
            None => {
                carrying = true;
                (complete, false)
            }
        };
        // A block grown for one long event is not kept for the next ones.
        let mut tail = spare
            .take()
            .or_else(&mut returned)
            .filter(|b| b.capacity() <= 4 * BLOCK_SIZE)
            .unwrap_or_default();
        tail.clear();
        tail.reserve(BLOCK_SIZE.max(buf.len() - take));
        tail.extend_from_slice(&buf[take..]);
        let mut block = std::mem::replace(&mut buf, tail);
        block.truncate(take);
        // A block that starts and ends at empty lines may go to a helper;
        // the reader collapses the rest, in order (its own collapser is at
        // an empty line whenever it is not carrying an event).
        let own = if parallel {
            send(index, block)
        } else {
            Some(block)
        };
        if let Some(block) = own {
            match end.collapser.block(&block) {
                Ok(n) => end.lines.push((index, n)),
                Err(line) => {
                    end.long = Some(LongLine { block: index, line });
                    return end;
                }
            }
            spare = Some(block);
        }
        index += 1;
    }
    if !buf.is_empty() && !failed.load(Ordering::Relaxed) {
        match end.collapser.block(&buf) {
            Ok(n) => end.lines.push((index, n)),
            Err(line) => end.long = Some(LongLine { block: index, line }),
        }
    }
    end.collapser.end_event();
    end
}

/// The root frame `comm-PID/TID` (`comm-?/TID`) split as
/// `read_perf_script` splits it.
fn parse_root(frame: &str) -> Option<(&str, Option<i64>, Option<i64>)> {
    crate::perf_script::parse_root(frame)
}

/// Collapses `perf script` text (its first event line `first`, line
/// `number`, then `rest`) and folds the stacks with `options`.
pub(crate) fn fold_perf_script(
    first: Vec<u8>,
    number: usize,
    rest: Box<dyn BufRead + '_>,
    limit: u64,
    options: &FoldOptions,
) -> Result<FoldedStacks> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    fold_perf_script_on(first, number, rest, limit, options, threads)
}

/// [`fold_perf_script`] on `threads` threads.
fn fold_perf_script_on(
    first: Vec<u8>,
    number: usize,
    rest: Box<dyn BufRead + '_>,
    limit: u64,
    options: &FoldOptions,
    threads: usize,
) -> Result<FoldedStacks> {
    let first_text = String::from_utf8_lossy(&first).trim_end().to_owned();
    let value_type = crate::perf_script::sample_type(&first_text);
    // The first line is an event line with an event (detection checked
    // it has a colon after its PID): its type is the one counted.
    let event_filter = event_line_end(&first_text)
        .and_then(|(_, end)| first_text[end..].split(':').nth(1))
        .and_then(|words| words.rsplit(' ').next())
        .unwrap_or("")
        .to_owned();
    let collapsed = collapse(first, number, rest, &event_filter, limit, threads)?;
    if collapsed.periods.is_none() {
        return Err(Error::PerfScript(
            "the sample periods add up past 2^64; counts would wrap".into(),
        ));
    }
    if collapsed.counts.is_empty() {
        return Err(Error::PerfScript("no samples with stacks found".into()));
    }
    let (t, u) = &value_type;
    let wanted = options
        .sample_type
        .as_ref()
        .is_none_or(|w| *w == format!("{t}/{u}") || w == t);
    let stacks = if wanted {
        fold_collapsed(&collapsed, options)
    } else {
        Vec::new()
    };
    Ok(FoldedStacks { stacks, value_type })
}

/// A root frame as `read_perf_script` reads it: the process and thread it
/// names, and the frames before the stack when it is not a root frame (or
/// a comm held a `;`).
struct Root<'a> {
    comm: Option<&'a str>,
    pid: Option<i64>,
    tid: Option<i64>,
    frames: Vec<&'a str>,
}

fn fold_collapsed(collapsed: &Collapsed, options: &FoldOptions) -> Vec<(String, i64)> {
    let roots: Vec<Root<'_>> = collapsed
        .roots
        .iter()
        .map(|text| {
            let mut pieces = text.split(';');
            let head = pieces.next().unwrap_or("");
            match parse_root(head) {
                Some((comm, pid, tid)) => Root {
                    comm: Some(comm),
                    pid,
                    tid,
                    frames: pieces.collect(),
                },
                None => Root {
                    comm: None,
                    pid: None,
                    tid: None,
                    frames: text.split(';').collect(),
                },
            }
        })
        .collect();
    let names = process_names(collapsed, &roots);
    let frame = |id: u32| &*collapsed.frames[id as usize];
    // Without root frames a stack folds the same under every root.
    let plain_roots = roots.iter().all(|r| r.frames.is_empty());
    let mut bodies: Vec<Option<String>> = vec![None; collapsed.stacks.len()];
    let mut out: Map<String, i64> = new_map();
    let mut frames: Vec<&str> = Vec::new();
    if plain_roots && !options.process_roots && !options.thread_roots {
        // Nothing of the root shows: sum by stack, fold each stack once.
        let mut sums = vec![0u64; collapsed.stacks.len()];
        for (&(_, stack), &count) in &collapsed.counts {
            sums[stack as usize] = sums[stack as usize].saturating_add(count);
        }
        for (stack, sum) in collapsed.stacks.iter().zip(sums) {
            let mut line = String::new();
            frames.clear();
            frames.extend(stack.iter().rev().map(|&f| frame(f)));
            fold_frames(&frames, options, &mut line);
            if line.is_empty() {
                continue;
            }
            let count = i64::try_from(sum).unwrap_or(i64::MAX);
            let total = out.entry(line).or_default();
            *total = total.saturating_add(count);
        }
        let mut stacks: Vec<(String, i64)> = out.into_iter().collect();
        stacks.sort_unstable();
        return stacks;
    }
    let mut line = String::new();
    for (&(root_id, stack_id), &count) in &collapsed.counts {
        let root = &roots[root_id as usize];
        let stack = &collapsed.stacks[stack_id as usize];
        line.clear();
        if options.process_roots || options.thread_roots {
            // The resource and sample attributes `read_perf_script` gives.
            let name = root.pid.and_then(|p| names.get(&p).copied()).or(root.comm);
            if options.process_roots {
                let name = name.unwrap_or("[unknown process]");
                push_frame(&mut line, &labelled(name, root.pid));
            }
            if options.thread_roots {
                let name = root.comm.unwrap_or("[unknown thread]");
                push_frame(&mut line, &labelled(name, root.tid));
            }
        }
        if plain_roots {
            let body = bodies[stack_id as usize].get_or_insert_with(|| {
                let mut body = String::new();
                frames.clear();
                frames.extend(stack.iter().rev().map(|&f| frame(f)));
                fold_frames(&frames, options, &mut body);
                body
            });
            if !body.is_empty() {
                if !line.is_empty() {
                    line.push(';');
                }
                line.push_str(body);
            }
        } else {
            frames.clear();
            frames.extend(root.frames.iter().copied());
            frames.extend(stack.iter().rev().map(|&f| frame(f)));
            fold_frames(&frames, options, &mut line);
        }
        if line.is_empty() {
            continue;
        }
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        match out.get_mut(line.as_str()) {
            Some(total) => *total = total.saturating_add(count),
            None => {
                out.insert(line.clone(), count);
            }
        }
    }
    let mut stacks: Vec<(String, i64)> = out.into_iter().collect();
    stacks.sort_unstable();
    stacks
}

/// `name [id]`, or the name.
fn labelled(name: &str, id: Option<i64>) -> String {
    match id {
        Some(id) => format!("{name} [{id}]"),
        None => name.to_owned(),
    }
}

/// Appends frames (root first) as [`crate::fold`] writes the locations
/// `read_folded` makes of them: a frame and the `_[i]` frames after it are
/// one location (left out whole when it is a kernel one and kernel frames
/// are not wanted).
fn fold_frames(frames: &[&str], options: &FoldOptions, line: &mut String) {
    let mut i = 0;
    while i < frames.len() {
        let mut end = i + 1;
        while end < frames.len() && frames[end].ends_with(INLINE_SUFFIX) {
            end += 1;
        }
        let (name, kernel) = match frames[i].strip_suffix(KERNEL_SUFFIX) {
            Some(name) => (name, true),
            None => (frames[i], false),
        };
        if !kernel || options.kernel_frames {
            let suffix = if kernel && options.annotate {
                KERNEL_SUFFIX
            } else {
                ""
            };
            push_named(line, name, suffix);
            if options.inlined_frames {
                for inlined in &frames[i + 1..end] {
                    let name = inlined.strip_suffix(INLINE_SUFFIX).unwrap_or(inlined);
                    let suffix = if options.annotate { INLINE_SUFFIX } else { "" };
                    push_named(line, name, suffix);
                }
            }
        }
        i = end;
    }
}

/// A function name as a frame: `[unknown]` when empty.
fn push_named(line: &mut String, name: &str, suffix: &str) {
    let name = if name.is_empty() { "[unknown]" } else { name };
    if suffix.is_empty() {
        push_frame(line, name);
    } else {
        push_frame(line, &format!("{name}{suffix}"));
    }
}

fn push_frame(line: &mut String, frame: &str) {
    crate::folded::push_frame(line, frame)
}

/// The name `read_perf_script` gives each process: the comm of its main
/// thread (the last in the collapser's sorted output) when sampled,
/// otherwise its first comm there.
fn process_names<'a>(collapsed: &'a Collapsed, roots: &[Root<'a>]) -> Map<i64, &'a str> {
    // The collapser's output is sorted by line, and a root's lines all
    // start with `root;`: roots sort as that prefix, except where one
    // prefix starts another (a `;` in a comm), where the lines decide.
    let mut order: Vec<u32> = (0..roots.len() as u32).collect();
    let prefix = |r: u32| collapsed.roots[r as usize].as_bytes();
    let prefixed = collapsed.roots.iter().any(|r| r.contains(';'));
    let bound = |r: u32, last: bool| -> String {
        let lines = collapsed
            .counts
            .keys()
            .filter(|(root, _)| *root == r)
            .map(|&(_, stack)| {
                let mut line = collapsed.roots[r as usize].to_string();
                for &f in collapsed.stacks[stack as usize].iter().rev() {
                    line.push(';');
                    line.push_str(&collapsed.frames[f as usize]);
                }
                line
            });
        if last {
            lines.max().unwrap_or_default()
        } else {
            lines.min().unwrap_or_default()
        }
    };
    order.sort_by(|&a, &b| {
        let (pa, pb) = (prefix(a), prefix(b));
        let key = |p: &[u8]| p.iter().copied().chain([b';']).collect::<Vec<u8>>();
        if prefixed {
            let (ka, kb) = (key(pa), key(pb));
            if ka.starts_with(&kb) || kb.starts_with(&ka) {
                return bound(a, false).cmp(&bound(b, false));
            }
            ka.cmp(&kb)
        } else {
            pa.iter().chain(b";").cmp(pb.iter().chain(b";"))
        }
    });
    let mut names: Map<i64, &str> = new_map();
    let mut main_thread: Map<i64, u32> = new_map();
    for &r in &order {
        let root = &roots[r as usize];
        let (Some(comm), Some(pid)) = (root.comm, root.pid) else {
            continue;
        };
        names.entry(pid).or_insert(comm);
        if root.tid.is_none_or(|t| t == pid) {
            main_thread
                .entry(pid)
                .and_modify(|known| {
                    // Of two main-thread roots, the one whose last line sorts last.
                    if !prefixed || bound(r, true) > bound(*known, true) {
                        *known = r;
                    }
                })
                .or_insert(r);
        }
    }
    for (pid, r) in main_thread {
        if let Some(comm) = roots[r as usize].comm {
            names.insert(pid, comm);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf_script::read_perf_script;

    /// How the fast path is run: on how many threads, and the rest of the
    /// text read whole or a few bytes at a time (one thread collapses in
    /// the reader's buffer, lines cut by its end).
    const WAYS: [(usize, Option<usize>); 4] = [(3, None), (2, None), (1, None), (1, Some(7))];

    fn fast_on(
        text: &[u8],
        options: &FoldOptions,
        limit: u64,
        (threads, buffer): (usize, Option<usize>),
    ) -> Result<Vec<(String, i64)>> {
        let start = crate::format::find_text_start(
            &mut &text[..],
            crate::format::DEFAULT_MAX_INPUT_SIZE,
            false,
        )?;
        // Re-read after the first line with the rest of the text.
        let consumed = text
            .split_inclusive(|&b| b == b'\n')
            .take(start.number)
            .map(<[u8]>::len)
            .sum::<usize>();
        let rest: Box<dyn BufRead> = match buffer {
            Some(n) => Box::new(std::io::BufReader::with_capacity(n, &text[consumed..])),
            None => Box::new(&text[consumed..]),
        };
        fold_perf_script_on(start.line, start.number, rest, limit, options, threads)
            .map(|f| f.stacks)
    }

    fn fast(text: &[u8], options: &FoldOptions) -> Result<Vec<(String, i64)>> {
        let mut all = WAYS.map(|way| fast_on(text, options, u64::MAX, way));
        let first = std::mem::replace(&mut all[0], Ok(Vec::new()));
        for (way, other) in WAYS.iter().zip(&all).skip(1) {
            match (&first, other) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{way:?} {options:?}"),
                (a, b) => assert_eq!(a.is_ok(), b.is_ok(), "{way:?} {options:?}: {a:?} {b:?}"),
            }
        }
        first
    }

    fn slow(text: &[u8], options: &FoldOptions) -> Result<Vec<(String, i64)>> {
        let data = read_perf_script(text)?;
        Ok(FoldedStacks::of(&data, options).stacks)
    }

    fn all_options() -> Vec<FoldOptions> {
        let mut all = Vec::new();
        for bits in 0..16u8 {
            all.push(FoldOptions {
                process_roots: bits & 1 != 0,
                thread_roots: bits & 2 != 0,
                kernel_frames: bits & 4 != 0,
                inlined_frames: bits & 8 != 0,
                ..FoldOptions::default()
            });
        }
        all
    }

    fn same(text: &[u8]) {
        for options in all_options() {
            let (f, s) = (fast(text, &options), slow(text, &options));
            match (&f, &s) {
                (Ok(f), Ok(s)) => {
                    assert_eq!(f, s, "{options:?}\n{}", String::from_utf8_lossy(text));
                    assert!(!f.is_empty() || !options.kernel_frames, "{options:?}");
                }
                _ => panic!(
                    "{options:?}: fast {f:?} slow {s:?}\n{}",
                    String::from_utf8_lossy(text)
                ),
            }
        }
    }

    #[test]
    fn same_stacks_as_the_otlp_path() {
        same(crate::perf_script::tests::SCRIPT.as_bytes());
        // Names perf and the collapser rewrite: offsets, unknown symbols,
        // argument lists, Rust hashes, Java inlining, JIT maps, modules.
        same(
            b"\
java 7/7 [000] 1.0: 5 cycles: 
\t    1 Lcom/x/Y;.run(I)V+0x1 (/tmp/perf-7.map)
\t    2 a->b->c_[i] (/tmp/jitted-1.so)
\t    3 [unknown] (/usr/lib/libc.so.6)
\t    4 [unknown] ([unknown])
\t    5 std..io..Read$u20$for$u20$x::read::h0123456789abcdef (/bin/r)
\t    6 net/http.(*Client).Do (/bin/go)
\t    7 f(int) (/bin/c)
\t    8 (anonymous namespace)::g(int) (/bin/c)
\t    9 x;y (/bin/c)
\t    a tcp_sendmsg (/lib/modules/vmlinux-6.1)
\t    b m (x.ko)
\t    c  (/lib/z.so)
\t    d (deleted) (/bin/gone)

java 7/8 [000] 1.1: 7 cycles: 
\t    1 Lcom/x/Y;.run(I)V+0x1 (/tmp/perf-7.map)

other 9/9 [000] 1.2: 7 instructions: 
\t    1 skipped (/bin/s)

one 10 [000] 1.3: 3 cycles:  ffffffff81000000 single+0x1 ([kernel.kallsyms])
two words 11/12 [001] 1.4: cycles: 
\t    1 noperiod (/bin/n)

",
        );
        // Process names: the main thread's comm wins, else the first one.
        same(
            b"\
sh 20/20 [0] 1: 1 cpu-clock: 
\t 1 a (/bin/sh)

prog 20/20 [0] 2: 1 cpu-clock: 
\t 1 b (/bin/prog)

w2 30/31 [0] 3: 1 cpu-clock: 
\t 1 c (/bin/w)

w1 30/32 [0] 4: 1 cpu-clock: 
\t 1 d (/bin/w)

",
        );
        // Frames that are not kernel or inlined marks, and empty names.
        same(
            b"\
p 1/1 [0] 1: 2 cpu-clock: 
\t 1 x_[i] (/bin/p)
\t 2 _[k] (/bin/p)
\t 3 ->z ([kernel.kallsyms])
\t 4 y_[i]_[k] (/bin/p)

",
        );
    }

    #[test]
    fn wild_roots_fold_as_the_otlp_path_does() {
        // A `;` in the comm, odd ids, CRLF, a comment mid-event, non-UTF-8.
        same(
            b"\
a;b 1/1 [0] 1: 1 cpu-clock: 
\t 1 f (/bin/a)

x-5/5;y 5/5 [0] 1: 1 cpu-clock: 
\t 1 g (/bin/a)

c 01/002 [0] 1: 1 cpu-clock: \r
\t 1 h (/bin/a)\r
# comment
\t 2 i\xff (/bin/a)\r
\r
d 3 [0] 1: 1 cpu-clock: 
\t 1 j (/bin/a)
",
        );
    }

    #[test]
    fn trimming_is_str_trimming() {
        for text in [
            "",
            " ",
            "\t a \t",
            "\u{3000}a\u{3000}",
            "\u{85} a \u{85}",
            "\x0b\x0ca\x0c\x0b",
            " \u{a0}",
            "\u{a0} ",
            "é ",
            " é",
            "\u{2028}",
        ] {
            assert_eq!(trim_start(text), text.trim_start(), "{text:?}");
            assert_eq!(trim_end(text), text.trim_end(), "{text:?}");
        }
        // Unicode blanks end an event as inferno's `trim_end` sees them.
        same("p 1/1 [0] 1: 1 cpu-clock: \n\t 1 a (/bin/p)\u{3000}\n\u{85}\np 1/1 [0] 1: 1 cpu-clock: \n\t 1 b (/bin/p)\n".as_bytes());
    }

    #[test]
    fn stacks_met_again_are_counted_as_the_first_time() {
        // The same stack text again and again (looked up whole), between
        // texts that are not one event's whole stack: a blank line of
        // Unicode spaces or CR inside, a comment, no frames, another
        // event type, a java comm, an event line with its frame.
        let events = [
            "p 1/1 [0] 1: 3 cpu-clock: \n\t 1 a (/bin/p)\n\t 2 main (/bin/p)\n",
            "p 1/2 [0] 1: 4 cpu-clock: \n\t 1 a (/bin/p)\n\u{3000}\nq 2/2 [0] 1: 1 cpu-clock: \n\t 2 main (/bin/p)\n",
            "p 1/1 [0] 1: 5 cpu-clock: \n\t 1 a (/bin/p)\n# c\n\t 2 main (/bin/p)\n",
            "p 1/1 [0] 1: 5 cpu-clock: \n\t 1 a (/bin/p)\r\n\r\n\t 2 main (/bin/p)\n",
            "p 1/1 [0] 1: 6 cpu-clock: \n\t 1 (deleted) (/bin/p)\n",
            "p 1/1 [0] 1: 7 instructions: \n\t 1 a (/bin/p)\n\t 2 main (/bin/p)\n",
            "java 3/3 [0] 1: 2 cpu-clock: \n\t 1 Lx/Y;.f()V (/tmp/perf-3.map)\n",
            "p 1/1 [0] 1: 8 cpu-clock:  1 a (/bin/p)\n\t 2 main (/bin/p)\n",
        ];
        let mut text = String::new();
        for i in 0..600 {
            text.push_str(events[i % events.len()]);
            text.push('\n');
        }
        same(text.as_bytes());
        // Offsets taken off where a blank before them or after them, or
        // a second offset, would make two lines alike without the marker.
        same(
            b"\
p 1/1 [0] 1: 1 cpu-clock: 
\t 1 a +0x1 (/bin/p)
\t 2 a+0x1  (/bin/p)
\t 3 a  (/bin/p)
\t 4 a+0x1+0x2 (/bin/p)
\t 5 a+0x1 (/bin/p)
\t 6 a+0x3 (/bin/p)
\t 7 a (/bin/p)
\t 8 a+0x (/bin/p)
\t 9 a+0xg (/bin/p)
\t a  +0x1 (/bin/p)
\t b a+0x1 /bin/p
\t c a+0x2 /bin/p

",
        );
        // Many distinct stack texts: the table fills, then is given up.
        let mut text = String::new();
        for i in 0..2000 {
            text.push_str(&format!(
                "p 1/1 [0] 1: 1 cpu-clock: \n\t {i:x} f{} (/bin/p)\n\t 2 main (/bin/p)\n\n",
                i % 7
            ));
        }
        same(text.as_bytes());
    }

    #[test]
    fn blocks_cut_anywhere_give_the_same_stacks() {
        // Many events, so that several blocks and threads take part.
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!(
                "p{} {}/{} [0] 1.{i}: {} cpu-clock: \n\t 1 f{} (/bin/p)\n\t 2 main (/bin/p)\n\n",
                i % 3,
                i % 5,
                i % 7,
                i % 11 + 1,
                i % 13
            ));
        }
        same(text.as_bytes());
        // And without empty lines at all (perf script without -g).
        let flat: String = text
            .replace("\n\t 1 ", " 1 ")
            .replace("\n\t 2 main (/bin/p)\n\n", "\n");
        same(flat.as_bytes());
    }

    #[test]
    fn a_line_over_the_limit_is_named_the_same_on_every_path() {
        let long = format!("\t 3 {} (/bin/p)\n\n", "x".repeat(300));
        let events = |long_at: Option<usize>| {
            let mut text = String::new();
            for i in 0..3_000 {
                text.push_str(&format!(
                    "p 1/1 [0] 1.{i}: 1 cpu-clock: \n\t 1 f{} (/bin/p)\n",
                    i % 13
                ));
                text.push_str(match long_at {
                    Some(at) if at == i => &long,
                    _ => "\t 2 main (/bin/p)\n\n",
                });
            }
            text
        };
        let text = events(None);
        let lines = text.lines().count();
        // In the middle of an event, then on the last line, with and
        // without its `\n`.
        let middle = events(Some(1999));
        let at_end = format!(
            "{text}p 1/1 [0] 2: 1 cpu-clock: \n{}",
            &long[..long.len() - 2]
        );
        let at_end_no_newline = at_end.trim_end().to_owned();
        // Line numbers of the long line: the 2000th event's third line.
        let cases = [
            (&middle, 1999 * 4 + 3),
            (&at_end, lines + 2),
            (&at_end_no_newline, lines + 2),
        ];
        for (text, line) in cases {
            for way in WAYS {
                let got = fast_on(text.as_bytes(), &FoldOptions::default(), 200, way);
                assert!(
                    matches!(got, Err(Error::LineTooLong { line: l, limit: 200 }) if l == line),
                    "{way:?}: {got:?}, want line {line}"
                );
                // Under the limit, every path reads it.
                assert!(fast_on(text.as_bytes(), &FoldOptions::default(), 400, way).is_ok());
            }
        }
    }

    #[test]
    fn a_failed_read_is_an_error_on_every_path() {
        struct Broken;
        impl std::io::Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        let mut text = String::from("p 1/1 [0] 1: 1 cpu-clock: \n");
        for i in 0..2_000 {
            text.push_str(&format!(
                "\t 1 f{i} (/bin/p)\n\np 1/1 [0] 1: 1 cpu-clock: \n"
            ));
        }
        let start = crate::format::find_text_start(&mut text.as_bytes(), 1 << 20, false).unwrap();
        let rest = &text.as_bytes()[start.line.len()..];
        for threads in [1, 2, 3] {
            for buffer in [7, 8192] {
                let reader =
                    std::io::BufReader::with_capacity(buffer, std::io::Read::chain(rest, Broken));
                let got = fold_perf_script_on(
                    start.line.clone(),
                    start.number,
                    Box::new(reader),
                    u64::MAX,
                    &FoldOptions::default(),
                    threads,
                );
                assert!(
                    matches!(&got, Err(Error::PerfScript(m)) if m.contains("disk on fire")),
                    "{threads} threads, {buffer}: {got:?}"
                );
            }
        }
    }
}
