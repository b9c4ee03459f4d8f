//! Many rows: W packed once per slab of columns; x read in place by the level's direct
//! kernel (or converted to f32 by each tile for its own rows, or, for bf16 pairs of an odd
//! row length, first copied to an even one a block of rows at a time), or packed where the
//! level has no direct kernel; then tiles of the output computed in parallel from the shared
//! packs, each into an f32 tile that the epilogue writes out.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use half::bf16;
use rayon::prelude::*;

use super::epilogue::finish;
use super::micro::{Kernel, Run};
use super::pack::{self, Packed, Rows};
use super::transpose;
use super::{kc_for, Dims, Epilogue, Job, Trans, A_BUDGET, B_BUDGET, MC, NC_MAX};
use crate::kernels::convert::{self, Src};
use crate::kernels::isa::Isa;

/// Per-thread buffers, kept between calls.
#[derive(Default)]
struct Buffers {
    /// Packed x and W.
    a: Vec<u32>,
    b: Vec<u32>,
    /// Staged rows of x (bf16 pairs of an odd row length).
    bf16s: Vec<bf16>,
}

/// Each worker's buffers for one tile.
#[derive(Default)]
struct TileBufs {
    /// The tile's f32 sums.
    sums: Vec<f32>,
    /// The epilogue's run of converted operands.
    tmp: Vec<f32>,
    /// A partial last panel of x, packed; after the products, the transposed sums.
    local: Vec<u32>,
    /// The tile's rows of x converted to f32, and which: the block's id and the first row
    /// (a worker's next tile often has the same rows, for other columns).
    conv: Vec<f32>,
    conv_of: Option<(u64, usize)>,
}

/// Ids of converted blocks, one per block of every product.
static BLOCK_IDS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
    static TILE: RefCell<TileBufs> = RefCell::new(TileBufs::default());
}

/// Where a tile reads x from.
#[derive(Clone, Copy)]
enum ASide<'a> {
    Packed(&'a Packed<'a>),
    /// Rows in place, row `first + r` of the block at element `r·ld` (a partial last panel
    /// is packed by the tile, since reading it in place would run past the end).
    Direct {
        x: Src<'a>,
        ld: usize,
        first: usize,
    },
    /// The block's rows (`k` apart) in another dtype than the kernel's: each tile converts
    /// its own rows to f32, `ld` apart, and reads them in place from there. `id` is the
    /// block's own, unique among all blocks (so a worker's converted rows are never mistaken
    /// for another block's).
    Convert {
        x: Src<'a>,
        ld: usize,
        id: u64,
    },
}

/// # Safety
/// As [`super::linear`].
pub(super) unsafe fn run(job: &Job) {
    let bf16 = matches!((job.x, job.w), (Src::Bf16(_), Src::Bf16(_)));
    let kern = Kernel::for_isa(job.isa, bf16);
    // Few rows and many columns (an LM head over a chunk of positions): packing W would cost
    // as much as the product, so compute Yᵀ = W·xᵀ with W read in place (or converted by tiles) instead.
    if job.d.n * 8 <= job.d.m && kern.direct.is_some() && job.trans == Trans::NONE {
        transposed(job, &kern);
    } else {
        plain(job, &kern, Finish::Rows);
    }
}

/// `y = x·Wᵀ` as `(W·xᵀ)ᵀ`: the swapped product's tiles go through `job`'s epilogue
/// column by column.
unsafe fn transposed(job: &Job, kern: &Kernel) {
    let d = job.d;
    let none = Epilogue::default();
    let sub = Job {
        x: job.w,
        w: job.x,
        d: Dims {
            n: d.m,
            k: d.k,
            m: d.n,
        },
        epi: &none,
        ..*job
    };
    plain(&sub, kern, Finish::Transposed(job));
}

/// Where a tile's sums go.
#[derive(Clone, Copy)]
enum Finish<'a> {
    /// Through the product's own epilogue.
    Rows,
    /// The product is the transpose of this one: through its epilogue, column by column.
    Transposed(&'a Job<'a>),
}

/// How x reaches the kernel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum XMode {
    /// Read in place by the direct kernel.
    InPlace,
    /// Copied, a block of rows at a time, to rows `ld` apart, then read in place.
    Staged { ld: usize },
    /// Converted to f32 by each tile for its rows, `ld` apart, then read in place.
    Converted { ld: usize },
    /// Packed a block of rows at a time (levels without a direct kernel).
    Packed,
}

