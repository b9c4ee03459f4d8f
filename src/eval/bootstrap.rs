//! Paired block bootstrap over windows: 95 % intervals for a variant's mean NLL difference
//! against the baseline, and for its perplexity.
//!
//! Tokens inside a window share their context, so they are not independent; windows are
//! resampled whole (with replacement, as many as there are), and each replicate's statistic
//! is a ratio of sums over the drawn windows: Σ(NLL_variant − NLL_baseline) / Σ tokens, and
//! exp(Σ NLL_variant / Σ tokens). The interval is the 2.5 % and 97.5 % percentiles of the
//! replicates (linear interpolation between order statistics). The generator is SplitMix64,
//! so a seed gives the same interval on every machine.

use serde::{Deserialize, Serialize};

/// How many replicates and from which seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapSettings {
    pub samples: usize,
    pub seed: u64,
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        Self {
            samples: 2000,
            seed: 0,
        }
    }
}

/// Per-window sums of a cell's paired per-token NLLs, in window order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowSums {
    tokens: Vec<u32>,
    variant: Vec<f64>,
    diff: Vec<f64>,
    last_window: Option<usize>,
}

impl WindowSums {
    /// Adds a chunk of window `window`: the variant's and the baseline's NLL per token.
    pub fn add(&mut self, window: usize, variant: &[f64], baseline: &[f64]) {
        if self.last_window != Some(window) {
            self.tokens.push(0);
            self.variant.push(0.0);
            self.diff.push(0.0);
            self.last_window = Some(window);
        }
        let i = self.tokens.len() - 1;
        self.tokens[i] += variant.len() as u32;
        for (&v, &b) in variant.iter().zip(baseline) {
            self.variant[i] += v;
            self.diff[i] += v - b;
        }
    }

    pub fn windows(&self) -> usize {
        self.tokens.len()
    }
}

/// 95 % intervals of a cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intervals {
    /// Of the mean NLL difference, variant − baseline (nats/token).
    pub delta_nll: [f64; 2],
    pub perplexity: [f64; 2],
}

/// The paired block-bootstrap intervals; `None` with fewer than two windows.
pub fn bootstrap(sums: &WindowSums, settings: &BootstrapSettings) -> Option<Intervals> {
    let b = sums.windows();
    if b < 2 || settings.samples == 0 {
        return None;
    }
    let mut rng = SplitMix64(settings.seed);
    let (mut deltas, mut ppls) = (Vec::new(), Vec::new());
    for _ in 0..settings.samples {
        let (mut n, mut v, mut d) = (0u64, 0f64, 0f64);
        for _ in 0..b {
            let i = rng.below(b);
            n += u64::from(sums.tokens[i]);
            v += sums.variant[i];
            d += sums.diff[i];
        }
        let n = n.max(1) as f64;
        deltas.push(d / n);
        ppls.push((v / n).exp());
    }
    Some(Intervals {
        delta_nll: percentiles(deltas),
        perplexity: percentiles(ppls),
    })
}

/// The 2.5 % and 97.5 % percentiles (numpy's default linear interpolation).
fn percentiles(mut x: Vec<f64>) -> [f64; 2] {
    x.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let h = (x.len() - 1) as f64 * p;
        let lo = h.floor() as usize;
        let hi = (lo + 1).min(x.len() - 1);
        x[lo] + (h - lo as f64) * (x[hi] - x[lo])
    };
    [q(0.025), q(0.975)]
}

/// Whether an interval lies entirely on one side of zero.
pub fn excludes_zero(ci: [f64; 2]) -> bool {
    ci[0] > 0.0 || ci[1] < 0.0
}

/// SplitMix64 (Steele, Lea & Flood 2014): small, fast, the same stream everywhere.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2⁻³² for any window count).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(shift: f64, windows: usize) -> WindowSums {
        let mut s = WindowSums::default();
        for w in 0..windows {
            let base: Vec<f64> = (0..8)
                .map(|t| 3.0 + ((w * 7 + t) % 5) as f64 * 0.3)
                .collect();
            let var: Vec<f64> = base
                .iter()
                .enumerate()
                .map(|(t, b)| b + shift + (t % 3) as f64 * 0.01)
                .collect();
            s.add(w, &var[..4], &base[..4]);
            s.add(w, &var[4..], &base[4..]);
        }
        s
    }

    #[test]
    fn intervals_contain_zero_for_identical_models_and_exclude_it_for_shifted_ones() {
        let set = BootstrapSettings::default();
        let same = bootstrap(&sums(0.0, 1).clone(), &set);
        assert_eq!(same, None, "one window: no interval");
        let mut id = WindowSums::default();
        for w in 0..10 {
            id.add(w, &[1.0, 2.0], &[1.0, 2.0]);
        }
        let ci = bootstrap(&id, &set).unwrap();
        assert_eq!(ci.delta_nll, [0.0, 0.0]);
        assert!(!excludes_zero(ci.delta_nll));
        let shifted = bootstrap(&sums(0.5, 30), &set).unwrap();
        assert!(
            excludes_zero(shifted.delta_nll) && shifted.delta_nll[0] > 0.49,
            "{shifted:?}"
        );
        assert!(shifted.perplexity[0] < shifted.perplexity[1]);
    }

    #[test]
    fn the_same_seed_gives_the_same_interval() {
        let s = sums(0.01, 40);
        let a = bootstrap(
            &s,
            &BootstrapSettings {
                samples: 500,
                seed: 3,
            },
        );
        let b = bootstrap(
            &s,
            &BootstrapSettings {
                samples: 500,
                seed: 3,
            },
        );
        let c = bootstrap(
            &s,
            &BootstrapSettings {
                samples: 500,
                seed: 4,
            },
        );
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(percentiles(vec![4.0, 1.0, 3.0, 2.0]), [1.075, 3.925]);
    }
}
