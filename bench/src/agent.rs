//! Benchmark: what the node agent costs. Over 60 s with every CPU busy,
//! `smolder agent` sampling the whole host at 19 Hz (symbolizing and
//! writing an OTLP file and a flamegraph every 10 s) next to
//! `bpftrace -e 'profile:hz:19 { @[ustack,kstack]=count(); }'` doing the
//! same sampling, one after the other on the same load: CPU time as a
//! share of one core, and peak RSS, both from `wait4`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const SECONDS: u64 = 60;
const HZ: u32 = 19;

struct Usage {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: u64,
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
}

/// Runs `cmd` for `SECONDS`, stops it with `signal`, reaps it.
fn measure(cmd: &mut Command, signal: i32, what: &str) -> Result<Usage> {
    let start = Instant::now();
    let child: Child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    std::thread::sleep(Duration::from_secs(SECONDS));
    let pid = libc::pid_t::try_from(child.id())?;
    // SAFETY: kill and wait4 on our own unreaped child; rusage is plain data.
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::kill(pid, signal) };
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        return Err(format!("waiting for {what}: {}", std::io::Error::last_os_error()).into());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(format!("{what} failed (wait status {status})").into());
    }
    Ok(Usage {
        wall: start.elapsed(),
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    })
}

/// Busy loops on every CPU until dropped.
struct Load(Vec<Child>);

impl Drop for Load {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn load() -> Result<Load> {
    let cpus = std::thread::available_parallelism()?.get();
    let mut children = Vec::new();
    for _ in 0..cpus {
        children.push(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()?,
        );
    }
    Ok(Load(children))
}

pub fn bench(dir: &Path, smolder: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the agent benchmark needs root (eBPF)".into());
    }
    let _load = load()?;
    let out = dir.join("agent-intervals");
    let agent = measure(
        Command::new(smolder).args([
            "agent",
            "-F",
            &HZ.to_string(),
            "-i",
            "10s",
            "--output-dir",
            out.to_str().ok_or("work directory is not UTF-8")?,
        ]),
        libc::SIGTERM,
        "smolder agent",
    )?;
    let bpftrace = measure(
        Command::new("bpftrace").args([
            "-e",
            &format!("profile:hz:{HZ} {{ @[ustack,kstack]=count(); }}"),
        ]),
        libc::SIGINT,
        "bpftrace (Debian bpftrace)",
    )?;
    let cpus = std::thread::available_parallelism()?.get();
    println!(
        "agent overhead: {SECONDS} s, {cpus} CPUs busy (sh loops), {HZ} Hz whole-host sampling"
    );
    println!(
        "{:<44} {:>16} {:>14}",
        "", "CPU (% of 1 core)", "peak RSS (MiB)"
    );
    for (name, u) in [
        ("smolder agent (symbolize + OTLP file + SVG /10s)", &agent),
        ("bpftrace profile:hz:19 {@[ustack,kstack]}", &bpftrace),
    ] {
        println!(
            "{:<44} {:>16.2} {:>14.1}",
            name,
            100.0 * u.cpu.as_secs_f64() / u.wall.as_secs_f64(),
            u.max_rss_kib as f64 / 1024.0
        );
    }
    Ok(())
}
