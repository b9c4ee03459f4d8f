//! Many rows: W packed once per slab of columns; x packed once per super-block of rows (and
//! slab) — or, where the kernel can, read in place — then tiles of the output computed in
//! parallel from the shared packs, each into an f32 tile that the epilogue writes out.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::epilogue::finish;
use super::micro::Kernel;
use super::pack::{self, Packed, Rows};
use super::{Dims, Epilogue, Job, A_BUDGET, B_BUDGET, KC, MC, NC_MAX};
use crate::kernels::convert::{Out, Src};

thread_local! {
    /// Packed x and W of the calling thread's products, kept between calls.
    static PACKS: RefCell<(Vec<u32>, Vec<u32>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
    /// Each worker's f32 tile, epilogue run and partial-panel pack.
    static TILE: RefCell<(Vec<f32>, Vec<f32>, Vec<u32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Where a tile reads x from.
#[derive(Clone, Copy)]
enum ASide<'a> {
    Packed(&'a Packed<'a>),
    /// Rows of x in place (full panels; a partial last panel is packed by the tile).
    Direct,
}

/// Columns of the output computed per pass when the operands are swapped.
const SWAP_SLAB: usize = 4096;

/// # Safety
/// As [`super::linear`].
pub(super) unsafe fn run(job: &Job) {
    let bf16 = matches!((job.x, job.w), (Src::Bf16(_), Src::Bf16(_)));
    let kern = Kernel::for_isa(job.isa, bf16);
    let d = job.d;
    let swapped = Job {
        x: job.w,
        w: job.x,
        d: Dims {
            n: d.m,
            k: d.k,
            m: d.n,
        },
        ..*job
    };
    // Few rows and many columns (an LM head over a chunk of positions): packing W would cost
    // as much as the product, so compute Yᵀ = W·xᵀ with W read in place instead — or, when
    // the kernel cannot read W's dtype, converted to f32 slab by slab (cheaper than packing).
    let f32_w = Job {
        x: Src::F32(&[]),
        ..swapped
    };
    if d.n * 8 > d.m {
        plain(job, &kern);
    } else if reads_x_in_place(&swapped, &kern) {
        transposed(job, &kern, false);
    } else if !kern.pairs && reads_x_in_place(&f32_w, &kern) {
        transposed(job, &kern, true);
    } else {
        plain(job, &kern);
    }
}

/// `y = x·Wᵀ` as `(W·xᵀ)ᵀ`, a slab of W's rows at a time (converted to f32 first when
/// `convert`): the slab's product into an f32 buffer, then transposed through the epilogue
/// into `y`'s columns.
unsafe fn transposed(job: &Job, kern: &Kernel, convert: bool) {
    let (d, none) = (job.d, Epilogue::default());
    let (mut yt, mut wf) = (Vec::new(), Vec::new());
    for j0 in (0..d.m).step_by(SWAP_SLAB) {
        let len = SWAP_SLAB.min(d.m - j0);
        yt.resize(len * d.n, 0f32);
        let slab = job.w.slice(j0 * d.k, len * d.k);
        let sub = Job {
            x: if convert {
                to_f32(job.isa, slab, &mut wf);
                Src::F32(&wf)
            } else {
                slab
            },
            w: job.x,
            d: Dims {
                n: len,
                k: d.k,
                m: d.n,
            },
            epi: &none,
            out: Out::F32(yt.as_mut_ptr()),
            ..*job
        };
        plain(&sub, kern);
        let yt = &yt[..];
        (0..len.div_ceil(NC_MAX)).into_par_iter().for_each(|c| {
            let cols = c * NC_MAX..((c + 1) * NC_MAX).min(len);
            TILE.with(|buf| {
                let (vals, tmp, _) = &mut *buf.borrow_mut();
                vals.resize(cols.len(), 0.0);
                for i in 0..d.n {
                    for (v, j) in vals.iter_mut().zip(cols.clone()) {
                        *v = yt[j * d.n + i];
                    }
                    // SAFETY: this task alone writes these columns of every row.
                    unsafe { finish(job, vals, i, j0 + cols.start, tmp) };
                }
            });
        });
    }
}

/// `src` converted to f32 into `dst`, in parallel.
fn to_f32(isa: crate::kernels::Isa, src: Src, dst: &mut Vec<f32>) {
    const CHUNK: usize = 1 << 16;
    dst.resize(src.len(), 0.0);
    dst.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, out)| crate::kernels::convert::load(isa, src, c * CHUNK, out));
}

