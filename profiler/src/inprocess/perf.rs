//! One `perf_event_open` cpu-clock event per thread of this process, with
//! user registers and a copy of the user stack in every sample, read from
//! the event's mmap ring by the profiler's reader thread. No signal handler
//! runs in the profiled threads: the kernel writes the samples.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use perf_event_open_sys as sys;
use sys::bindings::{perf_event_attr, perf_event_header, perf_event_mmap_page};

/// x86_64 user registers the unwinder needs: BP, SP, IP (perf_regs.h).
const REG_BP: u64 = 6;
const REG_SP: u64 = 7;
const REG_IP: u64 = 8;
const REGS_MASK: u64 = (1 << REG_BP) | (1 << REG_SP) | (1 << REG_IP);

const SAMPLE_TYPE: u64 = sys::bindings::PERF_SAMPLE_TID as u64
    | sys::bindings::PERF_SAMPLE_TIME as u64
    | sys::bindings::PERF_SAMPLE_CPU as u64
    | sys::bindings::PERF_SAMPLE_PERIOD as u64
    | sys::bindings::PERF_SAMPLE_REGS_USER as u64
    | sys::bindings::PERF_SAMPLE_STACK_USER as u64;

/// One `PERF_RECORD_SAMPLE` as the kernel wrote it: registers and stack
/// bytes, still to be unwound into a pipeline `Sample`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerfRecord {
    pub pid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC nanoseconds.
    pub time: u64,
    pub cpu: u32,
    /// Nanoseconds of CPU time this sample stands for.
    pub period: u64,
    /// `None` when the sample caught no user context.
    pub regs: Option<UserRegs>,
    /// The copied user stack, starting at `regs.sp`.
    pub stack: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// What a read of a ring produced besides samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingCounts {
    /// Samples the kernel dropped because the ring was full.
    pub lost: u64,
    /// Records that could not be parsed.
    pub malformed: u64,
    /// Whether records were left in the ring past the limit of the read.
    pub more: bool,
}

/// A per-thread cpu-clock sampling event and its ring.
pub struct ThreadEvent {
    pub tid: u32,
    fd: OwnedFd,
    ring: NonNull<u8>,
    ring_len: usize,
    data_pages: usize,
}

// SAFETY: the ring mapping is owned by this value and only touched through
// &mut self; the kernel side is synchronised with data_head/data_tail.
unsafe impl Send for ThreadEvent {}

