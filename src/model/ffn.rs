//! The feed-forward block: `Plain` (`proj(act(fc(x)))`, GPT-2, GPT-NeoX, OPT) or `Gated`
//! (`down(act(gate(x)) · up(x))`, Llama, Qwen2), with one swappable nonlinearity. Swapping on
//! a gated model replaces the gate's activation.

use crate::model::linear::{Combine, Linear};
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

    /// `x`: (n, C) → (n, C), plus `residual` when given (added in the last projection's
    /// epilogue). With a tracer the pre-activation is recorded; with a differentiable one the
    /// first weight becomes a variable too. Untraced fast passes fuse the activation (and the
    /// gate's product) into the projections.
    pub fn forward(
        &self,
        x: &Tensor,
        mode: Mode,
        tracer: Option<&mut Tracer>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let res = residual.map(|r| (Combine::Add, r));
        let f = match (tracer, mode) {
            (None, Mode::Fast) => self
                .first()
                .forward_fused(x, Some(self.activation()), None)?,
            (tracer, mode) => self.traced_activation(x, mode, tracer)?,
        }; // (n, inner)
        match self {
            Self::Plain { proj, .. } => proj.forward_fused(&f, None, res),
            Self::Gated { up, down, .. } => {
                let g = up.forward_fused(x, None, Some((Combine::Mul, &f)))?;
                down.forward_fused(&g, None, res)
            }
        }
    }

    /// `act(first(x))` with the pre-activation recorded (and the weight made a variable when
    /// the tracer is differentiable).
    fn traced_activation(
        &self,
        x: &Tensor,
        mode: Mode,
        tracer: Option<&mut Tracer>,
    ) -> Result<Tensor> {
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
        match mode {
            Mode::Fast => act.forward(&h),
            Mode::Differentiable => crate::model::grad::activation::forward_differentiable(act, &h),
        }
    }
}
