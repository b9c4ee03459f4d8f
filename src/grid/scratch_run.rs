//! Running a from-scratch comparison grid: each model is trained once (into
//! `OUT/train/<i>-<name>/`, resumable like `gpt-ablate train`), then each cell (model ×
//! dataset) is scored in one pass with the baseline model, giving the usual row (perplexity,
//! ratio, KL divergence from the baseline model, top-1 agreement) plus the training account.
//! Rows, resume, shards and merge work as in other grids; cells are keyed by content.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::Device;
use serde::Serialize;

use crate::data::read_data;
use crate::eval::perplexity::{score_windows, token_nlls, token_nlls_with_lse};
use crate::eval::plan::ScoringPlan;
use crate::eval::protocol::Protocol;
use crate::grid::charts::write_charts;
use crate::grid::results::{self, Row, RowIdentity, ScoreSums};
use crate::grid::runner::{RunSettings, RunSummary};
use crate::grid::scratch::ScratchGrid;
use crate::grid::training::{cell_dir, run_training, summarise, RowTraining, RunInfo};
use crate::kernels;
use crate::model::load::{load, LoadOptions};
use crate::model::CausalLm;
use crate::provenance::{self, sha256_bytes};
use crate::train::charts::{points, LineChart, Series};
use crate::train::log::{read_log, LogRecord};
use crate::train::origin::Start;
use crate::train::run::TrainSpec;

/// One cell: model `model` of the grid scored on dataset `dataset`.
#[derive(Debug, Clone)]
struct ScratchCell {
    index: usize,
    model: usize,
    dataset: usize,
    key: String,
}

/// A held-out dataset, tokenized.
struct Held {
    tokens: Vec<u32>,
    bytes: usize,
    sha256: String,
}

/// A trained model and its training account.
struct Trained {
    model: Box<dyn CausalLm>,
    training: RowTraining,
}

/// Runs the grid into `settings.out`, skipping cells already there.
pub fn run_scratch(grid: &ScratchGrid, settings: &RunSettings) -> anyhow::Result<RunSummary> {
    let started_at = provenance::now_rfc3339();
    let device = settings.device.open()?;
    let held = read_held(grid)?;
    let train_sha = sha256_bytes(read_data(&grid.train_data)?.as_bytes());
    let cells: Vec<ScratchCell> = all_cells(grid, &held, &train_sha)
        .into_iter()
        .filter(|c| settings.shard.is_none_or(|s| s.contains(c.index)))
        .collect();
    let _lock = crate::grid::runner::lock_output(&settings.out)?;
    let jsonl = settings.out.join("results.jsonl");
    let mut rows = results::read_jsonl_repairing(&jsonl)?;
    let wanted: BTreeSet<&str> = cells.iter().map(|c| c.key.as_str()).collect();
    if let Some(stale) = rows.iter().find(|r| !wanted.contains(r.key.as_str())) {
        bail!("{} holds results for other inputs (cell '{}'): the config, data or shard changed; use a new --out", jsonl.display(), stale.variant);
    }
    let done: BTreeSet<String> = rows.iter().map(|r| r.key.clone()).collect();
    let pending: Vec<&ScratchCell> = cells.iter().filter(|c| !done.contains(&c.key)).collect();
    let mut manifest = ScratchManifest::new(grid, settings, cells.len(), rows.len(), started_at);
    manifest.write(&settings.out)?;
    let mut trained: BTreeMap<usize, Trained> = BTreeMap::new();
    for cell in &pending {
        for m in [0, cell.model] {
            if let std::collections::btree_map::Entry::Vacant(e) = trained.entry(m) {
                e.insert(train_model(grid, settings, &device, m)?);
            }
        }
        let started = Instant::now();
        let mut row = score_cell(
            grid,
            &held[cell.dataset],
            &trained[&0],
            &trained[&cell.model],
            cell,
        )?;
        row.seconds = started.elapsed().as_secs_f64();
        results::append_jsonl(&jsonl, &row)?;
        rows.push(row);
        rows.sort_by_key(|r| r.index);
        results::write_atomic(
            &settings.out.join("results.csv"),
            results::to_csv(&rows).as_bytes(),
        )?;
        manifest.cells.done = rows.len();
        manifest.write(&settings.out)?;
    }
    manifest.finished_at = Some(provenance::now_rfc3339());
    manifest.write(&settings.out)?;
    results::write_atomic(
        &settings.out.join("results.csv"),
        results::to_csv(&rows).as_bytes(),
    )?;
    let mut files = write_charts(&rows, &settings.out)?;
    files.extend(curve_charts(&rows, &settings.out)?);
    Ok(RunSummary {
        ran: pending.len(),
        skipped: cells.len() - pending.len(),
        rows,
        files,
    })
}

