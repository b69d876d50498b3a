//! The Rust mirror of `profiler/bpf/python.h`: the per-process CPython
//! layout the kernel walker reads (`PYTHON_PROCS`) and its counters
//! (`PYTHON_STATS`).
//!
//! Owns writing those maps: the unwind-table worker calls
//! [`PythonProcs::load`] when it loads a process, with what
//! [`crate::python::detect`] found in its mappings.

use std::mem::size_of;

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray};

use super::SamplerStats;

use crate::pipeline::ProcessMaps;
use crate::python::{self, Detection, Interpreter};

pub const MAP_PYTHON_PROCS: &str = "PYTHON_PROCS";
pub const MAP_PYTHON_STATS: &str = "PYTHON_STATS";
pub const PY_STAT_FRAMES: u32 = 0;
pub const PY_STAT_LAYOUT_STOPS: u32 = 1;

/// `struct smolder_python_proc`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PythonProc {
    pub runtime: u64,
    pub eval_start: u64,
    pub eval_end: u64,
    pub code_type: u64,
    pub runtime_interpreters_head: u16,
    pub interp_threads_head: u16,
    pub tstate_next: u16,
    pub tstate_thread_id: u16,
    pub tstate_frame: u16,
    pub cframe_current_frame: u16,
    pub frame_code: u16,
    pub frame_previous: u16,
    pub frame_instr: u16,
    pub code_adaptive: u16,
    pub frame_is_entry: u16,
    pub frame_owner: u16,
    pub one_frame_per_eval: u16,
    pub _pad: [u16; 3],
}

const _: () = assert!(size_of::<PythonProc>() == 64);

// SAFETY: plain old data, every bit pattern valid, no padding.
unsafe impl aya::Pod for PythonProc {}

impl From<&Interpreter> for PythonProc {
    fn from(i: &Interpreter) -> PythonProc {
        let l = &i.layout;
        PythonProc {
            runtime: i.runtime,
            eval_start: i.eval.start,
            eval_end: i.eval.end,
            code_type: i.code_type,
            runtime_interpreters_head: l.runtime_interpreters_head,
            interp_threads_head: l.interp_threads_head,
            tstate_next: l.tstate_next,
            tstate_thread_id: l.tstate_thread_id,
            tstate_frame: l.tstate_frame,
            cframe_current_frame: l.cframe_current_frame,
            frame_code: l.frame_code,
            frame_previous: l.frame_previous,
            frame_instr: l.frame_instr,
            code_adaptive: l.code_adaptive,
            frame_is_entry: l.frame_is_entry,
            frame_owner: l.frame_owner,
            one_frame_per_eval: u16::from(l.one_frame_per_eval),
            _pad: [0; 3],
        }
    }
}

/// Adds the kernel's `PYTHON_STATS` (summed over CPUs) into `into`.
pub(super) fn read_stats(map: &Map, into: &mut SamplerStats) -> Result<(), MapError> {
    let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
    let sum = |index: u32| -> Result<u64, MapError> {
        Ok(array
            .get(&index, 0)?
            .iter()
            .fold(0u64, |a, v| a.wrapping_add(*v)))
    };
    into.python_frames = sum(PY_STAT_FRAMES)?;
    into.python_layout_stops = sum(PY_STAT_LAYOUT_STOPS)?;
    Ok(())
}

/// `PYTHON_PROCS`, written by the unwind-table worker.
pub struct PythonProcs {
    map: BpfHashMap<MapData, u32, PythonProc>,
    /// Processes found to be CPython (true: in the map; false: a layout
    /// smolder does not know), so that a reload of the same image does
    /// not parse the interpreter again.
    known: std::collections::HashMap<u32, bool>,
}

impl PythonProcs {
    pub fn new(map: Map) -> Result<PythonProcs, String> {
        let map =
            BpfHashMap::try_from(map).map_err(|e| format!("opening {MAP_PYTHON_PROCS}: {e}"))?;
        Ok(PythonProcs {
            map,
            known: std::collections::HashMap::new(),
        })
    }

    /// Detects CPython in `pid` (once per process image) and tells the
    /// walker where its state is.
    pub fn load(&mut self, pid: u32, maps: &ProcessMaps) {
        if self.known.contains_key(&pid) {
            return;
        }
        let found = match python::detect(pid, maps) {
            Detection::Python(interpreter) => {
                let value = PythonProc::from(&interpreter);
                match self.map.insert(pid, value, 0) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("writing {MAP_PYTHON_PROCS} for process {pid}: {e}");
                        false
                    }
                }
            }
            Detection::Unsupported { path, reason } => {
                tracing::debug!("process {pid}: CPython {path} not unwound: {reason}");
                false
            }
            // Maybe not yet: the loader may not have mapped libpython.
            Detection::NotPython => return,
        };
        self.known.insert(pid, found);
    }

    /// The process exited or replaced its image.
    pub fn forget(&mut self, pid: u32) {
        if self.known.remove(&pid) == Some(true) {
            let _ = self.map.remove(&pid);
        }
    }
}
