//! Llama (`LlamaForCausalLM`, also SmolLM, TinyLlama and other Llama-architecture repos) and
//! Qwen2 (`Qwen2ForCausalLM`): RMSNorm, rotary embeddings (`rope_theta`, and the `linear` and
//! `llama3` scalings), grouped-query attention (`num_key_value_heads`), separate q/k/v
//! projections (fused at load) with biases on q/k/v for Qwen2 (all four with Llama's
//! `attention_bias`), a gated MLP `down(act(gate(x)) · up(x))` with `hidden_act`, a tied or
//! untied head, and `head_dim` when the config gives it.
//!
//! Keys: `model.embed_tokens`, `model.layers.{i}.{input_layernorm, post_attention_layernorm,
//! self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}`, `model.norm`, `lm_head`.

use std::sync::Arc;

use serde::Deserialize;

use crate::kernels::attention::Heads;
use crate::model::activation::Activation;
use crate::model::attention::Attention;
use crate::model::config::{parse_as, positive, positive_eps, token_id, ArchConfig};
use crate::model::decoder::{Block, Decoder, Residual};
use crate::model::ffn::Ffn;
use crate::model::norm::Norm;
use crate::model::params::Params;
use crate::model::plan::ActivationPlan;
use crate::model::registry::Family;
use crate::model::rope::{self, Rope, RopeFields, RopeSpec};
use crate::model::ModelInfo;
use crate::weights::{LoadError, TensorStore};

pub const LLAMA: Family = Family {
    model_type: "llama",
    architectures: &["LlamaForCausalLM"],
    parse: |text| {
        Ok(Arc::new(parse_as(text, |c: &LlamaConfig| {
            c.validate(false)
        })?))
    },
};

pub const QWEN2: Family = Family {
    model_type: "qwen2",
    architectures: &["Qwen2ForCausalLM"],
    parse: |text| {
        let mut cfg: LlamaConfig = parse_as(text, |c: &LlamaConfig| c.validate(true))?;
        cfg.qwen2 = true;
        Ok(Arc::new(cfg))
    },
};

/// `transformers.LlamaConfig` and `Qwen2Config` (the fields they share, and Qwen2's
/// sliding-window switch, which must be off).
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "silu")]
    pub hidden_act: String,
    #[serde(default = "max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub pretraining_tp: Option<usize>,
    #[serde(flatten)]
    pub rope: RopeFields,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// Set for `model_type` "qwen2" (q/k/v biases), not read from the file.
    #[serde(skip)]
    pub qwen2: bool,
}

fn silu() -> String {
    "silu".into()
}
fn max_positions() -> usize {
    2048
}
fn eps() -> f64 {
    1e-6
}

