//! Running the compared commands: wall time with `Instant`, peak resident
//! memory of each process from `wait4`'s `rusage`.

use std::fs::File;
use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What one run of a command or pipeline cost.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub wall: Duration,
    /// Peak RSS of the largest process, KiB.
    pub max_rss_kib: u64,
    /// Peak RSS summed over the processes of a pipeline, KiB.
    pub sum_rss_kib: u64,
    /// User + system CPU time of all processes.
    pub cpu: Duration,
}

/// What `wait4` tells of one process.
pub(crate) struct Reaped {
    pub max_rss_kib: u64,
    pub cpu: Duration,
}

fn duration(t: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
}

/// Reaps `child` with `wait4`; fails when it did not exit with status 0.
pub(crate) fn reap(child: &Child, what: &str) -> io::Result<Reaped> {
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for the reaped child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own unreaped child; both pointers are valid.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(io::Error::other(format!(
            "{what} failed (wait status {status:#x})"
        )));
    }
    Ok(Reaped {
        // Linux reports ru_maxrss in KiB.
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        cpu: duration(usage.ru_utime) + duration(usage.ru_stime),
    })
}

/// Runs one command with stdout to `stdout` and stderr to `log`.
pub fn run_one(cmd: &mut Command, stdout: Stdio, log: &Path) -> io::Result<Cost> {
    let what = format!("{cmd:?}");
    let start = Instant::now();
    let child = cmd.stdout(stdout).stderr(File::create(log)?).spawn()?;
    let r = reap(&child, &what)?;
    Ok(Cost {
        wall: start.elapsed(),
        max_rss_kib: r.max_rss_kib,
        sum_rss_kib: r.max_rss_kib,
        cpu: r.cpu,
    })
}

/// Runs `first | second > out`; the time is until both have exited.
pub fn run_pipe(
    first: &mut Command,
    second: &mut Command,
    out: &Path,
    log: &Path,
) -> io::Result<Cost> {
    let log = File::create(log)?;
    let start = Instant::now();
    let mut a = first
        .stdout(Stdio::piped())
        .stderr(log.try_clone()?)
        .spawn()?;
    let pipe = a.stdout.take().ok_or_else(|| io::Error::other("no pipe"))?;
    let b = second
        .stdin(pipe)
        .stdout(File::create(out)?)
        .stderr(log)
        .spawn()?;
    let a = reap(&a, &format!("{first:?}"))?;
    let b = reap(&b, &format!("{second:?}"))?;
    Ok(Cost {
        wall: start.elapsed(),
        max_rss_kib: a.max_rss_kib.max(b.max_rss_kib),
        sum_rss_kib: a.max_rss_kib + b.max_rss_kib,
        cpu: a.cpu + b.cpu,
    })
}

/// The median of the runs, field by field (an odd count gives real runs).
pub fn median(runs: &[Cost]) -> Cost {
    fn mid<T: Ord + Copy>(mut v: Vec<T>) -> T {
        v.sort_unstable();
        v[v.len() / 2]
    }
    Cost {
        wall: mid(runs.iter().map(|c| c.wall).collect()),
        max_rss_kib: mid(runs.iter().map(|c| c.max_rss_kib).collect()),
        sum_rss_kib: mid(runs.iter().map(|c| c.sum_rss_kib).collect()),
        cpu: mid(runs.iter().map(|c| c.cpu).collect()),
    }
}
