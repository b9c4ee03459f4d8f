//! The `gpt-ablate` binary: parse, run, report errors on one line.

use clap::Parser;

fn main() -> std::process::ExitCode {
    gpt_ablate::runtime::tune_allocator();
    let cli = gpt_ablate::cli::Cli::parse();
    match gpt_ablate::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", gpt_ablate::cli::error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
