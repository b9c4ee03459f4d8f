//! GPT-NeoX (`GPTNeoXForCausalLM`: Pythia, GPT-NeoX-20B): rotary embeddings on the first
//! `partial_rotary_factor` (`rotary_pct`) of each head, a fused `query_key_value` laid out
//! per head (`[q_h k_h v_h]` for each head h, rearranged to q|k|v once at load), parallel
//! residual when `use_parallel_residual` (else sequential), LayerNorms with bias, a plain
//! MLP (`dense_h_to_4h → act → dense_4h_to_h`), an untied head (`embed_out`).
//!
//! Keys: `gpt_neox.embed_in`, `gpt_neox.layers.{i}.{input_layernorm,
//! post_attention_layernorm, attention.query_key_value, attention.dense, mlp.dense_h_to_4h,
//! mlp.dense_4h_to_h}`, `gpt_neox.final_layer_norm`, `embed_out` (or `lm_head`).

use std::sync::Arc;

use crate::model::linear::Linear;
use candle_core::Tensor;
use serde::Deserialize;

use crate::kernels::attention::Heads;
use crate::model::activation::Activation;
use crate::model::attention::Attention;
use crate::model::config::{parse_as, positive, positive_eps, token_id, ArchConfig};
use crate::model::decoder::{Block, Decoder, Residual};
use crate::model::export::StateDict;
use crate::model::ffn::Ffn;
use crate::model::norm::Norm;
use crate::model::params::Params;
use crate::model::plan::ActivationPlan;
use crate::model::registry::Family;
use crate::model::rope::{self, Rope, RopeFields, RopeSpec};
use crate::model::ModelInfo;
use crate::weights::{LoadError, TensorStore};

pub const FAMILY: Family = Family {
    model_type: "gpt_neox",
    architectures: &["GPTNeoXForCausalLM"],
    parse: |text| Ok(Arc::new(parse_as(text, NeoxConfig::validate)?)),
};

/// `transformers.GPTNeoXConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct NeoxConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "yes")]
    pub use_parallel_residual: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "yes")]
    pub attention_bias: bool,
    #[serde(flatten)]
    pub rope: RopeFields,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

/// Stored names outside the blocks (`build` and `export` both use these).
const EMBED_IN: &str = "embed_in.weight";
const FINAL_NORM: &str = "final_layer_norm";
const EMBED_OUT: &str = "embed_out.weight";

/// The stored names of block i's parts (without `.weight`/`.bias`).
struct BlockKeys {
    input_layernorm: String,
    post_attention_layernorm: String,
    query_key_value: String,
    dense: String,
    dense_h_to_4h: String,
    dense_4h_to_h: String,
}

impl BlockKeys {
    fn of(i: usize) -> Self {
        let l = format!("layers.{i}");
        Self {
            input_layernorm: format!("{l}.input_layernorm"),
            post_attention_layernorm: format!("{l}.post_attention_layernorm"),
            query_key_value: format!("{l}.attention.query_key_value"),
            dense: format!("{l}.attention.dense"),
            dense_h_to_4h: format!("{l}.mlp.dense_h_to_4h"),
            dense_4h_to_h: format!("{l}.mlp.dense_4h_to_h"),
        }
    }
}

/// `t` with its first dimension, (a·b·d) rows, regrouped from (a, b, d) to (b, a, d).
fn regroup(t: &Tensor, a: usize, b: usize, d: usize) -> candle_core::Result<Tensor> {
    let tail = &t.dims()[1..];
    let mut shape = vec![a, b, d];
    shape.extend_from_slice(tail);
    let mut flat = vec![a * b * d];
    flat.extend_from_slice(tail);
    t.reshape(shape)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape(flat)
}

