//! `y = x·Wᵀ + b` for training: the forward on the crate's GEMM (the inference kernel,
//! bias fused), the backward as two more products on the same kernel — `∂x = ∂y·W` and
//! `∂W = ∂yᵀ·x`, the transposed operands read as such while packing (no transposed copies)
//! — and `∂b` the column sums of `∂y`.

use candle_core::{Result, Shape, Tensor};

use super::{apply_weight_op, column_sums, cpu_f32, reshaped, Gradients, Operand, WeightOp};
use crate::kernels::convert::{Out, Src};
use crate::kernels::gemm::{self, Dims, Epilogue, Trans};
use crate::kernels::Isa;

/// `x (…, k) · wᵀ (m, k) + b (m,)` with a backward, for f32 CPU tensors; `None` elsewhere
/// (the caller composes candle ops).
pub fn forward(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    let mut all = vec![x, w];
    all.extend(b);
    if !cpu_f32(&all) {
        return Ok(None);
    }
    let (m, k) = w.dims2()?;
    let mut shape = x.dims().to_vec();
    match shape.last_mut() {
        Some(last) if *last == k => *last = m,
        _ => candle_core::bail!("linear: input {:?} for weight ({m}, {k})", x.dims()),
    }
    let x2 = reshaped(x, &[x.elem_count() / k.max(1), k])?;
    let y = apply_weight_op(LinearOp, &x2, w, b)?;
    reshaped(&y, &shape).map(Some)
}

#[derive(Clone, Copy)]
struct LinearOp;

impl WeightOp for LinearOp {
    const NAME: &'static str = "linear";

    fn forward(self, x: Operand, w: Operand, b: Option<&[f32]>) -> Result<(Vec<f32>, Shape)> {
        let ((n, k), m) = (dims2(x)?, dims2(w)?.0);
        let y = product(x.data, w.data, b, Dims { n, k, m }, Trans::NONE);
        Ok((y, Shape::from((n, m))))
    }

    /// ∂x = ∂y·W and ∂W = ∂yᵀ·x with the transposed operands read as such, ∂b the column
    /// sums of ∂y.
    fn backward(self, x: Operand, w: Operand, g: &[f32], bias: bool) -> Gradients {
        // Two-dimensional: `forward` checked them.
        let (n, k, m) = (x.dims[0], x.dims[1], w.dims[0]);
        // ∂x (n, k) = ∂y (n, m) · W (m, k): the kernel's W operand is Wᵀ (k, m), which W is,
        // stored transposed.
        let w_t = Trans { x: false, w: true };
        let dx = product(g, w.data, None, Dims { n, k: m, m: k }, w_t);
        // ∂W (m, k) = ∂yᵀ (m, n) · x (n, k): operands ∂yᵀ (m, n) and xᵀ (k, n), which ∂y and
        // x are, stored transposed.
        let both = Trans { x: true, w: true };
        let dw = product(g, x.data, None, Dims { n: m, k: n, m: k }, both);
        (dx, dw, bias.then(|| column_sums(g, m)))
    }
}

/// `x (n, k) · w (m, k)ᵀ (+ bias)` into a new (n, m) buffer, either operand stored
/// transposed as `trans` says.
fn product(x: &[f32], w: &[f32], bias: Option<&[f32]>, d: Dims, trans: Trans) -> Vec<f32> {
    let len = d.n * d.m;
    if d.k == 0 {
        return (0..len).map(|i| bias.map_or(0.0, |b| b[i % d.m])).collect();
    }
    let epi = Epilogue {
        bias: bias.map(Src::F32),
        ..Epilogue::default()
    };
    let mut out = Vec::with_capacity(len);
    // SAFETY: with k > 0 the kernel writes all n·m elements, through a pointer to the
    // buffer's capacity that nothing else touches; only then is the length set.
    unsafe {
        let out_ptr = Out::F32(out.as_mut_ptr());
        gemm::linear_transposed(
            Isa::get(),
            Src::F32(x),
            Src::F32(w),
            d,
            trans,
            &epi,
            out_ptr,
        );
        out.set_len(len);
    }
    out
}

/// (rows, columns) of a 2-D operand.
fn dims2(o: Operand) -> Result<(usize, usize)> {
    match o.dims {
        &[r, c] => Ok((r, c)),
        d => candle_core::bail!("linear: expected a matrix, got {d:?}"),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Gradients of `sum(y · r)` for random r, fused and through candle's ops.
    #[test]
    fn gradients_match_candle_autograd() {
        let dev = Device::Cpu;
        for (n, k, m, bias) in [
            (7, 5, 3, true),
            (300, 160, 640, true),
            (96, 33, 1000, false),
            (2, 8, 4, true),
        ] {
            let x = Var::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let w = Var::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let b = Var::randn(0f32, 1.0, m, &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (n, m), &dev).unwrap();
            let grads = |fused: bool| {
                let bias = bias.then_some(b.as_tensor());
                let y = if fused {
                    forward(x.as_tensor(), w.as_tensor(), bias)
                        .unwrap()
                        .unwrap()
                } else {
                    candle_nn::Linear::new(w.as_tensor().clone(), bias.cloned())
                        .forward(x.as_tensor())
                        .unwrap()
                };
                let store = crate::model::grad::tests::gradients_of(&y, &r);
                let mut out = vec![y];
                for v in [&x, &w, &b] {
                    if let Some(g) = store.get(v.as_tensor()) {
                        out.push(g.clone());
                    }
                }
                out
            };
            let (fused, composed) = (grads(true), grads(false));
            assert_eq!(fused.len(), composed.len());
            for (f, c) in fused.iter().zip(&composed) {
                let scale = c
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    .max(1.0);
                let diff = crate::model::grad::tests::max_diff(f, c);
                assert!(
                    diff <= 1e-5 * scale * (k.max(n) as f32).sqrt(),
                    "n={n} k={k} m={m}: {diff:e}"
                );
            }
        }
    }

    use candle_core::Module;
}
