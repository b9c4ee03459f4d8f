//! Models. The rest of the tool sees one interface, [`CausalLm`]: model info, the activation
//! plan, final hidden states (with or without a key/value cache), logits for chosen rows, and
//! a differentiable trace for diagnostics. Which family implements it is decided by
//! `config.json`'s `model_type` through the [`registry`].
//!
//! - [`plan`]: `--layers` specs and the per-layer activation plan; [`activation`]: formulas.
//! - Shared blocks: [`norm`], [`rope`], [`attention`], [`ffn`] (plain or gated), and
//!   [`decoder`], the one decoder-only forward pass every family is built from.
//! - One folder per family: [`gpt2`], [`neox`], [`opt`], [`llama`] (also Qwen2) — each its
//!   config, its weight names, and how its blocks are wired.

pub mod activation;
pub mod attention;
pub mod config;
pub mod decoder;
pub mod export;
pub mod ffn;
pub mod gpt2;
pub mod grad;
pub mod inspect;
pub mod linear;
pub mod llama;
pub mod load;
pub mod neox;
pub mod norm;
pub mod opt;
pub mod params;
pub mod plan;
pub mod registry;
pub mod rope;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::kv_cache::KvCache;

use activation::Activation;
use plan::ActivationPlan;

pub use config::{ConfigError, ModelConfig};

/// What the tool needs to know about a model, whatever its family.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// `config.json`'s `model_type` (`gpt2`, `gpt_neox`, `opt`, `llama`, `qwen2`).
    pub model_type: String,
    pub n_layer: usize,
    /// The longest sequence the model takes (`n_positions` / `max_position_embeddings`).
    pub n_positions: usize,
    pub vocab_size: usize,
    /// Width of the hidden states the LM head reads.
    pub hidden_size: usize,
    /// The checkpoint's own feed-forward activation.
    pub activation: Activation,
    /// `act(gate(x)) · up(x)` rather than `act(fc(x))`.
    pub gated: bool,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub tied_head: bool,
}

/// Keys and values of the positions decoded so far, per layer.
pub struct Cache {
    layers: Vec<KvCache>,
    len: usize,
}

