//! `y = x·Wᵀ` for a linear layer — x (n, k), W (m, k), both row-major in f32, bf16 or f16 —
//! with the layer's epilogue fused: `+ bias`, an activation, then `+ r` or `· r` with another
//! (n, m) tensor, rounded once to the output dtype. Sums are in f32.
//!
//! - Many rows ([`gemm`]): BLIS-style blocking. Each parallel task owns a block of rows and
//!   columns of y; it packs its columns of W for the whole reduction once, then, per block of
//!   `MC` rows and `KC` of the reduction, packs x and runs the level's micro-kernel
//!   ([`micro`]) into an f32 tile, which the epilogue writes out. With `avx512_bf16`, bf16
//!   operands stay bf16 (`vdpbf16ps`); otherwise they are converted to f32 while packing.
//! - A few rows ([`gemv`], decoding): W streamed once, row by row, at memory speed.

mod gemv;
mod micro;
mod pack;

use rayon::prelude::*;

use super::convert::{self, Out, Src};
use super::isa::Isa;
use micro::Kernel;
use pack::{Packed, Rows as PackRows};
use std::cell::RefCell;
use std::ops::Range;

/// Rows of x at or below which the streaming kernel is used.
pub const GEMV_MAX_ROWS: usize = 4;
/// Rows of x per tile (a multiple of every kernel's MR).
const MC: usize = 96;
/// Reduction values per packed block.
const KC: usize = 256;
/// Widest column group of a tile.
const NC_MAX: usize = 512;
/// Most bytes of packed x at once: rows are packed and multiplied in super-blocks.
const A_BUDGET: usize = 4 << 20;
/// Most bytes of packed W at once: columns are packed and multiplied in slabs.
const B_BUDGET: usize = 8 << 20;

/// How the result is combined with a second (n, m) tensor after bias and activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    Add,
    Mul,
}

/// What happens to each f32 sum before it is stored: `act(sum + bias) (+|·) with`.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// (m,)
    pub bias: Option<Src<'a>>,
    /// Applied in place to runs of a row.
    pub act: Option<fn(&mut [f32])>,
    /// (n, m), row-major.
    pub with: Option<(Combine, Src<'a>)>,
}

/// The shapes of one product: x (n, k), W (m, k), y (n, m).
#[derive(Debug, Clone, Copy)]
pub struct Dims {
    pub n: usize,
    pub k: usize,
    pub m: usize,
}

/// `out = epilogue(x·Wᵀ)` with the kernels of `isa`.
///
/// # Safety
/// `out` must be valid for writes of `n·m` elements that nothing else accesses meanwhile.
/// Panics if a slice is shorter than its shape.
pub unsafe fn linear(isa: Isa, x: Src, w: Src, d: Dims, epi: &Epilogue, out: Out) {
    assert!(
        x.len() >= d.n * d.k && w.len() >= d.m * d.k,
        "linear: operands too short"
    );
    assert!(
        epi.bias.is_none_or(|b| b.len() >= d.m),
        "linear: bias too short"
    );
    assert!(
        epi.with.is_none_or(|(_, r)| r.len() >= d.n * d.m),
        "linear: operand too short"
    );
    if d.n == 0 || d.m == 0 {
        return;
    }
    if d.n <= GEMV_MAX_ROWS {
        gemv::run(&Job {
            isa,
            x,
            w,
            d,
            epi,
            out,
        });
    } else {
        gemm(isa, x, w, d, epi, out);
    }
}

/// One product and where it goes, shared by the tasks that compute it.
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    pub isa: Isa,
    pub x: Src<'a>,
    pub w: Src<'a>,
    pub d: Dims,
    pub epi: &'a Epilogue<'a>,
    pub out: Out,
}

