//! OPT (`OPTForCausalLM`): learned positions with OPT's offset of 2, separate q/k/v
//! projections (fused at load), pre-LN (`do_layer_norm_before`) or post-LN blocks (OPT-350m),
//! `project_in`/`project_out` when `word_embed_proj_dim` < `hidden_size`, biases when
//! `enable_bias`, a plain MLP (`fc1 → act → fc2`, ReLU by default), a tied head.
//!
//! Keys: `model.decoder.{embed_tokens, embed_positions, project_in, project_out,
//! final_layer_norm}`, `model.decoder.layers.{i}.{self_attn.{q,k,v,out}_proj,
//! self_attn_layer_norm, fc1, fc2, final_layer_norm}`, `lm_head` (untied only); facebook's
//! checkpoints omit the `model.` prefix.

use std::sync::Arc;

use candle_core::Tensor;
use serde::Deserialize;

use crate::kernels::attention::Heads;
use crate::model::activation::Activation;
use crate::model::attention::Attention;
use crate::model::config::{parse_as, positive, token_id, ArchConfig};
use crate::model::decoder::{Block, Decoder, LearnedPositions, Residual};
use crate::model::export::StateDict;
use crate::model::ffn::Ffn;
use crate::model::norm::Norm;
use crate::model::params::Params;
use crate::model::plan::ActivationPlan;
use crate::model::registry::Family;
use crate::model::ModelInfo;
use crate::weights::{LoadError, TensorStore};

pub const FAMILY: Family = Family {
    model_type: "opt",
    architectures: &["OPTForCausalLM"],
    parse: |text| Ok(Arc::new(parse_as(text, OptConfig::validate)?)),
};

/// Rows of the position table before position 0.
const POSITION_OFFSET: usize = 2;
/// `nn.LayerNorm`'s default, which OPT uses.
const LAYER_NORM_EPS: f64 = 1e-5;

/// `transformers.OPTConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct OptConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub ffn_dim: usize,
    #[serde(default = "max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "yes")]
    pub do_layer_norm_before: bool,
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    #[serde(default)]
    pub word_embed_proj_dim: Option<usize>,
    #[serde(default = "relu")]
    pub activation_function: String,
    #[serde(default = "yes")]
    pub enable_bias: bool,
    #[serde(default = "yes")]
    pub layer_norm_elementwise_affine: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

/// Stored names outside the blocks (`build` and `export` both use these).
const EMBED_TOKENS: &str = "decoder.embed_tokens.weight";
const EMBED_POSITIONS: &str = "decoder.embed_positions.weight";
const PROJECT_IN: &str = "decoder.project_in";
const PROJECT_OUT: &str = "decoder.project_out";
const FINAL_NORM: &str = "decoder.final_layer_norm";
const LM_HEAD: &str = "lm_head.weight";

/// The stored names of block i's parts (without `.weight`/`.bias`).
struct BlockKeys {
    q: String,
    k: String,
    v: String,
    out: String,
    attn_norm: String,
    fc1: String,
    fc2: String,
    final_norm: String,
}

impl BlockKeys {
    fn of(i: usize) -> Self {
        let l = format!("decoder.layers.{i}");
        let a = format!("{l}.self_attn");
        Self {
            q: format!("{a}.q_proj"),
            k: format!("{a}.k_proj"),
            v: format!("{a}.v_proj"),
            out: format!("{a}.out_proj"),
            attn_norm: format!("{l}.self_attn_layer_norm"),
            fc1: format!("{l}.fc1"),
            fc2: format!("{l}.fc2"),
            final_norm: format!("{l}.final_layer_norm"),
        }
    }
}

fn max_positions() -> usize {
    2048
}
fn relu() -> String {
    "relu".into()
}
fn yes() -> bool {
    true
}

impl OptConfig {
    fn validate(&self) -> Result<(), String> {
        positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("ffn_dim", self.ffn_dim),
            ("max_position_embeddings", self.max_position_embeddings),
            ("word_embed_proj_dim", self.proj_dim()),
        ])?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size ({}) is not divisible by num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        self.activation()?;
        Ok(())
    }

    fn activation(&self) -> Result<Activation, String> {
        self.activation_function
            .parse()
            .map_err(|e| format!("activation_function: {e}"))
    }

    fn proj_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// A LayerNorm of the hidden width: stored weight and bias, or none at all when
    /// `layer_norm_elementwise_affine` is false (weight 1, bias 0).
    fn norm(&self, p: &mut Params, prefix: &str) -> Result<Norm, LoadError> {
        let c = self.hidden_size;
        if self.layer_norm_elementwise_affine {
            return Norm::layer(p, prefix, c, LAYER_NORM_EPS, true);
        }
        let device = p.device().clone();
        let candle = |cause| LoadError::Candle {
            key: format!("{prefix} (no affine parameters)"),
            cause,
        };
        let w = Tensor::ones(c, p.dtype(), &device).map_err(candle)?;
        let b = Tensor::zeros(c, p.dtype(), &device).map_err(candle)?;
        Ok(Norm::Layer(candle_nn::LayerNorm::new(w, b, LAYER_NORM_EPS)))
    }

    fn block(&self, p: &mut Params, i: usize, act: Activation) -> Result<Block, LoadError> {
        let (c, inner, bias) = (self.hidden_size, self.ffn_dim, self.enable_bias);
        let k = BlockKeys::of(i);
        let attn = Attention {
            qkv: p.fused_linear(&[(&k.q, c), (&k.k, c), (&k.v, c)], c, bias)?,
            out: p.linear(&k.out, c, c, bias)?,
            heads: Heads::mha(self.num_attention_heads),
            head_dim: self.head_dim(),
            scale: 1.0 / (self.head_dim() as f64).sqrt(),
            rope: None,
            upcast: false,
        };
        let ffn = Ffn::Plain {
            fc: p.linear(&k.fc1, c, inner, bias)?,
            proj: p.linear(&k.fc2, inner, c, bias)?,
            act,
        };
        Ok(Block {
            ln1: self.norm(p, &k.attn_norm)?,
            attn,
            ln2: self.norm(p, &k.final_norm)?,
            ffn,
            residual: match self.do_layer_norm_before {
                true => Residual::PreNorm,
                false => Residual::PostNorm,
            },
        })
    }
}

