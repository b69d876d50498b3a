//! Kernel symbols from `/proc/kallsyms` (core kernel and loaded modules) and
//! kernel build-ids from `/sys/kernel/notes` and `/sys/module/*/notes`.
//! Owns parsing and the nearest-preceding-symbol lookup.

use std::collections::HashMap;
use std::fs;

use crate::elf::hex;
use crate::Error;

/// The name perf and friends give to the core kernel image.
pub(crate) const KERNEL_MODULE: &str = "[kernel.kallsyms]";

#[derive(Debug, Clone, Copy)]
struct Entry {
    addr: u64,
    name_start: u32,
    name_len: u32,
    /// Index into `modules`; 0 is the core kernel.
    module: u32,
}

/// All kallsyms entries, sorted by address, names in one arena.
#[derive(Debug)]
pub(crate) struct KernelSymbols {
    entries: Vec<Entry>,
    names: String,
    modules: Vec<String>,
    build_ids: HashMap<String, Option<String>>,
    /// The core kernel's text, `_stext` to `_etext`: fixed for the boot,
    /// unlike module, BPF and trampoline symbols.
    core_text: Option<(u64, u64)>,
}

/// One kernel lookup result.
pub(crate) struct KernelSymbol<'a> {
    pub(crate) name: &'a str,
    /// `[kernel.kallsyms]` or `[module]`.
    pub(crate) module: &'a str,
}

impl KernelSymbols {
    pub(crate) fn load() -> Result<KernelSymbols, Error> {
        // Read a line at a time: the text is megabytes, the table is smaller.
        let file = fs::File::open("/proc/kallsyms").map_err(|e| Error::io("/proc/kallsyms", e))?;
        let mut syms = KernelSymbols::read(std::io::BufReader::with_capacity(64 << 10, file))
            .map_err(|e| Error::io("/proc/kallsyms", e))?;
        if syms.entries.is_empty() {
            return Err(Error::KallsymsRestricted);
        }
        syms.build_ids = syms
            .modules
            .iter()
            .map(|m| (m.clone(), module_build_id(m)))
            .collect();
        Ok(syms)
    }

    /// Parses kallsyms text. Zero addresses (hidden by `kptr_restrict`) and
    /// absolute symbols (per-CPU offsets) are dropped.
    #[cfg(test)]
    pub(crate) fn parse(text: &str) -> KernelSymbols {
        KernelSymbols::read(text.as_bytes()).expect("reading a string")
    }

    /// Reads kallsyms text, a line at a time; a line that is not UTF-8 is
    /// skipped.
    pub(crate) fn read(mut text: impl std::io::BufRead) -> std::io::Result<KernelSymbols> {
        let mut entries = Vec::new();
        let mut names = String::new();
        let mut modules = vec![KERNEL_MODULE.to_owned()];
        let mut module_index: HashMap<String, u32> = HashMap::new();
        let mut raw = Vec::new();
        let (mut stext, mut etext) = (None, None);
        loop {
            raw.clear();
            if text.read_until(b'\n', &mut raw)? == 0 {
                break;
            }
            let Ok(line) = std::str::from_utf8(&raw) else {
                continue;
            };
            let mut parts = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 || matches!(kind, "a" | "A" | "U" | "u") {
                continue;
            }
            let module = match parts.next() {
                Some(m) if m.starts_with('[') => {
                    let next = modules.len() as u32;
                    *module_index.entry(m.to_owned()).or_insert_with(|| {
                        modules.push(m.to_owned());
                        next
                    })
                }
                _ => 0,
            };
            if module == 0 {
                match name {
                    "_stext" => stext = Some(addr),
                    "_etext" => etext = Some(addr),
                    _ => {}
                }
            }
            let (Ok(name_start), Ok(name_len)) =
                (u32::try_from(names.len()), u32::try_from(name.len()))
            else {
                break;
            };
            names.push_str(name);
            entries.push(Entry {
                addr,
                name_start,
                name_len,
                module,
            });
        }
        entries.sort_by_key(|e| e.addr);
        entries.shrink_to_fit();
        names.shrink_to_fit();
        Ok(KernelSymbols {
            entries,
            names,
            modules,
            build_ids: HashMap::new(),
            core_text: stext.zip(etext).filter(|(s, e)| s < e),
        })
    }

    /// `addr` is in the core kernel's text, whose names do not change
    /// while the machine runs (modules and BPF programs come and go).
    pub(crate) fn in_core_text(&self, addr: u64) -> bool {
        self.core_text
            .is_some_and(|(start, end)| (start..end).contains(&addr))
    }

