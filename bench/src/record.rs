//! Sampling overhead (issue 4; figures in bench/README.md). A fixed
//! CPU-bound C workload runs alone (the baseline) and under each profiler,
//! at 99 Hz and 999 Hz:
//!
//! - `smolder record -a -F HZ --format otlp -o FILE`
//! - `perf record -e cpu-clock -g -F HZ -a -o FILE`
//! - `bpftrace -e 'profile:hz:HZ { @[ustack,kstack]=count(); }'`
//!
//! All three sample the whole host on a `cpu-clock` event per CPU, so they
//! take the same samples. Each run: start the profiler, wait until its
//! events (and BPF program) are attached, run the workload, stop the
//! profiler with SIGINT and let it write its output. Measured: the
//! workload's wall and CPU time (`wait4`), the profiler's CPU time and peak
//! RSS over its whole life (`wait4`), and the cost per sample of its BPF
//! `perf_event` program over the workload's run (`run_time_ns / run_cnt`
//! deltas from `bpftool prog show --json`, with BPF run-time statistics
//! enabled for the duration of the bench).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The workload: a request loop whose time splits about 60/30/10 over
/// three call paths (`serve` → `handle` → `parse`/`encode`/`checksum` →
/// `mix`). Pure integer work, no syscalls, the same work on every run.
const WORKLOAD_C: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static volatile uint64_t sink;

__attribute__((noinline)) static uint64_t mix(uint64_t x, long n)
{
	for (long i = 0; i < n; i++) {
		x ^= x >> 33;
		x *= 0xff51afd7ed558ccdULL;
		x ^= x >> 29;
	}
	return x;
}

__attribute__((noinline)) static uint64_t parse(uint64_t x) { return mix(x + 1, 6000); }
__attribute__((noinline)) static uint64_t encode(uint64_t x) { return mix(x + 2, 3000); }
__attribute__((noinline)) static uint64_t checksum(uint64_t x) { return mix(x + 3, 1000); }

__attribute__((noinline)) static uint64_t handle(uint64_t x)
{
	x = parse(x);
	x = encode(x);
	return checksum(x);
}

__attribute__((noinline)) static uint64_t serve(uint64_t x, long requests)
{
	for (long r = 0; r < requests; r++)
		x = handle(x + (uint64_t)r);
	return x;
}

int main(int argc, char **argv)
{
	long requests = argc > 1 ? atol(argv[1]) : 100000;
	sink = serve(42, requests);
	printf("%llu\n", (unsigned long long)sink);
	return 0;
}
"#;

/// Requests per workload copy: about 4 s of CPU on the reference machine.
const DEFAULT_REQUESTS: u64 = 250_000;

const FREQUENCIES: [u64; 2] = [99, 999];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Profiler {
    None,
    Smolder,
    Perf,
    Bpftrace,
}

impl Profiler {
    fn name(self) -> &'static str {
        match self {
            Profiler::None => "baseline",
            Profiler::Smolder => "smolder record -a",
            Profiler::Perf => "perf record -g -a",
            Profiler::Bpftrace => "bpftrace profile",
        }
    }

    fn uses_bpf(self) -> bool {
        matches!(self, Profiler::Smolder | Profiler::Bpftrace)
    }
}

/// One configuration: a profiler at a frequency (the baseline has none).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Setup {
    profiler: Profiler,
    hz: u64,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
struct Run {
    /// Workload: spawn of the first copy until the last has exited.
    wall: Duration,
    /// Workload: user + system CPU time of all copies.
    cpu: Duration,
    /// Profiler: user + system CPU over its whole life.
    prof_cpu: Duration,
    /// Profiler: CPU while the workload ran (from /proc/PID/stat).
    prof_window_cpu: Duration,
    prof_rss_kib: u64,
    /// Profiler: spawn until its events and program were attached.
    startup: Duration,
    /// Profiler: SIGINT until it had written its output and exited.
    stop: Duration,
    /// BPF `perf_event` program(s) of the profiler, over the workload's run.
    bpf_ns: u64,
    bpf_cnt: u64,
    /// Host CPU time during the workload's run used by neither the workload
    /// nor the profiler (other processes, interrupts): a noise indicator.
    other_cpu: Duration,
    /// The last line the profiler printed on stderr.
    summary: String,
}

