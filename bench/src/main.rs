//! `smolder-bench`: benchmarks of smolder, each run side by side with its
//! peer in this one process, reporting ratios.
//!
//! ```text
//! cargo run --release -p smolder-bench -- flamegraph   # smolder vs inferno, perf script -> SVG
//! cargo run --release -p smolder-bench -- bytes        # OTLP (gzip) vs pprof (gzip) bytes per sample
//! cargo run --release -p smolder-bench -- all
//! cargo run --release -p smolder-bench -- unwind       # eBPF unwinding: tables vs frame pointers vs perf dwarf (root)
//! cargo run --release -p smolder-bench -- record       # sampling overhead: smolder vs perf vs bpftrace (root)
//! cargo run --release -p smolder-bench -- agent        # smolder agent vs bpftrace, 60 s at 19 Hz (root)
//! cargo run --release -p smolder-bench -- offcpu       # off-CPU: perf bench sched pipe under smolder, bpftrace, perf (root)
//! cargo run --release -p smolder-bench -- generate -o perf.txt   # the input only
//! cargo run --release -p smolder-bench -- view         # the agent's /profile and /view on 1 h and 24 h of a busy host
//! cargo run --release -p smolder-bench -- scopes       # cost of a labelled scope / tracing span, TracingLayer on vs off
//! ```
//!
//! The input is `perf script` text: a real recording of `fixtures/workload.c`
//! (committed as `fixtures/workload.perf.txt.gz`) expanded with a fixed seed,
//! so every run measures the same bytes.
//!
//! Options: `--samples N` (default 1000000), `--runs N` (default 3),
//! `--record` (record the workload afresh with gcc and perf instead of the
//! committed recording), `--record-seconds N` (default 8), `--seed-script
//! FILE` (another `perf script -F +pid` text of `workload` to expand),
//! `--workdir DIR` (kept; default a temporary directory).
//! The smolder binary is `$SMOLDER_BIN`, else `smolder` next to this binary.

mod agent;
mod inprocess;
mod measure;
mod offcpu;
mod perf_script;
mod python;
mod record;
mod scopes;
mod unwind;
mod view;
mod workload;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use measure::{median, run_one, run_pipe, Cost};
use perf_script::{expand, parse_seed, record_seed, ExpandOptions};
use smolder_profiles_proto::{gunzip, read_profile, to_pprof};

/// `perf record -g -F 999 --sample-cpu` of `fixtures/workload.c` for 8 s,
/// as `perf script -F +pid` printed it: the committed default seed, so that
/// every run expands the same input.
const SEED_RECORDING: &[u8] = include_bytes!("../fixtures/workload.perf.txt.gz");

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Config {
    command: String,
    samples: u64,
    runs: usize,
    seed_script: Option<PathBuf>,
    record: bool,
    record_seconds: u32,
    workdir: Option<PathBuf>,
    output: Option<PathBuf>,
    /// `perf script` files to draw instead of the generated input.
    inputs: Vec<PathBuf>,
}

