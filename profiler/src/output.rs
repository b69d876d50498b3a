//! Where an output file is written: beside its target and renamed into
//! place, unless the target is not a regular file.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

/// True when `path` names an existing file that is neither a regular file
/// nor a directory (following symbolic links): `/dev/null`, a FIFO, a
/// terminal. Such a target is written in place; renaming a new file over it
/// would replace the device (as root, `-o /dev/null` would leave a regular
/// file at `/dev/null`).
pub fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// Opens a special file (see [`is_special`]) for writing, without creating
/// or truncating anything.
pub fn open_special(path: &Path) -> std::io::Result<impl Write> {
    OpenOptions::new().write(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_fifos_are_special_files_and_directories_are_not() {
        assert!(is_special(Path::new("/dev/null")));
        let dir = std::env::temp_dir();
        assert!(!is_special(&dir));
        let file = dir.join(format!("smolder-output-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        assert!(!is_special(&file));
        std::fs::remove_file(&file).unwrap();
        assert!(!is_special(&file), "a missing file is created, not special");
    }
}
