//! Causal self-attention for training (no cache: query i sees keys 0..=i). The forward is
//! the inference kernel. The backward runs per (sequence, key/value head), over that head's
//! query heads and blocks of queries: each block's scores and probabilities are recomputed
//! (so the (b, h, t, t) tensor never exists), then
//! `∂S = P ⊙ (∂P − rowsum(P ⊙ ∂P))·scale` with `∂P = ∂y·Vᵀ`, and
//! `∂q = ∂S·K`, `∂K += ∂Sᵀ·q`, `∂V += Pᵀ·∂y`, single-threaded products on the block.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, new_f32};
use crate::kernels::attention::{row_major, softmax_row_in_place, FusedAttention, Heads, View};
use crate::kernels::gemm::small::{product, Mat};
use crate::kernels::Isa;

/// Queries per block in the backward.
const BLOCK: usize = 64;

/// [`causal_attention`] of the fused projection `qkv` (b·t, H·d + 2·G·d) of `b` sequences
/// of `t`: query columns, then key, then value columns; (b·t, H·d) out. One op, so the
/// backward writes ∂qkv in one buffer (three column slices would each cost a padded copy and
/// a sum in autograd, and each reshape another sum).
pub fn causal_attention_qkv(
    qkv: &Tensor,
    (b, t): (usize, usize),
    heads: Heads,
    head_dim: usize,
    scale: f64,
) -> Result<Option<Tensor>> {
    if !cpu_f32(&[qkv]) {
        return Ok(None);
    }
    let op = FusedQkv {
        att: TrainAttention {
            heads,
            scale: scale as f32,
        },
        head_dim,
        b,
        t,
    };
    qkv.contiguous()?.apply_op1(op).map(Some)
}

/// `softmax(scale·q·kᵀ + causal mask)·v` with heads side by side, q (b, t, H·d), k and v
/// (b, t, G·d) (column slices of a fused projection are fine), with a backward, for f32 CPU
/// tensors; `None` elsewhere.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: Heads,
    scale: f64,
) -> Result<Option<Tensor>> {
    if !cpu_f32(&[q, k, v]) || q.dims3()?.1 != k.dims3()?.1 {
        return Ok(None);
    }
    let op = TrainAttention {
        heads,
        scale: scale as f32,
    };
    row_major(q)?
        .apply_op3(&row_major(k)?, &row_major(v)?, op)
        .map(Some)
}

struct TrainAttention {
    heads: Heads,
    scale: f32,
}

impl CustomOp3 for TrainAttention {
    fn name(&self) -> &'static str {
        "causal-attention-train"
    }

    #[allow(clippy::too_many_arguments)]
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = FusedAttention {
            heads: self.heads,
            scale: self.scale,
        };
        candle_core::CustomOp3::cpu_fwd(&op, s1, l1, s2, l2, s3, l3)
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, c) = q.dims3()?;
        let ck = k.dim(2)?;
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let mut dq = vec![0f32; b * t * c];
        let mut dk = vec![0f32; b * t * ck];
        let mut dv = vec![0f32; b * t * ck];
        let outs = [(&mut dq, 0, c), (&mut dk, 0, ck), (&mut dv, 0, ck)].map(|(v, col, ld)| Dst {
            ptr: Ptr(v[col..].as_mut_ptr()),
            batch: t * ld,
            ld,
        });
        let ins = [operand(&qs, ql)?, operand(&ks, kl)?, operand(&vs, vl)?];
        self.backward(ins, g, (b, t), outs)?;
        Ok((
            Some(new_f32(dq, (b, t, c))?),
            Some(new_f32(dk, (b, t, ck))?),
            Some(new_f32(dv, (b, t, ck))?),
        ))
    }
}

impl TrainAttention {
    /// Fills ∂q, ∂K, ∂V (zeroed) from q, K, V and ∂y, (b, t, H·d) or (b·t, H·d).
    fn backward(
        &self,
        [q, k, v]: [(&[f32], View); 3],
        g: &Tensor,
        (b, t): (usize, usize),
        [dq, dk, dv]: [Dst; 3],
    ) -> Result<()> {
        let c = g.dims().last().copied().unwrap_or(0);
        let g = g.contiguous()?;
        let (gs, gl) = g.storage_and_layout();
        let job = Job {
            q,
            k,
            v,
            g: operand(
                &gs,
                &Layout::contiguous_with_offset((b, t, c), gl.start_offset()),
            )?,
            dq,
            dk,
            dv,
            dims: (t, c / self.heads.n_head),
            group: self.heads.group(),
            scale: self.scale,
        };
        let g_heads = self.heads.n_kv;
        (0..b * g_heads).into_par_iter().for_each(|task| {
            SCRATCH.with(|s| {
                // SAFETY: each task writes only its own sequence's columns of its key/value
                // head in ∂K, ∂V and of that head's query heads in ∂q.
                unsafe { job.run(task / g_heads, task % g_heads, &mut s.borrow_mut()) }
            })
        });
        Ok(())
    }
}

