//! Causal multi-head attention: a fused CPU kernel (f32; grouped-query heads) and the
//! candle-ops version used on other devices and dtypes, and by autograd.

use std::ops::Range;

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::convert::{self, Out, Src};
use super::decode;
use super::elementwise::{map_in_place, simd};
use super::gemm::small::{product, Mat};
use super::gemm::transpose::transpose;
use super::isa::Isa;
use super::math::exp;
use super::reductions::{max, LANES};

/// Queries per block in the fused attention: block `[i0, i1)` only multiplies against keys
/// `[0, offset + i1)`, which skips most of the masked upper triangle.
const QUERY_BLOCK: usize = 128;

/// Queries at or below which each head reads the cache in place, query by query.
pub const FEW_QUERIES: usize = 4;

/// Causal multi-head attention `softmax(scale·q·kᵀ + mask)·v`, heads side by side in the last
/// dimension: `q` (b, tq, H·d), `k` and `v` (b, tk, G·d) with `tk ≥ tq`, where query `i` sees
/// keys `0 ..= tk − tq + i` (the first `tk − tq` keys are cached positions) and query head `h`
/// reads key/value head `h / (H/G)` (grouped-query attention; G = H is plain multi-head).
/// Returns (b, tq, H·d). The inputs may be column slices of a fused qkv output.
///
/// On CPU (f32, bf16 or f16, computed in f32 and rounded once) this is one fused kernel:
/// (sequence, head, part of the query blocks) tasks run in parallel, each on its own f32 copy
/// of the queries, keys (transposed) and values it reads, with single-threaded products
/// ([`super::gemm::small`]) per query block and a scratch buffer for scores, so the
/// (b, h, t, t) score tensor never exists. Elsewhere the same maths is composed from candle
/// ops.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: Heads,
    scale: f64,
) -> Result<Tensor> {
    let (b, tq, c) = q.dims3()?;
    let (bk, tk, ck) = k.dims3()?;
    if !heads.fits(c, ck) || bk != b || v.dims3()? != (b, tk, ck) || tk < tq {
        candle_core::bail!(
            "causal_attention: q {:?}, k {:?}, v {:?} with {heads:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let dtype = q.dtype();
    let same = [k, v].iter().all(|t| t.dtype() == dtype);
    let fused = matches!(dtype, DType::F32 | DType::BF16 | DType::F16);
    if q.device().is_cpu() && same && fused {
        let op = FusedAttention {
            heads,
            scale: scale as f32,
        };
        return row_major(q)?.apply_op3_no_bwd(&row_major(k)?, &row_major(v)?, &op);
    }
    causal_attention_composed(q, k, v, heads, scale, false)
}

/// `t` (b, t, C) with unit stride along C: itself (a column slice of a fused projection is
/// fine), else a contiguous copy.
pub(crate) fn row_major(t: &Tensor) -> Result<Tensor> {
    if t.stride()[2] == 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// Query heads and key/value heads (`n_kv` divides `n_head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub n_head: usize,
    pub n_kv: usize,
}

impl Heads {
    /// Plain multi-head attention.
    pub fn mha(n_head: usize) -> Self {
        Self {
            n_head,
            n_kv: n_head,
        }
    }

    /// Query heads per key/value head.
    pub fn group(self) -> usize {
        self.n_head / self.n_kv
    }

    /// Whether query width `cq` and key width `ck` agree with these heads.
    fn fits(self, cq: usize, ck: usize) -> bool {
        self.n_kv > 0
            && self.n_head.is_multiple_of(self.n_kv)
            && cq.is_multiple_of(self.n_head)
            && ck == cq / self.n_head * self.n_kv
    }
}

/// The candle-ops version of [`causal_attention`] (other devices and dtypes; the reference
/// the fused kernel is tested against). Scores and softmax run in f32. With
/// `differentiable`, softmax is composed from elementary ops so autograd can run through it
/// (candle's fused `softmax_last_dim` has no backward).
pub fn causal_attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: Heads,
    scale: f64,
    differentiable: bool,
) -> Result<Tensor> {
    let (b, tq, c) = q.dims3()?;
    let tk = k.dim(1)?;
    let d = c / heads.n_head;
    let split = |t: &Tensor, len: usize, n: usize| -> Result<Tensor> {
        t.reshape((b, len, n, d))?.transpose(1, 2)?.contiguous() // (b, n, len, d)
    };
    // Each key/value head repeated for its group of query heads: (b, H, tk, d).
    let repeat = |t: Tensor| -> Result<Tensor> {
        if heads.group() == 1 {
            return Ok(t);
        }
        t.unsqueeze(2)?
            .broadcast_as((b, heads.n_kv, heads.group(), tk, d))?
            .reshape((b, heads.n_head, tk, d))
    };
    let qh = split(q, tq, heads.n_head)?;
    let kh = repeat(split(k, tk, heads.n_kv)?)?;
    let vh = repeat(split(v, tk, heads.n_kv)?)?;
    let dtype = vh.dtype();
    let scores = qh
        .to_dtype(DType::F32)?
        .matmul(&kh.to_dtype(DType::F32)?.t()?)?; // (b, h, tq, tk)
                                                  // The causal mask, made on the scores' device (0 where key j ≤ offset + query i, else
                                                  // -1e30, whose exp is exactly 0 like -inf's): building it on the host and copying it
                                                  // over for every layer cost a GPU forward more than the matmuls did.
    let offset = tk - tq;
    let dev = scores.device();
    let query_pos = Tensor::arange(offset as u32, (offset + tq) as u32, dev)?.reshape((tq, 1))?;
    let key_pos = Tensor::arange(0u32, tk as u32, dev)?.reshape((1, tk))?;
    let mask = (key_pos.broadcast_gt(&query_pos)?.to_dtype(DType::F32)? * -1e30)?;
    let masked = (scores * scale)?.broadcast_add(&mask)?;
    let probs = if differentiable {
        candle_nn::ops::softmax(&masked, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&masked)?
    };
    let y = probs.to_dtype(dtype)?.matmul(&vh)?; // (b, h, tq, d)
    y.transpose(1, 2)?.reshape((b, tq, c)) // (b, tq, C)
}

pub(crate) struct FusedAttention {
    pub(crate) heads: Heads,
    pub(crate) scale: f32,
}

/// A row-major (b, t, C) view into a storage slice: element (bi, i, col) is at
/// `offset + bi·batch + i·row + col`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub(crate) offset: usize,
    pub(crate) batch: usize,
    pub(crate) row: usize,
}

