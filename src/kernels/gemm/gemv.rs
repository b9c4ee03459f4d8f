//! Products with a few rows of x (decoding): each task takes a run of W's rows, streams them
//! from memory once, and dots each with every row of x — bf16 rows with `vdpbf16ps` where the
//! CPU has it, otherwise converted to f32 as they are loaded.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{finish, Job};
use crate::kernels::convert::{self, Src};
use crate::kernels::isa::Isa;

/// Rows of W per task, at least (a multiple of the 4 rows a kernel step takes).
const MIN_CHUNK: usize = 32;

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
        let tasks = 8 * rayon::current_num_threads().max(1);
        let chunk = d.m.div_ceil(tasks).next_multiple_of(4).max(MIN_CHUNK);
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
    let (d, isa) = (job.d, job.isa);
    let rows = Rows {
        k: d.k,
        n: d.n,
        j0,
        len,
    };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: each branch runs only on a level that implies the features it needs.
    unsafe {
        match (isa, job.w, job.x) {
            (Isa::Avx512Bf16, Src::Bf16(w), Src::Bf16(x)) => return x86::bf16_dp(w, x, rows, vals),
            (Isa::Avx512 | Isa::Avx512Bf16, Src::F32(w), _) => {
                return x86::f32_512(w, xf, rows, vals)
            }
            (Isa::Avx512 | Isa::Avx512Bf16, Src::Bf16(w), _) => {
                return x86::bf16_512(w, xf, rows, vals)
            }
            (Isa::Avx512 | Isa::Avx512Bf16, Src::F16(w), _) => {
                return x86::f16_512(w, xf, rows, vals)
            }
            (Isa::Avx2, Src::F32(w), _) => return x86::f32_256(w, xf, rows, vals),
            (Isa::Avx2, Src::Bf16(w), _) => return x86::bf16_256(w, xf, rows, vals),
            (Isa::Avx2, Src::F16(w), _) => return x86::f16_256(w, xf, rows, vals),
            _ => {}
        }
    }
    portable(isa, job.w, xf, rows, vals)
}

/// Which rows of W a task dots, against x's `n` rows of `k`.
#[derive(Clone, Copy)]
struct Rows {
    k: usize,
    n: usize,
    j0: usize,
    len: usize,
}