fn parse_args() -> Result<Config> {
    let mut args = std::env::args().skip(1);
    let mut config = Config {
        command: String::new(),
        samples: 1_000_000,
        runs: 3,
        seed_script: None,
        record: false,
        record_seconds: 8,
        workdir: None,
        output: None,
        inputs: Vec::new(),
    };
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--samples" => config.samples = value()?.parse()?,
            "--runs" => config.runs = value()?.parse()?,
            "--seed-script" => config.seed_script = Some(value()?.into()),
            "--record" => config.record = true,
            "--record-seconds" => config.record_seconds = value()?.parse()?,
            "--workdir" => config.workdir = Some(value()?.into()),
            "-o" | "--output" => config.output = Some(value()?.into()),
            "--input" => config.inputs.push(value()?.into()),
            "flamegraph" | "bytes" | "all" | "generate" | "record" | "unwind" | "agent"
            | "offcpu"
                if config.command.is_empty() =>
            {
                config.command = arg
            }
            other => return Err(format!("unknown argument {other:?}; see src/main.rs").into()),
        }
    }
    if config.command.is_empty() {
        return Err(
            "usage: smolder-bench flamegraph|bytes|all|generate|record|unwind|agent|offcpu|inprocess [options]".into(),
        );
    }
    Ok(config)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("smolder-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        // Issue 7: smolder::Profiler vs pprof-rs in-process; own options and `--child` runs.
        Some("inprocess") => return inprocess::main(args),
        // Issue 14: merging and drawing 1 h and 24 h of the agent's store.
        Some("view") => return view::main(args),
        // Issue 16: the cost of a labelled scope or a `tracing` span, TracingLayer on vs off.
        Some("scopes") => return scopes::main(args),
        // Issue 13: Python frames in the kernel walker, and next to py-spy.
        Some("python") => return python::main(args),
        _ => {}
    }
    let config = parse_args()?;
    let temp;
    let dir = match &config.workdir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    if config.command == "unwind" {
        // Benchmark 4 (root): the eBPF walker with tables vs frame pointers vs perf.
        return unwind::bench(config.runs, &dir);
    }
    if config.command == "agent" {
        // The node agent's CPU and memory next to bpftrace (root, 2 x 60 s).
        return agent::bench(&dir, &smolder_bin()?);
    }
    if config.command == "offcpu" {
        // Off-CPU recording on perf bench sched pipe vs bpftrace and perf (root).
        return offcpu::bench(config.runs, &dir, &smolder_bin()?);
    }
    if config.command == "record" {
        // The sampling-overhead benchmark needs none of the perf script inputs.
        return record::bench(config.runs, &dir, &smolder_bin()?);
    }
    if config.command == "flamegraph" && !config.inputs.is_empty() {
        // Given recordings instead of the generated input.
        machine()?;
        for input in &config.inputs {
            let label = input.display().to_string();
            flamegraph(&config, &dir, input, &label)?;
        }
        return Ok(());
    }
    let inputs = make_inputs(&config, &dir)?;
    let large = format!("{} samples", inputs.large_samples);
    match config.command.as_str() {
        "generate" => {
            if let Some(out) = &config.output {
                std::fs::copy(&inputs.large, out)?;
            }
        }
        "flamegraph" => {
            machine()?;
            flamegraph(&config, &dir, &inputs.large, &large)?;
        }
        "bytes" => {
            machine()?;
            bytes(&dir, &inputs)?;
        }
        _ => {
            machine()?;
            flamegraph(&config, &dir, &inputs.large, &large)?;
            bytes(&dir, &inputs)?;
        }
    }
    Ok(())
}

/// The real recording and its expansion, with their sample counts.
struct Inputs {
    seed: PathBuf,
    seed_samples: u64,
    large: PathBuf,
    large_samples: u64,
}

fn make_inputs(config: &Config, dir: &Path) -> Result<Inputs> {
    let text = match &config.seed_script {
        _ if config.record => {
            eprintln!(
                "recording workload for {} s with perf ...",
                config.record_seconds
            );
            record_seed(dir, config.record_seconds)?
        }
        Some(path) => std::fs::read_to_string(path)?,
        None => String::from_utf8(gunzip(SEED_RECORDING)?)?,
    };
    let seed_path = dir.join("seed.perf.txt");
    std::fs::write(&seed_path, &text)?;
    let seed = parse_seed(&text, "workload");
    if seed.is_empty() {
        return Err("the seed recording has no samples with stacks".into());
    }
    let options = ExpandOptions {
        samples: config.samples,
        ..ExpandOptions::default()
    };
    let large = dir.join("large.perf.txt");
    eprintln!(
        "expanding {} recorded samples to {} ...",
        seed.len(),
        options.samples
    );
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&large)?);
    expand(&seed, &options, &mut out)?;
    out.flush()?;
    eprintln!(
        "{}: {:.1} MiB",
        large.display(),
        mib(std::fs::metadata(&large)?.len())
    );
    Ok(Inputs {
        seed: seed_path,
        seed_samples: seed.len() as u64,
        large,
        large_samples: options.samples,
    })
}

fn smolder_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SMOLDER_BIN") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("smolder");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release -p smolder --bin smolder` or set SMOLDER_BIN",
            p.display()
        )
        .into())
    }
}

