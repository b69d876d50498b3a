//! Code objects read from a Python process's memory: function name, file
//! name, first line and line table, and the line of an instruction.
//!
//! Everything here is read from memory the profiled process controls:
//! the object's type must be `PyCode_Type`, its name and file
//! `PyUnicode_Type`, its line table `PyBytes_Type`; strings must be compact and at
//! most [`MAX_STRING_CHARS`] characters, line tables at most
//! [`MAX_LINE_TABLE_BYTES`]; anything else is refused, never guessed.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use super::{Interpreter, LineTable, ProcessMemory, NONE};

/// Longest function or file name read (characters).
pub const MAX_STRING_CHARS: u64 = 1024;
/// Largest line table read (bytes).
pub const MAX_LINE_TABLE_BYTES: u64 = 64 << 10;
/// Code objects kept per process.
pub const MAX_CACHED_CODE: usize = 16384;
/// Reads of a code object before it is given up as unreadable until the
/// cache is cleared: a sample names a code object that lived when it was
/// taken, and the reader may come after it was freed and before another
/// one took its address; a first failure kept for the whole interval lost
/// every later frame of the function that lives there next.
pub const CODE_READ_ATTEMPTS: u8 = 4;

/// A code object read (with what it was read from), or the reads of it
/// that failed so far.
enum Cached {
    Read(Arc<CodeInfo>, Stamp),
    Failed(u8),
}

/// The fields a code object's name, file and lines were read from: read
/// again (one read) on every later use of the address, so that a code
/// object freed and another one allocated at its address (CPython frees
/// the compiler's code objects as a program starts) is read anew, never
/// named after the first.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    name: u64,
    file: u64,
    first_line: u32,
    line_table: u64,
}

/// What a code object says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeInfo {
    /// `co_qualname` (3.11+) or `co_name`.
    pub name: String,
    pub file: String,
    pub first_line: i64,
    line_table: Vec<u8>,
    kind: LineTable,
}

impl CodeInfo {
    /// The source line of instruction `instr` (code units; bytes for
    /// 3.9 and older), or the first line when that is unknown.
    pub fn line(&self, instr: Option<u32>) -> i64 {
        let Some(instr) = instr else {
            return self.first_line;
        };
        let found = match self.kind {
            LineTable::Lnotab => lnotab_line(&self.line_table, self.first_line, u64::from(instr)),
            LineTable::Pep626 => {
                pep626_line(&self.line_table, self.first_line, u64::from(instr) * 2)
            }
            LineTable::Locations => location_line(&self.line_table, self.first_line, instr.into()),
        };
        found.unwrap_or(self.first_line)
    }
}

/// The code objects of one interpreter, read once each.
pub struct CodeReader {
    interpreter: Interpreter,
    memory: ProcessMemory,
    cache: HashMap<u64, Cached>,
    /// Where the name is (`co_qualname`, else `co_name`), and the bytes of
    /// header that hold every field of a [`Stamp`]: from the layout, once.
    name_at: u16,
    header_len: usize,
}

impl CodeReader {
    pub fn new(pid: u32, interpreter: Interpreter) -> CodeReader {
        let l = &interpreter.layout;
        let name_at = if l.code_qualname != NONE {
            l.code_qualname
        } else {
            l.code_name
        };
        let header_len = [name_at, l.code_filename, l.code_linetable]
            .into_iter()
            .map(|off| usize::from(off) + 8)
            .chain([usize::from(l.code_firstlineno) + 4, 16])
            .max()
            .unwrap_or(16);
        CodeReader {
            interpreter,
            memory: ProcessMemory::new(pid),
            cache: HashMap::new(),
            name_at,
            header_len,
        }
    }

