//! ELF symbol tables (`.symtab`, `.dynsym`) as sorted address ranges.
//!
//! Owns the choice among aliases and the "nearest preceding symbol, with size
//! check" lookup. Names are not copied: entries point into the object's bytes.

use object::{Object, ObjectSymbol, SymbolKind, SymbolSection};

/// One function symbol; `name` and `file` are byte ranges into the object's data.
#[derive(Debug, Clone, Copy)]
struct Entry {
    addr: u64,
    size: u64,
    name_start: usize,
    name_len: u32,
    rank: u8,
    /// The `STT_FILE` symbol that names its source file, if any.
    file: Option<(usize, u32)>,
}

/// Where the scan of `.symtab` is relative to `STT_FILE` symbols, as in
/// binutils' `elf_find_function`: a file symbol that follows other symbols
/// (the globals after all locals) names only local symbols.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileState {
    NothingSeen,
    SymbolSeen,
    FileAfterSymbol,
}

/// A symbol table hit: the raw name and, from `STT_FILE`, the source file.
pub(crate) struct SymbolHit<'d> {
    pub(crate) name: &'d [u8],
    pub(crate) file: Option<&'d [u8]>,
}

/// The function symbols of one table, sorted by address.
#[derive(Debug, Default)]
pub(crate) struct SymbolTable {
    entries: Vec<Entry>,
}

/// Which of an object's symbol tables to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Symtab,
    Dynsym,
}

/// Nearby symbols [`SymbolTable::lookup`] looks at, back from the nearest
/// one before the address.
const LOOKBACK: usize = 8;

impl SymbolTable {
    /// Reads the function symbols of `file`, whose bytes start at `base`.
    pub(crate) fn read(file: &object::File<'_>, base: &[u8], which: Which) -> SymbolTable {
        let mut entries = Vec::new();
        each_function(file, base, which, |e| entries.push(e));
        entries.sort_by(|a, b| a.addr.cmp(&b.addr).then(b.rank.cmp(&a.rank)));
        entries.dedup_by_key(|e| e.addr);
        SymbolTable { entries }
    }

    /// [`SymbolTable::lookup`] in the table [`SymbolTable::read`] would
    /// build, in one pass over the symbols that keeps only the entries the
    /// lookup looks at: for an object asked about a few addresses (a
    /// binary whose DWARF names all but `_start`), the whole table (48
    /// bytes a symbol: 2.4 MiB for a 74 MB Rust binary) is never built.
    pub(crate) fn scan<'d>(
        file: &object::File<'_>,
        base: &'d [u8],
        which: Which,
        addr: u64,
    ) -> Option<SymbolHit<'d>> {
        // The entries at the greatest addresses up to `addr`, one per
        // address (the best ranked; the first of equals, as the stable
        // sort and dedup of `read` keep), in address order.
        let mut near: Vec<Entry> = Vec::with_capacity(LOOKBACK + 2);
        each_function(file, base, which, |e| {
            if e.addr > addr {
                return;
            }
            match near.binary_search_by_key(&e.addr, |n| n.addr) {
                Ok(i) => {
                    if e.rank > near[i].rank {
                        near[i] = e;
                    }
                }
                Err(i) => {
                    if near.len() <= LOOKBACK {
                        near.insert(i, e);
                    } else if i > 0 {
                        near.insert(i, e);
                        near.remove(0);
                    }
                }
            }
        });
        SymbolTable { entries: near }.lookup(addr, base)
    }
}

/// Where table `which` and its string table lie in `file`'s bytes.
pub(crate) fn file_ranges(file: &object::File<'_>, which: Which) -> Vec<std::ops::Range<usize>> {
    let names: [&str; 2] = match which {
        Which::Symtab => [".symtab", ".strtab"],
        Which::Dynsym => [".dynsym", ".dynstr"],
    };
    crate::elf::section_ranges(file, &names)
}

