//! The Rust mirror of `profiler/bpf/sampler.h`: record layouts, flags and
//! counter indexes, and the parser of one ring buffer record.
//!
//! Owns the byte-level contract with the kernel program. The `#[repr(C)]`
//! structs are not read through pointers: they exist so that the size and
//! offset assertions below fail the build when `sampler.h` and this file
//! disagree. Records are parsed field by field from bytes, and every length
//! the kernel reports is checked against the bytes actually received.

use std::mem::{offset_of, size_of};

pub const MAX_KERNEL_FRAMES: usize = 127;
pub const MAX_USER_FRAMES: usize = 512;
pub const MAX_FRAMES: usize = MAX_KERNEL_FRAMES + MAX_USER_FRAMES;
pub const COMM_LEN: usize = 16;

pub const EVENT_SAMPLE: u32 = 1;
pub const EVENT_EXEC: u32 = 2;
pub const EVENT_EXIT: u32 = 3;
pub const EVENT_STACK_COPY: u32 = 4;
pub const EVENT_OFF_CPU: u32 = 5;

pub const STAT_SAMPLES: u32 = 0;
pub const STAT_RINGBUF_FULL: u32 = 1;
pub const STAT_USER_READ_FAULTS: u32 = 2;
pub const STAT_USER_TRUNCATED: u32 = 3;
pub const STAT_KERNEL_STACK_ERRORS: u32 = 4;
pub const STAT_EVENTS_LOST: u32 = 5;
pub const STAT_USER_UNKNOWN_MAPPING: u32 = 6;
pub const STAT_USER_NO_UNWIND_INFO: u32 = 7;
pub const STAT_USER_TABLE_MISSING: u32 = 8;
pub const STAT_TABLE_FRAMES: u32 = 9;
pub const STAT_FP_FRAMES: u32 = 10;
pub const STAT_STACK_COPIES_LOST: u32 = 11;
pub const STAT_OFF_CPU_SWITCHES: u32 = 12;
pub const STAT_OFF_CPU_SKIPPED_PROBABILITY: u32 = 13;
pub const STAT_OFF_CPU_SKIPPED_SHORT: u32 = 14;
pub const STAT_OFF_CPU_RECORDED: u32 = 15;
pub const STAT_OFF_CPU_LOST: u32 = 16;
pub const STAT_OFF_CPU_UNMATCHED: u32 = 17;
pub const STAT_PREFETCH_EVENTS_LOST: u32 = 18;
pub const STAT_COUNT: u32 = 19;

pub const MAX_TABLES: u32 = 4096;
pub const MAX_MAPPINGS: usize = 256;
pub const STACK_COPY_BYTES: usize = 65536;

/// `struct smolder_event_header`
#[repr(C)]
pub struct EventHeader {
    pub kind: u32,
    pub pid: u32,
    pub time_ns: u64,
}

/// `struct smolder_sample_header`; the PCs follow it on the ring buffer.
#[repr(C)]
pub struct SampleHeader {
    pub event: EventHeader,
    pub tid: u32,
    pub cpu: u32,
    pub flags: u32,
    pub kernel_frames: u16,
    pub user_frames: u16,
    pub comm: [u8; COMM_LEN],
    pub value: u64,
}

/// `struct smolder_sample`: the per-CPU scratch record.
#[repr(C)]
pub struct Sample {
    pub header: SampleHeader,
    pub pcs: [u64; MAX_FRAMES],
}

/// `struct smolder_exec_event`
#[repr(C)]
pub struct ExecEvent {
    pub event: EventHeader,
    pub comm: [u8; COMM_LEN],
}

/// `struct smolder_exit_event`
#[repr(C)]
pub struct ExitEvent {
    pub event: EventHeader,
}

/// `struct smolder_unwind_table`: where a table's rows sit in `UNWIND_ROWS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindTableEntry {
    pub row_start: u32,
    pub row_count: u32,
    pub generation: u32,
    pub _pad: u32,
    pub last_used_ns: u64,
}

