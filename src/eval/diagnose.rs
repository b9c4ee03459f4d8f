//! Per-layer diagnostics that put numbers on the note's claims about sigmoid:
//! saturation and derivative size (claim 1), mean activation / centring (claim 2), gradient
//! norms through the depth (claim 1), and what replacing the softmax head by sigmoid scores
//! does (claim 4).
//!
//! Windows are non-overlapping `[k·c, (k+1)·c)` (a final partial window counts if it has ≥ 2
//! tokens). Statistics are over every position of every window and every MLP unit;
//! derivatives are the exact f′ of the activation in force; gradients come from candle's
//! autograd with loss = mean next-token NLL of each window, one window's graph at a time.

use candle_core::{DType, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use crate::kernels;
use crate::model::activation::Activation;
use crate::model::CausalLm;

/// One layer's numbers.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct LayerStats {
    pub layer: usize,
    pub activation: Activation,
    /// Mean and population std of the pre-activation h = c_fc(ln_2(x)).
    pub pre_mean: f64,
    pub pre_std: f64,
    /// Mean and population std of f(h) (claim 2: centring).
    pub post_mean: f64,
    pub post_std: f64,
    /// Mean |f′(h)| (claim 1).
    pub deriv_mean: f64,
    /// Fraction of elements with |f′(h)| < 0.01 (for ReLU: the dead fraction).
    pub saturated_frac: f64,
    /// Mean over windows of ‖∂loss/∂x_l‖₂, x_l the residual stream entering block l.
    pub grad_norm: f64,
    /// Mean over windows of ‖∂loss/∂W_c_fc‖_F.
    pub grad_norm_c_fc: f64,
}

/// The output head, softmax vs sigmoid (claim 4).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HeadStats {
    pub tokens: usize,
    pub softmax_ppl: f64,
    /// Mean over positions of Σ_v σ(z_v): 1 would be a distribution.
    pub sigmoid_mass_mean: f64,
    /// exp(mean −ln σ(z_target)).
    pub sigmoid_ppl_raw: f64,
    /// exp(mean −ln(σ(z_target) / Σ_v σ(z_v))).
    pub sigmoid_ppl_normalized: f64,
}

/// Diagnostics of one model (one activation plan).
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    pub activation: String,
    pub layers_swapped: Vec<usize>,
    pub windows: usize,
    pub layers: Vec<LayerStats>,
    pub head: HeadStats,
}

/// `[k·c, (k+1)·c)` windows over `n` tokens; a final partial window needs ≥ 2 tokens.
pub fn diagnose_windows(n: usize, context: usize) -> Vec<(usize, usize)> {
    (0..n)
        .step_by(context.max(1))
        .map(|b| (b, (b + context).min(n)))
        .filter(|(b, e)| e - b >= 2)
        .collect()
}

#[derive(Default, Clone)]
struct Acc {
    n: f64,
    pre: f64,
    pre2: f64,
    post: f64,
    post2: f64,
    deriv: f64,
    saturated: f64,
    grad: f64,
    grad_fc: f64,
}

impl Acc {
    fn merged(mut self, other: Self) -> Self {
        self.add(&other);
        self
    }

    fn add(&mut self, o: &Self) {
        self.n += o.n;
        self.pre += o.pre;
        self.pre2 += o.pre2;
        self.post += o.post;
        self.post2 += o.post2;
        self.deriv += o.deriv;
        self.saturated += o.saturated;
        self.grad += o.grad;
        self.grad_fc += o.grad_fc;
    }
}

/// A window length the model cannot take.
#[derive(Debug, thiserror::Error)]
#[error("context must be between 2 and the model's n_positions ({n_positions}), got {context}")]
pub struct ContextOutOfRange {
    pub context: usize,
    pub n_positions: usize,
}

impl crate::eval::FieldError for ContextOutOfRange {
    fn field(&self) -> Option<&'static str> {
        Some("context")
    }
}

