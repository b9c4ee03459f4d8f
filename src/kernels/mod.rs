//! Fast CPU kernels for what candle does slowly or not at all on CPU: vectorisable `exp`,
//! `tanh`, `erf` and the activations built on them; a fused causal softmax for attention; a
//! row-wise log-sum-exp for the LM head. Each has a candle-ops fallback for other devices,
//! and the tests compare the two.
//!
//! The scalar functions are branch-free so LLVM vectorises the loops that call them; the loops
//! are compiled twice (baseline x86-64 and AVX2+FMA) and picked at run time.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::model::activation::Activation;

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
    p = p * r + 5e-1;
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
        ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
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

/// Queries per block in the fused attention: block `[i0, i1)` only multiplies against keys
/// `[0, offset + i1)`, which skips most of the masked upper triangle.
const QUERY_BLOCK: usize = 128;

/// Causal multi-head attention `softmax(scale·q·kᵀ + mask)·v`, heads side by side in the last
/// dimension: `q` (b, tq, C), `k` and `v` (b, tk, C) with `tk ≥ tq`, where query `i` sees
/// keys `0 ..= tk − tq + i` (the first `tk − tq` keys are cached positions). Returns
/// (b, tq, C). The inputs may be column slices of a fused `c_attn` output (row stride 3C).
///
/// On CPU in f32 this is one fused kernel: heads run in parallel, each with single-threaded
/// gemm calls on query blocks and a scratch buffer for scores, so the (b, h, t, t) score
/// tensor never exists. Elsewhere the same maths is composed from candle ops.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    scale: f64,
) -> Result<Tensor> {
    let (b, tq, c) = q.dims3()?;
    let (bk, tk, ck) = k.dims3()?;
    if bk != b || ck != c || v.dims3()? != (b, tk, c) || tk < tq || c % n_head != 0 {
        candle_core::bail!(
            "causal_attention: q {:?}, k {:?}, v {:?} with {n_head} heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let cpu_f32 = q.device().is_cpu() && [q, k, v].iter().all(|t| t.dtype() == DType::F32);
    if cpu_f32 {
        let row_major = |t: &Tensor| -> Result<Tensor> {
            if t.stride()[2] == 1 {
                Ok(t.clone())
            } else {
                t.contiguous()
            }
        };
        let op = FusedAttention {
            n_head,
            scale: scale as f32,
        };
        return row_major(q)?.apply_op3_no_bwd(&row_major(k)?, &row_major(v)?, &op);
    }
    causal_attention_composed(q, k, v, n_head, scale, false)
}

/// The candle-ops version of [`causal_attention`] (other devices and dtypes; the reference
/// the fused kernel is tested against). Scores and softmax run in f32. With
/// `differentiable`, softmax is composed from elementary ops so autograd can run through it
/// (candle's fused `softmax_last_dim` has no backward).
pub fn causal_attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_head: usize,
    scale: f64,
    differentiable: bool,
) -> Result<Tensor> {
    let (b, tq, c) = q.dims3()?;
    let tk = k.dim(1)?;
    let d = c / n_head;
    let heads = |t: &Tensor, len: usize| -> Result<Tensor> {
        t.reshape((b, len, n_head, d))?
            .transpose(1, 2)?
            .contiguous() // (b, h, len, d)
    };
    let (qh, kh, vh) = (heads(q, tq)?, heads(k, tk)?, heads(v, tk)?);
    let dtype = vh.dtype();
    let scores = qh
        .to_dtype(DType::F32)?
        .matmul(&kh.to_dtype(DType::F32)?.t()?)?; // (b, h, tq, tk)
                                                  // The causal mask, made on the scores' device (0 where key j ≤ offset + query i, else
                                                  // -1e30, whose exp is exactly 0 like -inf's): building it on the host and copying it
                                                  // over for every layer cost a GPU forward more than the matmuls did.
    let offset = tk - tq;
    let dev = scores.device();
    let query_pos = Tensor::arange(offset as u32, (offset + tq) as u32, dev)?.reshape((tq, 1))?;
    let key_pos = Tensor::arange(0u32, tk as u32, dev)?.reshape((1, tk))?;
    let mask = (key_pos.broadcast_gt(&query_pos)?.to_dtype(DType::F32)? * -1e30)?;
    let masked = (scores * scale)?.broadcast_add(&mask)?;
    let probs = if differentiable {
        candle_nn::ops::softmax(&masked, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&masked)?
    };
    let y = probs.to_dtype(dtype)?.matmul(&vh)?; // (b, h, tq, d)
    y.transpose(1, 2)?.reshape((b, tq, c)) // (b, tq, C)
}

struct FusedAttention {
    n_head: usize,
    scale: f32,
}

/// A row-major (b, t, C) view into a storage slice: element (bi, i, col) is at
/// `offset + bi·batch + i·row + col`.
#[derive(Clone, Copy)]
struct View {
    offset: usize,
    batch: usize,
    row: usize,
}

impl View {
    fn of(layout: &Layout) -> Result<Self> {
        let s = layout.stride();
        if s.len() != 3 || s[2] != 1 {
            candle_core::bail!("fused attention: unexpected strides {s:?}");
        }
        Ok(Self {
            offset: layout.start_offset(),
            batch: s[0],
            row: s[1],
        })
    }
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a distinct (batch, head) column block of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i` must be within the allocation.
    unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

impl candle_core::CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (s1, s2, s3) else {
            candle_core::bail!("fused attention: expected f32 inputs")
        };
        let (b, tq, c) = l1.shape().dims3()?;
        let tk = l2.shape().dims3()?.1;
        let (qv, kv, vv) = (View::of(l1)?, View::of(l2)?, View::of(l3)?);
        let (h, d) = (self.n_head, c / self.n_head);
        let offset = tk - tq;
        let mut out = vec![0f32; b * tq * c];
        let out_ptr = OutPtr(out.as_mut_ptr());
        let scale = self.scale;
        (0..b * h).into_par_iter().for_each(|task| {
            let (bi, hh) = (task / h, task % h);
            let qp = &q[qv.offset + bi * qv.batch + hh * d..];
            let kp = &k[kv.offset + bi * kv.batch + hh * d..];
            let vp = &v[vv.offset + bi * vv.batch + hh * d..];
            let mut scores = vec![0f32; QUERY_BLOCK.min(tq) * tk];
            for i0 in (0..tq).step_by(QUERY_BLOCK) {
                let i1 = (i0 + QUERY_BLOCK).min(tq);
                let (m, keys) = (i1 - i0, offset + i1);
                let s = &mut scores[..m * keys];
                // SAFETY: all pointers address in-bounds elements of the slices above for the
                // given shapes and strides (checked by the layouts), and the destination is
                // this task's own scratch buffer.
                unsafe {
                    gemm::gemm(
                        m,
                        keys,
                        d,
                        s.as_mut_ptr(),
                        1,
                        keys as isize,
                        false,
                        qp[i0 * qv.row..].as_ptr(),
                        1,
                        qv.row as isize,
                        kp.as_ptr(),
                        kv.row as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for (r, row) in s.chunks_mut(keys).enumerate() {
                    let visible = offset + i0 + r + 1;
                    softmax_row_in_place(&mut row[..visible], scale);
                    row[visible..].fill(0.0);
                }
                // SAFETY: `s` is (m, keys) row-major; v rows `0..keys` are in bounds; the
                // destination block (rows i0..i1 of batch bi, columns hh·d..(hh+1)·d) is
                // written by this task only.
                unsafe {
                    gemm::gemm(
                        m,
                        d,
                        keys,
                        out_ptr.at((bi * tq + i0) * c + hh * d),
                        1,
                        c as isize,
                        false,
                        s.as_ptr(),
                        1,
                        keys as isize,
                        vp.as_ptr(),
                        1,
                        vv.row as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, tq, c))))
    }
}

fn softmax_row_in_place(x: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { softmax_row_avx2(x, scale) };
        return;
    }
    softmax_row_generic(x, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(x: &mut [f32], scale: f32) {
    softmax_row_generic(x, scale)
}

/// softmax(scale·x) in place.
#[inline(always)]
fn softmax_row_generic(x: &mut [f32], scale: f32) {
    let m = max(x) * scale;
    for v in x.iter_mut() {
        *v = exp(*v * scale - m);
    }
    let inv = 1.0 / sum(x);
    for v in x.iter_mut() {
        *v *= inv;
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

/// Per row of two (rows, vocab) f32 logits tensors `p` (reference) and `q`: the KL
/// divergence `KL(softmax(p) ‖ softmax(q))` in f64, and whether their argmaxes (first index
/// on ties, like `torch.argmax`) agree.
pub fn kl_and_agreement(p: &Tensor, q: &Tensor) -> Result<(Vec<f64>, Vec<bool>)> {
    if p.dims() != q.dims() || p.rank() != 2 {
        candle_core::bail!("kl_and_agreement: shapes {:?} and {:?}", p.dims(), q.dims());
    }
    let out = if p.device().is_cpu() && p.dtype() == DType::F32 && q.dtype() == DType::F32 {
        p.contiguous()?
            .apply_op2_no_bwd(&q.contiguous()?, &KlAgreement)?
    } else {
        let (p, q) = (p.to_dtype(DType::F32)?, q.to_dtype(DType::F32)?);
        let lp = p.broadcast_sub(&logsumexp_last_dim(&p)?.unsqueeze(1)?)?;
        let lq = q.broadcast_sub(&logsumexp_last_dim(&q)?.unsqueeze(1)?)?;
        let kl = (lp.exp()? * (&lp - &lq)?)?.sum_keepdim(D::Minus1)?;
        let agree = p
            .argmax_keepdim(D::Minus1)?
            .eq(&q.argmax_keepdim(D::Minus1)?)?;
        Tensor::cat(&[kl, agree.to_dtype(DType::F32)?], 1)?
    };
    let rows: Vec<Vec<f32>> = out.to_vec2()?;
    Ok(rows.iter().map(|r| (r[0] as f64, r[1] > 0.5)).unzip())
}

struct KlAgreement;

impl candle_core::CustomOp2 for KlAgreement {
    fn name(&self) -> &'static str {
        "kl-agreement"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(p), CpuStorage::F32(q)) = (s1, s2) else {
            candle_core::bail!("kl-agreement: expected f32")
        };
        let offsets = |l: &Layout| {
            l.contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("kl-agreement: not contiguous".into()))
        };
        let ((a0, a1), (b0, b1)) = (offsets(l1)?, offsets(l2)?);
        let (rows, cols) = l1.shape().dims2()?;
        let mut out = vec![0f32; rows * 2];
        out.par_chunks_mut(2)
            .zip(p[a0..a1].par_chunks(cols).zip(q[b0..b1].par_chunks(cols)))
            .for_each(|(o, (p, q))| {
                let (kl, agree) = kl_row(p, q);
                o[0] = kl as f32;
                o[1] = if agree { 1.0 } else { 0.0 };
            });
        Ok((CpuStorage::F32(out), Shape::from((rows, 2))))
    }
}

fn kl_row(p: &[f32], q: &[f32]) -> (f64, bool) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        return unsafe { kl_row_avx2(p, q) };
    }
    kl_row_generic(p, q)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kl_row_avx2(p: &[f32], q: &[f32]) -> (f64, bool) {
    kl_row_generic(p, q)
}

/// One pass for maxima and argmaxes, one for the sums: with `e = exp(p − max p)`,
/// `KL = Σ e·(p − q) / Σ e − (lse(p) − lse(q))`, everything accumulated in f64.
#[inline(always)]
fn kl_row_generic(p: &[f32], q: &[f32]) -> (f64, bool) {
    let argmax = |x: &[f32]| {
        x.iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            })
    };
    let ((ip, mp), (iq, mq)) = (argmax(p), argmax(q));
    const L: usize = 8;
    let (mut sp, mut sq, mut a) = ([0f64; L], [0f64; L], [0f64; L]);
    let (pc, qc) = (p.chunks_exact(L), q.chunks_exact(L));
    let (pt, qt) = (pc.remainder(), qc.remainder());
    for (pc, qc) in pc.zip(qc) {
        for l in 0..L {
            let ep = exp(pc[l] - mp);
            sp[l] += ep as f64;
            sq[l] += exp(qc[l] - mq) as f64;
            a[l] += ep as f64 * (pc[l] - qc[l]) as f64;
        }
    }
    let (mut sp, mut sq, mut a) = (
        sp.iter().sum::<f64>(),
        sq.iter().sum::<f64>(),
        a.iter().sum::<f64>(),
    );
    for (&pv, &qv) in pt.iter().zip(qt) {
        let ep = exp(pv - mp) as f64;
        sp += ep;
        sq += exp(qv - mq) as f64;
        a += ep * (pv - qv) as f64;
    }
    let lse_p = mp as f64 + sp.ln();
    let lse_q = mq as f64 + sq.ln();
    (a / sp - (lse_p - lse_q), ip == iq)
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
    fn fused_attention_matches_composed_version() {
        let dev = Device::Cpu;
        // (batch, queries, keys, heads, head_dim): single and multiple query blocks, cached
        // keys before the queries, one query.
        for (b, tq, tk, h, d) in [
            (1, 7, 7, 2, 4),
            (2, 300, 300, 3, 8),
            (1, 5, 200, 2, 4),
            (2, 1, 9, 4, 2),
        ] {
            let c = h * d;
            let qkv = Tensor::randn(0f32, 1.0, (b, tk, 3 * c), &dev).unwrap();
            // q from the last tq rows of a fused projection (a strided view), k and v whole.
            let q = qkv.narrow(1, tk - tq, tq).unwrap().narrow(2, 0, c).unwrap();
            let k = qkv.narrow(2, c, c).unwrap();
            let v = qkv.narrow(2, 2 * c, c).unwrap();
            let fast = causal_attention(&q, &k, &v, h, 0.37).unwrap();
            let slow = causal_attention_composed(&q, &k, &v, h, 0.37, false).unwrap();
            let diff_path = causal_attention_composed(&q, &k, &v, h, 0.37, true).unwrap();
            let d2 = (&slow - diff_path)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d2 < 1e-6, "differentiable softmax differs by {d2:e}");
            let diff = (fast - slow).unwrap().abs().unwrap().flatten_all().unwrap();
            let worst = diff.max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(
                worst < 1e-5,
                "b={b} tq={tq} tk={tk}: max abs diff {worst:e}"
            );
        }
    }

    #[test]
    fn kl_and_agreement_match_a_direct_f64_computation() {
        let dev = Device::Cpu;
        let p = Tensor::randn(0f32, 3.0, (6, 1003), &dev).unwrap();
        let noise = Tensor::randn(0f32, 0.5, (6, 1003), &dev).unwrap();
        let q = (&p + noise).unwrap();
        let (kl, agree) = kl_and_agreement(&p, &q).unwrap();
        let (pr, qr): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (p.to_vec2().unwrap(), q.to_vec2().unwrap());
        for r in 0..6 {
            let lsm = |x: &[f32]| {
                let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let l = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
                x.iter().map(|&v| v as f64 - l).collect::<Vec<f64>>()
            };
            let (lp, lq) = (lsm(&pr[r]), lsm(&qr[r]));
            let want: f64 = lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum();
            assert!(
                (kl[r] - want).abs() < 1e-6 + 1e-4 * want,
                "row {r}: {} vs {want}",
                kl[r]
            );
            let am = |x: &[f32]| {
                x.iter()
                    .enumerate()
                    .fold(0, |bi, (i, &v)| if v > x[bi] { i } else { bi })
            };
            assert_eq!(agree[r], am(&pr[r]) == am(&qr[r]));
        }
        // Composed path (used off-CPU) agrees too.
        let (kl2, agree2) = kl_and_agreement(
            &p.to_dtype(DType::F64).unwrap(),
            &q.to_dtype(DType::F64).unwrap(),
        )
        .unwrap();
        for r in 0..6 {
            assert!(
                (kl[r] - kl2[r]).abs() < 1e-5,
                "row {r}: {} vs {}",
                kl[r],
                kl2[r]
            );
        }
        assert_eq!(agree, agree2);
        let (same, all) = kl_and_agreement(&p, &p).unwrap();
        assert!(same.iter().all(|&k| k.abs() < 1e-9) && all.iter().all(|&a| a));
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