pub(crate) fn ticks() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100).max(1)
}

pub(crate) fn from_ticks(t: u64) -> Duration {
    Duration::from_nanos(t.saturating_mul(1_000_000_000) / ticks())
}

/// Busy CPU time of the host so far, in ticks (/proc/stat "cpu" line:
/// user, nice, system, irq, softirq, steal).
pub(crate) fn host_busy_ticks() -> io::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| io::Error::other("no cpu line in /proc/stat"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Ok([0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum())
}

/// utime + stime of a live process (all its threads), in ticks.
pub(crate) fn process_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold spaces: fields count from after its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line are the 12th and 13th after ')'.
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// Per program id: (type, name, run_time_ns, run_cnt), from bpftool's JSON.
pub(crate) type ProgStats = BTreeMap<u32, (String, String, u64, u64)>;

pub(crate) fn bpf_prog_stats() -> Result<ProgStats> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err("bpftool prog show --json failed".into());
    }
    Ok(parse_prog_stats(&String::from_utf8_lossy(&out.stdout)))
}

/// A reader for the few flat fields needed; bpftool prints one object per
/// program, whose only nested objects (`pids`) have no `id` key.
fn parse_prog_stats(json: &str) -> ProgStats {
    let string = |chunk: &str, key: &str| -> String {
        let pat = format!("\"{key}\":\"");
        chunk
            .find(&pat)
            .and_then(|i| chunk[i + pat.len()..].split('"').next())
            .unwrap_or("")
            .to_owned()
    };
    let number = |chunk: &str, key: &str| -> u64 {
        let pat = format!("\"{key}\":");
        chunk
            .find(&pat)
            .map(|i| {
                chunk[i + pat.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .and_then(|d| d.parse().ok())
            .unwrap_or(0)
    };
    json.split("{\"id\":")
        .skip(1)
        .filter_map(|chunk| {
            let id: u32 = chunk
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()?;
            Some((
                id,
                (
                    string(chunk, "type"),
                    string(chunk, "name"),
                    number(chunk, "run_time_ns"),
                    number(chunk, "run_cnt"),
                ),
            ))
        })
        .collect()
}

/// The process's perf events (open, or held by a BPF perf link) and the ids
/// of the BPF `perf_event` programs it holds, from /proc/PID/fd{,info}.
fn attached(pid: u32) -> (usize, Vec<u32>) {
    attached_with(pid, &[PROG_TYPE_PERF_EVENT])
}

pub(crate) const PROG_TYPE_PERF_EVENT: &str = "7";
pub(crate) const PROG_TYPE_TRACEPOINT: &str = "5";
pub(crate) const PROG_TYPE_TRACING: &str = "26";

/// [`attached`] with the ids of the BPF programs of these `prog_type`s
/// (numbers, as fdinfo shows them).
pub(crate) fn attached_with(pid: u32, prog_types: &[&str]) -> (usize, Vec<u32>) {
    let mut events = 0;
    let mut progs = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, progs);
    };
    for entry in dir.flatten() {
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let info = || {
            let path = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
            std::fs::read_to_string(path).unwrap_or_default()
        };
        let field = |info: &str, key: &str| -> String {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        match link.to_string_lossy().as_ref() {
            "anon_inode:[perf_event]" => events += 1,
            "anon_inode:bpf_link" if field(&info(), "link_type:") == "perf" => events += 1,
            "anon_inode:bpf-prog" => {
                let info = info();
                if prog_types.contains(&field(&info, "prog_type:").as_str()) {
                    if let Ok(id) = field(&info, "prog_id:").parse() {
                        progs.push(id);
                    }
                }
            }
            _ => {}
        }
    }
    progs.sort_unstable();
    progs.dedup();
    (events, progs)
}

/// BPF run-time statistics on while this lives: `BPF_ENABLE_STATS` holds
/// the same kernel switch as `sysctl kernel.bpf_stats_enabled=1`, counted
/// per holder, so a concurrent `sysctl ...=0` cannot turn it off under us
/// and nothing global is left changed when the bench exits.
pub(crate) fn enable_bpf_stats() -> Result<OwnedFd> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    // union bpf_attr { struct { __u32 type; } enable_stats; }, BPF_STATS_RUN_TIME = 0.
    let attr = [0u32; 2];
    // SAFETY: attr is a valid, zeroed bpf_attr prefix of the given size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            std::mem::size_of_val(&attr) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(format!(
            "BPF_ENABLE_STATS failed: {} (needs root/CAP_SYS_ADMIN)",
            io::Error::last_os_error()
        )
        .into());
    }
    let fd = i32::try_from(fd)?;
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What `wait4` tells of a child: wait status, CPU, peak RSS.
pub(crate) fn wait4(child: &Child) -> io::Result<(i32, Duration, u64)> {
    fn duration(t: libc::timeval) -> Duration {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    }
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for the reaped child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own unreaped child; both pointers are valid.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((
        status,
        duration(usage.ru_utime) + duration(usage.ru_stime),
        // Linux reports ru_maxrss in KiB.
        u64::try_from(usage.ru_maxrss).unwrap_or(0),
    ))
}

