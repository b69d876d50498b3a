//! The `smolder` binary: parses the command line and reports any failure
//! as one line on stderr with exit status 1.

mod cli;

fn main() {
    let cli = cli::Cli::parse_or_exit();
    match cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            // `{:#}` prints the context chain on one line: "file: what is wrong".
            eprintln!("smolder: error: {err:#}");
            std::process::exit(1);
        }
    }
}
