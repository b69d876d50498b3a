//! In-process profiling (issue 7; figures in bench/README.md): the
//! `smolder::Profiler` (perf events on the process's own threads) side by
//! side with `pprof` (pprof-rs, the SIGPROF sampler) on the same workload,
//! at 99 Hz and 999 Hz, against a run without a profiler.
//!
//! The workload: 3 threads, each doing the same fixed amount of work
//! (`--rounds` rounds of `work_alpha`/`work_beta`/`work_gamma`, 60/30/10 of
//! the work), started after the profiler, as a program would. Every run is
//! a fresh child process (`smolder-bench inprocess --child MODE HZ ROUNDS`,
//! this binary re-executed), so that its peak RSS (`wait4`) is its own.
//! Measured per run:
//!
//! - the workload's wall time (spawning the 3 threads until all joined) and
//!   the CPU time of its threads (`CLOCK_THREAD_CPUTIME_ID` at each
//!   thread's end);
//! - captured share: samples x period / workload thread CPU. smolder: its
//!   `ProfileStats::sampled_cpu_ns` (the sum of the periods the kernel
//!   reported); pprof-rs: the sum of the report's counts x 1e9 / Hz;
//! - the share of the samples in each known function (expected 60/30/10);
//! - the process's CPU time and peak RSS (`wait4`), its peak RSS when the
//!   workload ended and before `stop()` (`VmHWM`), the time `stop()` (or
//!   building the pprof-rs report) took, and smolder's own thread CPU.
//!
//! With `--pyroscope BIN`, pyroscope-rs (its pprof-rs backend) is a third
//! profiler at both rates: BIN is `smolder-bench-pyroscope` (`bench/pyroscope`,
//! a crate of its own that does not link smolder), run with the same
//! `inprocess --child pyroscope HZ ROUNDS` arguments, the same workload
//! (`src/workload.rs`) and the same report line. `bench/inprocess.sh`
//! builds both and runs them together.
//!
//! 3 rounds by default (`--runs N`), the order of the configurations
//! rotated every round; the tables give medians, and ratios smolder /
//! pprof-rs (and smolder / pyroscope-rs). The 1-minute load average before
//! each run is printed, since the machine may be shared.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use smolder_profiles_proto::{fold, FoldOptions};

use crate::workload::{peak_rss_kib, shares, spawn_workers, ChildReport, DEFAULT_ROUNDS, WORKERS};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const FREQUENCIES: [u64; 2] = [99, 999];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    None,
    Smolder,
    Pprof,
    /// pyroscope-rs, run from its own binary (`--pyroscope BIN`).
    Pyroscope,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Smolder => "smolder",
            Mode::Pprof => "pprof-rs",
            Mode::Pyroscope => "pyroscope",
        }
    }

    fn parse(s: &str) -> Result<Mode> {
        Ok(match s {
            "none" => Mode::None,
            "smolder" => Mode::Smolder,
            "pprof-rs" => Mode::Pprof,
            "pyroscope" => Mode::Pyroscope,
            other => return Err(format!("unknown mode {other}").into()),
        })
    }
}

/// `--child MODE HZ ROUNDS`: one run, reported on stdout.
pub fn child(mode: &str, hz: u64, rounds: u64) -> Result<()> {
    let mode = Mode::parse(mode)?;
    let mut r = ChildReport::default();
    match mode {
        Mode::None => {
            let (wall, cpu) = spawn_workers(rounds)?;
            r.hwm_kib = peak_rss_kib();
            r.wall_ns = wall.as_nanos() as u64;
            r.cpu_ns = cpu;
        }
        Mode::Smolder => {
            let guard = smolder::Profiler::builder().frequency_hz(hz).start()?;
            if guard.sampler() != smolder::SamplerKind::PerfEvents {
                return Err("smolder fell back to the signal sampler: perf events refused".into());
            }
            let (wall, cpu) = spawn_workers(rounds)?;
            r.hwm_kib = peak_rss_kib();
            let stopping = Instant::now();
            let profile = guard.stop()?;
            r.stop_ns = stopping.elapsed().as_nanos() as u64;
            r.wall_ns = wall.as_nanos() as u64;
            r.cpu_ns = cpu;
            let s = profile.stats;
            r.samples = s.samples;
            r.sampled_ns = s.sampled_cpu_ns;
            r.lost = s.lost;
            r.threads = s.threads as u64;
            r.profiler_cpu_ns = s.profiler_cpu_ns;
            let folded = fold(&profile.data, &FoldOptions::default());
            r.shares = shares(folded.iter().map(|(s, w)| (s.as_str(), *w)));
        }
        Mode::Pprof => {
            let guard = pprof::ProfilerGuardBuilder::default()
                .frequency(i32::try_from(hz)?)
                .blocklist(&["libc", "libgcc", "pthread", "vdso"])
                .build()?;
            let (wall, cpu) = spawn_workers(rounds)?;
            r.hwm_kib = peak_rss_kib();
            let stopping = Instant::now();
            let report = guard.report().build()?;
            drop(guard);
            r.stop_ns = stopping.elapsed().as_nanos() as u64;
            r.wall_ns = wall.as_nanos() as u64;
            r.cpu_ns = cpu;
            let mut threads = std::collections::HashSet::new();
            let mut stacks = Vec::new();
            for (frames, &count) in &report.data {
                let count = count.max(0) as u64;
                r.samples += count;
                threads.insert(frames.thread_id);
                let names: Vec<String> = frames.frames.iter().flatten().map(|s| s.name()).collect();
                stacks.push((names.join(";"), count as i64));
            }
            r.sampled_ns = r.samples * (1_000_000_000 / hz);
            r.threads = threads.len() as u64;
            r.shares = shares(stacks.iter().map(|(s, w)| (s.as_str(), *w)));
        }
        Mode::Pyroscope => {
            return Err(
                "pyroscope runs from bench/pyroscope (--pyroscope BIN), not this binary".into(),
            )
        }
    }
    println!("{}", r.line());
    Ok(())
}

