//! Products with a few rows of x (decoding): each task takes a run of W's rows and streams
//! them from memory once, row by row — one sequential stream, eight 8-lane accumulators,
//! which is what this kind of core prefetches best (measured: interleaving rows or 16-lane
//! loads stream slower) — dotting each W row with every row of x while it is in L1. bf16 rows
//! use `vdpbf16ps` where the CPU has it; otherwise bf16 and f16 are converted to f32 as they
//! are loaded.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{finish, Job};
use crate::kernels::convert::{self, Src};
use crate::kernels::isa::Isa;

/// Rows of W per task, at least and at most (short runs stream faster here than long ones).
const MIN_CHUNK: usize = 32;
const MAX_CHUNK: usize = 128;

thread_local! {
    static VALS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    static XF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out = epilogue(x·Wᵀ)` for small n.
///
/// # Safety
/// As [`super::linear`].
pub(super) unsafe fn run(job: &Job) {
    let d = job.d;
    XF.with(|xf| {
        let xf = &mut *xf.borrow_mut();
        xf.resize(d.n * d.k, 0.0);
        convert::load(job.isa, job.x, 0, xf);
        let tasks = 4 * rayon::current_num_threads().max(1);
        let chunk = d.m.div_ceil(tasks).clamp(MIN_CHUNK, MAX_CHUNK);
        let xf = &*xf;
        (0..d.m.div_ceil(chunk)).into_par_iter().for_each(|c| {
            let (j0, len) = (c * chunk, chunk.min(d.m - c * chunk));
            VALS.with(|v| {
                let (vals, tmp) = &mut *v.borrow_mut();
                vals.resize(d.n * len, 0.0);
                dots(job, xf, j0, len, vals);
                for (i, row) in vals.chunks_exact_mut(len).enumerate() {
                    // SAFETY: this task owns columns j0..j0 + len of every row.
                    unsafe { finish(job, row, i, j0, tmp) };
                }
            });
        });
    });
}

/// `vals[i·len + r] = x_i · W_{j0 + r}` for every row i of x and `r < len`; `xf` is x in f32.
fn dots(job: &Job, xf: &[f32], j0: usize, len: usize, vals: &mut [f32]) {
    let (k, n) = (job.d.k, job.d.n);
    let rows = j0 * k..(j0 + len) * k;
    #[cfg(target_arch = "x86_64")]
    if job.isa >= Isa::Avx2 {
        // SAFETY: the level implies the features each kernel needs; the slices hold `len`
        // rows of W and `n` rows of x, of k each.
        unsafe {
            match (job.isa, job.w, job.x) {
                (Isa::Avx512Bf16, Src::Bf16(w), Src::Bf16(x)) => {
                    x86::rows_bf16_dp(&w[rows], &x[..n * k], k, vals)
                }
                (_, Src::F32(w), _) => x86::rows_f32(&w[rows], &xf[..n * k], k, vals),
                (_, Src::Bf16(w), _) => x86::rows_bf16(&w[rows], &xf[..n * k], k, vals),
                (_, Src::F16(w), _) => x86::rows_f16(&w[rows], &xf[..n * k], k, vals),
            }
        }
        return;
    }
    portable(job.isa, job.w, xf, (k, n, j0, len), vals)
}

/// The portable kernel: W's rows converted to f32, dotted in 8 lanes.
fn portable(
    isa: Isa,
    w: Src,
    xf: &[f32],
    (k, n, j0, len): (usize, usize, usize, usize),
    vals: &mut [f32],
) {
    let mut wr = vec![0f32; k];
    for j in 0..len {
        convert::load(isa, w, (j0 + j) * k, &mut wr);
        for i in 0..n {
            let xr = &xf[i * k..(i + 1) * k];
            let mut acc = [0f32; 8];
            let (wc, xc) = (wr.chunks_exact(8), xr.chunks_exact(8));
            let tail: f32 = wc
                .remainder()
                .iter()
                .zip(xc.remainder())
                .map(|(a, b)| a * b)
                .sum();
            for (a, b) in wc.zip(xc) {
                for l in 0..8 {
                    acc[l] += a[l] * b[l];
                }
            }
            vals[i * len + j] = acc.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// Dot products of rows of W with rows of f32 x: eight 8-lane accumulators, 64 values
    /// a step, `$load(p)` loading 8 values of W as f32; the tail element by element.
    /// `vals[i·len + j]` gets W row j · x row i.
    macro_rules! rows8 {
        ($name:ident, $feat:literal, $elem:ty, |$p:ident| $load:expr, |$e:ident| $scalar:expr) => {
            /// # Safety
            /// The CPU has the enabled features; `w` and `x` hold whole rows of `k`.
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(w: &[$elem], x: &[f32], k: usize, vals: &mut [f32]) {
                let len = w.len() / k;
                for (j, wr) in w.chunks_exact(k).enumerate() {
                    for (i, xr) in x.chunks_exact(k).enumerate() {
                        let (wp, xp) = (wr.as_ptr(), xr.as_ptr());
                        let mut acc = [_mm256_setzero_ps(); 8];
                        let mut kk = 0;
                        while kk + 64 <= k {
                            for (u, a) in acc.iter_mut().enumerate() {
                                let $p = wp.add(kk + 8 * u);
                                *a = _mm256_fmadd_ps($load, _mm256_loadu_ps(xp.add(kk + 8 * u)), *a);
                            }
                            kk += 64;
                        }
                        while kk + 8 <= k {
                            let $p = wp.add(kk);
                            acc[0] = _mm256_fmadd_ps($load, _mm256_loadu_ps(xp.add(kk)), acc[0]);
                            kk += 8;
                        }
                        let tail: f32 =
                            wr[kk..].iter().zip(&xr[kk..]).map(|(&$e, &b)| $scalar * b).sum();
                        *vals.get_unchecked_mut(i * len + j) = hsum(acc) + tail;
                    }
                }
            }
        };
    }

    rows8!(rows_f32, "avx2,fma", f32, |p| _mm256_loadu_ps(p), |e| e);
    rows8!(
        rows_bf16,
        "avx2,fma",
        bf16,
        |p| {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        },
        |e| e.to_f32()
    );
    rows8!(
        rows_f16,
        "avx2,fma,f16c",
        f16,
        |p| _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
        |e| e.to_f32()
    );

    /// Dot products of bf16 rows by `vdpbf16ps` on 16-value vectors (two products per
    /// lane), eight accumulators, 128 values a step; the tail in f32.
    ///
    /// # Safety
    /// AVX-512 VL + AVX512_BF16; `w` and `x` hold whole rows of `k`.
    #[target_feature(enable = "avx512f,avx512vl,avx512bf16,avx2,fma")]
    pub unsafe fn rows_bf16_dp(w: &[bf16], x: &[bf16], k: usize, vals: &mut [f32]) {
        #[inline(always)]
        unsafe fn load(p: *const bf16) -> __m256bh {
            std::mem::transmute(_mm256_loadu_si256(p as *const __m256i))
        }
        let len = w.len() / k;
        for (j, wr) in w.chunks_exact(k).enumerate() {
            for (i, xr) in x.chunks_exact(k).enumerate() {
                let (wp, xp) = (wr.as_ptr(), xr.as_ptr());
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut kk = 0;
                while kk + 128 <= k {
                    for (u, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_dpbf16_ps(
                            *a,
                            load(wp.add(kk + 16 * u)),
                            load(xp.add(kk + 16 * u)),
                        );
                    }
                    kk += 128;
                }
                while kk + 16 <= k {
                    acc[0] = _mm256_dpbf16_ps(acc[0], load(wp.add(kk)), load(xp.add(kk)));
                    kk += 16;
                }
                let tail: f32 = wr[kk..]
                    .iter()
                    .zip(&xr[kk..])
                    .map(|(a, b)| a.to_f32() * b.to_f32())
                    .sum();
                *vals.get_unchecked_mut(i * len + j) = hsum(acc) + tail;
            }
        }
    }

    #[inline(always)]
    unsafe fn hsum(acc: [__m256; 8]) -> f32 {
        let a = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let b = _mm256_add_ps(_mm256_add_ps(acc[4], acc[5]), _mm256_add_ps(acc[6], acc[7]));
        let v = _mm256_add_ps(a, b);
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}