fn read_held(grid: &ScratchGrid) -> anyhow::Result<Vec<Held>> {
    grid.datasets
        .iter()
        .map(|d| {
            let text = read_data(d)?;
            let tokens = grid
                .scratch
                .tokenizer
                .encode(&text)
                .with_context(|| format!("tokenizing {}", d.display()))?;
            Ok(Held {
                tokens,
                bytes: text.len(),
                sha256: sha256_bytes(text.as_bytes()),
            })
        })
        .collect()
}

/// Every cell with its content key: the architecture, training text and settings, the
/// model's and the baseline's activations, the dataset and the windows.
fn all_cells(grid: &ScratchGrid, held: &[Held], train_sha: &str) -> Vec<ScratchCell> {
    #[derive(Serialize)]
    struct Key<'a> {
        architecture: &'a serde_json::Value,
        baseline: Vec<String>,
        context: usize,
        dataset: &'a str,
        per_layer: Vec<String>,
        stride: usize,
        train: String,
        train_sha256: &'a str,
    }
    let names = |i: usize| {
        grid.models[i]
            .plan
            .per_layer
            .iter()
            .map(|a| a.name())
            .collect()
    };
    let mut cells = Vec::new();
    for m in 0..grid.models.len() {
        for (d, h) in held.iter().enumerate() {
            let key = Key {
                architecture: &grid.scratch.config_json,
                baseline: names(0),
                context: grid.context,
                dataset: &h.sha256,
                per_layer: names(m),
                stride: grid.stride,
                train: format!("{:?} steps {}", grid.train, grid.steps),
                train_sha256: train_sha,
            };
            let json = serde_json::to_string(&key).unwrap_or_default();
            cells.push(ScratchCell {
                index: cells.len(),
                model: m,
                dataset: d,
                key: sha256_bytes(json.as_bytes())[..16].to_string(),
            });
        }
    }
    cells
}

/// Trains (or resumes, or reads back) model `m` of the grid and loads its final weights.
fn train_model(
    grid: &ScratchGrid,
    settings: &RunSettings,
    device: &Device,
    m: usize,
) -> anyhow::Result<Trained> {
    let model = &grid.models[m];
    let dir = cell_dir(&settings.out, m, &model.name);
    eprintln!(
        "training '{}' from scratch into {}",
        model.name,
        dir.display()
    );
    let options = grid
        .train
        .options(grid.steps, None, grid.context, grid.stride);
    let spec = TrainSpec {
        start: Start::Scratch(grid.from_scratch.clone()),
        swap: model.swap.clone(),
        calibrate: false,
        data: grid.train_data.clone(),
        eval_data: grid.datasets.first().cloned(),
        options,
        device: device.clone(),
        device_name: settings.device.to_string(),
        threads: settings.threads,
        out: dir.clone(),
        terminal: false,
        command: std::env::args().collect(),
    };
    let (summary, log) =
        run_training(&spec).with_context(|| format!("training '{}'", model.name))?;
    let data = grid.train_data.display().to_string();
    // The peak learning rate (the schedule's first steps are warm-up).
    let lr = log.iter().filter_map(|r| r.lr).fold(0.0, f64::max);
    let run = RunInfo {
        kind: "scratch",
        out: &settings.out,
        dir: &dir,
        train_data: &data,
        lr,
        target_loss: grid.train.target_loss,
    };
    let training = summarise(run, &summary, &log);
    let opts = LoadOptions {
        device: device.clone(),
        ..LoadOptions::default()
    };
    let loaded = load(&dir.join("final"), &opts)?;
    Ok(Trained {
        model: loaded.model,
        training,
    })
}

