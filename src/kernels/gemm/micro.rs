//! Micro-kernels: an MR × NR tile of `C (+)= A·B` from packed panels, one per level.
//!
//! A micro-panel holds, for each step p of the reduction, MR values of A (one per row of the
//! tile); a B micro-panel holds NR values (one per column). In f32 mode a step is one k; in
//! pair mode (`vdpbf16ps`) a step is two consecutive k, each value a u32 holding two bf16.
//! The tile is written, whole, to an f32 buffer with row stride `ldc`; callers crop it.
//!
//! The AVX-512 kernels also come in a "direct" form that reads A from rows of x in place
//! (row r at `a + r·lda` elements, f32 or bf16): no packing of x, which for narrow outputs
//! costs as much as the products.

use crate::kernels::isa::Isa;

/// A micro-kernel and the packing it expects.
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    pub mr: usize,
    pub nr: usize,
    /// Panels hold bf16 pairs (u32) rather than f32.
    pub pairs: bool,
    /// `run(steps, a, lda, b, c, ldc, accumulate)` with A packed (`lda` unused): `c` is
    /// overwritten, or added to when `accumulate`.
    pub run: Run,
    /// The same with A read in place from MR rows `lda` elements apart, when there is one.
    pub direct: Option<Run>,
}

/// A micro-kernel entry point: `(steps, a, lda, b, c, ldc, accumulate)`.
pub(crate) type Run = unsafe fn(usize, *const u32, usize, *const u32, *mut f32, usize, bool);

impl Kernel {
    /// The kernel for `isa`, in pair mode when `bf16` and the level has `vdpbf16ps`.
    pub fn for_isa(isa: Isa, bf16: bool) -> Kernel {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 if bf16 => Kernel {
                mr: 12,
                nr: 32,
                pairs: true,
                run: x86::bf16_12x32::<false>,
                direct: Some(x86::bf16_12x32::<true>),
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx512Bf16 => Kernel {
                mr: 12,
                nr: 32,
                pairs: false,
                run: x86::f32_12x32::<false>,
                direct: Some(x86::f32_12x32::<true>),
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Kernel {
                mr: 6,
                nr: 16,
                pairs: false,
                run: x86::f32_6x16,
                direct: None,
            },
            _ => Kernel {
                mr: 4,
                nr: 8,
                pairs: false,
                run: portable_4x8,
                direct: None,
            },
        }
    }
}

/// The portable kernel: plain loops the compiler vectorises for the baseline target.
///
/// # Safety
/// `a` holds `steps·4` and `b` `steps·8` values; `c` is a 4 × 8 tile with row stride `ldc`.
unsafe fn portable_4x8(
    steps: usize,
    a: *const u32,
    _lda: usize,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    const MR: usize = 4;
    const NR: usize = 8;
    let (a, b) = (a as *const f32, b as *const f32);
    let mut acc = [[0f32; NR]; MR];
    for p in 0..steps {
        let bp = std::slice::from_raw_parts(b.add(p * NR), NR);
        for (r, row) in acc.iter_mut().enumerate() {
            let av = *a.add(p * MR + r);
            for (x, &bv) in row.iter_mut().zip(bp) {
                *x += av * bv;
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        let dst = std::slice::from_raw_parts_mut(c.add(r * ldc), NR);
        for (d, &v) in dst.iter_mut().zip(row) {
            *d = if accumulate { *d + v } else { v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 12 × 32 f32 tile on AVX-512: 24 accumulators, two B vectors and a broadcast per row.
    /// A is packed (`steps·12` values), or, when `DIRECT`, 12 rows of f32 `lda` apart.
    ///
    /// # Safety
    /// AVX-512F; `b` holds `steps·32` values; `c` is 12 × 32 with stride `ldc`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn f32_12x32<const DIRECT: bool>(
        steps: usize,
        a: *const u32,
        lda: usize,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let (a, b) = (a as *const f32, b as *const f32);
        let (rs, cs) = if DIRECT { (lda, 1) } else { (1, 12) };
        let rows: [*const f32; 12] = std::array::from_fn(|r| a.add(r * rs));
        let mut acc = [[_mm512_setzero_ps(); 2]; 12];
        for p in 0..steps {
            let b0 = _mm512_loadu_ps(b.add(p * 32));
            let b1 = _mm512_loadu_ps(b.add(p * 32 + 16));
            for (row, &ar) in acc.iter_mut().zip(&rows) {
                let av = _mm512_set1_ps(*ar.add(p * cs));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
        }
        store_512(&acc, c, ldc, accumulate);
    }

    /// 12 × 32 tile from bf16 pairs with `vdpbf16ps`: each step adds two products per lane.
    /// A is packed (`steps·12` pairs), or, when `DIRECT`, 12 rows of bf16 `lda` apart.
    ///
    /// # Safety
    /// AVX-512F + AVX512_BF16; `b` holds `steps·32` pairs; `c` as above.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn bf16_12x32<const DIRECT: bool>(
        steps: usize,
        a: *const u32,
        lda: usize,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let rows: [*const u32; 12] = if DIRECT {
            std::array::from_fn(|r| (a as *const u16).add(r * lda) as *const u32)
        } else {
            std::array::from_fn(|r| a.add(r))
        };
        let cs = if DIRECT { 1 } else { 12 };
        let mut acc = [[_mm512_setzero_ps(); 2]; 12];
        for p in 0..steps {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * 32) as *const _));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(b.add(p * 32 + 16) as *const _));
            for (row, &ar) in acc.iter_mut().zip(&rows) {
                let pair = ar.add(p * cs).read_unaligned() as i32;
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                row[0] = _mm512_dpbf16_ps(row[0], av, b0);
                row[1] = _mm512_dpbf16_ps(row[1], av, b1);
            }
        }
        store_512(&acc, c, ldc, accumulate);
    }

    #[inline(always)]
    unsafe fn store_512(acc: &[[__m512; 2]; 12], c: *mut f32, ldc: usize, accumulate: bool) {
        for (r, row) in acc.iter().enumerate() {
            for (h, &v) in row.iter().enumerate() {
                let dst = c.add(r * ldc + h * 16);
                let v = if accumulate {
                    _mm512_add_ps(_mm512_loadu_ps(dst), v)
                } else {
                    v
                };
                _mm512_storeu_ps(dst, v);
            }
        }
    }

    /// 6 × 16 f32 tile on AVX2 + FMA: 12 accumulators.
    ///
    /// # Safety
    /// AVX2 + FMA; `a` holds `steps·6`, `b` `steps·16` values; `c` is 6 × 16 with stride `ldc`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn f32_6x16(
        steps: usize,
        a: *const u32,
        _lda: usize,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        let (a, b) = (a as *const f32, b as *const f32);
        let mut acc = [[_mm256_setzero_ps(); 2]; 6];
        for p in 0..steps {
            let b0 = _mm256_loadu_ps(b.add(p * 16));
            let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
            let ap = a.add(p * 6);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*ap.add(r));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (h, &v) in row.iter().enumerate() {
                let dst = c.add(r * ldc + h * 8);
                let v = if accumulate {
                    _mm256_add_ps(_mm256_loadu_ps(dst), v)
                } else {
                    v
                };
                _mm256_storeu_ps(dst, v);
            }
        }
    }
}