/// `y = x·Wᵀ` packing W by slabs, and x by super-blocks unless the kernel reads it in place.
unsafe fn plain(job: &Job, kern: &Kernel) {
    let (d, kern) = (job.d, *kern);
    let mode = x_mode(job, &kern);
    let per_row = 4 * pack::steps(d.k.next_multiple_of(KC), kern.pairs);
    let slab = balanced(d.m, B_BUDGET / per_row, kern.nr);
    let block = match mode {
        XMode::InPlace => d.n,
        XMode::Converted | XMode::Packed => balanced(d.n, A_BUDGET / per_row, MC),
    };
    with_packs(|abuf, bbuf, conv| {
        for j0 in (0..d.m).step_by(slab) {
            let cols = j0..(j0 + slab).min(d.m);
            let mut b = Packed::new(bbuf, kern.nr, kern.pairs);
            let w_rows = Rows {
                src: job.w,
                k: d.k,
                row0: j0,
                rows: cols.len(),
            };
            pack::pack_all(job.isa, w_rows, &mut b);
            for i0 in (0..d.n).step_by(block) {
                let rows = i0..(i0 + block).min(d.n);
                let b_side = (&b, cols.clone());
                match mode {
                    XMode::InPlace => multiply(job, &kern, (ASide::Direct, rows), b_side),
                    XMode::Converted => {
                        let n = rows.len();
                        to_f32(job.isa, job.x.slice(i0 * d.k, n * d.k), conv);
                        let epi = job.epi.rows(i0 * d.m, n * d.m);
                        let sub = Job {
                            x: Src::F32(conv),
                            d: Dims { n, ..d },
                            epi: &epi,
                            out: job.out.offset(i0 * d.m),
                            ..*job
                        };
                        multiply(&sub, &kern, (ASide::Direct, 0..n), b_side);
                    }
                    XMode::Packed => {
                        let mut a = Packed::new(abuf, kern.mr, kern.pairs);
                        let x_rows = Rows {
                            src: job.x,
                            k: d.k,
                            row0: i0,
                            rows: rows.len(),
                        };
                        pack::pack_all(job.isa, x_rows, &mut a);
                        multiply(job, &kern, (ASide::Packed(&a), rows), b_side);
                    }
                }
            }
        }
    });
}

/// How x reaches the kernel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum XMode {
    /// Read in place by a direct kernel.
    InPlace,
    /// Converted to f32 a block of rows at a time, then read in place.
    Converted,
    /// Packed a block of rows at a time.
    Packed,
}

fn x_mode(job: &Job, kern: &Kernel) -> XMode {
    let as_f32 = Job {
        x: Src::F32(&[]),
        ..*job
    };
    if reads_x_in_place(job, kern) {
        XMode::InPlace
    } else if !kern.pairs && reads_x_in_place(&as_f32, kern) {
        XMode::Converted
    } else {
        XMode::Packed
    }
}

/// Parts of `len` of at most about `most` each (multiples of `unit`), as equal as can be.
fn balanced(len: usize, most: usize, unit: usize) -> usize {
    let parts = len.div_ceil(most.max(unit));
    len.div_ceil(parts).next_multiple_of(unit)
}

/// Runs `f` with this thread's pack and conversion buffers (fresh ones if they are in use).
fn with_packs(f: impl FnOnce(&mut Vec<u32>, &mut Vec<u32>, &mut Vec<f32>)) {
    PACKS.with(|p| match p.try_borrow_mut() {
        Ok(mut bufs) => {
            let (a, b, c) = &mut *bufs;
            f(a, b, c)
        }
        Err(_) => f(&mut Vec::new(), &mut Vec::new(), &mut Vec::new()),
    })
}

/// Whether the kernel can read x in place: it has a direct form for x's dtype, and the rows
/// of a panel do not crowd into a few sets of a 32 KiB, 8-way L1 cache.
fn reads_x_in_place(job: &Job, kern: &Kernel) -> bool {
    let dtype_ok = match (kern.pairs, job.x) {
        (false, Src::F32(_)) => true,
        (true, Src::Bf16(_)) => job.d.k.is_multiple_of(2),
        _ => false,
    };
    let stride = job.d.k * job.x.elem_size();
    let mut per_set = [0u8; 64];
    for r in 0..kern.mr {
        per_set[(r * stride / 64) % 64] += 1;
    }
    kern.direct.is_some() && dtype_ok && per_set.iter().all(|&c| c <= 4)
}

