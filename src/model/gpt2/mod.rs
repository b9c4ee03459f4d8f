//! GPT-2 (`GPT2LMHeadModel` semantics), top to bottom: attention → MLP → block → model.
//!
//! Field names equal the checkpoint keys (`wte`, `wpe`, `h.{i}`, `ln_1`, `attn.c_attn`,
//! `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, `ln_f`), so loading is name matching. Each
//! block's MLP activation comes from an [`ActivationPlan`]: that is the load-time swap.

pub mod config;

use candle_core::{DType, Device, Module, Result, Tensor, Var, D};
use candle_nn::kv_cache::KvCache;
use candle_nn::{Embedding, LayerNorm, Linear};

use crate::kernels;
use crate::model::activation::Activation;
use crate::model::plan::ActivationPlan;
use crate::weights::{LoadError, TensorStore};
use config::Gpt2Config;

/// Causal multi-head self-attention with a fused `c_attn` projection.
#[derive(Clone)]
struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: usize,
    head_dim: usize,
    /// 1/√head_dim (if `scale_attn_weights`), further divided by layer index + 1 if
    /// `scale_attn_by_inverse_layer_idx`.
    scale: f64,
    /// `reorder_and_upcast_attn`: scores and softmax in f32 whatever the compute dtype.
    upcast: bool,
}

impl Attention {
    fn load(cfg: &Gpt2Config, layer: usize, store: &mut TensorStore) -> Result2<Self> {
        let c = cfg.n_embd;
        let p = format!("h.{layer}.attn");
        let mut scale = if cfg.scale_attn_weights {
            1.0 / (cfg.head_dim() as f64).sqrt()
        } else {
            1.0
        };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        Ok(Self {
            c_attn: conv1d(store, &format!("{p}.c_attn"), c, 3 * c)?,
            c_proj: conv1d(store, &format!("{p}.c_proj"), c, c)?,
            n_head: cfg.n_head,
            head_dim: cfg.head_dim(),
            scale,
            upcast: cfg.reorder_and_upcast_attn,
        })
    }

    /// `x`: (b·t, C) → (b·t, C). With a cache, the new keys and values are appended to it
    /// and the queries attend to every cached position too.
    fn forward(
        &self,
        x: &Tensor,
        b: usize,
        t: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let c = self.n_head * self.head_dim;
        let qkv = self.c_attn.forward(x)?.reshape((b, t, 3 * c))?; // (b, t, 3C)
        let mut q = qkv.narrow(2, 0, c)?; // (b, t, C), heads side by side
        let mut k = qkv.narrow(2, c, c)?; // (b, t, C)
        let mut v = qkv.narrow(2, 2 * c, c)?; // (b, t, C)
        if let Some(cache) = cache {
            // (b, cached + t, C) views of the cache's buffers.
            (k, v) = cache.append(&k.contiguous()?, &v.contiguous()?)?;
        }
        if self.upcast {
            // reorder_and_upcast_attn: scores in f32 whatever the compute dtype.
            (q, k, v) = (
                q.to_dtype(DType::F32)?,
                k.to_dtype(DType::F32)?,
                v.to_dtype(DType::F32)?,
            );
        }
        let y = kernels::causal_attention(&q, &k, &v, self.n_head, self.scale)?; // (b, t, C)
        self.c_proj
            .forward(&y.to_dtype(x.dtype())?.reshape((b * t, c))?) // (b·t, C)
    }
}

/// `c_fc → activation → c_proj`.
#[derive(Clone)]
struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn load(
        cfg: &Gpt2Config,
        layer: usize,
        act: Activation,
        store: &mut TensorStore,
    ) -> Result2<Self> {
        let (c, inner) = (cfg.n_embd, cfg.inner_size());
        let p = format!("h.{layer}.mlp");
        Ok(Self {
            c_fc: conv1d(store, &format!("{p}.c_fc"), c, inner)?,
            c_proj: conv1d(store, &format!("{p}.c_proj"), inner, c)?,
            act,
        })
    }

    /// The pre-activation `c_fc(x)`: (n, C) → (n, inner).
    fn pre_activation(&self, x: &Tensor) -> Result<Tensor> {
        self.c_fc.forward(x)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.pre_activation(x)?; // (n, inner)
        self.c_proj.forward(&self.act.forward(&h)?) // (n, C)
    }
}

/// Pre-LayerNorm transformer block.
#[derive(Clone)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn load(
        cfg: &Gpt2Config,
        layer: usize,
        act: Activation,
        store: &mut TensorStore,
    ) -> Result2<Self> {
        let p = format!("h.{layer}");
        Ok(Self {
            ln_1: layer_norm(store, &format!("{p}.ln_1"), cfg)?,
            attn: Attention::load(cfg, layer, store)?,
            ln_2: layer_norm(store, &format!("{p}.ln_2"), cfg)?,
            mlp: Mlp::load(cfg, layer, act, store)?,
        })
    }

    /// `x`: (b·t, C) → (b·t, C).
    fn forward(
        &self,
        x: &Tensor,
        b: usize,
        t: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?, b, t, cache)?)?;
        &x + self.mlp.forward(&self.ln_2.forward(&x)?)?
    }
}

