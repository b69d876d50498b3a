//! A program that profiles itself with `smolder::Profiler`: three threads
//! burn CPU in three known functions (60/30/10 by work), part of it under a
//! label, and the profile is written as OTLP and as a flamegraph.
//!
//! ```sh
//! cargo run --release -p smolder --example inprocess -- --hz 999 --seconds 3 --out /tmp/prof
//! ```
//! `--cpu-seconds S` runs each worker for S seconds of its own CPU time
//! instead of S seconds on the clock.
//! With `--export-every SECONDS` it also exports a profile per interval to
//! the OTLP endpoint of `OTEL_EXPORTER_OTLP_ENDPOINT`.
//! It prints a JSON summary: which sampler ran, samples, the CPU time they
//! stand for and the CPU time the three workers used.

use std::hint::black_box;
use std::time::{Duration, Instant};

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
    spin(black_box(n))
}

#[inline(never)]
fn work_gamma(n: u64) -> u64 {
    spin(black_box(n))
}

/// Burns CPU for `run_for`; returns the CPU time this thread used.
/// How long a worker runs: on the clock, or on its own CPU time (the same
/// work whatever else the machine is doing).
#[derive(Clone, Copy)]
enum RunFor {
    Clock(Duration),
    Cpu(Duration),
}

fn worker(index: usize, run_for: RunFor) -> u64 {
    let start = Instant::now();
    let running = || match run_for {
        RunFor::Clock(d) => start.elapsed() < d,
        RunFor::Cpu(d) => thread_cpu_ns() < d.as_nanos() as u64,
    };
    let mut acc = 0;
    while running() {
        acc ^= work_alpha(600_000);
        acc ^= if index == 1 {
            smolder::with_labels(&[("endpoint", "/api")], || work_beta(300_000))
        } else {
            work_beta(300_000)
        };
        acc ^= work_gamma(100_000);
    }
    black_box(acc);
    thread_cpu_ns()
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut hz = 99;
    let mut seconds = 2.0;
    let mut cpu_time = false;
    let mut out = std::env::temp_dir();
    let mut fallback = false;
    let mut export_every = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--hz" => hz = args.next().ok_or("--hz N")?.parse()?,
            "--seconds" => seconds = args.next().ok_or("--seconds S")?.parse()?,
            // Each worker runs for S seconds of its own CPU time instead.
            "--cpu-seconds" => {
                seconds = args.next().ok_or("--cpu-seconds S")?.parse()?;
                cpu_time = true;
            }
            "--out" => out = args.next().ok_or("--out DIR")?.into(),
            "--fallback" => fallback = true,
            // Long-running mode: export each interval to the OTLP endpoint
            // of OTEL_EXPORTER_OTLP_ENDPOINT.
            "--export-every" => {
                export_every = Some(Duration::from_secs_f64(
                    args.next().ok_or("--export-every SECONDS")?.parse()?,
                ))
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let run_for = match cpu_time {
        false => RunFor::Clock(Duration::from_secs_f64(seconds)),
        true => RunFor::Cpu(Duration::from_secs_f64(seconds)),
    };
    let mut builder = smolder::Profiler::builder()
        .frequency_hz(hz)
        .signal_fallback_only(fallback);
    if let Some(every) = export_every {
        builder = builder.export_every(every, smolder::exporter::ExporterConfig::from_env()?);
    }
    let guard = builder.start()?;
    let workers: Vec<_> = (1..=3)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker(i, run_for))
        })
        .collect::<Result<_, _>>()?;
    let mut workload_cpu_ns = 0;
    for w in workers {
        workload_cpu_ns += w.join().map_err(|_| "a worker panicked")?;
    }
    let profile = guard.stop()?;
    profile.write_otlp(out.join("profile.pb"))?;
    // With --export-every, `stop` returns what came after the last export,
    // which may be nothing at all: no flamegraph then.
    let left: usize = profile
        .data
        .resource_profiles
        .iter()
        .flat_map(|r| &r.scope_profiles)
        .flat_map(|s| &s.profiles)
        .map(|p| p.samples.len())
        .sum();
    if left > 0 {
        profile.write_flamegraph(out.join("profile.svg"))?;
    } else {
        eprintln!("no samples since the last export: no flamegraph written");
    }
    println!(
        "{{\"sampler\":\"{:?}\",\"samples\":{},\"lost\":{},\"threads\":{},\"sampled_cpu_ns\":{},\"workload_cpu_ns\":{},\"profiler_cpu_ns\":{},\"unwind_failures\":{}}}",
        profile.sampler,
        profile.stats.samples,
        profile.stats.lost,
        profile.stats.threads,
        profile.stats.sampled_cpu_ns,
        workload_cpu_ns,
        profile.stats.profiler_cpu_ns,
        profile.stats.unwind_failures
    );
    Ok(())
}