fn parse_report(line: &str) -> Result<ChildReport> {
    let mut r = ChildReport::default();
    for kv in line.split_whitespace() {
        let (k, v) = kv.split_once('=').ok_or("bad child line")?;
        let v: u64 = v.parse()?;
        match k {
            "wall_ns" => r.wall_ns = v,
            "cpu_ns" => r.cpu_ns = v,
            "samples" => r.samples = v,
            "sampled_ns" => r.sampled_ns = v,
            "lost" => r.lost = v,
            "threads" => r.threads = v,
            "stop_ns" => r.stop_ns = v,
            "profiler_cpu_ns" => r.profiler_cpu_ns = v,
            "hwm_kib" => r.hwm_kib = v,
            "alpha" => r.shares[0] = v,
            "beta" => r.shares[1] = v,
            "gamma" => r.shares[2] = v,
            _ => {}
        }
    }
    Ok(r)
}

/// One child run with what `wait4` adds.
#[derive(Clone, Copy, Debug)]
struct Run {
    report: ChildReport,
    /// User + system CPU of the whole process.
    process_cpu_ns: u64,
    max_rss_kib: u64,
    load: f64,
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn run_child(mode: Mode, hz: u64, rounds: u64, pyroscope: Option<&PathBuf>) -> Result<Run> {
    let load = loadavg();
    let exe = match mode {
        Mode::Pyroscope => pyroscope
            .ok_or("pyroscope runs need --pyroscope BIN")?
            .clone(),
        _ => std::env::current_exe()?,
    };
    let child = Command::new(exe)
        .args(["inprocess", "--child", mode.arg()])
        .arg(hz.to_string())
        .arg(rounds.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = libc::pid_t::try_from(child.id())?;
    let mut stdout = child.stdout.ok_or("no stdout")?;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out)?;
    let mut status = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for the reaped child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own unreaped child; both pointers are valid.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("child {} {hz} Hz failed ({status:#x})", mode.arg()).into());
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    Ok(Run {
        report: parse_report(out.trim())?,
        process_cpu_ns: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
        load,
    })
}

fn median_by(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `smolder-bench inprocess [--runs N] [--rounds N] [--pyroscope BIN]`, or a
/// `--child` run.
pub fn main(mut args: impl Iterator<Item = String>) -> Result<()> {
    let mut runs = 3;
    let mut rounds = DEFAULT_ROUNDS;
    let mut pyroscope = None;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--child" => {
                let mode = value()?;
                let hz = value()?.parse()?;
                let rounds = value()?.parse()?;
                return child(&mode, hz, rounds);
            }
            "--runs" => runs = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            "--pyroscope" => pyroscope = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown argument {other:?}; see src/inprocess.rs").into()),
        }
    }
    bench(runs, rounds, pyroscope)
}

