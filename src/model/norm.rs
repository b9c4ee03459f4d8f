//! Normalisation layers: LayerNorm (with or without bias) and RMSNorm, each with a fused fast
//! path and a differentiable one.

use candle_core::{Result, Tensor};
use candle_nn::Module;

use crate::kernels::norm;
use crate::model::decoder::Mode;
use crate::model::grad::norm as grad;
use crate::model::params::Params;
use crate::weights::LoadError;

#[derive(Clone)]
pub enum Norm {
    /// `(x − mean)/√(var + eps)·w + b`.
    Layer(candle_nn::LayerNorm),
    /// `x/√(mean(x²) + eps)·w` (Llama's `LlamaRMSNorm`).
    Rms { weight: Tensor, eps: f64 },
}

impl Norm {
    /// LayerNorm `{prefix}.weight` and, if `bias`, `{prefix}.bias`, both (width,).
    pub fn layer(
        p: &mut Params,
        prefix: &str,
        width: usize,
        eps: f64,
        bias: bool,
    ) -> std::result::Result<Self, LoadError> {
        let w = p.take(&format!("{prefix}.weight"), &[width])?;
        let norm = if bias {
            let b = p.take(&format!("{prefix}.bias"), &[width])?;
            candle_nn::LayerNorm::new(w, b, eps)
        } else {
            candle_nn::LayerNorm::new_no_bias(w, eps)
        };
        Ok(Self::Layer(norm))
    }

    /// RMSNorm `{prefix}.weight` (width,).
    pub fn rms(
        p: &mut Params,
        prefix: &str,
        width: usize,
        eps: f64,
    ) -> std::result::Result<Self, LoadError> {
        let weight = p.take(&format!("{prefix}.weight"), &[width])?;
        Ok(Self::Rms { weight, eps })
    }

    /// `x`: (n, width) → (n, width).
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match (self, mode) {
            (Self::Layer(n), Mode::Fast) => {
                let eps = n.eps() as f32;
                match norm::layer_norm(x, n.weight(), n.bias(), eps)? {
                    Some(y) => Ok(y),
                    None => n.forward(x),
                }
            }
            (Self::Layer(n), Mode::Differentiable) => {
                let eps = n.eps();
                if let Some(y) = grad::forward(x, grad::Kind::Layer, n.weight(), n.bias(), eps)? {
                    return Ok(y);
                }
                let bias = match n.bias() {
                    Some(b) => b.clone(),
                    None => n.weight().zeros_like()?,
                };
                candle_nn::ops::layer_norm_slow(x, n.weight(), &bias, n.eps() as f32)
            }
            (Self::Rms { weight, eps }, Mode::Fast) => {
                match norm::rms_norm(x, weight, *eps as f32)? {
                    Some(y) => Ok(y),
                    None => candle_nn::ops::rms_norm(&x.contiguous()?, weight, *eps as f32),
                }
            }
            (Self::Rms { weight, eps }, Mode::Differentiable) => {
                match grad::forward(x, grad::Kind::Rms, weight, None, *eps)? {
                    Some(y) => Ok(y),
                    None => candle_nn::ops::rms_norm_slow(x, weight, *eps as f32),
                }
            }
        }
    }
}
