//! `y = x·Wᵀ` for a linear layer — x (n, k), W (m, k), both row-major in f32, bf16 or f16 —
//! with the layer's epilogue fused: `+ bias`, an activation, then `+ r` or `· r` with another
//! (n, m) tensor, rounded once to the output dtype. Sums are in f32.
//!
//! - Many rows ([`blocked`]): BLIS-style blocking. W is packed, a slab of columns at a time,
//!   into panels for the whole reduction (eight rows at a time by register transposes,
//!   [`transpose`]); x is read in place by the AVX-512 kernels (converted first, by each tile
//!   for its own rows, when its dtype is not the kernel's) or packed by blocks of rows;
//!   parallel tiles of `MC` rows run
//!   the level's micro-kernel ([`micro`]) over a block ([`kc_for`]) of the reduction at a time into an f32
//!   tile, which the epilogue writes out. With `avx512_bf16`, bf16 operands stay bf16
//!   (`vdpbf16ps`); otherwise they are converted to f32 while packing.
//! - A few rows ([`gemv`], decoding): W streamed once, row by row, at memory speed.

mod blocked;
mod epilogue;
mod gemv;
mod micro;
mod pack;
pub mod small;
pub(crate) mod transpose;

use super::convert::{self, Out, Src};
use super::isa::Isa;
use epilogue::finish;

/// Rows of x at or below which the streaming kernel is used.
pub const GEMV_MAX_ROWS: usize = 4;
/// Rows of x per tile (a multiple of every kernel's MR).
const MC: usize = 96;
/// Most reduction values per packed block. A reduction of `k` is cut into equal blocks of at
/// most this many ([`kc_for`]): one block when `k` fits, so that each tile's sums are written
/// once rather than reloaded and added to per block (measured 2–7 % faster than blocks of 256
/// on Zen 4 for GPT-2 and SmolLM shapes).
const KC_MAX: usize = 768;

/// The block length for a reduction of `k`: `k` in the fewest blocks of at most [`KC_MAX`],
/// equal but for the last, each a multiple of 16 (so bf16 pairs never straddle two blocks).
pub(crate) fn kc_for(k: usize) -> usize {
    let blocks = k.div_ceil(KC_MAX).max(1);
    k.div_ceil(blocks).next_multiple_of(16)
}
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
    let job = Job {
        isa,
        x,
        w,
        d,
        trans: Trans::NONE,
        epi,
        out,
    };
    if d.n <= GEMV_MAX_ROWS {
        gemv::run(&job);
    } else {
        blocked::run(&job);
    }
}

/// Which operands of [`linear_transposed`] are stored transposed: x as (k, n), W as (k, m).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trans {
    pub x: bool,
    pub w: bool,
}

impl Trans {
    pub const NONE: Trans = Trans { x: false, w: false };
}

/// [`linear`] with either operand stored transposed (f32 only: for the backward products of
/// training, `∂x = ∂y·W` and `∂W = ∂yᵀ·x`, without transposing a matrix first). The packing
/// reads the transposed operand a run of a row at a time.
///
/// # Safety
/// As [`linear`]. Panics if a transposed operand is not f32.
pub unsafe fn linear_transposed(
    isa: Isa,
    x: Src,
    w: Src,
    d: Dims,
    trans: Trans,
    epi: &Epilogue,
    out: Out,
) {
    if trans == Trans::NONE {
        return linear(isa, x, w, d, epi, out);
    }
    assert!(
        (!trans.x || matches!(x, Src::F32(_))) && (!trans.w || matches!(w, Src::F32(_))),
        "linear_transposed: transposed operands must be f32"
    );
    assert!(
        x.len() >= d.n * d.k && w.len() >= d.m * d.k,
        "linear: operands too short"
    );
    if d.n == 0 || d.m == 0 {
        return;
    }
    blocked::run(&Job {
        isa,
        x,
        w,
        d,
        trans,
        epi,
        out,
    });
}

/// One product and where it goes, shared by the tasks that compute it.
#[derive(Clone, Copy)]
pub(crate) struct Job<'a> {
    pub isa: Isa,
    pub x: Src<'a>,
    pub w: Src<'a>,
    pub d: Dims,
    pub trans: Trans,
    pub epi: &'a Epilogue<'a>,
    pub out: Out,
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
        trans: Trans::NONE,
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
