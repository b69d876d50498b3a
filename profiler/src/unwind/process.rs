//! The unwind tables of a running process: its executable mappings, read
//! through the symbolizer's process model, each file opened by its one rule
//! ([`smolder_symbolizer::process::open_mapped_file`]: inside the process's
//! root, checked, never a host path) and read into owned memory, and its
//! table built once per binary, whatever the number of processes mapping it.

use std::{collections::HashMap, io, sync::Arc};

use smolder_symbolizer::process::open_mapped_file;

use crate::pipeline::{Mapping, ProcessMaps};

use super::table::read_object_within;
use super::{MappedTable, TableKey, UnwindError, UnwindRow, UnwindTable, UnwindTables};

/// Identity of the file of a mapping without opening it.
pub fn file_identity(entry: &Mapping) -> (u64, u64) {
    (entry.dev, entry.inode)
}

/// Opens the file of `entry` and returns its key, and its table unless
/// `known` says the key is already built (then `None`). The table has at
/// most `max_rows` rows, and its build at most `max_bytes` of memory: the
/// CFI copied in, then the rows gathered from it (16 bytes each); past
/// either, the build stops as soon as it knows, with what it gathered freed.
pub fn build_for_mapping(
    pid: u32,
    entry: &Mapping,
    max_rows: usize,
    max_bytes: usize,
    known: impl Fn(&TableKey) -> bool,
) -> Result<(TableKey, Option<UnwindTable>), UnwindError> {
    let name = || format!("{} (pid {pid})", entry.path);
    let io_err = |source| UnwindError::Io {
        path: name(),
        source,
    };
    let over_budget = || UnwindError::OverBudget {
        path: name(),
        max_bytes,
    };
    let file = open_mapped_file(pid, entry).map_err(|e| io_err(io::Error::other(e)))?;
    let meta = file.metadata().map_err(io_err)?;
    let bytes = read_object_within(&file, max_bytes as u64).map_err(io_err)?;
    let key = TableKey::of_bytes(&bytes, &meta);
    if known(&key) {
        return Ok((key, None));
    }
    if bytes.left_out().unwind {
        return Err(over_budget());
    }
    // What is left for the rows once the CFI is in; the rows gathered may
    // pass `max_rows` by a quarter before compaction (`from_elf_within`).
    let room = max_bytes.saturating_sub(bytes.copied_bytes()) / std::mem::size_of::<UnwindRow>();
    let row_budget = room.saturating_sub(room / 5);
    match UnwindTable::from_elf_within(&bytes, &name(), max_rows.min(row_budget)) {
        Err(UnwindError::TooLarge { .. }) if row_budget < max_rows => Err(over_budget()),
        built => Ok((key, Some(built?))),
    }
}

/// Tables built so far, by binary; what [`UnwindTables::for_process`] reuses.
#[derive(Default)]
pub struct TableCache {
    by_key: HashMap<TableKey, Arc<UnwindTable>>,
    by_file: HashMap<(u64, u64), TableKey>,
}

impl TableCache {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The table of the file behind `entry` in process `pid`, built on
    /// first use.
    pub fn table_for(
        &mut self,
        pid: u32,
        entry: &Mapping,
    ) -> Result<Arc<UnwindTable>, UnwindError> {
        if let Some(t) = self
            .by_file
            .get(&file_identity(entry))
            .and_then(|k| self.by_key.get(k))
        {
            return Ok(t.clone());
        }
        let (key, built) = build_for_mapping(pid, entry, usize::MAX, usize::MAX, |k| {
            self.by_key.contains_key(k)
        })?;
        if let Some(table) = built {
            self.by_key.insert(key.clone(), Arc::new(table));
        }
        self.by_file.insert(file_identity(entry), key.clone());
        self.by_key
            .get(&key)
            .cloned()
            .ok_or_else(|| UnwindError::Io {
                path: entry.path.clone(),
                source: io::Error::other("table vanished from the cache"),
            })
    }
}

impl UnwindTables {
    /// The executable mappings of process `pid` with their tables; a file
    /// whose table cannot be built is walked with frame pointers (logged).
    pub fn for_process(pid: u32, cache: &mut TableCache) -> io::Result<UnwindTables> {
        let maps = ProcessMaps::read(pid).map_err(io::Error::other)?;
        let mut tables = UnwindTables::default();
        for entry in maps.entries() {
            let table = if entry.is_file() {
                match cache.table_for(pid, entry) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::debug!("no unwind table, frame pointers for {}: {e}", entry.path);
                        None
                    }
                }
            } else {
                None
            };
            let bias = table
                .as_ref()
                .and_then(|t| t.load_bias(entry.start, entry.offset));
            tables.add(MappedTable {
                start: entry.start,
                end: entry.end,
                bias: bias.unwrap_or(0),
                table: table.filter(|_| bias.is_some()),
            });
        }
        Ok(tables)
    }
}
