//! The feed-forward block: `Plain` (`proj(act(fc(x)))`, GPT-2, GPT-NeoX, OPT) or `Gated`
//! (`down(act(gate(x)) · up(x))`, Llama, Qwen2), with one swappable nonlinearity. Swapping on
//! a gated model replaces the gate's activation.

use crate::model::linear::Linear;
use candle_core::{Result, Tensor, Var};

use crate::model::activation::Activation;
use crate::model::decoder::Mode;
use crate::model::Tracer;

#[derive(Clone)]
pub enum Ffn {
    Plain {
        fc: Linear,
        proj: Linear,
        act: Activation,
    },
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
        act: Activation,
    },
}

impl Ffn {
    pub fn activation(&self) -> Activation {
        match self {
            Self::Plain { act, .. } | Self::Gated { act, .. } => *act,
        }
    }

    pub fn set_activation(&mut self, new: Activation) {
        match self {
            Self::Plain { act, .. } | Self::Gated { act, .. } => *act = new,
        }
    }

    /// The layer whose output the activation reads (`fc` or `gate`).
    fn first(&self) -> &Linear {
        match self {
            Self::Plain { fc, .. } => fc,
            Self::Gated { gate, .. } => gate,
        }
    }

    /// `x`: (n, C) → (n, C). With a tracer the pre-activation is recorded; with a
    /// differentiable one the first weight becomes a variable too.
    pub fn forward(&self, x: &Tensor, mode: Mode, tracer: Option<&mut Tracer>) -> Result<Tensor> {
        let h = match tracer {
            None => self.first().forward(x)?,
            Some(tr) if !tr.differentiable => {
                let h = self.first().forward(x)?;
                tr.pre_activations.push(h.clone());
                h
            }
            Some(tr) => {
                let w = Var::from_tensor(self.first().weight())?; // (inner, C)
                let h =
                    Linear::new(w.as_tensor().clone(), self.first().bias().cloned()).forward(x)?;
                tr.ffn_weights.push(w);
                tr.pre_activations.push(h.clone());
                h
            }
        }; // (n, inner)
        let act = self.activation();
        let f = match mode {
            Mode::Fast => act.forward(&h)?,
            Mode::Differentiable => crate::model::activation_grad::forward_differentiable(act, &h)?,
        };
        match self {
            Self::Plain { proj, .. } => proj.forward(&f),
            Self::Gated { up, down, .. } => down.forward(&(f * up.forward(x)?)?),
        }
    }
}
