//! The command line: one file per command, each with its `*Args` struct and the `run`
//! function the dispatch below calls. Parsing and printing live here; the numbers come from
//! the library modules.
//!
//! Shared: `args` (the model options and the help texts), `output` (JSON and result tables)
//! and the model interface `crate::model::CausalLm`.

mod args;
mod datasets;
mod diagnose;
mod generate;
mod inspect;
mod merge;
mod output;
mod perplexity;
mod run;

use clap::{Parser, Subcommand};

pub use args::{ModelArgs, ModelRefArgs};
use args::{
    DIAGNOSE_EXAMPLE, GENERATE_EXAMPLE, INSPECT_EXAMPLE, MERGE_EXAMPLE, PERPLEXITY_EXAMPLE,
    RUN_EXAMPLE,
};
pub use diagnose::DiagnoseArgs;
pub use generate::GenerateArgs;
pub use inspect::InspectArgs;
pub use merge::MergeArgs;
pub use perplexity::PerplexityArgs;
pub use run::RunArgs;

/// Swap the feed-forward activation of GPT-2-family checkpoints at load time and measure
/// what it costs.
#[derive(Debug, Parser)]
#[command(name = "gpt-ablate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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
    /// Per-layer diagnostics for the note's claims: saturation and |f′| (1), mean activation
    /// (2), gradient norms by depth (1), softmax vs sigmoid at the head (4).
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
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
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
    }
}
