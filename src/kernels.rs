//! Fast CPU kernels for what candle does slowly or not at all on CPU: vectorisable `exp`,
//! `tanh`, `erf` and the activations built on them; a fused causal softmax for attention; a
//! row-wise log-sum-exp for the LM head. Each has a candle-ops fallback for other devices,
//! and the tests compare the two.
//!
//! The scalar functions are branch-free so LLVM vectorises the loops that call them; the loops
//! are compiled twice (baseline x86-64 and AVX2+FMA) and picked at run time.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::activation::Activation;

/// `e^x` in f32, ≤ 2 ulp on [−87, 88] (Cephes `expf`), written without branches. Inputs
/// beyond the range are clamped (results stay finite); NaN propagates.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let er = p * r * r + r + 1.0;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    er * f32::from_bits(((ni + 127) << 23) as u32)
}

/// `σ(x) = 1/(1 + e^−x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh` in f32 (Cephes `tanhf`): an odd polynomial below 0.625, `1 − 2/(e^2|x| + 1)` above.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_908_9e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328_2e-1)
            * z
            * x
            + x;
    let large = (1.0 - 2.0 / (exp(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        large
    }
}

/// `erf` in f32 (Abramowitz & Stegun 7.1.26 with a Newton-free refinement: absolute error
/// below 1.5e-7).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_7) * t - 0.284_496_72) * t
        + 0.254_829_6)
        * t;
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// GPT-2's `gelu_new` / PyTorch's tanh GELU.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + tanh(K * (x + 0.044_715 * x * x * x)))
}

/// Exact GELU `0.5·x·(1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Elements per parallel task: large enough to amortise scheduling, small enough to split a
/// 1024×3072 MLP activation over every core.
const CHUNK: usize = 16 * 1024;

/// Applies `act` elementwise, in parallel, with the best instruction set available.
pub fn map_f32(xs: &[f32], act: Activation) -> Vec<f32> {
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .for_each(|(o, x)| map_chunk(x, o, act));
    out
}

