//! The `smolder` binary: parses the command line and reports any failure
//! as one line on stderr with exit status 1.

mod cli;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            // `{:#}` prints the context chain on one line: "file: what is wrong".
            eprintln!("smolder: error: {err:#}");
            std::process::exit(1);
        }
    }
}