    /// Forgets every code object read (their addresses may be reused).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    pub fn interpreter(&self) -> &Interpreter {
        &self.interpreter
    }

    /// The code object at `addr`; `None` when it cannot be read or is not
    /// a code object (freed, or a layout that does not match).
    /// A failed read is tried again on later calls, [`CODE_READ_ATTEMPTS`]
    /// times in all.
    ///
    /// A code object read before and no longer there (no code object at
    /// its address now, or the process gone) keeps the name it was read
    /// with: the sample was taken while it lived, and samples reach the
    /// reader later. A program's last samples, read after it exited, and
    /// the frames of `<module>`, whose code object CPython frees when the
    /// module's code returns, were left unnamed before. Another code
    /// object at its address is read anew.
    pub fn code(&mut self, addr: u64) -> Option<Arc<CodeInfo>> {
        let failed = match self.cache.get(&addr) {
            Some(Cached::Read(info, stamp)) => match self.stamp(addr) {
                Ok(now) if now == *stamp => return Some(Arc::clone(info)),
                // No code object there now: kept as read, and its header
                // checked again on the next use.
                Err(_) => return Some(Arc::clone(info)),
                // Another code object: read anew.
                Ok(_) => 0,
            },
            Some(Cached::Failed(n)) if *n >= CODE_READ_ATTEMPTS => return None,
            Some(Cached::Failed(n)) => *n,
            None => 0,
        };
        let entry = match self.read(addr) {
            Ok((info, stamp)) => Cached::Read(Arc::new(info), stamp),
            Err(e) => {
                tracing::debug!(
                    "pid {}: code object at {addr:#x} not read (attempt {}): {e}",
                    self.memory.pid(),
                    failed + 1
                );
                Cached::Failed(failed + 1)
            }
        };
        if self.cache.len() >= MAX_CACHED_CODE && !self.cache.contains_key(&addr) {
            self.cache.clear();
        }
        let info = match &entry {
            Cached::Read(info, _) => Some(Arc::clone(info)),
            Cached::Failed(_) => None,
        };
        self.cache.insert(addr, entry);
        info
    }

    /// The code object's type and the fields [`CodeReader::read`] follows,
    /// in one read of its header.
    fn stamp(&self, addr: u64) -> io::Result<Stamp> {
        let l = &self.interpreter.layout;
        let mut head = vec![0u8; self.header_len];
        self.memory.read_exact(addr, &mut head)?;
        let u64_at = |off: usize| -> io::Result<u64> {
            let b = head.get(off..off + 8).ok_or_else(bad)?;
            Ok(u64::from_ne_bytes(b.try_into().map_err(|_| bad())?))
        };
        if u64_at(8)? != self.interpreter.code_type {
            return Err(io::Error::other("not a code object"));
        }
        let at = usize::from(l.code_firstlineno);
        let first_line = head.get(at..at + 4).ok_or_else(bad)?;
        Ok(Stamp {
            name: u64_at(usize::from(self.name_at))?,
            file: u64_at(usize::from(l.code_filename))?,
            first_line: u32::from_ne_bytes(first_line.try_into().map_err(|_| bad())?),
            line_table: u64_at(usize::from(l.code_linetable))?,
        })
    }

    fn read(&self, addr: u64) -> io::Result<(CodeInfo, Stamp)> {
        let stamp = self.stamp(addr)?;
        let name = self.string(stamp.name)?;
        let file = self.string(stamp.file)?;
        let line_table = self.bytes(stamp.line_table).unwrap_or_default();
        let info = CodeInfo {
            name,
            file,
            first_line: i64::from(stamp.first_line as i32),
            line_table,
            kind: LineTable::for_minor(self.interpreter.minor),
        };
        Ok((info, stamp))
    }

    /// A `str`: compact (the characters follow the header), ASCII,
    /// Latin-1, UCS-2 or UCS-4.
    fn string(&self, addr: u64) -> io::Result<String> {
        if self.memory.read_u64(addr.checked_add(8).ok_or_else(bad)?)? != self.interpreter.str_type
        {
            return Err(io::Error::other("not a str"));
        }
        let l = &self.interpreter.layout;
        let mut head = [0u8; 40];
        self.memory.read_exact(addr, &mut head)?;
        let len = u64::from_ne_bytes(head[16..24].try_into().map_err(|_| bad())?);
        let state = u32::from_ne_bytes(head[32..36].try_into().map_err(|_| bad())?);
        let kind = (state >> 2) & 7;
        let compact = (state >> 5) & 1 == 1;
        let ascii = (state >> 6) & 1 == 1;
        if !compact || len > MAX_STRING_CHARS {
            return Err(io::Error::other("not a short compact string"));
        }
        let (data, width) = match (ascii, kind) {
            (true, 1) => (l.unicode_ascii_data, 1),
            (false, 1 | 2 | 4) => (l.unicode_compact_data, kind as usize),
            _ => return Err(bad()),
        };
        let mut raw = vec![0u8; len as usize * width];
        self.memory
            .read_exact(addr.checked_add(u64::from(data)).ok_or_else(bad)?, &mut raw)?;
        Ok(match width {
            1 => raw.iter().map(|&b| char::from(b)).collect(),
            2 => raw
                .chunks_exact(2)
                .map(|c| {
                    char::from_u32(u32::from(u16::from_ne_bytes([c[0], c[1]])))
                        .unwrap_or('\u{fffd}')
                })
                .collect(),
            _ => raw
                .chunks_exact(4)
                .map(|c| {
                    char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                        .unwrap_or('\u{fffd}')
                })
                .collect(),
        })
    }

    /// A `bytes` object's contents: `ob_size` at 16, data at 32.
    fn bytes(&self, addr: u64) -> io::Result<Vec<u8>> {
        if self.memory.read_u64(addr.checked_add(8).ok_or_else(bad)?)?
            != self.interpreter.bytes_type
        {
            return Err(io::Error::other("not a bytes"));
        }
        let len = self
            .memory
            .read_u64(addr.checked_add(16).ok_or_else(bad)?)?;
        if len > MAX_LINE_TABLE_BYTES {
            return Err(io::Error::other("line table over the cap"));
        }
        let mut out = vec![0u8; len as usize];
        self.memory
            .read_exact(addr.checked_add(32).ok_or_else(bad)?, &mut out)?;
        Ok(out)
    }
}

