//! The process prefetcher: a thread that reads each new process image as
//! soon as it is exec'd, from the kernel program's small `PROC_EVENTS` ring
//! (every record wakes it), into [`ProcessSnapshots`]. The main reader can
//! be seconds behind on a loaded host; a program that lives 50 ms would be
//! gone by the time its samples are read, and its frames would stay raw
//! addresses. Here it is read while it lives: at exec, then again at
//! [`REREADS_AFTER_EXEC`] (the dynamic loader maps the libraries in the
//! image's first milliseconds).
//!
//! Owns nothing the aggregator reads directly: it only fills the snapshots.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};

use super::clock::BootClock;
use super::raw;
use crate::pipeline::ProcessSnapshots;

/// When a new image's mappings are read again, after its exec.
const REREADS_AFTER_EXEC: [Duration; 4] = [
    Duration::from_millis(2),
    Duration::from_millis(10),
    Duration::from_millis(40),
    Duration::from_millis(150),
];

/// The longest the thread sleeps with nothing to re-read: it wakes for a
/// record in the ring, a re-read that is due, or [`Prefetcher`]'s drop
/// (the stop eventfd). A quiet host wakes it about once a minute.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub(super) struct Prefetcher {
    snapshots: Arc<ProcessSnapshots>,
    stop: Arc<AtomicBool>,
    /// Written on drop, so that the thread's wait ends at once.
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Prefetcher {
    pub(super) fn start(ring: RingBuf<MapData>) -> std::io::Result<Prefetcher> {
        let snapshots = ProcessSnapshots::new();
        let stop = Arc::new(AtomicBool::new(false));
        // SAFETY: eventfd only creates a descriptor.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let thread = {
            let (snapshots, stop, wake) =
                (Arc::clone(&snapshots), Arc::clone(&stop), Arc::clone(&wake));
            std::thread::Builder::new()
                .name("smolder-prefetch".into())
                .spawn(move || run(ring, &snapshots, &stop, wake.as_raw_fd()))?
        };
        Ok(Prefetcher {
            snapshots,
            stop,
            wake,
            thread: Some(thread),
        })
    }

    pub(super) fn snapshots(&self) -> &Arc<ProcessSnapshots> {
        &self.snapshots
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one` to our own eventfd.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                std::ptr::addr_of!(one).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A re-read due at `at`: the `step`th of [`REREADS_AFTER_EXEC`].
struct Due {
    at: Instant,
    exec: Instant,
    pid: u32,
    step: usize,
}

fn run(mut ring: RingBuf<MapData>, snapshots: &ProcessSnapshots, stop: &AtomicBool, wake: RawFd) {
    let fd = ring.as_raw_fd();
    let mut due: Vec<Due> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = due
            .iter()
            .map(|d| d.at.saturating_duration_since(now))
            .min()
            .unwrap_or(MAX_WAIT)
            .min(MAX_WAIT);
        wait_readable(fd, wake, wait);
        if stop.load(Ordering::Relaxed) {
            break;
        }

        let clock = BootClock::measure();
        let unix = |boot_ns: u64| clock.as_ref().map_or(0, |c| c.to_unix_ns(boot_ns));
        while let Some(item) = ring.next() {
            match raw::parse_record(&item) {
                Ok(raw::RawEvent::Exec { pid, time_ns, comm }) => {
                    snapshots.on_exec(pid, unix(time_ns), &comm);
                    let exec = Instant::now();
                    due.retain(|d| d.pid != pid);
                    // Bounded like the snapshots: the oldest plans go first.
                    if due.len() >= crate::pipeline::snapshots::MAX_SNAPSHOTS {
                        due.remove(0);
                    }
                    due.push(Due {
                        at: exec + REREADS_AFTER_EXEC[0],
                        exec,
                        pid,
                        step: 0,
                    });
                }
                Ok(raw::RawEvent::Exit { pid, time_ns }) => {
                    snapshots.on_exit(pid, unix(time_ns));
                    due.retain(|d| d.pid != pid);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("malformed process record: {e}"),
            }
        }

        let now = Instant::now();
        let mut next = Vec::new();
        due.retain(|d| {
            if d.at > now {
                return true;
            }
            if snapshots.reread(d.pid) {
                if let Some(after) = REREADS_AFTER_EXEC.get(d.step + 1) {
                    next.push(Due {
                        at: d.exec + *after,
                        exec: d.exec,
                        pid: d.pid,
                        step: d.step + 1,
                    });
                }
            }
            false
        });
        due.extend(next);
    }
}

/// Waits until the ring has records, `wake` is written or `wait` has passed.
fn wait_readable(fd: RawFd, wake: RawFd, wait: Duration) {
    let mut fds = [fd, wake].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let ms = libc::c_int::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    // SAFETY: two valid pollfds, for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
}
