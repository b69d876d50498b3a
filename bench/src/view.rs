//! Benchmark 8: the agent's view of a time range (issue 14). A day of
//! 10 s intervals of a busy host is written as the agent's local store
//! writes it; then, each in a child process of its own (peak RSS by
//! `wait4`), `/profile` in pprof and the `/view` page are made for the
//! last hour and the last 24 hours, against the agent's 64 MiB budget.
//! The disk taken by 24 h, before and after compaction, is reported too.
//! Each request holds at most the distinct stacks the default memory
//! limit's share allows; `--stacks N,M` asks again with `stacks=N` (a
//! lower bound), which gives the peak bytes per stack held.
//!
//! ```text
//! cargo run --release -p smolder-bench -- view [--hours 24] [--cpus 64] [--workdir DIR] [--reuse] [--stacks 500,2000]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use smolder::agent::local::LocalStore;
use smolder::agent::view::{ViewFormat, ViewQuery, ViewState};
use smolder::agent::{store::StoreReader, Retention};
use smolder_profiles_proto::{
    int_value, key_value, string_value, write_profile, Format, FrameType, LocationSpec,
    MappingSpec, ProfileBuilder, ProfileConfig, SourceLine,
};

use crate::measure::run_one;
use crate::Result;

/// The agent's memory budget (DESIGN.md: one limit, 64 MiB by default).
const BUDGET_MIB: f64 = 64.0;
const INTERVAL_MS: u64 = 10_000;
const HZ: u64 = 19;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Skewed towards 0: a few hot stacks, a long tail.
    fn skewed(&mut self, n: u64) -> u64 {
        let a = self.below(n);
        let b = self.below(n);
        a.min(b).min(self.below(n))
    }
}

/// What a busy host runs: executables with their own call stacks.
struct Host {
    programs: Vec<Program>,
    kernel: Vec<String>,
}

struct Program {
    name: String,
    mapping: MappingSpec,
    /// Stacks as function indices into `functions`, root first.
    stacks: Vec<Vec<usize>>,
    functions: Vec<String>,
    threads: Vec<String>,
}

impl Host {
    fn new(rng: &mut Rng) -> Host {
        let names = [
            "postgres",
            "nginx",
            "java",
            "python3",
            "node",
            "envoy",
            "redis-server",
            "mysqld",
            "containerd",
            "kubelet",
            "dockerd",
            "prometheus",
            "grafana",
            "etcd",
            "coredns",
            "fluent-bit",
            "rustc",
            "cc1plus",
            "ld",
            "sshd",
        ];
        let programs = names
            .iter()
            .enumerate()
            .map(|(p, name)| {
                let functions: Vec<String> = (0..600)
                    .map(|f| format!("{name}::module_{}::function_{f}", f % 37))
                    .collect();
                let stacks = (0..400)
                    .map(|_| {
                        let depth = 8 + rng.below(30) as usize;
                        let mut stack = vec![0usize];
                        for _ in 1..depth {
                            stack.push(1 + rng.skewed(599) as usize);
                        }
                        stack
                    })
                    .collect();
                Program {
                    name: (*name).to_owned(),
                    mapping: MappingSpec {
                        memory_start: 0x5555_0000_0000 + ((p as u64) << 32),
                        memory_limit: 0x5555_0100_0000 + ((p as u64) << 32),
                        file_offset: 0,
                        filename: format!("/usr/bin/{name}"),
                        build_id: Some(format!("{:040x}", rng.next())),
                    },
                    stacks,
                    functions,
                    threads: (0..8).map(|t| format!("{name}-worker-{t}")).collect(),
                }
            })
            .collect();
        let kernel = (0..300).map(|k| format!("kernel_function_{k}")).collect();
        Host { programs, kernel }
    }

