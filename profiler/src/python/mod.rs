//! CPython in a profiled process: finding the interpreter and its layout
//! (for the kernel walker), and naming the frames the walker emits.
//!
//! Owns the per-version struct offsets ([`Layout`]), the detection of an
//! interpreter in a process's mappings ([`detect`]) and the reading of code
//! objects from the process's memory ([`code`]). Touches a process only
//! through the symbolizer's process model (the one open rule) and
//! `process_vm_readv`; everything read is untrusted and capped. Knows
//! nothing of BPF maps (`sampler::python` loads a [`Interpreter`] into
//! them) nor of profiles (the aggregator turns [`code::CodeInfo`] into
//! locations).
//!
//! Where the offsets come from: CPython 3.13 describes itself in
//! `_Py_DebugOffsets`, the first bytes of `_PyRuntime`, read from the
//! running process; 3.8 to 3.12 have no such description, so their offsets
//! are a table here, read off each version's debug information (`gdb`
//! `ptype/o` on the pyenv builds) and checked against it by
//! `tests/tests/python.rs`; 3.13's table entry is checked against
//! `_Py_DebugOffsets` the same way. Any other version is "unsupported":
//! native frames only, counted.

pub mod code;
mod memory;

use std::ops::Range;

use object::{Object, ObjectSymbol};
use smolder_symbolizer::process::{open_mapped_file, Mapping, ProcessMaps};

pub use memory::ProcessMemory;

use crate::unwind::{read_object_parts, ElfLayout};

/// A Python frame in a sample's user PCs (`SMOLDER_PY_FRAME_TAG` in
/// `profiler/bpf/python.h`): bit 63 set, which no user address has.
pub const FRAME_TAG: u64 = 1 << 63;
const INSTR_SHIFT: u32 = 47;
const INSTR_UNKNOWN: u64 = 0xffff;
const ADDR_MASK: u64 = (1 << 47) - 1;
/// `SMOLDER_PY_NONE`: a field a layout does not have.
pub const NONE: u16 = 0xffff;

/// A Python frame decoded from a user PC: the code object's address and
/// the index of the instruction it was executing (code units), if known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameRef {
    pub code: u64,
    pub instr: Option<u32>,
}

impl FrameRef {
    /// The Python frame `pc` stands for, if it is one.
    pub fn decode(pc: u64) -> Option<FrameRef> {
        if pc & FRAME_TAG == 0 {
            return None;
        }
        let instr = (pc >> INSTR_SHIFT) & INSTR_UNKNOWN;
        Some(FrameRef {
            code: pc & ADDR_MASK,
            instr: (instr != INSTR_UNKNOWN).then_some(instr as u32),
        })
    }

    /// The user PC the kernel walker writes for this frame.
    pub fn encode(self) -> u64 {
        let instr = self
            .instr
            .map_or(INSTR_UNKNOWN, |i| u64::from(i).min(INSTR_UNKNOWN));
        FRAME_TAG | (instr << INSTR_SHIFT) | (self.code & ADDR_MASK)
    }
}

/// Byte offsets of the fields the walker and the code reader use, for one
/// CPython version (x86_64, default build: no free threading, no debug).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub runtime_interpreters_head: u16,
    pub interp_threads_head: u16,
    pub tstate_next: u16,
    pub tstate_thread_id: u16,
    /// `frame` (<= 3.10), `cframe` (3.11, 3.12), `current_frame` (3.13).
    pub tstate_frame: u16,
    /// [`NONE`]: `tstate_frame` points at the frame itself.
    pub cframe_current_frame: u16,
    pub frame_code: u16,
    pub frame_previous: u16,
    pub frame_instr: u16,
    /// Offset of the bytecode in a code object; [`NONE`]: `frame_instr` is
    /// an `int` index (`f_lasti`), not a pointer.
    pub code_adaptive: u16,
    pub frame_is_entry: u16,
    pub frame_owner: u16,
    pub one_frame_per_eval: bool,
    pub code_name: u16,
    /// `co_qualname` (3.11+), else [`NONE`].
    pub code_qualname: u16,
    pub code_filename: u16,
    pub code_firstlineno: u16,
    /// `co_lnotab` (<= 3.9) or `co_linetable`.
    pub code_linetable: u16,
    /// `sizeof(PyASCIIObject)`, `sizeof(PyCompactUnicodeObject)`: where
    /// the characters of a compact string start.
    pub unicode_ascii_data: u16,
    pub unicode_compact_data: u16,
}

/// How a code object's instruction index maps to its line table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineTable {
    /// `co_lnotab` (<= 3.9); the index is a byte offset.
    Lnotab,
    /// PEP 626 `co_linetable` (3.10); the index counts code units.
    Pep626,
    /// The location table (3.11+); the index counts code units.
    Locations,
}

