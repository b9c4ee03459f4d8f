//! Attention for a few queries (decoding): the scores of one query against a run of key rows
//! and the probability-weighted sum of value rows, reading the (f32, bf16 or f16) cache rows
//! in place and converting them in registers — no per-token copy of the cache.

use super::convert::{self, Src};
use super::isa::Isa;

/// Rows `j = 0..n` of a head in a cache: `d` elements at `first + j·stride` of `src`.
#[derive(Clone, Copy)]
pub struct HeadRows<'a> {
    pub src: Src<'a>,
    pub first: usize,
    pub stride: usize,
    pub d: usize,
}

/// `scores[j] = q · row_j` for `j < scores.len()`.
pub fn dots(isa: Isa, rows: HeadRows, q: &[f32], scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 && rows.d.is_multiple_of(8) {
        // SAFETY: the level implies AVX2, FMA and F16C; rows lie inside `src` (checked).
        unsafe {
            check(rows, scores.len());
            match rows.src {
                Src::F32(s) => x86::dots_f32(s, rows, q, scores),
                Src::Bf16(s) => x86::dots_bf16(s, rows, q, scores),
                Src::F16(s) => x86::dots_f16(s, rows, q, scores),
            }
        }
        return;
    }
    let mut row = vec![0f32; rows.d];
    for (j, s) in scores.iter_mut().enumerate() {
        convert::load(isa, rows.src, rows.first + j * rows.stride, &mut row);
        *s = row.iter().zip(q).map(|(a, b)| a * b).sum();
    }
}

/// `out = Σ_j p[j]·row_j` for `j < p.len()`.
pub fn weighted_sum(isa: Isa, rows: HeadRows, p: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 && rows.d.is_multiple_of(8) && rows.d <= 256 {
        // SAFETY: as in `dots`.
        unsafe {
            check(rows, p.len());
            match rows.src {
                Src::F32(s) => x86::wsum_f32(s, rows, p, out),
                Src::Bf16(s) => x86::wsum_bf16(s, rows, p, out),
                Src::F16(s) => x86::wsum_f16(s, rows, p, out),
            }
        }
        return;
    }
    let mut row = vec![0f32; rows.d];
    out.fill(0.0);
    for (j, &pj) in p.iter().enumerate() {
        convert::load(isa, rows.src, rows.first + j * rows.stride, &mut row);
        out.iter_mut().zip(&row).for_each(|(o, v)| *o += pj * v);
    }
}

/// Panics unless rows `0..n` lie inside the source.
fn check(rows: HeadRows, n: usize) {
    if n > 0 {
        let last = rows.first + (n - 1) * rows.stride + rows.d;
        assert!(
            last <= rows.src.len(),
            "decode attention: rows past the cache"
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::HeadRows;
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// Scores and weighted sums for one element type: `$load(p)` loads 8 values as f32.
    macro_rules! row_kernels {
        ($dots:ident, $wsum:ident, $elem:ty, |$p:ident| $load:expr) => {
            /// # Safety
            /// AVX2 + FMA + F16C; `d % 8 == 0`; the rows lie inside `s`.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $dots(s: &[$elem], r: HeadRows, q: &[f32], scores: &mut [f32]) {
                let base = s.as_ptr().add(r.first);
                for (j, out) in scores.iter_mut().enumerate() {
                    let row = base.add(j * r.stride);
                    let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                    let mut i = 0;
                    while i + 16 <= r.d {
                        let $p = row.add(i);
                        a = _mm256_fmadd_ps($load, _mm256_loadu_ps(q.as_ptr().add(i)), a);
                        let $p = row.add(i + 8);
                        b = _mm256_fmadd_ps($load, _mm256_loadu_ps(q.as_ptr().add(i + 8)), b);
                        i += 16;
                    }
                    if i < r.d {
                        let $p = row.add(i);
                        a = _mm256_fmadd_ps($load, _mm256_loadu_ps(q.as_ptr().add(i)), a);
                    }
                    *out = hsum(_mm256_add_ps(a, b));
                }
            }

            /// # Safety
            /// As above, and `d ≤ 256`.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $wsum(s: &[$elem], r: HeadRows, p: &[f32], out: &mut [f32]) {
                #[inline(always)]
                unsafe fn run<const L: usize>(
                    base: *const $elem,
                    r: HeadRows,
                    p: &[f32],
                    out: &mut [f32],
                ) {
                    let mut acc = [_mm256_setzero_ps(); L];
                    for (j, &pj) in p.iter().enumerate() {
                        let (row, w) = (base.add(j * r.stride), _mm256_set1_ps(pj));
                        for (u, a) in acc.iter_mut().enumerate() {
                            let $p = row.add(8 * u);
                            *a = _mm256_fmadd_ps(w, $load, *a);
                        }
                    }
                    for (u, a) in acc.iter().enumerate() {
                        _mm256_storeu_ps(out.as_mut_ptr().add(8 * u), *a);
                    }
                }
                let base = s.as_ptr().add(r.first);
                match r.d / 8 {
                    4 => run::<4>(base, r, p, out),
                    8 => run::<8>(base, r, p, out),
                    16 => run::<16>(base, r, p, out),
                    _ => {
                        for part in (0..r.d).step_by(32) {
                            let sub = HeadRows {
                                first: r.first + part,
                                d: 32.min(r.d - part),
                                ..r
                            };
                            let b = s.as_ptr().add(sub.first);
                            match sub.d / 8 {
                                4 => run::<4>(b, sub, p, &mut out[part..]),
                                3 => run::<3>(b, sub, p, &mut out[part..]),
                                2 => run::<2>(b, sub, p, &mut out[part..]),
                                _ => run::<1>(b, sub, p, &mut out[part..]),
                            }
                        }
                    }
                }
            }
        };
    }

    row_kernels!(dots_f32, wsum_f32, f32, |p| _mm256_loadu_ps(p));
    row_kernels!(dots_bf16, wsum_bf16, bf16, |p| {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    });
    row_kernels!(dots_f16, wsum_f16, f16, |p| _mm256_cvtph_ps(
        _mm_loadu_si128(p as *const __m128i)
    ));

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}
