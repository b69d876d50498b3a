//! Profile formats: detection by content (never by file name), and one
//! read and one write entry point over every format this crate knows.

use std::fmt;
use std::io::{BufRead, BufReader, Read};

use crate::encoding::{
    decode_binary, decode_json, encode_binary, encode_json, gzip, is_gzip, MAX_DECOMPRESSED_BYTES,
};
use crate::error::{Error, Result};
use crate::folded::{read_folded_lines, write_folded, FoldOptions};
use crate::otlp::profiles::v1development::ProfilesData;
use crate::perf_fold::{fold_perf_script, FoldedStacks};
use crate::perf_script::collapse_perf_script;
use crate::pprof::{decode_pprof, encode_pprof};
use crate::validate::validate;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OTLP protobuf (`ProfilesData` or `ExportProfilesServiceRequest`).
    OtlpBinary,
    /// OTLP/JSON.
    OtlpJson,
    /// pprof `profile.proto` (written gzip-compressed).
    Pprof,
    /// Folded stacks.
    Folded,
    /// Text from `perf script` (read only).
    PerfScript,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::OtlpBinary => "OTLP binary",
            Format::OtlpJson => "OTLP JSON",
            Format::Pprof => "pprof",
            Format::Folded => "folded stacks",
            Format::PerfScript => "perf script text",
        })
    }
}

/// A profile read from bytes, with what it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub format: Format,
    pub gzip: bool,
    pub data: ProfilesData,
}

/// Limits that keep reading an untrusted input bounded in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOptions {
    /// Largest input (after gzip) read whole for the protobuf and JSON
    /// formats, and longest line of the text formats (which are streamed).
    pub max_input_size: u64,
}

/// Default of [`ReadOptions::max_input_size`]: large enough for any real
/// profile, small enough that refusing an input costs well under 1 GiB.
pub const DEFAULT_MAX_INPUT_SIZE: u64 = 512 << 20;

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            max_input_size: DEFAULT_MAX_INPUT_SIZE,
        }
    }
}

/// How much of an input detection looks at before deciding binary or text.
const HEAD_SIZE: usize = 64 * 1024;
/// Nested gzip layers unwrapped (a gzip-compressed pprof file, gzipped again).
const MAX_GZIP_LAYERS: usize = 3;
/// Lines that are neither comments nor events tolerated before the first
/// event of `perf script` text.
const MAX_STRAY_LINES: usize = 1000;

/// Field numbers of pprof's `Profile` message.
const PPROF_FIELDS: std::ops::RangeInclusive<u64> = 1..=15;

/// The top-level field numbers of `bytes` read as one protobuf message, or
/// `None` when it is not well-formed protobuf. When `complete` is false,
/// `bytes` is the head of a longer input and may end inside a field.
fn protobuf_fields(bytes: &[u8], complete: bool) -> Option<Vec<u64>> {
    fn varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*pos)?;
            *pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(value);
            }
        }
        None
    }
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(key) = varint(bytes, &mut pos) else {
            return (!complete && !fields.is_empty() && bytes.len() - pos < 10).then_some(fields);
        };
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 || !matches!(wire, 0 | 1 | 2 | 5) {
            return None;
        }
        if fields.last() != Some(&field) {
            fields.push(field);
        }
        let end = match wire {
            0 => varint(bytes, &mut pos).map(|_| pos),
            1 => pos.checked_add(8),
            2 => varint(bytes, &mut pos)
                .and_then(|len| usize::try_from(len).ok())
                .and_then(|len| pos.checked_add(len)),
            _ => pos.checked_add(4),
        };
        match end {
            Some(end) if end <= bytes.len() => pos = end,
            // The head ends inside this field.
            _ if !complete => return Some(fields),
            _ => return None,
        }
    }
    Some(fields)
}

/// Text is anything without control bytes other than tab, newline and
/// carriage return; bytes >= 0x80 are allowed (names that are not UTF-8 are
/// decoded lossily).
fn looks_like_text(bytes: &[u8]) -> bool {
    bytes.iter().any(|b| !b.is_ascii_whitespace())
        && !bytes
            .iter()
            .any(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7f)
}

