//! The one error type of this crate: what went wrong decoding, validating or
//! encoding a profile, worded for a user who holds the file.

use crate::validate::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("empty input")]
    Empty,
    #[error("not a profile: {0}")]
    Unrecognized(String),
    #[error("corrupt gzip stream: {0}")]
    Gzip(std::io::Error),
    #[error("input is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("line {line} is longer than the limit of {limit} bytes")]
    LineTooLong { line: usize, limit: u64 },
    #[error("read failed: {0}")]
    Read(String),
    // The causes below are part of the message, not `#[source]`s, so that
    // a context chain (anyhow's `{:#}`) prints each of them once.
    #[error("malformed {format} protobuf: {error}")]
    Protobuf {
        format: &'static str,
        error: prost::DecodeError,
    },
    #[error("malformed OTLP JSON: {0}")]
    Json(String),
    #[error("invalid OTLP profile: {0}")]
    Invalid(ValidationError),
    #[error("invalid pprof profile: {0}")]
    InvalidPprof(String),
    #[error("malformed folded stacks at line {line}: {problem}")]
    Folded { line: usize, problem: String },
    #[error("malformed perf script text: {0}")]
    PerfScript(String),
    #[error("cannot encode: {0}")]
    Encode(String),
}

impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Self {
        Error::Invalid(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
