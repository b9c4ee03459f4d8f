//! `gpt-ablate run`: an ablation grid from a TOML config.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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
    /// Output directory (default: runs/<UTC timestamp>). Reuse it to resume; one process at
    /// a time (it is locked while a run writes to it).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Run only cells whose index ≡ K (mod N), e.g. 0/4.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// Compute device: cpu, cuda, cuda:N or metal (overrides GPT_ABLATE_DEVICE and the
    /// config).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceSpec>,
    /// Compute precision (overrides GPT_ABLATE_DTYPE and the config).
    #[arg(long, value_enum)]
    pub dtype: Option<Precision>,
    /// CPU threads (overrides GPT_ABLATE_THREADS and the config).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Print the result rows as one JSON array instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Check the config and list its cells (run, skip: another shard's, done: already in
    /// --out), computing nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// A setting and where it came from (a flag, an environment variable or a config key), for
/// messages that name the right one.
struct Setting<T> {
    value: Option<T>,
    origin: &'static str,
}

/// The flag, else the environment variable `var` (an error naming `var` when it does not
/// parse), else the config's value.
fn resolve<T>(
    flag: Option<T>,
    flag_name: &'static str,
    var: &'static str,
    parse: impl Fn(&str) -> Result<T, String>,
    config: Option<T>,
    key: &'static str,
) -> anyhow::Result<Setting<T>> {
    if flag.is_some() {
        return Ok(Setting {
            value: flag,
            origin: flag_name,
        });
    }
    if let Ok(text) = std::env::var(var) {
        let value = parse(text.trim()).map_err(|e| anyhow::anyhow!("{var}='{text}': {e}"))?;
        return Ok(Setting {
            value: Some(value),
            origin: var,
        });
    }
    Ok(Setting {
        value: config,
        origin: key,
    })
}

/// Device, dtype and threads: flag > environment > config > default.
fn settings(
    args: &RunArgs,
    grid: &Grid,
) -> anyhow::Result<(DeviceSpec, Precision, Setting<usize>)> {
    let device = resolve(
        args.device,
        "--device",
        "GPT_ABLATE_DEVICE",
        |s| s.parse::<DeviceSpec>(),
        grid.device,
        "device",
    )?;
    let dtype = resolve(
        args.dtype,
        "--dtype",
        "GPT_ABLATE_DTYPE",
        |s| {
            <Precision as clap::ValueEnum>::from_str(s, true)
                .map_err(|_| "not one of f32, f16, bf16".to_string())
        },
        grid.dtype,
        "dtype",
    )?;
    let threads = resolve(
        args.threads,
        "--threads",
        "GPT_ABLATE_THREADS",
        |s| {
            s.parse::<usize>()
                .map_err(|_| "not a number of threads".to_string())
        },
        grid.threads,
        "threads (in the config)",
    )?;
    Ok((
        device.value.unwrap_or_default(),
        dtype.value.unwrap_or_default(),
        threads,
    ))
}

pub(super) fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Ok(text) = std::fs::read_to_string(&args.config) {
        if crate::grid::scratch::is_scratch_grid(&text) {
            return super::run_scratch::run(args, &text);
        }
    }
    let grid = Grid::from_file(&args.config)?;
    let (device, dtype, threads) = settings(&args, &grid)?;
    if args.dry_run {
        let done = match &args.out {
            Some(out) => runner::done_cells(&grid, out, dtype)?,
            None => BTreeSet::new(),
        };
        print_cells(&grid, args.shard, &done);
        return Ok(());
    }
    runtime::set_threads_from(threads.value, threads.origin, false)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(provenance::utc_compact(std::time::SystemTime::now()))
    });
    let settings = RunSettings {
        out: out.clone(),
        shard: args.shard,
        device,
        dtype,
        threads: runtime::threads(),
        progress: true,
    };
    let summary = runner::run(&grid, &settings)?;
    print_rows(&summary.rows, grid.sort, args.json)?;
    eprintln!(
        "{} cell(s) computed, {} already done; results in {} (results.jsonl, results.csv, manifest.json{})",
        summary.ran,
        summary.skipped,
        out.display(),
        file_names(&summary.files)
    );
    Ok(())
}

/// `, perplexity.svg, perplexity.png, …`.
fn file_names(files: &[PathBuf]) -> String {
    files
        .iter()
        .filter_map(|f| f.file_name().map(|n| format!(", {}", n.to_string_lossy())))
        .collect()
}

/// `--dry-run`: one line per cell — `run`, `skip` (another shard's) or `done` (its row is in
/// `--out` already) — and a count on stderr.
fn print_cells(grid: &Grid, shard: Option<Shard>, done: &BTreeSet<usize>) {
    let short = |p: &Path| results::short_name(&p.display().to_string());
    let (mut to_run, mut skipped) = (0, 0);
    for cell in grid.cells() {
        let mine = shard.is_none_or(|s| cell.index % s.n == s.k);
        let status = if done.contains(&cell.index) {
            "done"
        } else if mine {
            to_run += 1;
            "run "
        } else {
            skipped += 1;
            "skip"
        };
        println!(
            "{:>4}  {status}  {:<28} {:<24} {} × {}",
            cell.index,
            cell.name,
            cell.plan.describe(),
            results::short_name(&grid.models[cell.model].display().to_string()),
            short(&grid.datasets[cell.dataset]),
        );
    }
    eprintln!(
        "{} cell(s): {to_run} to run, {} done, {skipped} in other shards",
        grid.cells().len(),
        done.len()
    );
}
