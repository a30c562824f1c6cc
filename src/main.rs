//! The `c2q` command-line tool.

use clap::Parser;

fn main() {
    c2q::runtime::alloc::keep_freed_memory();
    quiet_broken_pipe();
    let cli = c2q::cli::Cli::parse();
    if let Err(e) = c2q::cli::main_with(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `c2q ... | head`: once the reader has gone, printing fails with EPIPE (Rust ignores
/// SIGPIPE) and `println!` panics. End quietly with status 0 instead, as a Unix tool stopped
/// by the closed pipe would look to the shell; every other panic keeps the default report.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}
