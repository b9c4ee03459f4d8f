//! One optimizer step: the mean next-token cross-entropy over the step's micro-batches
//! (gradient accumulation: each micro-batch's loss divided by their number, gradients
//! summed), gradient norms per layer, clipping by global norm, and the AdamW update at the
//! schedule's learning rate. The forward pass is the model's own, through a differentiable
//! [`Tracer`], whose probes give ‖∂loss/∂x‖ for the residual stream entering each block.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::{CausalLm, Tracer};
use crate::train::optim::{self, AdamW};
use crate::train::params::Trainable;
use crate::train::schedule::Schedule;

/// One layer's gradient norms in a step (before clipping).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerGrads {
    pub layer: usize,
    /// ‖∂loss/∂x‖₂ over every position of the step's batch, x the block's input.
    pub block_input: f64,
    /// ‖∂loss/∂W‖_F of each MLP weight: `fc`, `proj` or `gate`, `up`, `down`.
    pub mlp: BTreeMap<String, f64>,
}

/// What a step measured.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Mean loss over the step's tokens, before the update.
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub layers: Vec<LayerGrads>,
}

/// The loss of a batch and its gradients, one per parameter.
pub struct Gradients {
    pub loss: f64,
    pub grads: Vec<Tensor>,
    /// Per layer, ‖∂loss/∂x‖₂ over every position of every micro-batch.
    pub block_input: Vec<f64>,
}

/// The mean next-token loss over `batches` (each (b, t + 1) token ids: inputs are the first
/// t, targets the last t) and its gradients.
pub fn gradients(tr: &Trainable, batches: &[Tensor]) -> Result<Gradients> {
    let k = batches.len() as f64;
    let model = &tr.model;
    let mut grads: Vec<Option<Tensor>> = vec![None; tr.params.len()];
    let mut block_sq = vec![0f64; model.blocks.len()];
    let mut loss_sum = 0f64;
    for batch in batches {
        let t = batch.dim(1)? - 1;
        let (x, y) = (batch.narrow(1, 0, t)?, batch.narrow(1, 1, t)?);
        let mut tracer = Tracer::differentiable();
        let hidden = model.forward_hidden(&x, None, Some(&mut tracer))?;
        let logits = model.logits_from_hidden(&hidden.flatten_to(1)?)?; // (b·t, vocab)
        let loss = crate::model::grad::loss::cross_entropy(&logits, &y.flatten_all()?)?;
        let loss = (loss / k)?;
        loss_sum += loss.to_scalar::<f32>()? as f64;
        let store = loss.backward()?;
        for (acc, p) in grads.iter_mut().zip(&tr.params) {
            let g = match store.get(p.var.as_tensor()) {
                Some(g) => g.detach(),
                None => p.var.as_tensor().zeros_like()?,
            };
            *acc = Some(match acc.take() {
                Some(a) => (a + g)?,
                None => g,
            });
        }
        for (sq, probe) in block_sq.iter_mut().zip(&tracer.probes) {
            if let Some(g) = store.get(probe) {
                *sq += optim::norms(std::slice::from_ref(g))?[0].powi(2);
            }
        }
    }
    Ok(Gradients {
        loss: loss_sum,
        grads: grads.into_iter().flatten().collect(),
        block_input: block_sq.iter().map(|s| s.sqrt()).collect(),
    })
}

/// A model being trained: parameters, optimizer state, schedule, clipping, steps done.
pub struct Trainer {
    pub tr: Trainable,
    pub opt: AdamW,
    pub schedule: Schedule,
    /// Maximum global gradient norm (none: no clipping).
    pub grad_clip: Option<f64>,
    /// Steps done.
    pub step: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("step {step}: the loss is {loss} (diverged); lower --lr or use --grad-clip")]
    NonFinite { step: usize, loss: f64 },
    #[error("step {step}: {source}")]
    Candle {
        step: usize,
        source: candle_core::Error,
    },
}

impl Trainer {
    /// Trains on one step's micro-batches. Nothing is updated if the loss is not finite.
    pub fn step(&mut self, batches: &[Tensor]) -> std::result::Result<StepReport, StepError> {
        let step = self.step + 1;
        let candle = |source| StepError::Candle { step, source };
        let lr = self.schedule.at(self.step);
        let g = gradients(&self.tr, batches).map_err(candle)?;
        if !g.loss.is_finite() {
            return Err(StepError::NonFinite { step, loss: g.loss });
        }
        let norms = optim::norms(&g.grads).map_err(candle)?;
        let grad_norm = optim::global_norm(&norms);
        let layers = self.layer_grads(&norms, &g.block_input);
        let mut grads = g.grads;
        if let Some(max) = self.grad_clip {
            optim::clip(&mut grads, grad_norm, max).map_err(candle)?;
        }
        self.opt.step(&self.tr.params, &grads, lr).map_err(candle)?;
        self.step = step;
        Ok(StepReport {
            loss: g.loss,
            lr,
            grad_norm,
            layers,
        })
    }

    fn layer_grads(&self, norms: &[f64], block_input: &[f64]) -> Vec<LayerGrads> {
        self.tr
            .mlp
            .iter()
            .enumerate()
            .map(|(layer, roles)| LayerGrads {
                layer,
                block_input: block_input.get(layer).copied().unwrap_or(0.0),
                mlp: roles
                    .iter()
                    .map(|&(role, i)| (role.to_string(), norms[i]))
                    .collect(),
            })
            .collect()
    }
}