fn gelu() -> String {
    "gelu".into()
}
fn max_positions() -> usize {
    2048
}
fn eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl NeoxConfig {
    fn validate(&self) -> Result<(), String> {
        positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size ({}) is not divisible by num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        positive_eps("layer_norm_eps", self.layer_norm_eps)?;
        self.activation()?;
        self.rope_spec()?;
        Ok(())
    }

    fn activation(&self) -> Result<Activation, String> {
        self.hidden_act
            .parse()
            .map_err(|e| format!("hidden_act: {e}"))
    }

    fn rope_spec(&self) -> Result<RopeSpec, String> {
        self.rope.resolve(0.25, self.max_position_embeddings)
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn norm(&self, p: &mut Params, prefix: &str) -> Result<Norm, LoadError> {
        Norm::layer(p, prefix, self.hidden_size, self.layer_norm_eps, true)
    }

    /// `query_key_value` with rows `[q_0 k_0 v_0 q_1 k_1 v_1 …]` (d rows each) rearranged
    /// to `[q_0 q_1 … k_0 k_1 … v_0 v_1 …]`.
    fn qkv(&self, p: &mut Params, prefix: &str) -> Result<Linear, LoadError> {
        let (c, h, d) = (self.hidden_size, self.num_attention_heads, self.head_dim());
        let l = p.linear(prefix, c, 3 * c, self.attention_bias)?;
        let key = format!("{prefix}.weight");
        let candle = |cause| LoadError::Candle {
            key: key.clone(),
            cause,
        };
        let w = regroup(l.weight(), h, 3, d).map_err(candle)?;
        let b = l
            .bias()
            .map(|b| regroup(b, h, 3, d))
            .transpose()
            .map_err(candle)?;
        Ok(Linear::new(w, b))
    }

    /// The inverse of [`NeoxConfig::qkv`]: q|k|v rows back to per-head `[q_h k_h v_h]`.
    fn export_qkv(&self, s: &mut StateDict, prefix: &str, l: &Linear) -> candle_core::Result<()> {
        let (h, d) = (self.num_attention_heads, self.head_dim());
        let w = regroup(l.weight(), 3, h, d)?;
        let b = l.bias().map(|b| regroup(b, 3, h, d)).transpose()?;
        s.linear(prefix, &Linear::new(w, b))
    }

    fn block(
        &self,
        p: &mut Params,
        i: usize,
        act: Activation,
        rope: &Arc<Rope>,
    ) -> Result<Block, LoadError> {
        let (c, inner) = (self.hidden_size, self.intermediate_size);
        let k = BlockKeys::of(i);
        let bias = self.attention_bias;
        let attn = Attention {
            qkv: self.qkv(p, &k.query_key_value)?,
            out: p.linear(&k.dense, c, c, bias)?,
            heads: Heads::mha(self.num_attention_heads),
            head_dim: self.head_dim(),
            scale: 1.0 / (self.head_dim() as f64).sqrt(),
            rope: Some(rope.clone()),
            upcast: false,
        };
        let ffn = Ffn::Plain {
            fc: p.linear(&k.dense_h_to_4h, c, inner, true)?,
            proj: p.linear(&k.dense_4h_to_h, inner, c, true)?,
            act,
        };
        Ok(Block {
            ln1: self.norm(p, &k.input_layernorm)?,
            attn,
            ln2: self.norm(p, &k.post_attention_layernorm)?,
            ffn,
            residual: match self.use_parallel_residual {
                true => Residual::Parallel,
                false => Residual::PreNorm,
            },
        })
    }
}

impl ArchConfig for NeoxConfig {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            model_type: "gpt_neox".into(),
            n_layer: self.num_hidden_layers,
            n_positions: self.max_position_embeddings,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            activation: self.activation().unwrap_or(Activation::Gelu),
            gated: false,
            bos_id: token_id(&self.bos_token_id),
            eos_id: token_id(&self.eos_token_id),
            tied_head: self.tie_word_embeddings,
        }
    }

    fn prefix(&self) -> &'static str {
        "gpt_neox."
    }

    fn is_buffer(&self, key: &str) -> bool {
        [
            ".attention.bias",
            ".attention.masked_bias",
            ".rotary_emb.inv_freq",
        ]
        .iter()
        .any(|s| key.ends_with(s))
    }

    fn build(&self, plan: ActivationPlan, store: &mut TensorStore) -> Result<Decoder, LoadError> {
        let device = store.device().clone();
        let mut p = Params::new(store, self.prefix());
        let (v, c) = (self.vocab_size, self.hidden_size);
        let embed = p.take(EMBED_IN, &[v, c])?;
        let rope = rope::shared(
            self.rope_spec(),
            self.head_dim(),
            self.max_position_embeddings,
            &device,
        )?;
        let blocks = (0..self.num_hidden_layers)
            .map(|i| self.block(&mut p, i, plan.per_layer[i], &rope))
            .collect::<Result<Vec<_>, _>>()?;
        let final_norm = Some(self.norm(&mut p, FINAL_NORM)?);
        let lm_head = p.head(
            self.tie_word_embeddings,
            &embed,
            &[EMBED_OUT, "lm_head.weight"],
            &[v, c],
        )?;
        Ok(Decoder::new(
            self.info(),
            embed,
            blocks,
            final_norm,
            lm_head,
            plan,
        ))
    }

    fn export(&self, d: &Decoder) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut s = StateDict::new(self.prefix());
        s.put(EMBED_IN, &d.embed)?;
        for (i, b) in d.blocks.iter().enumerate() {
            let k = BlockKeys::of(i);
            s.norm(&k.input_layernorm, &b.ln1)?;
            self.export_qkv(&mut s, &k.query_key_value, &b.attn.qkv)?;
            s.linear(&k.dense, &b.attn.out)?;
            s.norm(&k.post_attention_layernorm, &b.ln2)?;
            let Ffn::Plain { fc, proj, .. } = &b.ffn else {
                candle_core::bail!("GPT-NeoX block {i} has a gated MLP");
            };
            s.linear(&k.dense_h_to_4h, fc)?;
            s.linear(&k.dense_4h_to_h, proj)?;
        }
        if let Some(n) = &d.final_norm {
            s.norm(FINAL_NORM, n)?;
        }
        if !self.tie_word_embeddings {
            s.put_top(EMBED_OUT, &d.lm_head)?;
        }
        Ok(s.tensors)
    }

    fn activation_key(&self) -> &'static str {
        "hidden_act"
    }

    fn describe(&self) -> Vec<(String, serde_json::Value)> {
        let rope = self.rope_spec().ok();
        vec![
            ("hidden_size".into(), self.hidden_size.into()),
            ("num_hidden_layers".into(), self.num_hidden_layers.into()),
            (
                "num_attention_heads".into(),
                self.num_attention_heads.into(),
            ),
            ("intermediate_size".into(), self.intermediate_size.into()),
            (
                "max_position_embeddings".into(),
                self.max_position_embeddings.into(),
            ),
            ("hidden_act".into(), self.hidden_act.clone().into()),
            (
                "use_parallel_residual".into(),
                self.use_parallel_residual.into(),
            ),
            (
                "rotary".into(),
                rope.map(|r| format!("{} of each head, base {}", r.partial, r.theta))
                    .unwrap_or_default()
                    .into(),
            ),
        ]
    }
}
