//! Grid cells that train: the `[train]` table (how), a cell's training run in the output
//! directory (resumable like any `gpt-ablate train`), and what a row reports about it —
//! for a fine-tuned variant the perplexity after recovery beside the one right after the
//! swap, for a from-scratch cell the steps it took to reach a target loss; for both the
//! held-out curve and the gradient norms per layer over training.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::train::log::{read_log, LogRecord};
use crate::train::run::{train, TrainSpec, TrainSummary};
use crate::train::settings::TrainOptions;

/// The `[train]` table of a grid config: the training text and hyper-parameters (defaults
/// as `gpt-ablate train`'s, `steps` and `lr` overridable per variant).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainTable {
    /// Training text: a file (relative to the config), a named dataset or `hf:` path.
    pub data: Option<String>,
    pub steps: Option<usize>,
    #[serde(default = "batch")]
    pub batch_size: usize,
    pub seq_len: Option<usize>,
    #[serde(default = "one")]
    pub accumulate: usize,
    pub lr: Option<f64>,
    pub warmup: Option<usize>,
    #[serde(default = "decay")]
    pub weight_decay: f64,
    #[serde(default = "clip")]
    pub grad_clip: f64,
    #[serde(default)]
    pub seed: u64,
    pub eval_every: Option<usize>,
    /// Held-out tokens evaluated during training (the final scores use the whole dataset).
    pub eval_tokens: Option<usize>,
    /// From-scratch grids: report the first step where the training loss reaches this.
    pub target_loss: Option<f64>,
}

fn batch() -> usize {
    8
}
fn one() -> usize {
    1
}
fn decay() -> f64 {
    0.1
}
fn clip() -> f64 {
    1.0
}

impl Default for TrainTable {
    fn default() -> Self {
        Self {
            data: None,
            steps: None,
            batch_size: batch(),
            seq_len: None,
            accumulate: one(),
            lr: None,
            warmup: None,
            weight_decay: decay(),
            grad_clip: clip(),
            seed: 0,
            eval_every: None,
            eval_tokens: None,
            target_loss: None,
        }
    }
}

impl TrainTable {
    /// Options for `steps` steps at `lr` (the table's unless given), evaluating with the
    /// grid's windows.
    pub fn options(
        &self,
        steps: usize,
        lr: Option<f64>,
        context: usize,
        stride: usize,
    ) -> TrainOptions {
        TrainOptions {
            steps,
            batch_size: self.batch_size,
            seq_len: self.seq_len,
            accumulate: self.accumulate,
            lr: lr.or(self.lr),
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: self.grad_clip,
            seed: self.seed,
            eval_every: self.eval_every.or(Some((steps / 5).max(1))),
            eval_context: Some(context),
            eval_stride: Some(stride),
            eval_tokens: self.eval_tokens,
            save_every: self.eval_every.or(Some((steps / 5).max(1))),
        }
    }
}

/// A variant's recovery fine-tuning: steps, learning rate (`None`: `[train]`'s or the
/// default), and the text (never the scored datasets unless named).
#[derive(Debug, Clone, PartialEq)]
pub struct Finetune {
    pub steps: usize,
    pub lr: Option<f64>,
    pub train_data: PathBuf,
}

impl Finetune {
    /// Checks a variant's `finetune_steps`, `lr` and `train_data` (else `[train]` `data`,
    /// relative to the config's directory `base`).
    pub fn resolve(
        steps: usize,
        lr: Option<f64>,
        train_data: Option<&str>,
        table: &TrainTable,
        base: &Path,
    ) -> Result<Self, String> {
        if steps == 0 {
            return Err("finetune_steps must be at least 1".into());
        }
        if lr.is_some_and(|l| !(l > 0.0 && l.is_finite())) {
            return Err(format!(
                "lr must be a positive number, got {}",
                lr.unwrap_or_default()
            ));
        }
        let data = train_data.or(table.data.as_deref()).ok_or(
            "finetune_steps needs a text to train on: train_data in the variant or data in [train]",
        )?;
        let p = base.join(data);
        let train_data = if p.is_file() {
            p
        } else if crate::data::is_data_name(data) {
            PathBuf::from(data)
        } else {
            return Err(format!("train_data: {} does not exist, and {data} is not a named dataset or an hf:ORG/NAME/path", p.display()));
        };
        Ok(Self {
            steps,
            lr,
            train_data,
        })
    }
}

/// What a fine-tuned cell's key adds: every training setting (the text by name; a changed
/// text is caught by the training run's own identity check).
pub fn finetune_key(f: &Finetune, table: &TrainTable) -> String {
    format!("{f:?} {table:?}")
}

/// One layer's gradient norms over a run's steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerGradSummary {
    pub layer: usize,
    /// ‖∂loss/∂x‖ into the block: mean over steps, first step, last step.
    pub block_input_mean: f64,
    pub block_input_first: f64,
    pub block_input_last: f64,
    /// ‖∂loss/∂W‖ of the layer's first MLP weight (`fc` or `gate`), mean over steps.
    pub mlp_first_mean: f64,
}

/// What a cell's training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowTraining {
    /// `finetune` (after the swap) or `scratch`.
    pub kind: String,
    /// The training run's directory, relative to the grid's output directory.
    pub dir: String,
    pub train_data: String,
    pub steps: usize,
    pub lr: f64,
    pub tokens_seen: u64,
    pub tokens_per_second: f64,
    pub final_loss: Option<f64>,
    pub target_loss: Option<f64>,
    /// The first step whose mean training loss over the last 10 steps is at most
    /// `target_loss` (`None`: never reached, or no target).
    pub steps_to_target: Option<usize>,
    /// Held-out perplexity against the step (step 0: before training).
    pub curve: Vec<(usize, f64)>,
    pub grad_norms: Vec<LayerGradSummary>,
    /// Fine-tuning: the recovered model scored as the cell is (perplexity, ratio to the
    /// baseline, KL divergence from it, top-1 agreement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity_after: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_after: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_after: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1_after: Option<f64>,
}