/// A folded stacks line: `stack COUNT`.
pub(crate) fn is_folded_line(line: &str) -> bool {
    line.trim_end()
        .rsplit_once(' ')
        .is_some_and(|(stack, n)| !stack.is_empty() && crate::folded::parse_count(n).is_some())
}

/// Where the pid (or `pid/tid`) word of an event line starts and ends, as
/// inferno's perf collapser finds them: the first all-digit word
/// (optionally `digits/digits`) followed by a space; the comm is before it.
/// `None` when the line has no such word.
pub(crate) fn event_line_end(line: &str) -> Option<(usize, usize)> {
    let mut word_start = 0;
    let mut all_digits = false;
    let mut last_was_space = false;
    for (idx, c) in line.char_indices() {
        if c == ' ' {
            if all_digits && !last_was_space {
                return Some((word_start, idx + 1));
            }
            word_start = idx + 1;
            all_digits = true;
        } else if !(c.is_ascii_digit() || (c == '/' && all_digits)) {
            all_digits = false;
        }
        last_was_space = c == ' ';
    }
    None
}

/// An event line of `perf script`: `comm [pid/]tid [cpu] time: [period]
/// event: [stack]`, the comm right-aligned by perf (so the line may start
/// with spaces, like a stack line: but a stack line has no comm before an
/// all-digit word).
pub(crate) fn is_event_line(line: &str) -> bool {
    !line.starts_with('#')
        && event_line_end(line).is_some_and(|(start, end)| {
            !line[..start].trim().is_empty() && line[end..].contains(':')
        })
}

/// Reads one line (with its `\n`) into `buf`, refusing lines longer than
/// `limit`; returns its length, 0 at the end.
pub(crate) fn read_line_capped<R: BufRead + ?Sized>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    limit: u64,
) -> std::io::Result<usize> {
    let n = reader
        .take(limit.saturating_add(1))
        .read_until(b'\n', buf)?;
    if n as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            LineTooLong(limit),
        ));
    }
    Ok(n)
}

/// The marker [`read_line_capped`] puts in its error, so that callers can
/// report [`Error::LineTooLong`] with the line number.
#[derive(Debug)]
pub(crate) struct LineTooLong(pub u64);

impl fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a line is longer than the limit of {} bytes", self.0)
    }
}

impl std::error::Error for LineTooLong {}

/// The [`Error`] of a failed read at `line` (1-based, 0 when unknown).
pub(crate) fn read_error(e: std::io::Error, line: usize) -> Error {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<LineTooLong>())
    {
        Some(LineTooLong(limit)) => Error::LineTooLong {
            line,
            limit: *limit,
        },
        None => Error::Read(e.to_string()),
    }
}

/// Labels the errors of a gzip decoder as such (a truncated or corrupt
/// stream surfaces as a read error wherever the text is consumed).
struct GzipErrors<R>(R);

impl<R: Read> Read for GzipErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| std::io::Error::new(e.kind(), format!("corrupt gzip stream: {e}")))
    }
}

