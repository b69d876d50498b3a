//! Benchmark 10 (`python`, root): CPython frames in the kernel walker.
//!
//! 1. BPF cost per sample of the same Python workload with Python
//!    unwinding on and off (`SamplerConfig::python_frames`), from the
//!    kernel's `bpf_stats`.
//! 2. Sampling overhead side by side with `py-spy record` at the same rate,
//!    both attached to a running workload (`-p PID` / `--pid PID`) until it
//!    exits: the workload's wall time for a fixed CPU time (its slowdown),
//!    and each profiler's own CPU time and peak RSS (`wait4`).
//!
//! ```text
//! sudo cargo run --release -p smolder-bench -- python [--runs N] [--hz N]
//! ```
//! The interpreter is `$SMOLDER_BENCH_PYTHON`, else pyenv's 3.12.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smolder::sampler::{Sampler, SamplerConfig, SamplerEvent};

use crate::measure::reap;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Three functions under `main` (60/30/10) for `argv[1]` seconds of CPU
/// time; prints its own wall and CPU seconds when done. The same file
/// `tests/tests/python.rs` profiles.
const WORKLOAD_PY: &str = include_str!("../../tests/fixtures/split.py");

fn python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SMOLDER_BENCH_PYTHON") {
        return Ok(p.into());
    }
    let root = PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".pyenv/versions");
    std::fs::read_dir(&root)?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/python3.12"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no python3.12 under {}; set SMOLDER_BENCH_PYTHON",
                root.display()
            )
            .into()
        })
}