/// A started profiler; killed and reaped if a run fails half-way.
struct Started {
    child: Option<Child>,
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Bench<'a> {
    dir: &'a Path,
    smolder: &'a Path,
    workload: PathBuf,
    requests: u64,
    cpus: usize,
}

impl Bench<'_> {
    fn profiler_command(&self, setup: Setup) -> Option<Command> {
        let hz = setup.hz.to_string();
        match setup.profiler {
            Profiler::None => None,
            Profiler::Smolder => {
                let mut c = Command::new(self.smolder);
                c.args(["record", "-a", "-F", &hz, "--format", "otlp", "-o"])
                    .arg(self.dir.join("smolder.otlp.pb"));
                Some(c)
            }
            Profiler::Perf => {
                let mut c = Command::new("perf");
                c.args(["record", "-e", "cpu-clock", "-g", "-F", &hz, "-a", "-o"])
                    .arg(self.dir.join("perf.data"));
                Some(c)
            }
            Profiler::Bpftrace => {
                let mut c = Command::new("bpftrace");
                c.arg("-e")
                    .arg(format!("profile:hz:{hz} {{ @[ustack,kstack]=count(); }}"));
                Some(c)
            }
        }
    }

    fn run(&self, setup: Setup, copies: usize) -> Result<Run> {
        let mut run = Run::default();
        let log = self.dir.join("profiler.log");
        let mut started = Started { child: None };
        let mut progs = Vec::new();
        if let Some(mut cmd) = self.profiler_command(setup) {
            let spawned = Instant::now();
            let child = cmd
                .stdin(Stdio::null())
                .stdout(File::create(self.dir.join("profiler.out"))?)
                .stderr(File::create(&log)?)
                .spawn()?;
            let pid = child.id();
            started.child = Some(child);
            // Attached: a perf event per CPU, and for the BPF profilers their
            // perf_event program held; then a moment for the last attach.
            loop {
                let (events, ids) = attached(pid);
                if events >= self.cpus && (!setup.profiler.uses_bpf() || !ids.is_empty()) {
                    progs = ids;
                    break;
                }
                if let Some(c) = started.child.as_mut() {
                    if let Some(status) = c.try_wait()? {
                        return Err(format!(
                            "{} exited before attaching ({status}): {}",
                            setup.profiler.name(),
                            std::fs::read_to_string(&log).unwrap_or_default().trim()
                        )
                        .into());
                    }
                }
                if spawned.elapsed() > Duration::from_secs(60) {
                    return Err(format!("{} did not attach in 60 s", setup.profiler.name()).into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            run.startup = spawned.elapsed();
            std::thread::sleep(Duration::from_millis(500));
        }
        let pid = started.child.as_ref().map(Child::id);
        let prof_ticks_before = pid.map(process_ticks).unwrap_or(0);
        let stats_before = match setup.profiler.uses_bpf() {
            true => bpf_prog_stats()?,
            false => ProgStats::new(),
        };
        let host_before = host_busy_ticks()?;

        let start = Instant::now();
        let children = (0..copies)
            .map(|_| {
                Command::new(&self.workload)
                    .arg(self.requests.to_string())
                    .stdout(Stdio::null())
                    .spawn()
            })
            .collect::<io::Result<Vec<_>>>()?;
        for c in &children {
            let (status, cpu, _) = wait4(c)?;
            if status != 0 {
                return Err(format!("workload failed (wait status {status:#x})").into());
            }
            run.cpu += cpu;
        }
        run.wall = start.elapsed();

        let host_after = host_busy_ticks()?;
        let prof_ticks_after = pid.map(process_ticks).unwrap_or(0);
        if setup.profiler.uses_bpf() {
            let after = bpf_prog_stats()?;
            for id in &progs {
                let Some((kind, _, ns, cnt)) = after.get(id) else {
                    continue;
                };
                if kind != "perf_event" {
                    continue;
                }
                let (ns0, cnt0) = stats_before.get(id).map(|s| (s.2, s.3)).unwrap_or((0, 0));
                run.bpf_ns += ns.saturating_sub(ns0);
                run.bpf_cnt += cnt.saturating_sub(cnt0);
            }
        }
        run.prof_window_cpu = from_ticks(prof_ticks_after.saturating_sub(prof_ticks_before));
        run.other_cpu = from_ticks(host_after.saturating_sub(host_before))
            .saturating_sub(run.cpu)
            .saturating_sub(run.prof_window_cpu);

        if let Some(child) = started.child.take() {
            let stopping = Instant::now();
            let stopped = stop_profiler(child, &log, setup.profiler.name())?;
            run.stop = stopping.elapsed();
            run.prof_cpu = stopped.cpu;
            run.prof_rss_kib = stopped.rss_kib;
            run.summary = stopped.summary;
        }
        Ok(run)
    }
}

/// What a profiler stopped with SIGINT left: its CPU time and peak RSS
/// (`wait4`) and the last line of its stderr (`log`).
pub(crate) struct Stopped {
    pub cpu: Duration,
    pub rss_kib: u64,
    pub summary: String,
}

/// Stops a profiler with SIGINT (how each of them wants to be stopped to
/// write its output) and reaps it; an exit other than 0 or by that SIGINT
/// is an error quoting its stderr.
pub(crate) fn stop_profiler(child: Child, log: &Path, name: &str) -> Result<Stopped> {
    let pid = libc::pid_t::try_from(child.id())?;
    // SAFETY: signalling our own live child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let (status, cpu, rss_kib) = wait4(&child)?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let summary = text
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned();
    if status != 0 && !(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGINT) {
        return Err(format!("{name} failed (wait status {status:#x}): {}", text.trim()).into());
    }
    Ok(Stopped {
        cpu,
        rss_kib,
        summary,
    })
}

pub(crate) fn tool_version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|e| format!("{cmd}: {e}"))
}

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The median of some values (an odd count gives a real run).
pub(crate) fn median_of<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// Medians, field by field, of the runs of one setup.
struct Medians {
    wall: f64,
    cpu: f64,
    prof_cpu: f64,
    prof_window_cpu: f64,
    rss_mib: f64,
    startup: f64,
    stop: f64,
    ns_per_sample: Option<f64>,
    samples: u64,
    other_cpu: f64,
}