impl View {
    pub(crate) fn of(layout: &Layout) -> Result<Self> {
        let s = layout.stride();
        if s.len() != 3 || s[2] != 1 {
            candle_core::bail!("fused attention: unexpected strides {s:?}");
        }
        Ok(Self {
            offset: layout.start_offset(),
            batch: s[0],
            row: s[1],
        })
    }
}

impl candle_core::CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, tq, c) = l1.shape().dims3()?;
        let tk = l2.shape().dims3()?.1;
        let (h, d) = (self.heads.n_head, c / self.heads.n_head);
        let (storage, out) = output_like(s1, b * tq * c)?;
        let job = HeadJob {
            q: (src(s1)?, View::of(l1)?),
            k: (src(s2)?, View::of(l2)?),
            v: (src(s3)?, View::of(l3)?),
            dims: (b, tq, tk, c, d),
            group: self.heads.group(),
            scale: self.scale,
            out,
            isa: Isa::get(),
        };
        // One task per (sequence, head, part of the query blocks): enough tasks that 9 heads
        // on 2 threads balance as well as 12 do, few enough that each task's copy of its
        // keys and values stays small next to its products.
        let parts = job.parts(b * h, rayon::current_num_threads());
        let n = parts.len();
        (0..b * h * n).into_par_iter().for_each(|task| {
            let (bh, part) = (task / n, parts[task % n].clone());
            HEAD.with(|buf| {
                // SAFETY: each task writes its own (batch, head, query blocks) of the output.
                unsafe { job.run(bh / h, bh % h, part, &mut buf.borrow_mut()) }
            })
        });
        Ok((storage, Shape::from((b, tq, c))))
    }
}

/// A CPU tensor's elements (f32, bf16 or f16).
fn src(s: &CpuStorage) -> Result<Src<'_>> {
    Ok(match s {
        CpuStorage::F32(v) => Src::F32(v),
        CpuStorage::BF16(v) => Src::Bf16(v),
        CpuStorage::F16(v) => Src::F16(v),
        _ => candle_core::bail!("fused attention: expected f32, bf16 or f16 inputs"),
    })
}

