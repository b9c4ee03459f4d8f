//! The ablation runner: executes a grid's cells, each variant scored in the same pass as the
//! unmodified model (so KL divergence and top-1 agreement need no logits files), appends a
//! row per finished cell, and can resume and shard (merging is in [`mod@crate::grid::merge`]).
//!
//! Output directory: `results.jsonl` (one flushed line per cell), `results.csv`,
//! `manifest.json` (inputs' SHA-256, settings, times) and charts (SVG + PNG).
//!
//! The model is built in one place, `Run::load_model`; scoring is in `grid::score`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};

use crate::eval::nll_output::NllWriter;
use crate::fsio::DirLock;
use crate::grid::cells::{Cell, Shard};
use crate::grid::charts::write_charts;
use crate::grid::config::Grid;
use crate::grid::finetune::{finetune_cell, FinetuneJob};
use crate::grid::inputs::Inputs;
use crate::grid::manifest::{CellCounts, Manifest};
use crate::grid::progress::Progress;
use crate::grid::results::{self, Row};
use crate::grid::score::{self, CellContext};
use crate::grid::training::{Finetune, RowTraining};
use crate::model::CausalLm;
use crate::provenance;
use crate::runtime::{DeviceSpec, Precision};
use crate::train::calibrate::{calibrate, Calibration, DEFAULT_CALIBRATION_TOKENS};
use crate::weights::TensorStore;

/// Settings resolved from flags, environment and the config file.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub out: PathBuf,
    pub shard: Option<Shard>,
    pub device: DeviceSpec,
    pub dtype: Precision,
    pub threads: usize,
    /// Show progress: a bar on a terminal, a line every few seconds in a log (nothing under
    /// `--quiet`, see [`crate::progress`]).
    pub progress: bool,
}

/// What a run did.
pub struct RunSummary {
    /// Every row in the output directory, in cell order.
    pub rows: Vec<Row>,
    pub ran: usize,
    pub skipped: usize,
    pub files: Vec<PathBuf>,
}

/// A cell of this run and its content key.
type KeyedCell = (Cell, String);

/// Runs `grid` into `settings.out`, skipping cells already there.
pub fn run(grid: &Grid, settings: &RunSettings) -> anyhow::Result<RunSummary> {
    let started_at = provenance::now_rfc3339();
    let device = settings.device.open()?;
    // 1. Everything that can fail on bad input, before computing anything.
    let inputs = Inputs::load(grid)?;
    // 2. The cells of this shard, keyed by content.
    let cells: Vec<KeyedCell> = grid
        .cells()
        .into_iter()
        .filter(|c| settings.shard.is_none_or(|s| s.contains(c.index)))
        .map(|c| {
            let k = inputs.cell_key(grid, settings.dtype, &c);
            (c, k)
        })
        .collect();
    // 3. The output directory, locked: resume what is there, refuse what belongs to other
    // inputs.
    let lock = lock_output(&settings.out)?;
    let (rows, pending) = resume(&settings.out, &cells)?;
    let skipped = cells.len() - pending.len();
    let counts = CellCounts {
        done: rows.len(),
        in_shard: cells.len(),
        skipped_as_already_done: skipped,
        total: grid.cells().len(),
    };
    let manifest = Manifest::new(grid, &inputs, settings, counts, started_at);
    let mut out = OutputDir::new(lock, rows, manifest)?;
    // 4. Compute. One unmodified model per checkpoint; variants share its weights.
    let run = Run {
        grid,
        inputs: &inputs,
        device,
        device_name: settings.device.to_string(),
        dtype: settings.dtype.dtype(),
    };
    let mut progress = Progress::new(settings.progress, pending.len(), run.total_work(&pending));
    run.compute(&pending, &mut out, &mut progress)?;
    progress.clear();
    // 5. Final CSV, manifest and charts.
    let (rows, files) = out.finish()?;
    Ok(RunSummary {
        rows,
        ran: pending.len(),
        skipped,
        files,
    })
}

/// The indices of the cells whose rows `out` holds already (for `--dry-run`); none when it
/// has no results. Reads and hashes the inputs, as a run would, to know the cells' keys.
pub fn done_cells(grid: &Grid, out: &Path, dtype: Precision) -> anyhow::Result<BTreeSet<usize>> {
    let jsonl = out.join("results.jsonl");
    if !jsonl.exists() {
        return Ok(BTreeSet::new());
    }
    let rows = results::read_jsonl(&jsonl)?;
    let keys: BTreeSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let inputs = Inputs::load(grid)?;
    Ok(grid
        .cells()
        .iter()
        .filter(|c| keys.contains(inputs.cell_key(grid, dtype, c).as_str()))
        .map(|c| c.index)
        .collect())
}