/// Runs the diagnostics of `model` over `tokens` with windows of `context` tokens.
pub fn diagnose(model: &dyn CausalLm, tokens: &[u32], context: usize) -> anyhow::Result<Diagnosis> {
    let cfg = model.info();
    if context < 2 || context > cfg.n_positions {
        return Err(ContextOutOfRange {
            context,
            n_positions: cfg.n_positions,
        }
        .into());
    }
    if let Some(&id) = tokens.iter().find(|&&id| id as usize >= cfg.vocab_size) {
        anyhow::bail!(
            "token id {id} is outside the model's vocabulary ({} entries)",
            cfg.vocab_size
        );
    }
    let windows = diagnose_windows(tokens.len(), context);
    if windows.is_empty() {
        anyhow::bail!(
            "the text has {} token(s); diagnostics need at least 2",
            tokens.len()
        );
    }
    let plan = model.plan();
    let mut acc = vec![Acc::default(); cfg.n_layer];
    let (mut nll, mut mass, mut sig_raw, mut sig_norm, mut count) =
        (0f64, 0f64, 0f64, 0f64, 0usize);
    for (wi, &(b, e)) in windows.iter().enumerate() {
        let ctx = |what: &str| format!("{what} in window {wi} (tokens {b}..{e})");
        let input = Tensor::from_slice(&tokens[b..e], (1, e - b), model.device())?;
        let trace = model
            .forward_traced(&input)
            .map_err(|err| anyhow::anyhow!("{}: {err}", ctx("forward pass")))?;
        let logits = trace.logits.narrow(0, 0, e - b - 1)?; // (t−1, vocab)
        let targets = Tensor::from_slice(&tokens[b + 1..e], e - b - 1, model.device())?;
        let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, 1)?;
        let loss = logp.gather(&targets.unsqueeze(1)?, 1)?.neg()?.mean_all()?;
        let grads = loss
            .backward()
            .map_err(|err| anyhow::anyhow!("{}: {err}", ctx("backward pass")))?;
        for (l, a) in acc.iter_mut().enumerate() {
            let g = grads
                .get(trace.probes[l].as_tensor())
                .ok_or_else(|| anyhow::anyhow!("{}", ctx("no gradient")))?;
            a.grad += l2(g)?;
            let g = grads
                .get(trace.ffn_weights[l].as_tensor())
                .ok_or_else(|| anyhow::anyhow!("{}", ctx("no gradient")))?;
            a.grad_fc += l2(g)?;
            let act = plan.per_layer[l];
            let h: Vec<f32> = trace.pre_activations[l]
                .detach()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()?;
            let part = h
                .par_chunks(64 * 1024)
                .map(|chunk| {
                    let mut p = Acc::default();
                    for &x in chunk {
                        let x = x as f64;
                        let (f, d) = (act.eval_f64(x), act.derivative_f64(x).abs());
                        p.n += 1.0;
                        p.pre += x;
                        p.pre2 += x * x;
                        p.post += f;
                        p.post2 += f * f;
                        p.deriv += d;
                        p.saturated += f64::from(u8::from(d < 0.01));
                    }
                    p
                })
                .reduce(Acc::default, Acc::merged);
            a.add(&part);
        }
        let head = head_sums(&logits.detach().to_dtype(DType::F32)?, &tokens[b + 1..e])?;
        nll += head.0;
        mass += head.1;
        sig_raw += head.2;
        sig_norm += head.3;
        count += e - b - 1;
        if !nll.is_finite() {
            anyhow::bail!("{}", ctx("non-finite loss"));
        }
    }
    let nw = windows.len() as f64;
    let layers = acc
        .iter()
        .enumerate()
        .map(|(l, a)| {
            let mean = |s: f64| s / a.n;
            let std = |s: f64, s2: f64| (mean(s2) - mean(s) * mean(s)).max(0.0).sqrt();
            LayerStats {
                layer: l,
                activation: plan.per_layer[l],
                pre_mean: mean(a.pre),
                pre_std: std(a.pre, a.pre2),
                post_mean: mean(a.post),
                post_std: std(a.post, a.post2),
                deriv_mean: mean(a.deriv),
                saturated_frac: mean(a.saturated),
                grad_norm: a.grad / nw,
                grad_norm_c_fc: a.grad_fc / nw,
            }
        })
        .collect();
    let n = count as f64;
    Ok(Diagnosis {
        activation: plan.describe(),
        layers_swapped: plan.swapped_layers(),
        windows: windows.len(),
        layers,
        head: HeadStats {
            tokens: count,
            softmax_ppl: (nll / n).exp(),
            sigmoid_mass_mean: mass / n,
            sigmoid_ppl_raw: (sig_raw / n).exp(),
            sigmoid_ppl_normalized: (sig_norm / n).exp(),
        },
    })
}