/// Runs (or resumes, or only reads) a cell's training; returns its summary and log.
pub fn run_training(spec: &TrainSpec) -> anyhow::Result<(TrainSummary, Vec<LogRecord>)> {
    let summary = train(spec)?;
    let log = read_log(&spec.out.join("log.jsonl"))?;
    Ok((summary, log))
}

/// Which training run a row describes: its kind (`scratch`, `finetune`), its directory
/// `dir` under the grid's `out`, its data, peak learning rate and target loss.
pub struct RunInfo<'a> {
    pub kind: &'a str,
    pub out: &'a Path,
    pub dir: &'a Path,
    pub train_data: &'a str,
    pub lr: f64,
    pub target_loss: Option<f64>,
}

/// The row's account of a training run.
pub fn summarise(run: RunInfo<'_>, s: &TrainSummary, log: &[LogRecord]) -> RowTraining {
    let RunInfo {
        kind,
        out,
        dir,
        train_data,
        lr,
        target_loss,
    } = run;
    let steps: Vec<&LogRecord> = log.iter().filter(|r| r.loss.is_some()).collect();
    RowTraining {
        kind: kind.to_string(),
        dir: dir.strip_prefix(out).unwrap_or(dir).display().to_string(),
        train_data: train_data.to_string(),
        steps: s.steps,
        lr,
        tokens_seen: s.tokens_seen,
        tokens_per_second: s.tokens_per_second,
        final_loss: s.final_loss,
        target_loss,
        steps_to_target: target_loss.and_then(|t| steps_to_target(&steps, t)),
        curve: log
            .iter()
            .filter_map(|r| r.eval_perplexity.map(|p| (r.step, p)))
            .collect(),
        grad_norms: grad_summary(&steps),
        perplexity_after: None,
        ratio_after: None,
        kl_after: None,
        top1_after: None,
    }
}

/// The first step whose trailing 10-step mean loss is at most `target`.
fn steps_to_target(steps: &[&LogRecord], target: f64) -> Option<usize> {
    let losses: Vec<f64> = steps.iter().filter_map(|r| r.loss).collect();
    (0..losses.len()).find_map(|i| {
        let window = &losses[i.saturating_sub(9)..=i];
        let mean = window.iter().sum::<f64>() / window.len() as f64;
        (mean <= target).then_some(steps[i].step)
    })
}

fn grad_summary(steps: &[&LogRecord]) -> Vec<LayerGradSummary> {
    let n_layer = steps.first().map_or(0, |r| r.layers.len());
    let n = steps.len().max(1) as f64;
    (0..n_layer)
        .map(|l| {
            let block = |r: &&LogRecord| r.layers.get(l).map_or(0.0, |g| g.block_input);
            let mlp = |r: &&LogRecord| {
                r.layers
                    .get(l)
                    .and_then(|g| g.mlp.get("fc").or(g.mlp.get("gate")).copied())
                    .unwrap_or(0.0)
            };
            LayerGradSummary {
                layer: l,
                block_input_mean: steps.iter().map(block).sum::<f64>() / n,
                block_input_first: steps.first().map_or(0.0, block),
                block_input_last: steps.last().map_or(0.0, block),
                mlp_first_mean: steps.iter().map(mlp).sum::<f64>() / n,
            }
        })
        .collect()
}

/// A cell's training directory: `OUT/train/<index>-<name>` with the name made path-safe.
pub fn cell_dir(out: &Path, index: usize, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.join("train").join(format!("{index}-{safe}"))
}

/// Extra CSV columns of rows with training.
pub const CSV_COLUMNS: [&str; 6] = [
    "train_steps",
    "train_final_loss",
    "train_steps_to_target",
    "perplexity_after",
    "ratio_after",
    "kl_after",
];

/// The [`CSV_COLUMNS`] fields of a row (empty without training).
pub fn csv_fields(t: Option<&RowTraining>) -> Vec<String> {
    let o = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    match t {
        None => vec![String::new(); CSV_COLUMNS.len()],
        Some(t) => vec![
            t.steps.to_string(),
            o(t.final_loss),
            t.steps_to_target.map(|s| s.to_string()).unwrap_or_default(),
            o(t.perplexity_after),
            o(t.ratio_after),
            o(t.kl_after),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(step: usize, loss: f64) -> LogRecord {
        LogRecord {
            step,
            loss: Some(loss),
            ..LogRecord::default()
        }
    }

    #[test]
    fn steps_to_target_uses_the_trailing_mean() {
        let log: Vec<LogRecord> = (1..=30).map(|s| rec(s, 10.0 - s as f64 * 0.2)).collect();
        let steps: Vec<&LogRecord> = log.iter().collect();
        // Losses 9.8, 9.6, …; the 10-step mean at step s is 10 − 0.2·(s − 4.5).
        assert_eq!(steps_to_target(&steps, 7.0), Some(20));
        assert_eq!(steps_to_target(&steps, 9.9), Some(1));
        assert_eq!(steps_to_target(&steps, 1.0), None);
        assert!(TrainTable::default().data.is_none());
        assert_eq!(
            cell_dir(Path::new("o"), 3, "sigmoid, one layer@L2"),
            Path::new("o/train/3-sigmoid__one_layer_L2")
        );
    }
}
