//! Input and output files of the CLI: opening any input safely (a FIFO, a
//! directory or a huge sparse file neither hangs nor exhausts memory),
//! reading it as a stream with a progress bar for large inputs, and writing
//! outputs atomically so that a failed run never leaves a file behind.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use smolder_profiles_proto::{
    read_profile_from, read_stacks_from, Decoded, DecodedStacks, Error, FoldOptions, ReadOptions,
};

/// Inputs above this size get a progress bar when stderr is a terminal.
const PROGRESS_THRESHOLD: u64 = 4 << 20;

/// The flag that raises [`ReadOptions::max_input_size`], named in the
/// errors that the limit causes.
pub const MAX_INPUT_SIZE_FLAG: &str = "--max-input-size";

/// The options of reading inputs, shared by the subcommands that read
/// profile files.
#[derive(clap::Args, Debug, Clone)]
pub struct InputArgs {
    /// Largest input read whole (OTLP, JSON, pprof; after gzip) and longest
    /// line of text inputs, in bytes or with a K, M or G suffix (binary units)
    #[arg(long = "max-input-size", value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub max_input_size: u64,
}

impl InputArgs {
    pub fn read_options(&self) -> ReadOptions {
        ReadOptions {
            max_input_size: self.max_input_size,
        }
    }
}

pub use smolder::agent::config::parse_size;

/// A progress bar for reading a large input, when stderr is a terminal.
fn progress_bar(path: &Path, size: u64) -> Option<indicatif::ProgressBar> {
    if size <= PROGRESS_THRESHOLD || !std::io::stderr().is_terminal() {
        return None;
    }
    let style =
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let bar = indicatif::ProgressBar::new(size).with_style(style);
    bar.set_message(format!("reading {}", path.display()));
    Some(bar)
}

/// Opens an input without blocking on it (a FIFO without a writer would
/// block `open` forever) and checks what it is: regular files, FIFOs,
/// sockets and character devices are read as streams; anything else is
/// refused. Returns the file and its size when it is a regular file.
fn open_input(path: &Path) -> Result<(File, Option<u64>)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow!("no such file"),
            std::io::ErrorKind::PermissionDenied => anyhow!("permission denied"),
            _ if e.raw_os_error() == Some(libc::ENXIO) => {
                anyhow!("is a socket or a device without a reader, not a profile file")
            }
            _ => anyhow!("cannot open: {e}"),
        })?;
    let meta = file.metadata().context("cannot stat")?;
    let kind = meta.file_type();
    let size = if kind.is_file() {
        Some(meta.len())
    } else if kind.is_dir() {
        bail!("is a directory, not a profile file");
    } else if kind.is_fifo() || kind.is_socket() || kind.is_char_device() {
        None
    } else {
        bail!("is not a regular file or a pipe");
    };
    if kind.is_fifo() {
        wait_for_a_writer(&file)?;
    }
    // Reads block from here on.
    // SAFETY: fcntl on a descriptor this function owns, with plain flags.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error()).context("cannot make reads blocking");
        }
    }
    Ok((file, size))
}

/// How long a FIFO may wait for its writer (`mkfifo f; smolder convert f &
/// perf script > f` opens the reading end first).
const FIFO_WRITER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until a FIFO has data or its writer has come and gone; a FIFO
/// that no writer opens in [`FIFO_WRITER_WAIT`] is an empty input, not a
/// hang.
fn wait_for_a_writer(file: &File) -> Result<()> {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = std::time::Instant::now() + FIFO_WRITER_WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        // SAFETY: one valid pollfd for the length of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis() as libc::c_int) };
        match ready {
            0 => bail!(
                "empty input: no writer opened the FIFO within {} s",
                FIFO_WRITER_WAIT.as_secs()
            ),
            n if n > 0 => return Ok(()),
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return Err(std::io::Error::last_os_error()).context("cannot wait on the FIFO"),
        }
    }
}

/// The first panic message seen while a [`quietly`] call runs.
static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

/// Runs `work` with panics kept off stderr: a panic inside (on any thread)
/// becomes this call's one-line error instead of a backtrace.
fn quietly<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut slot) = PANIC_MESSAGE.lock() {
            slot.get_or_insert_with(|| info.to_string().replace('\n', " "));
        }
    }));
    let result = std::panic::catch_unwind(AssertUnwindSafe(work));
    std::panic::set_hook(previous);
    let message = PANIC_MESSAGE.lock().ok().and_then(|mut slot| slot.take());
    match result {
        Ok(result) => result,
        Err(_) => Err(anyhow!(
            "internal error while reading: {}",
            message.unwrap_or_else(|| "panic".into())
        )),
    }
}

