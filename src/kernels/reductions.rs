//! Row-wise reductions over logits: log-sum-exp for the LM head, and KL divergence with
//! top-1 agreement between two models' logits.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::elementwise::simd;
use super::math::exp;

/// Lanes of the multi-accumulator reductions below: independent partial results let LLVM
/// vectorise without reassociating floating-point sums on its own.
pub(crate) const LANES: usize = 16;

#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
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
pub(crate) fn sum(x: &[f32]) -> f32 {
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

/// `Σ f(a_i, b_i)` with [`LANES`] partial sums (vectorises when `f` does).
#[inline(always)]
pub(crate) fn sum_pairs(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += f(x[l], y[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The first index of the largest value and that value (NaNs ignored; index 0 and −∞ when
/// there is no other), as a fold with `v > best` finds them, in two vectorised passes.
#[inline(always)]
pub(crate) fn argmax(x: &[f32]) -> (usize, f32) {
    let m = max(x);
    let mut found = x.len();
    for (c, chunk) in x.chunks(LANES).enumerate() {
        if chunk.iter().fold(false, |any, &v| any | (v == m)) {
            found = c * LANES + chunk.iter().position(|&v| v == m).unwrap_or(0);
            break;
        }
    }
    if found == x.len() {
        (0, f32::NEG_INFINITY)
    } else {
        (found, m)
    }
}

/// The first index of the largest element of a CPU vector (f32, bf16 or f16), read in place:
/// `Some(Some(i))`, or `Some(None)` when any element is NaN or infinite; `None` for tensors
/// it cannot read in place.
pub fn argmax_vec(t: &Tensor) -> Result<Option<Option<usize>>> {
    const CHUNK: usize = 4096;
    if !t.device().is_cpu() || t.rank() != 1 {
        return Ok(None);
    }
    let (storage, layout) = t.storage_and_layout();
    let Some(src) = super::convert::cpu_slice(&storage, layout) else {
        return Ok(None);
    };
    let isa = super::isa::Isa::get();
    let mut buf = [0f32; CHUNK];
    let mut best = (0usize, f32::NEG_INFINITY);
    for start in (0..src.len()).step_by(CHUNK) {
        let run = &mut buf[..CHUNK.min(src.len() - start)];
        super::convert::load(isa, src, start, run);
        if !run.iter().fold(true, |ok, v| ok & v.is_finite()) {
            return Ok(Some(None));
        }
        let (i, v) = argmax(run);
        if v > best.1 {
            best = (start + i, v);
        }
    }
    Ok(Some(Some(best.0)))
}

/// `ln Σ_j e^{x_ij}` over the last dimension of a 2-D tensor, as f32 `(rows,)`. Accumulates
/// the sum of exponentials in 16 f32 lanes per row and adds the lanes in f64.
pub fn logsumexp_last_dim(xs: &Tensor) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        return xs.contiguous()?.apply_op1_no_bwd(&LogSumExp);
    }
    if let Some(lse) = logsumexp_half(xs)? {
        return Ok(lse);
    }
    let xs = xs.to_dtype(DType::F32)?;
    let m = xs.max_keepdim(D::Minus1)?;
    let s = xs.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()?;
    (s + m)?.squeeze(D::Minus1)
}

/// [`logsumexp_last_dim`] of contiguous CPU bf16/f16 logits, read in place: each row is
/// widened to f32 into a per-task buffer (exact), so no f32 copy of the whole matrix exists.
fn logsumexp_half(xs: &Tensor) -> Result<Option<Tensor>> {
    if !xs.device().is_cpu() || xs.rank() != 2 {
        return Ok(None);
    }
    let (rows, cols) = xs.dims2()?;
    let (storage, layout) = xs.storage_and_layout();
    let Some(src) = super::convert::cpu_slice(&storage, layout) else {
        return Ok(None);
    };
    let isa = super::isa::Isa::get();
    let mut out = vec![0f32; rows];
    out.par_iter_mut().enumerate().for_each_init(
        || vec![0f32; cols],
        |row, (i, o)| {
            super::convert::load(isa, src, i * cols, row);
            *o = logsumexp_row(row);
        },
    );
    Tensor::from_vec(out, rows, xs.device()).map(Some)
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

pub(crate) fn logsumexp_row(x: &[f32]) -> f32 {
    simd(
        #[inline(always)]
        || logsumexp_row_generic(x),
    )
}

#[inline(always)]
pub(crate) fn logsumexp_row_generic(x: &[f32]) -> f32 {
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

/// Per row of two (rows, vocab) logits tensors `p` (reference) and `q`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KlRows {
    /// `KL(softmax(p) ‖ softmax(q))`.
    pub kl: Vec<f64>,
    /// Whether the argmaxes (first index on ties, like `torch.argmax`) agree.
    pub agree: Vec<bool>,
    /// `ln Σ e^q`, equal to [`logsumexp_last_dim`]'s to the bit (for q's NLLs, without a
    /// second pass over its logits).
    pub lse_q: Vec<f32>,
}

/// [`KlRows`] of two (rows, vocab) f32 logits tensors `p` (reference) and `q`; the KL
/// divergence is summed in f64.
pub fn kl_and_agreement(p: &Tensor, q: &Tensor) -> Result<KlRows> {
    if p.dims() != q.dims() || p.rank() != 2 {
        candle_core::bail!("kl_and_agreement: shapes {:?} and {:?}", p.dims(), q.dims());
    }
    let out = if p.device().is_cpu() && p.dtype() == DType::F32 && q.dtype() == DType::F32 {
        p.contiguous()?
            .apply_op2_no_bwd(&q.contiguous()?, &KlAgreement)?
    } else {
        let (p, q) = (p.to_dtype(DType::F32)?, q.to_dtype(DType::F32)?);
        let lse_q = logsumexp_last_dim(&q)?.unsqueeze(1)?;
        let lp = p.broadcast_sub(&logsumexp_last_dim(&p)?.unsqueeze(1)?)?;
        let lq = q.broadcast_sub(&lse_q)?;
        let kl = (lp.exp()? * (&lp - &lq)?)?.sum_keepdim(D::Minus1)?;
        let agree = p
            .argmax_keepdim(D::Minus1)?
            .eq(&q.argmax_keepdim(D::Minus1)?)?;
        Tensor::cat(&[kl, agree.to_dtype(DType::F32)?, lse_q], 1)?
    };
    let rows: Vec<Vec<f32>> = out.to_vec2()?;
    Ok(KlRows {
        kl: rows.iter().map(|r| r[0] as f64).collect(),
        agree: rows.iter().map(|r| r[1] > 0.5).collect(),
        lse_q: rows.iter().map(|r| r[2]).collect(),
    })
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
        let mut out = vec![0f32; rows * 3];
        out.par_chunks_mut(3)
            .zip(p[a0..a1].par_chunks(cols).zip(q[b0..b1].par_chunks(cols)))
            .for_each(|(o, (p, q))| {
                let (kl, agree, lse_q) = kl_row(p, q);
                o[0] = kl as f32;
                o[1] = if agree { 1.0 } else { 0.0 };
                o[2] = lse_q;
            });
        Ok((CpuStorage::F32(out), Shape::from((rows, 3))))
    }
}

fn kl_row(p: &[f32], q: &[f32]) -> (f64, bool, f32) {
    simd(
        #[inline(always)]
        || kl_row_generic(p, q),
    )
}

/// Vectorised passes for maxima and argmaxes, one for the sums: with `e = exp(p − max p)`,
/// `KL = Σ e·(p − q) / Σ e − (lse(p) − lse(q))`, accumulated in f64; `Σ exp(q − max q)` is
/// also summed exactly as [`logsumexp_row_generic`] sums it, so that the returned `lse(q)`
/// is its result to the bit.
#[inline(always)]
fn kl_row_generic(p: &[f32], q: &[f32]) -> (f64, bool, f32) {
    let ((ip, mp), (iq, mq)) = (argmax(p), argmax(q));
    let (mut sp, mut sq, mut a) = ([0f64; LANES], [0f64; LANES], [0f64; LANES]);
    let mut sq32 = [0f32; LANES];
    let (pc, qc) = (p.chunks_exact(LANES), q.chunks_exact(LANES));
    let (pt, qt) = (pc.remainder(), qc.remainder());
    for (pc, qc) in pc.zip(qc) {
        for l in 0..LANES {
            let (ep, eq) = (exp(pc[l] - mp), exp(qc[l] - mq));
            sp[l] += ep as f64;
            sq[l] += eq as f64;
            sq32[l] += eq;
            a[l] += ep as f64 * (pc[l] - qc[l]) as f64;
        }
    }
    let (mut sp, mut a) = (sp.iter().sum::<f64>(), a.iter().sum::<f64>());
    let (mut sq, mut tail32) = (sq.iter().sum::<f64>(), 0f64);
    for (&pv, &qv) in pt.iter().zip(qt) {
        let (ep, eq) = (exp(pv - mp) as f64, exp(qv - mq) as f64);
        sp += ep;
        sq += eq;
        tail32 += eq;
        a += ep * (pv - qv) as f64;
    }
    let lse_p = mp as f64 + sp.ln();
    let lse_q = mq as f64 + sq.ln();
    // As logsumexp_row_generic: the f32 lanes added in f64, then the tail.
    let s: f64 = sq32.iter().map(|&v| v as f64).sum::<f64>() + tail32;
    let lse_q32 = match mq.is_finite() {
        true => mq + s.ln() as f32,
        false if mq == f32::NEG_INFINITY => mq,
        false => f32::NAN,
    };
    (a / sp - (lse_p - lse_q), ip == iq, lse_q32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn kl_and_agreement_match_a_direct_f64_computation() {
        let dev = Device::Cpu;
        let p = Tensor::randn(0f32, 3.0, (6, 1003), &dev).unwrap();
        let noise = Tensor::randn(0f32, 0.5, (6, 1003), &dev).unwrap();
        let q = (&p + noise).unwrap();
        let KlRows { kl, agree, lse_q } = kl_and_agreement(&p, &q).unwrap();
        let lse: Vec<f32> = logsumexp_last_dim(&q).unwrap().to_vec1().unwrap();
        assert_eq!(lse_q, lse, "lse(q) as logsumexp_last_dim gives it");
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
        let composed = kl_and_agreement(
            &p.to_dtype(DType::F64).unwrap(),
            &q.to_dtype(DType::F64).unwrap(),
        )
        .unwrap();
        let (kl2, agree2) = (composed.kl, composed.agree);
        for r in 0..6 {
            assert!(
                (kl[r] - kl2[r]).abs() < 1e-5,
                "row {r}: {} vs {}",
                kl[r],
                kl2[r]
            );
        }
        assert_eq!(agree, agree2);
        let same = kl_and_agreement(&p, &p).unwrap();
        assert!(same.kl.iter().all(|&k| k.abs() < 1e-9) && same.agree.iter().all(|&a| a));
        // Rows of −∞ (log-sum-exp −∞), with +∞ or NaN (NaN), and a short row: lse(q) is
        // still logsumexp_last_dim's, bit for bit.
        let (ninf, inf) = (f32::NEG_INFINITY, f32::INFINITY);
        let rows = [
            [ninf; 5],
            [1.0, inf, 0.0, 2.0, 3.0],
            [1.0, f32::NAN, 0.0, 2.0, 3.0],
            [0.5, -1.0, 7.0, 2.0, 1e-3],
        ];
        let q = Tensor::from_iter(rows.iter().flatten().copied(), &dev)
            .and_then(|t| t.reshape((4, 5)))
            .unwrap();
        let p = Tensor::zeros((4, 5), DType::F32, &dev).unwrap();
        let got = kl_and_agreement(&p, &q).unwrap().lse_q;
        let want: Vec<f32> = logsumexp_last_dim(&q).unwrap().to_vec1().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{g} vs {w}"
            );
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

    #[test]
    fn half_logits_read_in_place_give_the_f32_result_bit_for_bit() {
        let x = (Tensor::randn(0f32, 10.0, (7, 50_257), &Device::Cpu).unwrap() + 3.0).unwrap();
        for dt in [DType::BF16, DType::F16] {
            let h = x.to_dtype(dt).unwrap();
            let widened: Vec<f32> = logsumexp_last_dim(&h.to_dtype(DType::F32).unwrap())
                .unwrap()
                .to_vec1()
                .unwrap();
            let in_place: Vec<f32> = logsumexp_last_dim(&h).unwrap().to_vec1().unwrap();
            assert_eq!(widened, in_place, "{dt:?}");
            let z = h.narrow(0, 2, 3).unwrap(); // a row offset, still contiguous
            let part: Vec<f32> = logsumexp_last_dim(&z).unwrap().to_vec1().unwrap();
            assert_eq!(part, in_place[2..5], "{dt:?}");
        }
    }
}