/// A buffer of `len` elements of `like`'s dtype, and a pointer for the tasks to fill it (the
/// pointer stays valid when the buffer moves into the storage: its heap block does not).
fn output_like(like: &CpuStorage, len: usize) -> Result<(CpuStorage, Out)> {
    Ok(match like {
        CpuStorage::F32(_) => {
            let mut v = vec![0f32; len];
            let p = Out::F32(v.as_mut_ptr());
            (CpuStorage::F32(v), p)
        }
        CpuStorage::BF16(_) => {
            let mut v = vec![half::bf16::ZERO; len];
            let p = Out::Bf16(v.as_mut_ptr());
            (CpuStorage::BF16(v), p)
        }
        CpuStorage::F16(_) => {
            let mut v = vec![half::f16::ZERO; len];
            let p = Out::F16(v.as_mut_ptr());
            (CpuStorage::F16(v), p)
        }
        _ => candle_core::bail!("fused attention: expected f32, bf16 or f16 inputs"),
    })
}

/// Per-thread scratch: a task's query, key and value rows copied to f32 (and the keys
/// transposed), the scores of a query block and the inverse of each row's sum of
/// exponentials, and a block of output rows.
#[derive(Default)]
struct HeadBuf {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// The keys transposed, (d, keys) with rows [`key_stride`] apart.
    kt: Vec<f32>,
    scores: Vec<f32>,
    inv: Vec<f32>,
    out: Vec<f32>,
}

thread_local! {
    static HEAD: std::cell::RefCell<HeadBuf> = std::cell::RefCell::new(HeadBuf::default());
}