fn map_chunk(x: &[f32], o: &mut [f32], act: Activation) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { map_chunk_avx2(x, o, act) };
        return;
    }
    map_chunk_generic(x, o, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_chunk_avx2(x: &[f32], o: &mut [f32], act: Activation) {
    map_chunk_generic(x, o, act)
}

/// The match is outside the loop so that each activation gets its own vectorised loop.
#[inline(always)]
fn map_chunk_generic(x: &[f32], o: &mut [f32], act: Activation) {
    macro_rules! each {
        ($($variant:ident),*) => {
            match act {
                $(Activation::$variant => {
                    for (o, &x) in o.iter_mut().zip(x) {
                        *o = Activation::$variant.eval(x);
                    }
                })*
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
        Identity
    )
}

/// Softmax of `scale·x` over the last dimension of attention scores `(b, h, q, k)`, where
/// query row `i` sees keys `0 ..= offset + i` and the rest are zero (`offset = k − q`: the
/// number of cached positions before the queries).
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let (_, _, q, k) = scores.dims4()?;
    if k < q {
        candle_core::bail!("causal_softmax: {k} keys for {q} queries");
    }
    if scores.device().is_cpu() && scores.dtype() == DType::F32 {
        return scores.contiguous()?.apply_op1_no_bwd(&CausalSoftmax {
            scale: scale as f32,
        });
    }
    causal_softmax_composed(scores, scale)
}

/// The candle-ops version of [`causal_softmax`], for non-CPU devices and other dtypes.
pub fn causal_softmax_composed(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let (_, _, q, k) = scores.dims4()?;
    let offset = k - q;
    let mask: Vec<f32> = (0..q)
        .flat_map(|i| {
            (0..k).map(move |j| {
                if j <= offset + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (q, k), scores.device())?.to_dtype(scores.dtype())?;
    let masked = (scores * scale)?.broadcast_add(&mask)?;
    candle_nn::ops::softmax_last_dim(&masked)
}

struct CausalSoftmax {
    scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = storage else {
            candle_core::bail!("causal-softmax: expected f32")
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("causal-softmax: not contiguous".into()))?;
        let (_, _, q, k) = layout.shape().dims4()?;
        let offset = k - q;
        let src = &v[start..end];
        let mut out = vec![0f32; src.len()];
        let scale = self.scale;
        out.par_chunks_mut(k)
            .zip(src.par_chunks(k))
            .enumerate()
            .for_each(|(row, (o, x))| {
                let visible = offset + row % q + 1;
                softmax_row(&x[..visible], &mut o[..visible], scale);
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

fn softmax_row(x: &[f32], o: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { softmax_row_avx2(x, o, scale) };
        return;
    }
    softmax_row_generic(x, o, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(x: &[f32], o: &mut [f32], scale: f32) {
    softmax_row_generic(x, o, scale)
}

#[inline(always)]
fn softmax_row_generic(x: &[f32], o: &mut [f32], scale: f32) {
    let m = max(x) * scale;
    for (o, &x) in o.iter_mut().zip(x) {
        *o = exp(x * scale - m);
    }
    let inv = 1.0 / sum(o);
    for o in o.iter_mut() {
        *o *= inv;
    }
}

/// Lanes of the multi-accumulator reductions below: independent partial results let LLVM
/// vectorise without reassociating floating-point sums on its own.
const LANES: usize = 16;

#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    tail.iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    tail.iter().chain(&acc).map(|&v| v as f64).sum::<f64>() as f32
}

/// `ln Σ_j e^{x_ij}` over the last dimension of a 2-D tensor, as f32 `(rows,)`. Accumulates
/// the sum of exponentials in 16 f32 lanes per row and adds the lanes in f64.
pub fn logsumexp_last_dim(xs: &Tensor) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        return xs.contiguous()?.apply_op1_no_bwd(&LogSumExp);
    }
    let xs = xs.to_dtype(DType::F32)?;
    let m = xs.max_keepdim(D::Minus1)?;
    let s = xs.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()?;
    (s + m)?.squeeze(D::Minus1)
}

struct LogSumExp;

impl CustomOp1 for LogSumExp {
    fn name(&self) -> &'static str {
        "logsumexp"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = storage else {
            candle_core::bail!("logsumexp: expected f32")
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("logsumexp: not contiguous".into()))?;
        let (rows, cols) = layout.shape().dims2()?;
        let src = &v[start..end];
        let mut out = vec![0f32; rows];
        out.par_iter_mut()
            .zip(src.par_chunks(cols))
            .for_each(|(o, x)| *o = logsumexp_row(x));
        Ok((CpuStorage::F32(out), Shape::from(rows)))
    }
}

fn logsumexp_row(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { logsumexp_row_avx2(x) };
    }
    logsumexp_row_generic(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn logsumexp_row_avx2(x: &[f32]) -> f32 {
    logsumexp_row_generic(x)
}

#[inline(always)]
fn logsumexp_row_generic(x: &[f32]) -> f32 {
    let m = max(x);
    if !m.is_finite() {
        // All −∞ gives −∞; +∞ or NaN give NaN, which the caller reports as a non-finite loss.
        return if m == f32::NEG_INFINITY { m } else { f32::NAN };
    }
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += exp(c[l] - m);
        }
    }
    let s: f64 = acc.iter().map(|&v| v as f64).sum::<f64>()
        + tail.iter().map(|&v| exp(v - m) as f64).sum::<f64>();
    m + s.ln() as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn exp_is_accurate_over_its_range() {
        let mut worst = (0.0f64, 0.0f32);
        for i in -86_990..=87_990 {
            let x = i as f32 * 1e-3;
            let want = (x as f64).exp();
            let err = ((exp(x) as f64) - want).abs() / want;
            if err > worst.0 {
                worst = (err, x);
            }
        }
        assert!(
            worst.0 < 3e-7,
            "exp: relative error {:e} at {}",
            worst.0,
            worst.1
        );
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_and_erf_are_accurate() {
        for i in -20_000..=20_000 {
            let x = i as f32 * 1e-3;
            let t = (tanh(x) as f64 - (x as f64).tanh()).abs();
            assert!(t < 2e-7, "tanh({x}) off by {t:e}");
            let e = (erf(x) as f64 - libm_erf(x as f64)).abs();
            assert!(e < 5e-7, "erf({x}) off by {e:e}");
        }
    }

    /// erf by numerical integration of 2/√π·e^{−t²} (Simpson, 2000 panels): independent of
    /// both the kernel and the series in `activation`.
    fn libm_erf(x: f64) -> f64 {
        let n = 2000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn causal_softmax_matches_composed_version() {
        let dev = Device::Cpu;
        for (q, k) in [(7, 7), (3, 10), (1, 5), (40, 40)] {
            let x = Tensor::randn(0f32, 3.0, (2, 3, q, k), &dev).unwrap();
            let fast = causal_softmax(&x, 0.37).unwrap();
            let slow = causal_softmax_composed(&x, 0.37).unwrap();
            let d = (fast - slow).unwrap().abs().unwrap().flatten_all().unwrap();
            let worst = d.max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(worst < 1e-6, "q={q} k={k}: max abs diff {worst:e}");
        }
    }

    #[test]
    fn logsumexp_matches_composed_version_and_handles_extremes() {
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 10.0, (5, 50_257), &dev).unwrap() + 3.0).unwrap();
        let fast: Vec<f32> = logsumexp_last_dim(&x).unwrap().to_vec1().unwrap();
        let rows: Vec<Vec<f32>> = x.to_vec2().unwrap();
        for (r, row) in rows.iter().enumerate() {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let want = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            assert!(
                (fast[r] as f64 - want).abs() < 1e-5,
                "row {r}: {} vs {want}",
                fast[r]
            );
        }
        let bad = Tensor::new(&[[1.0f32, f32::NAN, 0.0], [1.0, f32::INFINITY, 0.0]], &dev).unwrap();
        let out: Vec<f32> = logsumexp_last_dim(&bad).unwrap().to_vec1().unwrap();
        assert!(out.iter().all(|v| v.is_nan()), "{out:?}");
    }
}
