//! `gpt-ablate inspect`: describe a checkpoint without loading its weights.

use clap::Args;

use super::args::ModelRefArgs;
use crate::model::inspect::inspect;

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub source: ModelRefArgs,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(args: InspectArgs) -> anyhow::Result<()> {
    let report = inspect(&args.source.files()?)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.report());
    }
    Ok(())
}
