//! A live process as a source of addresses: its `/proc/PID/maps`, the path
//! through which each mapped file can be opened from here (its mount
//! namespace, or `map_files` for deleted and replaced binaries), and its vDSO
//! image. Reads `/proc` only.

use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::Error;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MapEntry {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) executable: bool,
    pub(crate) offset: u64,
    pub(crate) inode: u64,
    /// The path or pseudo-name (`[vdso]`, `[heap]`); empty for anonymous memory.
    pub(crate) name: String,
}

/// What a mapping holds, as far as symbolization cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MappingKind<'a> {
    /// A file; `deleted` when the kernel marks it ` (deleted)`.
    File {
        path: &'a str,
        deleted: bool,
    },
    Vdso,
    /// Anonymous memory (where JIT compilers put code).
    Anonymous,
    /// Other pseudo-mappings: `[vsyscall]`, `[heap]`, `[stack]`.
    Pseudo,
}

impl MapEntry {
    pub(crate) fn kind(&self) -> MappingKind<'_> {
        let name = self.name.as_str();
        if name.is_empty() || name.starts_with("[anon") {
            MappingKind::Anonymous
        } else if name == "[vdso]" {
            MappingKind::Vdso
        } else if name.starts_with('[') {
            MappingKind::Pseudo
        } else {
            match name.strip_suffix(" (deleted)") {
                Some(path) => MappingKind::File {
                    path,
                    deleted: true,
                },
                None => MappingKind::File {
                    path: name,
                    deleted: false,
                },
            }
        }
    }

    /// The offset in the mapped file of address `addr` of this mapping.
    pub(crate) fn file_offset(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.start).wrapping_add(self.offset)
    }
}

/// Reads and parses `/proc/PID/maps`, sorted by address.
pub(crate) fn read_maps(pid: u32) -> Result<Vec<MapEntry>, Error> {
    let path = format!("/proc/{pid}/maps");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(parse_maps(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::ProcessGone { pid }),
        // ESRCH: the process exited between open and read.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(Error::ProcessGone { pid }),
        Err(source) => Err(Error::ProcessAccess { pid, source }),
    }
}

/// Parses the text of a maps file; malformed lines are skipped.
pub(crate) fn parse_maps(text: &str) -> Vec<MapEntry> {
    let mut out: Vec<MapEntry> = text.lines().filter_map(parse_line).collect();
    out.sort_by_key(|m| m.start);
    out
}

fn parse_line(line: &str) -> Option<MapEntry> {
    // start-end perms offset dev inode [name...]; the name may contain spaces.
    let mut rest = line;
    let mut field = || {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (f, r) = trimmed.split_at(end);
        rest = r;
        f
    };
    let range = field();
    let perms = field();
    let offset = field();
    let _dev = field();
    let inode = field();
    let name = rest.trim_start().to_owned();
    let (start, end) = range.split_once('-')?;
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        inode: inode.parse().ok()?,
        name,
    })
}

/// The index of the mapping that contains `addr`.
pub(crate) fn find_mapping(maps: &[MapEntry], addr: u64) -> Option<usize> {
    let idx = maps.partition_point(|m| m.start <= addr).checked_sub(1)?;
    (addr < maps[idx].end).then_some(idx)
}

/// A path from which this process can open the file behind `entry` of `pid`.
///
/// The path as the process sees it, through its root (containers, mount
/// namespaces), when it still names the same inode; otherwise the mapping's
/// own `map_files` link, which reaches deleted and replaced files.
pub(crate) fn open_path(pid: u32, entry: &MapEntry, path: &str, deleted: bool) -> PathBuf {
    if !deleted {
        let rooted = Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/'));
        if let Ok(meta) = fs::metadata(&rooted) {
            if entry.inode == 0 || meta.ino() == entry.inode {
                return rooted;
            }
        }
    }
    map_files_path(pid, entry)
}

pub(crate) fn map_files_path(pid: u32, entry: &MapEntry) -> PathBuf {
    PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        entry.start, entry.end
    ))
}

/// The bytes of the vDSO mapped at `entry` in process `pid`.
pub(crate) fn read_vdso(pid: u32, entry: &MapEntry) -> Result<Vec<u8>, Error> {
    let len = usize::try_from(entry.end - entry.start)
        .ok()
        .filter(|&l| l > 0 && l <= 1 << 24)
        .ok_or_else(|| Error::object("[vdso]", "implausible vDSO size"))?;
    if pid == std::process::id() {
        if let Some(bytes) = own_vdso(entry, len) {
            return Ok(bytes);
        }
    }
    let path = format!("/proc/{pid}/mem");
    let file = fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, entry.start)
        .map_err(|e| Error::io(&path, e))?;
    Ok(buf)
}

/// Our own vDSO, read in place: the auxiliary vector gives its address.
fn own_vdso(entry: &MapEntry, len: usize) -> Option<Vec<u8>> {
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    if base == 0 || base != entry.start {
        return None;
    }
    let ptr = usize::try_from(base).ok()? as *const u8;
    // SAFETY: the kernel maps the vDSO readable for the life of the process at
    // AT_SYSINFO_EHDR, and `entry` (from our own maps) says it spans `len` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    Some(bytes.to_vec())
}

/// The PID of `pid` inside its own PID namespace (the last `NSpid` field).
pub(crate) fn namespace_pid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn parses_maps_lines() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 6);
        assert_eq!(maps[1].start, 0x55d5c7a22000);
        assert_eq!(maps[1].offset, 0x22000);
        assert_eq!(maps[1].inode, 1835053);
        assert!(maps[1].executable && !maps[0].executable);
        assert_eq!(
            maps[1].kind(),
            MappingKind::File {
                path: "/usr/bin/cat",
                deleted: false
            }
        );
        assert_eq!(maps[2].kind(), MappingKind::Anonymous);
        assert_eq!(
            maps[3].kind(),
            MappingKind::File {
                path: "/tmp/my prog",
                deleted: true
            }
        );
        assert_eq!(maps[4].kind(), MappingKind::Vdso);
        assert_eq!(maps[5].kind(), MappingKind::Pseudo);
        assert_eq!(maps[1].file_offset(0x55d5c7a22010), 0x22010);
    }

    #[test]
    fn finds_mappings() {
        let maps = parse_maps(MAPS);
        assert_eq!(find_mapping(&maps, 0x55d5c7a22000), Some(1));
        assert_eq!(find_mapping(&maps, 0x55d5c7a21fff), Some(0));
        assert_eq!(find_mapping(&maps, 0x55d5c7a3b000), None);
        assert_eq!(find_mapping(&maps, 0x1000), None);
    }

    #[test]
    fn own_process_maps_and_namespace_pid() {
        let maps = read_maps(std::process::id()).unwrap();
        assert!(maps.iter().any(|m| m.executable));
        assert!(namespace_pid(std::process::id()).is_some());
    }

    #[test]
    fn gone_process_is_reported() {
        // PIDs are below 2^22 on Linux.
        assert!(matches!(
            read_maps(u32::MAX - 1),
            Err(Error::ProcessGone { .. })
        ));
    }
}
