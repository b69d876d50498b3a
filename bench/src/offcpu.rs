//! Benchmark: what off-CPU recording costs a context-switch-heavy workload.
//! `perf bench sched pipe` (two processes passing a token through pipes:
//! every operation is two blocking switches) runs alone and under each of
//!
//! - `smolder record -a --off-cpu` at its defaults (1 ms minimum,
//!   probability 1; on-CPU sampling at 99 Hz as always),
//! - a bpftrace off-CPU script on `tracepoint:sched:sched_switch`, stacks
//!   and timestamps per switch, summed per stack at switch-in,
//! - `perf record -e sched:sched_switch -g -a`,
//!
//! all host-wide, in rounds whose order rotates. Reported per setup
//! (medians): the workload's wall time and its slowdown against the
//! baseline, the profiler's CPU time in the workload's window, and the
//! in-kernel cost of its BPF programs (`run_time_ns`, all its programs)
//! per workload operation.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::record::{
    attached_with, bpf_prog_stats, enable_bpf_stats, from_ticks, median_of, process_ticks, ratio,
    secs, stop_profiler, tool_version, wait4, PROG_TYPE_PERF_EVENT, PROG_TYPE_TRACEPOINT,
    PROG_TYPE_TRACING,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Operations of `perf bench sched pipe` per run (`SMOLDER_BENCH_PIPE_LOOPS`).
const DEFAULT_LOOPS: u64 = 500_000;

/// The bpftrace peer: the switch-out time and both stacks of a thread that
/// blocks, summed per stack when it is switched in again (what
/// `offcputime` does, on the tracepoint: this kernel has no kprobes).
const BPFTRACE_OFF_CPU: &str = r#"
tracepoint:sched:sched_switch
{
	if (args->prev_state != 0) {
		@start[args->prev_pid] = nsecs;
		@kst[args->prev_pid] = kstack;
		@ust[args->prev_pid] = ustack;
	}
	$s = @start[args->next_pid];
	if ($s != 0) {
		@off[@kst[args->next_pid], @ust[args->next_pid]] = sum(nsecs - $s);
		delete(@start[args->next_pid]);
		delete(@kst[args->next_pid]);
		delete(@ust[args->next_pid]);
	}
}
"#;

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Baseline,
    Smolder,
    Bpftrace,
    Perf,
}

impl Setup {
    const ALL: [Setup; 4] = [
        Setup::Baseline,
        Setup::Smolder,
        Setup::Bpftrace,
        Setup::Perf,
    ];

    fn name(self) -> &'static str {
        match self {
            Setup::Baseline => "baseline",
            Setup::Smolder => "smolder record -a --off-cpu",
            Setup::Bpftrace => "bpftrace sched_switch off-CPU",
            Setup::Perf => "perf record -e sched:sched_switch -g -a",
        }
    }
}

#[derive(Default)]
struct Run {
    wall: Duration,
    prof_window_cpu: Duration,
    bpf_ns: u64,
    bpf_runs: u64,
    summary: String,
}

/// A started profiler; killed and reaped if a run fails half-way.
struct Started(Option<Child>);

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Bench<'a> {
    dir: &'a Path,
    smolder: &'a Path,
    loops: u64,
    cpus: usize,
}