/// GPT-2 with an LM head tied to `wte` (or a separate `lm_head.weight` when
/// `tie_word_embeddings` is false).
#[derive(Clone)]
pub struct Gpt2 {
    wte: Embedding,
    wpe: Tensor,
    h: Vec<Block>,
    ln_f: LayerNorm,
    /// (vocab, C)
    lm_head: Tensor,
    config: Gpt2Config,
    plan: ActivationPlan,
}

type Result2<T> = std::result::Result<T, LoadError>;

/// What [`Gpt2::forward_traced`] exposes.
pub struct Trace {
    /// (t, vocab)
    pub logits: Tensor,
    /// Zero-valued variables added to each block's input.
    pub probes: Vec<Var>,
    /// Each block's `c_fc` weight (inner, C) as a variable.
    pub c_fc: Vec<Var>,
    /// Each block's MLP pre-activation `c_fc(ln_2(x))`, (t, inner).
    pub pre_activations: Vec<Tensor>,
}

/// Keys and values of the positions decoded so far, per layer.
pub struct Cache {
    layers: Vec<KvCache>,
    len: usize,
}

impl Cache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn conv1d(store: &mut TensorStore, prefix: &str, n_in: usize, n_out: usize) -> Result2<Linear> {
    let w = store.take_conv1d(&format!("{prefix}.weight"), n_in, n_out)?; // (out, in)
    let b = store.take(&format!("{prefix}.bias"), &[n_out])?;
    Ok(Linear::new(w, Some(b)))
}

fn layer_norm(store: &mut TensorStore, prefix: &str, cfg: &Gpt2Config) -> Result2<LayerNorm> {
    let w = store.take(&format!("{prefix}.weight"), &[cfg.n_embd])?;
    let b = store.take(&format!("{prefix}.bias"), &[cfg.n_embd])?;
    Ok(LayerNorm::new(w, b, cfg.layer_norm_epsilon))
}

impl Gpt2 {
    /// Builds the model from a checkpoint's tensors; every key must be present with the
    /// shape the config implies, and nothing unexpected may be left over.
    pub fn load(cfg: &Gpt2Config, plan: ActivationPlan, mut store: TensorStore) -> Result2<Self> {
        debug_assert_eq!(
            plan.per_layer.len(),
            cfg.n_layer,
            "plan built for another depth"
        );
        let (v, c) = (cfg.vocab_size, cfg.n_embd);
        let wte = store.take("wte.weight", &[v, c])?;
        let wpe = store.take("wpe.weight", &[cfg.n_positions, c])?;
        let h = (0..cfg.n_layer)
            .map(|i| Block::load(cfg, i, plan.per_layer[i], &mut store))
            .collect::<Result2<Vec<_>>>()?;
        let ln_f = layer_norm(&mut store, "ln_f", cfg)?;
        let lm_head = if cfg.tie_word_embeddings {
            wte.clone()
        } else {
            store.take("lm_head.weight", &[v, c])?
        };
        // A tied checkpoint may still store lm_head; transformers ignores it, and so do we.
        store.finish(&["lm_head.weight"])?;
        Ok(Self {
            wte: Embedding::new(wte, c),
            wpe,
            h,
            ln_f,
            lm_head,
            config: cfg.clone(),
            plan,
        })
    }

    /// The same weights (shared, not copied) with another activation plan.
    pub fn with_plan(&self, plan: ActivationPlan) -> Self {
        debug_assert_eq!(plan.per_layer.len(), self.h.len());
        let mut model = self.clone();
        for (block, &act) in model.h.iter_mut().zip(&plan.per_layer) {
            block.mlp.act = act;
        }
        model.plan = plan;
        model
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    pub fn plan(&self) -> &ActivationPlan {
        &self.plan
    }

    pub fn device(&self) -> &Device {
        self.wpe.device()
    }

    pub fn dtype(&self) -> DType {
        self.wpe.dtype()
    }

    /// Token + position embeddings for `tokens` (b, t) of u32 ids at positions
    /// `start .. start + t`: (b·t, C).
    fn embed(&self, tokens: &Tensor, start: usize) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        if start + t > self.config.n_positions {
            candle_core::bail!(
                "positions {start}..{} exceed the model's {} positions",
                start + t,
                self.config.n_positions
            );
        }
        let tok = self.wte.forward(&tokens.flatten_all()?)?; // (b·t, C)
        let pos = self.wpe.narrow(0, start, t)?.repeat((b, 1))?; // (b·t, C)
        tok + pos
    }

    /// An empty key/value cache for incremental decoding of up to `n_positions` tokens.
    pub fn new_cache(&self) -> Cache {
        let n = self.config.n_positions;
        Cache {
            layers: (0..self.h.len()).map(|_| KvCache::new(1, n)).collect(),
            len: 0,
        }
    }

