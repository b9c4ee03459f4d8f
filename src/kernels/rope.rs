//! Rotary position embeddings as transformers applies them (`rotate_half`, the GPT-NeoX /
//! Hugging Face Llama layout): on the first `rot` dimensions of each head, with
//! `half = rot/2`, element `i < half` becomes `x_i·cos_i − x_{i+half}·sin_i` and element
//! `i + half` becomes `x_{i+half}·cos_i + x_i·sin_i`; the other dimensions pass through.
//!
//! On CPU (f32, bf16, f16) this is one kernel that reads a strided (fused-projection) view
//! and writes a contiguous result, computing in f32 and rounding once; elsewhere, and for
//! autograd, it is composed from candle ops.

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::convert::{self, Out, Src};
use super::isa::Isa;

/// `x` (b, t, H·d) rotated on the first `cos.dim(1)·2` dimensions of each of `n_head` heads;
/// `cos` and `sin` are (t, half) f32 tables for the positions of `x`'s rows. Returns a
/// contiguous (b, t, H·d) tensor of `x`'s dtype.
pub fn apply(x: &Tensor, n_head: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, t, c) = x.dims3()?;
    let (tc, half) = cos.dims2()?;
    if tc != t || sin.dims() != cos.dims() || c % n_head != 0 || 2 * half > c / n_head {
        candle_core::bail!(
            "rope: x {:?}, cos {:?}, sin {:?} with {n_head} heads",
            x.dims(),
            cos.dims(),
            sin.dims()
        );
    }
    let dtype_ok = matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16);
    if x.device().is_cpu() && dtype_ok && x.stride()[2] == 1 {
        let op = Rope { n_head };
        return x.apply_op3_no_bwd(&cos.contiguous()?, &sin.contiguous()?, &op);
    }
    apply_composed(x, n_head, cos, sin)
}

/// The candle-ops version of [`apply`]: other devices and dtypes (computed in `x`'s dtype
/// with the tables cast to it, as transformers does), and differentiable.
pub fn apply_composed(x: &Tensor, n_head: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    let (d, half) = (c / n_head, cos.dim(1)?);
    let xh = x.reshape((b, t, n_head, d))?; // (b, t, H, d)
    let cos = cos.to_dtype(x.dtype())?.reshape((1, t, 1, half))?;
    let sin = sin.to_dtype(x.dtype())?.reshape((1, t, 1, half))?;
    let x1 = xh.narrow(D::Minus1, 0, half)?;
    let x2 = xh.narrow(D::Minus1, half, half)?;
    let r1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let r2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    let mut parts = vec![r1, r2];
    if 2 * half < d {
        parts.push(xh.narrow(D::Minus1, 2 * half, d - 2 * half)?);
    }
    Tensor::cat(&parts, D::Minus1)?.reshape((b, t, c))
}

struct Rope {
    n_head: usize,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
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
        let (CpuStorage::F32(cos), CpuStorage::F32(sin)) = (s2, s3) else {
            candle_core::bail!("rope: expected f32 tables")
        };
        let (b, t, c) = l1.shape().dims3()?;
        let half = l2.shape().dims2()?.1;
        let [sb, st, _] = l1.stride() else {
            candle_core::bail!("rope: expected a 3-D input")
        };
        let x = Strided {
            src: match s1 {
                CpuStorage::F32(v) => Src::F32(v),
                CpuStorage::BF16(v) => Src::Bf16(v),
                CpuStorage::F16(v) => Src::F16(v),
                _ => candle_core::bail!("rope: expected f32, bf16 or f16 input"),
            },
            start: l1.start_offset(),
            batch: *sb,
            row: *st,
            b,
            t,
        };
        let tables = (&cos[l2.start_offset()..], &sin[l3.start_offset()..], half);
        let d = c / self.n_head;
        let storage = match x.src {
            Src::F32(_) => CpuStorage::F32(rotate_rows(&x, tables, c, d, Out::F32)),
            Src::Bf16(_) => CpuStorage::BF16(rotate_rows(&x, tables, c, d, Out::Bf16)),
            Src::F16(_) => CpuStorage::F16(rotate_rows(&x, tables, c, d, Out::F16)),
        };
        Ok((storage, Shape::from((b, t, c))))
    }
}

/// A (b, t, C) input with unit column stride.
struct Strided<'a> {
    src: Src<'a>,
    start: usize,
    batch: usize,
    row: usize,
    b: usize,
    t: usize,
}

