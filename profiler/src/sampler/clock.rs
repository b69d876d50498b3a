//! Converts the kernel program's timestamps (`bpf_ktime_get_boot_ns`,
//! CLOCK_BOOTTIME) to unix nanoseconds (CLOCK_REALTIME).
//!
//! Owns only the offset between the two clocks; it is re-measured on every
//! poll so that a stepped wall clock (NTP, settimeofday) is followed.

fn clock_ns(clock: libc::clockid_t) -> Option<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec))
}

/// `unix_ns = boot_ns + offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootClock {
    offset_ns: i128,
}

impl BootClock {
    /// Measures the offset now: the realtime reading bracketed by the
    /// tightest of three pairs of boottime readings.
    pub fn measure() -> Option<BootClock> {
        let mut best: Option<(i128, i128)> = None; // (window, offset)
        for _ in 0..3 {
            let before = clock_ns(libc::CLOCK_BOOTTIME)?;
            let real = clock_ns(libc::CLOCK_REALTIME)?;
            let after = clock_ns(libc::CLOCK_BOOTTIME)?;
            let window = after - before;
            let offset = real - (before + window / 2);
            if best.is_none_or(|(w, _)| window < w) {
                best = Some((window, offset));
            }
        }
        best.map(|(_, offset_ns)| BootClock { offset_ns })
    }

    /// Unix nanoseconds of a CLOCK_BOOTTIME reading (0 if before the epoch).
    pub fn to_unix_ns(&self, boot_ns: u64) -> u64 {
        let unix = i128::from(boot_ns) + self.offset_ns;
        u64::try_from(unix.max(0)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_now_maps_to_system_time_now() {
        let clock = BootClock::measure().expect("clock_gettime");
        let boot =
            u64::try_from(clock_ns(libc::CLOCK_BOOTTIME).expect("boottime")).expect("positive");
        let unix = clock.to_unix_ns(boot);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after the epoch")
            .as_nanos() as u64;
        assert!(now.abs_diff(unix) < 50_000_000, "{now} vs {unix}");
    }
}
