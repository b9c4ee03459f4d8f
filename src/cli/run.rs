//! `gpt-ablate run`: an ablation grid from a TOML config.

use std::path::PathBuf;

use clap::Args;

use super::output::print_rows;
use crate::grid::config::Grid;
use crate::grid::results;
use crate::grid::runner::{self, RunSettings};
use crate::grid::Shard;
use crate::provenance;
use crate::runtime::{self, DeviceSpec, Precision};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Grid config (TOML); relative paths inside it are relative to the file.
    #[arg(value_name = "CONFIG")]
    pub config: PathBuf,
    /// Output directory (default: runs/<UTC timestamp>). Reuse it to resume.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Run only cells whose index ≡ K (mod N), e.g. 0/4.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Compute device: cpu, cuda, cuda:N or metal (overrides the config).
    #[arg(long, value_name = "DEVICE", env = "GPT_ABLATE_DEVICE")]
    pub device: Option<DeviceSpec>,
    /// Compute precision (overrides the config).
    #[arg(long, value_enum, env = "GPT_ABLATE_DTYPE")]
    pub dtype: Option<Precision>,
    /// CPU threads (overrides the config).
    #[arg(long, value_name = "N", env = "GPT_ABLATE_THREADS")]
    pub threads: Option<usize>,
    /// Print the result rows as one JSON array instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Check the config and list its cells (and shard assignment), computing nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub(super) fn run(args: RunArgs) -> anyhow::Result<()> {
    let grid = Grid::from_file(&args.config)?;
    if args.dry_run {
        print_cells(&grid, args.shard);
        return Ok(());
    }
    // Flag (or environment, via clap) > config file > default.
    let threads = args.threads.or(grid.threads);
    runtime::set_threads(threads)?;
    let out = args.out.unwrap_or_else(|| {
        PathBuf::from("runs").join(provenance::utc_compact(std::time::SystemTime::now()))
    });
    let settings = RunSettings {
        out: out.clone(),
        shard: args.shard,
        device: args.device.or(grid.device).unwrap_or_default(),
        dtype: args.dtype.or(grid.dtype).unwrap_or_default(),
        threads: runtime::threads(),
        progress: runner::stderr_is_terminal(),
    };
    let summary = runner::run(&grid, &settings)?;
    print_rows(&summary.rows, grid.sort, args.json)?;
    eprintln!(
        "{} cell(s) computed, {} already done; results in {} (results.jsonl, results.csv, manifest.json{})",
        summary.ran,
        summary.skipped,
        out.display(),
        summary
            .files
            .iter()
            .filter_map(|f| f.file_name().map(|n| format!(", {}", n.to_string_lossy())))
            .collect::<String>()
    );
    Ok(())
}

/// `--dry-run`: one line per cell, saying whether this shard runs it.
fn print_cells(grid: &Grid, shard: Option<Shard>) {
    for cell in grid.cells() {
        let mine = shard.is_none_or(|s| cell.index % s.n == s.k);
        println!(
            "{:>4}  {}  {:<28} {:<24} {} × {}",
            cell.index,
            if mine { "run " } else { "skip" },
            cell.name,
            cell.plan.describe(),
            results::short_name(&grid.models[cell.model].display().to_string()),
            results::short_name(&grid.datasets[cell.dataset].display().to_string()),
        );
    }
}