/// Everything one (batch, head) task needs.
struct HeadJob<'a> {
    q: (Src<'a>, View),
    k: (Src<'a>, View),
    v: (Src<'a>, View),
    /// (b, tq, tk, C, d)
    dims: (usize, usize, usize, usize, usize),
    group: usize,
    scale: f32,
    out: Out,
    isa: Isa,
}

impl HeadJob<'_> {
    /// The query blocks of one head cut into consecutive parts of about equal cost (queries
    /// times keys seen), enough for `8 × threads` tasks over `heads` (sequence, head) pairs;
    /// one part for the few-query form, which runs every query in one task.
    fn parts(&self, heads: usize, threads: usize) -> Vec<Range<usize>> {
        let (_, tq, tk, ..) = self.dims;
        if tq <= FEW_QUERIES {
            return std::iter::once(0..1).collect();
        }
        let blocks = tq.div_ceil(QUERY_BLOCK);
        let cost = |i: usize| {
            let i1 = ((i + 1) * QUERY_BLOCK).min(tq);
            (i1 - i * QUERY_BLOCK) * (tk - tq + i1)
        };
        let total: usize = (0..blocks).map(cost).sum();
        let n = (8 * threads).div_ceil(heads.max(1)).clamp(1, blocks);
        let (mut parts, mut start, mut acc) = (Vec::with_capacity(n), 0, 0);
        for i in 0..blocks {
            acc += cost(i);
            if acc * n >= total * (parts.len() + 1) || i + 1 == blocks {
                parts.push(start..i + 1);
                start = i + 1;
            }
        }
        parts
    }

    /// Attention of query blocks `blocks` of query head `hh` of sequence `bi`: block
    /// `[i0, i1)` against keys `[0, offset + i1)`. Its queries, and the keys and values they
    /// see, are first copied (converted to f32 where they are not) to rows of their own: in
    /// place, a fused projection's rows lie a multiple of 4 KiB apart and crowd a few cache
    /// sets. The exponentials are multiplied by the values unnormalised and each output row
    /// divided by its sum after.
    ///
    /// # Safety
    /// Only this task writes columns `hh·d ..` of these blocks' output rows.
    unsafe fn run(&self, bi: usize, hh: usize, blocks: Range<usize>, buf: &mut HeadBuf) {
        let (_, tq, tk, _, d) = self.dims;
        if tq <= FEW_QUERIES {
            return self.run_few(bi, hh, buf);
        }
        let (kvh, offset) = (hh / self.group, tk - tq);
        let (q0, q1) = (
            blocks.start * QUERY_BLOCK,
            (blocks.end * QUERY_BLOCK).min(tq),
        );
        self.rows(self.q, bi, (q0, hh * d), q1 - q0, &mut buf.q);
        self.rows(self.k, bi, (0, kvh * d), offset + q1, &mut buf.k);
        self.rows(self.v, bi, (0, kvh * d), offset + q1, &mut buf.v);
        transpose_rows(self.isa, &buf.k, d, &mut buf.kt);
        for blk in blocks {
            self.run_block(bi, hh, blk * QUERY_BLOCK - q0, q0, buf);
        }
    }

    /// One query block, its queries from row `at` of `buf.q` (query `q0 + at` of the head).
    ///
    /// # Safety
    /// As [`Self::run`].
    unsafe fn run_block(&self, bi: usize, hh: usize, at: usize, q0: usize, buf: &mut HeadBuf) {
        let (_, tq, tk, c, d) = self.dims;
        let offset = tk - tq;
        let i0 = q0 + at;
        let i1 = (i0 + QUERY_BLOCK).min(tq);
        let (m, keys) = (i1 - i0, offset + i1);
        let (qp, kp, vp) = (buf.q[at * d..].as_ptr(), buf.kt.as_ptr(), buf.v.as_ptr());
        let ks = key_stride(buf.k.len() / d);
        buf.scores.resize(m * keys, 0.0);
        buf.inv.resize(m, 0.0);
        let s = &mut buf.scores[..];
        // Scores (m, keys) = q rows · kᵀ (its rows contiguous along the keys).
        let q_rows = Mat {
            ptr: qp,
            rs: d,
            cs: 1,
        };
        let k_cols = Mat {
            ptr: kp,
            rs: ks,
            cs: 1,
        };
        product(
            self.isa,
            (m, keys, d),
            q_rows,
            k_cols,
            (s.as_mut_ptr(), keys),
            false,
        );
        for (r, (row, inv)) in s.chunks_mut(keys).zip(buf.inv.iter_mut()).enumerate() {
            let visible = offset + i0 + r + 1;
            *inv = 1.0 / exp_row_in_place(&mut row[..visible], self.scale);
            row[visible..].fill(0.0);
        }
        let first = (bi * tq + i0) * c + hh * d;
        let (dst, ld) = match self.out {
            Out::F32(p) => (p.add(first), c),
            _ => {
                buf.out.resize(m * d, 0.0);
                (buf.out.as_mut_ptr(), d)
            }
        };
        // Output rows (m, d) = exponentials · v rows, then each divided by its sum.
        let probs = Mat {
            ptr: s.as_ptr(),
            rs: keys,
            cs: 1,
        };
        let v_rows = Mat {
            ptr: vp,
            rs: d,
            cs: 1,
        };
        product(self.isa, (m, d, keys), probs, v_rows, (dst, ld), false);
        for (r, &inv) in buf.inv.iter().enumerate() {
            let row = std::slice::from_raw_parts_mut(dst.add(r * ld), d);
            map_in_place(row, |x| x * inv);
            if !matches!(self.out, Out::F32(_)) {
                convert::store(self.isa, row, self.out, first + r * c);
            }
        }
    }

    /// The few-query form (decoding): per query, scores against the key rows and the
    /// weighted sum of the value rows, reading the cache in place.
    ///
    /// # Safety
    /// As [`Self::run`].
    unsafe fn run_few(&self, bi: usize, hh: usize, buf: &mut HeadBuf) {
        let (_, tq, tk, c, d) = self.dims;
        let kvh = hh / self.group;
        let (keys, values) = (
            head_rows(self.k, bi, kvh * d, d),
            head_rows(self.v, bi, kvh * d, d),
        );
        let (qsrc, qv) = self.q;
        buf.q.resize(d, 0.0);
        buf.out.resize(d, 0.0);
        buf.scores.resize(tk, 0.0);
        for i in 0..tq {
            let visible = tk - tq + i + 1;
            let first = qv.offset + bi * qv.batch + i * qv.row + hh * d;
            convert::load(self.isa, qsrc, first, &mut buf.q);
            let scores = &mut buf.scores[..visible];
            decode::dots(self.isa, keys, &buf.q, scores);
            softmax_row_in_place(scores, self.scale);
            decode::weighted_sum(self.isa, values, scores, &mut buf.out);
            convert::store(self.isa, &buf.out, self.out, (bi * tq + i) * c + hh * d);
        }
    }

    /// Rows `row0 .. row0 + n` of one head (columns `col .. col + d`) of sequence `bi`, as
    /// f32 rows `d` apart in `scratch`.
    fn rows(
        &self,
        (src, view): (Src, View),
        bi: usize,
        (row0, col): (usize, usize),
        n: usize,
        scratch: &mut Vec<f32>,
    ) {
        let d = self.dims.4;
        let first = view.offset + bi * view.batch + row0 * view.row + col;
        scratch.resize(n * d, 0.0);
        for (r, row) in scratch.chunks_exact_mut(d).enumerate() {
            convert::load(self.isa, src, first + r * view.row, row);
        }
    }
}

/// The row stride of transposed keys: `keys` rounded up to an odd number of 64-byte lines,
/// so that the rows of a panel each sit in their own cache set.
fn key_stride(keys: usize) -> usize {
    (keys.div_ceil(16) | 1) * 16
}

/// `rows` (n, d) transposed into `out` (d, n) with rows [`key_stride`]`(n)` apart.
fn transpose_rows(isa: Isa, rows: &[f32], d: usize, out: &mut Vec<f32>) {
    let n = rows.len() / d;
    let ld = key_stride(n);
    out.resize(d * ld, 0.0);
    // SAFETY: `rows` holds n × d values and `out` d × ld ≥ d × n; they are separate buffers,
    // and f32 values move as their 32-bit patterns.
    unsafe {
        let src = (rows.as_ptr() as *const u32, d);
        transpose(isa, src, (n, d), (out.as_mut_ptr() as *mut u32, ld));
    }
}

/// The rows of one head (columns `col .. col + d`) of sequence `bi`.
fn head_rows<'a>(
    (src, view): (Src<'a>, View),
    bi: usize,
    col: usize,
    d: usize,
) -> decode::HeadRows<'a> {
    decode::HeadRows {
        src,
        first: view.offset + bi * view.batch + col,
        stride: view.row,
        d,
    }
}

