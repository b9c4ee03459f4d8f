//! Packing: rows of a row-major matrix (rows of x, or rows of W — both contiguous along k)
//! rearranged into micro-panels of `width` rows, step by step, as the micro-kernels read
//! them. f32 mode converts to f32; pair mode keeps bf16 and puts two consecutive k of a row in
//! one u32. Rows past the end and k past the end are zeros.
//!
//! A packed matrix is stored per block of `kc` values of k ([`super::kc_for`]): block `pc`
//! holds every panel of the rows for k in `pc·kc ..`, panel after panel.

use std::cell::RefCell;

use rayon::prelude::*;

use super::kc_for;
#[cfg(target_arch = "x86_64")]
use super::transpose;
use crate::kernels::convert::{self, Src};
use crate::kernels::isa::Isa;

/// Steps of the reduction a block of `kc` values takes.
pub(crate) fn steps(kc: usize, pairs: bool) -> usize {
    if pairs {
        kc.div_ceil(2)
    } else {
        kc
    }
}

/// Rows `row0 .. row0 + rows` of a matrix with `k` columns, packed in panels of `width`.
pub(crate) struct Packed<'a> {
    pub buf: &'a mut Vec<u32>,
    pub width: usize,
    pub pairs: bool,
    /// Rows, rounded up to a multiple of `width`.
    pub padded: usize,
    /// Reduction values per block.
    pub kc: usize,
}

impl<'a> Packed<'a> {
    /// An empty pack into `buf` (filled by [`pack_all`]).
    pub fn new(buf: &'a mut Vec<u32>, width: usize, pairs: bool) -> Self {
        Self {
            buf,
            width,
            pairs,
            padded: 0,
            kc: 0,
        }
    }

    /// Values per block of k.
    fn block(&self) -> usize {
        self.padded * steps(self.kc, self.pairs)
    }

    /// The start of panel `panel` in block `pc` (whose reduction is `kc` long).
    pub fn panel(&self, pc: usize, kc: usize, panel: usize) -> *const u32 {
        let off = pc * self.block() + panel * steps(kc, self.pairs) * self.width;
        self.buf[off..].as_ptr()
    }
}

/// The source of a pack: `rows` rows of `src` from `row0`, each `k` long and `ld` apart —
/// or, when `transposed` (f32 only), columns: element (r, p) at `p·ld + row0 + r`.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub src: Src<'a>,
    pub ld: usize,
    pub k: usize,
    pub row0: usize,
    pub rows: usize,
    pub transposed: bool,
}

impl<'a> Rows<'a> {
    /// Rows `rows` of a matrix of `k` columns.
    pub fn of(src: Src<'a>, k: usize, rows: std::ops::Range<usize>) -> Self {
        Self {
            src,
            ld: k,
            k,
            row0: rows.start,
            rows: rows.len(),
            transposed: false,
        }
    }

    /// Rows `rows` of a matrix of `k` columns stored transposed, (k, ld).
    pub fn of_transposed(src: Src<'a>, k: usize, ld: usize, rows: std::ops::Range<usize>) -> Self {
        Self {
            src,
            ld,
            k,
            row0: rows.start,
            rows: rows.len(),
            transposed: true,
        }
    }
}

/// A raw pointer into a packed buffer shared by tasks that fill disjoint panels.
#[derive(Clone, Copy)]
struct Shared(*mut u32);
// SAFETY: the tasks that share one write disjoint panels.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// # Safety
    /// `i` must be within the buffer.
    unsafe fn at(&self, i: usize) -> *mut u32 {
        self.0.add(i)
    }
}

