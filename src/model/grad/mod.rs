//! Differentiable CPU ops for training in f32: each a candle custom op whose forward is a
//! fused kernel and whose backward is written by hand, where composing the same maths from
//! candle ops costs many passes over memory and a dozen temporaries per layer.
//!
//! - [`activation`]: the activation, with f′ from a fused kernel.
//! - [`linear`]: `x·Wᵀ + b` on the crate's GEMM, forward and backward.
//! - [`norm`]: LayerNorm and RMSNorm, one pass forward, two backward.
//! - [`attention`]: causal attention on the fused q|k|v projection; the backward recomputes
//!   each query block's probabilities instead of keeping the (b, h, t, t) tensor.
//! - [`loss`]: mean next-token cross-entropy from the logits, log-softmax fused.
//!
//! Every op has a composed candle-ops reference that autograd differentiates, used on other
//! devices and dtypes; the tests compare the gradients of the two. The ops skip no-op
//! reshapes ([`reshaped`]): in candle's autograd every node costs a zeroed buffer and a sum.
//! Sums across parallel blocks are added in block order, so a step's result does not depend
//! on how rayon split the work (resumed runs end bit-identical).

pub mod activation;
pub mod attention;
pub mod linear;
pub mod loss;
pub mod norm;

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;

/// Whether every tensor is an f32 tensor on the CPU (the fused ops' domain).
pub fn cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// `t` with shape `dims`, the same tensor when it has it already: a reshape is a node of
/// autograd's graph, which costs a zeroed buffer and a sum in the backward pass.
pub fn reshaped(t: &Tensor, dims: &[usize]) -> Result<Tensor> {
    if t.dims() == dims {
        Ok(t.clone())
    } else {
        t.reshape(dims)
    }
}

/// An op on an input x and a weight w, with or without a bias b, on contiguous f32 slices:
/// [`apply_weight_op`] runs it as candle's two- or three-input custom op, so the linear layer
/// and the norms are each written once for both.
trait WeightOp: Copy + Send + Sync + 'static {
    const NAME: &'static str;

    /// y and its shape.
    fn forward(self, x: Operand, w: Operand, b: Option<&[f32]>) -> Result<(Vec<f32>, Shape)>;

    /// (∂x, ∂w, and ∂b when `bias`) given ∂y (contiguous, y's shape).
    fn backward(self, x: Operand, w: Operand, g: &[f32], bias: bool) -> Gradients;
}

/// A contiguous f32 operand and its dims.
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    dims: &'a [usize],
}

/// ∂x, ∂w and (with a bias) ∂b, shaped like x, w and w's first dimension.
type Gradients = (Vec<f32>, Vec<f32>, Option<Vec<f32>>);

/// `op` on x, w and, when given, b, with its backward.
fn apply_weight_op<T: WeightOp>(
    op: T,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, AsCustomOp(op)),
        None => x.apply_op2(&w, AsCustomOp(op)),
    }
}

/// A [`WeightOp`] as candle's custom op.
struct AsCustomOp<T>(T);

impl<T: WeightOp> AsCustomOp<T> {
    fn fwd(
        &self,
        (xs, xl): (&CpuStorage, &Layout),
        (ws, wl): (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let x = Operand {
            data: f32s(xs, xl, T::NAME)?,
            dims: xl.dims(),
        };
        let w = Operand {
            data: f32s(ws, wl, T::NAME)?,
            dims: wl.dims(),
        };
        let b = b.map(|(s, l)| f32s(s, l, T::NAME)).transpose()?;
        let (y, shape) = self.0.forward(x, w, b)?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, g: &Tensor, bias: bool) -> Result<[Option<Tensor>; 3]> {
        let g = g.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (gs, gl) = g.storage_and_layout();
        let operand = |s, l, dims| -> Result<Operand> {
            Ok(Operand {
                data: tensor_f32s(s, l, T::NAME)?,
                dims,
            })
        };
        let (dx, dw, db) = self.0.backward(
            operand(&xs, xl, x.dims())?,
            operand(&ws, wl, w.dims())?,
            tensor_f32s(&gs, gl, T::NAME)?,
            bias,
        );
        Ok([
            Some(new_f32(dx, x.dims())?),
            Some(new_f32(dw, w.dims())?),
            db.map(|v| new_f32(v, w.dim(0)?)).transpose()?,
        ])
    }
}

impl<T: WeightOp> CustomOp2 for AsCustomOp<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, _] = self.bwd(x, w, g, false)?;
        Ok((dx, dw))
    }
}

impl<T: WeightOp> CustomOp3 for AsCustomOp<T> {
    fn name(&self) -> &'static str {
        T::NAME
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
        self.fwd((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dw, db] = self.bwd(x, w, g, true)?;
        Ok((dx, dw, db))
    }
}

/// The elements of a contiguous f32 CPU storage.
fn f32s<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: input not contiguous")))?;
    match storage {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => candle_core::bail!("{what}: f32 only"),
    }
}

/// The elements of a contiguous f32 CPU tensor's storage (hold the guard while reading).
fn tensor_f32s<'a>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    match storage {
        Storage::Cpu(s) => f32s(s, layout, what),
        _ => candle_core::bail!("{what}: CPU only"),
    }
}

/// A new f32 CPU tensor.
fn new_f32(v: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Column sums of `src` (rows, cols) row-major, in f32 by blocks of rows, the blocks' sums
/// added in order (the same bits whatever the threads).
fn column_sums(src: &[f32], cols: usize) -> Vec<f32> {
    const BLOCK: usize = 64;
    let add = |mut a: Vec<f32>, row: &[f32]| {
        a.iter_mut().zip(row).for_each(|(x, y)| *x += y);
        a
    };
    let partial: Vec<Vec<f32>> = src
        .par_chunks(BLOCK * cols)
        .map(|block| block.chunks_exact(cols).fold(vec![0f32; cols], add))
        .collect();
    partial.iter().fold(vec![0f32; cols], |a, b| add(a, b))
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::Tensor;

    #[test]
    fn column_sums_match_a_plain_loop() {
        for (rows, cols) in [(1, 1), (3, 40), (37, 17), (200, 160)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 3.0).collect();
            let sums = super::column_sums(&src, cols);
            for (j, s) in sums.iter().enumerate() {
                let want: f32 = (0..rows).map(|i| src[i * cols + j]).sum();
                assert!(
                    (s - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "column {j}: {s} vs {want}"
                );
            }
        }
    }

    /// The gradients of `Σ y·r` (r a fixed random tensor): every input's gradient as the
    /// loss `y·r` would give it.
    pub fn gradients_of(y: &Tensor, r: &Tensor) -> candle_core::backprop::GradStore {
        (y * r).unwrap().sum_all().unwrap().backward().unwrap()
    }

    /// max |a − b| over every element.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .unwrap()
    }
}
