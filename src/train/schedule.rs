//! The learning rate of each step: linear warm-up from 0, then cosine decay to 0 at the last
//! step — transformers' `get_cosine_schedule_with_warmup` (half a cycle), step k (from 0)
//! using the factor of k as `LambdaLR` does.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    pub warmup: usize,
    pub steps: usize,
}

impl Schedule {
    /// The learning rate of step `k` (0-based).
    pub fn at(&self, k: usize) -> f64 {
        if k < self.warmup {
            return self.lr * k as f64 / self.warmup.max(1) as f64;
        }
        let progress =
            (k - self.warmup) as f64 / (self.steps.saturating_sub(self.warmup)).max(1) as f64;
        self.lr * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_as_a_cosine() {
        let s = Schedule {
            lr: 1.0,
            warmup: 4,
            steps: 12,
        };
        let lrs: Vec<f64> = (0..12).map(|k| s.at(k)).collect();
        assert_eq!(&lrs[..5], &[0.0, 0.25, 0.5, 0.75, 1.0]);
        assert!((s.at(8) - 0.5).abs() < 1e-12);
        assert!(lrs[4..].windows(2).all(|w| w[1] < w[0]));
        assert!(s.at(12).abs() < 1e-12);
        let none = Schedule { warmup: 0, ..s };
        assert_eq!(none.at(0), 1.0);
    }
}
