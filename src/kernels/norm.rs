//! LayerNorm and RMSNorm over the last dimension, in f32 whatever the dtype (as PyTorch
//! computes them), vectorised per row, rows in parallel.
//!
//! - LayerNorm: `(x − mean)/√(var + eps)·w + b`, mean and variance in two passes, one
//!   rounding to the output dtype.
//! - RMSNorm (transformers' `LlamaRMSNorm`): `x/√(mean(x²) + eps)` rounded to the input dtype,
//!   then multiplied by `w` and rounded again.
//!
//! [`layer_norm`] and [`rms_norm`] return `None` where the kernel does not apply (other
//! devices and dtypes, tensors autograd tracks); callers fall back to candle ops.

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use super::convert::{self, Out, Src};
use super::elementwise::simd;
use super::isa::Isa;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 8;

/// Which normalisation.
#[derive(Clone, Copy)]
enum Kind {
    Layer,
    Rms,
}

/// LayerNorm of `x` (…, C) with weight and optional bias (C,), or `None`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f32) -> Result<Option<Tensor>> {
    run(x, w, b, eps, Kind::Layer)
}

/// RMSNorm of `x` (…, C) with weight (C,), or `None`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Option<Tensor>> {
    run(x, w, None, eps, Kind::Rms)
}

fn run(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f32, kind: Kind) -> Result<Option<Tensor>> {
    let dtype = x.dtype();
    let params = std::iter::once(w).chain(b);
    let applies = x.device().is_cpu()
        && matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
        && !x.track_op()
        && params.clone().all(|p| !p.track_op() && p.rank() == 1);
    if !applies {
        return Ok(None);
    }
    let c = x.dim(candle_core::D::Minus1)?;
    let x = x.contiguous()?;
    let wf = w.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let bf = b
        .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
        .transpose()?;
    if wf.len() != c || bf.as_ref().is_some_and(|b| b.len() != c) {
        candle_core::bail!("norm: weight {:?} for input {:?}", w.dims(), x.dims());
    }
    let (storage, layout) = x.storage_and_layout();
    let Some(src) = convert::cpu_slice(&storage, layout) else {
        return Ok(None);
    };
    let p = Params {
        w: &wf,
        b: bf.as_deref(),
        eps,
        kind,
        dtype,
        isa: Isa::get(),
    };
    // SAFETY: `normalise` writes every row.
    unsafe { convert::new_tensor(dtype, x.shape().clone(), |o| normalise(src, c, &p, o)) }.map(Some)
}

/// The normalisation's parameters, in f32.
struct Params<'a> {
    w: &'a [f32],
    b: Option<&'a [f32]>,
    eps: f32,
    kind: Kind,
    dtype: DType,
    isa: Isa,
}

/// Every row of `src` (rows of `c`) normalised into `out`.
fn normalise(src: Src, c: usize, p: &Params, out: Out) {
    let n = src.len() / c.max(1);
    (0..n.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .for_each_init(
            || vec![0f32; c],
            |row, task| {
                let rows = task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(n);
                for r in rows {
                    convert::load(p.isa, src, r * c, row);
                    normalise_row(row, p);
                    // SAFETY: each task writes its own rows of the output buffer.
                    unsafe { convert::store(p.isa, row, out, r * c) };
                }
            },
        );
}

fn normalise_row(x: &mut [f32], p: &Params) {
    simd(
        #[inline(always)]
        || normalise_row_generic(x, p),
    )
}

#[inline(always)]
fn normalise_row_generic(x: &mut [f32], p: &Params) {
    let n = x.len() as f32;
    match p.kind {
        Kind::Layer => {
            let mean = super::reductions::sum(x) / n;
            let var = sum_sq(x, mean) / n;
            let inv = 1.0 / (var + p.eps).sqrt();
            match p.b {
                Some(b) => x.iter_mut().zip(p.w).zip(b).for_each(|((v, w), b)| {
                    *v = (*v - mean) * inv * w + b;
                }),
                None => x
                    .iter_mut()
                    .zip(p.w)
                    .for_each(|(v, w)| *v = (*v - mean) * inv * w),
            }
        }
        Kind::Rms => {
            let inv = 1.0 / (sum_sq(x, 0.0) / n + p.eps).sqrt();
            // One loop per dtype, so that the rounding is inlined and the loop vectorises.
            match p.dtype {
                DType::BF16 => {
                    rms_scale(x, p.w, inv, |v| convert::bf16_to_f32(convert::bf16_bits(v)))
                }
                DType::F16 => {
                    x.iter_mut().for_each(|v| *v *= inv);
                    convert::round_through(p.isa, DType::F16, x);
                    x.iter_mut().zip(p.w).for_each(|(v, w)| *v *= w);
                }
                _ => rms_scale(x, p.w, inv, |v| v),
            }
        }
    }
}

/// `x = round(x·inv)·w`, RMSNorm's last step (transformers rounds the normalised value to
/// the compute dtype before the weight multiplies it).
#[inline(always)]
fn rms_scale(x: &mut [f32], w: &[f32], inv: f32, round: impl Fn(f32) -> f32) {
    x.iter_mut()
        .zip(w)
        .for_each(|(v, w)| *v = round(*v * inv) * w);
}

/// `Σ (x − c)²` in 16 f32 lanes, the lanes summed in f64.
#[inline(always)]
fn sum_sq(x: &[f32], c: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| ((v - c) * (v - c)) as f64)
        .sum();
    for ch in chunks {
        for l in 0..16 {
            let d = ch[l] - c;
            acc[l] += d * d;
        }
    }
    (acc.iter().map(|&v| v as f64).sum::<f64>() + tail) as f32
}
