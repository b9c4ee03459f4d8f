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

use super::plan::{ScoringPlan, Window};
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

/// Runs the diagnostics of `model` over `tokens` with windows of `context` tokens (the
/// `disjoint` protocol's windows).
pub fn diagnose(model: &dyn CausalLm, tokens: &[u32], context: usize) -> anyhow::Result<Diagnosis> {
    diagnose_with_progress(model, tokens, context, &mut |_, _| {})
}

/// [`diagnose`], calling `progress(windows done, windows)` after each window.
pub fn diagnose_with_progress(
    model: &dyn CausalLm,
    tokens: &[u32],
    context: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Diagnosis> {
    let cfg = model.info();
    if context < 2 || context > cfg.n_positions {
        return Err(ContextOutOfRange {
            context,
            n_positions: cfg.n_positions,
        }
        .into());
    }
    let plan = ScoringPlan::disjoint(tokens.to_vec(), context);
    diagnose_plan(model, &plan, progress)
}

/// Runs the diagnostics of `model` over the windows of `plan`: layer statistics over every
/// position each window feeds, the loss and head statistics over the targets it scores;
/// `progress(windows done, windows)` is called after each window.
pub fn diagnose_plan(
    model: &dyn CausalLm,
    plan: &ScoringPlan,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<Diagnosis> {
    let windows = scoring_windows(model, plan)?;
    let mut acc = vec![Acc::default(); model.info().n_layer];
    let mut head = HeadAcc::default();
    for (wi, w) in windows.iter().enumerate() {
        window_pass(model, plan, wi, w, &mut acc, &mut head)?;
        progress(wi + 1, windows.len());
    }
    let acts = model.plan();
    let nw = windows.len() as f64;
    let layers = acc
        .iter()
        .enumerate()
        .map(|(l, a)| {
            let mean = |s: f64| s / a.n;
            let std = |s: f64, s2: f64| (mean(s2) - mean(s) * mean(s)).max(0.0).sqrt();
            LayerStats {
                layer: l,
                activation: acts.per_layer[l],
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
    let n = head.count as f64;
    Ok(Diagnosis {
        activation: acts.describe(),
        layers_swapped: acts.swapped_layers(),
        windows: windows.len(),
        layers,
        head: HeadStats {
            tokens: head.count,
            softmax_ppl: (head.nll / n).exp(),
            sigmoid_mass_mean: head.mass / n,
            sigmoid_ppl_raw: (head.sig_raw / n).exp(),
            sigmoid_ppl_normalized: (head.sig_norm / n).exp(),
        },
    })
}

/// The windows that score something, after checking the plan fits the model.
fn scoring_windows(model: &dyn CausalLm, plan: &ScoringPlan) -> anyhow::Result<Vec<Window>> {
    let cfg = model.info();
    let ids = plan.sequences.iter().flat_map(|s| s.tokens.iter());
    if let Some(&id) = ids.clone().find(|&&id| id as usize >= cfg.vocab_size) {
        anyhow::bail!(
            "token id {id} is outside the model's vocabulary ({} entries)",
            cfg.vocab_size
        );
    }
    if let Some(w) = plan.windows.iter().find(|w| w.len() > cfg.n_positions) {
        let n = cfg.n_positions;
        anyhow::bail!(
            "a window feeds {} tokens, more than the model's n_positions ({n})",
            w.len()
        );
    }
    let windows: Vec<Window> = plan
        .windows
        .iter()
        .copied()
        .filter(|w| w.scored() > 0)
        .collect();
    if windows.is_empty() {
        let n = ids.count();
        anyhow::bail!("the text has {n} token(s); diagnostics need at least 2");
    }
    Ok(windows)
}

/// Sums of the head statistics over scored targets.
#[derive(Default)]
struct HeadAcc {
    nll: f64,
    mass: f64,
    sig_raw: f64,
    sig_norm: f64,
    count: usize,
}

/// One window: forward and backward through the traced pass, adding every layer's
/// statistics and gradient norms to `acc` and the scored targets' head statistics to `head`.
fn window_pass(
    model: &dyn CausalLm,
    plan: &ScoringPlan,
    wi: usize,
    w: &Window,
    acc: &mut [Acc],
    head: &mut HeadAcc,
) -> anyhow::Result<()> {
    let (b, e) = (w.begin, w.end);
    let ctx = |what: &str| format!("{what} in window {wi} (tokens {b}..{e})");
    let input = Tensor::from_slice(plan.input(w), (1, e - b), model.device())?;
    let trace = model
        .forward_traced(&input)
        .map_err(|err| anyhow::anyhow!("{}: {err}", ctx("forward pass")))?;
    let target_ids = plan.targets(w);
    let logits = trace.logits.narrow(0, w.score_from - 1 - b, w.scored())?; // (targets, vocab)
    let targets = Tensor::from_slice(target_ids, w.scored(), model.device())?;
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, 1)?;
    let loss = logp.gather(&targets.unsqueeze(1)?, 1)?.neg()?.mean_all()?;
    let grads = loss
        .backward()
        .map_err(|err| anyhow::anyhow!("{}: {err}", ctx("backward pass")))?;
    let acts = model.plan();
    for (l, a) in acc.iter_mut().enumerate() {
        let g = grads
            .get(&trace.probes[l])
            .ok_or_else(|| anyhow::anyhow!("{}", ctx("no gradient")))?;
        a.grad += l2(g)?;
        let g = grads
            .get(trace.ffn_weights[l].as_tensor())
            .ok_or_else(|| anyhow::anyhow!("{}", ctx("no gradient")))?;
        a.grad_fc += l2(g)?;
        let h: Vec<f32> = trace.pre_activations[l]
            .detach()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        a.add(&layer_sums(acts.per_layer[l], &h));
    }
    let sums = head_sums(&logits.detach().to_dtype(DType::F32)?, target_ids)?;
    head.nll += sums.0;
    head.mass += sums.1;
    head.sig_raw += sums.2;
    head.sig_norm += sums.3;
    head.count += w.scored();
    if !head.nll.is_finite() {
        anyhow::bail!("{}", ctx("non-finite loss"));
    }
    Ok(())
}

/// Sums of h, h², f(h), f(h)², |f′(h)| and |f′(h)| < 0.01 over a layer's pre-activations:
/// chunks in parallel, their sums added in chunk order (so the result does not depend on how
/// the threads split the work).
fn layer_sums(act: Activation, h: &[f32]) -> Acc {
    h.par_chunks(64 * 1024)
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
        .collect::<Vec<_>>()
        .into_iter()
        .fold(Acc::default(), Acc::merged)
}

/// The human-readable report: a per-layer table (both models when swapped) and one line per
/// claim comparing the original activation with the swapped one.
pub fn report(main: &Diagnosis, original: Option<&Diagnosis>) -> String {
    let mut s = String::new();
    if let Some(o) = original {
        s.push_str(&layer_table(o, &format!("original: {}", o.activation)));
    }
    let title = match original {
        Some(_) => format!("swapped: {}", main.activation),
        None => format!("model: {}", main.activation),
    };
    s.push_str(&layer_table(main, &title));
    s.push_str(&claims(main, original));
    s
}

/// One model's per-layer table.
fn layer_table(d: &Diagnosis, title: &str) -> String {
    let mut s = format!(
        "{title} ({} windows, {} target tokens)\n",
        d.windows, d.head.tokens
    );
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
    s
}

/// Mean of `f` over the layers in `only` (every layer when empty).
fn layer_mean(d: &Diagnosis, f: fn(&LayerStats) -> f64, only: &[usize]) -> f64 {
    let ls: Vec<&LayerStats> = d
        .layers
        .iter()
        .filter(|l| only.is_empty() || only.contains(&l.layer))
        .collect();
    ls.iter().map(|l| f(l)).sum::<f64>() / ls.len().max(1) as f64
}

/// What the numbers say about each of the four claims, in words.
fn claims(main: &Diagnosis, original: Option<&Diagnosis>) -> String {
    let only = &main.layers_swapped;
    let pair = |f: fn(&LayerStats) -> f64, fmt: &dyn Fn(f64) -> String| match original {
        Some(o) => format!(
            "{} {} → {} {}",
            o.activation,
            fmt(layer_mean(o, f, only)),
            main.activation,
            fmt(layer_mean(main, f, only))
        ),
        None => format!("{} {}", main.activation, fmt(layer_mean(main, f, only))),
    };
    let num = |v: f64| format!("{v:.4}");
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    let scope = if only.is_empty() {
        "all layers".to_string()
    } else {
        format!(
            "the swapped layers {}",
            crate::model::plan::format_indices(only.iter().copied())
        )
    };
    let mut s = format!("What the numbers say (layer averages over {scope}):\n");
    s.push_str(&format!(
        "  Vanishing gradients, saturation: mean |f′(h)| {}; units with |f′(h)| < 0.01: {}\n",
        pair(|l| l.deriv_mean, &num),
        pair(|l| l.saturated_frac, &pct)
    ));
    s.push_str(&format!(
        "  Vanishing gradients, through depth: ‖∂loss/∂x‖ entering the first vs the last layer: {}\n",
        gradient_ends(main, original)
    ));
    s.push_str(&format!(
        "  Non-zero-centred output: mean activation f(h) (0 is centred): {}\n",
        pair(|l| l.post_mean, &num)
    ));
    s.push_str(&perplexity_change(main, original));
    if let Some(o) = original {
        s.push_str(&sigmoid_head(o));
    }
    s.push_str(&sigmoid_head(main));
    s
}

/// `gelu_new 1.59 vs 0.91; sigmoid 0.20 vs 0.91`: first and last layers' gradient norms.
fn gradient_ends(main: &Diagnosis, original: Option<&Diagnosis>) -> String {
    let ends = |d: &Diagnosis| {
        let (a, b) = (
            d.layers.first().map_or(0.0, |l| l.grad_norm),
            d.layers.last().map_or(0.0, |l| l.grad_norm),
        );
        format!("{} {a:.4} vs {b:.4}", d.activation)
    };
    match original {
        Some(o) => format!("{}; {}", ends(o), ends(main)),
        None => ends(main),
    }
}

/// Empirical underperformance: the softmax perplexity, and its change against the original.
fn perplexity_change(main: &Diagnosis, original: Option<&Diagnosis>) -> String {
    let p = main.head.softmax_ppl;
    match original {
        Some(o) => {
            let b = o.head.softmax_ppl;
            format!(
                "  Empirical underperformance: perplexity (softmax, lower is better) {} {b:.3} → {} {p:.3} ({:+.3}, ×{:.3})\n",
                o.activation,
                main.activation,
                p - b,
                p / b
            )
        }
        None => format!(
            "  Empirical underperformance: perplexity (softmax, lower is better) {p:.3}; give --activation to compare with a swap\n"
        ),
    }
}

/// Sigmoid instead of softmax at the output, for one model: why its scores are no
/// distribution, and its "perplexities", labelled so that they cannot be read as better
/// scores.
fn sigmoid_head(d: &Diagnosis) -> String {
    let h = &d.head;
    let compared = if h.sigmoid_ppl_normalized >= h.softmax_ppl {
        "worse than"
    } else {
        "better than"
    };
    format!(
        "  Sigmoid instead of softmax at the output ({} model): σ(z) summed over the vocabulary averages {:.2} per position, not 1: sigmoid scores are no distribution.\n     \
         Read as probabilities they score {:.4}: not a perplexity (the mass is counted about {:.0} times over) and not comparable with the softmax perplexity {:.3}; \
         normalised to sum to 1 they give a true perplexity of {:.3} ({compared} softmax).\n",
        d.activation,
        h.sigmoid_mass_mean,
        h.sigmoid_ppl_raw,
        h.sigmoid_mass_mean,
        h.softmax_ppl,
        h.sigmoid_ppl_normalized,
    )
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
    fn layer_sums_do_not_depend_on_the_thread_count() {
        let act: Activation = "gelu_new".parse().unwrap();
        let h: Vec<f32> = (0..300_001)
            .map(|i| ((i as f32) * 0.37).sin() * 4.0)
            .collect();
        let sums = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let a = pool.install(|| layer_sums(act, &h));
            [a.n, a.pre, a.pre2, a.post, a.post2, a.deriv, a.saturated]
        };
        let one = sums(1);
        assert_eq!(one[0], 300_001.0);
        for threads in [2, 3, 5] {
            assert_eq!(sums(threads), one, "{threads} threads");
        }
    }

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