impl Bench<'_> {
    fn command(&self, setup: Setup) -> Option<Command> {
        match setup {
            Setup::Baseline => None,
            Setup::Smolder => {
                let mut c = Command::new(self.smolder);
                c.args(["record", "-a", "--off-cpu", "--format", "otlp", "-o"])
                    .arg(self.dir.join("smolder.pb"));
                Some(c)
            }
            Setup::Bpftrace => {
                let mut c = Command::new("bpftrace");
                c.arg(self.dir.join("offcpu.bt"));
                Some(c)
            }
            Setup::Perf => {
                let mut c = Command::new("perf");
                c.args(["record", "-e", "sched:sched_switch", "-g", "-a", "-o"])
                    .arg(self.dir.join("perf.data"));
                Some(c)
            }
        }
    }

    /// Attached: smolder and perf hold a perf event per CPU (smolder's
    /// off-CPU programs attach before its perf events), bpftrace its
    /// tracepoint program.
    fn ready(&self, setup: Setup, pid: u32) -> (bool, Vec<u32>) {
        let types = [
            PROG_TYPE_PERF_EVENT,
            PROG_TYPE_TRACEPOINT,
            PROG_TYPE_TRACING,
        ];
        let (events, progs) = attached_with(pid, &types);
        let ready = match setup {
            Setup::Baseline => true,
            Setup::Smolder => events >= self.cpus && !progs.is_empty(),
            Setup::Perf => events >= self.cpus,
            Setup::Bpftrace => !progs.is_empty(),
        };
        (ready, progs)
    }

    fn run(&self, setup: Setup) -> Result<Run> {
        let mut run = Run::default();
        let log = self.dir.join("profiler.log");
        let mut started = Started(None);
        let mut progs = Vec::new();
        if let Some(mut cmd) = self.command(setup) {
            let spawned = Instant::now();
            let child = cmd
                .stdin(Stdio::null())
                .stdout(File::create(self.dir.join("profiler.out"))?)
                .stderr(File::create(&log)?)
                .spawn()?;
            let pid = child.id();
            started.0 = Some(child);
            loop {
                let (ready, ids) = self.ready(setup, pid);
                if ready {
                    progs = ids;
                    break;
                }
                if let Some(status) = started.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    return Err(format!(
                        "{} exited before attaching ({status}): {}",
                        setup.name(),
                        std::fs::read_to_string(&log).unwrap_or_default().trim()
                    )
                    .into());
                }
                if spawned.elapsed() > Duration::from_secs(60) {
                    return Err(format!("{} did not attach in 60 s", setup.name()).into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let pid = started.0.as_ref().map(Child::id);
        let ticks_before = pid.map(process_ticks).unwrap_or(0);
        let stats_before = bpf_prog_stats()?;

        let start = Instant::now();
        let bench = Command::new("perf")
            .args(["bench", "sched", "pipe", "-l", &self.loops.to_string()])
            .stdout(Stdio::null())
            .spawn()?;
        let (status, _, _) = wait4(&bench)?;
        run.wall = start.elapsed();
        if status != 0 {
            return Err(format!("perf bench sched pipe failed (wait status {status:#x})").into());
        }

        let stats_after = bpf_prog_stats()?;
        for id in &progs {
            let (Some(after), before) = (stats_after.get(id), stats_before.get(id)) else {
                continue;
            };
            let (ns0, runs0) = before.map_or((0, 0), |b| (b.2, b.3));
            run.bpf_ns += after.2.saturating_sub(ns0);
            run.bpf_runs += after.3.saturating_sub(runs0);
        }
        run.prof_window_cpu = from_ticks(
            pid.map(process_ticks)
                .unwrap_or(0)
                .saturating_sub(ticks_before),
        );

        if let Some(child) = started.0.take() {
            run.summary = stop_profiler(child, &log, setup.name())?.summary;
        }
        Ok(run)
    }
}

/// tracepoint events need tracefs; mount it where the kernel expects it.
fn ensure_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events/sched/sched_switch").exists() {
        return Ok(());
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
        .status()?;
    if !status.success() {
        return Err("tracefs is not mounted and mounting it failed (perf and bpftrace need it for sched:sched_switch)".into());
    }
    Ok(())
}

pub fn bench(runs: usize, dir: &Path, smolder: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the off-CPU benchmark needs root (eBPF, perf -a)".into());
    }
    ensure_tracefs()?;
    let runs = runs.max(1);
    let loops = match std::env::var("SMOLDER_BENCH_PIPE_LOOPS") {
        Ok(v) => v.parse()?,
        Err(_) => DEFAULT_LOOPS,
    };
    let cpus = std::thread::available_parallelism()?.get();
    File::create(dir.join("offcpu.bt"))?.write_all(BPFTRACE_OFF_CPU.as_bytes())?;
    let _stats = enable_bpf_stats()?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    println!(
        "## off-CPU overhead: perf bench sched pipe -l {loops}, {cpus} CPUs, kernel {}, {runs} rounds",
        kernel.trim()
    );
    println!(
        "tools: {} | {} | {}",
        tool_version(&smolder.to_string_lossy(), "--version"),
        tool_version("perf", "--version"),
        tool_version("bpftrace", "--version"),
    );
    let mut results: Vec<Vec<Run>> = Setup::ALL.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        for k in 0..Setup::ALL.len() {
            let i = (k + round) % Setup::ALL.len();
            let setup = Setup::ALL[i];
            let run = Bench {
                dir,
                smolder,
                loops,
                cpus,
            }
            .run(setup)?;
            println!(
                "round {} {:<42} wall {:>6.2} s, profiler CPU in window {:>5.2} s, BPF {:>6.0} ns/op  {}",
                round + 1,
                setup.name(),
                secs(run.wall),
                secs(run.prof_window_cpu),
                run.bpf_ns as f64 / loops as f64,
                run.summary
            );
            results[i].push(run);
        }
    }
    let base = median_of(results[0].iter().map(|r| secs(r.wall)).collect());
    let smolder_wall = median_of(results[1].iter().map(|r| secs(r.wall)).collect());
    println!();
    println!("| setup | wall s | µs/op | slowdown vs baseline | wall × smolder | profiler CPU in window s | BPF ns/op | BPF runs/op |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (setup, runs) in Setup::ALL.iter().zip(&results) {
        let wall = median_of(runs.iter().map(|r| secs(r.wall)).collect());
        let cpu = median_of(runs.iter().map(|r| secs(r.prof_window_cpu)).collect());
        let bpf = median_of(
            runs.iter()
                .map(|r| r.bpf_ns as f64 / loops as f64)
                .collect(),
        );
        let bpf_runs = median_of(
            runs.iter()
                .map(|r| r.bpf_runs as f64 / loops as f64)
                .collect(),
        );
        let bpf_cell = |v: f64| {
            if *setup == Setup::Baseline || *setup == Setup::Perf {
                "–".to_owned()
            } else {
                format!("{v:.0}")
            }
        };
        println!(
            "| {} | {wall:.2} | {:.2} | {:+.1} % | {} | {cpu:.2} | {} | {} |",
            setup.name(),
            wall * 1e6 / loops as f64,
            100.0 * (wall / base - 1.0),
            ratio(wall, smolder_wall),
            bpf_cell(bpf),
            if *setup == Setup::Baseline || *setup == Setup::Perf {
                "–".to_owned()
            } else {
                format!("{bpf_runs:.1}")
            },
        );
    }
    Ok(())
}