impl Layout {
    /// The table entry for CPython 3.`minor`, if smolder knows it.
    pub fn for_version(minor: u8) -> Option<Layout> {
        let base = Layout {
            runtime_interpreters_head: 32,
            interp_threads_head: 8,
            tstate_next: 8,
            tstate_thread_id: 176,
            tstate_frame: 24,
            cframe_current_frame: NONE,
            frame_code: 32,
            frame_previous: 24,
            frame_instr: 104,
            code_adaptive: NONE,
            frame_is_entry: NONE,
            frame_owner: NONE,
            one_frame_per_eval: true,
            code_name: 112,
            code_qualname: NONE,
            code_filename: 104,
            code_firstlineno: 40,
            code_linetable: 120,
            unicode_ascii_data: 48,
            unicode_compact_data: 72,
        };
        Some(match minor {
            8 | 9 => base,
            10 => Layout {
                frame_instr: 96,
                ..base
            },
            11 => Layout {
                runtime_interpreters_head: 40,
                interp_threads_head: 16,
                tstate_thread_id: 152,
                tstate_frame: 56,
                cframe_current_frame: 8,
                frame_code: 32,
                frame_previous: 48,
                frame_instr: 56,
                code_adaptive: 184,
                frame_is_entry: 68,
                one_frame_per_eval: false,
                code_name: 120,
                code_qualname: 128,
                code_filename: 112,
                code_firstlineno: 72,
                code_linetable: 136,
                ..base
            },
            12 => Layout {
                runtime_interpreters_head: 40,
                interp_threads_head: 72,
                tstate_thread_id: 136,
                tstate_frame: 56,
                cframe_current_frame: 0,
                frame_code: 0,
                frame_previous: 8,
                frame_instr: 56,
                code_adaptive: 192,
                frame_owner: 70,
                one_frame_per_eval: false,
                code_name: 120,
                code_qualname: 128,
                code_filename: 112,
                code_firstlineno: 68,
                code_linetable: 136,
                unicode_ascii_data: 40,
                unicode_compact_data: 56,
                ..base
            },
            // 3.13 reads its layout from _Py_DebugOffsets; this entry is
            // what the test checks that reading against.
            13 => Layout {
                runtime_interpreters_head: 632,
                interp_threads_head: 7344,
                tstate_thread_id: 152,
                tstate_frame: 72,
                cframe_current_frame: NONE,
                code_adaptive: 200,
                ..Layout::for_version(12)?
            },
            _ => return None,
        })
    }

    /// 3.13+: the layout `_Py_DebugOffsets` (the first bytes of
    /// `_PyRuntime`, `bytes`) describes, or why it is not usable.
    pub fn from_debug_offsets(bytes: &[u8]) -> Result<(u32, Layout), String> {
        let u = |i: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(
                bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        let field = |i: usize| -> Result<u16, String> {
            u(i).and_then(|v| u16::try_from(v).ok())
                .filter(|&v| v != NONE)
                .ok_or_else(|| format!("_Py_DebugOffsets field {i} missing or out of range"))
        };
        if bytes.get(..8) != Some(b"xdebugpy") {
            return Err("no _Py_DebugOffsets cookie at _PyRuntime".into());
        }
        let version = u(1).unwrap_or(0) as u32;
        if u(2) != Some(0) {
            return Err("a free-threaded build".into());
        }
        // Field indexes (u64 words) of the 3.13 struct; 3.14 moved them.
        if version >> 16 != 0x030d {
            return Err(format!(
                "_Py_DebugOffsets of version {version:#x}, not 3.13"
            ));
        }
        // Each offset must lie inside its struct, whose size the same
        // header gives (runtime, interpreter, thread state, frame, code
        // object): a header written by the process itself is checked
        // against itself, so forged offsets make an unknown layout.
        let inside = |struct_size: usize, fields: &[usize]| -> Result<(), String> {
            let size = u(struct_size).unwrap_or(0);
            match fields.iter().find(|&&f| u(f).is_none_or(|v| v >= size)) {
                Some(f) => Err(format!(
                    "_Py_DebugOffsets field {f} lies outside its struct of {size} bytes"
                )),
                None => Ok(()),
            }
        };
        inside(3, &[5])?;
        inside(6, &[9])?;
        inside(19, &[21, 23, 24])?;
        inside(28, &[29, 30, 31, 33])?;
        inside(34, &[35, 36, 37, 38, 39, 43])?;
        let layout = Layout {
            runtime_interpreters_head: field(5)?,
            interp_threads_head: field(9)?,
            tstate_next: field(21)?,
            tstate_thread_id: field(24)?,
            tstate_frame: field(23)?,
            cframe_current_frame: NONE,
            frame_previous: field(29)?,
            frame_code: field(30)?,
            frame_instr: field(31)?,
            frame_owner: field(33)?,
            frame_is_entry: NONE,
            one_frame_per_eval: false,
            code_filename: field(35)?,
            code_name: field(36)?,
            code_qualname: field(37)?,
            code_linetable: field(38)?,
            code_firstlineno: field(39)?,
            code_adaptive: field(43)?,
            // _Py_DebugOffsets gives the ASCII header size only; the
            // compact header adds utf8_length and utf8 (16 bytes).
            unicode_ascii_data: 40,
            unicode_compact_data: 56,
        };
        Ok((version, layout))
    }

    pub fn line_table(minor: u8) -> LineTable {
        match minor {
            ..=9 => LineTable::Lnotab,
            10 => LineTable::Pep626,
            _ => LineTable::Locations,
        }
    }
}

/// A CPython interpreter found in a process, with its addresses there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interpreter {
    /// 3.`minor`.
    pub minor: u8,
    /// The interpreter's file (the executable or libpython).
    pub path: String,
    pub runtime: u64,
    pub eval: Range<u64>,
    pub code_type: u64,
    /// `PyUnicode_Type` and `PyBytes_Type`: names and files are `str`,
    /// line tables `bytes`, or the code object is not read.
    pub str_type: u64,
    pub bytes_type: u64,
    pub layout: Layout,
}

