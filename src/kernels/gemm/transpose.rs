//! 8 × 8 register transposes: eight rows of 32-bit values (f32, or bf16 pairs) become steps
//! of eight lanes with contiguous loads and stores, where a scalar loop stores each value on
//! its own — for packing, and ([`transpose`]) for whole matrices: an LM-head tile turned
//! column by column, attention's keys.

use crate::kernels::isa::Isa;

/// Eight rows of a panel, each a pointer to its first 32-bit value (null: a row past the
/// matrix's end, packed as zeros).
pub(crate) type Lanes = [*const u32; 8];

/// `out[c·out_ld + r] = src[r·src_ld + c]` for every `r < rows`, `c < cols`: a matrix of
/// 32-bit values (f32 bits) transposed, eight rows at a time by [`transpose8`] where the CPU
/// has AVX2, the rest value by value.
///
/// # Safety
/// `src` is readable at `r·src_ld + c` and `out` writable at `c·out_ld + r` for those `r`,
/// `c`, and they do not overlap.
pub(crate) unsafe fn transpose(
    isa: Isa,
    (src, src_ld): (*const u32, usize),
    (rows, cols): (usize, usize),
    (out, out_ld): (*mut u32, usize),
) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        done = rows - rows % 8;
        for r0 in (0..done).step_by(8) {
            let lanes = std::array::from_fn(|i| src.add((r0 + i) * src_ld));
            transpose8(&lanes, cols, out.add(r0), out_ld);
        }
    }
    let _ = isa;
    for r in done..rows {
        for c in 0..cols {
            *out.add(c * out_ld + r) = *src.add(r * src_ld + c);
        }
    }
}

/// `out[p·width + r] = lanes[r][p]` for every `p < steps` and `r < 8`, with AVX2.
///
/// # Safety
/// The CPU has AVX2; every non-null `lanes[r]` is readable for `steps` values; `out` is
/// writable at `p·width + r` for those `p`, `r`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn transpose8(lanes: &Lanes, steps: usize, out: *mut u32, width: usize) {
    use std::arch::x86_64::*;
    let load = |r: usize, p: usize| -> __m256 {
        match lanes[r].is_null() {
            true => _mm256_setzero_ps(),
            false => _mm256_loadu_ps(lanes[r].add(p) as *const f32),
        }
    };
    let full = steps - steps % 8;
    for p in (0..full).step_by(8) {
        let r: [__m256; 8] = std::array::from_fn(|i| load(i, p));
        // Pairs of rows interleaved, then quads, then the 128-bit halves exchanged.
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let cols = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (i, col) in cols.into_iter().enumerate() {
            _mm256_storeu_ps(out.add((p + i) * width) as *mut f32, col);
        }
    }
    for p in full..steps {
        for (r, lane) in lanes.iter().enumerate() {
            *out.add(p * width + r) = match lane.is_null() {
                true => 0,
                false => lane.add(p).read_unaligned(), // bf16 rows are 2-byte aligned
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_matrices_transpose_on_every_level() {
        for isa in Isa::supported() {
            for (rows, cols) in [(0, 3), (1, 1), (8, 8), (13, 5), (17, 64), (24, 9)] {
                let (src_ld, out_ld) = (cols + 3, rows + 5);
                let src: Vec<u32> = (0..rows * src_ld).map(|i| i as u32).collect();
                let mut out = vec![u32::MAX; cols * out_ld];
                // SAFETY: src is rows × src_ld, out cols × out_ld.
                unsafe {
                    transpose(
                        isa,
                        (src.as_ptr(), src_ld),
                        (rows, cols),
                        (out.as_mut_ptr(), out_ld),
                    )
                };
                for c in 0..cols {
                    for r in 0..out_ld {
                        let want = if r < rows {
                            src[r * src_ld + c]
                        } else {
                            u32::MAX
                        };
                        assert_eq!(out[c * out_ld + r], want, "{isa} {rows}x{cols} [{c},{r}]");
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transposes_every_shape_with_missing_rows() {
        if Isa::hardware() < Isa::Avx2 {
            return;
        }
        let rows: Vec<Vec<u32>> = (0..8)
            .map(|r| (0..37).map(|p| (r * 1000 + p) as u32).collect())
            .collect();
        for steps in [0, 1, 7, 8, 9, 16, 37] {
            for missing in [8, 5, 1] {
                let width = 24;
                let lanes: Lanes = std::array::from_fn(|r| match r < missing {
                    true => rows[r].as_ptr(),
                    false => std::ptr::null(),
                });
                let mut out = vec![u32::MAX; steps * width];
                // SAFETY: AVX2 checked; rows hold 37 ≥ steps values; out is steps × width.
                unsafe { transpose8(&lanes, steps, out.as_mut_ptr(), width) };
                for p in 0..steps {
                    for r in 0..width {
                        let want = match r {
                            r if r < missing => rows[r][p],
                            r if r < 8 => 0,
                            _ => u32::MAX,
                        };
                        assert_eq!(out[p * width + r], want, "steps {steps} p {p} r {r}");
                    }
                }
            }
        }
    }
}
