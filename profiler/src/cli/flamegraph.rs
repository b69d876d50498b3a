//! `smolder flamegraph`: profile files to an SVG flamegraph, or a
//! differential flamegraph of two profiles.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use smolder_flamegraph::{render, render_diff, render_stacks, FlamegraphOptions};
use smolder_profiles_proto::{merge, parse_trace_id, retain_trace};

use super::io::{read_input, read_input_stacks, write_output_with, InputArgs};

#[derive(Args, Debug)]
pub struct FlamegraphArgs {
    /// Input profiles (any format smolder reads, detected by content); several are merged
    #[arg(required_unless_present = "diff")]
    pub inputs: Vec<PathBuf>,
    /// Differential flamegraph: BEFORE AFTER (red grew, blue shrank)
    #[arg(long, num_args = 2, value_names = ["BEFORE", "AFTER"], conflicts_with = "inputs")]
    pub diff: Option<Vec<PathBuf>>,
    /// Scale BEFORE to AFTER's total before comparing (differential only)
    #[arg(long, requires = "diff")]
    pub normalize: bool,
    /// Output SVG file (`-` for stdout)
    #[arg(short, long)]
    pub output: PathBuf,
    /// Title of the graph
    #[arg(long, default_value = "smolder")]
    pub title: String,
    /// A root frame per process
    #[arg(long)]
    pub per_process: bool,
    /// A frame per thread (under its process with --per-process)
    #[arg(long)]
    pub per_thread: bool,
    /// Leave out kernel frames
    #[arg(long)]
    pub no_kernel: bool,
    /// Leave out inlined frames (keep the function they were inlined into)
    #[arg(long)]
    pub no_inline: bool,
    /// Icicle graph: roots at the top
    #[arg(long, alias = "reverse")]
    pub icicle: bool,
    /// Use inferno's plain hot palette instead of colouring by frame type
    #[arg(long)]
    pub no_type_colors: bool,
    /// Only the samples linked to this trace (32 hex digits): OTLP links, or
    /// the `trace_id` label of pprof input
    #[arg(long, value_name = "ID", conflicts_with = "diff")]
    pub trace_id: Option<String>,
    /// Draw the profiles of this sample type (`type` or `type/unit`, e.g.
    /// `off_cpu` for where threads waited, drawn in blues); default: the first
    #[arg(long, value_name = "TYPE")]
    pub sample_type: Option<String>,
    /// Leave out frames narrower than this percentage of the graph's width
    /// (inferno's `--minwidth`, whose default is 0.01)
    #[arg(long, visible_alias = "minwidth", value_name = "PERCENT", default_value_t = 0.1,
          value_parser = parse_min_width)]
    pub min_width: f64,
    #[command(flatten)]
    pub input_args: InputArgs,
}

impl FlamegraphArgs {
    fn options(&self) -> FlamegraphOptions {
        FlamegraphOptions {
            title: self.title.clone(),
            process_roots: self.per_process,
            thread_roots: self.per_thread,
            kernel_frames: !self.no_kernel,
            inlined_frames: !self.no_inline,
            icicle: self.icicle,
            sample_type: self.sample_type.clone(),
            color_by_frame_type: !self.no_type_colors,
            normalize: self.normalize,
            min_width: self.min_width,
            ..FlamegraphOptions::default()
        }
    }
}

/// A percentage from 0 to 100.
fn parse_min_width(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a percentage from 0 to 100")),
    }
}

pub fn run(args: &FlamegraphArgs) -> Result<()> {
    let options = args.options();
    let read_options = args.input_args.read_options();
    let out = &args.output;
    if let Some(paths) = &args.diff {
        let [before, after] = paths.as_slice() else {
            bail!("--diff takes exactly two files: BEFORE AFTER");
        };
        let before_data = read_input(before, &read_options)?.data;
        let after_data = read_input(after, &read_options)?.data;
        let mut summary = None;
        write_output_with(out, |w| {
            summary = Some(
                render_diff(&before_data, &after_data, &options, w)
                    .context("cannot draw the differential flamegraph")?,
            );
            Ok(())
        })?;
        if let Some(s) = summary {
            eprintln!("{} -> {}: {s}", before.display(), after.display());
        }
        return Ok(());
    }
    let mut summary = None;
    match (args.inputs.as_slice(), &args.trace_id) {
        // One input, all of it: its stacks are all the graph needs (for
        // `perf script` text, collapsed straight from the text).
        ([input], None) => {
            let stacks = read_input_stacks(input, &read_options, &options.fold_options())?.stacks;
            write_output_with(out, |w| {
                summary =
                    Some(render_stacks(stacks, &options, w).context("cannot draw the flamegraph")?);
                Ok(())
            })?;
        }
        (inputs, trace) => {
            let mut decoded: Vec<_> = inputs
                .iter()
                .map(|p| read_input(p, &read_options))
                .collect::<Result<_>>()?;
            if let Some(hex) = trace {
                let trace_id = parse_trace_id(hex).map_err(anyhow::Error::msg)?;
                let kept: usize = decoded
                    .iter_mut()
                    .map(|d| retain_trace(&mut d.data, trace_id))
                    .sum();
                if kept == 0 {
                    bail!("no sample is linked to trace {hex}");
                }
            }
            let data = match decoded.as_slice() {
                [one] => one.data.clone(),
                many => merge(many.iter().map(|d| &d.data)),
            };
            write_output_with(out, |w| {
                summary = Some(render(&data, &options, w).context("cannot draw the flamegraph")?);
                Ok(())
            })?;
        }
    }
    if let Some(s) = summary {
        eprintln!("wrote {}: {s}", out.display());
    }
    Ok(())
}