fn medians(runs: &[Run]) -> Medians {
    let m = |f: &dyn Fn(&Run) -> f64| median_of(runs.iter().map(f).collect());
    let per_sample: Vec<f64> = runs
        .iter()
        .filter(|r| r.bpf_cnt > 0)
        .map(|r| r.bpf_ns as f64 / r.bpf_cnt as f64)
        .collect();
    Medians {
        wall: m(&|r| secs(r.wall)),
        cpu: m(&|r| secs(r.cpu)),
        prof_cpu: m(&|r| secs(r.prof_cpu)),
        prof_window_cpu: m(&|r| secs(r.prof_window_cpu)),
        rss_mib: m(&|r| r.prof_rss_kib as f64 / 1024.0),
        startup: m(&|r| secs(r.startup)),
        stop: m(&|r| secs(r.stop)),
        ns_per_sample: (!per_sample.is_empty()).then(|| median_of(per_sample)),
        samples: median_of(runs.iter().map(|r| r.bpf_cnt).collect()),
        other_cpu: m(&|r| secs(r.other_cpu)),
    }
}

pub(crate) fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "–".to_owned()
    }
}

/// Runs the sampling-overhead benchmark and prints its tables.
pub fn bench(runs: usize, dir: &Path, smolder: &Path) -> Result<()> {
    let runs = runs.max(1);
    let requests = match std::env::var("SMOLDER_BENCH_REQUESTS") {
        Ok(v) => v.parse()?,
        Err(_) => DEFAULT_REQUESTS,
    };
    let cpus = std::thread::available_parallelism()?.get();
    let source = dir.join("workload.c");
    let workload = dir.join("workload");
    std::fs::write(&source, WORKLOAD_C)?;
    let gcc = Command::new("gcc")
        .args([
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
            "-o",
        ])
        .arg(&workload)
        .arg(&source)
        .status()?;
    if !gcc.success() {
        return Err("gcc failed to build the workload".into());
    }
    let _stats = enable_bpf_stats()?;
    let foreign: Vec<String> = bpf_prog_stats()?
        .iter()
        .filter(|(_, s)| s.0 == "perf_event")
        .map(|(id, s)| format!("{id} {}", s.1))
        .collect();

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    println!(
        "## sampling overhead: {cpus} CPUs, kernel {}; workload {} requests per copy",
        kernel.trim(),
        requests
    );
    println!(
        "tools: {} | {} | {} | {}",
        tool_version(&smolder.to_string_lossy(), "--version"),
        tool_version("perf", "--version"),
        tool_version("bpftrace", "--version"),
        tool_version("bpftool", "--version"),
    );
    if !foreign.is_empty() {
        println!(
            "note: perf_event BPF programs of other processes already loaded (ids): {}",
            foreign.join(", ")
        );
    }
    println!();

    let bench = Bench {
        dir,
        smolder,
        workload,
        requests,
        cpus,
    };
    let mut setups = vec![Setup {
        profiler: Profiler::None,
        hz: 0,
    }];
    for hz in FREQUENCIES {
        for profiler in [Profiler::Smolder, Profiler::Perf, Profiler::Bpftrace] {
            setups.push(Setup { profiler, hz });
        }
    }
    // Busy: one copy per CPU, so the profiler competes with the workload;
    // single: one copy, a CPU left over for the profiler.
    let modes = [("busy", cpus), ("single", 1)];
    let mut results: Vec<Vec<Vec<Run>>> = vec![vec![Vec::new(); setups.len()]; modes.len()];
    println!("| round | mode | profiler | Hz | workload wall s | workload CPU s | profiler CPU s | peak RSS MiB | BPF ns/sample | BPF runs | other CPU s |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for round in 0..runs {
        for (m, &(mode, copies)) in modes.iter().enumerate() {
            for k in 0..setups.len() {
                // Rotate the order each round: no setup always goes first.
                let i = (round + k) % setups.len();
                let s = setups[i];
                let r = bench.run(s, copies)?;
                println!(
                    "| {} | {mode} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {:.2} |",
                    round + 1,
                    s.profiler.name(),
                    if s.hz == 0 {
                        "–".to_owned()
                    } else {
                        s.hz.to_string()
                    },
                    secs(r.wall),
                    secs(r.cpu),
                    secs(r.prof_cpu),
                    r.prof_rss_kib as f64 / 1024.0,
                    if r.bpf_cnt > 0 {
                        format!("{:.0}", r.bpf_ns as f64 / r.bpf_cnt as f64)
                    } else {
                        "–".to_owned()
                    },
                    r.bpf_cnt,
                    secs(r.other_cpu),
                );
                io::stdout().flush()?;
                if round + 1 == runs && !r.summary.is_empty() && s.profiler != Profiler::Bpftrace {
                    eprintln!("{mode} {} {} Hz: {}", s.profiler.name(), s.hz, r.summary);
                }
                results[m][i].push(r);
            }
        }
    }

    for (m, &(mode, copies)) in modes.iter().enumerate() {
        let med: Vec<Medians> = results[m].iter().map(|r| medians(r)).collect();
        let base = &med[0];
        println!();
        println!(
            "### {mode}: {copies} workload cop{} on {cpus} CPUs, median of {runs}",
            if copies == 1 { "y" } else { "ies" }
        );
        println!();
        println!("| profiler | Hz | wall s | wall × base | CPU s | CPU × base | profiler CPU s | × smolder | in window s | peak RSS MiB | × smolder | BPF ns/sample | × smolder | BPF runs | startup s | stop s | other CPU s |");
        println!(
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for (i, s) in setups.iter().enumerate() {
            let x = &med[i];
            // smolder at the same frequency
            let sm = setups
                .iter()
                .position(|t| t.profiler == Profiler::Smolder && t.hz == s.hz)
                .map(|j| &med[j]);
            let vs = |f: &dyn Fn(&Medians) -> f64| match (s.profiler, sm) {
                (Profiler::None, _) | (_, None) => "–".to_owned(),
                (_, Some(sm)) => ratio(f(x), f(sm)),
            };
            let ns = |m: &Medians| m.ns_per_sample.unwrap_or(0.0);
            println!(
                "| {} | {} | {:.2} | {} | {:.2} | {} | {:.2} | {} | {:.2} | {:.1} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
                s.profiler.name(),
                if s.hz == 0 { "–".to_owned() } else { s.hz.to_string() },
                x.wall,
                ratio(x.wall, base.wall),
                x.cpu,
                ratio(x.cpu, base.cpu),
                x.prof_cpu,
                vs(&|m| m.prof_cpu),
                x.prof_window_cpu,
                x.rss_mib,
                vs(&|m| m.rss_mib),
                x.ns_per_sample
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "–".to_owned()),
                if x.ns_per_sample.is_some() { vs(&ns) } else { "–".to_owned() },
                x.samples,
                x.startup,
                x.stop,
                x.other_cpu,
            );
        }
    }
    println!();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bpftool_json() {
        let json = r#"[{"id":375,"type":"tracing","name":"smolder_exec","tag":"f9","gpl_compatible":true,"run_time_ns":28325,"run_cnt":48,"map_ids":[379,376]},{"id":378,"type":"perf_event","name":"smolder_sample","run_time_ns":615558,"run_cnt":1360,"pids":[{"pid":12,"comm":"smolder"}]},{"id":5,"type":"kprobe","name":"x"}]"#;
        let s = parse_prog_stats(json);
        assert_eq!(
            s[&378],
            ("perf_event".into(), "smolder_sample".into(), 615558, 1360)
        );
        assert_eq!(s[&375].3, 48);
        assert_eq!(s[&5], ("kprobe".into(), "x".into(), 0, 0));
    }
}
