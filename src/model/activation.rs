//! The feed-forward activation: one enum for the whole tool, with exactly the formulas
//! PyTorch / Hugging Face use, their names, and how each is applied to a tensor.
//!
//! On CPU every activation runs through one fused elementwise kernel (`kernels::elementwise::map_f32`):
//! candle's own CPU `gelu` is scalar and costs ~30 ms on a 1024×3072 tensor. On other devices
//! the formulas are composed from candle ops (reusing `candle_nn::Activation` where it matches
//! HF exactly), and the tests check both paths agree.

use std::fmt;
use std::str::FromStr;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::kernels::elementwise;
use crate::kernels::math;

/// Declares the activations once: the enum (plus `Affine`), the lists of names, and each
/// name's spelling. `hf` are Hugging Face's `ACT2FN` keys, in the order help texts list
/// them; `ours` are this tool's calibrated sigmoids.
macro_rules! activations {
    (
        hf { $( $(#[$hdoc:meta])* $hv:ident => $hn:literal, )* }
        ours { $( $(#[$odoc:meta])* $ov:ident => $on:literal, )* }
    ) => {
        /// A feed-forward activation function. Names follow Hugging Face's `ACT2FN` keys.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Activation {
            $( $(#[$hdoc])* $hv, )*
            $( $(#[$odoc])* $ov, )*
            /// `a·base(x) + b` (written `affine(NAME, a, b)`), e.g. a calibrated swap.
            Affine(Affine),
        }

        /// The activations without coefficients: Hugging Face's names, then the calibrated
        /// sigmoids.
        pub const BASES: [Activation; [$($hn,)* $($on,)*].len()] =
            [$(Activation::$hv,)* $(Activation::$ov,)*];

        /// The calibrated sigmoids: names of this tool, not of Hugging Face's `ACT2FN`.
        pub const CALIBRATED: [Activation; [$($on,)*].len()] = [$(Activation::$ov,)*];

        /// Every activation Hugging Face's `ACT2FN` also names, in the order help texts list
        /// them.
        pub const ALL_ACTIVATIONS: [Activation; [$($hn,)*].len()] = [$(Activation::$hv,)*];

        impl Activation {
            fn base_name(self) -> &'static str {
                match self {
                    $( Self::$hv => $hn, )*
                    $( Self::$ov => $on, )*
                    Self::Affine(_) => "affine",
                }
            }

            /// The in-place f32 kernel of a fused epilogue: a loop monomorphised for this
            /// activation (`None` for an affine, which has no loop of its own).
            pub fn in_place_kernel(self) -> Option<fn(&mut [f32])> {
                match self {
                    $( Self::$hv => Some(|xs: &mut [f32]| {
                        elementwise::map_in_place(xs, |x| Activation::$hv.eval(x))
                    }), )*
                    $( Self::$ov => Some(|xs: &mut [f32]| {
                        elementwise::map_in_place(xs, |x| Activation::$ov.eval(x))
                    }), )*
                    Self::Affine(_) => None,
                }
            }
        }

        /// `act` over a slice with the elementwise kernel; the match is outside the loop so
        /// that each activation gets its own vectorised loop (an affine: its base's, then
        /// `a·y + b`).
        pub fn map_f32(xs: &[f32], act: Activation) -> Vec<f32> {
            match act {
                $( Activation::$hv => elementwise::map_f32(xs, |x| Activation::$hv.eval(x)), )*
                $( Activation::$ov => elementwise::map_f32(xs, |x| Activation::$ov.eval(x)), )*
                Activation::Affine(af) => {
                    let (a, b) = (af.a(), af.b());
                    elementwise::map_f32(&map_f32(xs, af.base()), move |y| a * y + b)
                }
            }
        }
    };
}

activations! {
    hf {
        /// GPT-2's tanh approximation, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
        GeluNew => "gelu_new",
        /// Exact GELU, `0.5·x·(1 + erf(x/√2))`.
        Gelu => "gelu",
        /// PyTorch's `gelu(approximate="tanh")`: the same formula as `gelu_new`.
        GeluPytorchTanh => "gelu_pytorch_tanh",
        /// `x·σ(1.702·x)`.
        QuickGelu => "quick_gelu",
        Relu => "relu",
        /// `relu(x)²`.
        Relu2 => "relu2",
        /// `min(max(x, 0), 6)`.
        Relu6 => "relu6",
        /// `x` for `x > 0`, else `0.01·x`.
        LeakyRelu => "leaky_relu",
        /// `x` for `x > 0`, else `exp(x) − 1` (α = 1).
        Elu => "elu",
        /// `x·σ(x)` (alias `swish`).
        Silu => "silu",
        /// `σ(x) = 1/(1 + e^−x)`.
        Sigmoid => "sigmoid",
        /// `relu6(x + 3)/6`, as `torch.nn.Hardsigmoid`.
        HardSigmoid => "hard_sigmoid",
        Tanh => "tanh",
        /// `ln(1 + e^x)`, and `x` itself above 20, as `torch.nn.Softplus` (β = 1, threshold 20).
        Softplus => "softplus",
        /// `x·tanh(softplus(x))`.
        Mish => "mish",
        /// `x` (alias `linear`).
        Identity => "identity",
    }
    ours {
        /// `σ(x) − ½`: sigmoid's shape, centred on 0 (claim 2 isolated).
        SigmoidCentered => "sigmoid_centered",
        /// `4σ(x) − 2 = 2·tanh(x/2)`: centred, and slope 1 at 0 like the GELUs.
        SigmoidScaled => "sigmoid_scaled",
    }
}

/// `a·base(x) + b`. The base is kept as an index into [`BASES`] and the coefficients as
/// their bits, so that the activation stays `Copy`, `Eq`, `Ord` and `Hash`; nested affines
/// are folded into one, so the base is never itself affine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Affine {
    base: u8,
    a: u32,
    b: u32,
}

impl Affine {
    /// The function the coefficients apply to.
    pub fn base(self) -> Activation {
        BASES[self.base as usize]
    }

    pub fn a(self) -> f32 {
        f32::from_bits(self.a)
    }

    pub fn b(self) -> f32 {
        f32::from_bits(self.b)
    }
}

/// An activation name that is not one of ours (or a malformed `affine(…)`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", match detail {
    Some(d) => format!("activation '{name}': {d}"),
    None => format!("unknown activation '{name}'; valid names: {}", valid_names()),
})]
pub struct UnknownActivation {
    pub name: String,
    /// What is wrong with an `affine(…)`; `None` for an unknown name.
    pub detail: Option<String>,
}

/// The valid names, comma-separated, aliases in parentheses.
pub fn valid_names() -> String {
    let mut names: Vec<String> = BASES
        .iter()
        .map(|a| match a {
            Activation::Silu => "silu (swish)".to_string(),
            Activation::Identity => "identity (linear)".to_string(),
            a => a.name(),
        })
        .collect();
    names.push("affine(NAME, a, b)".into());
    names.join(", ")
}

impl Activation {
    /// `a·base(x) + b` as one activation (a nested affine is folded into its base).
    pub fn affine(base: Activation, a: f32, b: f32) -> Self {
        let (base, a, b) = match base {
            Self::Affine(inner) => (inner.base(), a * inner.a(), a * inner.b() + b),
            base => (base, a, b),
        };
        let index = BASES.iter().position(|&x| x == base).unwrap_or(0) as u8;
        // +0.0 for −0.0, so that equal functions compare equal.
        let bits = |v: f32| (v + 0.0).to_bits();
        Self::Affine(Affine {
            base: index,
            a: bits(a),
            b: bits(b),
        })
    }

    /// The canonical name: Hugging Face's, this tool's (`sigmoid_centered`), or
    /// `affine(NAME,a,b)` with the shortest decimals that give back the same `f32`s.
    pub fn name(self) -> String {
        match self {
            Self::Affine(af) => format!("affine({},{},{})", af.base(), af.a(), af.b()),
            base => base.base_name().to_string(),
        }
    }

    /// The function at one point, in f32, with the formula the fast kernel uses.
    #[inline(always)]
    pub fn eval(self, x: f32) -> f32 {
        match self {
            Self::GeluNew | Self::GeluPytorchTanh => math::gelu_tanh(x),
            Self::Gelu => math::gelu_erf(x),
            Self::QuickGelu => x * math::sigmoid(1.702 * x),
            Self::Relu => x.max(0.0),
            Self::Relu2 => {
                let r = x.max(0.0);
                r * r
            }
            Self::Relu6 => x.clamp(0.0, 6.0),
            Self::LeakyRelu => {
                if x > 0.0 {
                    x
                } else {
                    0.01 * x
                }
            }
            Self::Elu => {
                if x > 0.0 {
                    x
                } else {
                    x.exp_m1()
                }
            }
            Self::Silu => x * math::sigmoid(x),
            Self::Sigmoid => math::sigmoid(x),
            Self::HardSigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Self::Tanh => math::tanh(x),
            Self::Softplus => softplus(x),
            Self::Mish => x * math::tanh(softplus(x)),
            Self::Identity => x,
            Self::SigmoidCentered => math::sigmoid(x) - 0.5,
            Self::SigmoidScaled => 2.0 * math::tanh(0.5 * x),
            Self::Affine(af) => affine_eval(af, x),
        }
    }

    /// The same function in f64 with the standard library's functions only: the independent
    /// reference the kernels are tested against.
    pub fn eval_f64(self, x: f64) -> f64 {
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        let softplus = |v: f64| if v > 20.0 { v } else { v.exp().ln_1p() };
        let gelu_tanh = |v: f64| {
            0.5 * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
        };
        match self {
            Self::GeluNew | Self::GeluPytorchTanh => gelu_tanh(x),
            Self::Gelu => 0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2)),
            Self::QuickGelu => x * sigmoid(1.702 * x),
            Self::Relu => x.max(0.0),
            Self::Relu2 => x.max(0.0).powi(2),
            Self::Relu6 => x.clamp(0.0, 6.0),
            Self::LeakyRelu => {
                if x > 0.0 {
                    x
                } else {
                    0.01 * x
                }
            }
            Self::Elu => {
                if x > 0.0 {
                    x
                } else {
                    x.exp_m1()
                }
            }
            Self::Silu => x * sigmoid(x),
            Self::Sigmoid => sigmoid(x),
            Self::HardSigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Self::Tanh => x.tanh(),
            Self::Softplus => softplus(x),
            Self::Mish => x * softplus(x).tanh(),
            Self::Identity => x,
            Self::SigmoidCentered => sigmoid(x) - 0.5,
            Self::SigmoidScaled => 4.0 * sigmoid(x) - 2.0,
            Self::Affine(af) => af.a() as f64 * af.base().eval_f64(x) + af.b() as f64,
        }
    }

    /// The exact derivative f′(x) of [`Activation::eval_f64`], in f64. At the kinks of
    /// piecewise functions it takes the value PyTorch's autograd uses (relu′(0) = 0, …).
    pub fn derivative_f64(self, x: f64) -> f64 {
        use std::f64::consts::PI;
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        match self {
            Self::GeluNew | Self::GeluPytorchTanh => {
                let k = (2.0 / PI).sqrt();
                let t = (k * (x + 0.044715 * x * x * x)).tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
            }
            Self::Gelu => {
                0.5 * (1.0 + erf_f64(x / std::f64::consts::SQRT_2))
                    + x * (-0.5 * x * x).exp() / (2.0 * PI).sqrt()
            }
            Self::QuickGelu => {
                let s = sigmoid(1.702 * x);
                s + 1.702 * x * s * (1.0 - s)
            }
            Self::Relu => f64::from(u8::from(x > 0.0)),
            Self::Relu2 => 2.0 * x.max(0.0),
            Self::Relu6 => f64::from(u8::from(x > 0.0 && x < 6.0)),
            Self::LeakyRelu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.01
                }
            }
            Self::Elu => {
                if x > 0.0 {
                    1.0
                } else {
                    x.exp()
                }
            }
            Self::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
            Self::Sigmoid => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
            Self::HardSigmoid => {
                if x > -3.0 && x < 3.0 {
                    1.0 / 6.0
                } else {
                    0.0
                }
            }
            Self::Tanh => 1.0 - x.tanh().powi(2),
            Self::Softplus => {
                if x > 20.0 {
                    1.0
                } else {
                    sigmoid(x)
                }
            }
            Self::Mish => {
                let sp = if x > 20.0 { x } else { x.exp().ln_1p() };
                let t = sp.tanh();
                t + x * (1.0 - t * t) * sigmoid(x)
            }
            Self::Identity => 1.0,
            Self::SigmoidCentered => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
            Self::SigmoidScaled => {
                let s = sigmoid(x);
                4.0 * s * (1.0 - s)
            }
            Self::Affine(af) => af.a() as f64 * af.base().derivative_f64(x),
        }
    }

    /// Applies the activation to a tensor of any shape, dtype and device.
    pub fn forward(self, xs: &Tensor) -> Result<Tensor> {
        if self == Self::Identity {
            return Ok(xs.clone());
        }
        if xs.device().is_cpu() {
            xs.contiguous()?.apply_op1_no_bwd(&ActivationOp(self))
        } else {
            self.forward_composed(xs)
        }
    }

    /// The activation composed from candle ops: the path used on CUDA and Metal (and the one
    /// autograd can differentiate).
    pub fn forward_composed(self, xs: &Tensor) -> Result<Tensor> {
        use candle_nn::Activation as C;
        use candle_nn::Module;
        match self {
            Self::GeluNew | Self::GeluPytorchTanh => C::NewGelu.forward(xs),
            Self::Gelu => C::Gelu.forward(xs),
            // candle's QuickGelu is x·σ(1.702x) too, but spell it out to keep the dtype rules
            // of the other branches.
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Self::Relu => C::Relu.forward(xs),
            Self::Relu2 => C::Relu2.forward(xs),
            Self::Relu6 => C::Relu6.forward(xs),
            Self::LeakyRelu => C::LeakyRelu(0.01).forward(xs),
            Self::Elu => C::Elu(1.0).forward(xs),
            Self::Silu => C::Silu.forward(xs),
            Self::Sigmoid => C::Sigmoid.forward(xs),
            Self::HardSigmoid => C::HardSigmoid.forward(xs),
            // candle_nn::Activation has no tanh, softplus or identity variant.
            Self::Tanh => xs.tanh(),
            Self::Softplus => softplus_composed(xs),
            Self::Mish => xs * softplus_composed(xs)?.tanh()?,
            Self::Identity => Ok(xs.clone()),
            Self::SigmoidCentered => C::Sigmoid.forward(xs)?.affine(1.0, -0.5),
            Self::SigmoidScaled => (xs * 0.5)?.tanh()?.affine(2.0, 0.0),
            Self::Affine(af) => af
                .base()
                .forward_composed(xs)?
                .affine(af.a() as f64, af.b() as f64),
        }
    }
}

