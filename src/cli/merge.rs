//! `gpt-ablate merge`: combine the output directories of `run --shard`.

use std::path::PathBuf;

use clap::Args;

use super::output::print_rows;

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Output directories of the shards (of one grid, run on the same inputs).
    #[arg(value_name = "DIR", required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where to write the merged results (a new directory, or an earlier merge's).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print the merged rows as one JSON array instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(args: MergeArgs) -> anyhow::Result<()> {
    let merged = crate::grid::merge(&args.dirs, &args.out)?;
    print_rows(&merged.rows, merged.sort, args.json)?;
    eprintln!(
        "merged {} row(s) from {} director(ies) into {}",
        merged.rows.len(),
        args.dirs.len(),
        args.out.display()
    );
    Ok(())
}
