//! `perf script` text for the benchmarks: a real recording of
//! `fixtures/workload.c` (the seed), expanded deterministically to any
//! number of samples with many processes, threads and distinct stacks.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;
use std::process::Command;

/// One sample of the seed recording, frames leaf first, each the text after
/// the address column (`sym+off (dso)`), with the address kept apart.
#[derive(Debug, Clone)]
pub struct SeedSample {
    /// As perf printed them after the time, e.g. `1001001` and `cpu-clock:pppH`.
    pub period: String,
    pub event: String,
    pub frames: Vec<(String, String)>,
    /// Index in `frames` of the leaf-most frame of the recorded program;
    /// synthesized frames go right above it.
    pub split: usize,
}

/// Compiles the workload, records it with `perf record -g -F 999` for
/// `seconds` and returns `perf script` text with `pid/tid` and CPU columns.
pub fn record_seed(dir: &Path, seconds: u32) -> io::Result<String> {
    let source = dir.join("workload.c");
    std::fs::write(&source, include_str!("../fixtures/workload.c"))?;
    let exe = dir.join("workload");
    run(Command::new("gcc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-pthread", "-o"])
        .arg(&exe)
        .arg(&source))?;
    let data = dir.join("perf.data");
    run(Command::new("perf")
        .args(["record", "-q", "-g", "-F", "999", "--sample-cpu", "-o"])
        .arg(&data)
        .arg(&exe)
        .arg(seconds.to_string()))?;
    let out = Command::new("perf")
        .args(["script", "-F", "+pid", "-i"])
        .arg(&data)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "perf script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    String::from_utf8(out.stdout).map_err(io::Error::other)
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let status = cmd.status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("{cmd:?} failed: {status}")))
    }
}

/// Reads the samples of `perf script` text; `program` is the file name of
/// the recorded executable (its frames mark where synthesized ones go).
pub fn parse_seed(text: &str, program: &str) -> Vec<SeedSample> {
    let program_dso = format!("/{program})");
    let mut samples = Vec::new();
    let mut current: Option<SeedSample> = None;
    let flush = |s: Option<SeedSample>, samples: &mut Vec<SeedSample>| {
        if let Some(mut s) = s.filter(|s| !s.frames.is_empty()) {
            s.split = s
                .frames
                .iter()
                .position(|(_, rest)| rest.ends_with(&program_dso))
                .unwrap_or(s.frames.len().saturating_sub(2));
            samples.push(s);
        }
    };
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            flush(current.take(), &mut samples);
        } else if line.starts_with(char::is_whitespace) {
            if let Some(s) = current.as_mut() {
                let trimmed = line.trim();
                if let Some((addr, rest)) = trimmed.split_once(' ') {
                    s.frames.push((addr.to_owned(), rest.trim().to_owned()));
                }
            }
        } else {
            flush(current.take(), &mut samples);
            let mut period_event = line.split(": ").nth(1).unwrap_or("").split_whitespace();
            current = Some(SeedSample {
                period: period_event.next().unwrap_or("1").to_owned(),
                event: period_event.next().unwrap_or("cpu-clock").to_owned(),
                frames: Vec::new(),
                split: 0,
            });
        }
    }
    flush(current, &mut samples);
    samples
}

/// splitmix64: small, fast and the same on every platform and version,
/// which is all a fixed-seed generator needs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const MODULES: [&str; 16] = [
    "http", "rpc", "db", "cache", "json", "codec", "tls", "sched", "alloc", "index", "query",
    "storage", "auth", "metrics", "queue", "io",
];
const NOUNS: [&str; 24] = [
    "request", "response", "session", "buffer", "frame", "record", "batch", "table", "row",
    "column", "page", "block", "segment", "token", "header", "stream", "channel", "worker", "task",
    "timer", "entry", "node", "key", "value",
];
const VERBS: [&str; 16] = [
    "handle", "parse", "encode", "decode", "flush", "lookup", "insert", "merge", "split",
    "resolve", "dispatch", "poll", "read", "write", "commit", "scan",
];
/// Executables and libraries the synthesized functions live in.
const DSOS: [&str; 6] = [
    "/usr/local/bin/api-server",
    "/usr/local/bin/api-server",
    "/usr/local/bin/api-server",
    "/usr/lib/x86_64-linux-gnu/libsvc_core.so.3",
    "/usr/lib/x86_64-linux-gnu/libsvc_storage.so.3",
    "/usr/lib/x86_64-linux-gnu/libprotobuf.so.32",
];
const PROCESSES: [&str; 12] = [
    "api-server",
    "ingest",
    "indexer",
    "postgres",
    "envoy",
    "query-svc",
    "cache-node",
    "batch-job",
    "auth-svc",
    "metrics-agent",
    "scheduler",
    "storage-svc",
];

