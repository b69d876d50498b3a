//! Building one binary's [`UnwindTable`] from its ELF file: gimli evaluates
//! every FDE of `.eh_frame` (or `.debug_frame` when there is none) and each
//! CFI row becomes an [`UnwindRow`], with gaps between functions and rules
//! the walkers cannot follow turned into rows that stop the walk.

use std::{fs::File, io, os::unix::fs::MetadataExt, path::Path};

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment};

use super::{cfa, fp, UnwindRow};

/// Why a table could not be built.
#[derive(Debug)]
pub enum UnwindError {
    Io {
        path: String,
        source: io::Error,
    },
    Object(String, object::Error),
    Architecture(String),
    NoUnwindInfo(String),
    Cfi {
        path: String,
        source: gimli::Error,
    },
    /// More rows than the walker's memory can take.
    TooLarge {
        path: String,
        max_rows: usize,
    },
    /// Building the table would take more memory than the builder may use
    /// (the CFI sections copied in, and the rows gathered from them).
    OverBudget {
        path: String,
        max_bytes: usize,
    },
}

impl std::fmt::Display for UnwindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnwindError::Io { path, source } => write!(f, "reading {path}: {source}"),
            UnwindError::Object(path, e) => {
                write!(f, "{path} is not an ELF object smolder can read: {e}")
            }
            UnwindError::Architecture(path) => write!(f, "{path} is not an x86_64 ELF object"),
            UnwindError::NoUnwindInfo(path) => {
                write!(f, "{path} has neither .eh_frame nor .debug_frame")
            }
            UnwindError::Cfi { path, source } => {
                write!(f, "{path}: malformed call frame information: {source}")
            }
            UnwindError::TooLarge { path, max_rows } => {
                write!(
                    f,
                    "{path}: more unwind rows than the {max_rows} the table memory holds"
                )
            }
            UnwindError::OverBudget { path, max_bytes } => {
                write!(
                    f,
                    "{path}: building its unwind table takes more than the {} KiB of memory a table build may use",
                    max_bytes / 1024
                )
            }
        }
    }
}

impl std::error::Error for UnwindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UnwindError::Io { source, .. } => Some(source),
            UnwindError::Object(_, e) => Some(e),
            UnwindError::Cfi { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Which section the rows came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwindSource {
    EhFrame,
    DebugFrame,
}

/// What identifies a binary across processes: its GNU build-id together
/// with a keyed hash of its content (a binary that claims another's
/// build-id gets its own table), or, without one, the file's identity on disk.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableKey {
    BuildId {
        id: Vec<u8>,
        content: u64,
    },
    File {
        dev: u64,
        inode: u64,
        size: u64,
        mtime_ns: i64,
    },
}

/// A `PT_LOAD` segment: what maps file offsets to ELF virtual addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LoadSegment {
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// The loadable segments of a binary: enough to compute the load bias of
/// any of its mappings, kept when the rows themselves are dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfLayout {
    segments: Vec<LoadSegment>,
}

impl ElfLayout {
    /// The loadable segments of a parsed object.
    pub fn of_object(obj: &object::File) -> ElfLayout {
        let segments = obj
            .segments()
            .map(|s| {
                let (offset, filesz) = s.file_range();
                LoadSegment {
                    offset,
                    vaddr: s.address(),
                    filesz,
                }
            })
            .collect();
        ElfLayout { segments }
    }

    /// The load bias (runtime address - ELF virtual address) of a mapping
    /// of this file that starts at `start` with file offset `offset`, from
    /// the `PT_LOAD` segment holding that offset.
    ///
    /// Two segments can share the page at a mapping's offset (the end of
    /// one, the start of the next): the one that starts on that page is the
    /// one the mapping was made for.
    pub fn load_bias(&self, start: u64, offset: u64) -> Option<u64> {
        let holds = |s: &&LoadSegment| {
            (s.offset & !0xfff) <= offset && offset < s.offset.saturating_add(s.filesz.max(1))
        };
        let seg = self
            .segments
            .iter()
            .filter(holds)
            .find(|s| s.offset & !0xfff == offset)
            .or_else(|| self.segments.iter().rfind(holds))?;
        Some(
            start
                .wrapping_sub(offset)
                .wrapping_add(seg.offset)
                .wrapping_sub(seg.vaddr),
        )
    }
}

