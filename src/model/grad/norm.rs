//! LayerNorm and RMSNorm for training: per row, the statistics and the normalised output in
//! one pass forward; backward, the statistics again, then
//! `∂x = r·(g·w − mean(g·w) − x̂·mean(g·w·x̂))` (RMSNorm without the mean term), with
//! `∂w = Σ g·x̂` and `∂b = Σ g` summed per block of rows, then across blocks.

use candle_core::{Result, Shape, Tensor};
use rayon::prelude::*;

use super::{apply_weight_op, cpu_f32, reshaped, Gradients, Operand, WeightOp};
use crate::kernels::elementwise::simd;
use crate::kernels::reductions::{sum, sum_pairs};

/// Which normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// `(x − mean)/√(var + eps)·w (+ b)`.
    Layer,
    /// `x/√(mean(x²) + eps)·w`.
    Rms,
}

/// The normalisation of `x` (…, c) with weight `w` (c,) and, for LayerNorm, an optional
/// bias, with a backward, for f32 CPU tensors; `None` elsewhere.
pub fn forward(
    x: &Tensor,
    kind: Kind,
    w: &Tensor,
    b: Option<&Tensor>,
    eps: f64,
) -> Result<Option<Tensor>> {
    let mut all = vec![x, w];
    all.extend(b);
    if !cpu_f32(&all) {
        return Ok(None);
    }
    let c = w.dim(0)?;
    let x2 = reshaped(x, &[x.elem_count() / c.max(1), c])?;
    let y = apply_weight_op(
        NormOp {
            kind,
            eps: eps as f32,
        },
        &x2,
        w,
        b,
    )?;
    reshaped(&y, x.dims()).map(Some)
}

#[derive(Clone, Copy)]
struct NormOp {
    kind: Kind,
    eps: f32,
}

/// Rows per parallel task.
const ROWS: usize = 32;

impl NormOp {
    /// (mean, 1/σ) of a row: the mean is 0 for RMSNorm.
    #[inline(always)]
    fn stats(self, x: &[f32]) -> (f32, f32) {
        let n = x.len() as f32;
        let mean = match self.kind {
            Kind::Layer => sum(x) / n,
            Kind::Rms => 0.0,
        };
        let var = sum_pairs(x, x, |v, _| (v - mean) * (v - mean)) / n;
        (mean, 1.0 / (var + self.eps).sqrt())
    }

    fn fwd(self, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
        let c = w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(ROWS * c)
            .zip(x.par_chunks(ROWS * c))
            .for_each(|(ys, xs)| {
                simd(
                    #[inline(always)]
                    || {
                        for (yr, xr) in ys.chunks_exact_mut(c).zip(xs.chunks_exact(c)) {
                            let (mean, r) = self.stats(xr);
                            for ((o, &v), &wi) in yr.iter_mut().zip(xr).zip(w) {
                                *o = (v - mean) * r * wi;
                            }
                            if let Some(b) = b {
                                yr.iter_mut().zip(b).for_each(|(o, &bi)| *o += bi);
                            }
                        }
                    },
                )
            });
        y
    }

    /// (∂x, ∂w, ∂b).
    fn bwd(self, x: &[f32], w: &[f32], g: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let c = w.len();
        let mut dx = vec![0f32; x.len()];
        let zero = || (vec![0f32; c], vec![0f32; c]);
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(ROWS * c)
            .zip(x.par_chunks(ROWS * c).zip(g.par_chunks(ROWS * c)))
            .map(|(dxs, (xs, gs))| {
                let (mut dw, mut db) = zero();
                let (mut xhat, mut gw) = (vec![0f32; c], vec![0f32; c]);
                simd(
                    #[inline(always)]
                    || {
                        let rows = dxs
                            .chunks_exact_mut(c)
                            .zip(xs.chunks_exact(c))
                            .zip(gs.chunks_exact(c));
                        for ((dr, xr), gr) in rows {
                            self.row_bwd(xr, gr, w, (&mut xhat, &mut gw), dr);
                            for i in 0..c {
                                dw[i] += gr[i] * xhat[i];
                                db[i] += gr[i];
                            }
                        }
                    },
                );
                (dw, db)
            })
            .collect();
        // Blocks added in order: the same bits whatever the threads.
        let (dw, db) = partial.iter().fold(zero(), |(mut w1, mut b1), (w2, b2)| {
            w1.iter_mut().zip(w2).for_each(|(a, b)| *a += b);
            b1.iter_mut().zip(b2).for_each(|(a, b)| *a += b);
            (w1, b1)
        });
        (dx, dw, db)
    }

