//! GPT-2 (`GPT2LMHeadModel`): learned positions, pre-LayerNorm blocks, a fused `c_attn`
//! stored as `Conv1D` (in, out), a plain MLP (`c_fc → act → c_proj`), an LM head tied to
//! `wte` unless `tie_word_embeddings` is false.
//!
//! Keys: `wte`, `wpe`, `h.{i}.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}`,
//! `ln_f`, bare (openai-community/gpt2) or under `transformer.` (`save_pretrained`).

pub mod config;

use std::sync::Arc;

use crate::kernels::attention::Heads;
use crate::model::activation::Activation;
use crate::model::attention::Attention;
use crate::model::config::{parse_as, ArchConfig};
use crate::model::decoder::{Block, Decoder, LearnedPositions, Residual};
use crate::model::ffn::Ffn;
use crate::model::norm::Norm;
use crate::model::params::Params;
use crate::model::plan::ActivationPlan;
use crate::model::registry::Family;
use crate::model::ModelInfo;
use crate::weights::{LoadError, TensorStore};
use config::Gpt2Config;

pub const FAMILY: Family = Family {
    model_type: "gpt2",
    architectures: &["GPT2LMHeadModel", "GPT2Model"],
    parse: |text| Ok(Arc::new(parse_as(text, Gpt2Config::validate)?)),
};

impl ArchConfig for Gpt2Config {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            model_type: "gpt2".into(),
            n_layer: self.n_layer,
            n_positions: self.n_positions,
            vocab_size: self.vocab_size,
            hidden_size: self.n_embd,
            activation: self.activation().unwrap_or(Activation::GeluNew),
            gated: false,
            bos_id: crate::model::config::token_id(&self.bos_token_id),
            eos_id: self.eos_id(),
            tied_head: self.tie_word_embeddings,
        }
    }

    /// The store strips `transformer.` itself (the layouts predate the other families).
    fn prefix(&self) -> &'static str {
        ""
    }

    fn is_buffer(&self, key: &str) -> bool {
        key.starts_with("h.") && (key.ends_with(".attn.bias") || key.ends_with(".attn.masked_bias"))
    }

    fn build(&self, plan: ActivationPlan, store: &mut TensorStore) -> Result<Decoder, LoadError> {
        let mut p = Params::new(store, self.prefix());
        let (v, c) = (self.vocab_size, self.n_embd);
        let wte = p.take("wte.weight", &[v, c])?;
        let wpe = p.take("wpe.weight", &[self.n_positions, c])?;
        let blocks = (0..self.n_layer)
            .map(|i| self.block(&mut p, i, plan.per_layer[i]))
            .collect::<Result<Vec<_>, _>>()?;
        let final_norm = Some(self.norm(&mut p, "ln_f")?);
        let lm_head = p.head(self.tie_word_embeddings, &wte, &["lm_head.weight"], &[v, c])?;
        Ok(Decoder {
            positions: Some(LearnedPositions {
                table: wpe,
                offset: 0,
            }),
            ..Decoder::new(self.info(), wte, blocks, final_norm, lm_head, plan)
        })
    }

    fn describe(&self) -> Vec<(String, serde_json::Value)> {
        vec![
            ("n_embd".into(), self.n_embd.into()),
            ("n_layer".into(), self.n_layer.into()),
            ("n_head".into(), self.n_head.into()),
            ("n_inner".into(), self.inner_size().into()),
            ("n_positions".into(), self.n_positions.into()),
            (
                "activation_function".into(),
                self.activation_function.clone().into(),
            ),
            ("layer_norm_epsilon".into(), self.layer_norm_epsilon.into()),
        ]
    }
}

impl Gpt2Config {
    fn norm(&self, p: &mut Params, prefix: &str) -> Result<Norm, LoadError> {
        Norm::layer(p, prefix, self.n_embd, self.layer_norm_epsilon, true)
    }

    fn block(&self, p: &mut Params, i: usize, act: Activation) -> Result<Block, LoadError> {
        let (c, inner) = (self.n_embd, self.inner_size());
        let h = format!("h.{i}");
        let mut scale = match self.scale_attn_weights {
            true => 1.0 / (self.head_dim() as f64).sqrt(),
            false => 1.0,
        };
        if self.scale_attn_by_inverse_layer_idx {
            scale /= (i + 1) as f64;
        }
        let attn = Attention {
            qkv: p.conv1d(&format!("{h}.attn.c_attn"), c, 3 * c)?,
            out: p.conv1d(&format!("{h}.attn.c_proj"), c, c)?,
            heads: Heads::mha(self.n_head),
            head_dim: self.head_dim(),
            scale,
            rope: None,
            upcast: self.reorder_and_upcast_attn,
        };
        let ffn = Ffn::Plain {
            fc: p.conv1d(&format!("{h}.mlp.c_fc"), c, inner)?,
            proj: p.conv1d(&format!("{h}.mlp.c_proj"), inner, c)?,
            act,
        };
        Ok(Block {
            ln1: self.norm(p, &format!("{h}.ln_1"))?,
            attn,
            ln2: self.norm(p, &format!("{h}.ln_2"))?,
            ffn,
            residual: Residual::PreNorm,
        })
    }
}