/// A tool from PATH, else from ~/.cargo/bin where `cargo install` puts it.
fn tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    });
    on_path.unwrap_or_else(|| {
        let home = std::env::var_os("HOME").unwrap_or_default();
        Path::new(&home).join(".cargo/bin").join(name)
    })
}

fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("{}: {e}", bin.display()))
}

/// inferno's tools have no `--version`; `cargo install --list` knows it.
fn inferno_version() -> String {
    Command::new("cargo")
        .args(["install", "--list"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.starts_with("inferno "))
                .map(|l| l.trim_end_matches(':').to_owned())
        })
        .unwrap_or_else(|| "inferno (version unknown)".to_owned())
}

fn machine() -> Result<()> {
    let cpus = std::thread::available_parallelism()?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let model = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    println!("machine: {cpus} CPUs ({model}), kernel {}", kernel.trim());
    println!(
        "tools: {} | {} ({}, {})",
        version(&smolder_bin()?),
        inferno_version(),
        tool("inferno-collapse-perf").display(),
        tool("inferno-flamegraph").display()
    );
    println!();
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Runs a contender once, drawing into the given SVG path.
type RunOnce<'a> = Box<dyn Fn(&Path) -> io::Result<Cost> + 'a>;

/// One side of the flamegraph comparison: a name and how to run it once.
struct Contender<'a> {
    name: &'static str,
    svg: PathBuf,
    run: RunOnce<'a>,
}

fn flamegraph(config: &Config, dir: &Path, input: &Path, label: &str) -> Result<()> {
    let smolder = smolder_bin()?;
    let collapse = tool("inferno-collapse-perf");
    let draw = tool("inferno-flamegraph");
    let log = |name: &str| dir.join(format!("{name}.log"));
    let inferno = |min_width: Option<&'static str>| {
        let (collapse, draw, log) = (&collapse, &draw, log("inferno"));
        move |svg: &Path| {
            let mut drawing = Command::new(draw);
            if let Some(w) = min_width {
                drawing.args(["--minwidth", w]);
            }
            run_pipe(Command::new(collapse).arg(input), &mut drawing, svg, &log)
        }
    };
    let contenders = [
        Contender {
            name: "smolder",
            svg: dir.join("smolder.svg"),
            run: Box::new(|svg: &Path| {
                run_one(
                    Command::new(&smolder)
                        .arg("flamegraph")
                        .arg(input)
                        .arg("-o")
                        .arg(svg),
                    Stdio::null(),
                    &log("smolder"),
                )
            }),
        },
        Contender {
            name: "inferno",
            svg: dir.join("inferno.svg"),
            run: Box::new(inferno(None)),
        },
        // smolder leaves out frames under 0.1% of the width, inferno under
        // 0.01%: this run draws the same frames as smolder.
        Contender {
            name: "inferno --minwidth 0.1",
            svg: dir.join("inferno-minwidth.svg"),
            run: Box::new(inferno(Some("0.1"))),
        },
    ];
    println!(
        "## perf script ({label}, {:.0} MiB) -> SVG, {} runs each, order rotated per round",
        mib(std::fs::metadata(input)?.len()),
        config.runs
    );
    println!();
    println!("load average before: {}", load_average());
    println!();
    println!("| round | tool | wall s | CPU s | peak RSS MiB (max) | peak RSS MiB (sum) |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut runs: Vec<Vec<Cost>> = vec![Vec::new(); contenders.len()];
    for round in 0..config.runs {
        for k in 0..contenders.len() {
            // Rotate who goes first, so that no one always runs on a warmer cache.
            let i = (round + k) % contenders.len();
            let c = (contenders[i].run)(&contenders[i].svg)?;
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.1} | {:.1} |",
                round + 1,
                contenders[i].name,
                c.wall.as_secs_f64(),
                c.cpu.as_secs_f64(),
                kib_to_mib(c.max_rss_kib),
                kib_to_mib(c.sum_rss_kib)
            );
            runs[i].push(c);
        }
    }
    println!();
    println!("load average after: {}", load_average());
    let medians: Vec<Cost> = runs.iter().map(|r| median(r)).collect();
    let s = medians[0];
    println!();
    println!("| median | wall s | CPU s | peak RSS MiB (max) | peak RSS MiB (sum) | SVG bytes | frames drawn | smolder/x wall | smolder/x CPU | smolder/x RSS vs max | smolder/x RSS vs sum |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (c, m) in contenders.iter().zip(&medians) {
        let svg = std::fs::read_to_string(&c.svg)?;
        println!(
            "| {} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            c.name,
            m.wall.as_secs_f64(),
            m.cpu.as_secs_f64(),
            kib_to_mib(m.max_rss_kib),
            kib_to_mib(m.sum_rss_kib),
            svg.len(),
            svg.matches("<title>").count(),
            s.wall.as_secs_f64() / m.wall.as_secs_f64(),
            s.cpu.as_secs_f64() / m.cpu.as_secs_f64(),
            s.max_rss_kib as f64 / m.max_rss_kib as f64,
            s.max_rss_kib as f64 / m.sum_rss_kib as f64,
        );
    }
    println!();
    println!(
        "smolder: {}",
        std::fs::read_to_string(log("smolder"))?.trim()
    );
    println!();
    Ok(())
}