pub fn main(mut args: impl Iterator<Item = String>) -> Result<()> {
    let (mut runs, mut hz) = (3usize, 99u64);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--runs" => runs = value()?.parse()?,
            "--hz" => hz = value()?.parse()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("workload.py");
    std::fs::write(&script, WORKLOAD_PY)?;
    let python = python()?;
    let smolder = crate::smolder_bin()?;
    println!("python: {}; {runs} runs; medians", python.display());

    println!("\n1. BPF cost per sample (199 Hz, 5 s, kernel bpf_stats)\n");
    println!("| walker | ns/sample | frames/sample | samples with Python frames |");
    println!("|---|---|---|---|");
    for python_frames in [false, true] {
        let mut costs = Vec::new();
        for _ in 0..runs {
            costs.push(bpf_cost(&python, &script, python_frames)?);
        }
        costs.sort_by_key(|c| c.0);
        let (ns, frames, py) = costs[costs.len() / 2];
        let name = if python_frames {
            "native + CPython frames"
        } else {
            "native only"
        };
        println!("| {name} | {ns} | {frames:.1} | {:.1}% |", py * 100.0);
    }

    println!("\n2. Overhead at {hz} Hz, attached until the workload (4 s CPU) exits\n");
    println!("| profiler | workload wall s | × none | profiler CPU s | profiler CPU per workload CPU s | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    let mut base = 0.0;
    for profiler in ["none", "smolder", "py-spy"] {
        let mut results = Vec::new();
        for _ in 0..runs {
            results.push(overhead(&python, &script, profiler, hz, &smolder)?);
        }
        results.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (wall, cpu, rss, work_cpu) = results[results.len() / 2];
        if profiler == "none" {
            base = wall;
        }
        println!(
            "| {profiler} | {wall:.2} | {:.2} | {} | {} | {} |",
            wall / base,
            if profiler == "none" {
                "–".into()
            } else {
                format!("{cpu:.3}")
            },
            if profiler == "none" {
                "–".into()
            } else {
                format!("{:.4}", cpu / work_cpu)
            },
            if profiler == "none" {
                "–".into()
            } else {
                format!("{:.1}", rss as f64 / 1024.0)
            },
        );
    }
    Ok(())
}

/// (ns per sample, user frames per sample, share of samples with a Python frame).
fn bpf_cost(python: &Path, script: &Path, python_frames: bool) -> Result<(u64, f64, f64)> {
    let mut child = Command::new(python)
        .arg(script)
        .arg("60")
        .stdout(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.id();
    let run = (|| -> Result<(u64, f64, f64)> {
        let mut sampler = Sampler::start(SamplerConfig {
            frequency_hz: 199,
            pid_filter: Some(vec![]),
            bpf_stats: true,
            python_frames,
            ..SamplerConfig::default()
        })?;
        sampler.load_process(pid)?;
        sampler.add_pid(pid)?;
        // Let the first samples settle (tables and the interpreter loaded).
        std::thread::sleep(Duration::from_millis(500));
        let _ = sampler.next_events_blocking();
        let before = sampler.bpf_run_stats().unwrap_or((0, 0));
        let end = Instant::now() + Duration::from_secs(5);
        let (mut samples, mut frames, mut with_python) = (0usize, 0usize, 0usize);
        while Instant::now() < end {
            for event in sampler.next_events_blocking() {
                if let SamplerEvent::Sample { sample, .. } = event {
                    if sample.pid == pid {
                        samples += 1;
                        frames += sample.user.len();
                        with_python += usize::from(
                            sample
                                .user
                                .iter()
                                .any(|&pc| smolder::python::FrameRef::decode(pc).is_some()),
                        );
                    }
                }
            }
        }
        let after = sampler
            .bpf_run_stats()
            .ok_or("BPF run-time statistics are off (need CAP_SYS_ADMIN)")?;
        let n = after.1.saturating_sub(before.1).max(1);
        Ok((
            after.0.saturating_sub(before.0) / n,
            frames as f64 / samples.max(1) as f64,
            with_python as f64 / samples.max(1) as f64,
        ))
    })();
    let _ = child.kill();
    let _ = child.wait();
    run
}

/// (workload wall s, profiler CPU s, profiler peak RSS KiB, workload CPU s).
fn overhead(
    python: &Path,
    script: &Path,
    profiler: &str,
    hz: u64,
    smolder: &Path,
) -> Result<(f64, f64, u64, f64)> {
    let child = Command::new(python)
        .arg(script)
        .arg("4")
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id().to_string();
    let out = std::env::temp_dir().join(format!("smolder-bench-python-{pid}"));
    let hz = hz.to_string();
    let (program, args): (&std::ffi::OsStr, [&str; 7]) = match profiler {
        "smolder" => (
            smolder.as_os_str(),
            ["record", "-F", &hz, "--format", "otlp", "-p", &pid],
        ),
        "py-spy" => (
            "py-spy".as_ref(),
            ["record", "-r", &hz, "--format", "raw", "--pid", &pid],
        ),
        _ => ("".as_ref(), [""; 7]),
    };
    let attached = if program.is_empty() {
        None
    } else {
        Some(
            Command::new(program)
                .args(args)
                .arg("-o")
                .arg(&out)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        )
    };
    // wait4's ru_maxrss keeps the RSS of the forked bench process from
    // before exec: the profiler's own peak is its VmHWM, polled until the
    // workload exits (what it adds while writing its output is not seen).
    let mut child = child;
    let mut hwm_kib = 0u64;
    while child.try_wait()?.is_none() {
        if let Some(p) = &attached {
            hwm_kib = hwm_kib.max(vm_hwm_kib(p.id()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(p) = &attached {
        hwm_kib = hwm_kib.max(vm_hwm_kib(p.id()));
    }
    let output = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    let (Some(Ok(wall)), Some(Ok(cpu))) = (fields.next(), fields.next()) else {
        return Err(format!("the workload printed {text:?}").into());
    };
    let prof_cpu = match attached {
        Some(p) => reap(&p, profiler)?.cpu.as_secs_f64(),
        None => 0.0,
    };
    let rss = hwm_kib;
    let _ = std::fs::remove_file(&out);
    Ok((wall, prof_cpu, rss, cpu))
}

/// `VmHWM` of a process, KiB (0 once it is gone).
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
