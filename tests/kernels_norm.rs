//! The LayerNorm and RMSNorm kernels against candle's composed versions (computed in f32), in
//! every compute dtype.

mod common;

use common::tensor_max_diff;

use candle_core::{DType, Device, Tensor};
use gpt_ablate::kernels::norm;

#[test]
fn norms_match_composed_versions_in_every_dtype() {
    let dev = Device::Cpu;
    for c in [7, 64, 333] {
        let x = (Tensor::randn(0f32, 2.0, (2, 9, c), &dev).unwrap() + 0.5).unwrap();
        let w = Tensor::randn(1f32, 0.3, c, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.3, c, &dev).unwrap();
        let zero = b.zeros_like().unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let cast = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let up = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let (xd, wd, bd) = (cast(&x), cast(&w), cast(&b));
            // References from the same rounded inputs, in f32.
            let ln = candle_nn::ops::layer_norm_slow(&up(&xd), &up(&wd), &up(&bd), 1e-5).unwrap();
            let ln0 = candle_nn::ops::layer_norm_slow(&up(&xd), &up(&wd), &zero, 1e-5).unwrap();
            let rms = candle_nn::ops::rms_norm_slow(&up(&xd), &up(&wd), 1e-6).unwrap();
            let got = norm::layer_norm(&xd, &wd, Some(&bd), 1e-5)
                .unwrap()
                .unwrap();
            let got0 = norm::layer_norm(&xd, &wd, None, 1e-5).unwrap().unwrap();
            let got_rms = norm::rms_norm(&xd, &wd, 1e-6).unwrap().unwrap();
            assert_eq!(got.dtype(), dtype);
            // Outputs up to ~4 in size; f32 agrees to rounding, bf16/f16 to a unit or two in
            // the last place (RMSNorm rounds twice, as transformers does).
            let tol = match dtype {
                DType::F32 => 1e-5,
                DType::BF16 => 0.05,
                _ => 0.008,
            };
            for (name, a, b) in [
                ("layer", &got, &ln),
                ("layer, no bias", &got0, &ln0),
                ("rms", &got_rms, &rms),
            ] {
                let worst = tensor_max_diff(a, b);
                assert!(worst < tol, "{name} {dtype:?} c={c}: {worst:e}");
            }
        }
    }
}