impl ThreadEvent {
    /// Opens a sampling event on thread `tid` of this process at `hz`
    /// samples per second of its CPU time, copying `stack_bytes` of user
    /// stack per sample into a ring of `data_pages` pages (a power of two).
    pub fn open(tid: u32, hz: u64, stack_bytes: u32, data_pages: usize) -> io::Result<ThreadEvent> {
        // SAFETY: perf_event_attr is plain data; zero is a valid start.
        let mut attr: perf_event_attr = unsafe { std::mem::zeroed() };
        attr.type_ = sys::bindings::PERF_TYPE_SOFTWARE;
        attr.size = std::mem::size_of::<perf_event_attr>() as u32;
        attr.config = sys::bindings::PERF_COUNT_SW_CPU_CLOCK as u64;
        attr.__bindgen_anon_1.sample_freq = hz;
        attr.sample_type = SAMPLE_TYPE;
        attr.sample_regs_user = REGS_MASK;
        attr.sample_stack_user = stack_bytes & !7;
        attr.clockid = libc::CLOCK_MONOTONIC;
        attr.set_freq(1);
        attr.set_use_clockid(1);
        // perf_event_paranoid 2 allows user-space sampling of our own threads.
        attr.set_exclude_kernel(1);
        attr.set_exclude_hv(1);
        attr.set_exclude_callchain_kernel(1);
        // Wake the reader's poll() when a quarter of the ring is used, so a
        // busy thread's ring is drained long before it is full.
        attr.set_watermark(1);
        attr.__bindgen_anon_2.wakeup_watermark = (data_pages * page_size() / 4) as u32;
        // SAFETY: attr is initialised; the fd returned is owned below.
        let fd = unsafe {
            sys::perf_event_open(
                &mut attr,
                tid as libc::pid_t,
                -1,
                -1,
                sys::bindings::PERF_FLAG_FD_CLOEXEC as _,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by the kernel and is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let page = page_size();
        // Rings count against the locked-memory limit of unprivileged users:
        // halve the ring until it fits.
        let mut data_pages = data_pages;
        let (ring, ring_len) = loop {
            let ring_len = page * (1 + data_pages);
            // SAFETY: mapping a perf fd as the man page describes; checked below.
            let ring = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    ring_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            if ring != libc::MAP_FAILED {
                break (ring, ring_len);
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EPERM) || data_pages <= 16 {
                return Err(err);
            }
            data_pages /= 2;
        };
        Ok(ThreadEvent {
            tid,
            fd,
            ring: NonNull::new(ring.cast())
                .ok_or_else(|| io::Error::other("mmap returned null"))?,
            ring_len,
            data_pages,
        })
    }

    fn header(&self) -> *mut perf_event_mmap_page {
        self.ring.as_ptr().cast()
    }

    /// Reads the records the kernel has written since the last call, at
    /// most `max` samples of them (a reader that was held up finds its
    /// rings full: it takes them a few at a time, not megabytes of copied
    /// stacks at once).
    pub fn read(&mut self, samples: &mut Vec<PerfRecord>, max: usize) -> RingCounts {
        let mut counts = RingCounts::default();
        let page = page_size();
        let size = (page * self.data_pages) as u64;
        // SAFETY: the header page is mapped for the life of self.
        let head = unsafe { std::ptr::read_volatile(&(*self.header()).data_head) };
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let mut tail = unsafe { std::ptr::read_volatile(&(*self.header()).data_tail) };
        // SAFETY: the data area follows the header page and is `size` bytes.
        let data =
            unsafe { std::slice::from_raw_parts(self.ring.as_ptr().add(page), size as usize) };
        let mut record = Vec::new();
        let mut taken = 0usize;
        while tail < head {
            if taken == max {
                counts.more = true;
                break;
            }
            let at = |offset: u64| ((tail + offset) % size) as usize;
            let mut header_bytes = [0u8; 8];
            for (i, b) in header_bytes.iter_mut().enumerate() {
                *b = data[at(i as u64)];
            }
            let kind = u32::from_ne_bytes([
                header_bytes[0],
                header_bytes[1],
                header_bytes[2],
                header_bytes[3],
            ]);
            let len = u16::from_ne_bytes([header_bytes[6], header_bytes[7]]) as u64;
            if len < std::mem::size_of::<perf_event_header>() as u64 || tail + len > head {
                // A broken record: skip everything written so far.
                counts.malformed += 1;
                tail = head;
                break;
            }
            record.clear();
            let start = at(0);
            let end = start + len as usize;
            if end <= data.len() {
                record.extend_from_slice(&data[start..end]);
            } else {
                record.extend_from_slice(&data[start..]);
                record.extend_from_slice(&data[..end - data.len()]);
            }
            match kind {
                sys::bindings::PERF_RECORD_SAMPLE => match parse_record(&record[8..]) {
                    Some(s) => {
                        samples.push(s);
                        taken += 1;
                    }
                    None => counts.malformed += 1,
                },
                sys::bindings::PERF_RECORD_LOST => {
                    counts.lost += record
                        .get(16..24)
                        .map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])));
                }
                _ => {}
            }
            tail += len;
        }
        fence(Ordering::Release);
        // SAFETY: as above; the kernel reads data_tail to know what is free.
        unsafe { std::ptr::write_volatile(&mut (*self.header()).data_tail, tail) };
        counts
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// Stops sampling (samples already in the ring stay readable).
    pub fn disable(&self) {
        // SAFETY: a valid perf fd.
        unsafe { sys::ioctls::DISABLE(self.fd.as_raw_fd(), 0) };
    }
}

