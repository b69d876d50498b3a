//! `perf script` text in: collapsed by inferno's perf collapser (with PID
//! and TID in the root frame), then read as folded stacks with one resource
//! per process and `thread.id` / `thread.name` sample attributes.

use std::collections::HashMap;

use inferno::collapse::perf::{Folder, Options};
use inferno::collapse::Collapse;

use crate::builder::{int_value, key_value, string_value, ProfileBuilder, ProfileConfig};
use crate::error::{Error, Result};
use crate::folded::add_folded;
use crate::otlp::profiles::v1development::ProfilesData;

/// Splits inferno's root frame `comm-PID/TID` (`comm-?/TID` when perf
/// printed only the thread id, as plain `perf script` does; `comm-PID`
/// without `--tid`). Spaces in comm became `_`.
fn parse_root(frame: &str) -> Option<(&str, Option<i64>, Option<i64>)> {
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
fn sample_type(text: &[u8]) -> (String, String) {
    let head = String::from_utf8_lossy(&text[..text.len().min(64 * 1024)]);
    let event_line = head
        .lines()
        .find(|l| !l.is_empty() && !l.starts_with(char::is_whitespace) && !l.starts_with('#'));
    let mut fields = event_line
        .and_then(|l| l.split(": ").nth(1))
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
pub fn read_perf_script_from(mut input: impl std::io::BufRead) -> Result<ProfilesData> {
    let head = input
        .fill_buf()
        .map_err(|e| Error::PerfScript(e.to_string()))?;
    let sample_type = sample_type(head);
    let mut options = Options::default();
    options.include_tid = true;
    options.annotate_kernel = true;
    options.annotate_jit = true;
    options.nthreads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut folded = Vec::new();
    Folder::from(options)
        .collapse(input, &mut folded)
        .map_err(|e| Error::PerfScript(e.to_string()))?;
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
mod tests {
    use super::*;
    use crate::folded::{write_folded, FoldOptions};

    const SCRIPT: &str = "\
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
