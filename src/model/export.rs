//! The inverse of [`crate::model::params::Params`]: a [`Decoder`](crate::model::decoder::Decoder)'s
//! tensors back under a family's Hugging Face names and layouts (GPT-2's `Conv1D` weights
//! transposed back to (in, out), fused projections split into the stored parts), as
//! `save_pretrained` would write them.

use candle_core::{Result, Tensor};

use crate::model::linear::Linear;
use crate::model::norm::Norm;

/// A state dict being written: keys under the base-model prefix unless `top`.
pub struct StateDict {
    prefix: &'static str,
    pub tensors: Vec<(String, Tensor)>,
}

impl StateDict {
    /// Keys get `prefix` (`transformer.`, `gpt_neox.`, `model.`) unless written with
    /// [`StateDict::put_top`].
    pub fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            tensors: Vec::new(),
        }
    }

    /// `key` under the base prefix.
    pub fn put(&mut self, key: &str, t: &Tensor) -> Result<()> {
        self.put_top(&format!("{}{key}", self.prefix), t)
    }

    /// A key outside the base model (`lm_head.weight`, `embed_out.weight`).
    pub fn put_top(&mut self, key: &str, t: &Tensor) -> Result<()> {
        self.tensors.push((key.to_string(), t.contiguous()?));
        Ok(())
    }

    /// `{prefix}.weight` (out, in) and `{prefix}.bias` if the layer has one.
    pub fn linear(&mut self, prefix: &str, l: &Linear) -> Result<()> {
        self.put(&format!("{prefix}.weight"), l.weight())?;
        match l.bias() {
            Some(b) => self.put(&format!("{prefix}.bias"), b),
            None => Ok(()),
        }
    }

    /// A GPT-2 `Conv1D`: the weight stored (in, out).
    pub fn conv1d(&mut self, prefix: &str, l: &Linear) -> Result<()> {
        self.put(&format!("{prefix}.weight"), &l.weight().t()?)?;
        match l.bias() {
            Some(b) => self.put(&format!("{prefix}.bias"), b),
            None => Ok(()),
        }
    }

    /// The parts of a fused linear layer, split row by row in the order given (the inverse
    /// of `Params::fused_linear`).
    pub fn split_linear(&mut self, parts: &[(&str, usize)], l: &Linear) -> Result<()> {
        let mut row = 0;
        for &(prefix, n_out) in parts {
            let w = l.weight().narrow(0, row, n_out)?;
            let b = l.bias().map(|b| b.narrow(0, row, n_out)).transpose()?;
            self.linear(prefix, &Linear::new(w, b))?;
            row += n_out;
        }
        Ok(())
    }

    /// A norm's `{prefix}.weight` and, for a LayerNorm with one, `{prefix}.bias`.
    pub fn norm(&mut self, prefix: &str, n: &Norm) -> Result<()> {
        match n {
            Norm::Layer(ln) => {
                self.put(&format!("{prefix}.weight"), ln.weight())?;
                match ln.bias() {
                    Some(b) => self.put(&format!("{prefix}.bias"), b),
                    None => Ok(()),
                }
            }
            Norm::Rms { weight, .. } => self.put(&format!("{prefix}.weight"), weight),
        }
    }
}