/// [`Activation::eval`] of an affine, out of line (the base is never affine).
#[inline(never)]
fn affine_eval(af: Affine, x: f32) -> f32 {
    af.a() * af.base().eval(x) + af.b()
}

/// `ln(1 + e^x)`, switching to `x` above 20 like `torch.nn.Softplus`.
#[inline(always)]
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn softplus_composed(xs: &Tensor) -> Result<Tensor> {
    // (e^min(x,20) + 1).ln() where x ≤ 20, x where x > 20.
    let above = xs.gt(20.0)?;
    let soft = (xs.minimum(20.0)?.exp()? + 1.0)?.log()?;
    above.where_cond(xs, &soft)
}

/// erf in f64 to ~1e-15, from its Taylor series below 3 and the continued fraction of erfc
/// above: used only by the f64 reference.
fn erf_f64(x: f64) -> f64 {
    // erf(x) = 2/√π · Σ (-1)^n x^(2n+1) / (n! (2n+1)) for |x| < 3; erfc by Lentz's continued
    // fraction beyond.
    let ax = x.abs();
    let v = if ax < 3.0 {
        let mut sum = 0.0f64;
        let mut term = ax;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 3.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -ax * ax / n;
            if n > 200.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc via Lentz continued fraction.
        let mut f = ax;
        for k in (1..60).rev() {
            f = ax + (k as f64 / 2.0) / f;
        }
        1.0 - (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt())
    };
    v.copysign(x)
}

