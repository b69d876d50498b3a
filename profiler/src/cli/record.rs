//! `smolder record`: sample a command, some processes or the whole host
//! with the eBPF sampler, and write a symbolized profile or flamegraph.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use smolder_flamegraph::{render, FlamegraphOptions, OFF_CPU_SAMPLE_TYPE};
use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::{write_profile, Format};
use smolder_symbolizer::{Source, Symbolizer};

use super::io::write_output_with;
use smolder::agent::config::{parse_duration, parse_frequency};
use smolder::pipeline::Recording;
use smolder::sampler::{GatedChild, OffCpuConfig, Sampler, SamplerConfig, SamplerStats};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RecordFormat {
    /// flamegraph SVG
    Svg,
    /// OTLP protobuf
    Otlp,
    /// OTLP/JSON
    OtlpJson,
    /// pprof (gzip)
    Pprof,
    /// folded stacks
    Folded,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["all", "pid", "command"])))]
pub struct RecordArgs {
    /// Samples per second on each CPU
    #[arg(short = 'F', long, default_value_t = 99, value_parser = parse_frequency)]
    pub frequency: u64,
    /// Stop after this long (e.g. 30s, 500ms, 2m); default: until the command or processes exit, or Ctrl-C
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Output file
    #[arg(short, long, default_value = "smolder.svg")]
    pub output: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value_t = RecordFormat::Svg)]
    pub format: RecordFormat,
    /// Title of the flamegraph (svg)
    #[arg(long)]
    pub title: Option<String>,
    /// The whole host: every process on every CPU
    #[arg(short = 'a', long)]
    pub all: bool,
    /// These processes (all their threads, present and future, and the processes they start)
    #[arg(short, long, value_delimiter = ',', value_name = "PID[,PID...]")]
    pub pid: Vec<u32>,
    /// Also record where threads wait: an `off_cpu` profile (nanoseconds
    /// blocked, by the stack they blocked with) next to the CPU one
    #[arg(long)]
    pub off_cpu: bool,
    /// With --off-cpu: waits shorter than this are not recorded
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = parse_duration, requires = "off_cpu")]
    pub off_cpu_min: Duration,
    /// With --off-cpu: the chance that a wait is recorded, in (0, 1]; recorded
    /// waits count 1/P times, so totals estimate real time
    #[arg(long, value_name = "P", default_value_t = 1.0, value_parser = parse_probability, requires = "off_cpu")]
    pub off_cpu_probability: f64,
    /// A command to start and profile until it exits (after `--`)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// What `record` measured, printed when it ends.
