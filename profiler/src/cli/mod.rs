//! The `smolder` command line: one subcommand per entry point. Each
//! subcommand module owns its arguments and its run function; `io` owns
//! reading inputs and writing outputs atomically.

pub mod convert;
pub mod flamegraph;
pub mod io;
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
    /// Draw an SVG flamegraph from profile files (OTLP, pprof, folded, perf script)
    Flamegraph(flamegraph::FlamegraphArgs),
    /// Convert a profile file between OTLP binary, OTLP JSON, pprof and folded stacks
    Convert(convert::ConvertArgs),
    /// Addresses of an ELF file, a process or the kernel to functions, files and lines
    Symbolize(symbolize::SymbolizeArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Flamegraph(args) => flamegraph::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Symbolize(args) => symbolize::run(&args),
    }
}
