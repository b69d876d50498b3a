//! `smolder convert`: one profile file to another format.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use smolder_profiles_proto::{gzip, write_profile, Format};

use super::io::{read_input, write_output};

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
}

impl OutputFormat {
    pub fn format(self) -> Format {
        match self {
            OutputFormat::Otlp => Format::OtlpBinary,
            OutputFormat::OtlpJson => Format::OtlpJson,
            OutputFormat::Pprof => Format::Pprof,
            OutputFormat::Folded => Format::Folded,
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
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    let decoded = read_input(&args.input)?;
    let mut bytes = write_profile(&decoded.data, args.format.format())?;
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
        args.format.format(),
        bytes.len()
    );
    Ok(())
}
