//! Profile formats: detection by content (never by file name), and one
//! read and one write entry point over every format this crate knows.

use std::fmt;

use crate::encoding::{
    decode_binary, decode_json, encode_binary, encode_json, gunzip, gunzip_if_gzip, gzip, is_gzip,
};
use crate::error::{Error, Result};
use crate::folded::{read_folded, write_folded, FoldOptions};
use crate::otlp::profiles::v1development::ProfilesData;
use crate::perf_script::read_perf_script;
use crate::pprof::{decode_pprof, encode_pprof};

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

/// Field numbers of pprof's `Profile` message.
const PPROF_FIELDS: std::ops::RangeInclusive<u64> = 1..=15;

/// The top-level field numbers of `bytes` read as one protobuf message, or
/// `None` when it is not well-formed protobuf.
fn protobuf_fields(bytes: &[u8]) -> Option<Vec<u64>> {
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
        let key = varint(bytes, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            return None;
        }
        match wire {
            0 => {
                varint(bytes, &mut pos)?;
            }
            1 => pos = pos.checked_add(8)?,
            2 => {
                let len = usize::try_from(varint(bytes, &mut pos)?).ok()?;
                pos = pos.checked_add(len)?;
            }
            5 => pos = pos.checked_add(4)?,
            _ => return None,
        }
        if pos > bytes.len() {
            return None;
        }
        if fields.last() != Some(&field) {
            fields.push(field);
        }
    }
    Some(fields)
}

fn looks_like_text(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(64 * 1024)];
    let text = match std::str::from_utf8(head) {
        Ok(t) => t,
        // A multi-byte character cut at the end of the window is still text.
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or("")
        }
        Err(_) => return false,
    };
    !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
}

/// `perf script` output has event lines followed by indented lines that
/// start with a hexadecimal address.
fn looks_like_perf_script(text: &str) -> bool {
    text.lines().take(200).any(|line| {
        let trimmed = line.trim_start();
        trimmed.len() < line.len()
            && trimmed
                .split_whitespace()
                .next()
                .is_some_and(|w| w.len() >= 4 && w.bytes().all(|b| b.is_ascii_hexdigit()))
    })
}

/// Identifies the format of `bytes` (after gzip, if compressed).
pub fn detect(bytes: &[u8]) -> Result<(Format, bool)> {
    if bytes.is_empty() {
        return Err(Error::Empty);
    }
    if is_gzip(bytes) {
        let inner = gunzip(bytes)?;
        let (format, _) = detect(&inner)?;
        return Ok((format, true));
    }
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        return Ok((Format::OtlpJson, false));
    }
    if looks_like_text(bytes) {
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]);
        if looks_like_perf_script(&head) {
            return Ok((Format::PerfScript, false));
        }
        let first_line = head.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if first_line
            .rsplit_once(' ')
            .is_some_and(|(_, n)| n.trim().parse::<i64>().is_ok())
        {
            return Ok((Format::Folded, false));
        }
        return Err(Error::Unrecognized(
            "text that is neither folded stacks (`a;b;c COUNT`) nor `perf script` output".into(),
        ));
    }
    match protobuf_fields(bytes) {
        // ProfilesData and ExportProfilesServiceRequest have only fields 1 and 2.
        Some(fields) if fields.iter().all(|f| *f == 1 || *f == 2) => {
            Ok((Format::OtlpBinary, false))
        }
        Some(fields) if fields.iter().all(|f| PPROF_FIELDS.contains(f)) => {
            Ok((Format::Pprof, false))
        }
        Some(_) => Err(Error::Unrecognized(
            "protobuf that is neither OTLP profiles nor pprof".into(),
        )),
        None => Err(Error::Unrecognized(
            "binary data that is not protobuf (truncated or garbled?)".into(),
        )),
    }
}

/// Reads a profile in any known format, detected by content, and validates it.
pub fn read_profile(bytes: &[u8]) -> Result<Decoded> {
    let (format, gz) = detect(bytes)?;
    let plain = &*gunzip_if_gzip(bytes)?;
    let data = match format {
        Format::OtlpBinary => decode_binary(plain)?,
        Format::OtlpJson => decode_json(plain)?,
        Format::Pprof => decode_pprof(plain)?,
        Format::Folded => read_folded(&String::from_utf8_lossy(plain))?,
        Format::PerfScript => read_perf_script(plain)?,
    };
    Ok(Decoded {
        format,
        gzip: gz,
        data,
    })
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
}