fn x_mode(job: &Job, kern: &Kernel) -> XMode {
    if kern.direct.is_none() || job.trans.x {
        return XMode::Packed;
    }
    let (k, elem) = (job.d.k, if kern.pairs { 2 } else { 4 });
    let same_dtype = matches!(
        (kern.pairs, job.x),
        (false, Src::F32(_)) | (true, Src::Bf16(_))
    );
    // In place even when the rows crowd one cache set (a row length of a multiple of 4 KiB):
    // copying them to a spread-out stride measured no faster on Zen 4 (and up to 10 %
    // slower, the copy included).
    if same_dtype && (!kern.pairs || k.is_multiple_of(2)) {
        return XMode::InPlace;
    }
    // A stride of an odd number of cache lines puts every row of a panel in its own set.
    let per_line = 64 / elem;
    let ld = (k.div_ceil(per_line) | 1) * per_line;
    // Converting per tile rather than per block: the converted rows stay in the core's cache
    // (an f16 LM head staged 49,152 rows through memory once per chunk of positions).
    match kern.pairs {
        true => XMode::Staged { ld },
        false => XMode::Converted { ld },
    }
}

/// `y = x·Wᵀ`: W packed by slabs, x read in place, converted by tiles, or staged or packed by
/// blocks of rows.
unsafe fn plain(job: &Job, kern: &Kernel, fin: Finish) {
    let d = job.d;
    let mode = x_mode(job, kern);
    let per_row = 4 * pack::steps(d.k.next_multiple_of(kc_for(d.k)), kern.pairs);
    let slab = balanced(d.m, B_BUDGET / widening(job.w, kern) / per_row, kern.nr);
    let block = match mode {
        XMode::InPlace | XMode::Converted { .. } => d.n,
        _ => balanced(d.n, A_BUDGET / widening(job.x, kern) / per_row, MC),
    };
    with_buffers(|bufs| {
        let Buffers { a, b, bf16s } = bufs;
        let mut a = Packed::new(a, kern.mr, kern.pairs);
        if block >= d.n {
            // One block of rows: staged or packed once, for every slab of W.
            let side = x_side(job, mode, 0..d.n, &mut a, bf16s);
            by_slabs(job, kern, slab, b, |bp, cols| {
                multiply(job, kern, fin, (side, 0..d.n), (bp, cols))
            });
        } else {
            by_slabs(job, kern, slab, b, |bp, cols| {
                for i0 in (0..d.n).step_by(block) {
                    let rows = i0..(i0 + block).min(d.n);
                    let side = x_side(job, mode, rows.clone(), &mut a, bf16s);
                    multiply(job, kern, fin, (side, rows), (bp, cols.clone()));
                }
            });
        }
    });
}

/// Packs W a slab of `slab` columns at a time into `buf` and hands each to `f`.
fn by_slabs(
    job: &Job,
    kern: &Kernel,
    slab: usize,
    buf: &mut Vec<u32>,
    mut f: impl FnMut(&Packed, Range<usize>),
) {
    let d = job.d;
    for j0 in (0..d.m).step_by(slab) {
        let cols = j0..(j0 + slab).min(d.m);
        let mut b = Packed::new(buf, kern.nr, kern.pairs);
        let w_rows = match job.trans.w {
            true => Rows::of_transposed(job.w, d.k, d.m, cols.clone()),
            false => Rows::of(job.w, d.k, cols.clone()),
        };
        pack::pack_all(job.isa, w_rows, &mut b);
        f(&b, cols);
    }
}

/// Where the tiles read rows `rows` of x from: in place, converted by tiles, staged, or
/// packed into `a`.
fn x_side<'a>(
    job: &Job<'a>,
    mode: XMode,
    rows: Range<usize>,
    a: &'a mut Packed,
    bf16s: &'a mut Vec<bf16>,
) -> ASide<'a> {
    let d = job.d;
    let x = job.x.slice(rows.start * d.k, rows.len() * d.k);
    match mode {
        XMode::InPlace => ASide::Direct {
            x,
            ld: d.k,
            first: 0,
        },
        XMode::Converted { ld } => ASide::Convert {
            x,
            ld,
            id: BLOCK_IDS.fetch_add(1, Ordering::Relaxed),
        },
        XMode::Staged { ld } => stage(job, rows, ld, bf16s),
        XMode::Packed => {
            let x_rows = match job.trans.x {
                true => Rows::of_transposed(job.x, d.k, d.n, rows),
                false => Rows::of(job.x, d.k, rows),
            };
            pack::pack_all(job.isa, x_rows, a);
            ASide::Packed(a)
        }
    }
}