/// Creates the output directory and locks it for this process (a second run on it fails
/// with the holder's pid; the lock goes when the process does, even after `kill -9`).
pub fn lock_output(out: &Path) -> anyhow::Result<DirLock> {
    Ok(DirLock::create_and_acquire(out)?)
}

/// Reads the rows already in `out` (repairing a partial last line). Fails when a row belongs
/// to none of `cells`; else returns the rows and the cells still to run.
fn resume<'c>(
    out: &Path,
    cells: &'c [KeyedCell],
) -> anyhow::Result<(Vec<Row>, Vec<&'c KeyedCell>)> {
    let jsonl = out.join("results.jsonl");
    let rows = results::read_jsonl_repairing(&jsonl)?;
    let wanted: BTreeSet<&str> = cells.iter().map(|(_, k)| k.as_str()).collect();
    if let Some(stale) = rows.iter().find(|r| !wanted.contains(r.key.as_str())) {
        bail!(
            "{} holds results for other inputs (cell '{}' with key {}): the config, weights, data or shard changed; use a new --out",
            jsonl.display(),
            stale.variant,
            stale.key
        );
    }
    let done: BTreeSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let pending = cells
        .iter()
        .filter(|(_, k)| !done.contains(k.as_str()))
        .collect();
    Ok((rows, pending))
}

/// The output directory of a run, locked while it lives: its rows, kept in cell order, and
/// its manifest.
struct OutputDir {
    dir: PathBuf,
    rows: Vec<Row>,
    manifest: Manifest,
    _lock: DirLock,
}

impl OutputDir {
    /// Starts with the rows already there, and writes the manifest.
    fn new(lock: DirLock, rows: Vec<Row>, mut manifest: Manifest) -> anyhow::Result<Self> {
        let dir = lock.dir().to_path_buf();
        manifest.write(&dir)?;
        Ok(Self {
            dir,
            rows,
            manifest,
            _lock: lock,
        })
    }

    /// Appends a finished cell's row to `results.jsonl`, then rewrites the CSV and the
    /// manifest.
    fn record(&mut self, row: Row) -> anyhow::Result<()> {
        results::append_jsonl(&self.dir.join("results.jsonl"), &row)?;
        if let Some(c) = &row.calibration {
            let name = format!("{} × {} × {}", row.model, row.dataset, row.variant);
            self.manifest.calibrations.insert(name, c.clone());
        }
        self.rows.push(row);
        self.rows.sort_by_key(|r| r.index);
        self.write_csv()?;
        self.manifest.cells.done = self.rows.len();
        self.manifest.write(&self.dir)
    }

    fn write_csv(&self) -> anyhow::Result<()> {
        results::write_atomic(
            &self.dir.join("results.csv"),
            results::to_csv(&self.rows).as_bytes(),
        )
    }

    /// Writes the CSV, the manifest with its finishing time, and the charts; returns the
    /// rows and the chart files.
    fn finish(mut self) -> anyhow::Result<(Vec<Row>, Vec<PathBuf>)> {
        self.write_csv()?;
        self.manifest.cells.done = self.rows.len();
        self.manifest.finished_at = Some(provenance::now_rfc3339());
        self.manifest.write(&self.dir)?;
        let files = write_charts(&self.rows, &self.dir)?;
        Ok((self.rows, files))
    }
}

/// The smallest budget for the baseline cache of one model × dataset.
const CACHE_FLOOR_BYTES: u64 = 256 << 20;

/// The unmodified model's final hidden states at the scored positions of one model × dataset,
/// chunk by chunk in `score_windows` order. With it a variant cell runs one forward pass
/// instead of two: the baseline's logits come from the cached rows through the LM head.
/// Where the budget allows, also the residual stream entering some blocks (`taps`), batch
/// by batch: a variant that swaps only blocks from `l` on starts its pass at block `l`.
struct BaselineCache {
    pair: (usize, usize),
    chunks: Vec<Tensor>,
    /// The baseline's per-token NLLs per chunk, when its scored pass filled the cache.
    nlls: Vec<Vec<f64>>,
    taps: Vec<usize>,
    residuals: Vec<Vec<Tensor>>,
}

