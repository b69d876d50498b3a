//! `perf script` text (or any input `smolder flamegraph` reads) to a
//! flamegraph SVG with the library alone, in a binary with a fifth of
//! `smolder`'s code: what the offline CLI's fast path costs without the
//! rest of the CLI linked in (bench/README.md §1, issue 18's memory floor).
//!
//! ```sh
//! cargo run --release -p smolder-flamegraph --example perf_to_svg -- perf.txt out.svg
//! ```

use std::error::Error;
use std::fs::File;
use std::io::{BufWriter, Write};

use smolder_flamegraph::{render_stacks, FlamegraphOptions};
use smolder_profiles_proto::{read_stacks_from, ReadOptions};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        return Err("usage: perf_to_svg INPUT OUTPUT.svg".into());
    };
    let options = FlamegraphOptions::default();
    let read = read_stacks_from(
        File::open(input)?,
        &ReadOptions::default(),
        &options.fold_options(),
    )?;
    let mut out = BufWriter::new(File::create(output)?);
    let summary = render_stacks(read.stacks, &options, &mut out)?;
    out.flush()?;
    eprintln!("{summary}");
    Ok(())
}