impl ArchConfig for OptConfig {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            model_type: "opt".into(),
            n_layer: self.num_hidden_layers,
            n_positions: self.max_position_embeddings,
            vocab_size: self.vocab_size,
            hidden_size: self.proj_dim(),
            activation: self.activation().unwrap_or(Activation::Relu),
            gated: false,
            bos_id: token_id(&self.bos_token_id),
            eos_id: token_id(&self.eos_token_id),
            tied_head: self.tie_word_embeddings,
        }
    }

    fn prefix(&self) -> &'static str {
        "model."
    }

    fn is_buffer(&self, _key: &str) -> bool {
        false
    }

    fn build(&self, plan: ActivationPlan, store: &mut TensorStore) -> Result<Decoder, LoadError> {
        let mut p = Params::new(store, self.prefix());
        let (v, c, e) = (self.vocab_size, self.hidden_size, self.proj_dim());
        let embed = p.take(EMBED_TOKENS, &[v, e])?;
        let n_pos = self.max_position_embeddings + POSITION_OFFSET;
        let table = p.take(EMBED_POSITIONS, &[n_pos, c])?;
        let projected = e != c;
        let project_in = match projected {
            true => Some(p.linear(PROJECT_IN, e, c, false)?),
            false => None,
        };
        let blocks = (0..self.num_hidden_layers)
            .map(|i| self.block(&mut p, i, plan.per_layer[i]))
            .collect::<Result<Vec<_>, _>>()?;
        let final_norm = match self.do_layer_norm_before && !self.remove_final_layer_norm {
            true => Some(self.norm(&mut p, FINAL_NORM)?),
            false => None,
        };
        let project_out = match projected {
            true => Some(p.linear(PROJECT_OUT, c, e, false)?),
            false => None,
        };
        let lm_head = p.head(self.tie_word_embeddings, &embed, &[LM_HEAD], &[v, e])?;
        let positions = LearnedPositions {
            table,
            offset: POSITION_OFFSET,
        };
        Ok(Decoder {
            positions: Some(positions),
            project_in,
            project_out,
            ..Decoder::new(self.info(), embed, blocks, final_norm, lm_head, plan)
        })
    }

    fn export(&self, d: &Decoder) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut s = StateDict::new(self.prefix());
        let c = self.hidden_size;
        // Norms without affine parameters are not stored.
        let affine = self.layer_norm_elementwise_affine;
        let norm = |s: &mut StateDict, key: &str, n: &Norm| match affine {
            true => s.norm(key, n),
            false => Ok(()),
        };
        s.put(EMBED_TOKENS, &d.embed)?;
        if let Some(p) = &d.positions {
            s.put(EMBED_POSITIONS, &p.table)?;
        }
        if let Some(p) = &d.project_in {
            s.linear(PROJECT_IN, p)?;
        }
        for (i, b) in d.blocks.iter().enumerate() {
            let k = BlockKeys::of(i);
            s.split_linear(&[(&k.q, c), (&k.k, c), (&k.v, c)], &b.attn.qkv)?;
            s.linear(&k.out, &b.attn.out)?;
            norm(&mut s, &k.attn_norm, &b.ln1)?;
            let Ffn::Plain { fc, proj, .. } = &b.ffn else {
                candle_core::bail!("OPT block {i} has a gated MLP");
            };
            s.linear(&k.fc1, fc)?;
            s.linear(&k.fc2, proj)?;
            norm(&mut s, &k.final_norm, &b.ln2)?;
        }
        if let Some(n) = &d.final_norm {
            norm(&mut s, FINAL_NORM, n)?;
        }
        if let Some(p) = &d.project_out {
            s.linear(PROJECT_OUT, p)?;
        }
        if !self.tie_word_embeddings {
            s.put_top(LM_HEAD, &d.lm_head)?;
        }
        Ok(s.tensors)
    }

    fn activation_key(&self) -> &'static str {
        "activation_function"
    }

    fn untrainable(&self) -> Option<String> {
        (!self.layer_norm_elementwise_affine).then(|| {
            "layer_norm_elementwise_affine = false (norms without parameters) is not supported for training".into()
        })
    }

    fn describe(&self) -> Vec<(String, serde_json::Value)> {
        vec![
            ("hidden_size".into(), self.hidden_size.into()),
            ("num_hidden_layers".into(), self.num_hidden_layers.into()),
            (
                "num_attention_heads".into(),
                self.num_attention_heads.into(),
            ),
            ("ffn_dim".into(), self.ffn_dim.into()),
            ("word_embed_proj_dim".into(), self.proj_dim().into()),
            (
                "max_position_embeddings".into(),
                self.max_position_embeddings.into(),
            ),
            (
                "activation_function".into(),
                self.activation_function.clone().into(),
            ),
            (
                "do_layer_norm_before".into(),
                self.do_layer_norm_before.into(),
            ),
            ("enable_bias".into(), self.enable_bias.into()),
        ]
    }
}