thread_local! {
    /// Packed x and W of the calling thread's products, kept between calls.
    static PACKS: RefCell<(Vec<u32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// Each thread's f32 tile and epilogue buffer.
    static TILE: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Many rows: W packed once per slab of columns, x once per super-block of rows (and slab),
/// then tiles of the output computed in parallel from the shared packs.
unsafe fn gemm(isa: Isa, x: Src, w: Src, d: Dims, epi: &Epilogue, out: Out) {
    let bf16 = matches!((x, w), (Src::Bf16(_), Src::Bf16(_)));
    let kern = Kernel::for_isa(isa, bf16);
    let job = Job {
        isa,
        x,
        w,
        d,
        epi,
        out,
    };
    let bytes_per = 4 * pack::steps(d.k.next_multiple_of(KC), kern.pairs);
    let slab = (B_BUDGET / bytes_per)
        .max(kern.nr)
        .next_multiple_of(kern.nr);
    let block = (A_BUDGET / bytes_per).max(MC).next_multiple_of(MC);
    PACKS.with(|p| {
        let mut fresh = (Vec::new(), Vec::new());
        let mut guard = p.try_borrow_mut();
        let (abuf, bbuf) = match guard.as_deref_mut() {
            Ok(bufs) => (&mut bufs.0, &mut bufs.1),
            Err(_) => (&mut fresh.0, &mut fresh.1),
        };
        for j0 in (0..d.m).step_by(slab) {
            let cols = j0..(j0 + slab).min(d.m);
            let mut b = Packed {
                buf: bbuf,
                width: kern.nr,
                pairs: kern.pairs,
                padded: 0,
            };
            let rows = PackRows {
                src: w,
                k: d.k,
                row0: j0,
                rows: cols.len(),
            };
            pack::pack_all(isa, rows, kern.nr, kern.pairs, &mut b);
            for i0 in (0..d.n).step_by(block) {
                let mut a = Packed {
                    buf: abuf,
                    width: kern.mr,
                    pairs: kern.pairs,
                    padded: 0,
                };
                let rows = PackRows {
                    src: x,
                    k: d.k,
                    row0: i0,
                    rows: block.min(d.n - i0),
                };
                pack::pack_all(isa, rows, kern.mr, kern.pairs, &mut a);
                multiply(&job, &kern, (&a, i0, rows.rows), (&b, cols.clone()));
            }
        }
    });
}

/// The output block rows `i0 .. i0 + n` × `cols` from packed x (`a`) and W (`b`), in
/// parallel tiles.
fn multiply(
    job: &Job,
    kern: &Kernel,
    (a, i0, n): (&Packed, usize, usize),
    (b, cols): (&Packed, Range<usize>),
) {
    let want = 8 * rayon::current_num_threads().max(1);
    let row_tiles = n.div_ceil(MC);
    let nc = cols
        .len()
        .div_ceil(want.div_ceil(row_tiles))
        .next_multiple_of(kern.nr)
        .clamp(kern.nr, NC_MAX);
    let col_tiles = cols.len().div_ceil(nc);
    (0..row_tiles * col_tiles).into_par_iter().for_each(|t| {
        let (rt, ct) = (t / col_tiles, t % col_tiles);
        let rows = rt * MC..((rt + 1) * MC).min(n);
        let tc = ct * nc..((ct + 1) * nc).min(cols.len());
        TILE.with(|tile| {
            let (tile, tmp) = &mut *tile.borrow_mut();
            // SAFETY: tiles write disjoint blocks of the output.
            unsafe { tile_product(job, kern, (a, i0, rows), (b, cols.start, tc), tile, tmp) };
        });
    });
}

/// One tile: `rows` of the super-block at `i0`, columns `tc` of the slab at `j0`.
unsafe fn tile_product(
    job: &Job,
    kern: &Kernel,
    (a, i0, rows): (&Packed, usize, Range<usize>),
    (b, j0, tc): (&Packed, usize, Range<usize>),
    tile: &mut Vec<f32>,
    tmp: &mut Vec<f32>,
) {
    let (k, ncp) = (job.d.k, tc.len().next_multiple_of(kern.nr));
    let mcp = rows.len().next_multiple_of(kern.mr);
    tile.resize(mcp * ncp, 0.0);
    for (pc, k0) in (0..k).step_by(KC).enumerate() {
        let kc = KC.min(k - k0);
        let steps = pack::steps(kc, kern.pairs);
        for jr in (0..ncp).step_by(kern.nr) {
            let bp = b.panel(pc, kc, (tc.start + jr) / kern.nr);
            for ir in (0..mcp).step_by(kern.mr) {
                let ap = a.panel(pc, kc, (rows.start + ir) / kern.mr);
                let cp = tile.as_mut_ptr().add(ir * ncp + jr);
                (kern.run)(steps, ap, bp, cp, ncp, pc > 0);
            }
        }
    }
    for r in 0..rows.len() {
        let vals = &mut tile[r * ncp..r * ncp + tc.len()];
        finish(job, vals, i0 + rows.start + r, j0 + tc.start, tmp);
    }
}

/// Applies the epilogue to `vals`, the sums of row `i`, columns `j0 ..`, and stores them.
///
/// # Safety
/// As [`linear`]; the elements written are `out[i·m + j0 ..][..vals.len()]`.
pub(crate) unsafe fn finish(job: &Job, vals: &mut [f32], i: usize, j0: usize, tmp: &mut Vec<f32>) {
    let (isa, epi, m) = (job.isa, job.epi, job.d.m);
    tmp.resize(vals.len(), 0.0);
    if let Some(b) = epi.bias {
        convert::load(isa, b, j0, tmp);
        vals.iter_mut().zip(tmp.iter()).for_each(|(v, b)| *v += b);
    }
    if let Some(act) = epi.act {
        act(vals);
    }
    if let Some((op, r)) = epi.with {
        convert::load(isa, r, i * m + j0, tmp);
        match op {
            Combine::Add => vals.iter_mut().zip(tmp.iter()).for_each(|(v, r)| *v += r),
            Combine::Mul => vals.iter_mut().zip(tmp.iter()).for_each(|(v, r)| *v *= r),
        }
    }
    convert::store(isa, vals, job.out, i * m + j0);
}

/// The reference: every output summed in f64 in index order from the operands as f32, the
/// epilogue in f32, the result rounded to `out`'s dtype. Slow; for tests.
///
/// # Safety
/// As [`linear`].
pub unsafe fn linear_reference(x: Src, w: Src, d: Dims, epi: &Epilogue, out: Out) {
    let isa = Isa::Portable;
    let job = Job {
        isa,
        x,
        w,
        d,
        epi,
        out,
    };
    let (mut xr, mut wr, mut tmp) = (vec![0f32; d.k], vec![0f32; d.k], Vec::new());
    let mut vals = vec![0f32; d.m];
    for i in 0..d.n {
        convert::load(isa, x, i * d.k, &mut xr);
        for (j, v) in vals.iter_mut().enumerate() {
            convert::load(isa, w, j * d.k, &mut wr);
            let s: f64 = xr.iter().zip(&wr).map(|(&a, &b)| a as f64 * b as f64).sum();
            *v = s as f32;
        }
        finish(&job, &mut vals, i, 0, &mut tmp);
    }
}
