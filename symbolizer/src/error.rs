//! The crate's error type: what went wrong, on which file, PID or build-id.
//!
//! Most failures are not returned but counted in [`crate::Stats`]; an `Error` is
//! returned only when a whole source is unusable (the PID is gone, kallsyms is
//! restricted, a build-id is unknown).

use std::io;
use std::path::PathBuf;

/// A failure to read or understand a source of symbols.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or `/proc` entry could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not an ELF object we can read (truncated, corrupt, other format).
    #[error("{path} is not a readable ELF object: {reason}")]
    Object { path: PathBuf, reason: String },
    /// The DWARF debugging information is malformed.
    #[error("broken DWARF in {path}: {source}")]
    Dwarf {
        path: PathBuf,
        #[source]
        source: gimli::Error,
    },
    /// The process does not exist (any more).
    #[error("process {pid} not found: it has exited or the PID is wrong")]
    ProcessGone { pid: u32 },
    /// `/proc/PID/...` exists but cannot be read.
    #[error("cannot read /proc/{pid}/maps: {source}; run as root or as the process's user")]
    ProcessAccess {
        pid: u32,
        #[source]
        source: io::Error,
    },
    /// `/proc/kallsyms` hides addresses (`kernel.kptr_restrict` or no CAP_SYSLOG).
    #[error(
        "/proc/kallsyms shows zero addresses; run as root or set sysctl kernel.kptr_restrict=0"
    )]
    KallsymsRestricted,
    /// No object with this build-id is cached nor found under the debug root.
    #[error("no object with build-id {build_id} is cached or found under {debug_root}")]
    BuildIdNotFound {
        build_id: String,
        debug_root: PathBuf,
    },
    /// A compressed section declares more bytes than smolder inflates.
    #[error("{path}: section {section} declares {size} bytes uncompressed, over the cap of {cap}")]
    Decompression {
        path: PathBuf,
        section: String,
        size: u64,
        cap: u64,
    },
    /// The build-id string is not an even number of hex digits.
    #[error("invalid build-id {0:?}: expected an even number of hex digits")]
    InvalidBuildId(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn object(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Error::Object {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}
