//! A live process as the rest of smolder may read it: its `/proc/PID/maps`
//! ([`ProcessMaps`], parsed once per refresh), its facts ([`ProcessFacts`]:
//! comm, exe, command line, cgroup, `OTEL_SERVICE_NAME`, uid), the one rule
//! by which a file it maps or names is opened ([`open_mapped_file`],
//! [`open_in_root`]) and its vDSO. Everything here is hostile input: reads
//! are capped, opens never block and never leave the process's root.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use crate::Error;

/// Mapped files larger than this are not opened: a process could map a huge
/// file to make the profiler read it.
pub const MAX_OBJECT_BYTES: u64 = 1 << 30;
/// `/proc/PID/maps` is read up to this many bytes (65530 mappings with long
/// names would be hundreds of MiB).
pub const MAX_MAPS_BYTES: u64 = 16 << 20;
/// `/proc/PID/cmdline`, `environ` and `cgroup` are read up to this many bytes.
const MAX_FACT_BYTES: u64 = 256 << 10;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub executable: bool,
    /// Device of the file (`major << 32 | minor`, as `/proc/PID/maps` shows it).
    pub dev: u64,
    pub inode: u64,
    /// Path as the process sees it (`/usr/lib/libc.so.6`), a pseudo-name
    /// (`[vdso]`, `[stack]`), or empty for anonymous memory. A trailing
    /// ` (deleted)` is removed and recorded in `deleted`.
    pub path: String,
    pub deleted: bool,
}

/// What a mapping holds, as far as symbolization cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingKind {
    /// A file, opened by [`open_mapped_file`].
    File,
    Vdso,
    /// Anonymous memory (where JIT compilers put code, named by perf maps).
    Anonymous,
    /// Other pseudo-mappings: `[vsyscall]`, `[heap]`, `[stack]`.
    Pseudo,
}

impl Mapping {
    pub fn kind(&self) -> MappingKind {
        let name = self.path.as_str();
        if name.is_empty() || name.starts_with("[anon") {
            MappingKind::Anonymous
        } else if name == "[vdso]" {
            MappingKind::Vdso
        } else if name.starts_with('[') || self.inode == 0 || !name.starts_with('/') {
            MappingKind::Pseudo
        } else {
            MappingKind::File
        }
    }

    /// A mapping of a file (as opposed to anonymous memory or `[vdso]`).
    pub fn is_file(&self) -> bool {
        self.kind() == MappingKind::File
    }

    /// The offset in the mapped file of address `addr` of this mapping.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.start).wrapping_add(self.offset)
    }

    /// The name to show for this mapping: the path, or `[anon]`.
    pub fn display_name(&self) -> &str {
        if self.path.is_empty() {
            "[anon]"
        } else {
            &self.path
        }
    }
}

