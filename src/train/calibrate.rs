//! `--calibrate`: after a load-time swap, fit per layer the `a` and `b` of `a·f(h) + b` so
//! that the swapped-in activation's output has the mean and standard deviation the original
//! activation `g` has on the same pre-activations `h` of a calibration text. What is left
//! is the difference in *shape*: this separates "wrong scale and offset" from "wrong shape"
//! (claim 2 of the note, isolated).
//!
//! Layers are fitted in order, each on the pre-activations of the model whose earlier layers
//! are already calibrated, so every layer of the final model matches: on the calibration
//! text, `mean(a·f(h) + b) = mean(g(h))` and `std(a·f(h) + b) = std(g(h))` with `h` that
//! model's own pre-activations (population statistics over every position and MLP unit).

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::eval::diagnose::diagnose_windows;
use crate::model::activation::Activation;
use crate::model::plan::ActivationPlan;
use crate::model::{CausalLm, Tracer};

/// Calibration tokens when none are specified: the first 4,096 of the text.
pub const DEFAULT_CALIBRATION_TOKENS: usize = 4096;

/// One layer's fit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerFit {
    pub layer: usize,
    /// The swapped-in activation `f` (before calibration).
    pub activation: String,
    /// The fitted coefficients: f32 values (as the model computes with), held as f64.
    pub a: f64,
    pub b: f64,
    /// Mean and population std of the original activation's output `g(h)`.
    pub target_mean: f64,
    pub target_std: f64,
    /// Mean and population std of `f(h)` before the fit.
    pub swapped_mean: f64,
    pub swapped_std: f64,
}

/// The fits of every swapped layer, and the text they were made on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    pub tokens: usize,
    pub context: usize,
    pub windows: usize,
    pub layers: Vec<LayerFit>,
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("calibration needs at least 2 tokens of text, got {0}")]
    TooFewTokens(usize),
    #[error("calibration context must be between 2 and the model's {n_positions} positions, got {context}")]
    Context { context: usize, n_positions: usize },
    #[error("layer {layer}: {activation}(h) is constant on the calibration text, so no scale can match the original's spread")]
    Constant { layer: usize, activation: String },
    #[error("calibration forward pass: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Mean and population std, from sums in f64.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: f64,
    pub sum: f64,
    pub sum2: f64,
}

impl Moments {
    pub fn of(values: &[f32]) -> Self {
        values.iter().fold(Self::default(), |m, &v| {
            let v = v as f64;
            Self {
                n: m.n + 1.0,
                sum: m.sum + v,
                sum2: m.sum2 + v * v,
            }
        })
    }

    pub fn add(&mut self, o: Self) {
        self.n += o.n;
        self.sum += o.sum;
        self.sum2 += o.sum2;
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.n
    }

    pub fn std(&self) -> f64 {
        (self.sum2 / self.n - self.mean().powi(2)).max(0.0).sqrt()
    }
}

/// Fits every swapped layer of `model` on `tokens` (windows of `context` tokens) and
/// returns the calibrated plan with the fits. Layers that are not swapped are left alone.
pub fn calibrate(
    model: &dyn CausalLm,
    tokens: &[u32],
    context: usize,
) -> Result<(ActivationPlan, Calibration), CalibrateError> {
    let n_positions = model.info().n_positions;
    if context < 2 || context > n_positions {
        return Err(CalibrateError::Context {
            context,
            n_positions,
        });
    }
    let windows = diagnose_windows(tokens.len(), context);
    if windows.is_empty() {
        return Err(CalibrateError::TooFewTokens(tokens.len()));
    }
    let mut plan = model.plan().clone();
    let mut layers = Vec::new();
    for layer in plan.swapped_layers() {
        let current = model.with_plan(plan.clone());
        let (f, g) = (plan.per_layer[layer], plan.original);
        let [swapped, target] = layer_moments(current.as_ref(), tokens, &windows, layer, [f, g])?;
        if swapped.std() <= 1e-12 * swapped.mean().abs().max(1.0) {
            return Err(CalibrateError::Constant {
                layer,
                activation: f.name(),
            });
        }
        let a = (target.std() / swapped.std()) as f32;
        let b = (target.mean() - a as f64 * swapped.mean()) as f32;
        plan.per_layer[layer] = Activation::affine(f, a, b);
        layers.push(LayerFit {
            layer,
            activation: f.name(),
            a: a as f64,
            b: b as f64,
            target_mean: target.mean(),
            target_std: target.std(),
            swapped_mean: swapped.mean(),
            swapped_std: swapped.std(),
        });
    }
    let calibration = Calibration {
        tokens: tokens.len(),
        context,
        windows: windows.len(),
        layers,
    };
    Ok((plan, calibration))
}

/// The moments of each of `acts` applied to layer `layer`'s pre-activations of `model`,
/// over the windows `[begin, end)` of `tokens`.
pub fn layer_moments<const N: usize>(
    model: &dyn CausalLm,
    tokens: &[u32],
    windows: &[(usize, usize)],
    layer: usize,
    acts: [Activation; N],
) -> Result<[Moments; N], CalibrateError> {
    let mut out = [Moments::default(); N];
    for &(b, e) in windows {
        let input = Tensor::from_slice(&tokens[b..e], (1, e - b), model.device())?;
        let mut tracer = Tracer::observer();
        model.forward_hidden(&input, None, Some(&mut tracer))?;
        let h = tracer.pre_activations[layer].to_dtype(DType::F32)?;
        for (m, act) in out.iter_mut().zip(acts) {
            let y: Vec<f32> = act.forward(&h)?.flatten_all()?.to_vec1()?;
            m.add(Moments::of(&y));
        }
    }
    Ok(out)
}
