//! Symbolization benchmark: smolder against binutils `addr2line`,
//! `llvm-symbolizer` and `blazesym`, on the same addresses of one binary, with
//! inlined frames, file and line, and demangling on for all.
//!
//! Each contender runs in its own process so that its peak memory (max RSS)
//! is its own. "Cold" is the first pass over the addresses in a fresh process
//! (it includes opening and parsing the binary); "warm" is a second pass with
//! everything cached. For the command-line tools, warm time is the extra time
//! of feeding the addresses six times over once, divided by five.
//!
//! The in-process contenders (smolder, blazesym) also report the CPU time
//! of each pass (user + system, every thread of the process): on a shared
//! machine wall time includes waiting for a CPU. With `--runs N` they run
//! N times each, alternating which goes first, and the medians are
//! reported; `--no-cli` leaves out the command-line tools.
//!
//! Usage: `smolder-bench-symbolize [BINARY] [--addresses N] [--runs N]
//! [--no-cli]`. Without a binary, the Rust test fixture of the symbolizer is
//! built with `rustc -C opt-level=3 -g`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../symbolizer/tests/common/fixture.rs"
);

/// What one contender measured.
struct Figures {
    name: &'static str,
    cold: Duration,
    warm: Duration,
    /// CPU time of the passes, for the in-process contenders.
    cpu: Option<(Duration, Duration)>,
    frames: usize,
    max_rss_kib: i64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(&args[2], Path::new(&args[3]), Path::new(&args[4]));
        return;
    }
    let mut binary = None;
    let mut count = 10_000usize;
    let mut runs = 1usize;
    let mut cli = true;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                runs = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--runs N")
            }
            "--no-cli" => cli = false,
            "--addresses" => {
                count = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--addresses N")
            }
            other => binary = Some(PathBuf::from(other)),
        }
    }
    let work = std::env::temp_dir().join(format!("smolder-bench-symbolize-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("temp dir");
    let binary = binary.unwrap_or_else(|| build_fixture(&work));
    let addrs = spread_addresses(&binary, count);
    let addr_file = work.join("addresses.txt");
    let text: String = addrs.iter().map(|a| format!("{a:#x}\n")).collect();
    std::fs::write(&addr_file, &text).expect("write addresses");
    println!(
        "binary {} ({} KiB), {} addresses",
        binary.display(),
        std::fs::metadata(&binary)
            .map(|m| m.len() / 1024)
            .unwrap_or(0),
        addrs.len()
    );

    println!("load average before: {}", load_average());
    let names = ["smolder", "blazesym"];
    let mut each: Vec<Vec<Figures>> = names.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        for k in 0..names.len() {
            let i = (round + k) % names.len();
            let f = in_process(names[i], &binary, &addr_file);
            let (cold_cpu, warm_cpu) = f.cpu.unwrap_or_default();
            println!(
                "round {} {:<9} cold {:>8.1} ms ({:>7.1} ms CPU)  warm {:>7.1} ms ({:>6.1} ms CPU)  peak {:>6.1} MiB",
                round + 1,
                f.name,
                f.cold.as_secs_f64() * 1e3,
                cold_cpu.as_secs_f64() * 1e3,
                f.warm.as_secs_f64() * 1e3,
                warm_cpu.as_secs_f64() * 1e3,
                f.max_rss_kib as f64 / 1024.0
            );
            each[i].push(f);
        }
    }
    println!("load average after: {}", load_average());
    let mut results: Vec<Figures> = each.into_iter().map(median).collect();
    if !cli {
        report(&results, addrs.len());
        let _ = std::fs::remove_dir_all(&work);
        return;
    }
    results.push(command_line(
        "binutils addr2line",
        Command::new("addr2line")
            .args(["-f", "-i", "-C", "-e"])
            .arg(&binary),
        &text,
        |out| out.lines().count() / 2,
    ));
    results.push(command_line(
        "llvm-symbolizer",
        Command::new("llvm-symbolizer")
            .arg("--obj")
            .arg(&binary)
            .arg("--inlining"),
        &text,
        |out| out.lines().filter(|l| !l.is_empty()).count() / 2,
    ));
    report(&results, addrs.len());
    let _ = std::fs::remove_dir_all(&work);
}