fn bench(runs: usize, rounds: u64, pyroscope: Option<PathBuf>) -> Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    println!(
        "machine: {} CPUs, kernel {}, perf_event_paranoid {}",
        std::thread::available_parallelism()?,
        kernel.trim(),
        std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
            .unwrap_or_default()
            .trim()
    );
    let mut configs = vec![(Mode::None, 0)];
    for hz in FREQUENCIES {
        configs.push((Mode::Smolder, hz));
        configs.push((Mode::Pprof, hz));
        if pyroscope.is_some() {
            configs.push((Mode::Pyroscope, hz));
        }
    }
    let name = |(m, hz): (Mode, u64)| {
        if m == Mode::None {
            "no profiler".to_owned()
        } else {
            format!("{} {hz} Hz", m.arg())
        }
    };
    println!(
        "## in-process profiling: {WORKERS} threads x {rounds} rounds, {runs} runs each, order rotated per round"
    );
    println!();
    println!("| round | config | load 1m | wall s | thread CPU s | process CPU s | peak RSS MiB | RSS before stop MiB | samples | captured % | alpha/beta/gamma ‰ | stop ms | lost |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|");
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); configs.len()];
    for round in 0..runs {
        for k in 0..configs.len() {
            let i = (round + k) % configs.len();
            let (mode, hz) = configs[i];
            let r = run_child(mode, hz, rounds, pyroscope.as_ref())?;
            let c = &r.report;
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {:.1} | {}/{}/{} | {:.0} | {} |",
                round + 1,
                name(configs[i]),
                r.load,
                c.wall_ns as f64 / 1e9,
                c.cpu_ns as f64 / 1e9,
                r.process_cpu_ns as f64 / 1e9,
                r.max_rss_kib as f64 / 1024.0,
                c.hwm_kib as f64 / 1024.0,
                c.samples,
                captured(c),
                c.shares[0],
                c.shares[1],
                c.shares[2],
                c.stop_ns as f64 / 1e6,
                c.lost
            );
            std::io::stdout().flush()?;
            results[i].push(r);
        }
    }
    let base = &results[0];
    let base_wall = median_by(base, |r| r.report.wall_ns as f64);
    let base_cpu = median_by(base, |r| r.report.cpu_ns as f64);
    let base_proc = median_by(base, |r| r.process_cpu_ns as f64);
    let base_rss = median_by(base, |r| r.max_rss_kib as f64);
    let base_hwm = median_by(base, |r| r.report.hwm_kib as f64);
    println!();
    println!("| median | captured % | wall s | wall / none | thread CPU s | thread CPU / none | process CPU / none | peak RSS MiB | RSS - none MiB | RSS before stop - none MiB | stop ms | smolder thread CPU s | samples |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut medians = Vec::new();
    for (cfg, runs) in configs.iter().zip(&results) {
        let m = Medians {
            captured: median_by(runs, |r| captured(&r.report)),
            wall: median_by(runs, |r| r.report.wall_ns as f64) / base_wall,
            cpu: median_by(runs, |r| r.report.cpu_ns as f64) / base_cpu,
            process_cpu: median_by(runs, |r| r.process_cpu_ns as f64) / base_proc,
            rss_mib: median_by(runs, |r| r.max_rss_kib as f64) / 1024.0,
            extra_rss_mib: (median_by(runs, |r| r.max_rss_kib as f64) - base_rss) / 1024.0,
            extra_hwm_mib: (median_by(runs, |r| r.report.hwm_kib as f64) - base_hwm) / 1024.0,
            stop_ms: median_by(runs, |r| r.report.stop_ns as f64) / 1e6,
        };
        println!(
            "| {} | {:.1} | {:.2} | {:.3} | {:.2} | {:.3} | {:.3} | {:.1} | {:.1} | {:.1} | {:.0} | {:.3} | {:.0} |",
            name(*cfg),
            m.captured,
            median_by(runs, |r| r.report.wall_ns as f64) / 1e9,
            m.wall,
            median_by(runs, |r| r.report.cpu_ns as f64) / 1e9,
            m.cpu,
            m.process_cpu,
            m.rss_mib,
            m.extra_rss_mib,
            m.extra_hwm_mib,
            m.stop_ms,
            median_by(runs, |r| r.report.profiler_cpu_ns as f64) / 1e9,
            median_by(runs, |r| r.report.samples as f64),
        );
        medians.push(m);
    }
    println!();
    let peers: &[Mode] = if pyroscope.is_some() {
        &[Mode::Pprof, Mode::Pyroscope]
    } else {
        &[Mode::Pprof]
    };
    let find = |mode: Mode, hz: u64| {
        configs
            .iter()
            .position(|&c| c == (mode, hz))
            .map(|i| &medians[i])
            .ok_or("a configuration without medians")
    };
    for &peer in peers {
        println!("| ratio smolder / {} | captured share | wall slowdown | thread CPU slowdown | process CPU | extra peak RSS | extra RSS before stop | stop() time |", peer.arg());
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for hz in FREQUENCIES {
            let (s, p) = (find(Mode::Smolder, hz)?, find(peer, hz)?);
            println!(
                "| {hz} Hz | {:.2} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.2} |",
                s.captured / p.captured,
                s.wall / p.wall,
                s.cpu / p.cpu,
                s.process_cpu / p.process_cpu,
                s.extra_rss_mib / p.extra_rss_mib,
                s.extra_hwm_mib / p.extra_hwm_mib,
                s.stop_ms / p.stop_ms,
            );
        }
        println!();
    }
    Ok(())
}

/// Medians of one configuration, slowdowns relative to the no-profiler run.
struct Medians {
    captured: f64,
    wall: f64,
    cpu: f64,
    process_cpu: f64,
    rss_mib: f64,
    extra_rss_mib: f64,
    extra_hwm_mib: f64,
    stop_ms: f64,
}

fn captured(c: &ChildReport) -> f64 {
    if c.cpu_ns == 0 {
        return 0.0;
    }
    100.0 * c.sampled_ns as f64 / c.cpu_ns as f64
}