impl LlamaConfig {
    fn validate(&self, qwen2: bool) -> Result<(), String> {
        positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("head_dim", self.head_dim()),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size ({}) is not divisible by num_attention_heads ({}) and no head_dim is given",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if qwen2 && self.use_sliding_window {
            return Err(
                "use_sliding_window = true (sliding-window attention) is not supported".into(),
            );
        }
        if self.pretraining_tp.is_some_and(|tp| tp > 1) {
            return Err("pretraining_tp > 1 (sliced projections) is not supported".into());
        }
        positive_eps("rms_norm_eps", self.rms_norm_eps)?;
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
        self.rope.resolve(1.0, self.max_position_embeddings)
    }

    fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    fn model_type(&self) -> &'static str {
        match self.qwen2 {
            true => "qwen2",
            false => "llama",
        }
    }

    fn norm(&self, p: &mut Params, prefix: &str) -> Result<Norm, LoadError> {
        Norm::rms(p, prefix, self.hidden_size, self.rms_norm_eps)
    }

    fn attention(&self, p: &mut Params, a: &str, rope: &Arc<Rope>) -> Result<Attention, LoadError> {
        let c = self.hidden_size;
        let heads = Heads {
            n_head: self.num_attention_heads,
            n_kv: self.kv_heads(),
        };
        let d = self.head_dim();
        let (qw, kw) = (heads.n_head * d, heads.n_kv * d);
        let (q, k, v) = (
            format!("{a}.q_proj"),
            format!("{a}.k_proj"),
            format!("{a}.v_proj"),
        );
        let qkv_bias = self.qwen2 || self.attention_bias;
        Ok(Attention {
            qkv: p.fused_linear(&[(&q, qw), (&k, kw), (&v, kw)], c, qkv_bias)?,
            out: p.linear(&format!("{a}.o_proj"), qw, c, self.attention_bias)?,
            heads,
            head_dim: d,
            scale: 1.0 / (d as f64).sqrt(),
            rope: Some(rope.clone()),
            upcast: false,
        })
    }

    fn block(
        &self,
        p: &mut Params,
        i: usize,
        act: Activation,
        rope: &Arc<Rope>,
    ) -> Result<Block, LoadError> {
        let (c, inner, bias) = (self.hidden_size, self.intermediate_size, self.mlp_bias);
        let l = format!("layers.{i}");
        let ffn = Ffn::Gated {
            gate: p.linear(&format!("{l}.mlp.gate_proj"), c, inner, bias)?,
            up: p.linear(&format!("{l}.mlp.up_proj"), c, inner, bias)?,
            down: p.linear(&format!("{l}.mlp.down_proj"), inner, c, bias)?,
            act,
        };
        Ok(Block {
            ln1: self.norm(p, &format!("{l}.input_layernorm"))?,
            attn: self.attention(p, &format!("{l}.self_attn"), rope)?,
            ln2: self.norm(p, &format!("{l}.post_attention_layernorm"))?,
            ffn,
            residual: Residual::PreNorm,
        })
    }
}

impl ArchConfig for LlamaConfig {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            model_type: self.model_type().into(),
            n_layer: self.num_hidden_layers,
            n_positions: self.max_position_embeddings,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            activation: self.activation().unwrap_or(Activation::Silu),
            gated: true,
            bos_id: token_id(&self.bos_token_id),
            eos_id: token_id(&self.eos_token_id),
            tied_head: self.tie_word_embeddings,
        }
    }

    fn prefix(&self) -> &'static str {
        "model."
    }

    fn is_buffer(&self, key: &str) -> bool {
        key.ends_with(".rotary_emb.inv_freq")
    }

    fn build(&self, plan: ActivationPlan, store: &mut TensorStore) -> Result<Decoder, LoadError> {
        let device = store.device().clone();
        let mut p = Params::new(store, self.prefix());
        let (v, c) = (self.vocab_size, self.hidden_size);
        let embed = p.take("embed_tokens.weight", &[v, c])?;
        let rope = rope::shared(
            self.rope_spec(),
            self.head_dim(),
            self.max_position_embeddings,
            &device,
        )?;
        let blocks = (0..self.num_hidden_layers)
            .map(|i| self.block(&mut p, i, plan.per_layer[i], &rope))
            .collect::<Result<Vec<_>, _>>()?;
        let final_norm = Some(self.norm(&mut p, "norm")?);
        let lm_head = p.head(
            self.tie_word_embeddings,
            &embed,
            &["lm_head.weight"],
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

    fn describe(&self) -> Vec<(String, serde_json::Value)> {
        let rope = self.rope_spec().ok();
        vec![
            ("hidden_size".into(), self.hidden_size.into()),
            ("num_hidden_layers".into(), self.num_hidden_layers.into()),
            (
                "num_attention_heads".into(),
                self.num_attention_heads.into(),
            ),
            ("num_key_value_heads".into(), self.kv_heads().into()),
            ("head_dim".into(), self.head_dim().into()),
            ("intermediate_size".into(), self.intermediate_size.into()),
            (
                "max_position_embeddings".into(),
                self.max_position_embeddings.into(),
            ),
            ("hidden_act".into(), self.hidden_act.clone().into()),
            (
                "rope".into(),
                rope.map(|r| format!("theta {}, {}", r.theta, r.scaling))
                    .unwrap_or_default()
                    .into(),
            ),
        ]
    }
}
