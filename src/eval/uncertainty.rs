//! How precise a perplexity is: the standard error of the mean per-token NLL, the 95 %
//! interval it gives for perplexity, and llama.cpp's `PPL = X +/- U`.

/// The two-sided 95 % quantile of the standard normal distribution.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Uncertainty figures from per-token NLL sums.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NllSpread {
    /// Standard error of the mean NLL: √((E[v²] − E[v]²) / (n − 1)), i.e. the sample
    /// standard deviation over √n. `None` with fewer than 2 tokens or no spread.
    pub nll_stderr: Option<f64>,
    /// exp(mean ± 1.96 · stderr).
    pub perplexity_ci95: Option<[f64; 2]>,
    /// llama.cpp's `U` in `PPL = X +/- U`: perplexity × stderr, as `llama-perplexity`
    /// computes it (sums in double, then `nll2 /= count; nll /= count; nll2 -= nll²;
    /// sqrt(nll2 / (count − 1)) · ppl`, reported only when `nll2 > 0`).
    pub llama_cpp_plus_minus: Option<f64>,
}

/// The spread of `n` per-token NLLs with sum `sum` and sum of squares `sum_sq`.
pub fn nll_spread(n: usize, sum: f64, sum_sq: f64) -> NllSpread {
    let count = n as f64;
    let mean = sum / count;
    let var = sum_sq / count - mean * mean;
    let stderr = (n >= 2 && var > 0.0).then(|| (var / (count - 1.0)).sqrt());
    let ppl = mean.exp();
    NllSpread {
        nll_stderr: stderr,
        perplexity_ci95: stderr.map(|se| [(mean - Z95 * se).exp(), (mean + Z95 * se).exp()]),
        llama_cpp_plus_minus: stderr.map(|se| se * ppl),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_matches_the_textbook_standard_error() {
        let v = [1.0f64, 2.0, 3.0, 4.0];
        let s = nll_spread(4, v.iter().sum(), v.iter().map(|x| x * x).sum());
        // Sample variance 5/3; standard error √(5/3 / 4).
        let se = (5.0f64 / 3.0 / 4.0).sqrt();
        assert!((s.nll_stderr.unwrap() - se).abs() < 1e-12);
        let ci = s.perplexity_ci95.unwrap();
        assert!((ci[0] - (2.5 - Z95 * se).exp()).abs() < 1e-9 && ci[1] > 2.5f64.exp());
        assert_eq!(nll_spread(2, 4.0, 8.0).nll_stderr, None);
        assert_eq!(nll_spread(1, 4.0, 16.0).llama_cpp_plus_minus, None);
    }
}