    /// One interval: `cpus` × 19 Hz × 10 s samples over `processes`
    /// processes (pids shift every 5 minutes, as short-lived work does).
    fn interval(&self, rng: &mut Rng, start_ms: u64, cpus: u64, processes: u64) -> Vec<u8> {
        let mut b = ProfileBuilder::new(ProfileConfig::cpu(
            HZ,
            start_ms * 1_000_000,
            INTERVAL_MS * 1_000_000,
        ));
        let cpu = b.default_profile_type();
        let epoch = start_ms / 300_000;
        let samples = cpus * HZ * INTERVAL_MS / 1000;
        for _ in 0..samples {
            let proc = rng.skewed(processes);
            let program = &self.programs[(proc % self.programs.len() as u64) as usize];
            // A third of the processes are replaced every 5 minutes.
            let pid = 1000
                + proc * 7
                + if proc.is_multiple_of(3) {
                    epoch * 100_000
                } else {
                    0
                };
            let resource = b.resource(vec![
                key_value("process.pid", int_value(pid as i64)),
                key_value("process.executable.name", string_value(&program.name)),
                key_value("service.name", string_value(&program.name)),
                key_value("host.name", string_value("busy-host")),
            ]);
            let stack = &program.stacks[rng.skewed(program.stacks.len() as u64) as usize];
            let mut locations: Vec<i32> = stack
                .iter()
                .rev()
                .map(|&f| {
                    b.location(&LocationSpec {
                        mapping: Some(program.mapping.clone()),
                        address: program.mapping.memory_start + 0x1000 + f as u64 * 0x40,
                        lines: vec![SourceLine {
                            function: program.functions[f].clone(),
                            file: format!("src/{}.rs", f % 37),
                            line: 10 + f as i64,
                            ..SourceLine::default()
                        }],
                        frame_type: FrameType::Native,
                    })
                })
                .collect();
            if rng.below(4) == 0 {
                let k = rng.skewed(self.kernel.len() as u64) as usize;
                for name in self.kernel[k..(k + 6).min(self.kernel.len())].iter().rev() {
                    let loc = b.location(&LocationSpec {
                        mapping: None,
                        address: 0xffff_ffff_8100_0000 + k as u64 * 0x100,
                        lines: vec![SourceLine::function(name.as_str())],
                        frame_type: FrameType::Kernel,
                    });
                    locations.insert(0, loc);
                }
            }
            let stack = b.stack(&locations);
            let thread = rng.below(program.threads.len() as u64) as usize;
            let attrs = [
                b.attribute(
                    "thread.id",
                    int_value((pid * 10 + thread as u64) as i64),
                    "",
                ),
                b.attribute("thread.name", string_value(&program.threads[thread]), ""),
            ];
            let ts = start_ms * 1_000_000 + rng.below(INTERVAL_MS * 1_000_000);
            b.add_sample(resource, cpu, stack, &attrs, 1, Some(ts));
        }
        write_profile(&b.finish(), Format::OtlpBinary).unwrap_or_default()
    }
}

fn dir_bytes(dir: &Path) -> (u64, usize) {
    let mut bytes = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        bytes += entry.metadata().map_or(0, |m| m.len());
        files += 1;
    }
    (bytes, files)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// The child: one request of the view, timed, then the same again (a
/// hit in the render cache); prints `seconds bytes again_seconds
/// folded_stacks max_stacks rss_before_bytes peak_rss_kib`. The peak is
/// the child's own `VmHWM`: `wait4`'s `ru_maxrss` starts from the
/// parent's resident memory at the fork (Linux keeps it across `exec`),
/// which here is that of the generator, 30 MiB.
fn child(args: &[String]) -> Result<()> {
    let [dir, what, query] = args else {
        return Err("view --child DIR profile|page QUERY".into());
    };
    let rss_before = smolder::agent::MemoryGuard::rss().unwrap_or(0);
    let state = ViewState::new(Some(StoreReader::new(Path::new(dir))));
    let query = match what.as_str() {
        "profile" => ViewQuery::parse(query, ViewFormat::Pprof)?,
        _ => ViewQuery::parse(query, ViewFormat::Svg)?,
    };
    let request = || match what.as_str() {
        "profile" => state.profile(&query),
        _ => state.page(&query),
    };
    let start = Instant::now();
    let rendered = request().map_err(|e| e.message)?;
    let first = start.elapsed();
    let again = Instant::now();
    let _ = request();
    println!(
        "{:.3} {} {:.6} {} {} {} {}",
        first.as_secs_f64(),
        rendered.bytes.len(),
        again.elapsed().as_secs_f64(),
        rendered.folded.stacks,
        query
            .max_stacks
            .map_or(state.max_stacks(), |n| n.min(state.max_stacks())),
        rss_before,
        crate::workload::peak_rss_kib()
    );
    Ok(())
}