    /// ∂x of one row into `dr`, leaving x̂ and g·w in the scratch rows.
    #[inline(always)]
    fn row_bwd(
        self,
        xr: &[f32],
        gr: &[f32],
        w: &[f32],
        (xhat, gw): (&mut [f32], &mut [f32]),
        dr: &mut [f32],
    ) {
        let c = w.len() as f32;
        let (mean, r) = self.stats(xr);
        for i in 0..w.len() {
            xhat[i] = (xr[i] - mean) * r;
            gw[i] = gr[i] * w[i];
        }
        let a = match self.kind {
            Kind::Layer => sum(gw) / c,
            Kind::Rms => 0.0,
        };
        let m = sum_pairs(gw, xhat, |p, q| p * q) / c;
        for i in 0..w.len() {
            dr[i] = r * (gw[i] - a - xhat[i] * m);
        }
    }
}

impl WeightOp for NormOp {
    const NAME: &'static str = "norm";

    fn forward(self, x: Operand, w: Operand, b: Option<&[f32]>) -> Result<(Vec<f32>, Shape)> {
        Ok((self.fwd(x.data, w.data, b), Shape::from(x.dims)))
    }

    fn backward(self, x: Operand, w: Operand, g: &[f32], bias: bool) -> Gradients {
        let (dx, dw, db) = self.bwd(x.data, w.data, g);
        (dx, dw, bias.then_some(db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::grad::tests::max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn gradients_match_candle_autograd() {
        let dev = Device::Cpu;
        for (kind, bias) in [
            (Kind::Layer, true),
            (Kind::Layer, false),
            (Kind::Rms, false),
        ] {
            for (n, c) in [(3, 5), (100, 160), (65, 64)] {
                let x = Var::randn(0.3f32, 2.0, (n, c), &dev).unwrap();
                let w = Var::randn(1f32, 0.5, c, &dev).unwrap();
                let b = Var::randn(0f32, 0.5, c, &dev).unwrap();
                let r = Tensor::randn(0f32, 1.0, (n, c), &dev).unwrap();
                let grads = |fused: bool| {
                    let (xt, wt) = (x.as_tensor(), w.as_tensor());
                    let bt = bias.then_some(b.as_tensor());
                    let y = match (fused, kind) {
                        (true, _) => forward(xt, kind, wt, bt, 1e-5).unwrap().unwrap(),
                        (false, Kind::Layer) => {
                            let zero = wt.zeros_like().unwrap();
                            candle_nn::ops::layer_norm_slow(xt, wt, bt.unwrap_or(&zero), 1e-5)
                                .unwrap()
                        }
                        (false, Kind::Rms) => candle_nn::ops::rms_norm_slow(xt, wt, 1e-5).unwrap(),
                    };
                    let store = crate::model::grad::tests::gradients_of(&y, &r);
                    let mut out = vec![y];
                    out.extend(
                        [&x, &w]
                            .iter()
                            .map(|v| store.get(v.as_tensor()).unwrap().clone()),
                    );
                    if bias {
                        out.push(store.get(b.as_tensor()).unwrap().clone());
                    }
                    out
                };
                for (f, c) in grads(true).iter().zip(&grads(false)) {
                    let d = max_diff(f, c);
                    assert!(d < 2e-4, "{kind:?} bias={bias} n={n}: {d:e}");
                }
            }
        }
    }
}
