//! The activation as a differentiable op for training on the CPU: the fused elementwise
//! kernel forward, and a backward that multiplies the incoming gradient by f′(x) from a
//! second fused kernel — where composing the formula from candle ops costs a dozen scalar
//! passes (tanh, powf, exp) forward and more backward. f′ takes the values PyTorch's
//! autograd takes at the kinks (relu′(0) = 0, …), as [`Activation::derivative_f64`] does.
//! Other devices and dtypes use [`Activation::forward_composed`].

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::{f32s, new_f32, tensor_f32s};
use crate::kernels::elementwise;
use crate::kernels::math;
use crate::model::activation::Activation;

/// `f′(x)` in f32 with the fast maths the forward kernel uses.
#[inline(always)]
pub fn derivative(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Affine(af) => af.a() * base_derivative(af.base(), x),
        other => base_derivative(other, x),
    }
}

/// [`derivative`] of a base activation (not recursive, so that it inlines into the loops).
#[inline(always)]
fn base_derivative(act: Activation, x: f32) -> f32 {
    use Activation as A;
    let step = |c: bool| if c { 1.0 } else { 0.0 };
    match act {
        A::GeluNew | A::GeluPytorchTanh => {
            let k = 0.797_884_6_f32; // √(2/π)
            let t = math::tanh(k * (x + 0.044715 * x * x * x));
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
        }
        A::Gelu => {
            0.5 * (1.0 + math::erf(x * std::f32::consts::FRAC_1_SQRT_2))
                + x * math::exp(-0.5 * x * x) * 0.398_942_3 // 1/√(2π)
        }
        A::QuickGelu => {
            let s = math::sigmoid(1.702 * x);
            s + 1.702 * x * s * (1.0 - s)
        }
        A::Relu => step(x > 0.0),
        A::Relu2 => 2.0 * x.max(0.0),
        A::Relu6 => step(x > 0.0 && x < 6.0),
        A::LeakyRelu => {
            if x > 0.0 {
                1.0
            } else {
                0.01
            }
        }
        A::Elu => {
            if x > 0.0 {
                1.0
            } else {
                math::exp(x)
            }
        }
        A::Silu => {
            let s = math::sigmoid(x);
            s * (1.0 + x * (1.0 - s))
        }
        A::Sigmoid | A::SigmoidCentered => {
            let s = math::sigmoid(x);
            s * (1.0 - s)
        }
        A::SigmoidScaled => {
            let s = math::sigmoid(x);
            4.0 * s * (1.0 - s)
        }
        A::HardSigmoid => step(x > -3.0 && x < 3.0) / 6.0,
        A::Tanh => {
            let t = math::tanh(x);
            1.0 - t * t
        }
        A::Softplus => {
            if x > 20.0 {
                1.0
            } else {
                math::sigmoid(x)
            }
        }
        A::Mish => {
            let sp = if x > 20.0 { x } else { math::exp(x).ln_1p() };
            let t = math::tanh(sp);
            t + x * (1.0 - t * t) * math::sigmoid(x)
        }
        A::Identity => 1.0,
        // An affine's base is never itself an affine (see `derivative`).
        A::Affine(_) => f32::NAN,
    }
}

/// `g·f′(x)` over two slices, one vectorised loop per activation (an affine: its base's,
/// scaled).
pub fn backward_map_f32(xs: &[f32], gs: &[f32], act: Activation) -> Vec<f32> {
    macro_rules! each {
        ($($v:ident),*) => {
            match act {
                $(Activation::$v => elementwise::zip_map_f32(xs, gs, #[inline(always)] |x, g| g * base_derivative(Activation::$v, x)),)*
                Activation::Affine(af) => {
                    let a = af.a();
                    let base = af.base();
                    each_base!(base, a, $($v),*)
                }
            }
        };
    }
    macro_rules! each_base {
        ($base:expr, $a:expr, $($v:ident),*) => {
            match $base {
                $(Activation::$v => elementwise::zip_map_f32(xs, gs, #[inline(always)] move |x, g| g * $a * base_derivative(Activation::$v, x)),)*
                Activation::Affine(_) => unreachable!("an affine's base is a base activation"),
            }
        };
    }
    each!(
        GeluNew,
        Gelu,
        GeluPytorchTanh,
        QuickGelu,
        Relu,
        Relu2,
        Relu6,
        LeakyRelu,
        Elu,
        Silu,
        Sigmoid,
        HardSigmoid,
        Tanh,
        Softplus,
        Mish,
        Identity,
        SigmoidCentered,
        SigmoidScaled
    )
}

/// The activation (forward: the fused kernel) with a backward pass.
struct DifferentiableOp(Activation);

impl CustomOp1 for DifferentiableOp {
    fn name(&self) -> &'static str {
        "activation-differentiable"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(storage, layout, self.name())?;
        let y = crate::model::activation::map_f32(x, self.0);
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        let (xs, xl) = arg.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let what = "activation backward";
        let dx = backward_map_f32(
            tensor_f32s(&xs, xl, what)?,
            tensor_f32s(&gs, gl, what)?,
            self.0,
        );
        new_f32(dx, arg.dims()).map(Some)
    }
}

/// `act(xs)` that autograd can differentiate: the fused kernels for f32 on the CPU, the
/// composed candle ops elsewhere.
pub fn forward_differentiable(act: Activation, xs: &Tensor) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        xs.contiguous()?.apply_op1(DifferentiableOp(act))
    } else {
        act.forward_composed(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::activation::BASES;
    use candle_core::{Device, Var};

    #[test]
    fn kernel_gradients_match_autograd_through_the_composed_formulas() {
        // Away from the kinks (0, ±3, 6, 20), where both sides agree by convention anyway.
        let xs: Vec<f32> = (-900..=900).map(|i| i as f32 * 0.01 + 0.0037).collect();
        let mut acts = BASES.to_vec();
        acts.push(Activation::affine(Activation::Sigmoid, 4.0, -2.0));
        for act in acts {
            let grad = |composed: bool| {
                let x = Var::from_slice(&xs, xs.len(), &Device::Cpu).unwrap();
                let w = Tensor::from_vec(
                    (0..xs.len()).map(|i| 1.0 + (i % 7) as f32 * 0.1).collect(),
                    xs.len(),
                    &Device::Cpu,
                )
                .unwrap();
                let y = match composed {
                    true => act.forward_composed(x.as_tensor()).unwrap(),
                    false => forward_differentiable(act, x.as_tensor()).unwrap(),
                };
                let loss = (y * &w).unwrap().sum_all().unwrap();
                let g = loss.backward().unwrap();
                g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap()
            };
            let (fast, slow) = (grad(false), grad(true));
            for (i, (f, s)) in fast.iter().zip(&slow).enumerate() {
                assert!(
                    (f - s).abs() <= 2e-5 * s.abs().max(1.0),
                    "{act}'({}): {f} vs autograd {s}",
                    xs[i]
                );
            }
        }
    }

    #[test]
    fn derivatives_match_the_f64_reference() {
        for act in BASES {
            for i in -3000..=3000 {
                let x = i as f32 * 0.01 + 0.0013;
                let (got, want) = (derivative(act, x) as f64, act.derivative_f64(x as f64));
                assert!(
                    (got - want).abs() < 2e-6 * want.abs().max(1.0),
                    "{act}'({x}): {got} vs {want}"
                );
            }
        }
    }
}
