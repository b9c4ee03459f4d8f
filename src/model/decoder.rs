//! The decoder-only transformer every family is built from, and its one forward pass:
//! embeddings (+ learned positions) → blocks → final norm → LM head. A family decides the
//! parts — which norm, which residual wiring, rotary or learned positions, plain or gated
//! MLP, projections around the blocks — and the weight names; the arithmetic lives here.
//!
//! The same pass runs fast (fused kernels) or differentiable (autograd ops, with probes
//! for autograd): a [`Mode`], not a second forward.

use crate::kernels::attention::FEW_QUERIES;
use crate::kernels::gemm::GEMV_MAX_ROWS;
use crate::model::grad::reshaped;
use crate::model::linear::Linear;
use candle_core::{DType, Device, Result, Tensor, Var};

use crate::model::attention::{Attention, Rows};
use crate::model::ffn::Ffn;
use crate::model::norm::Norm;
use crate::model::plan::ActivationPlan;
use crate::model::{Cache, CausalLm, ModelInfo, Partial, Tracer};

/// Fused kernels, or candle ops that autograd can differentiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Fast,
    Differentiable,
}

/// How a block adds its attention and MLP to the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// `h = x + attn(ln1(x)); h + mlp(ln2(h))` (GPT-2, Llama, pre-LN OPT, NeoX sequential).
    PreNorm,
    /// `mlp(ln2(x)) + attn(ln1(x)) + x` (GPT-NeoX `use_parallel_residual`, Pythia).
    Parallel,
    /// `h = ln1(x + attn(x)); ln2(h + mlp(h))` (OPT with `do_layer_norm_before = false`).
    PostNorm,
}

#[derive(Clone)]
pub struct Block {
    pub ln1: Norm,
    pub attn: Attention,
    pub ln2: Norm,
    pub ffn: Ffn,
    pub residual: Residual,
}

impl Block {
    /// `x`: (b·t, C) → (b·out, C), the last `rows.out` positions of each sequence (the others
    /// only give the attention its keys and values).
    fn forward(
        &self,
        x: &Tensor,
        rows: Rows,
        cache: Option<&mut candle_nn::kv_cache::KvCache>,
        mode: Mode,
        tracer: Option<&mut Tracer>,
    ) -> Result<Tensor> {
        let ffn = &self.ffn;
        let x_out = rows.tail(x)?; // (b·out, C)
        match self.residual {
            Residual::PreNorm => {
                let ln1 = self.ln1.forward(x, mode)?;
                let h = self.attn.forward(&ln1, rows, cache, mode, Some(&x_out))?;
                let ln2 = self.ln2.forward(&h, mode)?;
                ffn.forward(&ln2, mode, tracer, Some(&h))
            }
            Residual::Parallel => {
                let ln1 = self.ln1.forward(x, mode)?;
                let attn_x = self.attn.forward(&ln1, rows, cache, mode, Some(&x_out))?;
                ffn.forward(
                    &self.ln2.forward(&x_out, mode)?,
                    mode,
                    tracer,
                    Some(&attn_x),
                )
            }
            Residual::PostNorm => {
                let h = self.attn.forward(x, rows, cache, mode, Some(&x_out))?;
                let h = self.ln1.forward(&h, mode)?;
                let out = ffn.forward(&h, mode, tracer, Some(&h))?;
                self.ln2.forward(&out, mode)
            }
        }
    }
}

/// Learned absolute positions: row `offset + p` of `table` for position `p` (OPT's offset
/// is 2, GPT-2's 0).
#[derive(Clone)]
pub struct LearnedPositions {
    pub table: Tensor,
    pub offset: usize,
}

/// A decoder-only language model.
#[derive(Clone)]
pub struct Decoder {
    pub info: ModelInfo,
    /// (vocab, E)
    pub embed: Tensor,
    pub positions: Option<LearnedPositions>,
    /// E → C before the blocks (OPT's `project_in` when `word_embed_proj_dim < hidden_size`).
    pub project_in: Option<Linear>,
    pub blocks: Vec<Block>,
    pub final_norm: Option<Norm>,
    /// C → E after the blocks (OPT's `project_out`).
    pub project_out: Option<Linear>,
    /// (vocab, E)
    pub lm_head: Tensor,
    pub plan: ActivationPlan,
}

impl Decoder {
    /// Embeddings → blocks → final norm → head, without learned positions or projections
    /// (the rotary families); others set those fields on the result.
    pub fn new(
        info: ModelInfo,
        embed: Tensor,
        blocks: Vec<Block>,
        final_norm: Option<Norm>,
        lm_head: Tensor,
        plan: ActivationPlan,
    ) -> Self {
        Self {
            info,
            embed,
            positions: None,
            project_in: None,
            blocks,
            final_norm,
            project_out: None,
            lm_head,
            plan,
        }
    }

