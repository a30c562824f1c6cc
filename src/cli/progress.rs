//! Progress bars for long work (hidden when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar over `len` items (a spinner when `len` is 0), drawn on stderr only if it
/// is a terminal.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = if len == 0 {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::new(len)
    };
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, ETA {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}

/// Shows `done` of `total` items on `pb` (for work whose total is known only once it starts,
/// such as the images a database can give).
pub fn show(pb: &ProgressBar, done: usize, total: usize) {
    pb.set_length(total as u64);
    pb.set_position(done as u64);
}