/// One output block in parallel tiles: `rows` (absolute) × `cols` of the slab `b`.
fn multiply(
    job: &Job,
    kern: &Kernel,
    (a, rows): (ASide, Range<usize>),
    (b, cols): (&Packed, Range<usize>),
) {
    let want = 8 * rayon::current_num_threads().max(1);
    let row_tiles = rows.len().div_ceil(MC);
    let nc = cols
        .len()
        .div_ceil(want.div_ceil(row_tiles))
        .next_multiple_of(kern.nr)
        .clamp(kern.nr, NC_MAX);
    let col_tiles = cols.len().div_ceil(nc);
    (0..row_tiles * col_tiles).into_par_iter().for_each(|t| {
        let (rt, ct) = (t / col_tiles, t % col_tiles);
        let tile = Tile {
            job,
            kern,
            a,
            a0: rows.start,
            rows: rt * MC..((rt + 1) * MC).min(rows.len()),
            b,
            b0: cols.start,
            cols: ct * nc..((ct + 1) * nc).min(cols.len()),
        };
        TILE.with(|buf| {
            let (sums, tmp, local) = &mut *buf.borrow_mut();
            // SAFETY: tiles write disjoint blocks of the output.
            unsafe { tile.compute(sums, tmp, local) };
        });
    });
}

/// One tile of the output: `rows` of the block starting at row `a0`, `cols` of the slab
/// starting at column `b0`.
struct Tile<'a> {
    job: &'a Job<'a>,
    kern: &'a Kernel,
    a: ASide<'a>,
    a0: usize,
    rows: Range<usize>,
    b: &'a Packed<'a>,
    b0: usize,
    cols: Range<usize>,
}

impl Tile<'_> {
    unsafe fn compute(&self, sums: &mut Vec<f32>, tmp: &mut Vec<f32>, local: &mut Vec<u32>) {
        let (k, kern) = (self.job.d.k, self.kern);
        let ncp = self.cols.len().next_multiple_of(kern.nr);
        let mcp = self.rows.len().next_multiple_of(kern.mr);
        sums.resize(mcp * ncp, 0.0);
        for (pc, k0) in (0..k).step_by(KC).enumerate() {
            let kc = KC.min(k - k0);
            let steps = pack::steps(kc, kern.pairs);
            let partial = self.pack_partial(k0, kc, local);
            for jr in (0..ncp).step_by(kern.nr) {
                let bp = self.b.panel(pc, kc, (self.cols.start + jr) / kern.nr);
                for ir in (0..mcp).step_by(kern.mr) {
                    let cp = sums.as_mut_ptr().add(ir * ncp + jr);
                    let (run, ap, lda) = self.a_panel(pc, (k0, kc), ir, partial, local);
                    run(steps, ap, lda, bp, cp, ncp, pc > 0);
                }
            }
        }
        for r in 0..self.rows.len() {
            let vals = &mut sums[r * ncp..r * ncp + self.cols.len()];
            let (i, j) = (self.a0 + self.rows.start + r, self.b0 + self.cols.start);
            finish(self.job, vals, i, j, tmp);
        }
    }

    /// With x read in place, packs the tile's last panel into `local` when it is partial
    /// (reading it in place would run past x); returns whether it did.
    fn pack_partial(&self, k0: usize, kc: usize, local: &mut Vec<u32>) -> bool {
        let mr = self.kern.mr;
        let last = self.rows.len() % mr;
        if !matches!(self.a, ASide::Direct) || last == 0 {
            return false;
        }
        let src = Rows {
            src: self.job.x,
            k: self.job.d.k,
            row0: self.a0 + self.rows.end - last,
            rows: last,
        };
        local.resize(pack::steps(kc, self.kern.pairs) * mr, 0);
        pack::pack_panel(self.job.isa, src, 0, (k0, kc), mr, self.kern.pairs, local);
        true
    }

    /// The kernel, A pointer and row stride for panel `ir` (a row offset in the tile).
    unsafe fn a_panel(
        &self,
        pc: usize,
        (k0, kc): (usize, usize),
        ir: usize,
        partial: bool,
        local: &[u32],
    ) -> (super::micro::Run, *const u32, usize) {
        let kern = self.kern;
        match self.a {
            ASide::Packed(a) => (
                kern.run,
                a.panel(pc, kc, (self.rows.start + ir) / kern.mr),
                0,
            ),
            ASide::Direct if partial && ir + kern.mr > self.rows.len() => {
                (kern.run, local.as_ptr(), 0)
            }
            ASide::Direct => {
                let (row, k) = (self.a0 + self.rows.start + ir, self.job.d.k);
                let ptr = match self.job.x {
                    Src::F32(x) => x.as_ptr().add(row * k + k0) as *const u32,
                    Src::Bf16(x) => x.as_ptr().add(row * k + k0) as *const u32,
                    Src::F16(x) => x.as_ptr().add(row * k + k0) as *const u32,
                };
                (kern.direct.unwrap_or(kern.run), ptr, k)
            }
        }
    }
}
