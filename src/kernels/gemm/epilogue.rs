//! The epilogue of a product: `act(sum + bias) (+|·) r`, rounded once to the output dtype,
//! over one run of a row of sums. f32 operands are read in place; others are converted into
//! a scratch run first.

use super::{Combine, Job};
use crate::kernels::convert::{self, Src};
use crate::kernels::isa::Isa;

/// Applies the epilogue to `vals`, the sums of row `i`, columns `j0 ..`, and stores them.
///
/// # Safety
/// As [`super::linear`]; the elements written are `out[i·m + j0 ..][..vals.len()]`.
pub(crate) unsafe fn finish(job: &Job, vals: &mut [f32], i: usize, j0: usize, tmp: &mut Vec<f32>) {
    let (isa, epi, m) = (job.isa, job.epi, job.d.m);
    if let Some(b) = epi.bias {
        as_f32(isa, b, j0, vals.len(), tmp, |b| {
            zip(isa, vals, b, |v, b| v + b)
        });
    }
    if let Some(act) = epi.act {
        act(vals);
    }
    if let Some((op, r)) = epi.with {
        as_f32(isa, r, i * m + j0, vals.len(), tmp, |r| match op {
            Combine::Add => zip(isa, vals, r, |v, r| v + r),
            Combine::Mul => zip(isa, vals, r, |v, r| v * r),
        });
    }
    convert::store(isa, vals, job.out, i * m + j0);
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
