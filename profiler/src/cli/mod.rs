//! The `smolder` command line: one subcommand per entry point. Each
//! subcommand module owns its arguments and its run function; `io` owns
//! reading inputs and writing outputs atomically.

pub mod agent;
pub mod convert;
pub mod flamegraph;
pub mod io;
pub mod record;
pub mod symbolize;

use clap::{Parser, Subcommand};

/// smolder: continuous profiling for Linux, speaking OpenTelemetry Profiles.
#[derive(Parser, Debug)]
#[command(name = "smolder", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Sample a command, some processes or the whole host with eBPF; write a flamegraph or a profile
    Record(record::RecordArgs),
    /// Draw an SVG flamegraph from profile files (OTLP, pprof, folded, perf script)
    Flamegraph(flamegraph::FlamegraphArgs),
    /// Convert a profile file between OTLP binary, OTLP JSON, pprof and folded stacks
    Convert(convert::ConvertArgs),
    /// Addresses of an ELF file, a process or the kernel to functions, files and lines
    Symbolize(symbolize::SymbolizeArgs),
    /// Always-on host profiling: export over OTLP/gRPC, keep files, serve a page and /metrics
    Agent(agent::AgentArgs),
}

/// Runs the subcommand; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Record(args) = &cli.command {
        return Ok(record::run(args)?.map_or(0, record::exit_code));
    }
    match cli.command {
        Command::Record(_) => unreachable!("handled above"),
        Command::Flamegraph(args) => flamegraph::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Symbolize(args) => symbolize::run(&args),
        Command::Agent(args) => agent::run(&args),
    }
    .map(|()| 0)
}
