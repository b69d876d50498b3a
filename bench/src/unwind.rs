//! Benchmark 4 (`unwind`, root): the eBPF stack walker with `.eh_frame`
//! tables against frame pointers only and against `perf record
//! --call-graph dwarf`, on one workload without frame pointers; and the
//! cost of building tables for libc and for a large binary.
//!
//! ```text
//! sudo cargo run --release -p smolder-bench -- unwind [--runs N] [--workdir DIR]
//! ```

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use smolder::sampler::{SampleFlags, Sampler, SamplerConfig, SamplerEvent};
use smolder::unwind::UnwindTable;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Recursion through three frame sizes, hot loop at the bottom: depth 40
/// is ~20 KB of stack, beyond perf's default 8 KB DWARF copy.
const WORKLOAD_C: &str = r#"
#include <stdlib.h>
volatile unsigned long sink;
__attribute__((noinline)) unsigned long work(unsigned long x) {
    for (int i = 0; i < 20000; i++) x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}
__attribute__((noinline)) unsigned long f_small(int d, unsigned long x);
__attribute__((noinline)) unsigned long f_medium(int d, unsigned long x);
__attribute__((noinline)) unsigned long f_large(int d, unsigned long x);
unsigned long f_small(int d, unsigned long x) {
    volatile unsigned char buf[24]; buf[d % 24] = (unsigned char)x;
    if (d <= 0) return work(x) + buf[1];
    return f_medium(d - 1, x + 1) + buf[3];
}
unsigned long f_medium(int d, unsigned long x) {
    volatile unsigned long buf[40]; buf[d % 40] = x;
    if (d <= 0) return work(x) + buf[1];
    return f_large(d - 1, x ^ buf[d % 40]) * 3 + buf[2];
}
unsigned long f_large(int d, unsigned long x) {
    volatile unsigned long buf[150]; buf[d % 150] = x;
    if (d <= 0) return work(x) + buf[1];
    return f_small(d - 1, x + buf[d % 150]) + buf[4];
}
int main(int argc, char **argv) {
    int depth = argc > 1 ? atoi(argv[1]) : 40;
    for (;;) sink += f_small(depth, sink);
}
"#;

const SECONDS: u64 = 5;
const HZ: u64 = 199;

pub fn bench(runs: usize, dir: &Path) -> Result<()> {
    tables()?;
    let exe = dir.join("unwind-workload");
    let src = dir.join("unwind-workload.c");
    std::fs::write(&src, WORKLOAD_C)?;
    let ok = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-g", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()?
        .success();
    if !ok {
        return Err("gcc failed on the workload".into());
    }
    for depth in [10u32, 40] {
        println!(
            "\nworkload: C -O2 -fomit-frame-pointer, recursion depth {depth}, {HZ} Hz, {SECONDS} s per run, {runs} runs (median)"
        );
        println!(
            "{:<28} {:>9} {:>10} {:>14} {:>14}",
            "walker", "samples", "complete", "ns/sample", "frames/sample"
        );
        for (name, bytes) in [
            ("smolder, .eh_frame tables", 64u64 << 20),
            ("smolder, frame pointers", 0),
        ] {
            let mut results = Vec::new();
            for _ in 0..runs {
                results.push(smolder_run(&exe, depth, bytes)?);
            }
            results.sort_by_key(|r| r.ns_per_sample);
            let r = &results[results.len() / 2];
            println!(
                "{:<28} {:>9} {:>9.1}% {:>14} {:>14.1}",
                name,
                r.samples,
                r.complete * 100.0,
                r.ns_per_sample,
                r.frames
            );
        }
        let mut perf = Vec::new();
        for _ in 0..runs {
            perf.push(perf_run(&exe, depth, dir)?);
        }
        perf.sort_by(|a, b| a.cpu_ns_per_sample.total_cmp(&b.cpu_ns_per_sample));
        let p = &perf[perf.len() / 2];
        println!(
            "{:<28} {:>9} {:>9.1}% {:>14} {:>14}   (CPU time of the perf process per sample; {} bytes/sample written)",
            "perf --call-graph dwarf",
            p.samples,
            p.reach_main * 100.0,
            p.cpu_ns_per_sample as u64,
            "-",
            p.bytes_per_sample
        );
    }
    Ok(())
}