fn parse_line(line: &str) -> Option<Mapping> {
    // 55d4c-55d4d r-xp 00001000 fe:00 10018915     /usr/bin/x (deleted)
    let mut rest = line;
    let mut field = || {
        let trimmed = rest.trim_start_matches(' ');
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (f, r) = trimmed.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field();
    let offset = field();
    let dev = field();
    let inode = field();
    let path = rest.trim_start_matches(' ');
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    (start < end).then_some(())?;
    Some(Mapping {
        start,
        end,
        offset: u64::from_str_radix(offset, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        dev: (u64::from_str_radix(major, 16).ok()? << 32) | u64::from_str_radix(minor, 16).ok()?,
        inode: inode.parse().ok()?,
        path: path.to_owned(),
        deleted,
    })
}

/// The executable mappings of a process, sorted by address: the one parse
/// of `/proc/PID/maps` that the aggregator, the unwind-table worker and the
/// symbolizer share.
#[derive(Clone, Debug, Default)]
pub struct ProcessMaps {
    entries: Vec<Mapping>,
}

impl ProcessMaps {
    /// Parses the text of `/proc/PID/maps`, keeping executable mappings;
    /// malformed lines are skipped.
    pub fn parse(text: &str) -> ProcessMaps {
        let mut entries: Vec<Mapping> = text
            .lines()
            .filter_map(parse_line)
            .filter(|e| e.executable)
            .collect();
        entries.sort_by_key(|e| e.start);
        ProcessMaps { entries }
    }

    /// Reads `/proc/PID/maps` (at most [`MAX_MAPS_BYTES`]).
    pub fn read(pid: u32) -> Result<ProcessMaps, Error> {
        let bytes = read_proc(pid, "maps", MAX_MAPS_BYTES)?;
        Ok(ProcessMaps::parse(&String::from_utf8_lossy(&bytes)))
    }

    /// The mapping holding `pc`.
    pub fn find(&self, pc: u64) -> Option<&Mapping> {
        self.position(pc).map(|i| &self.entries[i])
    }

    /// The index in [`ProcessMaps::entries`] of the mapping `pc` is in.
    pub fn position(&self, pc: u64) -> Option<usize> {
        let i = self
            .entries
            .partition_point(|e| e.start <= pc)
            .checked_sub(1)?;
        (pc < self.entries[i].end).then_some(i)
    }

    pub fn entries(&self) -> &[Mapping] {
        &self.entries
    }
}

/// Reads `/proc/PID/NAME`, at most `cap` bytes; a vanished process is
/// [`Error::ProcessGone`].
fn read_proc(pid: u32, name: &str, cap: u64) -> Result<Vec<u8>, Error> {
    let path = format!("/proc/{pid}/{name}");
    let gone = |e: &io::Error| {
        e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
    };
    let file = File::open(&path).map_err(|e| {
        if gone(&e) {
            Error::ProcessGone { pid }
        } else {
            Error::ProcessAccess { pid, source: e }
        }
    })?;
    let mut out = Vec::new();
    file.take(cap).read_to_end(&mut out).map_err(|e| {
        if gone(&e) {
            Error::ProcessGone { pid }
        } else {
            Error::ProcessAccess { pid, source: e }
        }
    })?;
    Ok(out)
}

/// Why a file of a profiled process was not opened. Each is counted by the
/// caller; none falls back to another path.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path} of process {pid}: not found inside its root")]
    NotFound { pid: u32, path: String },
    #[error("{path} of process {pid}: a symbolic link, or outside its root")]
    Escapes { pid: u32, path: String },
    #[error("{path} of process {pid}: not a regular file")]
    NotRegular { pid: u32, path: String },
    #[error("{path} of process {pid}: {size} bytes, over the cap of {cap}")]
    TooLarge {
        pid: u32,
        path: String,
        size: u64,
        cap: u64,
    },
    #[error("{path} of process {pid}: not the file it maps (replaced or deleted)")]
    Replaced { pid: u32, path: String },
    #[error("{path} of process {pid}: owned by uid {owner}, not by the process's uid {uid}")]
    WrongOwner {
        pid: u32,
        path: String,
        owner: u32,
        uid: u32,
    },
    #[error("{path} of process {pid}: {source}")]
    Io {
        pid: u32,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// What [`open_in_root`] checks besides "a regular file".
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenCheck {
    /// Refuse files larger than this many bytes.
    pub max_bytes: u64,
    /// The inode (and device, unless on overlayfs) the file must have.
    pub identity: Option<(u64, u64)>,
    /// The uid that must own the file.
    pub owner: Option<u32>,
}

const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// Opens `path` as process `pid` sees it, by the one rule for files of a
/// profiled process: `openat2` under `/proc/PID/root` with
/// `RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` as an
/// `O_PATH` handle (no open of the file itself yet, so a FIFO or a device
/// cannot block nor react), `fstat` checked against `check`, and only then
/// reopened for reading, non-blocking and close-on-exec. Paths in
/// `/proc/PID/maps` are already resolved, so a symbolic link on the way
/// means the file changed since it was mapped. Never falls back to a host path.
pub fn open_in_root(pid: u32, path: &str, check: &OpenCheck) -> Result<File, OpenError> {
    ProcessRoot::open(pid, path)?.open_file(path, check)
}

/// A handle on the root directory of a process, taken while it lives, under
/// which [`open_in_root`]'s rule opens files later, also after the process
/// exited (a JVM writes its perf map as it exits) or its PID was reused:
/// the handle is the directory, not `/proc/PID`.
#[derive(Debug)]
pub struct ProcessRoot {
    pid: u32,
    fd: OwnedFd,
}

impl ProcessRoot {
    /// Opens `/proc/PID/root` as an `O_PATH` directory handle (`path` only
    /// names the file the caller wants, for the error).
    pub fn open(pid: u32, path: &str) -> Result<ProcessRoot, OpenError> {
        let io = |source: io::Error| OpenError::Io {
            pid,
            path: path.to_owned(),
            source,
        };
        let root_path = CString::new(format!("/proc/{pid}/root")).map_err(|e| io(e.into()))?;
        // SAFETY: open(2) on a NUL-terminated path; the fd is owned below.
        let root = unsafe {
            libc::open(
                root_path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if root < 0 {
            return Err(io(io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(root) };
        Ok(ProcessRoot { pid, fd })
    }

    /// Opens `path` under this root by the rule of [`open_in_root`].
    pub fn open_file(&self, path: &str, check: &OpenCheck) -> Result<File, OpenError> {
        let pid = self.pid;
        let err_path = || path.to_owned();
        let io = |source: io::Error| OpenError::Io {
            pid,
            path: err_path(),
            source,
        };
        let relative = path.trim_start_matches('/');
        let relative = if relative.is_empty() { "." } else { relative };
        let relative = CString::new(relative).map_err(|_| OpenError::NotFound {
            pid,
            path: err_path(),
        })?;
        // SAFETY: open_how is a plain C struct; all zeroes is its empty value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
        how.resolve =
            libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: openat2 reads the NUL-terminated path and `how`, both alive for
        // the call, and returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                relative.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENOTDIR) => OpenError::NotFound {
                    pid,
                    path: err_path(),
                },
                Some(libc::ELOOP) | Some(libc::EXDEV) => OpenError::Escapes {
                    pid,
                    path: err_path(),
                },
                _ => io(e),
            });
        }
        let fd = i32::try_from(fd).map_err(|_| io(io::Error::other("fd out of range")))?;
        // SAFETY: the kernel just returned this fd; nothing else owns it.
        let handle = unsafe { OwnedFd::from_raw_fd(fd) };
        checked_reopen(pid, path, handle, check)
    }
}

/// Opens the file behind `mapping` of process `pid`: through its
/// `map_files` link where our capabilities allow (the mapped file itself,
/// deleted or replaced or not), else by [`open_in_root`] with its dev and
/// inode checked; a file that no longer is the mapped one is refused.
pub fn open_mapped_file(pid: u32, mapping: &Mapping) -> Result<File, OpenError> {
    let check = OpenCheck {
        max_bytes: MAX_OBJECT_BYTES,
        identity: Some((mapping.dev, mapping.inode)),
        owner: None,
    };
    if let Some(handle) = open_map_files(pid, mapping) {
        return checked_reopen(pid, &mapping.path, handle, &check);
    }
    if mapping.deleted {
        return Err(OpenError::Replaced {
            pid,
            path: mapping.path.clone(),
        });
    }
    open_in_root(pid, &mapping.path, &check)
}

/// An `O_PATH` handle on `/proc/PID/map_files/START-END`, which needs
/// CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE) in the initial namespace.
fn open_map_files(pid: u32, mapping: &Mapping) -> Option<OwnedFd> {
    let path = CString::new(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    ))
    .ok()?;
    // SAFETY: open(2) on a NUL-terminated path; the fd is owned below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    // SAFETY: a fresh fd that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Checks an `O_PATH` handle and reopens it for reading.
fn checked_reopen(
    pid: u32,
    path: &str,
    handle: OwnedFd,
    check: &OpenCheck,
) -> Result<File, OpenError> {
    let io = |source: io::Error| OpenError::Io {
        pid,
        path: path.to_owned(),
        source,
    };
    let st = fstat(handle.as_raw_fd()).map_err(io)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(OpenError::NotRegular {
            pid,
            path: path.to_owned(),
        });
    }
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if size > check.max_bytes {
        return Err(OpenError::TooLarge {
            pid,
            path: path.to_owned(),
            size,
            cap: check.max_bytes,
        });
    }
    if let Some((dev, inode)) = check.identity {
        let same_dev = maps_dev(st.st_dev) == dev || on_overlayfs(handle.as_raw_fd());
        if st.st_ino != inode || !same_dev {
            return Err(OpenError::Replaced {
                pid,
                path: path.to_owned(),
            });
        }
    }
    if let Some(uid) = check.owner {
        if st.st_uid != uid {
            return Err(OpenError::WrongOwner {
                pid,
                path: path.to_owned(),
                owner: st.st_uid,
                uid,
            });
        }
    }
    // Reopening our own O_PATH fd through /proc/self/fd opens that inode
    // and nothing else.
    let reopen =
        CString::new(format!("/proc/self/fd/{}", handle.as_raw_fd())).map_err(|e| io(e.into()))?;
    // SAFETY: open(2) on a NUL-terminated path; the fd is owned below.
    let fd = unsafe {
        libc::open(
            reopen.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return Err(io(io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn fstat(fd: i32) -> io::Result<libc::stat> {
    // SAFETY: stat is a plain C struct, filled by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the call, st lives across it.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

fn on_overlayfs(fd: i32) -> bool {
    // SAFETY: statfs is a plain C struct, filled by fstatfs.
    let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the call, sf lives across it.
    unsafe { libc::fstatfs(fd, &mut sf) == 0 && sf.f_type as i64 == OVERLAYFS_SUPER_MAGIC }
}

/// `st_dev` in the packing of `/proc/PID/maps` (`major << 32 | minor`).
fn maps_dev(dev: u64) -> u64 {
    (u64::from(libc::major(dev)) << 32) | u64::from(libc::minor(dev))
}

/// What smolder needs to know of a process, read once: for filters,
/// resource attributes and `service.name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessFacts {
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub comm: String,
    /// The target of `/proc/PID/exe` (as the process sees it).
    pub exe: Option<String>,
    /// `/proc/PID/cmdline`, split at NULs.
    pub cmdline: Vec<String>,
    /// `/proc/PID/cgroup`, the unified (v2) path when there is one.
    pub cgroup: Option<String>,
    /// `OTEL_SERVICE_NAME` from `/proc/PID/environ` (readable as root or
    /// as the process's user).
    pub service_name: Option<String>,
    /// Real uid, from `/proc/PID/status`.
    pub uid: Option<u32>,
    /// The PID inside the process's own PID namespace.
    pub namespace_pid: Option<u32>,
}

impl ProcessFacts {
    /// Reads the facts of `pid`; what cannot be read stays empty. `comm` is
    /// used when `/proc/PID/comm` is gone (a process that exited).
    pub fn read(pid: u32, comm: &str) -> ProcessFacts {
        let text = |name: &str, cap| {
            read_proc(pid, name, cap)
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let status = text("status", MAX_FACT_BYTES).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let uid = field("Uid:").and_then(|v| v.split_whitespace().next()?.parse().ok());
        let namespace_pid = field("NSpid:").and_then(|v| v.split_whitespace().last()?.parse().ok());
        let cgroup = text("cgroup", MAX_FACT_BYTES).and_then(|t| {
            let lines: Vec<&str> = t.lines().collect();
            let unified = lines.iter().find_map(|l| l.strip_prefix("0::"));
            unified
                .or_else(|| lines.first().and_then(|l| l.splitn(3, ':').nth(2)))
                .map(str::to_owned)
        });
        let environ = read_proc(pid, "environ", MAX_FACT_BYTES).unwrap_or_default();
        let service_name = environ
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(b"OTEL_SERVICE_NAME="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .filter(|v| !v.is_empty());
        let cmdline = read_proc(pid, "cmdline", MAX_FACT_BYTES)
            .unwrap_or_default()
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let proc_comm = text("comm", 64).map(|c| c.trim_end_matches('\n').to_owned());
        ProcessFacts {
            pid,
            comm: proc_comm
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| comm.to_owned()),
            exe: fs::read_link(format!("/proc/{pid}/exe"))
                .ok()
                .map(|p| p.to_string_lossy().into_owned()),
            cmdline,
            cgroup,
            service_name,
            uid,
            namespace_pid,
        }
    }
}

/// The bytes of the vDSO mapped at `entry` in process `pid`. A vDSO of
/// the kernel's own size is the kernel's image, read from smolder's own
/// vDSO: a process can make its copy writable and rewrite it, so its
/// memory is read only for a vDSO of another layout (a 32-bit process),
/// and then at most [`MAX_VDSO_BYTES`].
pub(crate) fn read_vdso(pid: u32, entry: &Mapping) -> Result<Vec<u8>, Error> {
    let len = usize::try_from(entry.end - entry.start)
        .ok()
        .filter(|&l| l > 0 && l as u64 <= MAX_VDSO_BYTES)
        .ok_or_else(|| Error::object("[vdso]", "implausible vDSO size"))?;
    if let Some(image) = kernel_vdso().filter(|image| image.len() == len) {
        return Ok(image.to_vec());
    }
    let path = format!("/proc/{pid}/mem");
    let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, entry.start)
        .map_err(|e| Error::io(&path, e))?;
    Ok(buf)
}

/// The largest vDSO read from a process's memory (x86-64's is 8 KiB).
pub const MAX_VDSO_BYTES: u64 = 1 << 20;

/// The kernel's vDSO image as mapped into smolder itself (at
/// `AT_SYSINFO_EHDR`, its length from our own maps), or `None` without one.
pub(crate) fn kernel_vdso() -> Option<&'static [u8]> {
    static IMAGE: std::sync::OnceLock<Option<&'static [u8]>> = std::sync::OnceLock::new();
    *IMAGE.get_or_init(|| {
        // SAFETY: getauxval has no preconditions.
        let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        let maps = ProcessMaps::read(std::process::id()).ok()?;
        let entry = maps
            .entries()
            .iter()
            .find(|e| e.kind() == MappingKind::Vdso && e.start == base)?;
        let len = usize::try_from(entry.end - entry.start).ok()?;
        let ptr = usize::try_from(base).ok()? as *const u8;
        // SAFETY: the kernel maps the vDSO readable at AT_SYSINFO_EHDR for the
        // life of the process, and our own maps say it spans `len` bytes.
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    })
}

/// The parts of an ELF file that symbolization or unwinding reads (headers,
/// symbol tables, notes, debug sections; or the CFI), copied into an
/// anonymous mapping the size of the file; code and data are left as zero
/// pages that cost no memory. A copy: the process owning the file cannot
/// truncate it under us (no SIGBUS), and a 100 MiB binary whose tables
/// take 5 MiB costs 5 MiB.
pub struct ElfCopy {
    map: memmap2::MmapMut,
    /// Bytes copied in: what the copy holds in memory, at most its length.
    copied: usize,
    /// Parts left out to stay within the copy's byte budget.
    left_out: LeftOut,
}

/// Which parts of an ELF file an [`ElfCopy`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfParts {
    /// What symbolization reads: headers, symbol tables, notes, debug
    /// links and the debug sections, not the CFI (`.eh_frame`,
    /// `.eh_frame_hdr`, `.debug_frame`: 8.7 MiB of libLLVM that no name
    /// comes from); when these come to more
    /// than `max_bytes`, the debug sections are left out, then `.symtab`
    /// and `.strtab` (names come from what is left: `.symtab`, else
    /// `.dynsym`). What was left out is in [`ElfCopy::left_out`].
    Symbols { max_bytes: u64 },
    /// What an unwind table is built from: headers, notes, `.eh_frame`,
    /// `.eh_frame_hdr`, `.debug_frame`; no symbol tables, no debug sections.
    /// When these come to more than `max_bytes`, none of them is copied
    /// ([`LeftOut::unwind`]).
    Unwind { max_bytes: u64 },
    /// Everything but the debug sections (symbols for runtime detection).
    NoDebug,
}

/// What an [`ElfCopy`] left out because of its byte budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeftOut {
    /// The DWARF sections (`.debug_*`, `.zdebug_*`): no file names, lines
    /// or inlined frames from this file.
    pub debug: bool,
    /// `.symtab` and `.strtab`: names from `.dynsym` only.
    pub symtab: bool,
    /// What an unwind table is built from ([`ElfParts::Unwind`]): over the
    /// budget, so no table.
    pub unwind: bool,
}

impl ElfCopy {
    /// What was left out to stay within the budget.
    pub fn left_out(&self) -> LeftOut {
        self.left_out
    }

    /// Bytes of the file copied in (the rest are zero pages that cost no
    /// memory): what the copy weighs.
    pub fn copied_bytes(&self) -> usize {
        self.copied.min(self.map.len())
    }
}

impl std::ops::Deref for ElfCopy {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl std::fmt::Debug for ElfCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ElfCopy({} bytes, {} copied)",
            self.map.len(),
            self.copied_bytes()
        )
    }
}

/// Sections that are mapped into memory but read by no lookup: the bulk of
/// a binary.
fn section_is_skipped(name: &[u8], flags: u64) -> bool {
    const KEEP_ALLOCATED: &[&[u8]] = &[
        b".dynsym",
        b".dynstr",
        b".eh_frame",
        b".eh_frame_hdr",
        b".gnu_debuglink",
        b".gnu_debugaltlink",
        b".gnu_debugdata",
        b".debug_frame",
    ];
    let allocated = flags & object::elf::SHF_ALLOC.0 != 0;
    allocated && !name.starts_with(b".note") && !KEEP_ALLOCATED.contains(&name)
}

fn is_debug_section(name: &[u8]) -> bool {
    (name.starts_with(b".debug_") && name != b".debug_frame") || name.starts_with(b".zdebug_")
}

/// Reads what an [`ElfCopy`] holds from `file` (everything symbolization
/// reads), at most `cap` bytes in all; a file that is not ELF is copied
/// whole (under the same cap).
pub fn read_elf_copy(file: &File, cap: u64) -> io::Result<ElfCopy> {
    read_elf_parts(
        file,
        cap,
        ElfParts::Symbols {
            max_bytes: u64::MAX,
        },
    )
}

/// Reads the `parts` of `file` into an [`ElfCopy`], under the same rules
/// as [`read_elf_copy`].
pub fn read_elf_parts(file: &File, cap: u64, parts: ElfParts) -> io::Result<ElfCopy> {
    use object::read::elf::{FileHeader, SectionHeader};
    let len = file.metadata()?.len();
    if len > cap {
        return Err(io::Error::other(format!(
            "{len} bytes, over the cap of {cap}"
        )));
    }
    let size = usize::try_from(len).map_err(io::Error::other)?;
    let mut copy = memmap2::MmapOptions::new().len(size.max(1)).map_anon()?;
    let mut copied = 0usize;
    let mut fill = |copy: &mut memmap2::MmapMut, offset: u64, bytes: u64| -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = usize::try_from(offset.saturating_add(bytes))
            .map_err(io::Error::other)?
            .min(size);
        if start >= end {
            return Ok(());
        }
        copied += end - start;
        // A file that shrank since fstat reads short: the rest stays zero.
        let mut at = start;
        while at < end {
            match file.read_at(&mut copy[at..end], at as u64) {
                Ok(0) => break,
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    fill(&mut copy, 0, 64)?;
    let is_elf64 = copy.get(..5) == Some(b"\x7fELF\x02");
    let is_elf32 = copy.get(..5) == Some(b"\x7fELF\x01");
    if !(is_elf64 || is_elf32) {
        if matches!(parts, ElfParts::Symbols { max_bytes } | ElfParts::Unwind { max_bytes } if len > max_bytes)
        {
            return Err(io::Error::other(format!(
                "not ELF, and {len} bytes, over the copy budget"
            )));
        }
        fill(&mut copy, 0, len)?;
        return Ok(ElfCopy {
            map: copy,
            copied,
            left_out: LeftOut::default(),
        });
    }
    fn headers<H: FileHeader<Endian = object::Endianness>>(
        copy: &mut memmap2::MmapMut,
        parts: ElfParts,
        fill: &mut dyn FnMut(&mut memmap2::MmapMut, u64, u64) -> io::Result<()>,
    ) -> io::Result<LeftOut> {
        let bad = |e: object::read::Error| io::Error::other(e.to_string());
        let (ph, ph_len, sh, sh_len) = {
            let header = H::parse(&copy[..]).map_err(bad)?;
            let endian = header.endian().map_err(bad)?;
            let ph = header.e_phoff(endian).into();
            let ph_len = u64::from(header.e_phnum(endian)) * u64::from(header.e_phentsize(endian));
            let sh = header.e_shoff(endian).into();
            // e_shnum 0 with sections means the count is in the first header.
            let sh_len =
                u64::from(header.e_shnum(endian).max(1)) * u64::from(header.e_shentsize(endian));
            (ph, ph_len, sh, sh_len)
        };
        fill(copy, ph, ph_len)?;
        fill(copy, sh, sh_len)?;
        let first = H::parse(&copy[..]).map_err(bad)?;
        let endian = first.endian().map_err(bad)?;
        if let Ok(count) = first.shnum(endian, &copy[..]) {
            let sh_all = u64::from(count) * u64::from(first.e_shentsize(endian));
            fill(copy, sh, sh_all)?;
        }
        // Section names, then the sections themselves.
        let sections: Vec<(u64, u64, u32, u64, u32)> = {
            let header = H::parse(&copy[..]).map_err(bad)?;
            let table = header.section_headers(endian, &copy[..]).map_err(bad)?;
            table
                .iter()
                .map(|s| {
                    (
                        s.sh_offset(endian).into(),
                        s.sh_size(endian).into(),
                        s.sh_type(endian).0,
                        s.sh_flags(endian).0,
                        s.sh_name(endian),
                    )
                })
                .collect()
        };
        let strndx = {
            let header = H::parse(&copy[..]).map_err(bad)?;
            header.shstrndx(endian, &copy[..]).map_err(bad)? as usize
        };
        if let Some(&(offset, size, ..)) = sections.get(strndx) {
            fill(copy, offset, size)?;
        }
        let names = sections
            .get(strndx)
            .map(|&(offset, size, ..)| (offset, size));
        let mut wanted: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        for &(offset, size, kind, flags, name) in &sections {
            if kind == object::elf::SHT_NOBITS.0 || kind == object::elf::SHT_NULL.0 {
                continue;
            }
            let name = names
                .and_then(|(o, s)| {
                    let table = copy
                        .get(usize::try_from(o).ok()?..usize::try_from(o.checked_add(s)?).ok()?)?;
                    let rest = table.get(usize::try_from(name).ok()?..)?;
                    Some(rest[..rest.iter().position(|&b| b == 0)?].to_vec())
                })
                .unwrap_or_default();
            let unwanted = match parts {
                ElfParts::Symbols { .. } => {
                    matches!(&name[..], b".eh_frame" | b".eh_frame_hdr" | b".debug_frame")
                }
                ElfParts::NoDebug => is_debug_section(&name),
                ElfParts::Unwind { .. } => {
                    is_debug_section(&name)
                        || matches!(&name[..], b".symtab" | b".strtab" | b".dynsym" | b".dynstr")
                }
            };
            if !(section_is_skipped(&name, flags) || unwanted) {
                wanted.push((offset, size, name));
            }
        }
        let mut left_out = LeftOut::default();
        let total = |w: &[(u64, u64, Vec<u8>)]| {
            w.iter()
                .fold(0u64, |sum, &(_, size, _)| sum.saturating_add(size))
        };
        if let ElfParts::Unwind { max_bytes } = parts {
            if total(&wanted) > max_bytes {
                wanted.clear();
                left_out.unwind = true;
            }
        }
        if let ElfParts::Symbols { max_bytes } = parts {
            if total(&wanted) > max_bytes && wanted.iter().any(|(_, _, n)| is_debug_section(n)) {
                wanted.retain(|(_, _, n)| !is_debug_section(n));
                left_out.debug = true;
            }
            let symtab = |n: &[u8]| n == b".symtab" || n == b".strtab";
            if total(&wanted) > max_bytes && wanted.iter().any(|(_, _, n)| symtab(n)) {
                wanted.retain(|(_, _, n)| !symtab(n));
                left_out.symtab = true;
            }
        }
        for (offset, size, _) in wanted {
            fill(copy, offset, size)?;
        }
        Ok(left_out)
    }
    let result = if is_elf64 {
        headers::<object::elf::FileHeader64<object::Endianness>>(&mut copy, parts, &mut fill)
    } else {
        headers::<object::elf::FileHeader32<object::Endianness>>(&mut copy, parts, &mut fill)
    };
    let left_out = match result {
        Ok(left_out) => left_out,
        Err(e) => {
            let budget = match parts {
                ElfParts::Symbols { max_bytes } | ElfParts::Unwind { max_bytes } => max_bytes,
                ElfParts::NoDebug => u64::MAX,
            };
            if len > budget {
                return Err(io::Error::other(format!(
                    "section headers do not parse ({e}) and the whole file, {len} bytes, is over the budget of {budget}"
                )));
            }
            // Headers that do not parse: keep the bytes, let the parser say why.
            fill(&mut copy, 0, len)?;
            LeftOut::default()
        }
    };
    Ok(ElfCopy {
        map: copy,
        copied,
        left_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_elf_copy_holds_the_tables_and_leaves_code_out() {
        use object::{Object, ObjectSection};
        let exe = std::env::current_exe().unwrap();
        let whole = std::fs::read(&exe).unwrap();
        let copy = read_elf_copy(&File::open(&exe).unwrap(), MAX_OBJECT_BYTES).unwrap();
        assert_eq!(copy.len(), whole.len());
        let file = object::File::parse(&*copy).unwrap();
        let range = |name: &str| {
            let (start, size) = file.section_by_name(name).unwrap().file_range().unwrap();
            start as usize..(start + size) as usize
        };
        for kept in [".symtab", ".strtab", ".debug_info", ".debug_line"] {
            assert_eq!(copy[range(kept)], whole[range(kept)], "{kept}");
        }
        for left in [".text", ".eh_frame", ".eh_frame_hdr"] {
            assert!(
                copy[range(left)].iter().all(|&b| b == 0),
                "{left} is not copied (code, CFI)"
            );
        }
        // Not ELF: copied whole.
        let mut text = temp_file();
        std::io::Write::write_all(&mut text.1, b"not an ELF file").unwrap();
        let copy = read_elf_copy(&File::open(&text.0).unwrap(), 1 << 20).unwrap();
        assert_eq!(&copy[..], b"not an ELF file");
        // Over the cap: refused.
        assert!(read_elf_copy(&File::open(&text.0).unwrap(), 4).is_err());
        let _ = std::fs::remove_file(&text.0);
    }

    fn temp_file() -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("smolder-elfcopy-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        (path, file)
    }

    const MAPS: &str = "\
55d5c7a00000-55d5c7a22000 r--p 00000000 fd:01 1835053                    /usr/bin/cat
55d5c7a22000-55d5c7a3b000 r-xp 00022000 fd:01 1835053                    /usr/bin/cat
7f0000000000-7f0000001000 rwxp 00000000 00:00 0 
7f0000002000-7f0000003000 r-xp 00001000 fd:01 42                         /tmp/my prog (deleted)
7ffd1c5f0000-7ffd1c5f2000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
garbage line
";

    #[test]
    fn parses_executable_mappings() {
        let maps = ProcessMaps::parse(MAPS);
        let e = maps.entries();
        assert_eq!(e.len(), 5);
        assert_eq!(e[0].start, 0x55d5c7a22000);
        assert_eq!(e[0].offset, 0x22000);
        assert_eq!(e[0].inode, 1835053);
        assert_eq!(e[0].dev, (0xfd << 32) | 1);
        assert_eq!(e[0].kind(), MappingKind::File);
        assert_eq!(e[1].kind(), MappingKind::Anonymous);
        assert_eq!(e[2].path, "/tmp/my prog");
        assert!(e[2].deleted && e[2].is_file());
        assert_eq!(e[3].kind(), MappingKind::Vdso);
        assert_eq!(e[4].kind(), MappingKind::Pseudo);
        assert_eq!(e[0].file_offset(0x55d5c7a22010), 0x22010);
        assert_eq!(maps.find(0x55d5c7a22000), Some(&e[0]));
        assert!(maps.find(0x55d5c7a21fff).is_none(), "not executable");
        assert!(maps.find(0x55d5c7a3b000).is_none(), "end is exclusive");
        assert!(maps.find(0x1000).is_none());
    }

    #[test]
    fn own_maps_open_and_facts() {
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        let pc = own_maps_open_and_facts as *const () as usize as u64;
        let exe = maps.find(pc).expect("our code is mapped");
        assert!(exe.is_file());
        let file = open_mapped_file(std::process::id(), exe).expect("our own binary opens");
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap()),
            exe.inode
        );
        let facts = ProcessFacts::read(std::process::id(), "x");
        assert!(!facts.comm.is_empty() && !facts.cmdline.is_empty());
        assert_eq!(facts.uid, Some(unsafe { libc::getuid() }));
    }

    #[test]
    fn open_rule_refuses_fifos_symlinks_and_big_files() {
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
        let fifo = CString::new(p("fifo")).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::os::unix::fs::symlink("/etc/hostname", p("link")).unwrap();
        fs::write(p("big"), vec![0u8; 100]).unwrap();
        let check = OpenCheck {
            max_bytes: 10,
            ..OpenCheck::default()
        };
        // Through our own root (/proc/self/root is "/"), as for any process.
        assert!(matches!(
            open_in_root(pid, &p("fifo"), &check),
            Err(OpenError::NotRegular { .. })
        ));
        assert!(matches!(
            open_in_root(pid, &p("link"), &check),
            Err(OpenError::Escapes { .. })
        ));
        assert!(matches!(
            open_in_root(pid, &p("big"), &check),
            Err(OpenError::TooLarge { .. })
        ));
        assert!(matches!(
            open_in_root(pid, &p("none"), &check),
            Err(OpenError::NotFound { .. })
        ));
        let ok = OpenCheck {
            max_bytes: 100,
            owner: Some(unsafe { libc::getuid() }),
            identity: None,
        };
        assert!(open_in_root(pid, &p("big"), &ok).is_ok());
        let wrong_owner = OpenCheck {
            owner: Some(12345),
            ..ok
        };
        assert!(matches!(
            open_in_root(pid, &p("big"), &wrong_owner),
            Err(OpenError::WrongOwner { .. })
        ));
    }

    #[test]
    fn gone_process_is_reported() {
        assert!(matches!(
            ProcessMaps::read(u32::MAX - 1),
            Err(Error::ProcessGone { .. })
        ));
    }
}