fn portable(isa: Isa, w: Src, xf: &[f32], r: Rows, vals: &mut [f32]) {
    let mut wr = vec![0f32; r.k];
    for j in 0..r.len {
        convert::load(isa, w, (r.j0 + j) * r.k, &mut wr);
        for i in 0..r.n {
            let xr = &xf[i * r.k..(i + 1) * r.k];
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
            vals[i * r.len + j] = acc.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Rows;
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// How far ahead of the loads W is prefetched, in bytes.
    const PREFETCH: usize = 2048;

    /// Asks for the line at `p` (which may lie past the data: prefetches do not fault).
    #[inline(always)]
    fn prefetch<T>(p: *const T) {
        // SAFETY: a prefetch has no architectural effect.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
    }

    /// A dot-product kernel over 16-lane (AVX-512) or 8-lane (AVX2) f32 vectors: `$load(p)`
    /// loads a full vector of W from `p`, `$tail(p, count)` a partial one (zeros after).
    macro_rules! dots_f32 {
        ($name:ident, $feat:literal, $elem:ty, $lanes:literal, $vec:ty, $zero:expr, $fma:ident,
         $loadx:ident, $reduce:ident, |$p:ident| $load:expr, |$q:ident, $c:ident| $tail:expr) => {
            /// # Safety
            /// The CPU has the enabled features; slices hold the rows `r` names.
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(w: &[$elem], xf: &[f32], r: Rows, vals: &mut [f32]) {
                #[inline(always)]
                unsafe fn group<const R: usize>(
                    w: *const $elem,
                    x: *const f32,
                    k: usize,
                ) -> [f32; R] {
                    let mut acc: [$vec; R] = [$zero; R];
                    let body = k - k % $lanes;
                    let mut kk = 0;
                    while kk < body {
                        let xv = $loadx(x.add(kk));
                        for (i, a) in acc.iter_mut().enumerate() {
                            prefetch(w.add(i * k + kk + PREFETCH / std::mem::size_of::<$elem>()));
                            let $p = w.add(i * k + kk);
                            *a = $fma($load, xv, *a);
                        }
                        kk += $lanes;
                    }
                    if body < k {
                        let ($q, $c) = (x.add(body), k - body);
                        let xv = $tail;
                        for (i, a) in acc.iter_mut().enumerate() {
                            let ($q, $c) = (w.add(i * k + body), k - body);
                            *a = $fma($tail, xv, *a);
                        }
                    }
                    acc.map(|a| $reduce(a))
                }
                let k = r.k;
                let mut j = 0;
                while j < r.len {
                    let wp = w.as_ptr().add((r.j0 + j) * k);
                    let g = if r.len - j >= 4 { 4 } else { 1 };
                    for i in 0..r.n {
                        let xp = xf.as_ptr().add(i * k);
                        let out = &mut vals[i * r.len + j..];
                        if g == 4 {
                            out[..4].copy_from_slice(&group::<4>(wp, xp, k));
                        } else {
                            out[0] = group::<1>(wp, xp, k)[0];
                        }
                    }
                    j += g;
                }
            }
        };
    }

    // The x side of a tail: f32 (the same macro argument loads both sides, so x's tail goes
    // through the f32 variants below and W's through the dtype's own).
    #[inline(always)]
    unsafe fn tail16_f32(p: *const f32, c: usize) -> __m512 {
        _mm512_maskz_loadu_ps(((1u32 << c) - 1) as u16, p)
    }
    #[inline(always)]
    unsafe fn bf16x16(p: *const bf16) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn bf16x16_tail(p: *const bf16, c: usize) -> __m512 {
        let h = _mm256_maskz_loadu_epi16(((1u32 << c) - 1) as u16, p as *const i16);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn f16x16(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn f16x16_tail(p: *const f16, c: usize) -> __m512 {
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(
            ((1u32 << c) - 1) as u16,
            p as *const i16,
        ))
    }

    /// Generic tails: `Tail` loads a partial vector of either side.
    trait Tail16 {
        unsafe fn tail(self, c: usize) -> __m512;
    }
    impl Tail16 for *const f32 {
        #[inline(always)]
        unsafe fn tail(self, c: usize) -> __m512 {
            tail16_f32(self, c)
        }
    }
    impl Tail16 for *const bf16 {
        #[inline(always)]
        unsafe fn tail(self, c: usize) -> __m512 {
            bf16x16_tail(self, c)
        }
    }
    impl Tail16 for *const f16 {
        #[inline(always)]
        unsafe fn tail(self, c: usize) -> __m512 {
            f16x16_tail(self, c)
        }
    }

    dots_f32!(
        f32_512,
        "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
        f32,
        16,
        __m512,
        _mm512_setzero_ps(),
        _mm512_fmadd_ps,
        _mm512_loadu_ps,
        _mm512_reduce_add_ps,
        |p| _mm512_loadu_ps(p),
        |q, c| Tail16::tail(q, c)
    );
    dots_f32!(
        bf16_512,
        "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
        bf16,
        16,
        __m512,
        _mm512_setzero_ps(),
        _mm512_fmadd_ps,
        _mm512_loadu_ps,
        _mm512_reduce_add_ps,
        |p| bf16x16(p),
        |q, c| Tail16::tail(q, c)
    );
    dots_f32!(
        f16_512,
        "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
        f16,
        16,
        __m512,
        _mm512_setzero_ps(),
        _mm512_fmadd_ps,
        _mm512_loadu_ps,
        _mm512_reduce_add_ps,
        |p| f16x16(p),
        |q, c| Tail16::tail(q, c)
    );

    #[inline(always)]
    unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
    #[inline(always)]
    unsafe fn bf16x8(p: *const bf16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn f16x8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// Partial 8-lane vectors, element by element (AVX2 has no cheap masked 16-bit loads).
    trait Tail8 {
        unsafe fn tail(self, c: usize) -> __m256;
    }
    impl Tail8 for *const f32 {
        #[inline(always)]
        unsafe fn tail(self, c: usize) -> __m256 {
            let mut b = [0f32; 8];
            std::ptr::copy_nonoverlapping(self, b.as_mut_ptr(), c);
            _mm256_loadu_ps(b.as_ptr())
        }
    }
    impl Tail8 for *const bf16 {
        #[inline(always)]
        unsafe fn tail(self, c: usize) -> __m256 {
            let mut b = [bf16::ZERO; 8];
            std::ptr::copy_nonoverlapping(self, b.as_mut_ptr(), c);
            bf16x8(b.as_ptr())
        }
    }
    impl Tail8 for *const f16 {
        #[inline(always)]
        unsafe fn tail(self, c: usize) -> __m256 {
            let mut b = [f16::ZERO; 8];
            std::ptr::copy_nonoverlapping(self, b.as_mut_ptr(), c);
            f16x8(b.as_ptr())
        }
    }

    dots_f32!(
        f32_256,
        "avx2,fma,f16c",
        f32,
        8,
        __m256,
        _mm256_setzero_ps(),
        _mm256_fmadd_ps,
        _mm256_loadu_ps,
        hsum256,
        |p| _mm256_loadu_ps(p),
        |q, c| Tail8::tail(q, c)
    );
    dots_f32!(
        bf16_256,
        "avx2,fma,f16c",
        bf16,
        8,
        __m256,
        _mm256_setzero_ps(),
        _mm256_fmadd_ps,
        _mm256_loadu_ps,
        hsum256,
        |p| bf16x8(p),
        |q, c| Tail8::tail(q, c)
    );
    dots_f32!(
        f16_256,
        "avx2,fma,f16c",
        f16,
        8,
        __m256,
        _mm256_setzero_ps(),
        _mm256_fmadd_ps,
        _mm256_loadu_ps,
        hsum256,
        |p| f16x8(p),
        |q, c| Tail8::tail(q, c)
    );

    /// bf16 rows of W dotted with bf16 rows of x by `vdpbf16ps`, 32 values per instruction.
    ///
    /// # Safety
    /// AVX-512F/BW + AVX512_BF16; slices hold the rows `r` names.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn bf16_dp(w: &[bf16], x: &[bf16], r: Rows, vals: &mut [f32]) {
        let k = r.k;
        let mut j = 0;
        while j < r.len {
            let wp = w.as_ptr().add((r.j0 + j) * k);
            let g = if r.len - j >= 4 { 4 } else { 1 };
            for i in 0..r.n {
                let xp = x.as_ptr().add(i * k);
                let out = &mut vals[i * r.len + j..];
                if g == 4 {
                    out[..4].copy_from_slice(&dp_group::<4>(wp, xp, k));
                } else {
                    out[0] = dp_group::<1>(wp, xp, k)[0];
                }
            }
            j += g;
        }
    }

    #[inline(always)]
    unsafe fn dp_group<const R: usize>(w: *const bf16, x: *const bf16, k: usize) -> [f32; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        let mut kk = 0;
        while kk < k {
            let c = k - kk;
            let xv = load(x.add(kk), c);
            for (i, a) in acc.iter_mut().enumerate() {
                prefetch(w.add(i * k + kk + PREFETCH / 2));
                *a = _mm512_dpbf16_ps(*a, load(w.add(i * k + kk), c), xv);
            }
            kk += 32;
        }
        acc.map(|a| _mm512_reduce_add_ps(a))
    }

    /// Up to 32 bf16 from `p` (zeros after `c`).
    #[inline(always)]
    unsafe fn load(p: *const bf16, c: usize) -> __m512bh {
        let v = if c >= 32 {
            _mm512_loadu_si512(p as *const _)
        } else {
            _mm512_maskz_loadu_epi16(((1u64 << c) - 1) as u32, p as *const i16)
        };
        std::mem::transmute(v)
    }
}