/// How many times its own size an operand takes once packed or staged: 2 for bf16 or f16
/// widened to f32, else 1. The budgets are divided by it, so that a half-precision model's
/// buffers stay in proportion to its weights (peak memory within 1.3× the weight file).
fn widening(src: Src, kern: &Kernel) -> usize {
    match (src, kern.pairs) {
        (Src::F32(_), _) | (Src::Bf16(_), true) => 1,
        _ => 2,
    }
}

/// Rows `rows` of bf16 x, `ld` apart (the padding zeroed), in parallel.
fn stage<'a>(job: &Job, rows: Range<usize>, ld: usize, bf16s: &'a mut Vec<bf16>) -> ASide<'a> {
    let (k, n) = (job.d.k, rows.len());
    let first = rows.start * k;
    let Src::Bf16(x) = job.x else {
        unreachable!("only bf16 pairs are staged")
    };
    bf16s.resize(n * ld, bf16::ZERO);
    bf16s.par_chunks_mut(ld).enumerate().for_each(|(r, row)| {
        row[..k].copy_from_slice(&x[first + r * k..][..k]);
        row[k..].fill(bf16::ZERO);
    });
    ASide::Direct {
        x: Src::Bf16(bf16s),
        ld,
        first: 0,
    }
}

/// Rows `rows` of `x` (`k` apart) as f32 in `out`, `ld` apart, the padding zeroed.
fn convert_rows(isa: Isa, x: Src, k: usize, rows: Range<usize>, ld: usize, out: &mut Vec<f32>) {
    out.resize(rows.len() * ld, 0.0);
    for (r, row) in rows.zip(out.chunks_exact_mut(ld)) {
        convert::load(isa, x, r * k, &mut row[..k]);
        row[k..].fill(0.0);
    }
}

/// Parts of `len` of at most about `most` each (multiples of `unit`), as equal as can be.
fn balanced(len: usize, most: usize, unit: usize) -> usize {
    let parts = len.div_ceil(most.max(unit));
    len.div_ceil(parts).next_multiple_of(unit)
}

/// Runs `f` with this thread's buffers (fresh ones if they are in use).
fn with_buffers(f: impl FnOnce(&mut Buffers)) {
    BUFFERS.with(|b| match b.try_borrow_mut() {
        Ok(mut bufs) => f(&mut bufs),
        Err(_) => f(&mut Buffers::default()),
    })
}

/// One output block in parallel tiles: `rows` (absolute) × `cols` of the slab `b`.
fn multiply(
    job: &Job,
    kern: &Kernel,
    fin: Finish,
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
            fin,
            a,
            a0: rows.start,
            rows: rt * MC..((rt + 1) * MC).min(rows.len()),
            b,
            b0: cols.start,
            cols: ct * nc..((ct + 1) * nc).min(cols.len()),
        };
        TILE.with(|bufs| {
            // SAFETY: tiles write disjoint blocks of the output.
            unsafe { tile.compute(&mut bufs.borrow_mut()) };
        });
    });
}

/// One tile of the output: `rows` of the block starting at row `a0`, `cols` of the slab
/// starting at column `b0`.
struct Tile<'a> {
    job: &'a Job<'a>,
    kern: &'a Kernel,
    fin: Finish<'a>,
    a: ASide<'a>,
    a0: usize,
    rows: Range<usize>,
    b: &'a Packed<'a>,
    b0: usize,
    cols: Range<usize>,
}