/// Pass totals of a model against the baseline model.
#[derive(Default)]
struct Totals {
    nll_base: f64,
    nll: f64,
    kl: f64,
    agree: usize,
    n: usize,
}

/// Scores `cell`'s model against the baseline model on one dataset, in one pass.
fn score_cell(
    grid: &ScratchGrid,
    held: &Held,
    base: &Trained,
    variant: &Trained,
    cell: &ScratchCell,
) -> anyhow::Result<Row> {
    let plan = ScoringPlan::hf(held.tokens.clone(), grid.context, grid.stride);
    let models: Vec<&dyn CausalLm> = vec![base.model.as_ref(), variant.model.as_ref()];
    let mut t = Totals::default();
    score_windows(
        &models,
        &plan,
        grid.batch_size,
        &mut |_, _| {},
        &mut |chunk| {
            let fail = |e| chunk.fail(e);
            let (lb, lv) = (
                chunk.logits(0).map_err(fail)?,
                chunk.logits(1).map_err(fail)?,
            );
            let rows = kernels::kl_and_agreement(&lb, &lv).map_err(fail)?;
            let (nb, nv) = (
                token_nlls(&lb, chunk.targets).map_err(fail)?,
                token_nlls_with_lse(&lv, &rows.lse_q, chunk.targets).map_err(fail)?,
            );
            t.kl += rows.kl.iter().sum::<f64>();
            t.agree += rows.agree.iter().filter(|&&a| a).count();
            t.nll_base += nb.iter().sum::<f64>();
            t.nll += nv.iter().sum::<f64>();
            t.n += nv.len();
            match t.nll.is_finite() && t.nll_base.is_finite() {
                true => Ok(()),
                false => Err(chunk.non_finite()),
            }
        },
    )
    .with_context(|| format!("scoring '{}'", grid.models[cell.model].name))?;
    Ok(row(grid, held, variant, cell, &t))
}

fn row(grid: &ScratchGrid, held: &Held, variant: &Trained, cell: &ScratchCell, t: &Totals) -> Row {
    let id = RowIdentity {
        key: cell.key.clone(),
        index: cell.index,
        model: grid.from_scratch.display().to_string(),
        dataset: grid.datasets[cell.dataset].display().to_string(),
        variant: grid.models[cell.model].name.clone(),
        is_baseline: cell.model == 0,
        sweep: None,
        plan: &grid.models[cell.model].plan,
        protocol: Protocol::Hf {
            context: grid.context,
            stride: grid.stride,
        },
    };
    let sums = ScoreSums {
        tokens: t.n,
        bytes: held.bytes,
        nll: t.nll,
        nll_base: t.nll_base,
        kl: t.kl,
        agree: t.agree,
    };
    Row {
        training: Some(variant.training.clone()),
        ..Row::scored(id, &sums)
    }
}