/// Reads up to `size` bytes (fewer only at the end of the input).
fn read_head(reader: &mut dyn Read, size: usize) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(size.min(HEAD_SIZE));
    reader.take(size as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// The first line that tells a text format, and the stream after it.
pub(crate) struct TextStart {
    pub format: Format,
    /// The first line of folded stacks, or the first event of `perf script`.
    pub line: Vec<u8>,
    /// Its line number (1-based).
    pub number: usize,
}

/// Finds the first line that tells folded stacks from `perf script` text.
/// Folded stacks start with a `stack COUNT` line, however long. `perf
/// script` text may start with any number of `#` lines, a `# ========`
/// header block (whose `# cmdline` may span lines that do not start with
/// `#`) and a few stray lines; those are consumed and dropped, as the perf
/// collapser would skip them (or trip over them).
pub(crate) fn find_text_start(
    reader: &mut dyn BufRead,
    limit: u64,
    folded_allowed: bool,
) -> Result<TextStart> {
    let mut line = Vec::new();
    let mut number = 0;
    let mut in_header = false;
    let mut seen_content = !folded_allowed;
    let mut strays = 0;
    loop {
        line.clear();
        let n =
            read_line_capped(reader, &mut line, limit).map_err(|e| read_error(e, number + 1))?;
        if n == 0 {
            break;
        }
        number += 1;
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.trim().is_empty() {
            continue;
        }
        if !seen_content {
            seen_content = true;
            if is_folded_line(text) && !is_event_line(text) {
                return Ok(TextStart {
                    format: Format::Folded,
                    line,
                    number,
                });
            }
        }
        if text.starts_with("# ========") {
            in_header = !in_header;
            continue;
        }
        if in_header || text.starts_with('#') {
            continue;
        }
        if is_event_line(text) {
            return Ok(TextStart {
                format: Format::PerfScript,
                line,
                number,
            });
        }
        strays += 1;
        if strays > MAX_STRAY_LINES {
            break;
        }
    }
    Err(Error::Unrecognized(
        "text that is neither folded stacks (`a;b;c COUNT`) nor `perf script` output".into(),
    ))
}

/// What the head of an input says it is.
enum Head {
    Json,
    Text,
    Binary(Format),
}

fn classify_head(head: &[u8], complete: bool) -> Result<Head> {
    if head.is_empty() {
        return Err(Error::Empty);
    }
    if head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return Ok(Head::Json);
    }
    if looks_like_text(head) {
        return Ok(Head::Text);
    }
    match protobuf_fields(head, complete) {
        // ProfilesData and ExportProfilesServiceRequest have only fields 1 and 2.
        Some(fields) if fields.iter().all(|f| *f == 1 || *f == 2) => {
            Ok(Head::Binary(Format::OtlpBinary))
        }
        Some(fields) if fields.iter().all(|f| PPROF_FIELDS.contains(f)) => {
            Ok(Head::Binary(Format::Pprof))
        }
        Some(_) => Err(Error::Unrecognized(
            "protobuf that is neither OTLP profiles nor pprof".into(),
        )),
        None => Err(Error::Unrecognized(
            "binary data that is not protobuf (truncated or garbled?)".into(),
        )),
    }
}

/// An input whose format is known, positioned where its reader starts.
struct Opened<'a> {
    format: Format,
    gzip: bool,
    body: Body<'a>,
}

enum Body<'a> {
    /// The first telling line and the rest of the text.
    Text(TextStart, Box<dyn BufRead + 'a>),
    /// The whole (decompressed) input, still to be read under the limit.
    Whole(Box<dyn Read + 'a>),
}

/// Unwraps gzip layers and detects the format from a bounded head (and, for
/// text, from the first telling line), without reading the rest.
fn open<'a>(input: Box<dyn Read + 'a>, options: &ReadOptions) -> Result<Opened<'a>> {
    let mut reader = input;
    let mut layers = 0;
    loop {
        let head = read_head(&mut reader, HEAD_SIZE).map_err(|e| read_error(e, 0))?;
        if is_gzip(&head) && layers < MAX_GZIP_LAYERS {
            let inner = std::io::Cursor::new(head).chain(reader);
            reader = Box::new(GzipErrors(flate2::read::MultiGzDecoder::new(inner)));
            layers += 1;
            continue;
        }
        let complete = head.len() < HEAD_SIZE;
        let kind = match classify_head(&head, complete) {
            // An empty gzip stream is an empty input too.
            Err(Error::Empty) if layers > 0 => return Err(Error::Empty),
            other => other?,
        };
        let stream = std::io::Cursor::new(head).chain(reader);
        let (format, body) = match kind {
            Head::Json => (Format::OtlpJson, Body::Whole(Box::new(stream))),
            Head::Binary(format) => (format, Body::Whole(Box::new(stream))),
            Head::Text => {
                let mut text: Box<dyn BufRead + 'a> =
                    Box::new(BufReader::with_capacity(128 << 10, stream));
                let start = find_text_start(&mut *text, options.max_input_size, true)?;
                (start.format, Body::Text(start, text))
            }
        };
        return Ok(Opened {
            format,
            gzip: layers > 0,
            body,
        });
    }
}

/// Reads all of `reader`, refusing more than `limit` bytes.
fn read_limited(reader: &mut dyn Read, limit: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(e, 0))?;
    let mut probe = [0u8; 1];
    loop {
        match reader.read(&mut probe) {
            Ok(0) => return Ok(bytes),
            Ok(_) => return Err(Error::TooLarge { limit }),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e, 0)),
        }
    }
}