    /// Final hidden states (b, t, C) of `tokens` (b, t) that continue the sequence held in
    /// `cache`, which is extended with them.
    pub fn hidden_states_cached(&self, tokens: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let mut x = self.embed(tokens, cache.len)?; // (b·t, C)
        for (block, kv) in self.h.iter().zip(cache.layers.iter_mut()) {
            x = block.forward(&x, b, t, Some(kv))?;
        }
        cache.len += t;
        self.ln_f.forward(&x)?.reshape((b, t, self.config.n_embd))
    }

    /// The residual stream entering each block, then the output of the last block:
    /// `n_layer + 1` tensors of shape (b, t, C).
    pub fn residual_stream(&self, tokens: &Tensor) -> Result<Vec<Tensor>> {
        let (b, t) = tokens.dims2()?;
        let c = self.config.n_embd;
        let mut x = self.embed(tokens, 0)?;
        let mut out = Vec::with_capacity(self.h.len() + 1);
        for block in &self.h {
            out.push(x.reshape((b, t, c))?);
            x = block.forward(&x, b, t, None)?;
        }
        out.push(x.reshape((b, t, c))?);
        Ok(out)
    }

    /// One sequence (1, t) through a forward pass made only of differentiable candle ops
    /// (composed layer norm, attention and activations), for autograd diagnostics. Each
    /// block's input gets a zero-valued probe variable added, so `∂loss/∂probe_l` is the
    /// gradient with respect to the residual stream entering block l; the `c_fc` weights are
    /// variables too.
    pub fn forward_traced(&self, tokens: &Tensor) -> Result<Trace> {
        let (b, t) = tokens.dims2()?;
        if b != 1 {
            candle_core::bail!("forward_traced takes one sequence, got a batch of {b}");
        }
        let c = self.config.n_embd;
        let eps = self.config.layer_norm_epsilon as f32;
        let ln = |x: &Tensor, n: &LayerNorm| -> Result<Tensor> {
            let bias = n
                .bias()
                .ok_or_else(|| candle_core::Error::Msg("layer norm without bias".into()))?;
            candle_nn::ops::layer_norm_slow(x, n.weight(), bias, eps)
        };
        let linear = |x: &Tensor, w: &Tensor, l: &Linear| -> Result<Tensor> {
            let y = x.matmul(&w.t()?)?;
            match l.bias() {
                Some(bias) => y.broadcast_add(bias),
                None => Ok(y),
            }
        };
        let mut x = self.embed(tokens, 0)?; // (t, C)
        let mut trace = Trace {
            logits: x.clone(),
            probes: Vec::new(),
            c_fc: Vec::new(),
            pre_activations: Vec::new(),
        };
        for block in &self.h {
            let probe = Var::zeros((t, c), x.dtype(), x.device())?;
            let x_in = (&x + probe.as_tensor())?; // (t, C)
            let a = &block.attn;
            let qkv = linear(&ln(&x_in, &block.ln_1)?, a.c_attn.weight(), &a.c_attn)?.reshape((
                1,
                t,
                3 * c,
            ))?;
            let (q, k, v) = (
                qkv.narrow(2, 0, c)?,
                qkv.narrow(2, c, c)?,
                qkv.narrow(2, 2 * c, c)?,
            );
            let y = kernels::causal_attention_composed(&q, &k, &v, a.n_head, a.scale, true)?; // (1, t, C)
            let x_mid = (&x_in + linear(&y.reshape((t, c))?, a.c_proj.weight(), &a.c_proj)?)?;
            let w_fc = Var::from_tensor(block.mlp.c_fc.weight())?; // (inner, C)
            let h = linear(&ln(&x_mid, &block.ln_2)?, w_fc.as_tensor(), &block.mlp.c_fc)?; // (t, inner)
            let f = block.mlp.act.forward_composed(&h)?;
            x = (&x_mid + linear(&f, block.mlp.c_proj.weight(), &block.mlp.c_proj)?)?;
            trace.probes.push(probe);
            trace.c_fc.push(w_fc);
            trace.pre_activations.push(h);
        }
        let hidden = ln(&x, &self.ln_f)?; // (t, C)
        trace.logits = hidden.matmul(&self.lm_head.t()?)?; // (t, vocab)
        Ok(trace)
    }

    /// Final hidden states after `ln_f`: (b, t) tokens → (b, t, C).
    pub fn hidden_states(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let mut x = self.embed(tokens, 0)?; // (b·t, C)
        for block in &self.h {
            x = block.forward(&x, b, t, None)?;
        }
        self.ln_f.forward(&x)?.reshape((b, t, self.config.n_embd))
    }

    /// LM-head logits for hidden states of any leading shape: (…, C) → (…, vocab).
    pub fn logits_from_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        let c = hidden.dim(D::Minus1)?;
        let mut out_shape = hidden.dims().to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = self.config.vocab_size;
        }
        let flat = hidden.reshape(((), c))?; // (n, C)
        flat.matmul(&self.lm_head.t()?)?.reshape(out_shape) // (…, vocab)
    }

    /// Logits at every position: (b, t) tokens → (b, t, vocab).
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        self.logits_from_hidden(&self.hidden_states(tokens)?)
    }
}
