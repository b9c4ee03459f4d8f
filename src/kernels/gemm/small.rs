//! Small single-threaded products for one attention head: `C (m × n) = [C +] A·B`, each
//! operand read through any row and column strides (so a transpose costs nothing). B is
//! packed a panel of 128 × 32 at a time (head rows sit in a fused projection whose row
//! stride would crowd a few cache sets); a block of 4 rows × 32 (AVX-512) or 16 (AVX2)
//! columns of C stays in registers over the panel (B's own rows serve as the panel when they
//! are contiguous along its columns), one fused multiply-add per A element and
//! B vector.
//!
//! The `gemm` crate's general kernel spent most of its time on set-up at these sizes
//! (reductions of a head dimension, or of one block of queries).

use super::super::isa::Isa;

/// Rows of C per register block.
const MR: usize = 4;
/// Columns of C per register block (the widest level's).
const NR: usize = 32;
/// Reduction steps per packed panel of B (KC × NR values: 16 KiB, in the L1 cache while
/// every block of rows passes over it).
const KC: usize = 128;

/// A matrix operand: element (i, p) at `ptr + i·rs + p·cs` (so a transpose is a swap of
/// strides).
#[derive(Clone, Copy)]
pub struct Mat {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

/// `C = A·B` (or `C += A·B` when `accumulate`) with `isa`'s instructions: A (m × k), B
/// (k × n), C (m × n) rows `ldc` apart.
///
/// # Safety
/// The pointers must address every element the shapes and strides describe, and C must not
/// overlap A or B.
pub unsafe fn product(
    isa: Isa,
    (m, n, k): (usize, usize, usize),
    a: Mat,
    b: Mat,
    (c, ldc): (*mut f32, usize),
    accumulate: bool,
) {
    let g = Args {
        m,
        a,
        b,
        c,
        ldc,
        accumulate,
    };
    if k == 0 && !accumulate {
        for i in 0..m {
            std::ptr::write_bytes(g.c_at(i, 0), 0, n);
        }
    }
    let mut panel = [0f32; KC * NR];
    for p0 in (0..k).step_by(KC) {
        let kc = KC.min(k - p0);
        for j0 in (0..n).step_by(NR) {
            let nr = NR.min(n - j0);
            let (bp, ldb) = if in_place(b, nr) {
                (b.ptr.add(p0 * b.rs + j0), b.rs)
            } else {
                g.pack(p0, kc, j0, nr, &mut panel);
                (panel.as_ptr(), NR)
            };
            let block = Block {
                p0,
                kc,
                j0,
                nr,
                bp,
                ldb,
            };
            #[cfg(target_arch = "x86_64")]
            match isa {
                Isa::Avx512 | Isa::Avx512Bf16 => {
                    x86::avx512(&g, &block);
                    continue;
                }
                Isa::Avx2 => {
                    x86::avx2(&g, &block);
                    continue;
                }
                Isa::Portable => {}
            }
            portable(&g, &block);
        }
    }
    let _ = isa;
}

/// Whether a panel of B (`nr` columns) is read in place: when it is whole, contiguous along
/// its columns, and its rows either adjoin (`rs ≤ 2·NR`) or lie an odd number of cache lines
/// apart (each row in its own cache set). Else it is packed.
fn in_place(b: Mat, nr: usize) -> bool {
    let lines = b.rs / 16;
    b.cs == 1 && nr == NR && (b.rs <= 2 * NR || (b.rs.is_multiple_of(16) && lines % 2 == 1))
}

struct Args {
    m: usize,
    a: Mat,
    b: Mat,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
}

/// One panel of B: reduction steps `p0 .. p0 + kc`, columns `j0 .. j0 + nr`, row p of the
/// panel at `bp + p·ldb` (NR values, zero past `nr`: packed, or B's own rows when they hold
/// all NR).
struct Block {
    p0: usize,
    kc: usize,
    j0: usize,
    nr: usize,
    bp: *const f32,
    ldb: usize,
}

impl Args {
    /// Packs B's panel (reading along whichever of B's dimensions is contiguous).
    unsafe fn pack(&self, p0: usize, kc: usize, j0: usize, nr: usize, panel: &mut [f32; KC * NR]) {
        let b = self.b;
        if nr < NR {
            panel.fill(0.0);
        }
        if b.cs == 1 {
            for p in 0..kc {
                let src = b.ptr.add((p0 + p) * b.rs + j0);
                std::ptr::copy_nonoverlapping(src, panel.as_mut_ptr().add(p * NR), nr);
            }
        } else {
            for j in 0..nr {
                let src = b.ptr.add((j0 + j) * b.cs + p0 * b.rs);
                for p in 0..kc {
                    panel[p * NR + j] = *src.add(p * b.rs);
                }
            }
        }
    }

