//! The command line: one file per command, each with its `*Args` struct and the `run`
//! function the dispatch below calls. Parsing and printing live here; the numbers come from
//! the library modules.
//!
//! Shared: `args` (the model options and the help texts), `output` (JSON and result tables)
//! and the model interface `crate::model::CausalLm`.

mod args;
mod calibrate;
mod datasets;
mod diagnose;
mod generate;
mod inspect;
mod merge;
mod output;
mod perplexity;
mod protocol;
mod run;
mod run_scratch;
mod train;

use clap::{Parser, Subcommand};

pub use args::{ModelArgs, ModelRefArgs};
use args::{
    DIAGNOSE_EXAMPLE, GENERATE_EXAMPLE, INSPECT_EXAMPLE, MERGE_EXAMPLE, PERPLEXITY_EXAMPLE,
    RUN_EXAMPLE, TRAIN_EXAMPLE,
};
pub use diagnose::DiagnoseArgs;
pub use generate::GenerateArgs;
pub use inspect::InspectArgs;
pub use merge::MergeArgs;
pub use perplexity::PerplexityArgs;
pub use run::RunArgs;
pub use train::TrainArgs;

/// Swap the feed-forward activation of causal language models (GPT-2, GPT-NeoX, OPT, Llama,
/// Qwen2) at load time and measure what it costs.
#[derive(Debug, Parser)]
#[command(name = "gpt-ablate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// No progress bars or progress lines (results, warnings and errors are still printed).
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Next-token perplexity (softmax outputs) of a checkpoint on a text file.
    #[command(after_long_help = PERPLEXITY_EXAMPLE)]
    Perplexity(PerplexityArgs),
    /// Run an ablation grid from a TOML config: every variant against the baseline, with
    /// perplexity, KL divergence and top-1 agreement; resumable and shardable.
    #[command(after_long_help = RUN_EXAMPLE)]
    Run(RunArgs),
    /// Per-layer diagnostics of the case against sigmoid: saturation and |f′| (vanishing
    /// gradients), gradient norms by depth, mean activation (centring), the perplexity change,
    /// and sigmoid instead of softmax at the output.
    #[command(after_long_help = DIAGNOSE_EXAMPLE)]
    Diagnose(DiagnoseArgs),
    /// Generate text with a (swapped) model: KV cache, greedy or sampled, streamed.
    #[command(after_long_help = GENERATE_EXAMPLE)]
    Generate(GenerateArgs),
    /// List the named datasets `--data` accepts besides file paths.
    Datasets,
    /// Describe a checkpoint (local directory or Hub id) without loading it: config,
    /// parameters, dtypes, key layout, files with sizes and SHA-256.
    #[command(after_long_help = INSPECT_EXAMPLE)]
    Inspect(InspectArgs),
    /// Combine the output directories of `run --shard` into one result set.
    #[command(after_long_help = MERGE_EXAMPLE)]
    Merge(MergeArgs),
    /// Train a model from scratch, or fine-tune one after an activation swap (recovery):
    /// AdamW, warm-up + cosine, clipping, held-out perplexity, checkpoints, resume.
    #[command(after_long_help = TRAIN_EXAMPLE)]
    Train(TrainArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    crate::progress::set_quiet(cli.quiet);
    dispatch(cli).map_err(args::at_flags)
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Perplexity(args) => perplexity::run(args),
        Command::Run(args) => run::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Diagnose(args) => diagnose::run(args),
        Command::Datasets => datasets::run(),
        Command::Merge(args) => merge::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Train(args) => train::run(args),
    }
}

/// An error as the one line the binary prints: each cause after the message that carries
/// it, first lines only (candle appends a backtrace to some errors when RUST_BACKTRACE is
/// set), and a cause whose text the line already holds is left out, so no text repeats.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for link in e.chain() {
        let text = link.to_string();
        let text = text.lines().next().unwrap_or_default().trim();
        if text.is_empty() || line.contains(text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_do_not_repeat_their_causes() {
        let io = std::io::Error::other("disk full");
        let e = anyhow::Error::new(crate::fsio::WriteError {
            path: "runs/x/results.csv".into(),
            cause: io,
        })
        .context("writing results");
        assert_eq!(
            error_line(&e),
            "writing results: cannot write runs/x/results.csv: disk full"
        );
        let e = anyhow::anyhow!("line one\nbacktrace").context("outer");
        assert_eq!(error_line(&e), "outer: line one");
    }

    /// Every flag and argument of every command says what it is for.
    #[test]
    fn every_flag_has_help_text() {
        let cli = <Cli as clap::CommandFactory>::command();
        let mut commands = vec![cli.clone()];
        commands.extend(cli.get_subcommands().cloned());
        for cmd in commands {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                let help = arg.get_help().or(arg.get_long_help());
                assert!(
                    help.is_some_and(|h| !h.to_string().trim().is_empty()),
                    "{} {id} has no help text",
                    cmd.get_name()
                );
            }
        }
    }
}