/// Every row of `x` rotated head by head in f32 and rounded once to `x`'s dtype (written
/// through `out`, a pointer to a row of the result). For bf16 and f16 the tables are first
/// rounded to that dtype, as transformers casts them.
fn rotate_rows<'a, T: Copy + Default + Send + Sync>(
    x: &Strided,
    (cos, sin, half): (&'a [f32], &'a [f32], usize),
    c: usize,
    d: usize,
    out: fn(*mut T) -> Out,
) -> Vec<T> {
    let isa = Isa::get();
    let dtype = match x.src {
        Src::F32(_) => DType::F32,
        Src::Bf16(_) => DType::BF16,
        Src::F16(_) => DType::F16,
    };
    let rounded = |table: &'a [f32]| -> Cow<'a, [f32]> {
        let table = &table[..x.t * half];
        if dtype == DType::F32 {
            return Cow::Borrowed(table);
        }
        let mut v = table.to_vec();
        convert::round_through(isa, dtype, &mut v);
        Cow::Owned(v)
    };
    let (cos, sin) = (rounded(cos), rounded(sin));
    let mut rows = vec![T::default(); x.b * x.t * c];
    let scratch = || (vec![0f32; c], vec![0f32; c]);
    rows.par_chunks_mut(c)
        .enumerate()
        .for_each_init(scratch, |(src, rotated), (row, o)| {
            let (bi, ti) = (row / x.t, row % x.t);
            convert::load(isa, x.src, x.start + bi * x.batch + ti * x.row, src);
            let (cr, sr) = (&cos[ti * half..][..half], &sin[ti * half..][..half]);
            for (oh, xh) in rotated.chunks_exact_mut(d).zip(src.chunks_exact(d)) {
                rotate_head(oh, xh, cr, sr);
            }
            // SAFETY: `o` is this task's row of c elements.
            unsafe { convert::store(isa, rotated, out(o.as_mut_ptr()), 0) };
        });
    rows
}

#[inline(always)]
fn rotate_head(o: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        o[i] = a * cos[i] - b * sin[i];
        o[i + half] = b * cos[i] + a * sin[i];
    }
    o[2 * half..].copy_from_slice(&x[2 * half..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A direct f64 evaluation of the formula in the module doc.
    fn reference(x: &[f32], c: usize, d: usize, half: usize, cos: &[f32], sin: &[f32]) -> Vec<f64> {
        let mut out = vec![0f64; x.len()];
        for (r, (o, xr)) in out.chunks_mut(c).zip(x.chunks(c)).enumerate() {
            for h in 0..c / d {
                for i in 0..d {
                    let xi = |j: usize| xr[h * d + j] as f64;
                    let cs = |j: usize| cos[r * half + j] as f64;
                    let sn = |j: usize| sin[r * half + j] as f64;
                    o[h * d + i] = if i < half {
                        xi(i) * cs(i) - xi(i + half) * sn(i)
                    } else if i < 2 * half {
                        xi(i) * cs(i - half) + xi(i - half) * sn(i - half)
                    } else {
                        xi(i)
                    };
                }
            }
        }
        out
    }

    #[test]
    fn kernel_and_composed_match_the_formula_full_and_partial() {
        let dev = Device::Cpu;
        for (t, h, d, half) in [(5, 2, 8, 4), (7, 3, 8, 1), (4, 2, 16, 2)] {
            let c = h * d;
            // x is a strided view: the middle columns of a wider fused projection.
            let wide = Tensor::randn(0f32, 1.0, (1, t, 3 * c), &dev).unwrap();
            let x = wide.narrow(2, c, c).unwrap();
            let ang = Tensor::randn(0f32, 2.0, (t, half), &dev).unwrap();
            let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
            let want = reference(
                &x.contiguous()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
                c,
                d,
                half,
                &cos.flatten_all().unwrap().to_vec1().unwrap(),
                &sin.flatten_all().unwrap().to_vec1().unwrap(),
            );
            for got in [
                apply(&x, h, &cos, &sin).unwrap(),
                apply_composed(&x, h, &cos, &sin).unwrap(),
            ] {
                let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(&g, &w)| (g as f64 - w).abs())
                    .fold(0f64, f64::max);
                assert!(worst < 1e-5, "t={t} h={h} d={d} half={half}: {worst:e}");
            }
        }
    }

    /// In bf16 and f16: the tables rounded to the dtype, the rotation in f32, one rounding.
    #[test]
    fn half_precision_rounds_the_tables_then_the_result_once() {
        let dev = Device::Cpu;
        let (t, h, d, half) = (6, 2, 8, 3);
        let c = h * d;
        let x32 = Tensor::randn(0f32, 1.0, (1, t, c), &dev).unwrap();
        let ang = Tensor::randn(0f32, 2.0, (t, half), &dev).unwrap();
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        for dtype in [DType::BF16, DType::F16] {
            let x = x32.to_dtype(dtype).unwrap();
            let round = |v: &Tensor| -> Vec<f32> {
                let r = v.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                r.flatten_all().unwrap().to_vec1().unwrap()
            };
            let (xs, cs, sn) = (round(&x), round(&cos), round(&sin));
            let mut want = vec![0f32; t * c];
            for (r, (o, xr)) in want.chunks_mut(c).zip(xs.chunks(c)).enumerate() {
                let (cr, sr) = (&cs[r * half..][..half], &sn[r * half..][..half]);
                for (oh, xh) in o.chunks_exact_mut(d).zip(xr.chunks_exact(d)) {
                    rotate_head(oh, xh, cr, sr);
                }
            }
            let want = Tensor::from_vec(want, (1, t, c), &dev).unwrap();
            let want: Vec<f32> = round(&want);
            let got = apply(&x, h, &cos, &sin).unwrap();
            assert_eq!(got.dtype(), dtype);
            assert_eq!(round(&got), want, "{dtype:?}");
        }
    }
}