/// `/proc/loadavg`'s 1, 5 and 15-minute figures: the machine is shared.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Samples (OTLP `Sample` messages, pprof `Sample`s) in a written profile.
fn samples_in(path: &Path) -> Result<(usize, usize)> {
    let data = read_profile(&std::fs::read(path)?)?.data;
    let otlp = data
        .resource_profiles
        .iter()
        .flat_map(|r| &r.scope_profiles)
        .flat_map(|s| &s.profiles)
        .map(|p| p.samples.len())
        .sum();
    Ok((otlp, to_pprof(&data).sample.len()))
}

fn bytes(dir: &Path, inputs: &Inputs) -> Result<()> {
    let smolder = smolder_bin()?;
    println!("## bytes per perf sample: OTLP binary vs pprof, both gzip");
    println!();
    println!(
        "| input | perf samples | OTLP gzip B | B/sample | pprof gzip B | B/sample | OTLP / pprof | OTLP raw B | pprof raw B | raw OTLP / pprof | OTLP Sample msgs | pprof samples |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, input, n) in [
        ("recording", &inputs.seed, inputs.seed_samples),
        ("expanded", &inputs.large, inputs.large_samples),
    ] {
        let convert = |out: &Path, format: &str, gzip: bool| -> Result<u64> {
            let mut cmd = Command::new(&smolder);
            cmd.arg("convert").arg(input).arg("-o").arg(out);
            cmd.args(["--format", format]);
            if gzip {
                cmd.arg("--gzip");
            }
            run_one(&mut cmd, Stdio::null(), &dir.join("convert.log"))?;
            Ok(std::fs::metadata(out)?.len())
        };
        let otlp_gz = dir.join(format!("{name}.otlp.pb.gz"));
        let otlp = dir.join(format!("{name}.otlp.pb"));
        let pprof = dir.join(format!("{name}.pprof.pb.gz"));
        let otlp_gz_b = convert(&otlp_gz, "otlp", true)?;
        let otlp_b = convert(&otlp, "otlp", false)?;
        let pprof_b = convert(&pprof, "pprof", false)?;
        let pprof_raw_b = gunzip(&std::fs::read(&pprof)?)?.len() as u64;
        let (otlp_samples, _) = samples_in(&otlp_gz)?;
        let (_, pprof_samples) = samples_in(&pprof)?;
        let per = |b: u64| b as f64 / n as f64;
        println!(
            "| {name} | {n} | {otlp_gz_b} | {:.2} | {pprof_b} | {:.2} | {:.2} | {otlp_b} | {pprof_raw_b} | {:.2} | {otlp_samples} | {pprof_samples} |",
            per(otlp_gz_b),
            per(pprof_b),
            otlp_gz_b as f64 / pprof_b as f64,
            otlp_b as f64 / pprof_raw_b as f64,
        );
    }
    println!();
    io::stdout().flush()?;
    Ok(())
}