    /// The symbol at or before `addr`, if `addr` is not below every symbol.
    pub(crate) fn lookup(&self, addr: u64) -> Option<KernelSymbol<'_>> {
        let idx = self.entries.partition_point(|e| e.addr <= addr);
        let e = self.entries.get(idx.checked_sub(1)?)?;
        let start = e.name_start as usize;
        Some(KernelSymbol {
            name: self.names.get(start..start + e.name_len as usize)?,
            module: self.modules.get(e.module as usize)?,
        })
    }

    pub(crate) fn build_id(&self, module: &str) -> Option<String> {
        self.build_ids.get(module).cloned().flatten()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

fn module_build_id(module: &str) -> Option<String> {
    let path = if module == KERNEL_MODULE {
        "/sys/kernel/notes".to_owned()
    } else {
        let name = module.trim_start_matches('[').trim_end_matches(']');
        format!("/sys/module/{name}/notes/.note.gnu.build-id")
    };
    let bytes = fs::read(path).ok()?;
    gnu_build_id_note(&bytes).map(hex)
}

/// The `NT_GNU_BUILD_ID` descriptor in a sequence of ELF notes (native endian).
pub(crate) fn gnu_build_id_note(mut notes: &[u8]) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let name_end = 12usize.checked_add(align4(namesz)?)?;
        let desc_end = name_end.checked_add(align4(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return notes.get(name_end..name_end + descsz);
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
0000000000000000 A fixed_percpu_data
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81001000 t do_one_initcall
ffffffff81002000 T schedule
ffffffffc0a00000 t ext4_fill_super\t[ext4]
ffffffffc0a00100 T ext4_iget\t[ext4]
ffffffffc0b00000 t nf_hook\t[nf_tables]
not a line
";

    #[test]
    fn nearest_preceding_symbol_with_module() {
        let syms = KernelSymbols::parse(KALLSYMS);
        assert_eq!(syms.len(), 7);
        let s = syms.lookup(0xffffffff81001001).unwrap();
        assert_eq!((s.name, s.module), ("do_one_initcall", KERNEL_MODULE));
        let s = syms.lookup(0xffffffffc0a00180).unwrap();
        assert_eq!((s.name, s.module), ("ext4_iget", "[ext4]"));
        let s = syms.lookup(0xffffffffc0b00001).unwrap();
        assert_eq!((s.name, s.module), ("nf_hook", "[nf_tables]"));
        assert!(syms.lookup(0x1000).is_none());
    }

    #[test]
    fn core_text_is_stext_to_etext_of_the_kernel_itself() {
        let syms = KernelSymbols::parse(
            "ffffffff81000000 T _stext\n\
             ffffffff81001000 T do_syscall_64\n\
             ffffffff82000000 T _etext\n\
             ffffffffc0000000 t _stext [fake]\n\
             ffffffffc0001000 t helper [fake]\n",
        );
        assert!(syms.in_core_text(0xffffffff81001234));
        assert!(!syms.in_core_text(0xffffffff82000000));
        assert!(!syms.in_core_text(0xffffffffc0001010));
        let no_bounds = KernelSymbols::parse("ffffffff81001000 T do_syscall_64\n");
        assert!(!no_bounds.in_core_text(0xffffffff81001234));
    }

    #[test]
    fn restricted_kallsyms_has_no_entries() {
        let syms = KernelSymbols::parse("0000000000000000 T _stext\n0000000000000000 t x\n");
        assert_eq!(syms.len(), 0);
    }

    #[test]
    fn build_id_note() {
        let mut notes = Vec::new();
        // An unrelated note first, then the build-id.
        for (name, kind, desc) in [
            (&b"Xen\0"[..], 1u32, &[1u8, 2, 3][..]),
            (b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef]),
        ] {
            notes.extend((name.len() as u32).to_ne_bytes());
            notes.extend((desc.len() as u32).to_ne_bytes());
            notes.extend(kind.to_ne_bytes());
            notes.extend(name);
            notes.extend(desc);
            while notes.len() % 4 != 0 {
                notes.push(0);
            }
        }
        assert_eq!(
            gnu_build_id_note(&notes),
            Some(&[0xde, 0xad, 0xbe, 0xef][..])
        );
        assert_eq!(gnu_build_id_note(&notes[..7]), None);
    }
}
