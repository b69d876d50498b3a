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

impl Cli {
    /// Parses the command line. Help and version print as clap prints them;
    /// a usage error is one line on stderr (what is wrong, without the usage
    /// text) and exit status 2.
    pub fn parse_or_exit() -> Cli {
        use clap::error::ErrorKind;
        match <Cli as Parser>::try_parse() {
            Ok(cli) => cli,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::DisplayHelp
                        | ErrorKind::DisplayVersion
                        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                ) =>
            {
                e.exit()
            }
            Err(e) => {
                eprintln!("smolder: error: {}", one_line(&e.to_string()));
                std::process::exit(2);
            }
        }
    }
}

/// A clap error message on one line: its lines up to the usage text.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_owned()
}

/// Sends `tracing` events to stderr, filtered by `SMOLDER_LOG` (a
/// `tracing` filter), else by `default`; no log at all when neither is
/// given.
fn init_log(default: Option<&str>) {
    let filter = match (
        tracing_subscriber::EnvFilter::try_from_env("SMOLDER_LOG"),
        default,
    ) {
        (Ok(filter), _) => filter,
        (Err(_), Some(default)) => tracing_subscriber::EnvFilter::new(default),
        (Err(_), None) => return,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs the subcommand; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Record(args) = &cli.command {
        // `record` prints its own summary; its log (the unwind tables it
        // builds, what it gives up on) only when SMOLDER_LOG asks for it.
        init_log(None);
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