/// Table build time and size for libc and for a large binary.
fn tables() -> Result<()> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libLLVM-16.so.1",
    ];
    let mut paths: Vec<PathBuf> = candidates
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    if let Ok(exe) = std::env::current_exe() {
        paths.push(exe);
    }
    println!(
        "{:<48} {:>12} {:>10} {:>12} {:>10}",
        "binary", ".eh_frame", "rows", "table", "build"
    );
    for path in paths {
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..3 {
            let started = Instant::now();
            let table = UnwindTable::from_path(&path)?;
            times.push(started.elapsed());
            last = Some(table);
        }
        times.sort();
        let Some(t) = last else { continue };
        println!(
            "{:<48} {:>9} KiB {:>10} {:>8} KiB {:>8.1} ms",
            path.display().to_string(),
            t.section_bytes() / 1024,
            t.rows().len(),
            t.bytes() / 1024,
            times[1].as_secs_f64() * 1e3
        );
    }
    Ok(())
}

struct SmolderRun {
    samples: usize,
    complete: f64,
    ns_per_sample: u64,
    frames: f64,
}

fn smolder_run(exe: &Path, depth: u32, table_bytes: u64) -> Result<SmolderRun> {
    let mut child = Command::new(exe).arg(depth.to_string()).spawn()?;
    std::thread::sleep(Duration::from_millis(200));
    let pid = child.id();
    let run = (|| -> Result<SmolderRun> {
        let mut sampler = Sampler::start(SamplerConfig {
            frequency_hz: HZ,
            pid_filter: Some(vec![]),
            bpf_stats: true,
            unwind_table_bytes: table_bytes,
            ..SamplerConfig::default()
        })?;
        sampler.load_process(pid)?;
        sampler.add_pid(pid)?;
        let before = sampler.bpf_run_stats().unwrap_or((0, 0));
        let end = Instant::now() + Duration::from_secs(SECONDS);
        let (mut samples, mut complete, mut frames) = (0usize, 0usize, 0usize);
        while Instant::now() < end {
            for event in sampler.next_events_blocking() {
                if let SamplerEvent::Sample { sample, flags } = event {
                    if sample.pid == pid {
                        samples += 1;
                        frames += sample.user.len();
                        complete += usize::from(flags.contains(SampleFlags::USER_COMPLETE));
                    }
                }
            }
        }
        let after = sampler
            .bpf_run_stats()
            .ok_or("BPF run-time statistics are off (need CAP_SYS_ADMIN)")?;
        let runs = after.1.saturating_sub(before.1).max(1);
        Ok(SmolderRun {
            samples,
            complete: complete as f64 / samples.max(1) as f64,
            ns_per_sample: after.0.saturating_sub(before.0) / runs,
            frames: frames as f64 / samples.max(1) as f64,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    run
}

struct PerfRun {
    samples: usize,
    reach_main: f64,
    cpu_ns_per_sample: f64,
    bytes_per_sample: u64,
}

fn perf_run(exe: &Path, depth: u32, dir: &Path) -> Result<PerfRun> {
    let mut child = Command::new(exe).arg(depth.to_string()).spawn()?;
    std::thread::sleep(Duration::from_millis(200));
    let data = dir.join("unwind-perf.data");
    let run = (|| -> Result<PerfRun> {
        let mut perf = Command::new("perf")
            .args([
                "record",
                "-q",
                "--call-graph",
                "dwarf",
                "-F",
                &HZ.to_string(),
                "-p",
            ])
            .arg(child.id().to_string())
            .arg("-o")
            .arg(&data)
            .args(["--", "sleep", &SECONDS.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let cpu = child_cpu(&mut perf)?;
        let script = Command::new("perf")
            .args(["script", "-F", "ip,sym", "-i"])
            .arg(&data)
            .stderr(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&script.stdout);
        let (mut samples, mut main) = (0usize, 0usize);
        for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
            samples += 1;
            main += usize::from(
                block
                    .lines()
                    .any(|l| l.split_whitespace().nth(1) == Some("main")),
            );
        }
        let bytes = std::fs::metadata(&data)?.len();
        Ok(PerfRun {
            samples,
            reach_main: main as f64 / samples.max(1) as f64,
            cpu_ns_per_sample: cpu.as_nanos() as f64 / samples.max(1) as f64,
            bytes_per_sample: bytes / samples.max(1) as u64,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    run
}

/// Waits for a child and returns its user + system CPU time.
fn child_cpu(child: &mut std::process::Child) -> Result<Duration> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = i32::try_from(child.id())?;
    // SAFETY: valid out-pointers, our own child.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        return Err(std::io::Error::last_os_error().into());
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}