/// The fused elementwise CPU kernel behind [`Activation::forward`].
struct ActivationOp(Activation);

impl CustomOp1 for ActivationOp {
    fn name(&self) -> &'static str {
        "activation"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("activation: input not contiguous".into()))?;
        let act = self.0;
        let out = match storage {
            CpuStorage::F32(v) => CpuStorage::F32(map_f32(&v[start..end], act)),
            CpuStorage::F16(v) => {
                let x: Vec<f32> = v[start..end].iter().map(|h| h.to_f32()).collect();
                let y = map_f32(&x, act);
                CpuStorage::F16(y.into_iter().map(half::f16::from_f32).collect())
            }
            CpuStorage::BF16(v) => {
                let x: Vec<f32> = v[start..end].iter().map(|h| h.to_f32()).collect();
                let y = map_f32(&x, act);
                CpuStorage::BF16(y.into_iter().map(half::bf16::from_f32).collect())
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(v[start..end].iter().map(|&x| act.eval_f64(x)).collect())
            }
            _ => candle_core::bail!("activation: unsupported dtype"),
        };
        Ok((out, layout.shape().clone()))
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Activation {
    type Err = UnknownActivation;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let key = s.trim().to_ascii_lowercase();
        if let Some(args) = key.strip_prefix("affine") {
            return parse_affine(args).map_err(|detail| UnknownActivation {
                name: s.to_string(),
                detail: Some(detail),
            });
        }
        let alias = match key.as_str() {
            "swish" => Some(Self::Silu),
            "linear" => Some(Self::Identity),
            _ => None,
        };
        alias
            .or_else(|| BASES.iter().copied().find(|a| a.base_name() == key))
            .ok_or(UnknownActivation {
                name: s.to_string(),
                detail: None,
            })
    }
}