/// Identifies the format of `bytes` (after gzip, if compressed).
pub fn detect(bytes: &[u8]) -> Result<(Format, bool)> {
    let opened = open(Box::new(bytes), &ReadOptions::default())?;
    Ok((opened.format, opened.gzip))
}

/// Reads a profile in any known format, detected by content, and validates it.
pub fn read_profile(bytes: &[u8]) -> Result<Decoded> {
    read_profile_from(
        bytes,
        &ReadOptions {
            max_input_size: MAX_DECOMPRESSED_BYTES,
        },
    )
}

/// Reads a profile from a stream in any known format, detected by content,
/// and validates it. Memory stays bounded by `options` and by what the
/// profile holds: `perf script` text and folded stacks are streamed (only
/// their distinct stacks are kept), the other formats are read whole up to
/// [`ReadOptions::max_input_size`], and gzip is decompressed as it is read.
pub fn read_profile_from(input: impl Read, options: &ReadOptions) -> Result<Decoded> {
    let Opened { format, gzip, body } = open(Box::new(input), options)?;
    let data = decode_body(format, body, options)?;
    Ok(Decoded { format, gzip, data })
}

/// A profile read as folded stacks, with what it was.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedStacks {
    pub format: Format,
    pub gzip: bool,
    pub stacks: FoldedStacks,
}

/// Reads a profile from a stream like [`read_profile_from`], for outputs
/// that need only its folded stacks (a flamegraph, folded text): the same
/// stacks as [`crate::fold`] of the profile with `fold` (merged, sorted).
/// `perf script` text is collapsed straight into stacks on every CPU,
/// without an OTLP profile in between (the fast path: see `perf_fold`);
/// other formats are read as profiles and folded.
pub fn read_stacks_from(
    input: impl Read,
    options: &ReadOptions,
    fold: &FoldOptions,
) -> Result<DecodedStacks> {
    let Opened { format, gzip, body } = open(Box::new(input), options)?;
    let stacks = match body {
        Body::Text(start, rest) if start.format == Format::PerfScript => {
            fold_perf_script(start.line, start.number, rest, options.max_input_size, fold)?
        }
        body => FoldedStacks::of(&decode_body(format, body, options)?, fold),
    };
    Ok(DecodedStacks {
        format,
        gzip,
        stacks,
    })
}

/// Reads an opened input into a validated profile.
fn decode_body(format: Format, body: Body<'_>, options: &ReadOptions) -> Result<ProfilesData> {
    let data = match body {
        Body::Text(start, rest) => match start.format {
            Format::PerfScript => collapse_perf_script(start.line, rest, options)?,
            _ => read_folded_lines(start.line, start.number, rest, options)?,
        },
        Body::Whole(mut reader) => {
            let bytes = read_limited(&mut reader, options.max_input_size)?;
            match format {
                Format::OtlpBinary => decode_binary(&bytes)?,
                Format::OtlpJson => decode_json(&bytes)?,
                _ => decode_pprof(&bytes)?,
            }
        }
    };
    validate(&data)?;
    Ok(data)
}

/// Encodes a profile. OTLP binary is plain (wrap with [`gzip`] if wanted);
/// pprof is gzip-compressed as pprof tools expect.
pub fn write_profile(data: &ProfilesData, format: Format) -> Result<Vec<u8>> {
    Ok(match format {
        Format::OtlpBinary => encode_binary(data),
        Format::OtlpJson => encode_json(data)?,
        Format::Pprof => encode_pprof(data),
        Format::Folded => write_folded(data, &FoldOptions::default()).into_bytes(),
        Format::PerfScript => {
            return Err(Error::Encode("perf script text can only be read".into()))
        }
    })
}

