//! Mean next-token cross-entropy from logits, as `torch.nn.functional.cross_entropy`:
//! `mean(logsumexp(x) − x[target])`, log-softmax fused; the backward is
//! `(softmax(x) − onehot(target))·∂loss/n`, the log-sum-exp recomputed per row.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, f32s, new_f32, tensor_f32s};
use crate::kernels::elementwise::simd;
use crate::kernels::math::exp;
use crate::kernels::reductions::{logsumexp_row, logsumexp_row_generic};

/// Mean cross-entropy of `logits` (n, vocab) against `targets` (n,) — differentiable in the
/// logits. Fused for f32 CPU logits; candle's composed version elsewhere.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if !cpu_f32(&[logits]) || !targets.device().is_cpu() {
        return candle_nn::loss::cross_entropy(logits, targets);
    }
    let (n, vocab) = logits.dims2()?;
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    if targets.dims() != [n] {
        candle_core::bail!(
            "cross_entropy: targets {:?} for logits ({n}, {vocab})",
            targets.dims()
        );
    }
    logits.contiguous()?.apply_op2(&targets, CrossEntropy)
}

struct CrossEntropy;

/// Rows per parallel task.
const ROWS: usize = 8;

fn u32s<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("cross_entropy: targets must be contiguous u32"),
    }
}

fn check(targets: &[u32], vocab: usize) -> Result<()> {
    match targets.iter().find(|&&t| t as usize >= vocab) {
        Some(t) => {
            candle_core::bail!("cross_entropy: target {t} outside the vocabulary of {vocab}")
        }
        None => Ok(()),
    }
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, vocab) = l1.shape().dims2()?;
        let (x, t) = (f32s(s1, l1, self.name())?, u32s(s2, l2)?);
        check(t, vocab)?;
        let partial: Vec<f64> = x
            .par_chunks(ROWS * vocab)
            .zip(t.par_chunks(ROWS))
            .map(|(rows, ts)| {
                rows.chunks_exact(vocab)
                    .zip(ts)
                    .map(|(row, &t)| (logsumexp_row(row) - row[t as usize]) as f64)
                    .sum::<f64>()
            })
            .collect();
        // Blocks added in order: the same bits whatever the threads.
        let total: f64 = partial.iter().sum();
        let mean = if n == 0 {
            f32::NAN
        } else {
            (total / n as f64) as f32
        };
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, vocab) = logits.dims2()?;
        let scale = g.to_dtype(DType::F32)?.to_scalar::<f32>()? / n as f32;
        let (xs, xl) = logits.storage_and_layout();
        let x = tensor_f32s(&xs, xl, "cross_entropy backward")?;
        let t = targets.to_vec1::<u32>()?;
        let mut dx = vec![0f32; n * vocab];
        dx.par_chunks_mut(ROWS * vocab)
            .zip(x.par_chunks(ROWS * vocab).zip(t.par_chunks(ROWS)))
            .for_each(|(ds, (rows, ts))| {
                simd(
                    #[inline(always)]
                    || {
                        for ((d, row), &t) in ds
                            .chunks_exact_mut(vocab)
                            .zip(rows.chunks_exact(vocab))
                            .zip(ts)
                        {
                            let lse = logsumexp_row_generic(row);
                            for (o, &v) in d.iter_mut().zip(row) {
                                *o = exp(v - lse) * scale;
                            }
                            d[t as usize] -= scale;
                        }
                    },
                )
            });
        Ok((Some(new_f32(dx, (n, vocab))?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::grad::tests::max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn loss_and_gradient_match_candle() {
        let dev = Device::Cpu;
        for (n, vocab) in [(1, 3), (37, 50), (64, 2048)] {
            let x = Var::randn(0f32, 3.0, (n, vocab), &dev).unwrap();
            let t: Vec<u32> = (0..n).map(|i| ((i * 7919) % vocab) as u32).collect();
            let t = Tensor::new(t.as_slice(), &dev).unwrap();
            let run = |fused: bool| {
                let loss = match fused {
                    true => cross_entropy(x.as_tensor(), &t).unwrap(),
                    false => candle_nn::loss::cross_entropy(x.as_tensor(), &t).unwrap(),
                };
                let loss3 = (&loss * 3.0).unwrap();
                let g = loss3
                    .backward()
                    .unwrap()
                    .get(x.as_tensor())
                    .unwrap()
                    .clone();
                (loss.to_scalar::<f32>().unwrap(), g)
            };
            let ((lf, gf), (lc, gc)) = (run(true), run(false));
            assert!((lf - lc).abs() < 1e-5 * lc.abs().max(1.0), "{lf} vs {lc}");
            assert!(max_diff(&gf, &gc) < 1e-6, "n={n}: {:e}", max_diff(&gf, &gc));
        }
    }

    #[test]
    fn a_target_outside_the_vocabulary_is_an_error() {
        let x = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        let t = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
        let err = cross_entropy(&x, &t).unwrap_err().to_string();
        assert!(
            err.contains("target 4 outside the vocabulary of 4"),
            "{err}"
        );
    }
}
