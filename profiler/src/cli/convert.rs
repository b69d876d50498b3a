//! `smolder convert`: one profile file to another format.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use smolder_profiles_proto::{
    gzip, write_chrome_cpuprofile, write_folded_comm_rooted, write_profile, write_speedscope,
    FoldOptions, Format,
};

use super::io::{read_input, write_output, InputArgs};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OutputFormat {
    /// OTLP protobuf (ProfilesData; the same bytes are a valid ExportProfilesServiceRequest)
    Otlp,
    /// OTLP/JSON
    OtlpJson,
    /// pprof profile.proto, gzip-compressed
    Pprof,
    /// folded stacks (`a;b;c COUNT`)
    Folded,
    /// speedscope's JSON file format (one sampled profile per process)
    Speedscope,
    /// Chrome `.cpuprofile` JSON, which the Firefox Profiler, Chrome DevTools and speedscope open
    Cpuprofile,
}

impl OutputFormat {
    /// The profiles-proto format, for the formats it can also read.
    pub fn format(self) -> Option<Format> {
        match self {
            OutputFormat::Otlp => Some(Format::OtlpBinary),
            OutputFormat::OtlpJson => Some(Format::OtlpJson),
            OutputFormat::Pprof => Some(Format::Pprof),
            OutputFormat::Folded => Some(Format::Folded),
            OutputFormat::Speedscope | OutputFormat::Cpuprofile => None,
        }
    }

    fn describe(self) -> String {
        match (self.format(), self) {
            (Some(format), _) => format.to_string(),
            (None, OutputFormat::Speedscope) => "speedscope JSON".into(),
            (None, _) => "Chrome cpuprofile JSON".into(),
        }
    }
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input profile: OTLP (binary or JSON), pprof, folded stacks or `perf script` text, plain or gzip; `-` for stdin
    pub input: PathBuf,
    /// Output file (`-` for stdout)
    #[arg(short, long)]
    pub output: PathBuf,
    /// Output format
    #[arg(short, long, value_enum)]
    pub format: OutputFormat,
    /// gzip-compress the output (pprof is always compressed)
    #[arg(long)]
    pub gzip: bool,
    /// Folded output: the command name of each sample (perf's comm) as the
    /// root frame, as inferno-collapse-perf writes it
    #[arg(long)]
    pub process_root: bool,
    #[command(flatten)]
    pub input_args: InputArgs,
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    if args.process_root && !matches!(args.format, OutputFormat::Folded) {
        bail!("--process-root applies to --format folded only");
    }
    let decoded = read_input(&args.input, &args.input_args.read_options())?;
    let mut bytes = if args.process_root {
        write_folded_comm_rooted(&decoded.data, &FoldOptions::default()).into_bytes()
    } else {
        match args.format.format() {
            Some(format) => write_profile(&decoded.data, format)?,
            None if matches!(args.format, OutputFormat::Speedscope) => {
                let name = args.input.file_name().map_or_else(
                    || "smolder".to_owned(),
                    |n| n.to_string_lossy().into_owned(),
                );
                write_speedscope(&decoded.data, &name)
            }
            None => write_chrome_cpuprofile(&decoded.data),
        }
    };
    if args.gzip && !matches!(args.format, OutputFormat::Pprof) {
        bytes = gzip(&bytes);
    }
    write_output(&args.output, &bytes)?;
    eprintln!(
        "{} ({}{}) -> {} ({}, {} bytes)",
        args.input.display(),
        decoded.format,
        if decoded.gzip { ", gzip" } else { "" },
        args.output.display(),
        args.format.describe(),
        bytes.len()
    );
    Ok(())
}