/// The unwind rows of one binary, sorted by `pc`, adjacent rows with the
/// same rule merged, every gap between functions closed by an
/// [`cfa::INVALID`] row.
#[derive(Clone, Debug)]
pub struct UnwindTable {
    rows: Vec<UnwindRow>,
    layout: ElfLayout,
    source: UnwindSource,
    section_bytes: u64,
    build_id: Option<Vec<u8>>,
}

impl UnwindTable {
    /// Reads and builds the table of the ELF file at `path`.
    pub fn from_path(path: &Path) -> Result<UnwindTable, UnwindError> {
        let file = File::open(path).map_err(|source| UnwindError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_file(&file, &path.display().to_string())
    }

    /// Builds the table of an open ELF file; `name` is for errors only. The
    /// file is read into owned memory (at most
    /// [`smolder_symbolizer::process::MAX_OBJECT_BYTES`]), never mapped: a
    /// process truncating its binary while it is read cannot fault us.
    pub fn from_file(file: &File, name: &str) -> Result<UnwindTable, UnwindError> {
        let bytes = read_object(file).map_err(|source| UnwindError::Io {
            path: name.to_owned(),
            source,
        })?;
        Self::from_elf(&bytes, name)
    }

    /// Builds the table from the bytes of an ELF file.
    pub fn from_elf(data: &[u8], name: &str) -> Result<UnwindTable, UnwindError> {
        Self::from_elf_within(data, name, usize::MAX)
    }

    /// [`UnwindTable::from_elf`], giving up (`UnwindError::TooLarge`) once
    /// the rows gathered pass `max_rows` × 5/4: a table that cannot fit
    /// the walker's memory is not built in ours.
    pub fn from_elf_within(
        data: &[u8],
        name: &str,
        max_rows: usize,
    ) -> Result<UnwindTable, UnwindError> {
        let obj = object::File::parse(data).map_err(|e| UnwindError::Object(name.into(), e))?;
        if obj.architecture() != object::Architecture::X86_64 {
            return Err(UnwindError::Architecture(name.into()));
        }
        let layout = ElfLayout::of_object(&obj);
        let build_id = obj.build_id().ok().flatten().map(<[u8]>::to_vec);
        let mut bases = BaseAddresses::default();
        if let Some(text) = obj.section_by_name(".text") {
            bases = bases.set_text(text.address());
        }
        if let Some(got) = obj.section_by_name(".got") {
            bases = bases.set_got(got.address());
        }
        let (mut raw, source, section_bytes) = if let Some((sec, data)) = obj
            .section_by_name(".eh_frame")
            .and_then(|s| Some((s.address(), section_data(&s)?)))
        {
            let bases = bases.set_eh_frame(sec);
            let eh = EhFrame::new(data, LittleEndian);
            let rows = collect_rows(&eh, &bases, data.len(), max_rows, name)?;
            (rows, UnwindSource::EhFrame, data.len() as u64)
        } else if let Some(data) = obj
            .section_by_name(".debug_frame")
            .and_then(|s| section_data(&s))
        {
            let mut debug = DebugFrame::new(data, LittleEndian);
            debug.set_address_size(8);
            let rows = collect_rows(&debug, &bases, data.len(), max_rows, name)?;
            (rows, UnwindSource::DebugFrame, data.len() as u64)
        } else {
            return Err(UnwindError::NoUnwindInfo(name.into()));
        };
        Ok(UnwindTable {
            rows: compact(&mut raw),
            layout,
            source,
            section_bytes,
            build_id,
        })
    }

    /// Builds a table from rows (tests, synthetic code): sorted and
    /// compacted like a built one; every address maps with bias 0.
    pub fn from_rows(mut rows: Vec<UnwindRow>) -> UnwindTable {
        UnwindTable {
            rows: compact(&mut rows),
            layout: ElfLayout {
                segments: vec![LoadSegment {
                    offset: 0,
                    vaddr: 0,
                    filesz: u64::MAX,
                }],
            },
            source: UnwindSource::EhFrame,
            section_bytes: 0,
            build_id: None,
        }
    }

    pub fn rows(&self) -> &[UnwindRow] {
        &self.rows
    }

    /// Bytes the rows take (in user space and in the kernel's row array).
    pub fn bytes(&self) -> usize {
        self.rows.len() * std::mem::size_of::<UnwindRow>()
    }

    pub fn source(&self) -> UnwindSource {
        self.source
    }

    /// Size of the `.eh_frame` (or `.debug_frame`) section the rows came from.
    pub fn section_bytes(&self) -> u64 {
        self.section_bytes
    }

    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// The row covering ELF virtual address `svma`, if any.
    pub fn lookup(&self, svma: u64) -> Option<&UnwindRow> {
        let i = self.rows.partition_point(|r| r.pc <= svma);
        self.rows.get(i.checked_sub(1)?)
    }

    /// See [`ElfLayout::load_bias`].
    pub fn load_bias(&self, start: u64, offset: u64) -> Option<u64> {
        self.layout.load_bias(start, offset)
    }

    pub fn layout(&self) -> &ElfLayout {
        &self.layout
    }
}

/// What unwinding reads of an object file of a profiled process (headers,
/// `.eh_frame`, `.debug_frame`, notes), copied, capped.
pub fn read_object(file: &File) -> io::Result<smolder_symbolizer::process::ElfCopy> {
    read_object_within(file, u64::MAX)
}

/// [`read_object`], copying nothing of the CFI when it comes to more than
/// `max_bytes` (then [`smolder_symbolizer::process::LeftOut::unwind`]).
pub fn read_object_within(
    file: &File,
    max_bytes: u64,
) -> io::Result<smolder_symbolizer::process::ElfCopy> {
    // Only the CFI: symbols and debug sections can be most of a file.
    read_object_parts(
        file,
        smolder_symbolizer::process::ElfParts::Unwind { max_bytes },
    )
}

/// [`read_object`] of other parts.
pub fn read_object_parts(
    file: &File,
    parts: smolder_symbolizer::process::ElfParts,
) -> io::Result<smolder_symbolizer::process::ElfCopy> {
    smolder_symbolizer::process::read_elf_parts(
        file,
        smolder_symbolizer::process::MAX_OBJECT_BYTES,
        parts,
    )
}

impl TableKey {
    /// The key of the ELF file `meta` describes and `data` holds: its
    /// build-id and content hash when it has a build-id (read from the ELF
    /// notes), else its device, inode, size and mtime.
    pub fn of_bytes(data: &[u8], meta: &std::fs::Metadata) -> TableKey {
        static SECRET: std::sync::OnceLock<std::collections::hash_map::RandomState> =
            std::sync::OnceLock::new();
        let parsed = object::File::parse(data).ok();
        if let Some((obj, id)) = parsed.and_then(|o| {
            let id = o.build_id().ok().flatten().map(<[u8]>::to_vec)?;
            (!id.is_empty()).then_some((o, id))
        }) {
            use std::hash::{BuildHasher, Hasher};
            // What a table is made of: the segments and the CFI sections
            // (hashing the whole file would read every page of it).
            let mut h = SECRET.get_or_init(Default::default).build_hasher();
            for s in obj.segments() {
                let (offset, filesz) = s.file_range();
                h.write_u64(offset);
                h.write_u64(filesz);
                h.write_u64(s.address());
            }
            for name in [".eh_frame", ".debug_frame"] {
                if let Some(data) = obj.section_by_name(name).and_then(|s| section_data(&s)) {
                    h.write(name.as_bytes());
                    h.write(data);
                }
            }
            return TableKey::BuildId {
                id,
                content: h.finish(),
            };
        }
        TableKey::File {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        }
    }
}

type Slice<'a> = EndianSlice<'a, LittleEndian>;

fn section_data<'data>(s: &object::Section<'data, '_>) -> Option<&'data [u8]> {
    s.data().ok().filter(|d| !d.is_empty())
}

/// Every CFI row of every FDE, plus an INVALID row where an FDE ends; at
/// most `max_rows` × 5/4 (else `TooLarge`). The vector grows by a quarter
/// at a time from an estimate of the CFI's rows (a quarter of its bytes),
/// not by doubling: a large binary's rows cost what they are.
fn collect_rows<'a, S>(
    section: &S,
    bases: &BaseAddresses,
    cfi_bytes: usize,
    max_rows: usize,
    name: &str,
) -> Result<Vec<UnwindRow>, UnwindError>
where
    S: UnwindSection<Slice<'a>>,
{
    let limit = max_rows.saturating_add(max_rows / 4);
    let too_large = || UnwindError::TooLarge {
        path: name.to_owned(),
        max_rows,
    };
    let cfi_err = |source| UnwindError::Cfi {
        path: name.to_owned(),
        source,
    };
    let mut out: Vec<UnwindRow> = Vec::with_capacity((cfi_bytes / 4).min(limit) + 1);
    let push = |out: &mut Vec<UnwindRow>, row: UnwindRow| -> Result<(), UnwindError> {
        if out.len() >= limit {
            return Err(too_large());
        }
        if out.len() == out.capacity() {
            out.reserve_exact((out.len() / 4).max(1024));
        }
        out.push(row);
        Ok(())
    };
    let mut ctx = Box::new(UnwindContext::new());
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next().map_err(cfi_err)? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        // One malformed FDE loses its function, not the binary.
        let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else {
            continue;
        };
        if fde.len() == 0 {
            continue;
        }
        let signal = fde.cie().is_signal_trampoline();
        let Ok(mut table) = fde.rows(section, bases, &mut ctx) else {
            continue;
        };
        let mut end = fde.end_address();
        loop {
            match table.next_row() {
                Ok(Some(row)) => {
                    let mut out_row = if signal {
                        UnwindRow::invalid(row.start_address())
                    } else {
                        convert_row(section, row)
                    };
                    out_row.pc = row.start_address();
                    end = row.end_address();
                    push(&mut out, out_row)?;
                }
                Ok(None) => break,
                Err(_) => {
                    push(&mut out, UnwindRow::invalid(end))?;
                    break;
                }
            }
        }
        push(&mut out, UnwindRow::invalid(end))?;
    }
    Ok(out)
}