/// What [`detect`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detection {
    NotPython,
    /// An interpreter smolder has no layout for: native frames only.
    Unsupported {
        path: String,
        reason: String,
    },
    Python(Interpreter),
}

/// CPython's version from a file name: `python3.12`, `libpython3.12.so.1.0`,
/// `libpython3.8d.so`.
fn version_from_name(path: &str) -> Option<u8> {
    let name = path.rsplit('/').next()?;
    let rest = name
        .strip_prefix("libpython3.")
        .or_else(|| name.strip_prefix("python3."))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let tail = &rest[digits.len()..];
    if !(tail.is_empty() || tail.starts_with('.') || tail.starts_with(['d', 'm', 'u'])) {
        return None;
    }
    digits.parse().ok()
}

/// Finds a CPython interpreter among the mappings of `pid`: the first
/// executable mapping of a file named like `python3.N` or `libpython3.N`
/// whose symbols hold `_PyRuntime` (an executable linked to libpython has
/// none; its libpython has).
pub fn detect(pid: u32, maps: &ProcessMaps) -> Detection {
    let mut seen: Vec<(u64, u64)> = Vec::new();
    for entry in maps.entries() {
        if !entry.is_file() || !entry.executable || seen.contains(&(entry.dev, entry.inode)) {
            continue;
        }
        let Some(name_minor) = version_from_name(&entry.path) else {
            continue;
        };
        seen.push((entry.dev, entry.inode));
        match inspect(pid, entry, name_minor) {
            Ok(Some(found)) => return found,
            Ok(None) => continue,
            Err(reason) => {
                return Detection::Unsupported {
                    path: entry.path.clone(),
                    reason,
                }
            }
        }
    }
    Detection::NotPython
}