/// The `(NAME, a, b)` of `affine(NAME, a, b)`; NAME may itself be an affine.
fn parse_affine(args: &str) -> std::result::Result<Activation, String> {
    let usage = "expected affine(NAME, a, b), e.g. affine(sigmoid, 4, -2)";
    let inner = args
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| usage.to_string())?;
    // The last two commas outside parentheses separate a and b.
    let mut depth = 0i32;
    let mut commas = Vec::new();
    for (i, c) in inner.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => commas.push(i),
            _ => {}
        }
    }
    let [c1, c2] = commas[..] else {
        return Err(usage.to_string());
    };
    let base: Activation = inner[..c1]
        .parse()
        .map_err(|e: UnknownActivation| e.to_string())?;
    let coef = |name: &str, t: &str| {
        t.trim()
            .parse::<f32>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("{name} = '{}' is not a finite number ({usage})", t.trim()))
    };
    let (a, b) = (coef("a", &inner[c1 + 1..c2])?, coef("b", &inner[c2 + 1..])?);
    Ok(Activation::affine(base, a, b))
}

impl Serialize for Activation {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for Activation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn grid() -> Vec<f32> {
        // Dense around 0, sparse out to ±30, plus the switch points of the piecewise formulas.
        let mut xs: Vec<f32> = (-3000..=3000).map(|i| i as f32 * 0.01).collect();
        xs.extend((-30..=30).map(|i| i as f32));
        xs.extend([
            -3.0, 6.0, 20.0, 20.001, 19.999, 1e-6, -1e-6, 0.0, 87.0, -87.0,
        ]);
        xs
    }

