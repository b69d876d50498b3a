//! smolder's symbolizer: turns code addresses into the chain of functions,
//! source files and lines they belong to, innermost inlined frame first.
//!
//! One front door, [`Symbolizer`], takes a [`Source`] saying what the addresses
//! are relative to — an ELF file (file offsets or virtual addresses), an object
//! known by build-id, a live process (absolute addresses, read through
//! `/proc/PID/maps`, container roots, `map_files`, JIT perf maps and the vDSO,
//! each file opened by the one rule of [`process`]),
//! or the kernel (`/proc/kallsyms`) — and returns one [`Symbolized`] per
//! address. Names come from DWARF (with inlined functions, compressed sections,
//! separate debug files by build-id or `.gnu_debuglink`), then `.symtab`, then
//! `.dynsym`, and are demangled (Rust legacy and v0, C++).
//!
//! Parsed objects are cached by build-id (or file identity), parsed lazily and
//! evicted least-recently-used under a byte budget. Broken inputs never panic:
//! they yield what can still be found and bump a counter in [`Stats`].
//!
//! ```
//! use smolder_symbolizer::{Source, Symbolizer};
//!
//! #[inline(never)]
//! fn hot_function() -> u64 {
//!     std::hint::black_box(42)
//! }
//!
//! let symbolizer = Symbolizer::builder().cache_bytes(64 << 20).build();
//! let pc = hot_function as *const () as usize as u64;
//! let me = Source::Process { pid: std::process::id() };
//! let results = symbolizer.symbolize(&me, &[pc])?;
//!
//! let mut text = Vec::new();
//! smolder_symbolizer::format_addr2line(&results[0], &mut text)?;
//! let module = results[0].module.as_ref().expect("the PC is in our executable");
//! assert!(module.file_offset > 0);
//! assert_eq!(symbolizer.stats().objects_parsed, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache;
mod compressed;
mod debugfile;
mod demangle;
mod dwarf;
mod elf;
mod error;
mod format;
mod kernel;
pub mod perfmap;
pub mod process;
mod stats;
mod symbolizer;
mod symtab;
mod units;

pub use demangle::demangle;
pub use error::Error;
pub use format::{format_addr2line, format_json_line};
pub use perfmap::{PerfMap, PerfMapReader};
pub use process::{open_mapped_file, Mapping, MappingKind, ProcessFacts, ProcessMaps, ProcessRoot};
pub use stats::Stats;
pub use symbolizer::{Symbolizer, SymbolizerBuilder};

use std::path::Path;

/// What the addresses given to [`Symbolizer::symbolize`] are relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// An ELF file on disk.
    Elf {
        path: &'a Path,
        addresses: AddressKind,
    },
    /// An object known by its GNU build-id (hex): looked up in the cache, then
    /// under the debug root (`.build-id/xx/rest.debug`).
    BuildId {
        build_id: &'a str,
        addresses: AddressKind,
    },
    /// A live process; addresses are absolute (as sampled).
    Process { pid: u32 },
    /// The running kernel and its modules; addresses are absolute.
    Kernel,
}

/// How addresses into an object are expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// Byte offsets into the file (mapping offset + (pc - mapping start)).
    FileOffset,
    /// Link-time virtual addresses, as in the symbol table and DWARF.
    VirtualAddress,
}

/// The result for one address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Symbolized {
    /// The address as given.
    pub addr: u64,
    /// The frames, innermost (inlined) first and the real function last;
    /// empty when nothing names the address.
    pub frames: Vec<Frame>,
    /// The object the address falls in, so that it can be symbolized again
    /// elsewhere; `None` when the address is in no known mapping.
    pub module: Option<ModuleInfo>,
}

/// One function in the inlined chain of an address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Frame {
    /// Function name, demangled.
    pub function: Option<String>,
    /// Source file: for the innermost frame, where the address is; for the
    /// others, where the inner frame was inlined (the call site).
    pub file: Option<String>,
    /// Line in `file`.
    pub line: Option<u32>,
    /// Whether this frame was inlined into the next one.
    pub inlined: bool,
}

/// The mapped object an address belongs to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleInfo {
    /// The object's path as its user knows it (the `/proc/PID/maps` path), or
    /// a pseudo-name: `[vdso]`, `[kernel.kallsyms]`, `[module]`, `[anon]`.
    pub path: String,
    /// GNU build-id, lower-case hex.
    pub build_id: Option<String>,
    /// Offset of the address in the file (for the kernel: the address itself).
    pub file_offset: u64,
}

/// Entry points for fuzzing; not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;
    use std::sync::Arc;

    use crate::elf::{Backing, ElfObject, Env};
    use crate::stats::Counters;

    /// Parses `data` as an ELF object and symbolizes addresses drawn from its
    /// own symbols and segments, then formats the results. Must never panic.
    /// Returns the number of frames found, and the counters.
    pub fn symbolize_elf_bytes(data: &[u8]) -> (usize, crate::Stats) {
        let counters = Counters::default();
        let path = Path::new("/nonexistent/fuzz-input.elf");
        let obj = match ElfObject::parse(Arc::new(Backing::Owned(data.to_vec())), path, path) {
            Ok(obj) => obj,
            Err(e) => {
                counters.error(&e);
                return (0, counters.snapshot());
            }
        };
        let env = Env {
            debug_root: Path::new("/nonexistent"),
            counters: &counters,
            demangle: true,
            inlined: true,
            found_bytes: 1 << 20,
            bulk: false,
        };
        let mut probes = obj.probe_addresses(&env);
        probes.truncate(128);
        let _ = obj.symbol_count(&env);
        let mut found = 0;
        let mut sink = Vec::new();
        for base in probes {
            for vaddr in [base, base.wrapping_add(1), base.wrapping_add(13)] {
                let (frames, _) = obj.lookup(vaddr, &env);
                found += frames.len();
                let offset = obj.vaddr_to_file_offset(vaddr);
                if let Some(off) = offset {
                    let _ = obj.file_offset_to_vaddr(off);
                }
                let sym = crate::Symbolized {
                    addr: vaddr,
                    frames,
                    module: Some(crate::ModuleInfo {
                        path: path.display().to_string(),
                        build_id: obj.build_id_hex(),
                        file_offset: offset.unwrap_or(vaddr),
                    }),
                };
                let _ = crate::format_addr2line(&sym, &mut sink);
                let _ = crate::format_json_line(&sym, &mut sink);
                sink.clear();
            }
        }
        (found, counters.snapshot())
    }
}
