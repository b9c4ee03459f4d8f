//! Elementwise maps over f32 slices, in parallel, compiled once per level (baseline x86-64,
//! AVX2+FMA, AVX-512) and picked at run time. The function is a generic parameter, so each
//! caller's closure gets its own vectorised loop. [`simd`] is the one place that picks the
//! level; the row kernels elsewhere (softmax, log-sum-exp, norms, the training ops' loops) go
//! through it too.

use rayon::prelude::*;

use super::isa::Isa;

/// Elements per parallel task: large enough to amortise scheduling, small enough to split a
/// 1024×3072 MLP activation over every core.
const CHUNK: usize = 16 * 1024;

/// `f` applied to every element of `xs`, in parallel, with the best instruction set available.
pub fn map_f32<F>(xs: &[f32], f: F) -> Vec<f32>
where
    F: Fn(f32) -> f32 + Copy + Send + Sync,
{
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .for_each(|(o, x)| map_chunk(x, o, f));
    out
}

fn map_chunk<F: Fn(f32) -> f32 + Copy>(x: &[f32], o: &mut [f32], f: F) {
    simd(
        #[inline(always)]
        || {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = f(x);
            }
        },
    )
}

/// `f` applied in place to every element of `xs` (one thread: for runs inside a kernel),
/// with the best instruction set available.
#[inline]
pub fn map_in_place<F: Fn(f32) -> f32 + Copy>(xs: &mut [f32], f: F) {
    simd(
        #[inline(always)]
        || xs.iter_mut().for_each(|x| *x = f(*x)),
    )
}

/// `f(a, b)` for every pair of elements, in parallel, with the best instruction set
/// available.
pub fn zip_map_f32<F>(a: &[f32], b: &[f32], f: F) -> Vec<f32>
where
    F: Fn(f32, f32) -> f32 + Copy + Send + Sync,
{
    assert_eq!(a.len(), b.len(), "zip_map_f32: lengths differ");
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            simd(
                #[inline(always)]
                || {
                    for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                        *o = f(a, b);
                    }
                },
            )
        });
    out
}

/// Runs `f` compiled for AVX-512 or AVX2+FMA when the level chosen ([`Isa::get`]) has them,
/// else for the baseline: for a kernel's inner loops written as plain Rust (`f` and what it
/// calls inline are compiled once per level). Mark the closure `#[inline(always)]`: a closure
/// compiled as a function of its own gets the baseline's instructions whoever calls it. The
/// levels give the same results: the loops' reductions keep their own lanes, and no level
/// fuses a multiply and an add the source does not.
#[inline(always)]
pub fn simd<R, F: FnOnce() -> R>(f: F) -> R {
    #[cfg(target_arch = "x86_64")]
    match Isa::get() {
        // SAFETY: the level implies the CPU has the features each function is compiled for.
        Isa::Avx512 | Isa::Avx512Bf16 => return unsafe { simd_avx512(f) },
        Isa::Avx2 => return unsafe { simd_avx2(f) },
        Isa::Portable => {}
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn simd_avx2<R, F: FnOnce() -> R>(f: F) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
unsafe fn simd_avx512<R, F: FnOnce() -> R>(f: F) -> R {
    f()
}
