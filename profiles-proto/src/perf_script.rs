//! `perf script` text in: collapsed by inferno's perf collapser (with PID
//! and TID in the root frame), then read as folded stacks with one resource
//! per process and `thread.id` / `thread.name` sample attributes.

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::panic::AssertUnwindSafe;

use inferno::collapse::perf::{Folder, Options};
use inferno::collapse::Collapse;

use crate::builder::{int_value, key_value, string_value, ProfileBuilder, ProfileConfig};
use crate::error::{Error, Result};
use crate::folded::add_folded;
use crate::format::{event_line_end, find_text_start, read_error, read_line_capped, ReadOptions};
use crate::otlp::profiles::v1development::ProfilesData;

/// Splits inferno's root frame `comm-PID/TID` (`comm-?/TID` when perf
/// printed only the thread id, as plain `perf script` does; `comm-PID`
/// without `--tid`). Spaces in comm became `_`.
pub(crate) fn parse_root(frame: &str) -> Option<(&str, Option<i64>, Option<i64>)> {
    let (comm, ids) = frame.rsplit_once('-')?;
    let (pid, tid) = match ids.split_once('/') {
        Some((pid, tid)) => (pid, Some(tid.parse().ok()?)),
        None => (ids, None),
    };
    let pid = match pid {
        "?" => None,
        pid => Some(pid.parse().ok()?),
    };
    Some((comm, pid, tid))
}

/// What the values of a `perf script` profile measure. inferno weighs each
/// sample by the event period when perf printed one (as FlameGraph does):
/// nanoseconds of CPU for `cpu-clock`/`task-clock`, event counts otherwise.
pub(crate) fn sample_type(event_line: &str) -> (String, String) {
    let mut fields = event_line
        .split(": ")
        .nth(1)
        .unwrap_or("")
        .split_whitespace();
    match (fields.next().map(|p| p.parse::<u64>()), fields.next()) {
        (Some(Ok(_)), Some(event)) => {
            let event = event.split(':').next().unwrap_or(event);
            match event {
                "cpu-clock" | "task-clock" => ("cpu".into(), "nanoseconds".into()),
                other => (other.to_owned(), "count".into()),
            }
        }
        _ => ("samples".into(), "count".into()),
    }
}

pub fn read_perf_script(text: &[u8]) -> Result<ProfilesData> {
    read_perf_script_from(text)
}

/// Reads `perf script` text from a stream, without holding all of it: only
/// the collapsed stacks are kept (what a large recording needs in memory).
/// Header lines (`#`, the `# ========` block) and stray lines before the
/// first event are skipped.
pub fn read_perf_script_from(mut input: impl BufRead) -> Result<ProfilesData> {
    let options = ReadOptions::default();
    let start = find_text_start(&mut input, options.max_input_size, false)
        .map_err(|_| Error::PerfScript("no event line found".into()))?;
    let data = collapse_perf_script(start.line, Box::new(input), &options)?;
    crate::validate::validate(&data)?;
    Ok(data)
}

/// The lines of `perf script` text as the collapser reads them, one line
/// per `fill_buf`, watched on the way: the sum of the event periods (which
/// the collapser adds in `u64`) must not overflow.
struct PerfLines<'a> {
    inner: Box<dyn BufRead + 'a>,
    line: Vec<u8>,
    pos: usize,
    number: usize,
    limit: u64,
    /// Within an event: the lines until a blank one are its stack.
    in_event: bool,
    periods: Option<u64>,
}

impl PerfLines<'_> {
    /// Follows the collapser's state machine far enough to see each event
    /// line and its period (1 when perf printed none).
    fn observe(&mut self) {
        let line = &self.line;
        if line.first() == Some(&b'#') {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        if text.is_empty() {
            self.in_event = false;
            return;
        }
        if self.in_event {
            return;
        }
        self.in_event = true;
        let Some((_, end)) = event_line_end(text) else {
            self.in_event = false;
            return;
        };
        let mut by_colons = text[end..].splitn(3, ':').skip(1);
        let period = by_colons
            .next()
            .and_then(|p| p.rsplit(' ').nth(1))
            .and_then(|p| p.parse::<u64>().ok())
            .unwrap_or(1);
        self.periods = self.periods.and_then(|sum| sum.checked_add(period));
        // An event line that carries its (one-frame) stack ends the event.
        if let Some(post) = by_colons.next() {
            let start = post.find([':', ' ']).map_or(0, |i| i + 1);
            if !post[start..].trim().is_empty() {
                self.in_event = false;
            }
        }
    }
}

impl Read for PerfLines<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for PerfLines<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.pos >= self.line.len() {
            self.line.clear();
            self.pos = 0;
            if read_line_capped(&mut self.inner, &mut self.line, self.limit)? > 0 {
                self.number += 1;
                self.observe();
            }
        }
        Ok(&self.line[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.line.len());
    }
}