/// [`TrainAttention`] on one fused (b·t, H·d + 2·G·d) input.
struct FusedQkv {
    att: TrainAttention,
    head_dim: usize,
    b: usize,
    t: usize,
}

impl FusedQkv {
    /// Column widths of the query and of the key (= value) slices.
    fn widths(&self) -> (usize, usize) {
        let (h, d) = (self.att.heads, self.head_dim);
        (h.n_head * d, h.n_kv * d)
    }

    /// The (b, t, ·) layouts of the query, key and value columns of a contiguous input.
    fn views(&self, l: &Layout) -> Result<[Layout; 3]> {
        let (qw, kw) = self.widths();
        let w = qw + 2 * kw;
        if l.shape().dims() != [self.b * self.t, w] {
            candle_core::bail!(
                "attention: qkv {:?} for ({}·{}, {w})",
                l.shape(),
                self.b,
                self.t
            );
        }
        let l3 = Layout::contiguous_with_offset((self.b, self.t, w), l.start_offset());
        Ok([
            l3.narrow(2, 0, qw)?,
            l3.narrow(2, qw, kw)?,
            l3.narrow(2, qw + kw, kw)?,
        ])
    }
}

impl CustomOp1 for FusedQkv {
    fn name(&self) -> &'static str {
        "causal-attention-qkv-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let [lq, lk, lv] = self.views(l)?;
        let (y, _) = self.att.cpu_fwd(s, &lq, s, &lk, s, &lv)?;
        Ok((y, Shape::from((self.b * self.t, self.widths().0))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (bt, w) = qkv.dims2()?;
        let (qw, kw) = self.widths();
        let (s, l) = qkv.storage_and_layout();
        let [lq, lk, lv] = self.views(l)?;
        let ins = [operand(&s, &lq)?, operand(&s, &lk)?, operand(&s, &lv)?];
        let mut dqkv = vec![0f32; bt * w];
        let outs = [0, qw, qw + kw].map(|col| Dst {
            ptr: Ptr(dqkv[col..].as_mut_ptr()),
            batch: self.t * w,
            ld: w,
        });
        self.att.backward(ins, g, (self.b, self.t), outs)?;
        new_f32(dqkv, (bt, w)).map(Some)
    }
}

/// A (b, t, ·) f32 operand: its storage's elements and where the rows are.
fn operand<'a>(s: &'a Storage, l: &Layout) -> Result<(&'a [f32], View)> {
    match s {
        Storage::Cpu(CpuStorage::F32(v)) => Ok((v, View::of(l)?)),
        _ => candle_core::bail!("attention backward: f32 CPU tensors only"),
    }
}

/// Where a gradient goes: element (bi, i, col) of a head at `ptr + bi·batch + i·ld + col`.
#[derive(Clone, Copy)]
struct Dst {
    ptr: Ptr,
    batch: usize,
    ld: usize,
}

impl Dst {
    /// Row 0 of sequence `bi`, column `col`, and the row stride.
    fn at(self, bi: usize, col: usize) -> (*mut f32, usize) {
        // SAFETY (of the callers' writes): in bounds of the buffer for bi < b, col < width.
        (unsafe { self.ptr.0.add(bi * self.batch + col) }, self.ld)
    }
}

#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: tasks write disjoint elements through it.
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}

