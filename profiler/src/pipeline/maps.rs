//! `/proc/PID/maps` of one process: parsing, and finding the mapping that
//! holds a code address. Knows nothing of files beyond their names and
//! identities.

use std::io;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub executable: bool,
    /// Device of the file (`major:minor` packed as `major << 32 | minor`).
    pub dev: u64,
    pub inode: u64,
    /// Path as the process sees it (`/usr/lib/libc.so.6`), a pseudo-path
    /// (`[vdso]`, `[stack]`), or empty for anonymous memory. A trailing
    /// ` (deleted)` is removed and recorded in `deleted`.
    pub path: String,
    pub deleted: bool,
}

impl MapEntry {
    /// A mapping of a file (as opposed to anonymous memory or `[vdso]`).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }

    /// The file offset of address `pc` inside this mapping.
    pub fn file_offset(&self, pc: u64) -> u64 {
        pc - self.start + self.offset
    }
}

fn parse_line(line: &str) -> Option<MapEntry> {
    // 55d4c-55d4d r-xp 00001000 fe:00 10018915     /usr/bin/x (deleted)
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next().unwrap_or("").trim_start();
    let (start, end) = range.split_once('-')?;
    let (major, minor) = dev.split_once(':')?;
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        executable: perms.as_bytes().get(2) == Some(&b'x'),
        dev: (u64::from_str_radix(major, 16).ok()? << 32) | u64::from_str_radix(minor, 16).ok()?,
        inode: inode.parse().ok()?,
        path: path.to_owned(),
        deleted,
    })
}

/// The executable mappings of a process, sorted by address.
#[derive(Clone, Debug, Default)]
pub struct ProcessMaps {
    entries: Vec<MapEntry>,
}

impl ProcessMaps {
    /// Parses the text of `/proc/PID/maps`, keeping executable mappings;
    /// malformed lines are skipped.
    pub fn parse(text: &str) -> ProcessMaps {
        let mut entries: Vec<MapEntry> = text
            .lines()
            .filter_map(parse_line)
            .filter(|e| e.executable)
            .collect();
        entries.sort_by_key(|e| e.start);
        ProcessMaps { entries }
    }

    pub fn read(pid: u32) -> io::Result<ProcessMaps> {
        Ok(ProcessMaps::parse(&std::fs::read_to_string(format!(
            "/proc/{pid}/maps"
        ))?))
    }

    /// The mapping holding `pc`.
    pub fn find(&self, pc: u64) -> Option<&MapEntry> {
        let i = self.entries.partition_point(|e| e.start <= pc);
        let entry = self.entries.get(i.checked_sub(1)?)?;
        (pc < entry.end).then_some(entry)
    }

    pub fn entries(&self) -> &[MapEntry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55b1c7b60000-55b1c7b61000 r--p 00000000 fe:00 10018915                   /tmp/readme/inl
55b1c7b61000-55b1c7b62000 r-xp 00001000 fe:00 10018915                   /tmp/readme/inl (deleted)
7f0000000000-7f0000010000 r-xp 00028000 fe:00 42                         /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd1000-7ffd3000 r-xp 00000000 00:00 0                                  [vdso]
garbage line
";

    #[test]
    fn finds_executable_mappings_and_offsets() {
        let maps = ProcessMaps::parse(MAPS);
        assert_eq!(maps.entries().len(), 3);
        let exe = maps.find(0x55b1c7b611a3).unwrap();
        assert!(exe.deleted && exe.is_file());
        assert_eq!(exe.path, "/tmp/readme/inl");
        assert_eq!(exe.file_offset(0x55b1c7b611a3), 0x11a3);
        assert_eq!(exe.dev, 0xfe << 32);
        let libc = maps.find(0x7f0000000010).unwrap();
        assert_eq!(libc.file_offset(0x7f0000000010), 0x28010);
        assert!(!maps.find(0x7ffd1000).unwrap().is_file());
        assert!(maps.find(0x55b1c7b60010).is_none(), "not executable");
        assert!(maps.find(0x1).is_none());
        assert!(maps.find(0x7f0000010000).is_none(), "end is exclusive");
    }

    #[test]
    fn reads_our_own_maps() {
        let maps = ProcessMaps::read(std::process::id()).unwrap();
        let pc = reads_our_own_maps as *const () as usize as u64;
        assert!(maps.find(pc).is_some_and(MapEntry::is_file));
    }
}