/// The median of each column of one contender's runs.
fn median(mut runs: Vec<Figures>) -> Figures {
    fn mid<T: Ord + Copy>(mut v: Vec<T>) -> T {
        v.sort_unstable();
        v[v.len() / 2]
    }
    let cpu = runs
        .iter()
        .map(|r| r.cpu)
        .collect::<Option<Vec<_>>>()
        .map(|c| {
            (
                mid(c.iter().map(|c| c.0).collect()),
                mid(c.iter().map(|c| c.1).collect()),
            )
        });
    let cold = mid(runs.iter().map(|r| r.cold).collect());
    let warm = mid(runs.iter().map(|r| r.warm).collect());
    let max_rss_kib = mid(runs.iter().map(|r| r.max_rss_kib).collect());
    let mut first = runs.swap_remove(0);
    first.cold = cold;
    first.warm = warm;
    first.cpu = cpu;
    first.max_rss_kib = max_rss_kib;
    first
}

/// `/proc/loadavg`'s 1, 5 and 15-minute figures: the machine is shared.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn build_fixture(dir: &Path) -> PathBuf {
    let out = dir.join("fixture-rs");
    let status = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["-C", "opt-level=3", "-g", "--edition", "2021", "-o"])
        .arg(&out)
        .arg(FIXTURE)
        .status()
        .expect("rustc");
    assert!(status.success(), "building the fixture failed");
    out
}