pub(crate) fn softmax_row_in_place(x: &mut [f32], scale: f32) {
    simd(
        #[inline(always)]
        || softmax_row_generic(x, scale),
    )
}

/// `e^(scale·x − max)` in place; returns the sum of the exponentials (summed in lanes, as
/// `reductions::sum` does).
fn exp_row_in_place(x: &mut [f32], scale: f32) -> f32 {
    simd(
        #[inline(always)]
        || exp_row_generic(x, scale),
    )
}

#[inline(always)]
fn exp_row_generic(x: &mut [f32], scale: f32) -> f32 {
    let m = max(x) * scale;
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (v, a) in c.iter_mut().zip(acc.iter_mut()) {
            *v = exp(*v * scale - m);
            *a += *v;
        }
    }
    let tail = chunks.into_remainder();
    tail.iter_mut().for_each(|v| *v = exp(*v * scale - m));
    tail.iter().chain(&acc).map(|&v| v as f64).sum::<f64>() as f32
}

/// softmax(scale·x) in place.
#[inline(always)]
fn softmax_row_generic(x: &mut [f32], scale: f32) {
    let inv = 1.0 / exp_row_generic(x, scale);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .unwrap()
    }

    /// Key/value heads repeated for their query groups, so plain multi-head attention on the
    /// result is the independent reference for grouped-query attention.
    fn repeat_heads(t: &Tensor, n_kv: usize, group: usize, d: usize) -> Tensor {
        let heads: Vec<Tensor> = (0..n_kv * group)
            .map(|h| t.narrow(2, (h / group) * d, d).unwrap())
            .collect();
        Tensor::cat(&heads, 2).unwrap()
    }

    #[test]
    fn fused_attention_matches_composed_version() {
        let dev = Device::Cpu;
        // (batch, queries, keys, heads, kv heads, head_dim): single and multiple query blocks,
        // cached keys before the queries, one query, grouped-query heads.
        for (b, tq, tk, h, g, d) in [
            (1, 7, 7, 2, 2, 4),
            (2, 300, 300, 3, 3, 8),
            (1, 5, 200, 2, 2, 4),
            (2, 1, 9, 4, 4, 2),
            (2, 33, 40, 4, 2, 8),
            (1, 150, 150, 6, 1, 4),
        ] {
            let (c, ck) = (h * d, g * d);
            let heads = Heads { n_head: h, n_kv: g };
            let qkv = Tensor::randn(0f32, 1.0, (b, tk, c + 2 * ck), &dev).unwrap();
            // q from the last tq rows of a fused projection (a strided view), k and v whole.
            let q = qkv.narrow(1, tk - tq, tq).unwrap().narrow(2, 0, c).unwrap();
            let k = qkv.narrow(2, c, ck).unwrap();
            let v = qkv.narrow(2, c + ck, ck).unwrap();
            let fast = causal_attention(&q, &k, &v, heads, 0.37).unwrap();
            let slow = causal_attention_composed(&q, &k, &v, heads, 0.37, false).unwrap();
            let diff_path = causal_attention_composed(&q, &k, &v, heads, 0.37, true).unwrap();
            let d2 = max_abs(&slow, &diff_path);
            assert!(d2 < 1e-6, "differentiable softmax differs by {d2:e}");
            let worst = max_abs(&fast, &slow);
            assert!(
                worst < 1e-5,
                "b={b} tq={tq} tk={tk} g={g}: max abs diff {worst:e}"
            );
            let (kr, vr) = (repeat_heads(&k, g, h / g, d), repeat_heads(&v, g, h / g, d));
            let mha = causal_attention_composed(&q, &kr, &vr, Heads::mha(h), 0.37, false).unwrap();
            let worst = max_abs(&fast, &mha);
            assert!(worst < 1e-5, "grouped heads g={g}: max abs diff {worst:e}");
        }
    }

    /// The query blocks of a head are cut into consecutive, non-empty parts that cover them
    /// all, of about equal cost, and as many as the threads call for.
    #[test]
    fn query_blocks_are_cut_into_parts_of_about_equal_cost() {
        let none: &[f32] = &[];
        let view = View {
            offset: 0,
            batch: 0,
            row: 0,
        };
        for (tq, tk, heads, threads, want) in [
            (1024, 1024, 9, 2, 2),
            (1024, 1024, 12, 2, 2),
            (1024, 1024, 32, 2, 1),
            // Eight parts wanted, six possible: the last blocks each hold an eighth or more.
            (1024, 1024, 12, 16, 6),
            (300, 800, 1, 4, 3),
            (3, 10, 4, 2, 1),
        ] {
            let job = HeadJob {
                q: (Src::F32(none), view),
                k: (Src::F32(none), view),
                v: (Src::F32(none), view),
                dims: (1, tq, tk, 64, 64),
                group: 1,
                scale: 1.0,
                out: Out::F32(std::ptr::null_mut()),
                isa: Isa::get(),
            };
            let parts = job.parts(heads, threads);
            assert_eq!(parts.len(), want, "tq={tq} heads={heads} threads={threads}");
            let blocks = if tq <= FEW_QUERIES {
                1
            } else {
                tq.div_ceil(QUERY_BLOCK)
            };
            assert_eq!(parts[0].start, 0);
            assert_eq!(parts.last().unwrap().end, blocks);
            assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
            assert!(parts.iter().all(|p| !p.is_empty()));
            if tq == 1024 && want == 2 {
                // Blocks cost 1..=8 (× 128²): 21 and 15 of 36 rather than 18 and 18.
                assert_eq!(parts, vec![0..6, 6..8]);
            }
        }
    }

    /// The last queries alone (the decoder's trimmed last block) give the rows of the full
    /// result to the bit, whatever the split across query blocks.
    #[test]
    fn trailing_queries_equal_the_full_result_to_the_bit() {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::BF16] {
            for (b, t, h, g, d) in [(2, 300, 3, 3, 8), (1, 260, 4, 2, 16)] {
                let (c, ck) = (h * d, g * d);
                let heads = Heads { n_head: h, n_kv: g };
                let qkv = Tensor::randn(0f32, 1.0, (b, t, c + 2 * ck), &dev)
                    .and_then(|x| x.to_dtype(dtype))
                    .unwrap();
                let q = qkv.narrow(2, 0, c).unwrap();
                let k = qkv.narrow(2, c, ck).unwrap();
                let v = qkv.narrow(2, c + ck, ck).unwrap();
                let full = causal_attention(&q, &k, &v, heads, 0.37).unwrap();
                for tail in [FEW_QUERIES + 1, 100, 128, 129, 170, t - 1] {
                    let last = q.narrow(1, t - tail, tail).unwrap();
                    let got = causal_attention(&last, &k, &v, heads, 0.37).unwrap();
                    let want = full.narrow(1, t - tail, tail).unwrap();
                    let f32 = |x: &Tensor| x.to_dtype(DType::F32).unwrap();
                    let diff = max_abs(&f32(&got), &f32(&want));
                    assert_eq!(diff, 0.0, "{dtype:?} b={b} t={t} tail={tail}");
                }
            }
        }
    }
}