/// Curves of every model with a row in `out` (its log read from its training directory):
/// training loss, held-out perplexity, and the gradient norm into the first block, against
/// the step; mean gradient norm by layer.
fn curve_charts(rows: &[Row], out: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut runs: Vec<(&str, &RowTraining, Vec<LogRecord>)> = Vec::new();
    for r in rows {
        if let Some(t) = &r.training {
            if !runs.iter().any(|(n, _, _)| *n == r.variant) {
                runs.push((
                    &r.variant,
                    t,
                    read_log(&out.join(&t.dir).join("log.jsonl"))?,
                ));
            }
        }
    }
    let series = |value: &dyn Fn(&LogRecord) -> Option<f64>| -> Vec<Series> {
        runs.iter()
            .map(|(name, _, log)| Series {
                name: name.to_string(),
                points: points(log, value),
            })
            .collect()
    };
    let by_layer = runs
        .iter()
        .map(|(name, t, _)| Series {
            name: name.to_string(),
            points: t
                .grad_norms
                .iter()
                .map(|g| (g.layer as f64, g.block_input_mean))
                .collect(),
        })
        .collect();
    let charts = [
        LineChart::new(
            "train_loss",
            "Training loss by activation (trained from scratch)",
            "step",
            "mean NLL (nats/token)",
            series(&|r| r.loss),
            false,
        ),
        LineChart::new(
            "train_perplexity",
            "Held-out perplexity during training",
            "step",
            "perplexity (log scale)",
            series(&|r| r.eval_perplexity),
            true,
        ),
        LineChart::new(
            "train_grad_first_layer",
            "‖∂loss/∂x‖ into the first block during training",
            "step",
            "gradient norm (log scale)",
            series(&|r| r.layers.first().map(|g| g.block_input)),
            true,
        ),
        LineChart::new(
            "train_grad_by_layer",
            "‖∂loss/∂x‖ into each block, mean over training",
            "layer",
            "gradient norm (log scale)",
            by_layer,
            true,
        ),
    ];
    let mut files = Vec::new();
    for c in charts {
        files.extend(c.write(out)?);
    }
    Ok(files)
}

/// `manifest.json` of a from-scratch grid (`merge` reads `config.sha256` and `cells.total`).
#[derive(Serialize)]
struct ScratchManifest {
    tool: &'static str,
    version: &'static str,
    git_commit: Option<&'static str>,
    kind: &'static str,
    config: ScratchConfigInfo,
    cells: ScratchCounts,
    /// None here: every model is trained by the run (`merge` compares the lists).
    models: Vec<()>,
    /// The training text, then the held-out datasets, with their hashes (`merge` refuses
    /// shards whose data differ).
    datasets: Vec<DataHash>,
    device: String,
    threads: usize,
    shard: Option<String>,
    started_at: String,
    finished_at: Option<String>,
}

#[derive(Serialize)]
struct ScratchConfigInfo {
    path: String,
    sha256: String,
    text: String,
    from_scratch: String,
    architecture: serde_json::Value,
}

#[derive(Serialize)]
struct DataHash {
    path: String,
    sha256: String,
}

/// The hash of each data file (empty when a named dataset or `hf:` path is no file).
fn data_hashes(grid: &ScratchGrid) -> Vec<DataHash> {
    std::iter::once(&grid.train_data)
        .chain(&grid.datasets)
        .map(|p| DataHash {
            path: p.display().to_string(),
            sha256: provenance::sha256_file(p).unwrap_or_default(),
        })
        .collect()
}

#[derive(Serialize)]
struct ScratchCounts {
    done: usize,
    in_shard: usize,
    total: usize,
}

impl ScratchManifest {
    fn new(
        grid: &ScratchGrid,
        s: &RunSettings,
        in_shard: usize,
        done: usize,
        started_at: String,
    ) -> Self {
        Self {
            tool: "gpt-ablate",
            version: provenance::VERSION,
            git_commit: provenance::git_commit(),
            kind: "from-scratch comparison",
            config: ScratchConfigInfo {
                path: grid.path.display().to_string(),
                sha256: sha256_bytes(grid.text.as_bytes()),
                text: grid.text.clone(),
                from_scratch: grid.from_scratch.display().to_string(),
                architecture: grid.scratch.config_json.clone(),
            },
            cells: ScratchCounts {
                done,
                in_shard,
                total: grid.models.len() * grid.datasets.len(),
            },
            models: Vec::new(),
            datasets: data_hashes(grid),
            device: s.device.to_string(),
            threads: s.threads,
            shard: s.shard.map(|s| s.to_string()),
            started_at,
            finished_at: None,
        }
    }

    fn write(&self, out: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        results::write_atomic(&out.join("manifest.json"), text.as_bytes())
    }
}