// SAFETY: plain old data, every bit pattern valid, no padding.
unsafe impl aya::Pod for UnwindTableEntry {}

/// `struct smolder_mapping`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingEntry {
    pub start: u64,
    pub end: u64,
    pub bias: u64,
    pub table_id: u32,
    pub generation: u32,
}

/// `struct smolder_proc_mappings`
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcMappings {
    pub count: u32,
    pub _pad: u32,
    pub mappings: [MappingEntry; MAX_MAPPINGS],
}

// SAFETY: plain old data, every bit pattern valid, no padding.
unsafe impl aya::Pod for ProcMappings {}

/// `struct smolder_stack_copy` without its stack bytes (they follow).
#[repr(C)]
pub struct StackCopyHeader {
    pub event: EventHeader,
    pub tid: u32,
    pub len: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

const _: () = assert!(size_of::<EventHeader>() == 16);
const _: () = assert!(size_of::<SampleHeader>() == 56);
const _: () = assert!(offset_of!(SampleHeader, tid) == 16);
const _: () = assert!(offset_of!(SampleHeader, cpu) == 20);
const _: () = assert!(offset_of!(SampleHeader, flags) == 24);
const _: () = assert!(offset_of!(SampleHeader, kernel_frames) == 28);
const _: () = assert!(offset_of!(SampleHeader, user_frames) == 30);
const _: () = assert!(offset_of!(SampleHeader, comm) == 32);
const _: () = assert!(offset_of!(SampleHeader, value) == 48);
const _: () = assert!(size_of::<Sample>() == 56 + 8 * MAX_FRAMES);
const _: () = assert!(size_of::<ExecEvent>() == 32);
const _: () = assert!(size_of::<ExitEvent>() == 16);
const _: () = assert!(size_of::<crate::unwind::UnwindRow>() == 16);
const _: () = assert!(size_of::<UnwindTableEntry>() == 24);
const _: () = assert!(size_of::<MappingEntry>() == 32);
const _: () = assert!(size_of::<ProcMappings>() == 8 + 32 * MAX_MAPPINGS);
const _: () = assert!(size_of::<StackCopyHeader>() == 48);
const _: () = assert!(offset_of!(StackCopyHeader, len) == 20);

/// Flags of one sample (`SMOLDER_SAMPLE_*` in `sampler.h`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SampleFlags(u32);

impl SampleFlags {
    /// The sample interrupted kernel mode; the user stack starts from the
    /// registers saved at kernel entry.
    pub const KERNEL_MODE: SampleFlags = SampleFlags(1 << 0);
    /// A kernel thread: there is no user stack.
    pub const KTHREAD: SampleFlags = SampleFlags(1 << 1);
    /// The user walk stopped at the frame limit: the stack is deeper.
    pub const USER_TRUNCATED: SampleFlags = SampleFlags(1 << 2);
    /// The user walk stopped because a frame could not be read (a frame
    /// pointer that is not one, typically code built without them).
    pub const USER_READ_FAULT: SampleFlags = SampleFlags(1 << 3);
    /// `bpf_get_stack` failed: the kernel stack is missing.
    pub const KERNEL_STACK_ERROR: SampleFlags = SampleFlags(1 << 4);
    /// A user PC lay in no mapping loaded for unwinding (a process or
    /// library new to the sampler): the stack may be partial; the sampler
    /// loads the process's tables.
    pub const USER_UNKNOWN_MAPPING: SampleFlags = SampleFlags(1 << 5);
    /// The user walk stopped at a PC without a usable unwind rule.
    pub const USER_NO_UNWIND_INFO: SampleFlags = SampleFlags(1 << 6);
    /// The user walk reached the outermost frame: the stack is complete.
    pub const USER_COMPLETE: SampleFlags = SampleFlags(1 << 7);
    /// A mapping's unwind table had been evicted: the stack may be
    /// partial; the sampler reloads it.
    pub const USER_TABLE_MISSING: SampleFlags = SampleFlags(1 << 8);
    /// The PC in no loaded mapping lies in an executable file mapping (a
    /// library loaded since the process's mappings were read): the
    /// sampler reads them again at once, not after [`USER_UNKNOWN_MAPPING`]'s
    /// pause.
    ///
    /// [`USER_UNKNOWN_MAPPING`]: SampleFlags::USER_UNKNOWN_MAPPING
    pub const USER_NEW_FILE: SampleFlags = SampleFlags(1 << 9);

