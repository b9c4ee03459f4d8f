//! Causal self-attention with a fused q|k|v projection, optional rotary embeddings on q and
//! k, grouped-query heads, and a key/value cache. Families whose checkpoints store q, k and v
//! separately (or interleaved per head, like GPT-NeoX) are brought to the fused layout once,
//! at load time.

use std::sync::Arc;

use crate::model::linear::{Combine, Linear};
use candle_core::{DType, Result, Tensor};
use candle_nn::kv_cache::KvCache;

use crate::kernels::attention::{causal_attention, causal_attention_composed, Heads};
use crate::model::decoder::Mode;
use crate::model::grad::attention as grad;
use crate::model::rope::Rope;

#[derive(Clone)]
pub struct Attention {
    /// (H·d + 2·G·d, C): query rows, then key rows, then value rows.
    pub qkv: Linear,
    /// (C, H·d)
    pub out: Linear,
    pub heads: Heads,
    pub head_dim: usize,
    /// Multiplies q·kᵀ.
    pub scale: f64,
    pub rope: Option<Arc<Rope>>,
    /// Scores and softmax in f32 whatever the compute dtype (GPT-2's `reorder_and_upcast_attn`).
    pub upcast: bool,
}

/// Shape and position of the rows a block works on.
#[derive(Debug, Clone, Copy)]
pub struct Rows {
    pub b: usize,
    pub t: usize,
    /// Position of each sequence's first row.
    pub start: usize,
    /// Trailing positions of each sequence whose outputs are wanted (`t` for all): the
    /// others only give keys and values.
    pub out: usize,
}

impl Rows {
    /// All `t` positions of `b` sequences starting at `start`.
    pub fn all(b: usize, t: usize, start: usize) -> Self {
        Self {
            b,
            t,
            start,
            out: t,
        }
    }

    /// The last `out` rows of each sequence of `x` (b·t, C): (b·out, C).
    pub fn tail(&self, x: &Tensor) -> Result<Tensor> {
        if self.out == self.t {
            return Ok(x.clone());
        }
        let (b, t, out) = (self.b, self.t, self.out);
        x.reshape((b, t, ()))?
            .narrow(1, t - out, out)?
            .contiguous()?
            .reshape((b * out, ()))
    }
}

impl Attention {
    /// `x`: (b·t, C) → (b·out, C) for the last `rows.out` positions of each sequence, plus
    /// `residual` (b·out, C) when given (added in the output projection's epilogue). With a
    /// cache, the new keys and values are appended to it and the queries attend to every
    /// cached position too.
    pub fn forward(
        &self,
        x: &Tensor,
        rows: Rows,
        cache: Option<&mut KvCache>,
        mode: Mode,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?; // (b·t, H·d + 2·G·d)
        let y = self
            .heads_output(&qkv, rows, cache, mode)?
            .to_dtype(x.dtype())?; // (b·out, H·d)
        self.out
            .forward_fused(&y, None, residual.map(|r| (Combine::Add, r)))
    }

    /// The heads' outputs side by side, (b·out, H·d), from the fused projection.
    fn heads_output(
        &self,
        qkv: &Tensor,
        rows: Rows,
        cache: Option<&mut KvCache>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, t) = (rows.b, rows.t);
        let (qw, kw) = (
            self.heads.n_head * self.head_dim,
            self.heads.n_kv * self.head_dim,
        );
        let all = rows.out == t;
        if mode == Mode::Differentiable && all && cache.is_none() && self.rope.is_none() {
            let fused =
                grad::causal_attention_qkv(qkv, (b, t), self.heads, self.head_dim, self.scale)?;
            if let Some(y) = fused {
                return Ok(y);
            }
        }
        let qkv = qkv.reshape((b, t, qw + 2 * kw))?;
        let mut q = qkv.narrow(2, 0, qw)?; // (b, t, H·d), heads side by side
        let mut k = qkv.narrow(2, qw, kw)?; // (b, t, G·d)
        let mut v = qkv.narrow(2, qw + kw, kw)?; // (b, t, G·d)
        if let Some(rope) = &self.rope {
            q = rope.apply(&q, self.heads.n_head, rows.start, mode)?;
            k = rope.apply(&k, self.heads.n_kv, rows.start, mode)?;
        }
        if !all {
            q = q.narrow(1, t - rows.out, rows.out)?; // the last queries
        }
        let cached = cache.is_some();
        if let Some(cache) = cache {
            // (b, cached + t, G·d) views of the cache's buffers.
            (k, v) = cache.append(&k.contiguous()?, &v.contiguous()?)?;
        }
        // The fused kernel computes scores and softmax in f32 whatever the dtype.
        if self.upcast && mode == Mode::Differentiable {
            (q, k, v) = (
                q.to_dtype(DType::F32)?,
                k.to_dtype(DType::F32)?,
                v.to_dtype(DType::F32)?,
            );
        }
        let y = match mode {
            Mode::Fast => causal_attention(&q, &k, &v, self.heads, self.scale)?,
            Mode::Differentiable => match cached || !all {
                false => grad::causal_attention(&q, &k, &v, self.heads, self.scale)?,
                true => None,
            }
            .map_or_else(
                || causal_attention_composed(&q, &k, &v, self.heads, self.scale, true),
                Ok,
            )?,
        }; // (b, out, H·d)
        y.reshape((b * rows.out, qw))
    }
}
