//! The epilogue of a product: `act(sum + bias) (+|·) r`, rounded once to the output dtype,
//! over one run of a row of sums. f32 operands are read in place; others are converted into
//! a scratch run first.

use super::{Combine, Job};
use crate::kernels::convert::{self, Out, Src};
use crate::kernels::isa::Isa;

/// Applies the epilogue to `vals`, the sums of row `i`, columns `j0 ..`, and stores them.
///
/// # Safety
/// As [`super::linear`]; the elements written are `out[i·m + j0 ..][..vals.len()]`.
pub(crate) unsafe fn finish(job: &Job, vals: &mut [f32], i: usize, j0: usize, tmp: &mut Vec<f32>) {
    let (isa, epi, m) = (job.isa, job.epi, job.d.m);
    let (at, len) = (i * m + j0, vals.len());
    if let (Out::F32(p), None) = (job.out, epi.act) {
        // f32 out, no activation: bias, operand and store in one pass.
        let bias = f32_part(epi.bias, j0, len);
        let with = f32_part(epi.with.map(|(_, r)| r), at, len);
        if let (Some(bias), Some(with)) = (bias, with) {
            let out = std::slice::from_raw_parts_mut(p.add(at), len);
            let op = epi.with.map_or(Combine::Add, |(op, _)| op);
            return store_f32(isa, out, vals, bias, with.map(|r| (op, r)));
        }
    }
    if let Some(b) = epi.bias {
        as_f32(isa, b, j0, len, tmp, |b| zip(isa, vals, b, |v, b| v + b));
    }
    if let Some(act) = epi.act {
        act(vals);
    }
    if let Some((op, r)) = epi.with {
        as_f32(isa, r, at, len, tmp, |r| match op {
            Combine::Add => zip(isa, vals, r, |v, r| v + r),
            Combine::Mul => zip(isa, vals, r, |v, r| v * r),
        });
    }
    convert::store(isa, vals, job.out, at);
}

/// `Some(run)` for an f32 source's elements `start .. start + len` (or `Some(None)` for no
/// source); `None` for other dtypes.
#[allow(clippy::option_option)]
fn f32_part<'a>(s: Option<Src<'a>>, start: usize, len: usize) -> Option<Option<&'a [f32]>> {
    match s {
        Some(Src::F32(v)) => Some(Some(&v[start..start + len])),
        None => Some(None),
        _ => None,
    }
}

/// `out = (vals + bias) (+|·) r`, one pass.
fn store_f32(
    isa: Isa,
    out: &mut [f32],
    vals: &[f32],
    bias: Option<&[f32]>,
    with: Option<(Combine, &[f32])>,
) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: the level implies the CPU has AVX2 and FMA.
        return unsafe { store_f32_avx2(out, vals, bias, with) };
    }
    let _ = isa;
    store_f32_generic(out, vals, bias, with)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_f32_avx2(
    out: &mut [f32],
    vals: &[f32],
    bias: Option<&[f32]>,
    with: Option<(Combine, &[f32])>,
) {
    store_f32_generic(out, vals, bias, with)
}

#[inline(always)]
fn store_f32_generic(
    out: &mut [f32],
    vals: &[f32],
    bias: Option<&[f32]>,
    with: Option<(Combine, &[f32])>,
) {
    let it = out.iter_mut().zip(vals);
    match (bias, with) {
        (None, None) => out.copy_from_slice(vals),
        (Some(b), None) => it.zip(b).for_each(|((o, v), b)| *o = v + b),
        (None, Some((Combine::Add, r))) => it.zip(r).for_each(|((o, v), r)| *o = v + r),
        (None, Some((Combine::Mul, r))) => it.zip(r).for_each(|((o, v), r)| *o = v * r),
        (Some(b), Some((Combine::Add, r))) => it
            .zip(b)
            .zip(r)
            .for_each(|(((o, v), b), r)| *o = (v + b) + r),
        (Some(b), Some((Combine::Mul, r))) => it
            .zip(b)
            .zip(r)
            .for_each(|(((o, v), b), r)| *o = (v + b) * r),
    }
}

/// Calls `f` with elements `start .. start + len` of `src` as f32 (in place when they are).
fn as_f32(
    isa: Isa,
    src: Src,
    start: usize,
    len: usize,
    tmp: &mut Vec<f32>,
    f: impl FnOnce(&[f32]),
) {
    match src {
        Src::F32(s) => f(&s[start..start + len]),
        other => {
            tmp.resize(len, 0.0);
            convert::load(isa, other, start, tmp);
            f(tmp)
        }
    }
}

/// `a[i] = f(a[i], b[i])`, vectorised.
#[inline]
fn zip<F: Fn(f32, f32) -> f32 + Copy>(isa: Isa, a: &mut [f32], b: &[f32], f: F) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: the level implies the CPU has AVX2 and FMA.
        unsafe { zip_avx2(a, b, f) };
        return;
    }
    let _ = isa;
    zip_generic(a, b, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn zip_avx2<F: Fn(f32, f32) -> f32 + Copy>(a: &mut [f32], b: &[f32], f: F) {
    zip_generic(a, b, f)
}

#[inline(always)]
fn zip_generic<F: Fn(f32, f32) -> f32 + Copy>(a: &mut [f32], b: &[f32], f: F) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x = f(*x, y);
    }
}