pub fn main(mut args: impl Iterator<Item = String>) -> Result<()> {
    let mut hours = 24u64;
    let mut cpus = 64u64;
    let mut processes = 150u64;
    let mut workdir: Option<PathBuf> = None;
    let mut reuse = false;
    let mut stack_limits: Vec<Option<usize>> = vec![None];
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--child" => return child(&args.collect::<Vec<_>>()),
            "--hours" => hours = value()?.parse()?,
            "--cpus" => cpus = value()?.parse()?,
            "--processes" => processes = value()?.parse()?,
            "--workdir" => workdir = Some(value()?.into()),
            // Keep the store a previous run left in --workdir.
            "--reuse" => reuse = true,
            // Also ask with `stacks=N` (a lower bound on the merge), each N.
            "--stacks" => {
                for n in value()?.split(',') {
                    stack_limits.push(Some(n.parse()?));
                }
            }
            other => return Err(format!("view: unknown argument {other:?}").into()),
        }
    }
    let temp = tempfile::tempdir()?;
    let root = workdir.unwrap_or_else(|| temp.path().to_owned());
    let store = root.join("store");
    let kept = reuse && dir_bytes(&store).1 > 0;
    if kept {
        let (bytes, files) = dir_bytes(&store);
        println!(
            "Reusing {}: {files} files, {:.1} MiB.",
            store.display(),
            mib(bytes)
        );
    } else {
        let _ = std::fs::remove_dir_all(&store);
        std::fs::create_dir_all(&store)?;

        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let host = Host::new(&mut rng);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        let count = hours * 3600 * 1000 / INTERVAL_MS;
        let first_ms = now_ms - count * INTERVAL_MS;
        println!(
            "Writing {count} intervals of 10 s ({hours} h) of a busy host: {cpus} CPUs at {HZ} Hz ({} samples an interval), {processes} processes of 20 programs, a third of them replaced every 5 min.",
            cpus * HZ * 10
        );
        let started = Instant::now();
        let mut raw = 0u64;
        for i in 0..count {
            let start = first_ms + i * INTERVAL_MS;
            let bytes = host.interval(&mut rng, start, cpus, processes);
            raw += bytes.len() as u64;
            std::fs::write(store.join(format!("profile-{start:013}.otlp")), bytes)?;
        }
        println!(
            "  written in {:.1} s: {:.1} MiB of OTLP, {:.0} KiB an interval (the agent adds one SVG per interval until compacted)",
            started.elapsed().as_secs_f64(),
            mib(raw),
            raw as f64 / count as f64 / 1024.0
        );
        // The agent's next interval compacts everything older than an hour.
        let local = LocalStore::open(&store, Retention::default())?;
        let last = host.interval(&mut rng, now_ms, cpus, processes);
        let data = smolder_profiles_proto::read_profile(&last)?.data;
        let started = Instant::now();
        let stored = local.store(&data, now_ms, "bench")?;
        let (bytes, files) = dir_bytes(&store);
        println!(
            "  compaction of {} intervals into 5-minute files: {:.1} s (once; the agent compacts 30 intervals every 5 minutes); the store now: {files} files, {:.1} MiB for {hours} h",
            stored.compacted,
            started.elapsed().as_secs_f64(),
            mib(bytes)
        );
    }

    let bench = std::env::current_exe()?;
    println!();
    println!(
        "| request | range | stacks= | first (s) | again, cached (ms) | RSS before (MiB) | peak RSS (MiB) | budget | stacks held at most | stacks folded | output |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut ranges = vec![("1h".to_owned(), "last=1h".to_owned())];
    if hours > 1 {
        ranges.push((format!("{hours}h"), format!("last={hours}h")));
    }
    for (label, query) in &ranges {
        for limit in &stack_limits {
            let query = match limit {
                Some(n) => format!("{query}&stacks={n}"),
                None => query.clone(),
            };
            for (what, q) in [
                ("/profile pprof", format!("{query}&format=pprof")),
                ("/view page", query.clone()),
            ] {
                let log = root.join("child.log");
                let out = root.join("child.out");
                let kind = if what.starts_with("/profile") {
                    "profile"
                } else {
                    "page"
                };
                run_one(
                    Command::new(&bench)
                        .args(["view", "--child"])
                        .arg(&store)
                        .args([kind, q.as_str()]),
                    Stdio::from(std::fs::File::create(&out)?),
                    &log,
                )?;
                let text = std::fs::read_to_string(&out)?;
                let fields: Vec<&str> = text.split_whitespace().collect();
                let field = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|s| s.parse::<f64>().ok())
                        .unwrap_or(f64::NAN)
                };
                let peak = field(6) / 1024.0;
                println!(
                    "| {what} | {label} | {} | {} | {:.2} | {:.1} | {peak:.1} | {} | {} | {} | {:.0} KiB |",
                    limit.map_or("-".to_owned(), |n| n.to_string()),
                    fields.first().copied().unwrap_or("?"),
                    field(2) * 1000.0,
                    field(5) / (1 << 20) as f64,
                    if peak <= BUDGET_MIB {
                        "within 64 MiB"
                    } else {
                        "OVER 64 MiB"
                    },
                    fields.get(4).copied().unwrap_or("?"),
                    fields.get(3).copied().unwrap_or("?"),
                    field(1) / 1024.0
                );
            }
        }
    }
    Ok(())
}