/// Calls `each` with the function symbols of `file` (whose bytes start at
/// `base`), in the table's order, each with its rank among aliases and
/// the `STT_FILE` symbol that names its file.
fn each_function(file: &object::File<'_>, base: &[u8], which: Which, mut each: impl FnMut(Entry)) {
    let base_ptr = base.as_ptr() as usize;
    let symbols = match which {
        Which::Symtab => file.symbols(),
        Which::Dynsym => file.dynamic_symbols(),
    };
    let range_of = |bytes: &[u8]| -> Option<(usize, u32)> {
        let start = (bytes.as_ptr() as usize).wrapping_sub(base_ptr);
        let len = u32::try_from(bytes.len()).ok()?;
        (start.checked_add(bytes.len())? <= base.len()).then_some((start, len))
    };
    let mut file = None;
    let mut state = FileState::NothingSeen;
    for sym in symbols {
        let kind = sym.kind();
        if kind == SymbolKind::File {
            file = sym.name_bytes().ok().and_then(range_of);
            if state == FileState::SymbolSeen {
                state = FileState::FileAfterSymbol;
            }
            continue;
        }
        let file_of_symbol = file.filter(|_| sym.is_local() || state != FileState::FileAfterSymbol);
        if state == FileState::NothingSeen {
            state = FileState::SymbolSeen;
        }
        if !matches!(kind, SymbolKind::Text | SymbolKind::Unknown) {
            continue;
        }
        if !matches!(sym.section(), SymbolSection::Section(_)) || sym.address() == 0 {
            continue;
        }
        let Ok(name) = sym.name_bytes() else { continue };
        // Mapping symbols (`$x`, `$d`) and local labels carry no function name.
        if name.is_empty() || name.starts_with(b"$") || name.starts_with(b".L") {
            continue;
        }
        let Some((name_start, name_len)) = range_of(name) else {
            continue;
        };
        // Prefer typed, sized, global symbols among aliases at one address.
        let rank = u8::from(kind == SymbolKind::Text) * 4
            + u8::from(sym.size() > 0) * 2
            + u8::from(sym.is_global());
        each(Entry {
            addr: sym.address(),
            size: sym.size(),
            name_start,
            name_len,
            rank,
            file: file_of_symbol,
        });
    }
}

impl SymbolTable {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The name of the symbol that contains `addr`, as raw (mangled) bytes of `base`.
    ///
    /// A sized symbol must contain the address; an unsized one (assembly
    /// labels) is accepted only when it is the nearest preceding symbol.
    pub(crate) fn lookup<'d>(&self, addr: u64, base: &'d [u8]) -> Option<SymbolHit<'d>> {
        let idx = self.entries.partition_point(|e| e.addr <= addr);
        let nearest = idx.checked_sub(1)?;
        // Sized symbols can nest (a function and an alias covering part of it);
        // look a few entries back for one that contains the address.
        for i in (nearest.saturating_sub(LOOKBACK)..=nearest).rev() {
            let e = self.entries[i];
            let contains = if e.size == 0 {
                i == nearest
            } else {
                addr - e.addr < e.size
            };
            if contains {
                let bytes = |(start, len): (usize, u32)| base.get(start..start + len as usize);
                return Some(SymbolHit {
                    name: bytes((e.name_start, e.name_len))?,
                    file: e.file.and_then(bytes),
                });
            }
        }
        None
    }

    /// Start addresses of the symbols, for probing (fuzzing, tests).
    pub(crate) fn addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|e| e.addr)
    }

    /// Estimated heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lookup by one pass over the symbols finds what the built table
    /// finds: at symbol starts, inside, just past the end, and between
    /// symbols; in this test binary's `.symtab` (Rust, many aliases) and
    /// libc's `.dynsym` (versioned aliases, unsized symbols).
    #[test]
    fn a_scan_finds_what_the_table_finds() {
        let exe = std::env::current_exe().unwrap();
        let libc = std::path::Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        for (path, which) in [(exe.as_path(), Which::Symtab), (libc, Which::Dynsym)] {
            let bytes = std::fs::read(path).unwrap();
            let file = object::File::parse(&*bytes).unwrap();
            let table = SymbolTable::read(&file, &bytes, which);
            assert!(
                table.len() > 500,
                "{}: {} symbols",
                path.display(),
                table.len()
            );
            let step = table.len() / 150;
            let probes: Vec<u64> = table
                .entries
                .iter()
                .step_by(step)
                .flat_map(|e| {
                    [
                        e.addr - 1,
                        e.addr,
                        e.addr + 1,
                        e.addr + e.size / 2,
                        e.addr + e.size,
                    ]
                })
                .collect();
            let name = |hit: Option<SymbolHit<'_>>| {
                hit.map(|h| (h.name.to_vec(), h.file.map(<[u8]>::to_vec)))
            };
            for addr in probes {
                assert_eq!(
                    name(SymbolTable::scan(&file, &bytes, which, addr)),
                    name(table.lookup(addr, &bytes)),
                    "{} at {addr:#x}",
                    path.display()
                );
            }
        }
    }
}