fn bad() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed Python object")
}

impl LineTable {
    pub fn for_minor(minor: u8) -> LineTable {
        super::Layout::line_table(minor)
    }
}

/// `co_lnotab` (3.6 to 3.9): (byte offset increment, signed line
/// increment) pairs.
fn lnotab_line(table: &[u8], first: i64, offset: u64) -> Option<i64> {
    let mut line = first;
    let mut addr = 0u64;
    for pair in table.chunks_exact(2) {
        addr += u64::from(pair[0]);
        if addr > offset {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    Some(line)
}

/// PEP 626 `co_linetable` (3.10): (byte length, signed line delta) pairs;
/// a delta of -128 means "no line".
fn pep626_line(table: &[u8], first: i64, offset: u64) -> Option<i64> {
    let mut line = first;
    let mut end = 0u64;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let this = if delta == -128 {
            None
        } else {
            line += i64::from(delta);
            Some(line)
        };
        if start <= offset && offset < end {
            return this;
        }
    }
    None
}

/// The location table of 3.11+ (`Objects/locations.md`): entries of a
/// first byte `1 cccc lll` (code, length - 1 in code units) and varints.
fn location_line(table: &[u8], first: i64, instr: u64) -> Option<i64> {
    let mut line = first;
    let mut addr = 0u64;
    let mut i = 0usize;
    let varint = |i: &mut usize| -> Option<u64> {
        let mut b = *table.get(*i)?;
        *i += 1;
        let mut val = u64::from(b & 63);
        let mut shift = 0;
        while b & 64 != 0 && shift < 60 {
            b = *table.get(*i)?;
            *i += 1;
            shift += 6;
            val |= u64::from(b & 63) << shift;
        }
        Some(val)
    };
    let svarint = |i: &mut usize| -> Option<i64> {
        let v = varint(i)?;
        Some(if v & 1 == 1 {
            -((v >> 1) as i64)
        } else {
            (v >> 1) as i64
        })
    };
    while i < table.len() {
        let head = table[i];
        i += 1;
        if head & 0x80 == 0 {
            return None;
        }
        let code = (head >> 3) & 15;
        let len = u64::from(head & 7) + 1;
        let this = match code {
            15 => None,
            14 => {
                line += svarint(&mut i)?;
                varint(&mut i)?;
                varint(&mut i)?;
                varint(&mut i)?;
                Some(line)
            }
            13 => {
                line += svarint(&mut i)?;
                Some(line)
            }
            10..=12 => {
                line += i64::from(code - 10);
                i += 2;
                Some(line)
            }
            _ => {
                i += 1;
                Some(line)
            }
        };
        if addr <= instr && instr < addr + len {
            return this;
        }
        addr += len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::Layout;

    /// A Python object in this process's memory: 8-byte aligned bytes.
    struct Object(Vec<u64>);

    impl Object {
        fn new(bytes: usize) -> Object {
            Object(vec![0; bytes.div_ceil(8)])
        }
        fn addr(&self) -> u64 {
            self.0.as_ptr() as u64
        }
        fn put_u64(&mut self, at: u16, value: u64) {
            self.0[usize::from(at) / 8] = value;
        }
        fn put_bytes(&mut self, at: u16, bytes: &[u8]) {
            // SAFETY: the bytes stay within the vector (asserted), which
            // this object owns; u8 has no alignment.
            let all = unsafe {
                std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), self.0.len() * 8)
            };
            all[usize::from(at)..usize::from(at) + bytes.len()].copy_from_slice(bytes);
        }
    }

    const CODE_TYPE: u64 = 0xc0de;
    const STR_TYPE: u64 = 0x5757;
    const BYTES_TYPE: u64 = 0xb7e5;

    fn interpreter() -> Interpreter {
        Interpreter {
            minor: 11,
            path: "python3.11".into(),
            runtime: 0,
            eval: 0..0,
            code_type: CODE_TYPE,
            str_type: STR_TYPE,
            bytes_type: BYTES_TYPE,
            layout: Layout::for_version(11).unwrap(),
        }
    }

    /// A compact ASCII `str`.
    fn ascii(layout: &Layout, text: &str) -> Object {
        let mut o = Object::new(usize::from(layout.unicode_ascii_data) + text.len() + 1);
        o.put_u64(8, STR_TYPE);
        o.put_u64(16, text.len() as u64);
        o.put_u64(32, (1 << 2) | (1 << 5) | (1 << 6));
        o.put_bytes(layout.unicode_ascii_data, text.as_bytes());
        o
    }

    /// A code object named `name` in file `file`, with an empty line table.
    fn code_object(layout: &Layout, name: &Object, file: &Object, table: &Object) -> Object {
        let mut o = Object::new(512);
        o.put_u64(8, CODE_TYPE);
        o.put_u64(layout.code_qualname, name.addr());
        o.put_u64(layout.code_filename, file.addr());
        o.put_u64(layout.code_linetable, table.addr());
        o.put_bytes(layout.code_firstlineno, &7u32.to_ne_bytes());
        o
    }

    #[test]
    fn a_code_object_gone_after_its_sample_keeps_its_name_and_a_new_one_is_read() {
        let interpreter = interpreter();
        let layout = interpreter.layout;
        let (module, other, file) = (
            ascii(&layout, "<module>"),
            ascii(&layout, "other"),
            ascii(&layout, "main.py"),
        );
        let mut table = Object::new(40);
        table.put_u64(8, BYTES_TYPE);
        let mut code = code_object(&layout, &module, &file, &table);
        let mut reader = CodeReader::new(std::process::id(), interpreter);
        let name = |reader: &mut CodeReader, code: &Object| {
            reader.code(code.addr()).map(|info| info.name.clone())
        };
        assert_eq!(name(&mut reader, &code).as_deref(), Some("<module>"));
        // Freed after the sample was taken, before the reader came.
        code.put_u64(8, 0);
        assert_eq!(name(&mut reader, &code).as_deref(), Some("<module>"));
        // Another code object at its address is read anew.
        code.put_u64(8, CODE_TYPE);
        code.put_u64(layout.code_qualname, other.addr());
        assert_eq!(name(&mut reader, &code).as_deref(), Some("other"));
        // Never read: no name to keep.
        reader.clear_cache();
        code.put_u64(8, 0);
        assert_eq!(name(&mut reader, &code), None);
    }

    #[test]
    fn lnotab_lines() {
        // offset 0..6 line 10, 6..10 line 11, 10.. line 13.
        let t = [6, 1, 4, 2];
        assert_eq!(lnotab_line(&t, 10, 0), Some(10));
        assert_eq!(lnotab_line(&t, 10, 7), Some(11));
        assert_eq!(lnotab_line(&t, 10, 12), Some(13));
    }

    #[test]
    fn pep626_lines() {
        let t = [2, 0, 4, 1, 2, 0x80, 6, 2];
        assert_eq!(pep626_line(&t, 5, 0), Some(5));
        assert_eq!(pep626_line(&t, 5, 3), Some(6));
        assert_eq!(pep626_line(&t, 5, 6), None);
        assert_eq!(pep626_line(&t, 5, 9), Some(8));
        assert_eq!(pep626_line(&t, 5, 100), None);
    }

    #[test]
    fn location_table_lines() {
        // One-line form (code 11: +1) covering 2 units, no-column form
        // (code 13, +3 as svarint 6) covering 1, short form (code 0) 3 units,
        // no location (code 15) 1 unit.
        let t = [
            0x80 | (11 << 3) | 1,
            4,
            9,
            0x80 | (13 << 3),
            6,
            0x80 | 2,
            7,
            0x80 | (15 << 3),
        ];
        assert_eq!(location_line(&t, 1, 0), Some(2));
        assert_eq!(location_line(&t, 1, 1), Some(2));
        assert_eq!(location_line(&t, 1, 2), Some(5));
        assert_eq!(location_line(&t, 1, 5), Some(5));
        assert_eq!(location_line(&t, 1, 6), None);
        assert_eq!(location_line(&t, 1, 7), None);
        // Truncated input ends the walk, without panicking.
        assert_eq!(location_line(&[0x80 | (14 << 3)], 1, 0), None);
    }
}