impl Drop for ThreadEvent {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what open mapped.
        unsafe { libc::munmap(self.ring.as_ptr().cast(), self.ring_len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Parses the body of a `PERF_RECORD_SAMPLE` with [`SAMPLE_TYPE`]; `None`
/// when it is shorter than its own fields say.
pub fn parse_record(body: &[u8]) -> Option<PerfRecord> {
    let mut pos = 0usize;
    let u64_at = |pos: &mut usize| -> Option<u64> {
        let v = u64::from_ne_bytes(body.get(*pos..*pos + 8)?.try_into().ok()?);
        *pos += 8;
        Some(v)
    };
    let pid_tid = u64_at(&mut pos)?;
    let time = u64_at(&mut pos)?;
    let cpu_res = u64_at(&mut pos)?;
    let period = u64_at(&mut pos)?;
    let abi = u64_at(&mut pos)?;
    let regs = if abi == 0 {
        None
    } else {
        // Registers come in the order of their bits in the mask.
        let bp = u64_at(&mut pos)?;
        let sp = u64_at(&mut pos)?;
        let ip = u64_at(&mut pos)?;
        Some(UserRegs { ip, sp, bp })
    };
    let stack_size = u64_at(&mut pos)? as usize;
    let mut stack = Vec::new();
    if stack_size > 0 {
        let data = body.get(pos..pos.checked_add(stack_size)?)?;
        pos += stack_size;
        let dyn_size = u64_at(&mut pos)? as usize;
        stack.extend_from_slice(&data[..dyn_size.min(stack_size)]);
    }
    let pid_tid = pid_tid.to_ne_bytes();
    Some(PerfRecord {
        pid: u32::from_ne_bytes(pid_tid[..4].try_into().ok()?),
        tid: u32::from_ne_bytes(pid_tid[4..].try_into().ok()?),
        time,
        cpu: cpu_res as u32,
        period,
        regs,
        stack,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(stack: &[u8], dyn_size: u64) -> Vec<u8> {
        let mut b = Vec::new();
        let pid_tid = [7u32.to_ne_bytes(), 9u32.to_ne_bytes()].concat();
        b.extend_from_slice(&pid_tid);
        for v in [
            1000u64,
            1,
            1_000_000,
            2,
            0x10,
            0x7ff0,
            0x401000,
            stack.len() as u64,
        ] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(stack);
        if !stack.is_empty() {
            b.extend_from_slice(&dyn_size.to_ne_bytes());
        }
        b
    }

    #[test]
    fn parses_a_sample_and_trims_the_stack_to_its_dynamic_size() {
        let s = parse_record(&body(&[1; 64], 24)).unwrap();
        assert_eq!(
            (s.pid, s.tid, s.time, s.cpu, s.period),
            (7, 9, 1000, 1, 1_000_000)
        );
        assert_eq!(
            s.regs,
            Some(UserRegs {
                ip: 0x401000,
                sp: 0x7ff0,
                bp: 0x10
            })
        );
        assert_eq!(s.stack.len(), 24);
    }

    #[test]
    fn short_or_lying_records_are_rejected() {
        let full = body(&[1; 64], 64);
        for cut in [0, 8, 30, 60, full.len() - 1] {
            assert!(parse_record(&full[..cut]).is_none(), "cut at {cut}");
        }
        let mut lying = body(&[1; 16], 16);
        // claim a stack larger than the record
        let at = 8 * 8;
        lying[at..at + 8].copy_from_slice(&(1u64 << 40).to_ne_bytes());
        assert!(parse_record(&lying).is_none());
    }

    #[test]
    fn samples_our_own_busy_thread() {
        let tid = unsafe { libc::gettid() } as u32;
        // 2 MiB of ring: 400+ samples of 4 KiB stack, more than 200 ms at 999 Hz.
        let mut event = match ThreadEvent::open(tid, 999, 4096, 512) {
            Ok(e) => e,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("perf events unavailable here ({e}); skipping");
                return;
            }
            Err(e) => panic!("perf_event_open failed in CI: {e}"),
        };
        let cpu = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        };
        // Busy in user mode (samples that land in the kernel are dropped:
        // exclude_kernel), timed by the vDSO clock; CPU time read around it.
        let cpu_before = cpu();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let used = cpu() - cpu_before;
        // A few at a time: the rest stays in the ring for the next read.
        let mut samples = Vec::new();
        let first = event.read(&mut samples, 3);
        assert_eq!(
            first,
            RingCounts {
                more: true,
                ..RingCounts::default()
            }
        );
        assert_eq!(samples.len(), 3);
        let counts = event.read(&mut samples, usize::MAX);
        assert_eq!(counts, RingCounts::default());
        let periods: u64 = samples.iter().map(|s| s.period).sum();
        assert!(
            periods as f64 > 0.8 * used as f64 && periods as f64 <= 1.1 * used as f64 + 5e6,
            "{} samples standing for {periods} ns of {used} ns of CPU",
            samples.len()
        );
        assert!(samples
            .iter()
            .all(|s| s.tid == tid && s.regs.is_some() && !s.stack.is_empty()));
    }
}
