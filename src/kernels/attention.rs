//! Causal multi-head attention: a fused CPU kernel (f32; grouped-query heads) and the
//! candle-ops version used on other devices and dtypes, and by autograd.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::math::exp;
use super::reductions::{max, sum};

/// Queries per block in the fused attention: block `[i0, i1)` only multiplies against keys
/// `[0, offset + i1)`, which skips most of the masked upper triangle.
const QUERY_BLOCK: usize = 128;

/// Causal multi-head attention `softmax(scale·q·kᵀ + mask)·v`, heads side by side in the last
/// dimension: `q` (b, tq, H·d), `k` and `v` (b, tk, G·d) with `tk ≥ tq`, where query `i` sees
/// keys `0 ..= tk − tq + i` (the first `tk − tq` keys are cached positions) and query head `h`
/// reads key/value head `h / (H/G)` (grouped-query attention; G = H is plain multi-head).
/// Returns (b, tq, H·d). The inputs may be column slices of a fused qkv output.
///
/// On CPU in f32 this is one fused kernel: heads run in parallel, each with single-threaded
/// gemm calls on query blocks and a scratch buffer for scores, so the (b, h, t, t) score
/// tensor never exists. Elsewhere the same maths is composed from candle ops.
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
    let cpu_f32 = q.device().is_cpu() && [q, k, v].iter().all(|t| t.dtype() == DType::F32);
    if cpu_f32 {
        let row_major = |t: &Tensor| -> Result<Tensor> {
            if t.stride()[2] == 1 {
                Ok(t.clone())
            } else {
                t.contiguous()
            }
        };
        let op = FusedAttention {
            heads,
            scale: scale as f32,
        };
        return row_major(q)?.apply_op3_no_bwd(&row_major(k)?, &row_major(v)?, &op);
    }
    causal_attention_composed(q, k, v, heads, scale, false)
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

struct FusedAttention {
    heads: Heads,
    scale: f32,
}

/// A row-major (b, t, C) view into a storage slice: element (bi, i, col) is at
/// `offset + bi·batch + i·row + col`.
#[derive(Clone, Copy)]
struct View {
    offset: usize,
    batch: usize,
    row: usize,
}

impl View {
    fn of(layout: &Layout) -> Result<Self> {
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

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a distinct (batch, head) column block of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `i` must be within the allocation.
    unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
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
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (s1, s2, s3) else {
            candle_core::bail!("fused attention: expected f32 inputs")
        };
        let (b, tq, c) = l1.shape().dims3()?;
        let tk = l2.shape().dims3()?.1;
        let (qv, kv, vv) = (View::of(l1)?, View::of(l2)?, View::of(l3)?);
        let (h, d) = (self.heads.n_head, c / self.heads.n_head);
        let group = self.heads.group();
        let offset = tk - tq;
        let mut out = vec![0f32; b * tq * c];
        let out_ptr = OutPtr(out.as_mut_ptr());
        let scale = self.scale;
        (0..b * h).into_par_iter().for_each(|task| {
            let (bi, hh) = (task / h, task % h);
            let qp = &q[qv.offset + bi * qv.batch + hh * d..];
            let kvh = hh / group;
            let kp = &k[kv.offset + bi * kv.batch + kvh * d..];
            let vp = &v[vv.offset + bi * vv.batch + kvh * d..];
            let mut scores = vec![0f32; QUERY_BLOCK.min(tq) * tk];
            for i0 in (0..tq).step_by(QUERY_BLOCK) {
                let i1 = (i0 + QUERY_BLOCK).min(tq);
                let (m, keys) = (i1 - i0, offset + i1);
                let s = &mut scores[..m * keys];
                // SAFETY: all pointers address in-bounds elements of the slices above for the
                // given shapes and strides (checked by the layouts), and the destination is
                // this task's own scratch buffer.
                unsafe {
                    gemm::gemm(
                        m,
                        keys,
                        d,
                        s.as_mut_ptr(),
                        1,
                        keys as isize,
                        false,
                        qp[i0 * qv.row..].as_ptr(),
                        1,
                        qv.row as isize,
                        kp.as_ptr(),
                        kv.row as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for (r, row) in s.chunks_mut(keys).enumerate() {
                    let visible = offset + i0 + r + 1;
                    softmax_row_in_place(&mut row[..visible], scale);
                    row[visible..].fill(0.0);
                }
                // SAFETY: `s` is (m, keys) row-major; v rows `0..keys` are in bounds; the
                // destination block (rows i0..i1 of batch bi, columns hh·d..(hh+1)·d) is
                // written by this task only.
                unsafe {
                    gemm::gemm(
                        m,
                        d,
                        keys,
                        out_ptr.at((bi * tq + i0) * c + hh * d),
                        1,
                        c as isize,
                        false,
                        s.as_ptr(),
                        1,
                        keys as isize,
                        vp.as_ptr(),
                        1,
                        vv.row as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, tq, c))))
    }
}

fn softmax_row_in_place(x: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { softmax_row_avx2(x, scale) };
        return;
    }
    softmax_row_generic(x, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(x: &mut [f32], scale: f32) {
    softmax_row_generic(x, scale)
}

/// softmax(scale·x) in place.
#[inline(always)]
fn softmax_row_generic(x: &mut [f32], scale: f32) {
    let m = max(x) * scale;
    for v in x.iter_mut() {
        *v = exp(*v * scale - m);
    }
    let inv = 1.0 / sum(x);
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
}