/// Encodes and gzip-compresses.
pub fn write_profile_gzip(data: &ProfilesData, format: Format) -> Result<Vec<u8>> {
    Ok(gzip(&write_profile(data, format)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folded::read_folded;

    #[test]
    fn detects_each_format_by_content() {
        let data = read_folded("main;f 2\n").unwrap();
        for format in [
            Format::OtlpBinary,
            Format::OtlpJson,
            Format::Pprof,
            Format::Folded,
        ] {
            let bytes = write_profile(&data, format).unwrap();
            let decoded = read_profile(&bytes).unwrap();
            assert_eq!(decoded.format, format);
            let gz = read_profile(&gzip(&bytes)).unwrap();
            assert_eq!(gz.format, format);
            assert!(gz.gzip || format == Format::Pprof);
        }
    }

    #[test]
    fn rejects_what_is_not_a_profile() {
        assert!(matches!(detect(b""), Err(Error::Empty)));
        assert!(detect(b"\x00\x01\x02\xff").is_err());
        assert!(detect(b"just some words\n").is_err());
    }

    const EVENT: &str = "prog 1234 [000] 100.000001: 10101010 cpu-clock:ppp: ";

    #[test]
    fn perf_script_without_indented_stacks_is_detected() {
        // perf record without -g: the stack is on the event line.
        let single = format!("{EVENT} 55555555a000 hot_leaf+0x10 (/tmp/prog)\n");
        assert_eq!(detect(single.as_bytes()).unwrap().0, Format::PerfScript);
        // As perf prints it: the comm right-aligned, the frame after the event.
        let aligned = "               t 12438  1140.238667:    1001001 cpu-clock:pppH:      55f6aaa6c135 main+0xc (/tmp/m/t)\n";
        let decoded = read_profile(aligned.as_bytes()).unwrap();
        assert_eq!(decoded.format, Format::PerfScript);
        assert_eq!(
            write_folded(&decoded.data, &FoldOptions::default()),
            "main 1001001\n"
        );
        let unindented = format!("{EVENT}\n55555555a000 hot_leaf+0x10 (/tmp/prog)\n\n");
        assert_eq!(detect(unindented.as_bytes()).unwrap().0, Format::PerfScript);
        let data = read_profile(unindented.as_bytes()).unwrap().data;
        assert_eq!(
            write_folded(&data, &FoldOptions::default()),
            "hot_leaf 10101010\n"
        );
    }

    #[test]
    fn headers_of_any_length_and_multi_line_cmdlines_are_skipped() {
        let mut text =
            String::from("# ========\n# cmdline : perf record -- python3 -c import x\nfoo()\n");
        for cpu in 0..5000 {
            text.push_str(&format!("# CPU {cpu}: Core ID 0, Die ID 0, Socket ID 0\n"));
        }
        text.push_str("# ========\n#\n");
        text.push_str(&format!(
            "{EVENT}\n\t55555555a000 hot_leaf+0x10 (/tmp/prog)\n\n"
        ));
        let decoded = read_profile(text.as_bytes()).unwrap();
        assert_eq!(decoded.format, Format::PerfScript);
        assert_eq!(
            write_folded(&decoded.data, &FoldOptions::default()),
            "hot_leaf 10101010\n"
        );
    }

    #[test]
    fn folded_text_with_a_long_first_line_or_latin1_names_is_folded() {
        let long = format!("{} 3\nmain 1\n", vec!["frame"; 30_000].join(";"));
        assert_eq!(detect(long.as_bytes()).unwrap().0, Format::Folded);
        let latin1 = b"main;caf\xe9 2\n";
        let decoded = read_profile(latin1).unwrap();
        assert_eq!(decoded.format, Format::Folded);
        assert_eq!(
            write_folded(&decoded.data, &FoldOptions::default()),
            "main;caf\u{fffd} 2\n"
        );
    }

    #[test]
    fn binary_inputs_are_read_up_to_the_limit() {
        let data = read_folded("main;f 2\n").unwrap();
        let bytes = write_profile(&data, Format::OtlpBinary).unwrap();
        let small = ReadOptions {
            max_input_size: bytes.len() as u64 - 1,
        };
        assert!(matches!(
            read_profile_from(&bytes[..], &small),
            Err(Error::TooLarge { .. })
        ));
        let exact = ReadOptions {
            max_input_size: bytes.len() as u64,
        };
        assert_eq!(read_profile_from(&bytes[..], &exact).unwrap().data, data);
        // A field longer than the head is still OTLP.
        let mut big = vec![0x0a, 0x80, 0x80, 0x80, 0x01];
        big.resize(1 << 17, 0);
        assert_eq!(detect(&big).unwrap().0, Format::OtlpBinary);
    }
}