/// The interpreter in the file behind `entry`; `Ok(None)` when the file
/// has no `_PyRuntime` (not the interpreter itself).
fn inspect(pid: u32, entry: &Mapping, name_minor: u8) -> Result<Option<Detection>, String> {
    let file = open_mapped_file(pid, entry).map_err(|e| e.to_string())?;
    let bytes = read_object_parts(&file, smolder_symbolizer::process::ElfParts::NoDebug)
        .map_err(|e| format!("reading {}: {e}", entry.path))?;
    let obj = object::File::parse(&*bytes).map_err(|e| format!("{}: {e}", entry.path))?;
    let mut runtime = None;
    let mut eval = None;
    let mut code_type = None;
    let mut str_type = None;
    let mut bytes_type = None;
    let mut py_version = None;
    for sym in obj.dynamic_symbols().chain(obj.symbols()) {
        match sym.name() {
            Ok("_PyRuntime") => runtime = runtime.or(Some(sym.address())),
            Ok("_PyEval_EvalFrameDefault") if sym.size() > 0 => {
                eval = eval.or(Some(sym.address()..sym.address() + sym.size()))
            }
            Ok("PyCode_Type") => code_type = code_type.or(Some(sym.address())),
            Ok("PyUnicode_Type") => str_type = str_type.or(Some(sym.address())),
            Ok("PyBytes_Type") => bytes_type = bytes_type.or(Some(sym.address())),
            Ok("Py_Version") => py_version = py_version.or(Some(sym.address())),
            _ => {}
        }
    }
    let Some(runtime) = runtime else {
        return Ok(None);
    };
    let unsupported = |reason: String| {
        Ok(Some(Detection::Unsupported {
            path: entry.path.clone(),
            reason,
        }))
    };
    let (Some(eval), Some(code_type), Some(str_type), Some(bytes_type)) =
        (eval, code_type, str_type, bytes_type)
    else {
        return unsupported(
            "no _PyEval_EvalFrameDefault, PyCode_Type, PyUnicode_Type or PyBytes_Type symbol"
                .into(),
        );
    };
    let layout = ElfLayout::of_object(&obj);
    let Some(bias) = layout.load_bias(entry.start, entry.offset) else {
        return unsupported("the mapping matches no loadable segment".into());
    };
    let runtime = runtime.wrapping_add(bias);
    let memory = ProcessMemory::new(pid);
    // The running interpreter's own version, where it says (3.11+).
    let minor = match py_version {
        Some(at) => match memory.read_u64(at.wrapping_add(bias)) {
            Ok(v) if (v as u32) >> 24 == 3 => ((v as u32) >> 16 & 0xff) as u8,
            Ok(v) => return unsupported(format!("Py_Version {v:#x} is not 3.x")),
            Err(e) => return unsupported(format!("reading Py_Version: {e}")),
        },
        None => name_minor,
    };
    let layout = if minor >= 13 {
        let mut head = [0u8; 360];
        if let Err(e) = memory.read_exact(runtime, &mut head) {
            return unsupported(format!("reading _Py_DebugOffsets: {e}"));
        }
        match Layout::from_debug_offsets(&head) {
            Ok((_, layout)) => layout,
            Err(reason) => return unsupported(reason),
        }
    } else {
        match Layout::for_version(minor) {
            Some(l) => l,
            None => return unsupported(format!("CPython 3.{minor} has no known layout")),
        }
    };
    Ok(Some(Detection::Python(Interpreter {
        minor,
        path: entry.path.clone(),
        runtime,
        eval: eval.start.wrapping_add(bias)..eval.end.wrapping_add(bias),
        code_type: code_type.wrapping_add(bias),
        str_type: str_type.wrapping_add(bias),
        bytes_type: bytes_type.wrapping_add(bias),
        layout,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_encoding_round_trips() {
        let f = FrameRef {
            code: 0x7f12_3456_7890,
            instr: Some(42),
        };
        assert_eq!(FrameRef::decode(f.encode()), Some(f));
        let unknown = FrameRef {
            code: 0x5555_0000_1000,
            instr: None,
        };
        assert_eq!(FrameRef::decode(unknown.encode()), Some(unknown));
        assert_eq!(FrameRef::decode(0x7fff_0000_1234), None);
    }

    #[test]
    fn versions_from_file_names() {
        assert_eq!(version_from_name("/usr/bin/python3.11"), Some(11));
        assert_eq!(
            version_from_name("/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0"),
            Some(12)
        );
        assert_eq!(version_from_name("/usr/lib/libpython3.8d.so"), Some(8));
        assert_eq!(version_from_name("/usr/bin/python3"), None);
        assert_eq!(version_from_name("/usr/bin/python3.11-config"), None);
        assert_eq!(version_from_name("/usr/lib/libpython3.so"), None);
    }

    #[test]
    fn debug_offsets_are_checked() {
        assert!(Layout::from_debug_offsets(&[0u8; 360]).is_err());
        assert!(Layout::from_debug_offsets(b"xdebugpy").is_err());
        assert!(Layout::for_version(7).is_none());
        assert!(Layout::for_version(14).is_none());
    }

    /// A 3.13 header with every struct 512 bytes and every offset 8.
    fn header() -> Vec<u8> {
        let mut words = vec![8u64; 45];
        words[1] = 0x030d_00f0;
        words[2] = 0;
        for size in [3, 6, 19, 28, 34] {
            words[size] = 512;
        }
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        bytes[..8].copy_from_slice(b"xdebugpy");
        bytes
    }

    #[test]
    fn debug_offsets_outside_their_struct_are_refused() {
        let (_, layout) = Layout::from_debug_offsets(&header()).unwrap();
        assert_eq!(layout.frame_previous, 8);
        // The frame's `previous` (word 29) past the frame's size (word 28).
        let mut forged = header();
        forged[29 * 8..30 * 8].copy_from_slice(&0x7ff8u64.to_ne_bytes());
        let err = Layout::from_debug_offsets(&forged).unwrap_err();
        assert!(err.contains("field 29"), "{err}");
    }
}
