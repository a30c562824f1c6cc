//! The `c2q` command-line tool.

use clap::Parser;

fn main() {
    c2q::runtime::alloc::keep_freed_memory();
    let cli = c2q::cli::Cli::parse();
    if let Err(e) = c2q::cli::main_with(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
