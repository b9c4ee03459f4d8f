//! `gpt-ablate run` on a from-scratch comparison grid (a config with `from_scratch`).

use std::path::PathBuf;

use super::output::print_rows;
use super::run::RunArgs;
use crate::grid::results;
use crate::grid::runner::RunSettings;
use crate::grid::scratch::ScratchGrid;
use crate::grid::scratch_run::run_scratch;
use crate::provenance;
use crate::runtime::{self, Precision};

pub(super) fn run(args: RunArgs, text: &str) -> anyhow::Result<()> {
    let grid = ScratchGrid::parse(&args.config, text)?;
    if args.dtype.is_some_and(|d| d != Precision::F32) {
        anyhow::bail!("--dtype: from-scratch grids train and score in f32");
    }
    if args.dry_run {
        print_cells(&grid, &args);
        return Ok(());
    }
    runtime::set_threads(args.threads.or(grid.threads))?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(provenance::utc_compact(std::time::SystemTime::now()))
    });
    let settings = RunSettings {
        out: out.clone(),
        shard: args.shard,
        device: args.device.or(grid.device).unwrap_or_default(),
        dtype: grid.dtype(),
        threads: runtime::threads(),
        progress: true,
    };
    let summary = run_scratch(&grid, &settings)?;
    print_rows(&summary.rows, grid.sort, args.json)?;
    eprintln!(
        "{} cell(s) computed, {} already done; results in {} (results.jsonl, results.csv, manifest.json, train/, charts)",
        summary.ran,
        summary.skipped,
        out.display()
    );
    Ok(())
}

/// `--dry-run`: one line per cell (model × dataset), saying whether this shard runs it.
fn print_cells(grid: &ScratchGrid, args: &RunArgs) {
    let mut index = 0;
    for m in &grid.models {
        for d in &grid.datasets {
            let mine = args.shard.is_none_or(|s| s.contains(index));
            println!(
                "{index:>4}  {}  {:<28} trained from scratch {} steps, scored on {}",
                if mine { "run " } else { "skip" },
                m.name,
                grid.steps,
                results::short_name(&d.display().to_string()),
            );
            index += 1;
        }
    }
}
