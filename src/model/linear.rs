//! The linear layer every block uses: `y = x·Wᵀ + b` with W stored (out, in). One type so
//! that the matrix-multiply path (dtype- and CPU-feature-specific kernels) is chosen in one
//! place.
//!
//! On CPU, for f32, bf16 and f16 tensors that autograd does not track, the product runs in
//! [`crate::kernels::gemm`] with what follows it fused — an activation, then a residual
//! added or a gate multiplied — and is rounded once to the compute dtype. Elsewhere (other
//! devices, autograd) it is composed from candle ops, which are also the tests' reference.

use candle_core::{DType, Layout, Module, Result, Storage, Tensor};

use crate::kernels::convert::{self, Src};
use crate::kernels::gemm::{self, Dims, Epilogue};
use crate::kernels::Isa;
use crate::model::activation::Activation;

pub use crate::kernels::gemm::Combine;

#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// `weight` (out, in), `bias` (out,).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            inner: candle_nn::Linear::new(weight, bias),
        }
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    /// `x`: (…, in) → (…, out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_fused(x, None, None)
    }

    /// `act(x·Wᵀ + b)`, then `+ r` or `· r` when `with` is `(op, r)` with r shaped like the
    /// output. The activation is the fast one ([`Activation::forward`]); a differentiable
    /// pass applies its activation itself.
    pub fn forward_fused(
        &self,
        x: &Tensor,
        act: Option<Activation>,
        with: Option<(Combine, &Tensor)>,
    ) -> Result<Tensor> {
        if let Some(y) = self.fast(x, act, with)? {
            return Ok(y);
        }
        let mut y = match crate::model::grad::linear::forward(x, self.weight(), self.bias())? {
            Some(y) => y,
            None => self.inner.forward(x)?,
        };
        if let Some(a) = act {
            y = a.forward(&y)?;
        }
        match with {
            None => Ok(y),
            Some((Combine::Add, r)) => y + r,
            Some((Combine::Mul, r)) => y * r,
        }
    }

    /// The fused CPU kernel, when it applies.
    fn fast(
        &self,
        x: &Tensor,
        act: Option<Activation>,
        with: Option<(Combine, &Tensor)>,
    ) -> Result<Option<Tensor>> {
        let w = self.weight();
        let dtype = x.dtype();
        let tracked = x.track_op()
            || w.track_op()
            || self.bias().is_some_and(|b| b.track_op())
            || with.is_some_and(|(_, r)| r.track_op() || r.dtype() != dtype);
        let fusable = act.is_none_or(|a| act_kernel(a).is_some());
        if !x.device().is_cpu() || dtype != w.dtype() || tracked || !supported(dtype) || !fusable {
            return Ok(None);
        }
        let (m, k) = w.dims2()?;
        let mut shape = x.dims().to_vec();
        match shape.last_mut() {
            Some(last) if *last == k => *last = m,
            _ => candle_core::bail!("linear: input {:?} for weight ({m}, {k})", x.dims()),
        }
        let x = x.contiguous()?;
        let n = x.elem_count() / k;
        let with = match with {
            Some((op, r)) if r.dims() == shape.as_slice() => Some((op, r.contiguous()?)),
            Some((_, r)) => candle_core::bail!("linear: operand {:?} for {shape:?}", r.dims()),
            None => None,
        };
        let bias = self.bias().map(|b| b.to_dtype(dtype)).transpose()?;
        let d = Dims { n, k, m };
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let bs = bias.as_ref().map(|b| b.storage_and_layout());
        let rs = with.as_ref().map(|(_, r)| r.storage_and_layout());
        let epi = Epilogue {
            bias: bs.as_ref().map(|(s, l)| slice(s, l)).transpose()?,
            act: act
                .filter(|&a| a != Activation::Identity)
                .and_then(act_kernel),
            with: match (&with, &rs) {
                (Some((op, _)), Some((s, l))) => Some((*op, slice(s, l)?)),
                _ => None,
            },
        };
        run(slice(&xs, xl)?, slice(&ws, wl)?, d, &epi, dtype, shape).map(Some)
    }
}

fn supported(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
}

/// A contiguous CPU tensor's elements.
fn slice<'a>(storage: &'a Storage, layout: &Layout) -> Result<Src<'a>> {
    convert::cpu_slice(storage, layout).ok_or_else(|| {
        candle_core::Error::Msg("linear: expected a contiguous f32, bf16 or f16 CPU tensor".into())
    })
}

/// Runs the kernel into a new CPU tensor of x's dtype and the given shape.
fn run(x: Src, w: Src, d: Dims, epi: &Epilogue, dtype: DType, shape: Vec<usize>) -> Result<Tensor> {
    let isa = Isa::get();
    // SAFETY: the kernel writes all n·m elements of the new buffer.
    unsafe {
        convert::new_tensor(dtype, shape.into(), |out| {
            gemm::linear(isa, x, w, d, epi, out)
        })
    }
}

/// The activation as an in-place kernel over a run of f32 values, one loop per activation;
/// `None` for `affine(…)` (its constants cannot live in a function pointer: the caller
/// applies it unfused).
pub fn act_kernel(act: Activation) -> Option<fn(&mut [f32])> {
    act.in_place_kernel()
}