impl Tile<'_> {
    unsafe fn compute(&self, bufs: &mut TileBufs) {
        let TileBufs {
            sums,
            tmp,
            local,
            conv,
            conv_of,
        } = bufs;
        if let ASide::Convert { x, ld, id } = self.a {
            if *conv_of != Some((id, self.rows.start)) {
                convert_rows(self.job.isa, x, self.job.d.k, self.rows.clone(), ld, conv);
                *conv_of = Some((id, self.rows.start));
            }
            let a = ASide::Direct {
                x: Src::F32(conv),
                ld,
                first: self.rows.start,
            };
            let tile = Tile {
                a,
                rows: self.rows.clone(),
                cols: self.cols.clone(),
                ..*self
            };
            return tile.products(sums, tmp, local);
        }
        self.products(sums, tmp, local)
    }

    /// The tile's sums, then the epilogue.
    unsafe fn products(&self, sums: &mut Vec<f32>, tmp: &mut Vec<f32>, local: &mut Vec<u32>) {
        let (k, kern) = (self.job.d.k, self.kern);
        let ncp = self.cols.len().next_multiple_of(kern.nr);
        let mcp = self.rows.len().next_multiple_of(kern.mr);
        sums.resize(mcp * ncp, 0.0);
        let kc_max = kc_for(k);
        for (pc, k0) in (0..k).step_by(kc_max).enumerate() {
            let kc = kc_max.min(k - k0);
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
        let (i0, j0) = (self.a0 + self.rows.start, self.b0 + self.cols.start);
        match self.fin {
            Finish::Rows => {
                for r in 0..self.rows.len() {
                    let vals = &mut sums[r * ncp..r * ncp + self.cols.len()];
                    finish(self.job, vals, i0 + r, j0, tmp);
                }
            }
            Finish::Transposed(orig) => {
                let (rows, cols) = (self.rows.len(), self.cols.len());
                // Reuses the partial-panel buffer, free once the products are done.
                let by_col = transpose_tile(self.job.isa, sums, ncp, (rows, cols), local);
                for (c, vals) in by_col.chunks_exact_mut(rows).enumerate() {
                    finish(orig, vals, j0 + c, i0, tmp);
                }
            }
        }
    }

    /// With x read in place, packs the tile's last panel into `local` when it is partial;
    /// returns whether it did.
    fn pack_partial(&self, k0: usize, kc: usize, local: &mut Vec<u32>) -> bool {
        let mr = self.kern.mr;
        let last = self.rows.len() % mr;
        let ASide::Direct { x, ld, first } = self.a else {
            return false;
        };
        if last == 0 {
            return false;
        }
        let src = Rows {
            src: x,
            ld,
            k: self.job.d.k,
            row0: self.rows.end - last - first,
            rows: last,
            transposed: false,
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
    ) -> (Run, *const u32, usize) {
        let kern = self.kern;
        let row = self.rows.start + ir;
        match self.a {
            ASide::Packed(a) => (kern.run, a.panel(pc, kc, row / kern.mr), 0),
            ASide::Convert { .. } => unreachable!("a tile converts its rows first"),
            ASide::Direct { .. } if partial && ir + kern.mr > self.rows.len() => {
                (kern.run, local.as_ptr(), 0)
            }
            ASide::Direct { x, ld, first } => {
                let at = (row - first) * ld + k0;
                let ptr = match x {
                    Src::F32(x) => x[at..].as_ptr() as *const u32,
                    Src::Bf16(x) => x[at..].as_ptr() as *const u32,
                    Src::F16(x) => x[at..].as_ptr() as *const u32,
                };
                (kern.direct.unwrap_or(kern.run), ptr, ld)
            }
        }
    }
}

/// A tile's sums column by column: `out[c·rows + r] = sums[r·ld + c]` (`out` holds the f32
/// values' bits), by [`transpose::transpose`].
fn transpose_tile<'o>(
    isa: Isa,
    sums: &[f32],
    ld: usize,
    (rows, cols): (usize, usize),
    out: &'o mut Vec<u32>,
) -> &'o mut [f32] {
    assert!(
        cols <= ld && sums.len() >= rows * ld,
        "transpose_tile: sums too short"
    );
    out.resize(rows * cols, 0);
    // SAFETY: `sums` holds rows × ld ≥ rows × cols values and `out` cols × rows; they are
    // separate buffers.
    unsafe {
        let src = (sums.as_ptr() as *const u32, ld);
        transpose::transpose(isa, src, (rows, cols), (out.as_mut_ptr(), rows));
    }
    // SAFETY: u32 and f32 have the same size and alignment, and every bit pattern is an f32.
    unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut f32, rows * cols) }
}
