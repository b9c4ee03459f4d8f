//! The fused attention and rotary kernels in bf16 and f16 against their candle-ops
//! references (f32 ones for attention, same-dtype ones for rotary embeddings).

mod common;

use common::tensor_max_diff;

use candle_core::{DType, Device, Tensor};
use gpt_ablate::kernels::attention::{causal_attention, causal_attention_composed, Heads};
use gpt_ablate::kernels::rope;

#[test]
fn fused_attention_in_half_precision_matches_the_f32_reference() {
    let dev = Device::Cpu;
    // (batch, queries, keys, heads, kv heads, head_dim): one and several query blocks, cached
    // keys before the queries, a single decoded query, grouped-query heads.
    for (b, tq, tk, h, g, d) in [
        (1, 7, 7, 2, 2, 8),
        (2, 200, 200, 3, 3, 16),
        (1, 1, 40, 4, 2, 8),
        (2, 33, 50, 6, 2, 8),
    ] {
        let (c, ck) = (h * d, g * d);
        let qkv = Tensor::randn(0f32, 1.0, (b, tk, c + 2 * ck), &dev).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let x = qkv.to_dtype(dtype).unwrap();
            let q = x.narrow(1, tk - tq, tq).unwrap().narrow(2, 0, c).unwrap();
            let k = x.narrow(2, c, ck).unwrap();
            let v = x.narrow(2, c + ck, ck).unwrap();
            let heads = Heads { n_head: h, n_kv: g };
            let fast = causal_attention(&q, &k, &v, heads, 0.3).unwrap();
            assert_eq!(fast.dtype(), dtype);
            let up = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want =
                causal_attention_composed(&up(&q), &up(&k), &up(&v), heads, 0.3, false).unwrap();
            // The kernel computes in f32 from the same rounded inputs and rounds once.
            let tol = if dtype == DType::BF16 {
                1.0 / 64.0
            } else {
                1.0 / 512.0
            };
            let worst = tensor_max_diff(&fast, &want);
            assert!(
                worst < tol,
                "{dtype:?} b={b} tq={tq} tk={tk} g={g}: {worst:e}"
            );
        }
    }
}

#[test]
fn rope_kernel_in_half_precision_matches_composed_version() {
    let dev = Device::Cpu;
    for (t, h, d, half) in [(5, 2, 8, 4), (7, 3, 16, 2)] {
        let c = h * d;
        let wide = Tensor::randn(0f32, 1.0, (2, t, 3 * c), &dev).unwrap();
        let ang = Tensor::randn(0f32, 2.0, (t, half), &dev).unwrap();
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        for dtype in [DType::BF16, DType::F16] {
            let x = wide.to_dtype(dtype).unwrap().narrow(2, c, c).unwrap();
            let fast = rope::apply(&x, h, &cos, &sin).unwrap();
            let slow = rope::apply_composed(&x, h, &cos, &sin).unwrap();
            assert_eq!(fast.dtype(), dtype);
            // The composed version rounds each product; the kernel rounds once.
            let tol = if dtype == DType::BF16 { 0.05 } else { 0.01 };
            let worst = tensor_max_diff(&fast, &slow);
            assert!(
                worst < tol,
                "{dtype:?} t={t} h={h} d={d} half={half}: {worst:e}"
            );
        }
    }
}