    pub const fn from_bits(bits: u32) -> SampleFlags {
        SampleFlags(bits)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    pub const fn contains(self, other: SampleFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for SampleFlags {
    type Output = SampleFlags;

    fn bitor(self, rhs: SampleFlags) -> SampleFlags {
        SampleFlags(self.0 | rhs.0)
    }
}

/// One ring buffer record, decoded; times are still CLOCK_BOOTTIME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    Sample(SampleRecord),
    Exec {
        pid: u32,
        time_ns: u64,
        comm: String,
    },
    Exit {
        pid: u32,
        time_ns: u64,
    },
    StackCopy(ParsedStackCopy),
}

/// A debug copy of a sample's user stack (`EVENT_STACK_COPY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedStackCopy {
    pub pid: u32,
    pub tid: u32,
    pub boot_time_ns: u64,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub stack: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRecord {
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub boot_time_ns: u64,
    pub comm: String,
    pub flags: SampleFlags,
    pub kernel_stack: Vec<u64>,
    pub user_stack: Vec<u64>,
    /// An off-CPU record (`EVENT_OFF_CPU`): how long the thread was off the
    /// CPU from `boot_time_ns` on, in ns, before any probability scaling.
    pub off_cpu_ns: Option<u64>,
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("record of {len} bytes is shorter than the {need}-byte header of a {what}")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error(
        "sample claims {kernel} kernel + {user} user frames (limits \
         {MAX_KERNEL_FRAMES} + {MAX_USER_FRAMES}) but carries {len} bytes"
    )]
    BadFrameCount {
        kernel: usize,
        user: usize,
        len: usize,
    },
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn comm_at(b: &[u8], at: usize) -> Option<String> {
    let raw = b.get(at..at + COMM_LEN)?;
    let end = raw.iter().position(|&c| c == 0).unwrap_or(COMM_LEN);
    Some(String::from_utf8_lossy(&raw[..end]).into_owned())
}

fn pcs(b: &[u8], from: usize, count: usize) -> Option<Vec<u64>> {
    let bytes = b.get(from..from.checked_add(count.checked_mul(8)?)?)?;
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
    )
}

/// Decodes one ring buffer record. Never panics: lengths and counts from
/// the kernel are checked against `bytes`.
pub fn parse_record(bytes: &[u8]) -> Result<RawEvent, ParseError> {
    let short = |what, need| ParseError::Short {
        what,
        len: bytes.len(),
        need,
    };
    let header = size_of::<EventHeader>();
    let (Some(kind), Some(pid), Some(time_ns)) =
        (u32_at(bytes, 0), u32_at(bytes, 4), u64_at(bytes, 8))
    else {
        return Err(short("record", header));
    };
    match kind {
        EVENT_SAMPLE | EVENT_OFF_CPU => parse_sample(bytes, kind, pid, time_ns),
        EVENT_EXEC => {
            let need = size_of::<ExecEvent>();
            let comm = comm_at(bytes, offset_of!(ExecEvent, comm)).ok_or(short("exec", need))?;
            Ok(RawEvent::Exec { pid, time_ns, comm })
        }
        EVENT_EXIT => Ok(RawEvent::Exit { pid, time_ns }),
        EVENT_STACK_COPY => {
            let need = size_of::<StackCopyHeader>();
            let (Some(tid), Some(len), Some(ip), Some(sp), Some(bp)) = (
                u32_at(bytes, offset_of!(StackCopyHeader, tid)),
                u32_at(bytes, offset_of!(StackCopyHeader, len)),
                u64_at(bytes, offset_of!(StackCopyHeader, ip)),
                u64_at(bytes, offset_of!(StackCopyHeader, sp)),
                u64_at(bytes, offset_of!(StackCopyHeader, bp)),
            ) else {
                return Err(short("stack copy", need));
            };
            let len = (len as usize).min(STACK_COPY_BYTES);
            let stack = bytes
                .get(need..need + len)
                .ok_or(short("stack copy", need + len))?
                .to_vec();
            Ok(RawEvent::StackCopy(ParsedStackCopy {
                pid,
                tid,
                boot_time_ns: time_ns,
                ip,
                sp,
                bp,
                stack,
            }))
        }
        other => Err(ParseError::UnknownKind(other)),
    }
}

fn parse_sample(
    bytes: &[u8],
    kind: u32,
    pid: u32,
    boot_time_ns: u64,
) -> Result<RawEvent, ParseError> {
    let need = size_of::<SampleHeader>();
    let short = ParseError::Short {
        what: "sample",
        len: bytes.len(),
        need,
    };
    let (Some(tid), Some(cpu), Some(flags), Some(nk), Some(nu), Some(comm), Some(value)) = (
        u32_at(bytes, offset_of!(SampleHeader, tid)),
        u32_at(bytes, offset_of!(SampleHeader, cpu)),
        u32_at(bytes, offset_of!(SampleHeader, flags)),
        u16_at(bytes, offset_of!(SampleHeader, kernel_frames)),
        u16_at(bytes, offset_of!(SampleHeader, user_frames)),
        comm_at(bytes, offset_of!(SampleHeader, comm)),
        u64_at(bytes, offset_of!(SampleHeader, value)),
    ) else {
        return Err(short);
    };
    let (nk, nu) = (usize::from(nk), usize::from(nu));
    let bad = ParseError::BadFrameCount {
        kernel: nk,
        user: nu,
        len: bytes.len(),
    };
    if nk > MAX_KERNEL_FRAMES || nu > MAX_USER_FRAMES {
        return Err(bad);
    }
    // The ring buffer rounds records up to 8 bytes; more than that is a
    // disagreement about the layout, not padding.
    let used = need + 8 * (nk + nu);
    if bytes.len() < used || bytes.len() - used >= 8 {
        return Err(bad);
    }
    let (Some(kernel_stack), Some(user_stack)) =
        (pcs(bytes, need, nk), pcs(bytes, need + 8 * nk, nu))
    else {
        return Err(bad);
    };
    Ok(RawEvent::Sample(SampleRecord {
        pid,
        tid,
        cpu,
        boot_time_ns,
        comm,
        flags: SampleFlags::from_bits(flags),
        kernel_stack,
        user_stack,
        off_cpu_ns: (kind == EVENT_OFF_CPU).then_some(value),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_bytes(nk: u16, nu: u16, pcs_sent: usize) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&EVENT_SAMPLE.to_ne_bytes());
        b.extend_from_slice(&42u32.to_ne_bytes());
        b.extend_from_slice(&1_000u64.to_ne_bytes());
        b.extend_from_slice(&43u32.to_ne_bytes()); // tid
        b.extend_from_slice(&1u32.to_ne_bytes()); // cpu
        b.extend_from_slice(&SampleFlags::KERNEL_MODE.bits().to_ne_bytes());
        b.extend_from_slice(&nk.to_ne_bytes());
        b.extend_from_slice(&nu.to_ne_bytes());
        b.extend_from_slice(b"busy\0\0\0\0\0\0\0\0\0\0\0\0");
        b.extend_from_slice(&7_000_000u64.to_ne_bytes()); // value
        for i in 0..pcs_sent as u64 {
            b.extend_from_slice(&(0x1000 + i).to_ne_bytes());
        }
        b
    }

    #[test]
    fn parses_a_sample_with_both_stacks() {
        let RawEvent::Sample(s) = parse_record(&sample_bytes(2, 3, 5)).expect("valid") else {
            panic!("not a sample");
        };
        assert_eq!((s.pid, s.tid, s.cpu, s.boot_time_ns), (42, 43, 1, 1_000));
        assert_eq!(s.comm, "busy");
        assert!(s.flags.contains(SampleFlags::KERNEL_MODE));
        assert_eq!(s.kernel_stack, [0x1000, 0x1001]);
        assert_eq!(s.user_stack, [0x1002, 0x1003, 0x1004]);
        assert_eq!(s.off_cpu_ns, None);
    }

    #[test]
    fn an_off_cpu_record_is_a_sample_with_its_blocked_time() {
        let mut bytes = sample_bytes(1, 2, 3);
        bytes[..4].copy_from_slice(&EVENT_OFF_CPU.to_ne_bytes());
        let RawEvent::Sample(s) = parse_record(&bytes).expect("valid") else {
            panic!("not a sample");
        };
        assert_eq!(s.off_cpu_ns, Some(7_000_000));
        assert_eq!((s.kernel_stack.len(), s.user_stack.len()), (1, 2));
        // Cut in the middle of the value: short, not a zero wait.
        assert!(matches!(
            parse_record(&bytes[..52]),
            Err(ParseError::Short { .. })
        ));
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        assert!(matches!(parse_record(&[]), Err(ParseError::Short { .. })));
        assert!(matches!(
            parse_record(&[1, 0, 0]),
            Err(ParseError::Short { .. })
        ));
        // A header that stops in the middle of the sample fields.
        assert!(matches!(
            parse_record(&sample_bytes(0, 0, 0)[..30]),
            Err(ParseError::Short { .. })
        ));
        // Counts larger than the PCs carried, or than the limits.
        assert!(matches!(
            parse_record(&sample_bytes(2, 3, 4)),
            Err(ParseError::BadFrameCount { .. })
        ));
        assert!(matches!(
            parse_record(&sample_bytes(u16::MAX, u16::MAX, 10)),
            Err(ParseError::BadFrameCount { .. })
        ));
        assert!(matches!(
            parse_record(&sample_bytes(200, 0, 200)),
            Err(ParseError::BadFrameCount { .. })
        ));
        // Far more bytes than the counts say: the layouts disagree.
        assert!(matches!(
            parse_record(&sample_bytes(1, 1, 10)),
            Err(ParseError::BadFrameCount { .. })
        ));
        let mut unknown = sample_bytes(0, 0, 0);
        unknown[0] = 9;
        assert_eq!(parse_record(&unknown), Err(ParseError::UnknownKind(9)));
        let mut exec = sample_bytes(0, 0, 0);
        exec[0] = EVENT_EXEC as u8;
        assert!(matches!(
            parse_record(&exec[..20]),
            Err(ParseError::Short { what: "exec", .. })
        ));
        assert!(matches!(
            parse_record(&exec[..32]),
            Ok(RawEvent::Exec { .. })
        ));
        // Every truncation of a valid sample decodes or fails cleanly.
        let full = sample_bytes(3, 4, 7);
        for n in 0..full.len() {
            let _ = parse_record(&full[..n]);
        }
    }

    #[test]
    fn comm_without_terminator_and_invalid_utf8() {
        let mut b = Vec::new();
        b.extend_from_slice(&EVENT_EXEC.to_ne_bytes());
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(&5u64.to_ne_bytes());
        b.extend_from_slice(&[0xff; COMM_LEN]);
        let Ok(RawEvent::Exec { pid, comm, .. }) = parse_record(&b) else {
            panic!("exec record not decoded");
        };
        assert_eq!(pid, 7);
        assert_eq!(comm.chars().count(), COMM_LEN);
    }
}