    /// Token (+ position) embeddings of `tokens` (b, t) at positions `start..start + t`:
    /// (b·t, C).
    fn embed(&self, tokens: &Tensor, start: usize) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        if start + t > self.info.n_positions {
            candle_core::bail!(
                "positions {start}..{} exceed the model's {} positions",
                start + t,
                self.info.n_positions
            );
        }
        let mut x = self.embed.embedding(&tokens.flatten_all()?)?; // (b·t, E)
        if let Some(p) = &self.project_in {
            x = p.forward(&x)?;
        }
        if let Some(pos) = &self.positions {
            let rows = pos.table.narrow(0, pos.offset + start, t)?.repeat((b, 1))?;
            x = (x + rows)?;
        }
        Ok(x)
    }
}

impl Decoder {
    /// The forward pass behind [`CausalLm::forward_hidden`] and
    /// [`CausalLm::hidden_states_partial`]: the same arithmetic whichever way it is entered.
    fn pass(
        &self,
        tokens: &Tensor,
        mut cache: Option<&mut Cache>,
        mut tracer: Option<&mut Tracer>,
        partial: Partial,
        kept: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let start = cache.as_ref().map_or(0, |c| c.len);
        let rows = Rows::all(b, t, start);
        let out = partial.tail.unwrap_or(t).min(t);
        let mode = match tracer.as_deref().is_some_and(|t| t.differentiable) {
            true => Mode::Differentiable,
            false => Mode::Fast,
        };
        let (from, mut x) = match partial.start {
            Some((l, x)) if l <= self.blocks.len() => (l, x.clone()),
            Some((l, _)) => candle_core::bail!("no block {l}: the model has {}", self.blocks.len()),
            None => (0, self.embed(tokens, start)?), // (b·t, C)
        };
        for (l, block) in self.blocks.iter().enumerate().skip(from) {
            if partial.keep.contains(&l) {
                kept.push(x.clone());
            }
            if let Some(tr) = tracer.as_deref_mut() {
                if tr.differentiable {
                    // Autograd keeps the gradients of variables only, so the block input's
                    // is read from a zero-valued variable added to it.
                    let probe = Var::zeros(x.dims(), x.dtype(), x.device())?;
                    x = (&x + probe.as_tensor())?;
                    tr.probes.push(probe.as_tensor().clone());
                }
                tr.residuals.push(x.clone());
            }
            let kv = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            let last = l + 1 == self.blocks.len();
            let rows = match last && trims(out, t) {
                true => Rows { out, ..rows },
                false => rows,
            };
            x = block.forward(&x, rows, kv, mode, tracer.as_deref_mut())?;
        }

        if let Some(tr) = tracer {
            tr.residuals.push(x.clone());
        }
        if let Some(c) = cache {
            c.len += t;
        }
        if let Some(n) = &self.final_norm {
            x = n.forward(&x, mode)?;
        }
        if let Some(p) = &self.project_out {
            x = p.forward(&x)?;
        }
        if x.dim(0)? != b * out {
            x = Rows { out, ..rows }.tail(&x)?; // not trimmed in a block
        }
        x.reshape((b, out, ()))
    }
}

/// Whether the last block computes only the last `out` of `t` positions. With so few rows
/// that its products or attention would take the decoding kernels (whose sums run in
/// another order) it computes them all instead, so trimming never changes a result's bits.
fn trims(out: usize, t: usize) -> bool {
    out < t && out > GEMV_MAX_ROWS.max(FEW_QUERIES)
}

impl CausalLm for Decoder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn plan(&self) -> &ActivationPlan {
        &self.plan
    }

    fn with_plan(&self, plan: ActivationPlan) -> Box<dyn CausalLm> {
        debug_assert_eq!(plan.per_layer.len(), self.blocks.len());
        let mut model = self.clone();
        for (block, &act) in model.blocks.iter_mut().zip(&plan.per_layer) {
            block.ffn.set_activation(act);
        }
        model.plan = plan;
        Box::new(model)
    }

    fn device(&self) -> &Device {
        self.embed.device()
    }

    fn dtype(&self) -> DType {
        self.embed.dtype()
    }

    fn forward_hidden(
        &self,
        tokens: &Tensor,
        cache: Option<&mut Cache>,
        tracer: Option<&mut Tracer>,
    ) -> Result<Tensor> {
        self.pass(tokens, cache, tracer, Partial::default(), &mut Vec::new())
    }

    fn hidden_states_partial(
        &self,
        tokens: &Tensor,
        partial: Partial,
        kept: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        self.pass(tokens, None, None, partial, kept)
    }

    fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        let e = hidden.dim(candle_core::D::Minus1)?;
        let mut out_shape = hidden.dims().to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = self.info.vocab_size;
        }
        // No-op reshapes are skipped: in autograd each would cost a pass over the logits.
        let flat = reshaped(hidden, &[hidden.elem_count() / e.max(1), e])?; // (n, E)
        let head = Linear::new(self.lm_head.clone(), None);
        reshaped(&head.forward(&flat)?, &out_shape) // (…, vocab)
    }
}