thread_local! {
    static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Packs `src` for the whole reduction into `dst`, one parallel task per panel.
pub(crate) fn pack_all(isa: Isa, src: Rows, dst: &mut Packed) {
    let (width, pairs) = (dst.width, dst.pairs);
    dst.padded = src.rows.next_multiple_of(width);
    dst.kc = kc_for(src.k);
    let (block, kc_max) = (dst.block(), dst.kc);
    dst.buf.resize(src.k.div_ceil(kc_max) * block, 0);
    let base = Shared(dst.buf.as_mut_ptr());
    (0..dst.padded / width).into_par_iter().for_each(|panel| {
        for (pc, k0) in (0..src.k).step_by(kc_max).enumerate() {
            let kc = kc_max.min(src.k - k0);
            let len = steps(kc, pairs) * width;
            // SAFETY: this task alone writes panel `panel` of each block, which lies inside
            // the buffer sized above.
            let out =
                unsafe { std::slice::from_raw_parts_mut(base.at(pc * block + panel * len), len) };
            pack_panel(isa, src, panel * width, (k0, kc), width, pairs, out);
        }
    });
}

/// Packs rows `first .. first + width` (relative to `src.row0`) for k in `k0 .. k0 + kc`
/// into `out` (`steps(kc) × width` values).
pub(crate) fn pack_panel(
    isa: Isa,
    src: Rows,
    first: usize,
    (k0, kc): (usize, usize),
    width: usize,
    pairs: bool,
    out: &mut [u32],
) {
    if src.transposed {
        return pack_columns(src, first, (k0, kc), width, out);
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2
        && width.is_multiple_of(8)
        && by_transposes(isa, src, first, (k0, kc), width, pairs, out)
    {
        return;
    }
    let s = steps(kc, pairs);
    for lane in 0..width {
        let r = first + lane;
        if r >= src.rows {
            (0..s).for_each(|p| out[p * width + lane] = 0);
            continue;
        }
        let start = (src.row0 + r) * src.ld + k0;
        match (pairs, src.src) {
            (true, Src::Bf16(v)) => pack_pairs(&v[start..start + kc], out, width, lane),
            (false, Src::F32(v)) => scatter(&v[start..start + kc], out, width, lane),
            (false, other) => ROW.with(|row| {
                let row = &mut *row.borrow_mut();
                row.resize(kc, 0.0);
                convert::load(isa, other, start, row);
                scatter(row, out, width, lane);
            }),
            (true, _) => unreachable!("pair packing is for bf16 only"),
        }
    }
}

/// [`pack_panel`] from f32 rows, or bf16 rows in pair mode, eight lanes at a time by
/// register transposes (a bf16 pair is one 32-bit value). Returns false, having done
/// nothing, for other sources.
#[cfg(target_arch = "x86_64")]
fn by_transposes(
    isa: Isa,
    src: Rows,
    first: usize,
    (k0, kc): (usize, usize),
    width: usize,
    pairs: bool,
    out: &mut [u32],
) -> bool {
    let (base, full) = match (pairs, src.src) {
        (false, Src::F32(v)) => (v.as_ptr() as *const u8, kc),
        (true, Src::Bf16(v)) => (v.as_ptr() as *const u8, kc / 2),
        (false, _) => return converted_by_transposes(isa, src, first, (k0, kc), width, out),
        (true, _) => return false,
    };
    let elem = if pairs { 2 } else { 4 };
    let s = steps(kc, pairs);
    assert!(out.len() >= s * width, "pack_panel: output too short");
    for lane0 in (0..width).step_by(8) {
        let lanes: transpose::Lanes = std::array::from_fn(|i| {
            let r = first + lane0 + i;
            match r < src.rows {
                // SAFETY: row r's values k0 .. k0 + kc lie in the source (its rows are `k`
                // long, `ld` apart, and k0 + kc ≤ k).
                true => unsafe { base.add(((src.row0 + r) * src.ld + k0) * elem) as *const u32 },
                false => std::ptr::null(),
            }
        });
        // SAFETY: AVX2 (checked by the caller); each lane reads `full` 32-bit values, within
        // its row's kc values; out holds s·width ≥ full·width values.
        unsafe { transpose::transpose8(&lanes, full, out[lane0..].as_mut_ptr(), width) };
        if full < s {
            // An odd kc in pair mode: the last step holds one bf16, its pair's high half 0.
            for (i, lane) in lanes.iter().enumerate() {
                let last = match lane.is_null() {
                    true => 0,
                    // SAFETY: the row's value kc − 1 is in the source (see above).
                    false => u32::from(unsafe { *(*lane as *const u16).add(kc - 1) }),
                };
                out[full * width + lane0 + i] = last;
            }
        }
    }
    true
}

/// [`by_transposes`] for bf16 or f16 rows packed as f32: each group of eight rows is
/// converted into a scratch block first.
#[cfg(target_arch = "x86_64")]
fn converted_by_transposes(
    isa: Isa,
    src: Rows,
    first: usize,
    (k0, kc): (usize, usize),
    width: usize,
    out: &mut [u32],
) -> bool {
    assert!(out.len() >= kc * width, "pack_panel: output too short");
    ROW.with(|scratch| {
        let scratch = &mut *scratch.borrow_mut();
        scratch.resize(8 * kc, 0.0);
        for lane0 in (0..width).step_by(8) {
            let mut lanes: transpose::Lanes = [std::ptr::null(); 8];
            for (i, (lane, row)) in lanes
                .iter_mut()
                .zip(scratch.chunks_exact_mut(kc))
                .enumerate()
            {
                let r = first + lane0 + i;
                if r < src.rows {
                    convert::load(isa, src.src, (src.row0 + r) * src.ld + k0, row);
                    *lane = row.as_ptr() as *const u32;
                }
            }
            // SAFETY: AVX2 (checked by the caller); each lane reads its kc converted values;
            // out holds kc·width values.
            unsafe { transpose::transpose8(&lanes, kc, out[lane0..].as_mut_ptr(), width) };
        }
    });
    true
}

/// [`pack_panel`] from a transposed f32 source: each step of the panel is a run of the
/// source's row.
fn pack_columns(src: Rows, first: usize, (k0, kc): (usize, usize), width: usize, out: &mut [u32]) {
    let Src::F32(v) = src.src else {
        unreachable!("transposed operands are f32")
    };
    let real = src.rows.saturating_sub(first).min(width);
    let at = |p: usize| (k0 + p) * src.ld + src.row0 + first;
    // Full panels of the kernels' widths copy a constant number of values per step.
    macro_rules! full {
        ($($w:literal),*) => {
            match width {
                $($w if real == $w => {
                    for (p, step) in out.chunks_exact_mut($w).take(kc).enumerate() {
                        let run: &[f32; $w] = v[at(p)..at(p) + $w].try_into().expect("a full run");
                        let step: &mut [u32; $w] = step.try_into().expect("a full step");
                        *step = run.map(f32::to_bits);
                    }
                    return;
                })*
                _ => {}
            }
        };
    }
    full!(4, 6, 8, 12, 16, 24, 32);
    for (p, step) in out.chunks_exact_mut(width).take(kc).enumerate() {
        for (o, &x) in step.iter_mut().zip(&v[at(p)..at(p) + real]) {
            *o = x.to_bits();
        }
        step[real..].fill(0);
    }
}

#[inline(always)]
fn scatter(row: &[f32], out: &mut [u32], width: usize, lane: usize) {
    assert!(lane < width && out.len() >= row.len() * width);
    let out = out.as_mut_ptr();
    for (p, &v) in row.iter().enumerate() {
        // SAFETY: p·width + lane < row.len()·width ≤ out.len() (checked above).
        unsafe { *out.add(p * width + lane) = v.to_bits() };
    }
}

#[inline(always)]
fn pack_pairs(row: &[half::bf16], out: &mut [u32], width: usize, lane: usize) {
    let out = &mut out[lane..];
    let mut chunks = row.chunks_exact(2);
    let mut p = 0;
    for pair in chunks.by_ref() {
        out[p * width] = pair[0].to_bits() as u32 | (pair[1].to_bits() as u32) << 16;
        p += 1;
    }
    if let [last] = chunks.remainder() {
        out[p * width] = last.to_bits() as u32;
    }
}