struct Job<'a> {
    q: (&'a [f32], View),
    k: (&'a [f32], View),
    v: (&'a [f32], View),
    g: (&'a [f32], View),
    dq: Dst,
    dk: Dst,
    dv: Dst,
    /// (t, d)
    dims: (usize, usize),
    group: usize,
    scale: f32,
}

/// Per-thread probabilities and their gradient for one block of queries.
#[derive(Default)]
struct Scratch {
    p: Vec<f32>,
    dp: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Pointer to row 0 of sequence `bi`, column `col`, and the row stride.
fn rows((data, view): (&[f32], View), bi: usize, col: usize) -> (*const f32, usize) {
    (
        data[view.offset + bi * view.batch + col..].as_ptr(),
        view.row,
    )
}

impl Job<'_> {
    /// Gradients for key/value head `kvh` of sequence `bi` and its query heads.
    ///
    /// # Safety
    /// Only this task writes those columns of the outputs.
    unsafe fn run(&self, bi: usize, kvh: usize, s: &mut Scratch) {
        let (t, d) = self.dims;
        let (kp, ks) = rows(self.k, bi, kvh * d);
        let (vp, vs) = rows(self.v, bi, kvh * d);
        let (dk, dv) = (self.dk.at(bi, kvh * d), self.dv.at(bi, kvh * d));
        s.p.resize(BLOCK.min(t) * t, 0.0);
        s.dp.resize(BLOCK.min(t) * t, 0.0);
        let isa = Isa::get();
        let a = |ptr: *const f32, rs: usize, cs: usize| Mat { ptr, rs, cs };
        for hh in kvh * self.group..(kvh + 1) * self.group {
            let (qp, qs) = rows(self.q, bi, hh * d);
            let (gp, gs) = rows(self.g, bi, hh * d);
            let (dq, dqs) = self.dq.at(bi, hh * d);
            for i0 in (0..t).step_by(BLOCK) {
                let (m, keys) = ((i0 + BLOCK).min(t) - i0, (i0 + BLOCK).min(t));
                let (p, dp) = (&mut s.p[..m * keys], &mut s.dp[..m * keys]);
                let (qb, gb) = (qp.add(i0 * qs), gp.add(i0 * gs));
                // Scores q·Kᵀ and ∂P = ∂y·Vᵀ, (m, keys).
                product(
                    isa,
                    (m, keys, d),
                    a(qb, qs, 1),
                    a(kp, 1, ks),
                    (p.as_mut_ptr(), keys),
                    false,
                );
                product(
                    isa,
                    (m, keys, d),
                    a(gb, gs, 1),
                    a(vp, 1, vs),
                    (dp.as_mut_ptr(), keys),
                    false,
                );
                for (r, (pr, dr)) in p.chunks_mut(keys).zip(dp.chunks_mut(keys)).enumerate() {
                    let visible = i0 + r + 1;
                    softmax_row_in_place(&mut pr[..visible], self.scale);
                    pr[visible..].fill(0.0);
                    let dot: f32 = pr[..visible]
                        .iter()
                        .zip(&dr[..visible])
                        .map(|(a, b)| a * b)
                        .sum();
                    for (g, &pv) in dr.iter_mut().zip(pr.iter()) {
                        *g = pv * (*g - dot) * self.scale;
                    }
                }
                // ∂q rows = ∂S·K; ∂K += ∂Sᵀ·q rows; ∂V += Pᵀ·∂y rows.
                let (dsp, pp) = (dp.as_ptr(), p.as_ptr());
                product(
                    isa,
                    (m, d, keys),
                    a(dsp, keys, 1),
                    a(kp, ks, 1),
                    (dq.add(i0 * dqs), dqs),
                    false,
                );
                product(isa, (keys, d, m), a(dsp, 1, keys), a(qb, qs, 1), dk, true);
                product(isa, (keys, d, m), a(pp, 1, keys), a(gb, gs, 1), dv, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::causal_attention_composed;
    use crate::model::grad::tests::max_diff;
    use candle_core::{Device, Var};

    enum Path {
        Slices,
        Fused,
        Composed,
    }

    #[test]
    fn gradients_match_autograd_through_the_composed_version() {
        let dev = Device::Cpu;
        // (batch, t, heads, kv heads, head dim): one and several blocks, grouped heads.
        for (b, t, h, g, d) in [
            (1, 7, 2, 2, 4),
            (2, 150, 3, 3, 8),
            (2, 70, 4, 2, 8),
            (1, 65, 6, 1, 4),
        ] {
            let (c, ck) = (h * d, g * d);
            let heads = Heads { n_head: h, n_kv: g };
            let qkv = Var::randn(0f32, 1.0, (b, t, c + 2 * ck), &dev).unwrap();
            let r = Tensor::randn(0f32, 1.0, (b, t, c), &dev).unwrap();
            let run = |path: Path| {
                let x = qkv.as_tensor();
                let (q, k, v) = (
                    x.narrow(2, 0, c).unwrap(),
                    x.narrow(2, c, ck).unwrap(),
                    x.narrow(2, c + ck, ck).unwrap(),
                );
                let y = match path {
                    Path::Slices => causal_attention(&q, &k, &v, heads, 0.37).unwrap().unwrap(),
                    Path::Fused => {
                        let flat = x.reshape((b * t, c + 2 * ck)).unwrap();
                        let y = causal_attention_qkv(&flat, (b, t), heads, d, 0.37)
                            .unwrap()
                            .unwrap();
                        y.reshape((b, t, c)).unwrap()
                    }
                    Path::Composed => {
                        causal_attention_composed(&q, &k, &v, heads, 0.37, true).unwrap()
                    }
                };
                let store = crate::model::grad::tests::gradients_of(&y, &r);
                (y, store.get(x).unwrap().clone())
            };
            let ((yf, gf), (yc, gc)) = (run(Path::Slices), run(Path::Composed));
            assert!(max_diff(&yf, &yc) < 1e-5, "forward b={b} t={t} g={g}");
            let diff = max_diff(&gf, &gc);
            assert!(diff < 1e-4, "b={b} t={t} h={h} g={g}: {diff:e}");
            let (yq, gq) = run(Path::Fused);
            assert!(
                max_diff(&yq, &yf) == 0.0,
                "fused-qkv forward b={b} t={t} g={g}"
            );
            assert!(
                max_diff(&gq, &gf) == 0.0,
                "fused-qkv gradient b={b} t={t} g={g}"
            );
        }
    }
}
