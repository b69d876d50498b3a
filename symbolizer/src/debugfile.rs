//! Finding separate debug files: by build-id under the debug root, by
//! `.gnu_debuglink` (CRC32-checked before it is parsed) and the dwz
//! supplementary file (`.gnu_debugaltlink`, build-id-checked). Owns the
//! search order. A link is a plain file name looked up under the debug
//! root (and beside the binary only for a file the user named, never for
//! one of a profiled process); anything else is refused and counted.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::elf::{hex, Backing, ElfObject, Env};
use crate::stats::Counters;
use crate::Error;

/// `ROOT/.build-id/xx/rest.debug` for build-id `id`.
pub(crate) fn build_id_path(debug_root: &Path, id: &[u8]) -> Option<PathBuf> {
    let (first, rest) = id.split_first()?;
    if rest.is_empty() {
        return None;
    }
    Some(
        debug_root
            .join(".build-id")
            .join(format!("{first:02x}"))
            .join(format!("{}.debug", hex(rest))),
    )
}

/// The separate debug file of `obj`, if one is found and matches.
pub(crate) fn find(obj: &ElfObject, env: &Env<'_>) -> Option<ElfObject> {
    if let Some(id) = obj.build_id() {
        if let Some(path) = build_id_path(env.debug_root, id) {
            if let Some(found) = open_candidate(&path, env) {
                if found.build_id() == Some(id) {
                    return Some(found);
                }
                tracing::debug!(path = %path.display(), "debug file has another build-id");
            }
        }
    }
    let (name, crc) = obj.debuglink()?;
    let Some(name) = plain_file_name(name) else {
        Counters::bump(&env.counters.debug_links_refused);
        tracing::debug!(path = %obj.path.display(), "debug link is not a plain file name");
        return None;
    };
    for candidate in debuglink_candidates(obj, name, env.debug_root) {
        if same_file(&candidate, &obj.path) {
            continue;
        }
        let Some(backing) = read_candidate(&candidate, env) else {
            continue;
        };
        if crc32fast::hash(&backing) != crc {
            Counters::bump(&env.counters.debuglink_crc_mismatches);
            tracing::debug!(path = %candidate.display(), "debug link CRC32 mismatch");
            continue;
        }
        match ElfObject::parse(Arc::new(backing), &candidate, &candidate) {
            Ok(found) => return Some(found.into_debug_file()),
            Err(e) => env.counters.error(&e),
        }
    }
    None
}

/// `name` if it is one path component: not empty, no `/`, not `.` or `..`.
fn plain_file_name(name: &[u8]) -> Option<&Path> {
    (!name.is_empty() && !name.contains(&b'/') && name != b"." && name != b"..")
        .then(|| Path::new(OsStr::from_bytes(name)))
}

/// `path` with no `..` component.
fn no_parent_dirs(path: &Path) -> bool {
    !path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
}

/// Where GDB looks for a `.gnu_debuglink` name: under the debug root plus
/// the binary's directory and, for a file the user named, beside it and in
/// `.debug/` beside it.
fn debuglink_candidates(obj: &ElfObject, name: &Path, debug_root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if obj.trusted_dir {
        let mut dirs: Vec<&Path> = Vec::new();
        for p in [&obj.path, &obj.logical_path] {
            if let Some(dir) = p.parent() {
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        for dir in &dirs {
            out.push(dir.join(name));
            out.push(dir.join(".debug").join(name));
        }
    }
    if let Some(dir) = obj.logical_path.parent().filter(|d| no_parent_dirs(d)) {
        let relative = dir.strip_prefix("/").unwrap_or(dir);
        out.push(debug_root.join(relative).join(name));
    }
    out
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn open_candidate(path: &Path, env: &Env<'_>) -> Option<ElfObject> {
    let backing = read_candidate(path, env)?;
    match ElfObject::parse(Arc::new(backing), path, path) {
        Ok(obj) => Some(obj.into_debug_file()),
        Err(e) => {
            env.counters.error(&e);
            None
        }
    }
}

/// The bytes of a debug-file candidate: a regular file under the debug
/// root (or beside a file the user named), which no profiled process owns.
fn read_candidate(path: &Path, env: &Env<'_>) -> Option<Backing> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            env.counters.error(&Error::io(path, e));
            return None;
        }
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return None;
    }
    match Backing::map(&file, path) {
        Ok(b) => Some(b),
        Err(e) => {
            env.counters.error(&e);
            None
        }
    }
}

/// The dwz supplementary file named by `.gnu_debugaltlink` (`link` is its path
/// and build-id), looked up by build-id first and then by path.
pub(crate) fn find_alt(
    obj: &ElfObject,
    (name, id): (&[u8], &[u8]),
    env: &Env<'_>,
) -> Option<Arc<ElfObject>> {
    let mut candidates = Vec::new();
    if let Some(p) = build_id_path(env.debug_root, id) {
        candidates.push(p);
    }
    let name = Path::new(OsStr::from_bytes(name));
    if !no_parent_dirs(name) {
        Counters::bump(&env.counters.debug_links_refused);
    } else if name.is_absolute() {
        // Debian's dwz files name `/usr/lib/debug/.dwz/...`: looked up under
        // the debug root, never at that absolute path.
        match name.strip_prefix("/usr/lib/debug") {
            Ok(rest) => candidates.push(env.debug_root.join(rest)),
            Err(_) => Counters::bump(&env.counters.debug_links_refused),
        }
    } else if let Some(dir) = obj.path.parent().filter(|_| obj.trusted_dir) {
        candidates.push(dir.join(name));
    }
    candidates.into_iter().find_map(|path| {
        let found = open_candidate(&path, env)?;
        (found.build_id() == Some(id)).then(|| Arc::new(found))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_path_layout() {
        assert_eq!(
            build_id_path(Path::new("/usr/lib/debug"), &[0xab, 0xcd, 0xef]).unwrap(),
            Path::new("/usr/lib/debug/.build-id/ab/cdef.debug")
        );
        assert_eq!(build_id_path(Path::new("/d"), &[0xab]), None);
        assert_eq!(build_id_path(Path::new("/d"), &[]), None);
    }

    #[test]
    fn debug_links_must_be_plain_names() {
        assert!(plain_file_name(b"prog.debug").is_some());
        for bad in [
            &b"../../etc/shadow"[..],
            b"/etc/shadow",
            b"..",
            b".",
            b"",
            b"a/b",
        ] {
            assert!(plain_file_name(bad).is_none(), "{bad:?}");
        }
        assert!(!no_parent_dirs(Path::new("/usr/lib/debug/../../etc")));
        assert!(no_parent_dirs(Path::new("/usr/lib/debug/.dwz/x")));
    }
}
