//! Scalar maths in f32, branch-free so that loops calling them vectorise: `exp`, `sigmoid`,
//! `tanh`, `erf` and the two GELUs. This module imports nothing from the crate.

/// `e^x` in f32, ≤ 2 ulp on [−87, 88] (Cephes `expf`), written without branches. Inputs
/// beyond the range are clamped (results stay finite); NaN propagates.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let er = p * r * r + r + 1.0;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    er * f32::from_bits(((ni + 127) << 23) as u32)
}

/// `σ(x) = 1/(1 + e^−x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh` in f32 (Cephes `tanhf`): an odd polynomial below 0.625, `1 − 2/(e^2|x| + 1)` above.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
            * z
            * x
            + x;
    let large = (1.0 - 2.0 / (exp(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        large
    }
}

/// `erf` in f32 (Abramowitz & Stegun 7.1.26 with a Newton-free refinement: absolute error
/// below 1.5e-7).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_7) * t - 0.284_496_72) * t
        + 0.254_829_6)
        * t;
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// GPT-2's `gelu_new` / PyTorch's tanh GELU.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + tanh(K * (x + 0.044_715 * x * x * x)))
}

/// Exact GELU `0.5·x·(1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_its_range() {
        let mut worst = (0.0f64, 0.0f32);
        for i in -86_990..=87_990 {
            let x = i as f32 * 1e-3;
            let want = (x as f64).exp();
            let err = ((exp(x) as f64) - want).abs() / want;
            if err > worst.0 {
                worst = (err, x);
            }
        }
        assert!(
            worst.0 < 3e-7,
            "exp: relative error {:e} at {}",
            worst.0,
            worst.1
        );
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_and_erf_are_accurate() {
        for i in -20_000..=20_000 {
            let x = i as f32 * 1e-3;
            let t = (tanh(x) as f64 - (x as f64).tanh()).abs();
            assert!(t < 2e-7, "tanh({x}) off by {t:e}");
            let e = (erf(x) as f64 - libm_erf(x as f64)).abs();
            assert!(e < 5e-7, "erf({x}) off by {e:e}");
        }
    }

    /// erf by numerical integration of 2/√π·e^{−t²} (Simpson, 2000 panels): independent of
    /// both the kernel and the series in `activation`.
    fn libm_erf(x: f64) -> f64 {
        let n = 2000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }
}