struct Summary {
    duration: Duration,
    samples: u64,
    lost: u64,
    processes: usize,
    unwind_failures: u64,
    /// Samples walked only in part while a new binary's table was loading.
    partial: u64,
    tables: u64,
    table_bytes: u64,
    unsymbolized: u64,
    /// Samples of processes that exited before their mappings were read.
    vanished: u64,
    read_at_exec: u64,
    /// Mapped files the open rule refused (frames keep mapping + offset).
    files_refused: u64,
    /// Perf maps refused (FIFO, symbolic link, other owner) or capped.
    perf_maps_refused: u64,
    /// JIT frames named from perf maps.
    jit_named: u64,
    /// Off-CPU counters, when recorded.
    off_cpu: Option<SamplerStats>,
    /// Where the off-CPU flamegraph went (svg with --off-cpu).
    off_cpu_output: Option<PathBuf>,
    /// Python frames named, and processes running a CPython smolder has
    /// no layout for (native frames only).
    python_named: u64,
    python_unsupported: u64,
    /// Python frames whose code object was not readable as one (freed, or
    /// forged): kept by address.
    python_unreadable: u64,
    /// Python walks the kernel ended on memory not laid out as expected.
    python_layout_stops: u64,
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number (a probability in (0, 1], e.g. 0.1)"))?;
    if p > 0.0 && p <= 1.0 {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability in (0, 1]"))
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Runs `record`; returns the exit status of the recorded command, if any.
pub fn run(args: &RecordArgs) -> Result<Option<ExitStatus>> {
    if args.all as u8 + !args.pid.is_empty() as u8 + !args.command.is_empty() as u8 != 1 {
        bail!("give exactly one of -a, -p PID or -- CMD");
    }
    for &pid in &args.pid {
        if !alive(pid) {
            bail!("process {pid} not found");
        }
    }
    let symbolizer = Symbolizer::new();
    // Reading /proc/kallsyms takes long enough to lose samples if done after
    // attaching; do it first (the symbolizer keeps it).
    let _ = symbolizer.symbolize(&Source::Kernel, &[0]);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    runtime.block_on(record(args, Arc::new(symbolizer)))
}

async fn record(args: &RecordArgs, symbolizer: Arc<Symbolizer>) -> Result<Option<ExitStatus>> {
    let pid_filter = if args.all {
        None
    } else {
        Some(args.pid.clone())
    };
    let mut sampler = Sampler::start(SamplerConfig {
        frequency_hz: args.frequency,
        pid_filter,
        off_cpu: args.off_cpu.then(|| OffCpuConfig {
            min_blocked: args.off_cpu_min,
            probability: args.off_cpu_probability,
            ..OffCpuConfig::default()
        }),
        ..SamplerConfig::default()
    })
    .map_err(|e| {
        // A missing privilege is fully explained by the error itself; the
        // loader's own chain under it would only repeat EPERM.
        if e.is_unsupported() {
            anyhow::anyhow!("cannot start the eBPF sampler: {e}")
        } else {
            anyhow::Error::new(e).context("cannot start the eBPF sampler")
        }
    })?;
    let mut child = match args.command.is_empty() {
        true => None,
        false => {
            let mut gated = GatedChild::spawn(&args.command)?;
            sampler
                .add_pid(gated.id())
                .context("following the command")?;
            gated.release()?;
            Some(gated)
        }
    };
    let start = Instant::now();
    let deadline = args.duration.map(|d| start + d);
    let mut recording =
        Recording::new(symbolizer, args.frequency).with_snapshots(Some(sampler.snapshots()));
    let mut status = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            events = sampler.next_events() => {
                let execs = recording.feed(events.context("reading samples")?);
                // The command replaced smolder's image with its own: load its
                // unwind tables now rather than on its first partial samples.
                if let Some(pid) = child.as_ref().map(GatedChild::id).filter(|p| execs.contains(p)) {
                    if let Err(e) = sampler.load_process(pid) {
                        tracing::debug!("{e}");
                    }
                }
            }
            _ = &mut ctrl_c => break,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let Some(gated) = &mut child {
            if let Some(s) = gated.try_wait()? {
                status = Some(s);
                break;
            }
        }
        if !args.pid.is_empty() && !args.pid.iter().any(|&p| alive(p)) {
            break;
        }
    }
    // What the kernel already wrote is still in the ring buffer.
    recording.feed(sampler.next_events().await.context("reading samples")?);
    let elapsed = start.elapsed();
    if let (Some(gated), None) = (&mut child, status) {
        // Ctrl-C or the duration ended the recording: the command goes on
        // receiving the terminal's signals; wait for it as perf does.
        status = Some(gated.wait()?);
    }
    let stats = sampler.stats();
    drop(sampler);

    let data = recording.finish_interval().data;
    let agg = recording.stats().aggregator;
    let off_cpu_output = write(
        args,
        &data,
        agg.samples - agg.off_cpu_samples,
        agg.off_cpu_samples,
    )?;
    print_summary(
        &Summary {
            duration: elapsed,
            samples: agg.samples - agg.off_cpu_samples,
            lost: stats.lost,
            processes: data.resource_profiles.len(),
            unwind_failures: stats.user_read_faults
                + stats.truncated
                + stats.kernel_stack_errors
                + stats.user_no_unwind_info,
            partial: stats.user_unknown_mapping + stats.user_table_missing,
            tables: stats.unwind_tables,
            table_bytes: stats.unwind_table_bytes,
            unsymbolized: agg.unsymbolized_frames,
            vanished: agg.samples_of_vanished_processes,
            read_at_exec: agg.processes_read_at_exec,
            files_refused: agg.objects_unopenable,
            perf_maps_refused: agg.perf_maps_refused,
            jit_named: agg.jit_frames_named,
            off_cpu: args.off_cpu.then_some(stats),
            off_cpu_output,
            python_named: agg.python_frames_named,
            python_unsupported: agg.python_unsupported,
            python_unreadable: agg.python_frames_unreadable,
            python_layout_stops: stats.python_layout_stops,
        },
        args,
    );
    Ok(status)
}

/// Writes the profile; with `--off-cpu` and SVG output, the off-CPU graph
/// goes to a second file, whose path is returned. `cpu_samples` and
/// `off_cpu_samples` say which graphs have something to draw.
fn write(
    args: &RecordArgs,
    data: &ProfilesData,
    cpu_samples: u64,
    off_cpu_samples: u64,
) -> Result<Option<PathBuf>> {
    let format = match args.format {
        RecordFormat::Svg => {
            let title = args.title.clone().unwrap_or_else(|| default_title(args));
            if cpu_samples > 0 {
                let options = FlamegraphOptions {
                    title: title.clone(),
                    sample_type: Some("samples".into()),
                    ..FlamegraphOptions::default()
                };
                write_output_with(&args.output, |w| {
                    render(data, &options, w).context("cannot draw the flamegraph")?;
                    Ok(())
                })?;
            } else {
                eprintln!(
                    "smolder: no samples were taken (did the command run on a CPU?): no flamegraph written to {}",
                    args.output.display()
                );
            }
            if off_cpu_samples == 0 {
                return Ok(None);
            }
            let path = off_cpu_svg_path(&args.output);
            let options = FlamegraphOptions {
                title: format!("{title} (off-CPU)"),
                sample_type: Some(OFF_CPU_SAMPLE_TYPE.into()),
                ..FlamegraphOptions::default()
            };
            write_output_with(&path, |w| {
                render(data, &options, w).context("cannot draw the off-CPU flamegraph")?;
                Ok(())
            })?;
            return Ok(Some(path));
        }
        RecordFormat::Otlp => Format::OtlpBinary,
        RecordFormat::OtlpJson => Format::OtlpJson,
        RecordFormat::Pprof => Format::Pprof,
        RecordFormat::Folded => Format::Folded,
    };
    let bytes = write_profile(data, format)?;
    write_output_with(&args.output, |w| Ok(w.write_all(&bytes)?))?;
    Ok(None)
}

/// `out.svg` -> `out.off-cpu.svg`.
fn off_cpu_svg_path(output: &std::path::Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map_or_else(|| "smolder".into(), |s| s.to_string_lossy().into_owned());
    output.with_file_name(format!("{stem}.off-cpu.svg"))
}

fn default_title(args: &RecordArgs) -> String {
    if args.all {
        "smolder record -a".to_owned()
    } else if !args.pid.is_empty() {
        format!(
            "smolder record -p {}",
            args.pid
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    } else {
        format!("smolder record -- {}", args.command.join(" "))
    }
}

fn print_summary(s: &Summary, args: &RecordArgs) {
    eprintln!(
        "smolder: recorded {:.2}s at {} Hz: {} samples ({} lost), {} processes, {} unwinding failures, {} partial stacks, {} unwind tables ({} KiB), {} frames without a name{vanished}{skipped} -> {output}",
        s.duration.as_secs_f64(),
        args.frequency,
        s.samples,
        s.lost,
        s.processes,
        s.unwind_failures,
        s.partial,
        s.tables,
        s.table_bytes / 1024,
        s.unsymbolized,
        vanished = if s.vanished > 0 {
            format!(
                ", {} samples of processes that exited before they could be read",
                s.vanished
            )
        } else {
            String::new()
        },
        skipped = {
            let mut parts = Vec::new();
            if s.read_at_exec > 0 {
                parts.push(format!(
                    "{} processes read at their exec (gone before their samples were read)",
                    s.read_at_exec
                ));
            }
            if s.python_named > 0 {
                parts.push(format!("{} Python frames", s.python_named));
            }
            if s.python_unsupported > 0 {
                parts.push(format!(
                    "{} Python processes of an unknown layout (native frames only)",
                    s.python_unsupported
                ));
            }
            if s.python_unreadable > 0 {
                parts.push(format!(
                    "{} Python frames of unreadable code objects (kept by address)",
                    s.python_unreadable
                ));
            }
            if s.python_layout_stops > 0 {
                parts.push(format!(
                    "{} Python walks stopped on an unexpected layout",
                    s.python_layout_stops
                ));
            }
            if s.jit_named > 0 {
                parts.push(format!("{} JIT frames named from perf maps", s.jit_named));
            }
            if s.files_refused > 0 {
                parts.push(format!(
                    "{} mapped files not opened (replaced, not regular, too large or outside the process's root)",
                    s.files_refused
                ));
            }
            if let Some(o) = &s.off_cpu {
                parts.push(format!(
                    "off-CPU: {} waits recorded of {} blocking switches ({} shorter than the minimum, {} left out by the probability, {} not back through a system call, {} lost){}",
                    o.off_cpu_recorded,
                    o.off_cpu_switches,
                    o.off_cpu_skipped_short,
                    o.off_cpu_skipped_probability,
                    o.off_cpu_unmatched,
                    o.off_cpu_lost,
                    s.off_cpu_output
                        .as_ref()
                        .map(|p| format!(" (off-CPU graph: {})", p.display()))
                        .unwrap_or_default()
                ));
            }
            if s.perf_maps_refused > 0 {
                parts.push(format!(
                    "{} perf maps skipped (not a regular file owned by the process, or over the cap)",
                    s.perf_maps_refused
                ));
            }
            parts.iter().map(|p| format!(", {p}")).collect::<String>()
        },
        output = args.output.display()
    );
}

/// The exit code `smolder record -- CMD` passes through: the command's own,
/// or 128 + signal as a shell reports it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