impl BaselineCache {
    fn new(pair: (usize, usize), taps: Vec<usize>, filled: score::Filled) -> Self {
        Self {
            pair,
            chunks: filled.chunks,
            nlls: filled.nlls,
            taps,
            residuals: filled.residuals,
        }
    }

    /// The latest tapped block at or before `cell`'s first swapped block, and its residuals
    /// (None for the baseline, a cell swapping block 0, or a cell whose model is not the
    /// baseline's with a new plan).
    fn prefix(&self, cell: &Cell, plain_swap: bool) -> Option<(usize, &[Tensor])> {
        let first = *cell.plan.swapped_layers().first()?;
        if !plain_swap || cell.is_baseline {
            return None;
        }
        let (i, &l) = self.taps.iter().enumerate().rfind(|(_, &l)| l <= first)?;
        Some((l, self.residuals.get(i)?.as_slice()))
    }
}

/// What computing cells needs: the grid, its inputs, and where and how to run models.
struct Run<'a> {
    grid: &'a Grid,
    inputs: &'a Inputs,
    device: Device,
    device_name: String,
    dtype: DType,
}

impl Run<'_> {
    /// Scores the pending cells in order, one loaded model at a time, recording each row as
    /// it finishes.
    fn compute(
        &self,
        pending: &[&KeyedCell],
        out: &mut OutputDir,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        let mut loaded: Option<(usize, Box<dyn CausalLm>)> = None;
        let mut cache: Option<BaselineCache> = None;
        for i in 0..pending.len() {
            let model = pending[i].0.model;
            if loaded.as_ref().is_none_or(|(mi, _)| *mi != model) {
                drop(loaded.take()); // free the previous model first
                loaded = Some((model, self.load_model(model)?));
            }
            let Some((_, base)) = loaded.as_ref() else {
                unreachable!("loaded above")
            };
            let row = self.run_cell(base, &mut cache, pending, i, &out.dir, progress)?;
            out.record(row)?;
        }
        Ok(())
    }

    /// Loads model `mi` with its own activation in every layer: the one place the runner
    /// builds a model.
    fn load_model(&self, mi: usize) -> anyhow::Result<Box<dyn CausalLm>> {
        let cfg = &self.grid.model_configs[mi];
        let base_plan = cfg.plan();
        let store = TensorStore::open(
            &self.inputs.models[mi].files.weights,
            self.dtype,
            &self.device,
        )?;
        crate::model::load::build(cfg, base_plan, store)
            .with_context(|| format!("loading weights from {}", self.grid.models[mi].display()))
    }

    /// Scores `pending[i]` (and its diagnostics), refilling or filling the baseline cache
    /// on the way. The row's `seconds` exclude a cache refill.
    fn run_cell(
        &self,
        base: &dyn CausalLm,
        cache: &mut Option<BaselineCache>,
        pending: &[&KeyedCell],
        i: usize,
        out_dir: &Path,
        progress: &mut Progress,
    ) -> anyhow::Result<Row> {
        let (cell, key) = pending[i];
        let pair = (cell.model, cell.dataset);
        let plan = self.inputs.plan(cell);
        let (fill, taps) = self.prepare_cache(base, cache, pending, i)?;
        let cell_work = self.work_of(cell, cache.is_some());
        let per_batch = cell_work / self.inputs.batches(self.grid, cell).max(1);
        let started = Instant::now();
        let calibrated = match cell.calibrate && !cell.is_baseline {
            true => Some(self.calibrate(base, cell, plan.protocol.context())?),
            false => None,
        };
        let dataset = &self.inputs.datasets[cell.dataset];
        let ctx = CellContext {
            grid: self.grid,
            base,
            plan,
            documents: &dataset.documents.docs,
            tokenizer: &self.inputs.models[cell.model].tokenizer,
            bytes: dataset.covered_bytes[cell.model],
            cache: cache.as_ref().map(|c| c.chunks.as_slice()),
            cached_nlls: cache.as_ref().map_or(&[], |c| c.nlls.as_slice()),
            fill,
            taps: &taps,
            prefix: cache
                .as_ref()
                .and_then(|c| c.prefix(cell, calibrated.is_none())),
            variant: calibrated.as_ref().map(|(m, _)| m.as_ref()),
        };
        let mut draw = |done: usize, _total: usize| progress.draw(i, &cell.name, done * per_batch);
        let (row, filled) = self.score_with_records(&ctx, cell, key, out_dir, &mut draw)?;
        // A fine-tuned variant (never a baseline cell, so the cache is not being filled).
        let training = match &cell.finetune {
            Some(finetune) => Some(self.finetune(ctx, cell, key, finetune, out_dir)?),
            None => None,
        };
        if fill {
            *cache = Some(BaselineCache::new(pair, taps, filled));
        }
        let diagnostics = if cell.diagnose {
            let (tokens, context) = (self.inputs.tokens(cell), plan.protocol.context());
            Some(score::diagnose_cell(base, cell, tokens, context)?)
        } else {
            None
        };
        progress.work_done += cell_work;
        Ok(Row {
            seconds: started.elapsed().as_secs_f64(),
            diagnostics,
            training,
            calibration: calibrated.map(|(_, c)| c),
            ..row
        })
    }

    /// Drops a cache of another model × dataset, and makes a new one when the pending cells
    /// want it: a variant cell refills it with one hidden-state pass (the baseline cell is
    /// done already); a baseline cell fills it as it is scored — then returns `true` and the
    /// blocks its pass taps.
    fn prepare_cache(
        &self,
        base: &dyn CausalLm,
        cache: &mut Option<BaselineCache>,
        pending: &[&KeyedCell],
        i: usize,
    ) -> anyhow::Result<(bool, Vec<usize>)> {
        let cell = &pending[i].0;
        let pair = (cell.model, cell.dataset);
        if cache.as_ref().is_some_and(|c| c.pair != pair) {
            *cache = None;
        }
        if cache.is_some() || !self.wants_cache(cell, &pending[i..]) {
            return Ok((false, Vec::new()));
        }
        let taps = self.taps(cell, &pending[i..]);
        if cell.is_baseline {
            return Ok((true, taps));
        }
        let plan = self.inputs.plan(cell);
        let filled = score::baseline_hidden(base, plan, self.grid.batch_size, &taps)
            .with_context(|| format!("baseline pass for cell '{}'", cell.name))?;
        *cache = Some(BaselineCache::new(pair, taps, filled));
        Ok((false, Vec::new()))
    }

    /// `calibrate = true`: the cell's swap fitted (as `perplexity --calibrate`) on the first
    /// 4,096 tokens of its dataset, in windows of the protocol's context.
    fn calibrate(
        &self,
        base: &dyn CausalLm,
        cell: &Cell,
        context: usize,
    ) -> anyhow::Result<(Box<dyn CausalLm>, Calibration)> {
        let tokens = self.inputs.tokens(cell);
        let n = tokens.len().min(DEFAULT_CALIBRATION_TOKENS);
        let context = context.min(base.info().n_positions);
        let swapped = base.with_plan(cell.plan.clone());
        let (plan, fits) = calibrate(swapped.as_ref(), &tokens[..n], context)
            .with_context(|| format!("calibrating cell '{}'", cell.name))?;
        Ok((base.with_plan(plan), fits))
    }

    /// Fine-tunes a variant cell after its swap and scores the recovered model.
    fn finetune(
        &self,
        ctx: CellContext,
        cell: &Cell,
        key: &str,
        finetune: &Finetune,
        out_dir: &Path,
    ) -> anyhow::Result<RowTraining> {
        let config = &self.inputs.models[cell.model].files.config;
        let job = FinetuneJob {
            cell,
            key,
            finetune,
            model_dir: config.parent().unwrap_or(Path::new(".")),
            out: out_dir,
            device: &self.device,
            device_name: self.device_name.clone(),
            dtype: self.dtype,
            threads: crate::runtime::threads(),
            calibrate: cell.calibrate,
        };
        finetune_cell(&job, ctx)
    }

    /// Scores a cell, writing its per-token file when `save_nll` is on (the row then names
    /// it).
    fn score_with_records(
        &self,
        ctx: &CellContext,
        cell: &Cell,
        key: &str,
        out_dir: &Path,
        draw: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<(Row, score::Filled)> {
        let mut records = self.nll_writer(out_dir, cell)?;
        let (row, filled) =
            score::score_cell(ctx, cell, key, records.as_mut().map(|(w, _)| w), draw)
                .with_context(|| format!("cell '{}'", cell.name))?;
        let nll_file = match records {
            Some((w, name)) => {
                w.finish()?;
                Some(name)
            }
            None => None,
        };
        Ok((Row { nll_file, ..row }, filled))
    }

    /// With `save_nll`: the cell's per-token file `nll/cell-INDEX.EXT` (its writer and its
    /// name relative to the output directory).
    fn nll_writer(
        &self,
        out_dir: &Path,
        cell: &Cell,
    ) -> anyhow::Result<Option<(NllWriter, String)>> {
        let Some(format) = self.grid.save_nll else {
            return Ok(None);
        };
        let name = format!("nll/cell-{:04}.{}", cell.index, format.extension());
        let path = out_dir.join(&name);
        std::fs::create_dir_all(out_dir.join("nll"))
            .with_context(|| format!("creating {}", out_dir.join("nll").display()))?;
        Ok(Some((NllWriter::create(&path, true)?, name)))
    }

    /// Whether to cache the baseline's hidden states for `cell`'s model × dataset: when they
    /// fit and more than one variant of the pair is left (or the baseline pass runs anyway).
    /// `rest` is the pending cells from `cell` on.
    fn wants_cache(&self, cell: &Cell, rest: &[&KeyedCell]) -> bool {
        let pair = (cell.model, cell.dataset);
        let variants_left = rest
            .iter()
            .filter(|(c, _)| (c.model, c.dataset) == pair && !c.is_baseline)
            .count();
        let n_embd = self.grid.model_configs[cell.model].info.hidden_size;
        let rows = self.inputs.plan(cell).tokens_scored();
        let cache_bytes = rows * n_embd * self.dtype.size_in_bytes();
        cache_bytes as u64 <= self.cache_budget(cell.model)
            && if cell.is_baseline {
                variants_left >= 1
            } else {
                variants_left >= 2
            }
    }

    /// The blocks whose entering residual stream the baseline pass keeps for `cell`'s model ×
    /// dataset: each pending variant's first swapped block (past block 0), the latest first —
    /// they save the most — while the cache stays within its budget.
    fn taps(&self, cell: &Cell, rest: &[&KeyedCell]) -> Vec<usize> {
        let pair = (cell.model, cell.dataset);
        let mut firsts: Vec<usize> = rest
            .iter()
            .filter(|(c, _)| (c.model, c.dataset) == pair && !c.is_baseline && !c.calibrate)
            .filter_map(|(c, _)| c.plan.swapped_layers().first().copied())
            .filter(|&l| l > 0)
            .collect();
        firsts.sort_unstable_by(|a, b| b.cmp(a));
        firsts.dedup();
        let n_embd = self.grid.model_configs[cell.model].info.hidden_size;
        let bytes_per = |rows: usize| (rows * n_embd * self.dtype.size_in_bytes()) as u64;
        let plan = self.inputs.plan(cell);
        let mut used = bytes_per(plan.tokens_scored());
        let per_tap = bytes_per(plan.windows.iter().map(|w| w.len()).sum());
        let budget = self.cache_budget(cell.model);
        let mut taps: Vec<usize> = firsts
            .into_iter()
            .take_while(|_| {
                used += per_tap;
                used <= budget
            })
            .collect();
        taps.sort_unstable();
        taps
    }

    /// What a baseline cache may hold for model `mi`: as much as the model's own files (the
    /// cache saves a pass of that model per variant; a cache larger than the model is worth
    /// less than the memory), at least 256 MiB, at most a quarter of the machine's memory.
    fn cache_budget(&self, mi: usize) -> u64 {
        let model_bytes: u64 = self.inputs.models[mi]
            .file_info
            .iter()
            .map(|f| f.bytes)
            .sum();
        let ceiling = crate::runtime::physical_memory_bytes().map_or(u64::MAX, |m| m / 4);
        model_bytes.max(CACHE_FLOOR_BYTES).min(ceiling)
    }

    /// Forward passes a cell takes: one model, or a variant and the baseline in lockstep.
    fn work_of(&self, cell: &Cell, cached: bool) -> usize {
        let models = if cell.is_baseline || cached { 1 } else { 2 };
        self.inputs.batches(self.grid, cell) * models
    }

    /// Forward passes of the pending cells, counting every variant as cached.
    fn total_work(&self, pending: &[&KeyedCell]) -> usize {
        pending.iter().map(|(c, _)| self.work_of(c, true)).sum()
    }
}