    /// Every base activation and a few affines of them.
    fn every() -> Vec<Activation> {
        let mut all = BASES.to_vec();
        all.extend([
            Activation::affine(Activation::Sigmoid, 4.0, -2.0),
            Activation::affine(Activation::GeluNew, 1.5, 0.25),
            Activation::affine(Activation::Relu, -0.5, 3.0),
            Activation::affine(Activation::SigmoidScaled, 0.7, 0.1),
        ]);
        all
    }

    #[test]
    fn names_round_trip_and_aliases() {
        for a in every() {
            assert_eq!(a.name().parse::<Activation>().unwrap(), a);
            assert_eq!(a.to_string(), a.name());
        }
        assert_eq!("swish".parse::<Activation>().unwrap(), Activation::Silu);
        assert_eq!(
            "LINEAR".parse::<Activation>().unwrap(),
            Activation::Identity
        );
        let err = "gelu_10".parse::<Activation>().unwrap_err().to_string();
        assert!(err.contains("'gelu_10'"), "{err}");
        for a in BASES {
            assert!(err.contains(&a.name()), "{err} lacks {a}");
        }
        assert!(err.contains("affine(NAME, a, b)"), "{err}");
    }

    #[test]
    fn affine_parses_folds_and_explains_mistakes() {
        let a: Activation = " Affine( sigmoid , 4, -2 ) ".parse().unwrap();
        assert_eq!(a, Activation::affine(Activation::Sigmoid, 4.0, -2.0));
        assert_eq!(a.name(), "affine(sigmoid,4,-2)");
        let Activation::Affine(af) = a else {
            panic!("{a:?}")
        };
        assert_eq!(
            (af.base(), af.a(), af.b()),
            (Activation::Sigmoid, 4.0, -2.0)
        );
        // Nested: 2·(4σ − 2) + 1 = 8σ − 3.
        let nested: Activation = "affine(affine(sigmoid,4,-2),2,1)".parse().unwrap();
        assert_eq!(nested, Activation::affine(Activation::Sigmoid, 8.0, -3.0));
        assert_eq!(
            "affine(swish,1,-0)".parse::<Activation>().unwrap(),
            Activation::affine(Activation::Silu, 1.0, 0.0)
        );
        // Coefficients keep their exact f32 through the name.
        let c = Activation::affine(Activation::Tanh, 0.1 + 0.2, -1.0 / 3.0);
        assert_eq!(c.name().parse::<Activation>().unwrap(), c);
        for (bad, want) in [
            ("affine(sigmoid,4)", "expected affine(NAME, a, b)"),
            ("affine sigmoid,4,2", "expected affine(NAME, a, b)"),
            ("affine(sigmoid,x,2)", "a = 'x' is not a finite number"),
            ("affine(sigmoid,1,inf)", "b = 'inf' is not a finite number"),
            ("affine(nope,1,2)", "unknown activation 'nope'"),
        ] {
            let err = bad.parse::<Activation>().unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn calibrated_sigmoids_are_centred_and_scaled_sigmoids() {
        for x in grid() {
            let (x, s) = (x as f64, Activation::Sigmoid.eval_f64(x as f64));
            let centred = Activation::SigmoidCentered.eval_f64(x);
            let scaled = Activation::SigmoidScaled.eval_f64(x);
            assert!((centred - (s - 0.5)).abs() < 1e-15);
            assert!((scaled - 2.0 * (x / 2.0).tanh()).abs() < 1e-14, "{x}");
        }
        assert_eq!(Activation::SigmoidScaled.derivative_f64(0.0), 1.0);
    }

    #[test]
    fn fast_formulas_match_f64_reference() {
        for a in every() {
            let mut worst = (0.0f64, 0.0f32);
            for x in grid() {
                let got = a.eval(x) as f64;
                let want = a.eval_f64(x as f64);
                let err = (got - want).abs() / want.abs().max(1.0);
                if err > worst.0 {
                    worst = (err, x);
                }
            }
            assert!(
                worst.0 < 2e-6,
                "{a}: worst relative error {:e} at x = {}",
                worst.0,
                worst.1
            );
        }
    }

    #[test]
    fn derivatives_match_central_finite_differences() {
        // Points away from the kinks of relu-like functions (0, ±3, 6, 20).
        let xs: Vec<f64> = (-800..=800).map(|i| i as f64 * 0.01 + 0.0037).collect();
        for a in every() {
            for &x in &xs {
                let h = 1e-5;
                let fd = (a.eval_f64(x + h) - a.eval_f64(x - h)) / (2.0 * h);
                let d = a.derivative_f64(x);
                assert!(
                    (fd - d).abs() < 1e-6 * d.abs().max(1.0),
                    "{a}'({x}) = {d}, finite difference {fd}"
                );
            }
        }
        assert_eq!(Activation::Relu.derivative_f64(0.0), 0.0);
    }

    #[test]
    fn kernel_and_composed_paths_agree() {
        let xs = grid();
        let t = Tensor::from_vec(xs.clone(), xs.len(), &Device::Cpu).unwrap();
        for a in every() {
            let fast: Vec<f32> = a.forward(&t).unwrap().to_vec1().unwrap();
            let composed: Vec<f32> = a.forward_composed(&t).unwrap().to_vec1().unwrap();
            let (worst, at) = fast
                .iter()
                .zip(&composed)
                .enumerate()
                .map(|(i, (f, c))| ((f - c).abs() / c.abs().max(1.0), i))
                .fold((0.0f32, 0), |m, v| if v.0 > m.0 { v } else { m });
            assert!(
                worst < 1e-5,
                "{a}: kernel vs composed differ by {worst:e} at x = {}",
                xs[at]
            );
        }
    }

    #[test]
    fn half_precision_inputs_are_supported() {
        let t = Tensor::new(&[-2.0f32, -0.5, 0.0, 0.5, 2.0], &Device::Cpu).unwrap();
        for dtype in [candle_core::DType::F16, candle_core::DType::BF16] {
            let y = Activation::GeluNew
                .forward(&t.to_dtype(dtype).unwrap())
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let want = [-0.04540229f32, -0.154_286, 0.0, 0.345714, 1.9545977];
            for (g, w) in y.iter().zip(want) {
                assert!((g - w).abs() < 2e-2, "{dtype:?}: {g} vs {w}");
            }
        }
    }
}
