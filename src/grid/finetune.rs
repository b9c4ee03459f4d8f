//! Recovery fine-tuning of a grid cell (`finetune_steps` on a variant): after the cell is
//! scored right after the swap, the swapped model is fine-tuned (a `gpt-ablate train` run in
//! `OUT/train/<index>-<name>/`, resumable) and the recovered model is scored again, the same
//! way, against the same baseline; the row gets both, and the recovery curve.

use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device};

use crate::grid::cells::Cell;
use crate::grid::score::{self, CellContext};
use crate::grid::training::{cell_dir, run_training, summarise, Finetune, RowTraining, RunInfo};
use crate::model::load::{load, LoadOptions};
use crate::model::plan::{ActivationMap, ActivationPlan, LayerSpec};
use crate::train::origin::Start;
use crate::train::run::TrainSpec;

/// Where and how a cell is fine-tuned.
pub(crate) struct FinetuneJob<'a> {
    pub cell: &'a Cell,
    pub key: &'a str,
    pub finetune: &'a Finetune,
    /// The checkpoint's local directory.
    pub model_dir: &'a Path,
    /// The grid's output directory.
    pub out: &'a Path,
    pub device: &'a Device,
    pub device_name: String,
    pub dtype: DType,
    pub threads: usize,
    /// Calibrate the swap (on the training text) before fine-tuning.
    pub calibrate: bool,
}

/// The swapped layers of `plan` as an activation map.
fn swap_of(plan: &ActivationPlan) -> ActivationMap {
    ActivationMap(
        plan.swapped_layers()
            .into_iter()
            .map(|l| (LayerSpec::Some([l].into()), plan.per_layer[l]))
            .collect(),
    )
}

/// Fine-tunes the cell's swapped model and scores the recovered one as `ctx` scores cells.
pub(crate) fn finetune_cell(job: &FinetuneJob, ctx: CellContext) -> anyhow::Result<RowTraining> {
    let (cell, ft) = (job.cell, job.finetune);
    let dir = cell_dir(job.out, cell.index, &cell.name);
    let protocol = ctx.plan.protocol;
    let context = protocol.context().min(ctx.base.info().n_positions);
    let stride = protocol.stride().clamp(1, context);
    let spec = TrainSpec {
        start: Start::Init {
            model: job.model_dir.display().to_string(),
            revision: None,
        },
        swap: Some(swap_of(&cell.plan)),
        calibrate: job.calibrate,
        data: ft.train_data.clone(),
        eval_data: Some(ctx.grid.datasets[cell.dataset].clone()),
        options: ctx.grid.train.options(ft.steps, ft.lr, context, stride),
        device: job.device.clone(),
        device_name: job.device_name.clone(),
        threads: job.threads,
        out: dir.clone(),
        terminal: false,
        command: std::env::args().collect(),
    };
    eprintln!(
        "fine-tuning '{}' for {} steps into {}",
        cell.name,
        ft.steps,
        dir.display()
    );
    let (summary, log) =
        run_training(&spec).with_context(|| format!("fine-tuning '{}'", cell.name))?;
    let opts = LoadOptions {
        device: job.device.clone(),
        dtype: job.dtype,
        ..LoadOptions::default()
    };
    let recovered = load(&dir.join("final"), &opts)?;
    let ctx = CellContext {
        variant: Some(recovered.model.as_ref()),
        fill: false,
        prefix: None, // every block was trained
        ..ctx
    };
    let (after, _) = score::score_cell(&ctx, cell, job.key, None, &mut |_, _| {})
        .with_context(|| format!("scoring the fine-tuned '{}'", cell.name))?;
    let lr = log.iter().filter_map(|r| r.lr).fold(0.0, f64::max);
    let data = ft.train_data.display().to_string();
    let run = RunInfo {
        kind: "finetune",
        out: job.out,
        dir: &dir,
        train_data: &data,
        lr,
        target_loss: None,
    };
    let mut t = summarise(run, &summary, &log);
    t.perplexity_after = Some(after.perplexity);
    t.ratio_after = Some(after.ratio_perplexity);
    t.kl_after = Some(after.kl_mean);
    t.top1_after = Some(after.top1_agreement);
    Ok(t)
}