/// This process's peak and resident memory, anonymous and file-backed
/// (`BENCH_STATS`: what the peak is made of).
fn resident() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .filter(|l| {
            ["VmHWM", "RssAnon", "RssFile"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `count` addresses spread evenly over the bytes of the sized functions.
fn spread_addresses(bin: &Path, count: usize) -> Vec<u64> {
    let out = Command::new("nm")
        .args(["-S", "--defined-only"])
        .arg(bin)
        .output()
        .expect("nm");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut funcs: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let addr = u64::from_str_radix(it.next()?, 16).ok()?;
            let size = u64::from_str_radix(it.next()?, 16).ok()?;
            matches!(it.next()?, "t" | "T" | "W" | "w").then_some((addr, size))
        })
        .filter(|f| f.1 > 0)
        .collect();
    funcs.sort_unstable();
    funcs.dedup_by_key(|f| f.0);
    let total: u64 = funcs.iter().map(|f| f.1).sum();
    let stride = (total / count as u64).max(1);
    let mut out = Vec::with_capacity(count);
    let mut skip = 0;
    for (addr, size) in funcs {
        let mut off = skip;
        while off < size && out.len() < count {
            out.push(addr + off);
            off += stride;
        }
        skip = off - size;
    }
    out
}

/// Runs `--child name` and reads its figures and peak memory.
fn in_process(name: &'static str, bin: &Path, addr_file: &Path) -> Figures {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    cmd.arg("--child").arg(name).arg(bin).arg(addr_file);
    let (out, rss) = run_measured(&mut cmd, "");
    let mut f = out
        .split_whitespace()
        .map(|n| n.parse::<u64>().unwrap_or(0));
    let mut next = || Duration::from_nanos(f.next().unwrap_or(0));
    let (cold, warm, frames) = (next(), next(), next());
    let cpu = (next(), next());
    Figures {
        name,
        cold,
        warm,
        cpu: Some(cpu),
        frames: frames.as_nanos() as usize,
        max_rss_kib: rss,
    }
}

/// CPU time of this process so far (every thread, user + system).
fn process_cpu() -> Duration {
    // SAFETY: an all-zero timespec is valid; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a local.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The child side: symbolize twice in this process, print `cold warm
/// frames cold-CPU warm-CPU` (nanoseconds).
fn child(name: &str, bin: &Path, addr_file: &Path) {
    let text = std::fs::read_to_string(addr_file).expect("addresses");
    let addrs: Vec<u64> = text
        .lines()
        .filter_map(|l| u64::from_str_radix(l.trim_start_matches("0x"), 16).ok())
        .collect();
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    let mut frames = 0;
    match name {
        "smolder" => {
            let s = smolder_symbolizer::Symbolizer::builder()
                .demangle(std::env::var_os("BENCH_NO_DEMANGLE").is_none())
                .build();
            let src = smolder_symbolizer::Source::Elf {
                path: bin,
                addresses: smolder_symbolizer::AddressKind::VirtualAddress,
            };
            for _ in 0..2 {
                let (t, c) = (Instant::now(), process_cpu());
                let out = s.symbolize(&src, &addrs).expect("symbolize");
                times.push(t.elapsed());
                cpu.push(process_cpu() - c);
                frames = out.iter().map(|r| r.frames.len().max(1)).sum();
                if std::env::var_os("BENCH_STATS").is_some() {
                    eprintln!("after a pass: {}", resident());
                }
            }
            if std::env::var_os("BENCH_STATS").is_some() {
                eprintln!("{:?}", s.stats());
            }
        }
        "blazesym" => {
            use blazesym::symbolize::{source, Input, Symbolized, Symbolizer};
            let s = Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(true)
                .enable_demangling(true)
                .build();
            let src = source::Source::Elf(source::Elf::new(bin));
            for _ in 0..2 {
                let (t, c) = (Instant::now(), process_cpu());
                let out = s
                    .symbolize(&src, Input::VirtOffset(&addrs))
                    .expect("blazesym");
                times.push(t.elapsed());
                cpu.push(process_cpu() - c);
                frames = out
                    .iter()
                    .map(|r| match r {
                        Symbolized::Sym(sym) => 1 + sym.inlined.len(),
                        _ => 1,
                    })
                    .sum();
            }
        }
        other => panic!("unknown contender {other}"),
    }
    println!(
        "{} {} {} {} {}",
        times[0].as_nanos(),
        times[1].as_nanos(),
        frames,
        cpu[0].as_nanos(),
        cpu[1].as_nanos()
    );
}

/// Times a command-line symbolizer fed the addresses once and twice.
fn command_line(
    name: &'static str,
    cmd: &mut Command,
    addrs: &str,
    count_frames: impl Fn(&str) -> usize,
) -> Figures {
    let t = Instant::now();
    let (out, rss) = run_measured(cmd, addrs);
    let once = t.elapsed();
    // One warm pass is too short to time against process start-up noise:
    // feed the addresses WARM_PASSES + 1 times and divide the extra time.
    const WARM_PASSES: u32 = 5;
    let t = Instant::now();
    let (_, rss2) = run_measured(cmd, &addrs.repeat(WARM_PASSES as usize + 1));
    let many = t.elapsed();
    Figures {
        name,
        cold: once,
        warm: many.saturating_sub(once) / WARM_PASSES,
        cpu: None,
        frames: count_frames(&out),
        max_rss_kib: rss.max(rss2),
    }
}

/// Runs `cmd` with `input` on stdin; returns stdout and the child's max RSS (KiB).
// The child is reaped by `wait4`, which std's `wait` cannot do: it drops the rusage.
#[allow(clippy::zombie_processes)]
fn run_measured(cmd: &mut Command, input: &str) -> (String, i64) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    let _ = writer.join();
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child,
    // which std has not reaped (we never call `wait` on it).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: valid pointers to locals.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4 failed");
    (out, usage.ru_maxrss)
}

fn report(results: &[Figures], n: usize) {
    let rate = |d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "\n{:<20} {:>10} {:>14} {:>10} {:>14} {:>10} {:>8}",
        "tool", "cold ms", "cold addr/s", "warm ms", "warm addr/s", "peak MiB", "frames"
    );
    for r in results {
        println!(
            "{:<20} {:>10.1} {:>14.0} {:>10.1} {:>14.0} {:>10.1} {:>8}",
            r.name,
            r.cold.as_secs_f64() * 1e3,
            rate(r.cold),
            r.warm.as_secs_f64() * 1e3,
            rate(r.warm),
            r.max_rss_kib as f64 / 1024.0,
            r.frames
        );
    }
    println!("\nCPU time (user + system, all threads), in-process contenders:");
    for r in results {
        if let Some((cold, warm)) = r.cpu {
            println!(
                "{:<20} cold {:>8.1} ms CPU   warm {:>7.1} ms CPU",
                r.name,
                cold.as_secs_f64() * 1e3,
                warm.as_secs_f64() * 1e3
            );
        }
    }
    let us = &results[0];
    if let (Some(ours), Some(theirs)) = (us.cpu, results.get(1).and_then(|r| r.cpu)) {
        println!(
            "CPU ratio {} / smolder: cold {:.2}x   warm {:.2}x",
            results[1].name,
            theirs.0.as_secs_f64() / ours.0.as_secs_f64().max(1e-9),
            theirs.1.as_secs_f64() / ours.1.as_secs_f64().max(1e-9)
        );
    }
    println!("\nratios (peer / smolder; above 1 means smolder is faster or smaller):");
    for r in &results[1..] {
        println!(
            "{:<20} cold time {:>6.2}x   warm time {:>6.2}x   peak memory {:>6.2}x",
            r.name,
            r.cold.as_secs_f64() / us.cold.as_secs_f64().max(1e-9),
            r.warm.as_secs_f64() / us.warm.as_secs_f64().max(1e-9),
            r.max_rss_kib as f64 / us.max_rss_kib.max(1) as f64
        );
    }
}
