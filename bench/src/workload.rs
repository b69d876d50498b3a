//! The in-process benchmark's workload and what a run reports, shared by
//! `smolder-bench inprocess` (`src/inprocess.rs`) and the pyroscope-rs
//! bench (`bench/pyroscope`, which includes this file with `#[path]` so
//! that it does not link smolder: pyroscope-rs and pprof-rs both define the
//! C symbol `perf_signal_handler`).
//!
//! 3 threads, each doing the same fixed amount of work (`rounds` rounds of
//! `work_alpha`/`work_beta`/`work_gamma`, 60/30/10 of the work).

use std::hint::black_box;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Rounds per worker thread: about 2 s of CPU each on the reference machine.
pub const DEFAULT_ROUNDS: u64 = 2_000;
pub const WORKERS: usize = 3;
/// Iterations of `spin` per round in each known function, and their shares.
pub const FUNCTIONS: [(&str, u64); 3] = [
    ("work_alpha", 600_000),
    ("work_beta", 300_000),
    ("work_gamma", 100_000),
];

#[inline(never)]
fn spin(n: u64) -> u64 {
    let mut x = 0u64;
    for i in 0..n {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    x
}

#[inline(never)]
fn work_alpha(n: u64) -> u64 {
    spin(black_box(n))
}

#[inline(never)]
fn work_beta(n: u64) -> u64 {
    spin(black_box(n)).rotate_left(1)
}

#[inline(never)]
fn work_gamma(n: u64) -> u64 {
    spin(black_box(n)).rotate_left(2)
}

pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// A fixed amount of work; returns the CPU time this thread used.
///
/// A round lasts about 1 ms, as long as a sample period at 999 Hz: so that
/// the sampling cannot lock onto the rounds' phase, each round is scaled by
/// a pseudo-random 0.5..1.5 (the same sequence on every run, mean 1).
fn worker(rounds: u64) -> u64 {
    let mut acc = 0;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..rounds {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let per_mille = 500 + (seed >> 33) % 1001;
        let n = |k: usize| FUNCTIONS[k].1 * per_mille / 1000;
        acc ^= work_alpha(n(0));
        acc ^= work_beta(n(1));
        acc ^= work_gamma(n(2));
    }
    black_box(acc);
    thread_cpu_ns()
}

/// Runs the workload: the wall time from spawning the threads until all
/// joined, and the CPU time of the threads.
pub fn spawn_workers(rounds: u64) -> Result<(Duration, u64)> {
    let start = Instant::now();
    let workers: Vec<_> = (1..=WORKERS)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker(rounds))
        })
        .collect::<std::io::Result<_>>()?;
    let mut cpu = 0;
    for w in workers {
        cpu += w.join().map_err(|_| "a worker panicked")?;
    }
    Ok((start.elapsed(), cpu))
}

/// This process's peak RSS so far (`VmHWM`), KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Per mille of `weights` in stacks naming each known function.
pub fn shares<'a>(stacks: impl Iterator<Item = (&'a str, i64)>) -> [u64; 3] {
    let mut in_fn = [0i64; 3];
    let mut total = 0i64;
    for (stack, w) in stacks {
        total += w;
        for (k, (name, _)) in FUNCTIONS.iter().enumerate() {
            if stack.contains(name) {
                in_fn[k] += w;
            }
        }
    }
    in_fn.map(|n| (n * 1000 / total.max(1)) as u64)
}

/// What a child reports of its run (one `key=value` line on stdout).
#[derive(Clone, Copy, Debug, Default)]
pub struct ChildReport {
    pub wall_ns: u64,
    pub cpu_ns: u64,
    pub samples: u64,
    pub sampled_ns: u64,
    pub lost: u64,
    pub threads: u64,
    pub stop_ns: u64,
    pub profiler_cpu_ns: u64,
    /// Peak RSS (`VmHWM`) when the workload ended, before `stop()`, KiB.
    pub hwm_kib: u64,
    /// Per mille of the sample weight in each known function.
    pub shares: [u64; 3],
}

impl ChildReport {
    /// The line a child prints; read back by `inprocess::parse_report`.
    pub fn line(&self) -> String {
        format!(
            "wall_ns={} cpu_ns={} samples={} sampled_ns={} lost={} threads={} stop_ns={} profiler_cpu_ns={} hwm_kib={} alpha={} beta={} gamma={}",
            self.wall_ns,
            self.cpu_ns,
            self.samples,
            self.sampled_ns,
            self.lost,
            self.threads,
            self.stop_ns,
            self.profiler_cpu_ns,
            self.hwm_kib,
            self.shares[0],
            self.shares[1],
            self.shares[2]
        )
    }
}