fn convert_row<'a, S>(section: &S, row: &gimli::UnwindTableRow<usize>) -> UnwindRow
where
    S: UnwindSection<Slice<'a>>,
{
    let mut out = UnwindRow::invalid(row.start_address());
    match row.register(X86_64::RA) {
        Some(RegisterRule::Offset(-8)) => {}
        Some(RegisterRule::Undefined) => {
            out.cfa_type = cfa::END;
            return out;
        }
        _ => return out,
    }
    let (cfa_type, cfa_offset, plt_threshold) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            let Ok(offset) = i32::try_from(*offset) else {
                return out;
            };
            match *register {
                X86_64::RSP => (cfa::SP, offset, 0),
                X86_64::RBP => (cfa::FP, offset, 0),
                _ => return out,
            }
        }
        CfaRule::Expression(expr) => {
            let Some((offset, threshold)) = expr
                .get(section)
                .ok()
                .and_then(|e| plt_expression(e.0.slice()))
            else {
                return out;
            };
            (cfa::PLT, offset, threshold)
        }
    };
    let (fp_type, fp_offset) = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) | Some(RegisterRule::Undefined) => (fp::SAME, 0),
        Some(RegisterRule::Offset(off)) => match i16::try_from(off) {
            Ok(off) => (fp::AT_CFA, off),
            Err(_) => return out,
        },
        Some(_) => return out,
    };
    if cfa_type == cfa::PLT && fp_type != fp::SAME {
        return out;
    }
    out.cfa_type = cfa_type;
    out.cfa_offset = cfa_offset;
    out.fp_type = fp_type;
    out.fp_offset = if cfa_type == cfa::PLT {
        plt_threshold
    } else {
        fp_offset
    };
    out
}

