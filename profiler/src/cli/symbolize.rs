//! `smolder symbolize`: addresses of an ELF file, a process or the kernel
//! to functions, files and lines, printed like `addr2line -f -i -C` or as
//! one JSON object per address.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args};
use smolder_symbolizer::{format_addr2line, format_json_line, AddressKind, Source, Symbolizer};

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["elf", "pid", "kernel"])))]
#[command(group(ArgGroup::new("kind").args(["vaddr", "offset"])))]
pub struct SymbolizeArgs {
    /// Addresses in hex (0x optional); read from stdin (whitespace-separated) when none are given
    pub addresses: Vec<String>,
    /// An ELF file (executable, shared library or debug file)
    #[arg(long, value_name = "PATH")]
    pub elf: Option<PathBuf>,
    /// A running process; addresses are absolute
    #[arg(short, long)]
    pub pid: Option<u32>,
    /// The running kernel and its modules (/proc/kallsyms); addresses are absolute
    #[arg(long)]
    pub kernel: bool,
    /// With --elf: addresses are virtual addresses (the default)
    #[arg(long)]
    pub vaddr: bool,
    /// With --elf: addresses are file offsets
    #[arg(long)]
    pub offset: bool,
    /// Print each address before its frames, like `addr2line -a`
    #[arg(short = 'a', long)]
    pub addresses_header: bool,
    /// One JSON object per address: {"addr":"0x…","frames":[{"function","file","line","inlined"}]}
    #[arg(long)]
    pub json: bool,
    /// Root of separate debug files (`.build-id/xx/rest.debug`)
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/debug")]
    pub debug_root: PathBuf,
}

fn parse_address(text: &str) -> Result<u64> {
    let hex = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u64::from_str_radix(hex, 16).with_context(|| format!("{text:?} is not a hexadecimal address"))
}

pub fn run(args: &SymbolizeArgs) -> Result<()> {
    let mut texts = args.addresses.clone();
    if texts.is_empty() {
        for line in std::io::stdin().lock().lines() {
            texts.extend(
                line.context("reading addresses from stdin")?
                    .split_whitespace()
                    .map(str::to_owned),
            );
        }
    }
    if texts.is_empty() {
        bail!("no addresses given (on the command line or on stdin)");
    }
    let addresses = texts
        .iter()
        .map(|t| parse_address(t))
        .collect::<Result<Vec<u64>>>()?;
    let kind = if args.offset {
        AddressKind::FileOffset
    } else {
        AddressKind::VirtualAddress
    };
    let source = match (&args.elf, args.pid, args.kernel) {
        (Some(path), _, _) => Source::Elf {
            path,
            addresses: kind,
        },
        (_, Some(pid), _) => Source::Process { pid },
        _ => Source::Kernel,
    };
    let what = match &source {
        Source::Elf { path, .. } => path.display().to_string(),
        Source::Process { pid } => format!("process {pid}"),
        _ => "the kernel".to_owned(),
    };
    if let Some(path) = &args.elf {
        // A file that is not there is a mistake on the command line; a file
        // that is there but damaged still gives what can be found.
        let meta =
            std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
        if !meta.is_file() {
            bail!("{}: not a regular file", path.display());
        }
    }
    let symbolizer = Symbolizer::builder().debug_root(&args.debug_root).build();
    // The symbolizer's errors name their process or file.
    let results = symbolizer.symbolize(&source, &addresses)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for sym in &results {
        if args.json {
            format_json_line(sym, &mut out)?;
        } else {
            if args.addresses_header {
                writeln!(out, "0x{:016x}", sym.addr)?;
            }
            format_addr2line(sym, &mut out)?;
        }
    }
    out.flush()?;
    let stats = symbolizer.stats();
    if stats.files_refused > 0 {
        eprintln!(
            "smolder: {what}: {} mapped file(s) not opened (replaced, not a regular file, too large or outside the process's root)",
            stats.files_refused
        );
    }
    if stats.perf_maps_refused > 0 {
        eprintln!(
            "smolder: {what}: perf map skipped: not a regular file owned by the process inside its root, or over the cap"
        );
    }
    if stats.debug_links_refused > 0 {
        eprintln!(
            "smolder: {what}: {} debug link(s) refused: a .gnu_debuglink that is not a plain file name, or a .gnu_debugaltlink outside the debug root",
            stats.debug_links_refused
        );
    }
    if stats.errors() > 0 {
        eprintln!(
            "smolder: {what}: {} error(s) while reading symbols; frames that could not be named are shown as ??",
            stats.errors()
        );
    }
    Ok(())
}