/// Reads and decodes a profile file (or standard input for `-`): the
/// format is detected from its first bytes, text is streamed, the other
/// formats are read up to `options.max_input_size`. Errors name the file.
pub fn read_input(path: &Path, options: &ReadOptions) -> Result<Decoded> {
    read_input_with(path, |input| read_profile_from(input, options))
}

/// Reads a profile file (or standard input for `-`) as folded stacks
/// ([`read_stacks_from`]: `perf script` text straight to stacks, no OTLP
/// profile in between), for the outputs that need nothing else.
pub fn read_input_stacks(
    path: &Path,
    options: &ReadOptions,
    fold: &FoldOptions,
) -> Result<DecodedStacks> {
    read_input_with(path, |input| read_stacks_from(input, options, fold))
}

/// Opens `path` as [`open_input`] does and hands it to `read`; errors
/// name the file, panics become errors.
fn read_input_with<T>(
    path: &Path,
    read: impl FnOnce(Box<dyn Read>) -> std::result::Result<T, Error>,
) -> Result<T> {
    let name = path.display();
    let read = || -> Result<T> {
        let input: Box<dyn Read> = if path == Path::new("-") {
            Box::new(std::io::stdin().lock())
        } else {
            let (file, size) = open_input(path)?;
            match size.and_then(|size| progress_bar(path, size)) {
                Some(bar) => Box::new(bar.wrap_read(file)),
                None => Box::new(file),
            }
        };
        read(input).map_err(|e| match e {
            Error::TooLarge { .. } | Error::LineTooLong { .. } => {
                anyhow!("{e} (raise it with {MAX_INPUT_SIZE_FLAG})")
            }
            e => anyhow::Error::new(e),
        })
    };
    quietly(read).with_context(|| format!("{name}"))
}

/// Writes `bytes` to `path` atomically (a temporary file in the same
/// directory, renamed into place), or to standard output for `-`. A target
/// that is a device or a FIFO (`/dev/null`) is written in place.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    write_output_with(path, |w| w.write_all(bytes).map_err(Into::into))
}

/// Like [`write_output`], for a writer callback; nothing appears at `path`
/// unless the callback succeeds, and the temporary file is gone whatever
/// fails.
pub fn write_output_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    if path == Path::new("-") {
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        write(&mut lock)?;
        return lock.flush().context("writing standard output");
    }
    let name = path.display();
    if path.is_dir() {
        bail!("{name}: is a directory; give a file name for the output");
    }
    if smolder::output::is_special(path) {
        let out = smolder::output::open_special(path)
            .map_err(|e| anyhow!("{name}: cannot open for writing: {e}"))?;
        let mut buffered = std::io::BufWriter::new(out);
        write(&mut buffered).with_context(|| format!("{name}"))?;
        return buffered
            .flush()
            .map_err(|e| anyhow!("{name}: write failed: {e}"));
    }
    let dir: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Like any file the user creates: 0666 less the umask (not tempfile's 0600).
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .prefix(".smolder-")
        .tempfile_in(&dir)
        .map_err(|e| anyhow!("{name}: cannot create a file in {}: {e}", dir.display()))?;
    // On every error below `tmp` is dropped before the error is returned,
    // which removes the temporary file.
    {
        let mut buffered = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut buffered).with_context(|| format!("{name}"))?;
        buffered
            .flush()
            .map_err(|e| anyhow!("{name}: write failed: {e}"))?;
    }
    // A `PersistError` holds the temporary file: drop it here, or it would
    // live (and stay on disk) as long as the error does.
    tmp.persist(path).map_err(|e| {
        let tempfile::PersistError { error, file } = e;
        drop(file);
        anyhow!("{name}: cannot move the output into place: {error}")
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        for bad in ["0", "", "12X", "-1", "99999999999T", "1.5G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_output_with(&dir.path().join("out"), |_| bail!("boom")).unwrap_err();
        assert_eq!(format!("{err:#}").matches("boom").count(), 1, "{err:#}");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let err = write_output(&sub, b"x").unwrap_err();
        assert!(format!("{err:#}").contains("is a directory"), "{err:#}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