/// The message of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Collapses `perf script` text whose first event line is `first` and
/// whose later lines come from `rest` with inferno's perf collapser, and
/// reads the stacks into a profile.
pub(crate) fn collapse_perf_script(
    first: Vec<u8>,
    rest: Box<dyn BufRead + '_>,
    options: &ReadOptions,
) -> Result<ProfilesData> {
    let sample_type = sample_type(String::from_utf8_lossy(&first).trim_end());
    let mut lines = PerfLines {
        inner: rest,
        line: first,
        pos: 0,
        number: 1,
        limit: options.max_input_size,
        in_event: false,
        periods: Some(0),
    };
    lines.observe();
    let mut collapse_options = Options::default();
    collapse_options.include_tid = true;
    collapse_options.annotate_kernel = true;
    collapse_options.annotate_jit = true;
    collapse_options.nthreads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut folded = Vec::new();
    // The collapser asserts on input it does not expect; a panic there is
    // this input's error, not the caller's crash.
    let collapsed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        Folder::from(collapse_options).collapse(&mut lines, &mut folded)
    }));
    // Wrapped counts (or the collapser's overflow panic) are this error.
    if lines.periods.is_none() {
        return Err(Error::PerfScript(
            "the sample periods add up past 2^64; counts would wrap".into(),
        ));
    }
    match collapsed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(match read_error(e, lines.number) {
                Error::Read(message) => Error::PerfScript(message),
                other => other,
            })
        }
        Err(panic) => {
            return Err(Error::PerfScript(format!(
                "the perf collapser failed near line {}: {}",
                lines.number,
                panic_message(&*panic)
            )))
        }
    }
    let folded = String::from_utf8_lossy(&folded);

    // A process is named by the comm of its main thread (pid == tid) when
    // it was sampled, otherwise by the first comm seen for it.
    let mut process_names: HashMap<i64, &str> = HashMap::new();
    for line in folded.lines() {
        let root = line.split(';').next().unwrap_or("");
        if let Some((comm, Some(pid), tid)) = parse_root(root) {
            let entry = process_names.entry(pid).or_insert(comm);
            if tid.is_none_or(|t| t == pid) {
                *entry = comm;
            }
        }
    }
    let mut builder = ProfileBuilder::new(ProfileConfig {
        sample_type,
        period_type: ("cpu".into(), "nanoseconds".into()),
        period: 0,
        time_unix_nano: 0,
        duration_nano: 0,
    });
    let added = add_folded(&mut builder, &folded, |b, root| match parse_root(root) {
        Some((comm, pid, tid)) => {
            let mut resource = Vec::with_capacity(2);
            if let Some(pid) = pid {
                resource.push(key_value("process.pid", int_value(pid)));
            }
            let name = pid
                .and_then(|p| process_names.get(&p).copied())
                .unwrap_or(comm);
            resource.push(key_value("process.executable.name", string_value(name)));
            let mut attrs = vec![b.attribute("thread.name", string_value(comm), "")];
            if let Some(tid) = tid {
                attrs.push(b.attribute("thread.id", int_value(tid), ""));
            }
            (b.resource(resource), attrs, 1)
        }
        None => (b.resource(Vec::new()), Vec::new(), 0),
    })?;
    if added == 0 {
        return Err(Error::PerfScript("no samples with stacks found".into()));
    }
    Ok(builder.finish())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::folded::{write_folded, FoldOptions};

    /// Two samples of one process: main thread with a kernel frame, and a worker.
    pub(crate) const SCRIPT: &str = "\
prog 1234/1234 [000] 100.000001: 10101010 cpu-clock:ppp: 
\t    55555555a000 hot_leaf+0x10 (/tmp/prog)
\t    55555555b000 main+0x20 (/tmp/prog)
\tffffffff81000000 do_syscall_64+0x5 ([kernel.kallsyms])

worker 1234/1240 [001] 100.000002: 10101010 cpu-clock:ppp: 
\t    55555555a000 hot_leaf+0x10 (/tmp/prog)
\t    55555555c000 thread_start+0x20 (/tmp/prog)

";

    #[test]
    fn perf_script_becomes_processes_and_threads() {
        let data = read_perf_script(SCRIPT.as_bytes()).unwrap();
        crate::validate::validate(&data).unwrap();
        assert_eq!(data.resource_profiles.len(), 1);
        let options = FoldOptions {
            process_roots: true,
            thread_roots: true,
            ..FoldOptions::default()
        };
        let folded = write_folded(&data, &options);
        assert!(
            folded.contains("prog [1234];prog [1234];do_syscall_64_[k];main;hot_leaf 10101010\n"),
            "{folded}"
        );
        assert!(
            folded.contains("prog [1234];worker [1240];thread_start;hot_leaf 10101010\n"),
            "{folded}"
        );
        let view = crate::view::ProfileView::new(&data);
        let (_, profile) = view.profiles().next().unwrap();
        let unit = view.value_type(profile.sample_type.as_ref());
        assert_eq!(unit, ("cpu".into(), "nanoseconds".into()));
    }

    #[test]
    fn text_without_stacks_is_an_error() {
        assert!(read_perf_script(b"hello world\nthis is not perf\n").is_err());
    }
}