/// How the seed is expanded.
#[derive(Debug, Clone)]
pub struct ExpandOptions {
    pub samples: u64,
    pub seed: u64,
    /// Distinct chains of synthesized frames (call paths).
    pub paths: u64,
    /// Distinct synthesized function names.
    pub functions: u64,
    pub processes: u64,
}

impl Default for ExpandOptions {
    fn default() -> Self {
        ExpandOptions {
            samples: 1_000_000,
            seed: 0x5eed_f5a3_b1e5,
            paths: 4096,
            functions: 3000,
            processes: 48,
        }
    }
}

/// A synthesized function: its name, the DSO it lives in and its address.
fn function(index: u64) -> (String, &'static str, u64) {
    let h = mix(index ^ 0xf00d);
    let module = MODULES[(h % 16) as usize];
    let noun = NOUNS[((h >> 8) % 24) as usize];
    let verb = VERBS[((h >> 16) % 16) as usize];
    let dso = DSOS[((h >> 24) % DSOS.len() as u64) as usize];
    let name = format!("{module}_{verb}_{noun}_{index}");
    let base = if dso.ends_with("api-server") {
        0x40_0000
    } else {
        0x2_0000
    };
    (name, dso, base + index * 0x180)
}

/// The synthesized frames of call path `path`, root first. Level `j` is
/// keyed by the top `j` bits of the path, so paths share prefixes the way
/// real call trees do: one root, then 2, 4, ... distinct callers.
fn chain(path: u64, options: &ExpandOptions, seed_depth: usize) -> Vec<u64> {
    let bits = 64 - options.paths.saturating_sub(1).leading_zeros();
    let target = 10 + (mix(path ^ 0xdee9) % 31) as usize;
    let len = target.saturating_sub(seed_depth).max(1);
    (0..len)
        .map(|j| {
            let j = j as u32;
            let key = if j >= bits { path } else { path >> (bits - j) };
            mix((u64::from(j) << 40) ^ key ^ options.seed) % options.functions
        })
        .collect()
}

/// Writes `options.samples` samples of `perf script` text built from `seed`.
/// The same seed and options give the same bytes.
pub fn expand(
    seed: &[SeedSample],
    options: &ExpandOptions,
    out: &mut impl Write,
) -> io::Result<()> {
    assert!(
        !seed.is_empty(),
        "the seed recording has no samples with stacks"
    );
    let mut rng = Rng::new(options.seed);
    let functions: Vec<_> = (0..options.functions).map(function).collect();
    // Processes, each with 1-8 threads; pid and tid numbers as a busy host has them.
    let processes: Vec<(String, u32, Vec<u32>)> = (0..options.processes)
        .map(|p| {
            let name = PROCESSES[(p % PROCESSES.len() as u64) as usize].to_owned();
            let pid = 1000 + rng.below(400_000) as u32;
            let threads = 1 + rng.below(8) as u32;
            let tids = (0..threads)
                .map(|t| if t == 0 { pid } else { pid + 1 + t * 3 })
                .collect();
            (name, pid, tids)
        })
        .collect();
    let mut time_us: u64 = 1_000_000_000;
    let mut line = String::with_capacity(4096);
    for _ in 0..options.samples {
        line.clear();
        // Skewed choices, as in real profiles: a few hot processes and paths.
        let p = (options.processes as f64 * rng.unit().powi(2)) as usize;
        let (name, pid, tids) = &processes[p.min(processes.len() - 1)];
        let tid = tids[rng.below(tids.len() as u64) as usize];
        let comm = if tid == *pid {
            name.clone()
        } else {
            format!("{}-w{}", &name[..name.len().min(12)], tid - pid)
        };
        let sample = &seed[rng.below(seed.len() as u64) as usize];
        let path = (options.paths as f64 * rng.unit().powi(3)) as u64;
        let cpu = rng.below(2);
        time_us += 200 + rng.below(800);
        let _ = writeln!(
            line,
            "{comm} {pid:>5}/{tid:<5} [{cpu:03}] {:>5}.{:06}: {:>10} {}: ",
            time_us / 1_000_000,
            time_us % 1_000_000,
            sample.period,
            sample.event,
        );
        let frame = |line: &mut String, addr: &str, rest: &str| {
            let _ = writeln!(line, "\t{addr:>16} {rest}");
        };
        let split = sample.split.min(sample.frames.len() - 1);
        for (addr, rest) in &sample.frames[..=split] {
            frame(&mut line, addr, rest);
        }
        for &f in chain(path, options, sample.frames.len()).iter().rev() {
            let (name, dso, addr) = &functions[f as usize];
            let off = 0x10 + (mix(f ^ path) % 0x160);
            let _ = writeln!(line, "\t{:>16x} {name}+{off:#x} ({dso})", addr + off);
        }
        for (addr, rest) in &sample.frames[split + 1..] {
            frame(&mut line, addr, rest);
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}