/// The human-readable report: a per-layer table (both models when swapped) and one line per
/// claim comparing the original activation with the swapped one.
pub fn report(main: &Diagnosis, original: Option<&Diagnosis>) -> String {
    let mut s = String::new();
    let mut table = |d: &Diagnosis, title: &str| {
        s.push_str(&format!(
            "{title} ({} windows, {} target tokens)\n",
            d.windows, d.head.tokens
        ));
        s.push_str("| layer | activation   | pre mean | pre std | post mean | post std | mean |f′| | saturated |  ‖∂L/∂x‖ | ‖∂L/∂W_fc‖ |\n");
        s.push_str("|------:|--------------|---------:|--------:|----------:|---------:|----------:|----------:|---------:|-----------:|\n");
        for l in &d.layers {
            s.push_str(&format!(
                "| {:>5} | {:<12} | {:>8.4} | {:>7.4} | {:>9.4} | {:>8.4} | {:>9.4} | {:>8.2}% | {:>8.4} | {:>10.4} |\n",
                l.layer, l.activation.name(), l.pre_mean, l.pre_std, l.post_mean, l.post_std,
                l.deriv_mean, 100.0 * l.saturated_frac, l.grad_norm, l.grad_norm_c_fc
            ));
        }
        s.push('\n');
    };
    if let Some(o) = original {
        table(o, &format!("original: {}", o.activation));
    }
    table(
        main,
        &format!(
            "{}: {}",
            if original.is_some() {
                "swapped"
            } else {
                "model"
            },
            main.activation
        ),
    );
    let avg = |d: &Diagnosis, f: fn(&LayerStats) -> f64, only: &[usize]| {
        let ls: Vec<&LayerStats> = d
            .layers
            .iter()
            .filter(|l| only.is_empty() || only.contains(&l.layer))
            .collect();
        ls.iter().map(|l| f(l)).sum::<f64>() / ls.len().max(1) as f64
    };
    let only = &main.layers_swapped;
    let pair = |f: fn(&LayerStats) -> f64, fmt: &dyn Fn(f64) -> String| match original {
        Some(o) => format!(
            "{} {} → {} {}",
            o.activation,
            fmt(avg(o, f, only)),
            main.activation,
            fmt(avg(main, f, only))
        ),
        None => format!("{} {}", main.activation, fmt(avg(main, f, only))),
    };
    let num = |v: f64| format!("{v:.4}");
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    let scope = if only.is_empty() {
        "all layers".to_string()
    } else {
        format!(
            "layers {}",
            crate::model::plan::format_indices(only.iter().copied())
        )
    };
    s.push_str("Claims (averages over ");
    s.push_str(&scope);
    s.push_str("):\n");
    s.push_str(&format!(
        "  1. vanishing gradients — mean |f′(h)|: {}; |f′| < 0.01: {}\n",
        pair(|l| l.deriv_mean, &num),
        pair(|l| l.saturated_frac, &pct)
    ));
    let first_last = |d: &Diagnosis| {
        let (a, b) = (
            d.layers.first().map_or(0.0, |l| l.grad_norm),
            d.layers.last().map_or(0.0, |l| l.grad_norm),
        );
        format!("{} ‖∂L/∂x‖ layer 0 {a:.4}, last {b:.4}", d.activation)
    };
    let grads = match original {
        Some(o) => format!("{}; {}", first_last(o), first_last(main)),
        None => first_last(main),
    };
    s.push_str(&format!("     gradient norms through depth: {grads}\n"));
    s.push_str(&format!(
        "  2. centring — mean activation f(h): {}\n",
        pair(|l| l.post_mean, &num)
    ));
    let h = &main.head;
    s.push_str(&format!(
        "  4. output layer — softmax perplexity {:.3}; Σ_v σ(z_v) averages {:.2} (not 1: no distribution); sigmoid scores as probabilities: perplexity {:.4} raw, {:.3} normalised\n",
        h.softmax_ppl, h.sigmoid_mass_mean, h.sigmoid_ppl_raw, h.sigmoid_ppl_normalized
    ));
    s
}

fn l2(t: &Tensor) -> candle_core::Result<f64> {
    t.to_dtype(DType::F64)?
        .sqr()?
        .sum_all()?
        .sqrt()?
        .to_scalar::<f64>()
}

/// ln σ(z) without overflow: min(z, 0) − ln(1 + e^−|z|).
fn log_sigmoid(z: f64) -> f64 {
    z.min(0.0) - (-z.abs()).exp().ln_1p()
}

/// Per window: Σ softmax NLL, Σ_positions Σ_v σ(z_v), Σ −ln σ(z_t), Σ −ln(σ(z_t)/Σσ).
fn head_sums(logits: &Tensor, targets: &[u32]) -> candle_core::Result<(f64, f64, f64, f64)> {
    let lse: Vec<f32> = kernels::logsumexp_last_dim(logits)?.to_vec1()?;
    let rows: Vec<Vec<f32>> = logits.to_vec2()?;
    let mut out = (0f64, 0f64, 0f64, 0f64);
    for ((row, &t), &lse) in rows.iter().zip(targets).zip(&lse) {
        let z = row[t as usize] as f64;
        let total: f64 = row.iter().map(|&v| log_sigmoid(v as f64).exp()).sum();
        out.0 += lse as f64 - z;
        out.1 += total;
        out.2 -= log_sigmoid(z);
        out.3 -= log_sigmoid(z) - total.ln();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_disjoint_and_drop_a_last_single_token() {
        assert_eq!(diagnose_windows(10, 4), vec![(0, 4), (4, 8), (8, 10)]);
        assert_eq!(diagnose_windows(9, 4), vec![(0, 4), (4, 8)]);
        assert_eq!(diagnose_windows(1, 4), vec![]);
    }

    #[test]
    fn log_sigmoid_is_stable() {
        for z in [-800.0f64, -30.0, -1.0, 0.0, 1.0, 30.0, 800.0] {
            let want = if z > -30.0 {
                (1.0 / (1.0 + (-z).exp())).ln()
            } else {
                z
            };
            assert!((log_sigmoid(z) - want).abs() < 1e-12, "{z}");
        }
    }
}
