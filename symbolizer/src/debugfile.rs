//! Finding separate debug files: by build-id under the debug root, by
//! `.gnu_debuglink` (CRC32-checked) and the dwz supplementary file
//! (`.gnu_debugaltlink`). Owns the search order; reads nothing else.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::elf::{hex, ElfObject, Env};
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
    let name = Path::new(OsStr::from_bytes(name));
    if name.as_os_str().is_empty() || name.is_absolute() {
        return None;
    }
    for candidate in debuglink_candidates(obj, name, env.debug_root) {
        if same_file(&candidate, &obj.path) {
            continue;
        }
        let Some(found) = open_candidate(&candidate, env) else {
            continue;
        };
        if crc32fast::hash(found.data()) != crc {
            Counters::bump(&env.counters.debuglink_crc_mismatches);
            tracing::debug!(path = %candidate.display(), "debug link CRC32 mismatch");
            continue;
        }
        return Some(found);
    }
    None
}

/// Where GDB looks for a `.gnu_debuglink` name: next to the binary, in
/// `.debug/` beside it, and under the debug root plus the binary's directory.
fn debuglink_candidates(obj: &ElfObject, name: &Path, debug_root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<&Path> = Vec::new();
    for p in [&obj.path, &obj.logical_path] {
        if let Some(dir) = p.parent() {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    let mut out = Vec::new();
    for dir in &dirs {
        out.push(dir.join(name));
        out.push(dir.join(".debug").join(name));
    }
    if let Some(dir) = obj.logical_path.parent() {
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
    match ElfObject::open(path, path) {
        Ok(obj) => Some(obj.into_debug_file()),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
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
    if name.is_absolute() {
        // Debian's dwz files name `/usr/lib/debug/.dwz/...`: re-root them too.
        if let Ok(rest) = name.strip_prefix("/usr/lib/debug") {
            candidates.push(env.debug_root.join(rest));
        }
        candidates.push(name.to_owned());
    } else if let Some(dir) = obj.path.parent() {
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
}