    /// Pointers to the A rows of the block at `i0`, at reduction step `p0` (rows past m
    /// repeat the last: their sums are never stored), and how many are real.
    unsafe fn rows(&self, i0: usize, p0: usize) -> ([*const f32; MR], usize) {
        let mr = MR.min(self.m - i0);
        let a = self.a;
        let rows = std::array::from_fn(|r| a.ptr.add((i0 + r.min(mr - 1)) * a.rs + p0 * a.cs));
        (rows, mr)
    }

    /// Whether the panel starting at `p0` adds to what C holds.
    fn adds(&self, p0: usize) -> bool {
        p0 > 0 || self.accumulate
    }

    /// Row `i`, column `j0` of C.
    unsafe fn c_at(&self, i: usize, j0: usize) -> *mut f32 {
        self.c.add(i * self.ldc + j0)
    }
}

unsafe fn portable(g: &Args, blk: &Block) {
    for i in 0..g.m {
        let (rows, _) = g.rows(i, blk.p0);
        let mut sums = [0f32; NR];
        for p in 0..blk.kc {
            let av = *rows[0].add(p * g.a.cs);
            let bv = std::slice::from_raw_parts(blk.bp.add(p * blk.ldb), NR);
            for (s, &bv) in sums.iter_mut().zip(bv) {
                *s += av * bv;
            }
        }
        let dst = g.c_at(i, blk.j0);
        for (j, &v) in sums.iter().enumerate().take(blk.nr) {
            *dst.add(j) = if g.adds(blk.p0) { *dst.add(j) + v } else { v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Args, Block, MR, NR};
    use std::arch::x86_64::*;

    /// Blocks of 4 rows × 32 columns in eight 16-lane registers.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn avx512(g: &Args, blk: &Block) {
        let masks = [lanes(blk.nr.min(16)), lanes(blk.nr.saturating_sub(16))];
        let (bp, ldb) = (blk.bp, blk.ldb);
        for i0 in (0..g.m).step_by(MR) {
            let (rows, mr) = g.rows(i0, blk.p0);
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            if g.adds(blk.p0) {
                for (r, regs) in acc.iter_mut().enumerate().take(mr) {
                    let c = g.c_at(i0 + r, blk.j0);
                    regs[0] = _mm512_maskz_loadu_ps(masks[0], c);
                    regs[1] = _mm512_maskz_loadu_ps(masks[1], c.add(16));
                }
            }
            for p in 0..blk.kc {
                let b0 = _mm512_loadu_ps(bp.add(p * ldb));
                let b1 = _mm512_loadu_ps(bp.add(p * ldb + 16));
                for r in 0..MR {
                    let av = _mm512_set1_ps(*rows[r].add(p * g.a.cs));
                    acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
                }
            }
            for (r, regs) in acc.iter().enumerate().take(mr) {
                let c = g.c_at(i0 + r, blk.j0);
                _mm512_mask_storeu_ps(c, masks[0], regs[0]);
                _mm512_mask_storeu_ps(c.add(16), masks[1], regs[1]);
            }
        }
    }

    /// The low `n` (≤ 16) lanes.
    #[inline(always)]
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// Blocks of 4 rows × 16 columns in eight 8-lane registers, two per panel.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(g: &Args, blk: &Block) {
        const HALF: usize = NR / 2;
        let mut run = [0f32; HALF];
        for h in 0..2 {
            let (j0, nr) = (blk.j0 + h * HALF, blk.nr.saturating_sub(h * HALF).min(HALF));
            if nr == 0 {
                break;
            }
            let (bp, ldb) = (blk.bp.add(h * HALF), blk.ldb);
            for i0 in (0..g.m).step_by(MR) {
                let (rows, mr) = g.rows(i0, blk.p0);
                let mut acc = [[_mm256_setzero_ps(); 2]; MR];
                if g.adds(blk.p0) {
                    for (r, regs) in acc.iter_mut().enumerate().take(mr) {
                        run = [0f32; HALF];
                        std::ptr::copy_nonoverlapping(g.c_at(i0 + r, j0), run.as_mut_ptr(), nr);
                        regs[0] = _mm256_loadu_ps(run.as_ptr());
                        regs[1] = _mm256_loadu_ps(run.as_ptr().add(8));
                    }
                }
                for p in 0..blk.kc {
                    let b0 = _mm256_loadu_ps(bp.add(p * ldb));
                    let b1 = _mm256_loadu_ps(bp.add(p * ldb + 8));
                    for r in 0..MR {
                        let av = _mm256_set1_ps(*rows[r].add(p * g.a.cs));
                        acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
                        acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
                    }
                }
                for (r, regs) in acc.iter().enumerate().take(mr) {
                    _mm256_storeu_ps(run.as_mut_ptr(), regs[0]);
                    _mm256_storeu_ps(run.as_mut_ptr().add(8), regs[1]);
                    std::ptr::copy_nonoverlapping(run.as_ptr(), g.c_at(i0 + r, j0), nr);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_match_a_plain_triple_loop_on_every_level() {
        for isa in Isa::supported() {
            // (m, n, k), A transposed or not, accumulate: edges below and above a block.
            for (m, n, k, trans, accumulate) in [
                (1, 1, 1, false, false),
                (3, 5, 0, false, false),
                (4, 16, 8, false, false),
                (7, 33, 5, true, true),
                (64, 32, 200, false, true),
                (130, 70, 32, true, false),
                (9, 40, 300, false, false),
                (5, 17, 260, true, true),
                // B read in place: rows adjoining, or an odd number of cache lines apart.
                (6, 64, 140, true, false),
                (9, 48, 300, true, true),
            ] {
                let av: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                    .collect();
                let bv: Vec<f32> = (0..k * n)
                    .map(|i| ((i * 53) % 97) as f32 / 40.0 - 1.2)
                    .collect();
                let c0: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32).collect();
                let (rs, cs) = if trans { (1, m) } else { (k, 1) };
                // B transposed whenever A is not.
                let (brs, bcs) = if trans { (n, 1) } else { (1, k) };
                let mut c = c0.clone();
                let a = Mat {
                    ptr: av.as_ptr(),
                    rs,
                    cs,
                };
                let b = Mat {
                    ptr: bv.as_ptr(),
                    rs: brs,
                    cs: bcs,
                };
                unsafe { product(isa, (m, n, k), a, b, (c.as_mut_ptr(), n), accumulate) };
                for i in 0..m {
                    for j in 0..n {
                        let s: f64 = (0..k)
                            .map(|p| av[i * rs + p * cs] as f64 * bv[p * brs + j * bcs] as f64)
                            .sum();
                        let want = s + if accumulate {
                            c0[i * n + j] as f64
                        } else {
                            0.0
                        };
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-4 * want.abs().max(1.0),
                            "{isa} ({m},{n},{k}) [{i},{j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
