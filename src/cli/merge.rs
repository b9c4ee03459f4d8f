//! `gpt-ablate merge`: combine the output directories of `run --shard`.

use std::path::{Path, PathBuf};

use clap::Args;

use super::output::print_rows;
use crate::grid::config::SortOrder;

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Output directories of the shards.
    #[arg(value_name = "DIR", required = true)]
    pub dirs: Vec<PathBuf>,
    /// Where to write the merged results.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print the merged rows as one JSON array instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(args: MergeArgs) -> anyhow::Result<()> {
    let rows = crate::grid::merge(&args.dirs, &args.out)?;
    print_rows(&rows, config_sort(&args.dirs[0]), args.json)?;
    eprintln!(
        "merged {} row(s) from {} director(ies) into {}",
        rows.len(),
        args.dirs.len(),
        args.out.display()
    );
    Ok(())
}

/// The order the original config asked for (`sort = "perplexity"`), read back from a shard's
/// manifest; config order when it says otherwise or cannot be read.
fn config_sort(shard_dir: &Path) -> SortOrder {
    let sort = std::fs::read_to_string(shard_dir.join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|m| m["config"]["text"].as_str().map(str::to_string))
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("sort").and_then(|v| v.as_str()).map(str::to_string));
    if sort.as_deref() == Some("perplexity") {
        SortOrder::Perplexity
    } else {
        SortOrder::Config
    }
}
