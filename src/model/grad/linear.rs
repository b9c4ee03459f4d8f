//! `y = x·Wᵀ + b` for training: the forward on the crate's GEMM (the inference kernel,
//! bias fused), the backward as two more products on the same kernel — `∂x = ∂y·W` and
//! `∂W = ∂yᵀ·x`, the transposed operands read as such while packing (no transposed copies)
//! — and `∂b` the column sums of `∂y`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::{column_sums, cpu_f32, f32s, new_f32, reshaped, tensor_f32s};
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
    let x2 = reshaped(x, &[x.elem_count() / k.max(1), k])?.contiguous()?;
    let (w, op) = (w.contiguous()?, LinearOp);
    let y = match b {
        Some(b) => x2.apply_op3(&w, &b.contiguous()?, op)?,
        None => x2.apply_op2(&w, op)?,
    };
    reshaped(&y, &shape).map(Some)
}

struct LinearOp;

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

fn fwd(
    x: (&CpuStorage, &Layout),
    w: (&CpuStorage, &Layout),
    b: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let (n, k) = x.1.shape().dims2()?;
    let m = w.1.shape().dims2()?.0;
    let xs = f32s(x.0, x.1, "linear")?;
    let ws = f32s(w.0, w.1, "linear")?;
    let bs = b.map(|(s, l)| f32s(s, l, "linear")).transpose()?;
    let y = product(xs, ws, bs, Dims { n, k, m }, Trans::NONE);
    Ok((CpuStorage::F32(y), Shape::from((n, m))))
}

/// (∂x, ∂W, ∂b) for `y = x·Wᵀ + b` given ∂y.
fn bwd(x: &Tensor, w: &Tensor, g: &Tensor, bias: bool) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let (n, k) = x.dims2()?;
    let m = w.dim(0)?;
    let g = g.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (gs, gl) = g.storage_and_layout();
    let (xv, wv, gv) = (
        tensor_f32s(&xs, xl, "linear backward")?,
        tensor_f32s(&ws, wl, "linear backward")?,
        tensor_f32s(&gs, gl, "linear backward")?,
    );
    // ∂x (n, k) = ∂y (n, m) · W (m, k): the kernel's W operand is Wᵀ (k, m), which W is,
    // stored transposed.
    let w_t = Trans { x: false, w: true };
    let dx = product(gv, wv, None, Dims { n, k: m, m: k }, w_t);
    // ∂W (m, k) = ∂yᵀ (m, n) · x (n, k): operands ∂yᵀ (m, n) and xᵀ (k, n), which ∂y and x
    // are, stored transposed.
    let both = Trans { x: true, w: true };
    let dw = product(gv, xv, None, Dims { n: m, k: n, m: k }, both);
    let db = bias.then(|| column_sums(gv, m));
    Ok((
        new_f32(dx, (n, k))?,
        new_f32(dw, (m, k))?,
        db.map(|v| new_f32(v, m)).transpose()?,
    ))
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = bwd(x, w, g, false)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear-bias"
    }

    #[allow(clippy::too_many_arguments)]
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fwd((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = bwd(x, w, g, true)?;
        Ok((Some(dx), Some(dw), db))
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
                let store = (y.clone() * &r)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
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
