//! Input and output files of the CLI: reading any profile format with a
//! progress bar for large inputs, and writing outputs atomically so that a
//! failed run never leaves a half-written file.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use smolder_profiles_proto::{
    detect, read_perf_script_from, read_profile, validate, Decoded, Format,
};

/// Inputs above this size get a progress bar when stderr is a terminal.
const PROGRESS_THRESHOLD: u64 = 4 << 20;

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

/// Reads a whole input file (or standard input for `-`).
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
        return Ok(bytes);
    }
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("no such file"),
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!("permission denied"),
        _ => anyhow::Error::new(e),
    })?;
    if meta.is_dir() {
        bail!("is a directory, not a profile file");
    }
    let mut file = File::open(path).context("cannot open")?;
    let size = meta.len();
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    if let Some(bar) = progress_bar(path, size) {
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut chunk).context("read failed")?;
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
    } else {
        file.read_to_end(&mut bytes).context("read failed")?;
    }
    Ok(bytes)
}

/// Reads and decodes a profile file; errors name the file.
pub fn read_input(path: &Path) -> Result<Decoded> {
    let name = path.display();
    if let Some(decoded) = stream_perf_script(path).with_context(|| format!("{name}"))? {
        return Ok(decoded);
    }
    let bytes = read_bytes(path).with_context(|| format!("{name}"))?;
    read_profile(&bytes).with_context(|| format!("{name}"))
}

/// `perf script` text, often gigabytes, is streamed to the collapser rather
/// than read whole; `None` when the file is something else (or stdin).
fn stream_perf_script(path: &Path) -> Result<Option<Decoded>> {
    if path == Path::new("-") || !path.is_file() {
        return Ok(None);
    }
    let mut head = vec![0u8; 64 * 1024];
    let mut file = File::open(path).context("cannot open")?;
    let n = file.read(&mut head).context("read failed")?;
    head.truncate(n);
    if !matches!(detect(&head), Ok((Format::PerfScript, false))) {
        return Ok(None);
    }
    let file = File::open(path).context("cannot open")?;
    let size = file.metadata().map_or(0, |m| m.len());
    let reader: Box<dyn Read> = match progress_bar(path, size) {
        Some(bar) => Box::new(bar.wrap_read(file)),
        None => Box::new(file),
    };
    let data = read_perf_script_from(std::io::BufReader::with_capacity(1 << 20, reader))?;
    validate(&data)?;
    Ok(Some(Decoded {
        format: Format::PerfScript,
        gzip: false,
        data,
    }))
}

/// Writes `bytes` to `path` atomically (a temporary file in the same
/// directory, renamed into place), or to standard output for `-`.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    write_output_with(path, |w| w.write_all(bytes).map_err(Into::into))
}

/// Like [`write_output`], for a writer callback; nothing appears at `path`
/// unless the callback succeeds.
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
    let dir: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Like any file the user creates: 0666 less the umask (not tempfile's 0600).
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .prefix(".smolder-")
        .tempfile_in(&dir)
        .with_context(|| format!("{name}: cannot create a file in {}", dir.display()))?;
    {
        let mut buffered = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut buffered).with_context(|| format!("{name}"))?;
        buffered
            .flush()
            .with_context(|| format!("{name}: write failed"))?;
    }
    tmp.persist(path)
        .with_context(|| format!("{name}: cannot move the output into place"))?;
    Ok(())
}