/// Recognises the CFA expression every x86_64 linker emits for `.plt`
/// (`DW_OP_breg7 rsp N; DW_OP_breg16 rip 0; DW_OP_lit15; DW_OP_and;
/// DW_OP_litK; DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus`): returns
/// `(N, K)`.
fn plt_expression(bytes: &[u8]) -> Option<(i32, i16)> {
    let [0x77, n, 0x80, 0x00, 0x3f, 0x1a, lit, 0x2a, 0x33, 0x24, 0x22] = *bytes else {
        return None;
    };
    // One-byte SLEB128: 0..=63 positive.
    if n > 0x3f || !(0x30..=0x4f).contains(&lit) {
        return None;
    }
    Some((i32::from(n), i16::from(lit - 0x30)))
}

/// Sorts rows, keeps one per `pc` (a real rule over the INVALID end marker
/// of the previous function), and merges neighbours with the same rule.
/// Sorts the rows and keeps, in place (no second table in memory while a
/// large binary's rows are compacted), the first row of each PC whose rule
/// differs from the row kept before it.
fn compact(rows: &mut Vec<UnwindRow>) -> Vec<UnwindRow> {
    // In place (a stable sort would take half the table again); rows of
    // one PC order by the whole rule, so the one kept does not depend on
    // the sort.
    rows.sort_unstable_by_key(|r| {
        (
            r.pc,
            r.cfa_type == cfa::INVALID,
            r.cfa_type,
            r.cfa_offset,
            r.fp_type,
            r.fp_offset,
        )
    });
    let mut kept = 0usize;
    let mut previous_pc = None;
    for i in 0..rows.len() {
        let row = rows[i];
        if previous_pc.replace(row.pc) == Some(row.pc) {
            continue;
        }
        if kept > 0 && rows[kept - 1].same_rule(&row) {
            continue;
        }
        rows[kept] = row;
        kept += 1;
    }
    rows.truncate(kept);
    rows.shrink_to_fit();
    std::mem::take(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plt_expressions() {
        assert_eq!(
            plt_expression(&[0x77, 8, 0x80, 0, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22]),
            Some((8, 11))
        );
        assert_eq!(
            plt_expression(&[0x77, 8, 0x80, 0, 0x3f, 0x1a, 0x3a, 0x2a, 0x33, 0x24, 0x22]),
            Some((8, 10))
        );
        assert_eq!(plt_expression(&[0x77, 8]), None);
    }

    #[test]
    fn compaction_keeps_real_rules_and_merges_repeats() {
        let sp = |pc, off| UnwindRow {
            pc,
            cfa_offset: off,
            fp_offset: 0,
            cfa_type: cfa::SP,
            fp_type: fp::SAME,
        };
        let mut rows = vec![
            sp(0x20, 8),
            UnwindRow::invalid(0x20),
            sp(0x10, 8),
            sp(0x11, 16),
            sp(0x18, 8),
            UnwindRow::invalid(0x30),
        ];
        let t = compact(&mut rows);
        assert_eq!(
            t,
            vec![
                sp(0x10, 8),
                sp(0x11, 16),
                sp(0x18, 8),
                UnwindRow::invalid(0x30)
            ]
        );
    }

    #[test]
    fn our_own_binary_has_a_table() {
        let exe = std::env::current_exe().expect("current exe");
        let table = UnwindTable::from_path(&exe).expect("table of the test binary");
        assert_eq!(table.source(), UnwindSource::EhFrame);
        assert!(table.rows().len() > 1000);
        assert!(table.rows().windows(2).all(|w| w[0].pc < w[1].pc));
        // This function has a row, and it is one the walker can follow.
        let here = our_own_binary_has_a_table as *const () as u64;
        let maps = crate::pipeline::ProcessMaps::read(std::process::id()).expect("maps");
        let m = maps.find(here).expect("mapped");
        let bias = table.load_bias(m.start, m.offset).expect("bias");
        let row = table.lookup(here - bias).expect("row");
        assert!(matches!(row.cfa_type, cfa::SP | cfa::FP), "{row:?}");
    }

    /// A table build within a memory budget: under it, the same table;
    /// below what the CFI alone weighs, nothing is copied; between, the
    /// rows gathered stop at the budget. Each refusal says why.
    #[test]
    fn a_table_build_stays_within_its_memory_budget() {
        let here = a_table_build_stays_within_its_memory_budget as *const () as u64;
        let maps = crate::pipeline::ProcessMaps::read(std::process::id()).expect("maps");
        let m = maps.find(here).expect("mapped").clone();
        let build = |max_rows, max_bytes| {
            super::super::build_for_mapping(std::process::id(), &m, max_rows, max_bytes, |_| false)
                .map(|(_, t)| t.expect("built").rows().len())
        };
        let whole = build(usize::MAX, usize::MAX).expect("unbounded");
        assert_eq!(build(usize::MAX, whole * 64).expect("ample"), whole);
        let cfi = read_object(&File::open(std::env::current_exe().unwrap()).unwrap())
            .unwrap()
            .copied_bytes();
        for max_bytes in [cfi / 2, cfi + whole * 16 / 2] {
            match build(usize::MAX, max_bytes) {
                Err(UnwindError::OverBudget { max_bytes: b, .. }) => assert_eq!(b, max_bytes),
                other => panic!("{max_bytes} bytes: {other:?}"),
            }
        }
        match build(whole / 2, usize::MAX) {
            Err(UnwindError::TooLarge { max_rows, .. }) => assert_eq!(max_rows, whole / 2),
            other => panic!("{other:?}"),
        }
    }
}
