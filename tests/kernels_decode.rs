//! The few-query attention kernels (scores against cache rows, weighted sums of cache rows)
//! against plain f64 loops, on every instruction-set level this machine supports, in every
//! dtype, and through `causal_attention` for single decoded queries.

mod common;

use common::tensor_max_diff;

use candle_core::{DType, Device, Tensor};
use gpt_ablate::kernels::attention::{causal_attention, causal_attention_composed, Heads};
use gpt_ablate::kernels::convert::Src;
use gpt_ablate::kernels::decode::{self, HeadRows};
use gpt_ablate::kernels::Isa;
use half::{bf16, f16};

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

#[test]
fn row_kernels_match_f64_loops() {
    for d in [8, 40, 64, 128, 6] {
        let (n, stride, first) = (37, 3 * d + 5, 7);
        let cache = values(first + n * stride, 1);
        let q = values(d, 2);
        let p = values(n, 3).iter().map(|v| v.abs()).collect::<Vec<_>>();
        let b: Vec<bf16> = cache.iter().map(|&v| bf16::from_f32(v)).collect();
        let h: Vec<f16> = cache.iter().map(|&v| f16::from_f32(v)).collect();
        for isa in Isa::supported() {
            for src in [Src::F32(&cache), Src::Bf16(&b), Src::F16(&h)] {
                let rows = HeadRows {
                    src,
                    first,
                    stride,
                    d,
                };
                let at = |j: usize, i: usize| -> f64 {
                    let k = first + j * stride + i;
                    match src {
                        Src::F32(s) => s[k] as f64,
                        Src::Bf16(s) => s[k].to_f64(),
                        Src::F16(s) => s[k].to_f64(),
                    }
                };
                let mut scores = vec![0f32; n];
                decode::dots(isa, rows, &q, &mut scores);
                for (j, s) in scores.iter().enumerate() {
                    let want: f64 = (0..d).map(|i| at(j, i) * q[i] as f64).sum();
                    assert!(
                        (*s as f64 - want).abs() < 1e-4,
                        "{isa} d={d} dots[{j}]: {s} vs {want}"
                    );
                }
                let mut out = vec![f32::NAN; d];
                decode::weighted_sum(isa, rows, &p, &mut out);
                for (i, o) in out.iter().enumerate() {
                    let want: f64 = (0..n).map(|j| p[j] as f64 * at(j, i)).sum();
                    assert!(
                        (*o as f64 - want).abs() < 1e-4,
                        "{isa} d={d} sum[{i}]: {o} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn decoded_queries_match_the_composed_reference() {
    let dev = Device::Cpu;
    for (tq, tk, h, g, d) in [(1, 70, 4, 2, 64), (3, 20, 3, 3, 40), (2, 9, 2, 1, 128)] {
        let (c, ck) = (h * d, g * d);
        let qkv = Tensor::randn(0f32, 1.0, (2, tk, c + 2 * ck), &dev).unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let x = qkv.to_dtype(dtype).unwrap();
            let q = x.narrow(1, tk - tq, tq).unwrap().narrow(2, 0, c).unwrap();
            let (k, v) = (
                x.narrow(2, c, ck).unwrap(),
                x.narrow(2, c + ck, ck).unwrap(),
            );
            let heads = Heads { n_head: h, n_kv: g };
            let got = causal_attention(&q, &k, &v, heads, 0.2)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let up = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want =
                causal_attention_composed(&up(&q), &up(&k), &up(&v), heads, 0.2, false).unwrap();
            let worst = tensor_max_diff(&got, &want);
            let tol = if dtype == DType::F32 {
                1e-5
            } else {
                1.0 / 64.0
            };
            assert!(worst < tol, "{dtype:?} tq={tq} tk={tk} d={d}: {worst:e}");
        }
    }
}
