//! Taking a family's parameters out of the tensor store by name: keys under the family's
//! base-model prefix (`gpt_neox.`, `model.`) are found with or without it, as transformers
//! finds them; linear layers come out as candle `Linear`s with (out, in) weights.

use crate::model::linear::Linear;
use candle_core::Tensor;

use crate::weights::{LoadError, TensorStore};

pub struct Params<'a> {
    store: &'a mut TensorStore,
    prefix: &'static str,
}

impl<'a> Params<'a> {
    pub fn new(store: &'a mut TensorStore, prefix: &'static str) -> Self {
        Self { store, prefix }
    }

    /// `key` under the base prefix (stored with or without it), of exactly `shape`.
    pub fn take(&mut self, key: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        let full = format!("{}{key}", self.prefix);
        if !self.store.contains(&full) && self.store.contains(key) {
            return self.store.take(key, shape);
        }
        self.store.take(&full, shape)
    }

    /// A key outside the base model (the LM head: `lm_head.weight`, `embed_out.weight`).
    pub fn take_top(&mut self, key: &str, shape: &[usize]) -> Result<Tensor, LoadError> {
        self.store.take(key, shape)
    }

    pub fn device(&self) -> &candle_core::Device {
        self.store.device()
    }

    pub fn dtype(&self) -> candle_core::DType {
        self.store.dtype()
    }

    /// The LM head: the token embedding when `tied`, else the first of `keys` that is stored
    /// (the last one is named if none is).
    pub fn head(
        &mut self,
        tied: bool,
        embed: &Tensor,
        keys: &[&str],
        shape: &[usize],
    ) -> Result<Tensor, LoadError> {
        if tied {
            return Ok(embed.clone());
        }
        let key = keys
            .iter()
            .find(|k| self.has_top(k))
            .or(keys.last())
            .copied()
            .unwrap_or("lm_head.weight");
        self.take_top(key, shape)
    }

    /// Whether a top-level key is stored.
    pub fn has_top(&self, key: &str) -> bool {
        self.store.contains(key)
    }

    /// `{prefix}.weight` (out, in) and, if `bias`, `{prefix}.bias` (out,).
    pub fn linear(
        &mut self,
        prefix: &str,
        n_in: usize,
        n_out: usize,
        bias: bool,
    ) -> Result<Linear, LoadError> {
        let w = self.take(&format!("{prefix}.weight"), &[n_out, n_in])?;
        let b = match bias {
            true => Some(self.take(&format!("{prefix}.bias"), &[n_out])?),
            false => None,
        };
        Ok(Linear::new(w, b))
    }

    /// Several linear layers with the same input fused into one: their weights stacked row
    /// by row (and their biases, if they have them) in the order given.
    pub fn fused_linear(
        &mut self,
        prefixes: &[(&str, usize)],
        n_in: usize,
        bias: bool,
    ) -> Result<Linear, LoadError> {
        let parts = prefixes
            .iter()
            .map(|&(p, n_out)| self.linear(p, n_in, n_out, bias))
            .collect::<Result<Vec<_>, _>>()?;
        let key = format!("{}{}.weight", self.prefix, prefixes[0].0);
        let candle = |cause| LoadError::Candle {
            key: key.clone(),
            cause,
        };
        let ws: Vec<&Tensor> = parts.iter().map(|l| l.weight()).collect();
        let w = Tensor::cat(&ws, 0).map_err(candle)?;
        let b = match bias {
            true => {
                let bs: Vec<&Tensor> = parts.iter().filter_map(|l| l.bias()).collect();
                Some(Tensor::cat(&bs, 0).map_err(candle)?)
            }
            false => None,
        };
        Ok(Linear::new(w, b))
    }

    /// A GPT-2 `Conv1D` (weight stored (in, out), transposed here to (out, in)) with bias.
    pub fn conv1d(&mut self, prefix: &str, n_in: usize, n_out: usize) -> Result<Linear, LoadError> {
        let key = format!("{prefix}.weight");
        let w = self.take(&key, &[n_in, n_out])?;
        let w = w
            .t()
            .and_then(|t| t.contiguous())
            .map_err(|cause| LoadError::Candle { key, cause })?;
        let b = self.take(&format!("{prefix}.bias"), &[n_out])?;
        Ok(Linear::new(w, Some(b)))
    }
}
