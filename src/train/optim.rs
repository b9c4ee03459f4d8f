//! AdamW as `torch.optim.AdamW` computes it (decoupled weight decay, bias-corrected
//! moments, ε added to the corrected root), and clipping by global gradient norm as
//! `torch.nn.utils.clip_grad_norm_`. Candle ops, so it runs on any device.

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::train::params::Param;

/// AdamW's hyper-parameters (the learning rate comes from the schedule).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// The optimizer's state: first and second moments per parameter, and the steps taken.
pub struct AdamW {
    pub config: AdamWConfig,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub steps: usize,
}

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(config: AdamWConfig, params: &[Param]) -> Result<Self> {
        let zeros = || {
            params
                .iter()
                .map(|p| p.var.as_tensor().zeros_like())
                .collect::<Result<Vec<_>>>()
        };
        Ok(Self {
            config,
            m: zeros()?,
            v: zeros()?,
            steps: 0,
        })
    }

    /// One update of every parameter with its gradient at learning rate `lr`.
    pub fn step(&mut self, params: &[Param], grads: &[Tensor], lr: f64) -> Result<()> {
        self.steps += 1;
        let c = self.config;
        let t = self.steps as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let mut theta = p.var.as_tensor().clone();
            if p.decay && c.weight_decay != 0.0 {
                theta = theta.affine(1.0 - lr * c.weight_decay, 0.0)?;
            }
            // exp_avg.lerp_(grad, 1 − β1); exp_avg_sq·β2 + (1 − β2)·grad².
            let m = (&self.m[i] + ((g - &self.m[i])? * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
            let update = ((&m / &denom)? * (lr / bc1))?;
            p.var.set(&(theta - update)?)?;
            // Detached: the moments must not keep the step's graph alive.
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }
}

/// ‖g‖₂ of each gradient, summed in f64.
pub fn norms(grads: &[Tensor]) -> Result<Vec<f64>> {
    grads
        .iter()
        .map(|g| {
            let s = g
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()?;
            Ok((s as f64).sqrt())
        })
        .collect()
}

/// The global norm of gradients with these norms.
pub fn global_norm(norms: &[f64]) -> f64 {
    norms.iter().map(|n| n * n).sum::<f64>().sqrt()
}

/// Scales the gradients by `min(1, max_norm / (total + 1e-6))`, as `clip_grad_norm_` does.
pub fn clip(grads: &mut [Tensor], total: f64, max_norm: f64) -> Result<()> {
    let coef = (max_norm / (total + 1e-6)).min(1.0);
    for g in grads.iter_mut() {
        *g = (&*g * coef)?;
    }
    Ok(())
}
