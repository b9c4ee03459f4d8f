//! What a training run is asked to do, and the same with every default resolved against the
//! model: the resolved settings are the run's identity (a rerun with other settings refuses
//! to resume), and are recorded in the manifest. Errors name fields neutrally (`seq_len`);
//! the command line says which flag that is.

use serde::{Deserialize, Serialize};

use crate::model::ModelInfo;

/// The settings as given; `None` takes the default.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub steps: usize,
    pub batch_size: usize,
    pub seq_len: Option<usize>,
    pub accumulate: usize,
    pub lr: Option<f64>,
    pub warmup: Option<usize>,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// 0: no clipping.
    pub grad_clip: f64,
    pub seed: u64,
    pub eval_every: Option<usize>,
    pub eval_context: Option<usize>,
    pub eval_stride: Option<usize>,
    pub eval_tokens: Option<usize>,
    pub save_every: Option<usize>,
}

/// Every setting that changes the numbers, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub steps: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub accumulate: usize,
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub grad_clip: Option<f64>,
    pub seed: u64,
    /// Held-out evaluation every this many steps (0: only before and after).
    pub eval_every: usize,
    pub eval_context: usize,
    pub eval_stride: usize,
    /// Evaluate on the first this many held-out tokens (`None`: all).
    pub eval_tokens: Option<usize>,
    /// A checkpoint every this many steps (0: only `final/`).
    pub save_every: usize,
}

/// A setting out of range: the field (neutral name) and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} {msg}")]
pub struct SettingsError {
    pub field: &'static str,
    pub msg: String,
}

fn bad(field: &'static str, msg: impl Into<String>) -> SettingsError {
    SettingsError {
        field,
        msg: msg.into(),
    }
}

impl TrainOptions {
    /// Resolves the defaults against `info`: `seq_len` = min(n_positions, 1024); `lr` = 1e-3
    /// from scratch, 1e-4 when fine-tuning; `warmup` = steps/10 (at most 100); `eval_every` =
    /// steps/10 (at least 1); `save_every` = `eval_every`; the evaluation windows those of
    /// `perplexity` (context n_positions, stride context/2).
    pub fn resolve(&self, info: &ModelInfo, scratch: bool) -> Result<TrainSettings, SettingsError> {
        let positive = |field, v: usize| match v {
            0 => Err(bad(field, "must be at least 1")),
            v => Ok(v),
        };
        let steps = positive("steps", self.steps)?;
        let seq_len = positive(
            "seq_len",
            self.seq_len.unwrap_or(info.n_positions.min(1024)),
        )?;
        if seq_len > info.n_positions {
            return Err(bad(
                "seq_len",
                format!(
                    "{seq_len} exceeds the model's {} positions",
                    info.n_positions
                ),
            ));
        }
        let lr = self.lr.unwrap_or(if scratch { 1e-3 } else { 1e-4 });
        let eval_every = self.eval_every.unwrap_or((steps / 10).max(1));
        let eval_context = self.eval_context.unwrap_or(info.n_positions);
        if eval_context < 2 || eval_context > info.n_positions {
            return Err(bad(
                "eval_context",
                format!(
                    "must be between 2 and the model's {} positions",
                    info.n_positions
                ),
            ));
        }
        let eval_stride = self.eval_stride.unwrap_or((eval_context / 2).max(1));
        if eval_stride == 0 || eval_stride > eval_context {
            return Err(bad(
                "eval_stride",
                format!("must be between 1 and the evaluation context ({eval_context})"),
            ));
        }
        let s = TrainSettings {
            steps,
            batch_size: positive("batch_size", self.batch_size)?,
            seq_len,
            accumulate: positive("accumulate", self.accumulate)?,
            lr,
            warmup: self.warmup.unwrap_or((steps / 10).min(100)),
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            grad_clip: (self.grad_clip != 0.0).then_some(self.grad_clip),
            seed: self.seed,
            eval_every,
            eval_context,
            eval_stride,
            eval_tokens: self.eval_tokens,
            save_every: self.save_every.unwrap_or(eval_every),
        };
        s.check()?;
        Ok(s)
    }
}

impl TrainSettings {
    /// The ranges of the real-valued settings.
    fn check(&self) -> Result<(), SettingsError> {
        let finite_pos = |field, v: f64| match v > 0.0 && v.is_finite() {
            true => Ok(()),
            false => Err(bad(field, format!("must be a positive number, got {v}"))),
        };
        finite_pos("lr", self.lr)?;
        finite_pos("eps", self.eps)?;
        if let Some(c) = self.grad_clip {
            finite_pos("grad_clip", c)?;
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(bad(
                "weight_decay",
                format!("must be 0 or more, got {}", self.weight_decay),
            ));
        }
        for (field, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(bad(field, format!("must be in [0, 1), got {b}")));
            }
        }
        if self.warmup > self.steps {
            return Err(bad(
                "warmup",
                format!("({}) exceeds the steps ({})", self.warmup, self.steps),
            ));
        }
        if self.eval_tokens == Some(0) {
            return Err(bad("eval_tokens", "must be at least 2"));
        }
        Ok(())
    }
}
