//! The trainable copy of a model: the same [`Decoder`], every parameter replaced by a candle
//! [`Var`] (a copy, so the loaded model is untouched), each with a name, whether AdamW decays
//! it, and which of them are each layer's MLP weights (for the per-layer gradient norms).
//! A tied LM head stays one variable with the embedding.
//!
//! Names are the decoder's own (`blocks.3.attn.qkv.weight`): fused projections train as one
//! matrix, and [`crate::model::config::ArchConfig::export`] splits them when a checkpoint is
//! written. Weight decay applies to the weight matrices of linear layers (attention, MLP,
//! projections, an untied LM head); not to biases, norm weights, or token and position
//! embeddings (nor to a head tied to the embedding).

use std::collections::HashMap;

use candle_core::{Result, Tensor, TensorId, Var};

use crate::model::attention::Attention;
use crate::model::decoder::{Block, Decoder, LearnedPositions};
use crate::model::ffn::Ffn;
use crate::model::linear::Linear;
use crate::model::norm::Norm;

/// One trainable tensor.
pub struct Param {
    pub name: String,
    pub var: Var,
    /// Whether AdamW's weight decay applies.
    pub decay: bool,
}

/// The model, its parameters, and each layer's MLP weights as (role, index into `params`):
/// `fc`, `proj` (plain MLP) or `gate`, `up`, `down` (gated).
pub struct Trainable {
    pub model: Decoder,
    pub params: Vec<Param>,
    pub mlp: Vec<Vec<(&'static str, usize)>>,
}

impl Trainable {
    /// A trainable copy of `d`.
    pub fn new(d: &Decoder) -> Result<Self> {
        let mut w = Walker::default();
        let embed = w.take(&d.embed, "embed", false)?;
        let positions = d
            .positions
            .as_ref()
            .map(|p| {
                Ok::<_, candle_core::Error>(LearnedPositions {
                    table: w.take(&p.table, "positions", false)?,
                    offset: p.offset,
                })
            })
            .transpose()?;
        let project_in = d
            .project_in
            .as_ref()
            .map(|l| w.linear(l, "project_in"))
            .transpose()?;
        let mut blocks = Vec::with_capacity(d.blocks.len());
        let mut mlp = Vec::with_capacity(d.blocks.len());
        for (i, b) in d.blocks.iter().enumerate() {
            let (block, roles) = w.block(b, i)?;
            blocks.push(block);
            mlp.push(roles);
        }
        let final_norm = d
            .final_norm
            .as_ref()
            .map(|n| w.norm(n, "final_norm"))
            .transpose()?;
        let project_out = d
            .project_out
            .as_ref()
            .map(|l| w.linear(l, "project_out"))
            .transpose()?;
        let lm_head = w.take(&d.lm_head, "lm_head", true)?;
        let model = Decoder {
            info: d.info.clone(),
            embed,
            positions,
            project_in,
            blocks,
            final_norm,
            project_out,
            lm_head,
            plan: d.plan.clone(),
        };
        Ok(Self {
            model,
            params: w.params,
            mlp,
        })
    }

    /// Elements in all parameters (a tied head counted once).
    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }
}

/// Replaces tensors by variables, the same tensor (a tied head) by the same variable.
#[derive(Default)]
struct Walker {
    seen: HashMap<TensorId, Tensor>,
    params: Vec<Param>,
}

impl Walker {
    fn take(&mut self, t: &Tensor, name: &str, decay: bool) -> Result<Tensor> {
        if let Some(v) = self.seen.get(&t.id()) {
            return Ok(v.clone());
        }
        let var = Var::from_tensor(&t.contiguous()?)?;
        let v = var.as_tensor().clone();
        self.seen.insert(t.id(), v.clone());
        self.params.push(Param {
            name: name.to_string(),
            var,
            decay,
        });
        Ok(v)
    }

    fn linear(&mut self, l: &Linear, name: &str) -> Result<Linear> {
        let w = self.take(l.weight(), &format!("{name}.weight"), true)?;
        let b = l
            .bias()
            .map(|b| self.take(b, &format!("{name}.bias"), false))
            .transpose()?;
        Ok(Linear::new(w, b))
    }

    fn norm(&mut self, n: &Norm, name: &str) -> Result<Norm> {
        let weight = format!("{name}.weight");
        Ok(match n {
            Norm::Layer(ln) => {
                let w = self.take(ln.weight(), &weight, false)?;
                match ln.bias() {
                    Some(b) => {
                        let b = self.take(b, &format!("{name}.bias"), false)?;
                        Norm::Layer(candle_nn::LayerNorm::new(w, b, ln.eps()))
                    }
                    None => Norm::Layer(candle_nn::LayerNorm::new_no_bias(w, ln.eps())),
                }
            }
            Norm::Rms { weight: w, eps } => Norm::Rms {
                weight: self.take(w, &weight, false)?,
                eps: *eps,
            },
        })
    }

    /// Block `i`, and its MLP weights' (role, parameter index).
    fn block(&mut self, b: &Block, i: usize) -> Result<(Block, Vec<(&'static str, usize)>)> {
        let p = format!("blocks.{i}");
        let ln1 = self.norm(&b.ln1, &format!("{p}.ln1"))?;
        let attn = Attention {
            qkv: self.linear(&b.attn.qkv, &format!("{p}.attn.qkv"))?,
            out: self.linear(&b.attn.out, &format!("{p}.attn.out"))?,
            ..b.attn.clone()
        };
        let ln2 = self.norm(&b.ln2, &format!("{p}.ln2"))?;
        let mut roles = Vec::new();
        let mut mlp = |w: &mut Self, l: &Linear, role: &'static str| {
            let name = format!("{p}.ffn.{role}");
            let l = w.linear(l, &name)?;
            let weight = format!("{name}.weight");
            roles.extend(
                w.params
                    .iter()
                    .position(|q| q.name == weight)
                    .map(|i| (role, i)),
            );
            Ok::<_, candle_core::Error>(l)
        };
        let ffn = match &b.ffn {
            Ffn::Plain { fc, proj, act } => Ffn::Plain {
                fc: mlp(self, fc, "fc")?,
                proj: mlp(self, proj, "proj")?,
                act: *act,
            },
            Ffn::Gated {
                gate,
                up,
                down,
                act,
            } => Ffn::Gated {
                gate: mlp(self, gate, "gate")?,
                up: mlp(self, up, "up")?,
                down: mlp(self, down, "down")?,
                act: *act,
            },
        };
        let block = Block {
            ln1,
            attn,
            ln2,
            ffn,
            residual: b.residual,
        };
        Ok((block, roles))
    }
}
