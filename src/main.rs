//! The `gpt-ablate` binary: parse, run, report errors on one line.

use clap::Parser;

fn main() -> std::process::ExitCode {
    gpt_ablate::runtime::tune_allocator();
    let cli = gpt_ablate::cli::Cli::parse();
    match gpt_ablate::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: candle appends a backtrace to some errors when RUST_BACKTRACE is set.
            let message = format!("{e:#}");
            eprintln!("Error: {}", message.lines().next().unwrap_or_default());
            std::process::ExitCode::FAILURE
        }
    }
}