impl Cache {
    /// An empty cache for `n_layer` layers and sequences of up to `max_len` positions.
    pub fn new(n_layer: usize, max_len: usize) -> Self {
        Self {
            layers: (0..n_layer).map(|_| KvCache::new(1, max_len)).collect(),
            len: 0,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// How [`CausalLm::hidden_states_partial`] enters and taps the pass.
#[derive(Default, Clone, Copy)]
pub struct Partial<'a> {
    /// Start at block `l` with `x`, the residual stream (b·t, C) entering it, instead of
    /// embedding the tokens.
    pub start: Option<(usize, &'a Tensor)>,
    /// Blocks whose entering residual stream (b·t, C) is kept, in increasing order.
    pub keep: &'a [usize],
    /// Only the last `n` positions of each sequence: the result is (b, n, C), and the last
    /// block computes the other positions' keys and values only.
    pub tail: Option<usize>,
}

/// What a traced forward pass records, filled in by the blocks. A differentiable tracer
/// also makes the pass use differentiable ops only and adds probe variables.
#[derive(Default)]
pub struct Tracer {
    pub differentiable: bool,
    /// The residual stream entering each block, then the last block's output (before any
    /// final norm): `n_layer + 1` tensors of shape (b·t, C).
    pub residuals: Vec<Tensor>,
    /// Per block, a zero-valued variable added to the block's input, whose gradient is
    /// ∂loss/∂(the block's input) (differentiable only; autograd keeps the gradients of
    /// variables only).
    pub probes: Vec<Tensor>,
    /// Each block's first feed-forward weight (`c_fc`, `fc1`, `dense_h_to_4h` or
    /// `gate_proj`), (inner, C), as a variable (differentiable only).
    pub ffn_weights: Vec<Var>,
    /// Each block's activation input: `fc(x)`, or `gate(x)` in a gated MLP, (b·t, inner).
    pub pre_activations: Vec<Tensor>,
}

impl Tracer {
    /// Records, and makes the pass differentiable.
    pub fn differentiable() -> Self {
        Self {
            differentiable: true,
            ..Self::default()
        }
    }

    /// Records only; the pass runs its fast kernels.
    pub fn observer() -> Self {
        Self::default()
    }
}

/// The result of [`CausalLm::forward_traced`].
pub struct Trace {
    /// (t, vocab)
    pub logits: Tensor,
    pub probes: Vec<Tensor>,
    pub ffn_weights: Vec<Var>,
    pub pre_activations: Vec<Tensor>,
}

/// A causal language model with a swappable feed-forward activation.
pub trait CausalLm: Send + Sync {
    fn info(&self) -> &ModelInfo;

    /// The activation each layer uses.
    fn plan(&self) -> &ActivationPlan;

    /// The same weights (shared, not copied) with another activation plan.
    fn with_plan(&self, plan: ActivationPlan) -> Box<dyn CausalLm>;

    fn device(&self) -> &Device;

    fn dtype(&self) -> DType;

    /// The same weights with the checkpoint's own activation in every layer.
    fn original(&self) -> Box<dyn CausalLm> {
        let plan = ActivationPlan::original(self.plan().original, self.info().n_layer);
        self.with_plan(plan)
    }

    /// Whether the activation differs from the checkpoint's in at least one layer.
    fn is_swapped(&self) -> bool {
        !self.plan().swapped_layers().is_empty()
    }

    /// Final hidden states (b, t, C) of `tokens` (b, t): with a cache, the tokens continue the
    /// sequence it holds and are appended to it; with a tracer, the pass is made of
    /// differentiable ops only and records probes, weights and pre-activations.
    fn forward_hidden(
        &self,
        tokens: &Tensor,
        cache: Option<&mut Cache>,
        tracer: Option<&mut Tracer>,
    ) -> Result<Tensor>;

    /// LM-head logits for hidden states of any leading shape: (…, C) → (…, vocab).
    fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor>;

    /// Final hidden states (b, t, C) of `tokens` (b, t) at positions `0..t`, in the fast
    /// pass, entered and tapped as `partial` says: starting at a block from a residual kept
    /// earlier (by a model whose blocks before it are the same), pushing the residual
    /// entering each block of `partial.keep` onto `kept`, and only for the last
    /// `partial.tail` positions ((b, n, C)). The arithmetic is that of
    /// [`CausalLm::hidden_states`], so the result is the same to the bit.
    fn hidden_states_partial(
        &self,
        tokens: &Tensor,
        partial: Partial,
        kept: &mut Vec<Tensor>,
    ) -> Result<Tensor>;

    /// An empty key/value cache with room for `positions` positions (at most the model's
    /// length); it grows if a caller goes past that.
    fn new_cache(&self, positions: usize) -> Cache {
        Cache::new(self.info().n_layer, positions.min(self.info().n_positions))
    }

    /// Final hidden states (b, t, C) of `tokens` (b, t) at positions `0..t`.
    fn hidden_states(&self, tokens: &Tensor) -> Result<Tensor> {
        self.forward_hidden(tokens, None, None)
    }

    /// Final hidden states of `tokens` continuing `cache`, which is extended with them.
    fn hidden_states_cached(&self, tokens: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        self.forward_hidden(tokens, Some(cache), None)
    }

    /// The residual stream entering each block, then the output of the last block:
    /// `n_layer + 1` tensors of shape (b, t, C).
    fn residual_stream(&self, tokens: &Tensor) -> Result<Vec<Tensor>> {
        let (b, t) = tokens.dims2()?;
        let mut tracer = Tracer::observer();
        self.forward_hidden(tokens, None, Some(&mut tracer))?;
        tracer
            .residuals
            .iter()
            .map(|x| x.reshape((b, t, ())))
            .collect()
    }

    /// Logits at every position: (b, t) tokens → (b, t, vocab).
    fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        self.logits_from_hidden(&self.hidden_states(tokens)?)
    }

    /// One sequence (1, t) through the differentiable pass, for autograd diagnostics:
    /// `∂loss/∂probes[l]` is the gradient with respect to the residual stream entering block
    /// l (see [`Tracer::probes`]).
    fn forward_traced(&self, tokens: &Tensor) -> Result<Trace> {
        let (b, t) = tokens.dims2()?;
        if b != 1 {
            candle_core::bail!("forward_traced takes one sequence, got a batch of {b}");
        }
        let mut tracer = Tracer::differentiable();
        let hidden = self.forward_hidden(tokens, None, Some(&mut tracer))?; // (1, t, C)
        let logits = self.logits_from_hidden(&hidden.squeeze(0)?)?; // (t, vocab)
        debug_assert_eq!(logits.dim(0)?, t);
        Ok(Trace {
            logits,
            probes: tracer.probes,
            ffn_weights: tracer.ffn_weights,
            pre_activations: tracer.pre_activations,
        })
    }
}

/// A boxed model is a model: callers can pass `&loaded.model` where `&dyn CausalLm` is
/// expected.
impl CausalLm for Box<dyn CausalLm> {
    fn info(&self) -> &ModelInfo {
        (**self).info()
    }

    fn plan(&self) -> &ActivationPlan {
        (**self).plan()
    }

    fn with_plan(&self, plan: ActivationPlan) -> Box<dyn CausalLm> {
        (**self).with_plan(plan)
    }

    fn device(&self) -> &Device {
        (**self).device()
    }

    fn dtype(&self) -> DType {
        (**self).dtype()
    }

    fn forward_hidden(
        &self,
        tokens: &Tensor,
        cache: Option<&mut Cache>,
        tracer: Option<&mut Tracer>,
    ) -> Result<Tensor> {
        (**self).forward_hidden(tokens, cache, tracer)
    }

    fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        (**self).logits_from_hidden(hidden)
    }

    fn hidden_states_partial(
        &self,
        tokens: &Tensor,
        partial: Partial,
        kept: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        (**self).hidden_states_partial(tokens, partial, kept)
    }
}
