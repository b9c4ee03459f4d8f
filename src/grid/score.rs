//! Scoring one cell: the variant and the unmodified model in the same pass (or the baseline's
//! logits from cached hidden states), accumulating NLL, KL(P_baseline ‖ P_variant) and top-1
//! agreement chunk by chunk, into a result row.
//!
//! The model is used only through `with_plan`, `logits_from_hidden` and [`score_windows`]
//! (and `diagnose` for diagnosed cells).

use anyhow::Context;
use candle_core::{DType, Tensor};

use crate::eval::diagnose::{Diagnosis, LayerStats};
use crate::eval::perplexity::{score_windows, token_nlls, PplError, PplOptions, ScoredChunk};
use crate::grid::cells::Cell;
use crate::grid::config::Grid;
use crate::grid::results::{Row, RowDiagnostics};
use crate::kernels;
use crate::model::CausalLm;
use crate::provenance;

/// Everything scoring a cell needs besides the cell itself.
pub(crate) struct CellContext<'a> {
    pub grid: &'a Grid,
    /// The unmodified model; variants share its weights.
    pub base: &'a dyn CausalLm,
    /// The dataset's tokens under this model's tokenizer.
    pub tokens: &'a [u32],
    pub opts: &'a PplOptions,
    /// UTF-8 bytes the tokens cover (bits/byte divides by it).
    pub bytes: usize,
    /// The baseline's hidden states for this model × dataset, when cached: the baseline's
    /// logits then come from them and the pass runs the variant alone.
    pub cache: Option<&'a [Tensor]>,
    /// Return the baseline's hidden states, to fill the cache.
    pub fill: bool,
}

/// Scores one cell: the baseline alone, or the variant against the baseline — from the
/// cache when there is one, else with the baseline run in lockstep. When `ctx.fill` is set,
/// returns the baseline's hidden states too.
pub(crate) fn score_cell(
    ctx: &CellContext,
    cell: &Cell,
    key: &str,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<(Row, Vec<Tensor>)> {
    let variant = (!cell.is_baseline).then(|| ctx.base.with_plan(cell.plan.clone()));
    let models: Vec<&dyn CausalLm> = match (&variant, ctx.cache) {
        (None, _) => vec![ctx.base],
        (Some(v), Some(_)) => vec![v],
        (Some(v), None) => vec![ctx.base, v],
    };
    let mut totals = Totals::default();
    let mut filled = Vec::new();
    let mut index = 0usize;
    score_windows(&models, ctx.tokens, ctx.opts, progress, &mut |chunk| {
        let fail = |cause| PplError::Candle {
            window: chunk.window,
            cause,
        };
        let base_logits = baseline_logits(ctx, &chunk, index).map_err(fail)?;
        index += 1;
        if ctx.fill {
            // A compact copy: `copy` would keep the whole batch's storage alive.
            filled.push(chunk.hidden[0].force_contiguous().map_err(fail)?);
        }
        let variant_of = variant.is_some().then_some(models.len() - 1);
        totals.add(&chunk, &base_logits, variant_of)
    })?;
    Ok((totals.row(ctx, cell, key), filled))
}

/// The baseline's (rows, vocab) f32 logits for the `index`-th chunk: from the cache, or
/// from the first model of the pass.
fn baseline_logits(
    ctx: &CellContext,
    chunk: &ScoredChunk,
    index: usize,
) -> candle_core::Result<Tensor> {
    match ctx.cache {
        Some(c) => {
            let h = c
                .get(index)
                .ok_or_else(|| candle_core::Error::Msg("cache too short".into()))?;
            ctx.base
                .logits_from_hidden(h)
                .and_then(|l| l.to_dtype(DType::F32))
        }
        None => chunk.logits(0),
    }
}

/// Running sums over the scored tokens of a cell.
#[derive(Default)]
struct Totals {
    nll_base: f64,
    nll_var: f64,
    kl: f64,
    agree: usize,
    n: usize,
}

impl Totals {
    /// Adds one chunk: the baseline's logits, and the variant's (model `variant` of the pass)
    /// when the cell has one — else the baseline is the variant, agreeing with itself.
    fn add(
        &mut self,
        chunk: &ScoredChunk,
        base_logits: &Tensor,
        variant: Option<usize>,
    ) -> Result<(), PplError> {
        let fail = |cause| PplError::Candle {
            window: chunk.window,
            cause,
        };
        let base_nll = token_nlls(base_logits, chunk.targets).map_err(fail)?;
        let var_nll = if let Some(i) = variant {
            let var_logits = chunk.logits(i).map_err(fail)?;
            let (k, a) = kernels::kl_and_agreement(base_logits, &var_logits).map_err(fail)?;
            self.kl += k.iter().sum::<f64>();
            self.agree += a.iter().filter(|&&x| x).count();
            token_nlls(&var_logits, chunk.targets).map_err(fail)?
        } else {
            self.agree += base_nll.len();
            base_nll.clone()
        };
        if var_nll.iter().chain(&base_nll).any(|v| !v.is_finite()) || !self.kl.is_finite() {
            return Err(PplError::NonFinite {
                window: chunk.window,
                begin: chunk.span.begin,
                end: chunk.span.end,
            });
        }
        self.nll_base += base_nll.iter().sum::<f64>();
        self.nll_var += var_nll.iter().sum::<f64>();
        self.n += var_nll.len();
        Ok(())
    }

    /// The cell's row (`seconds` and `diagnostics` are filled in by the caller).
    fn row(&self, ctx: &CellContext, cell: &Cell, key: &str) -> Row {
        let nf = self.n as f64;
        let (ppl, base_ppl) = ((self.nll_var / nf).exp(), (self.nll_base / nf).exp());
        Row {
            key: key.to_string(),
            index: cell.index,
            model: ctx.grid.models[cell.model].display().to_string(),
            dataset: ctx.grid.datasets[cell.dataset].display().to_string(),
            variant: cell.name.clone(),
            is_baseline: cell.is_baseline,
            sweep: cell.sweep.as_ref().map(|(g, _)| g.clone()),
            sweep_layer: cell.sweep.as_ref().map(|(_, l)| *l),
            activation: cell.plan.describe(),
            layers_swapped: cell.plan.swapped_layers(),
            per_layer: cell.plan.per_layer.iter().map(|a| a.to_string()).collect(),
            context: ctx.opts.context,
            stride: ctx.opts.stride,
            tokens_scored: self.n,
            bytes: ctx.bytes,
            nll_sum: self.nll_var,
            mean_nll: self.nll_var / nf,
            perplexity: ppl,
            bits_per_byte: self.nll_var / std::f64::consts::LN_2 / ctx.bytes as f64,
            baseline_perplexity: base_ppl,
            delta_perplexity: ppl - base_ppl,
            ratio_perplexity: ppl / base_ppl,
            kl_mean: self.kl / nf,
            top1_agreement: self.agree as f64 / nf,
            seconds: 0.0,
            finished_at: provenance::now_rfc3339(),
            perplexity_ci95: None,
            delta_nll_ci95: None,
            diagnostics: None,
        }
    }
}

/// The unmodified model's final hidden states at the scored positions, chunk by chunk in
/// [`score_windows`] order (one pass without the LM head), for the cache.
pub(crate) fn baseline_hidden(
    base: &dyn CausalLm,
    tokens: &[u32],
    opts: &PplOptions,
) -> Result<Vec<Tensor>, PplError> {
    let mut chunks = Vec::new();
    score_windows(&[base], tokens, opts, &mut |_, _| {}, &mut |chunk| {
        let copy = chunk.hidden[0].force_contiguous(); // compact, not the batch's storage
        chunks.push(copy.map_err(|cause| PplError::Candle {
            window: chunk.window,
            cause,
        })?);
        Ok(())
    })?;
    Ok(chunks)
}

/// Per-layer diagnostics of a cell's plan, summarised for its row.
pub(crate) fn diagnose_cell(
    base: &dyn CausalLm,
    cell: &Cell,
    tokens: &[u32],
    context: usize,
) -> anyhow::Result<RowDiagnostics> {
    let model = base.with_plan(cell.plan.clone());
    let d = crate::eval::diagnose::diagnose(&model, tokens, context)
        .with_context(|| format!("diagnostics of cell '{}'", cell.name))?;
    Ok(summarise(d))
}

fn summarise(d: Diagnosis) -> RowDiagnostics {
    let n = d.layers.len().max(1) as f64;
    let mean = |f: fn(&LayerStats) -> f64| d.layers.iter().map(f).sum::<f64>() / n;
    RowDiagnostics {
        deriv_mean: mean(|l| l.deriv_mean),
        saturated_frac: mean(|l| l.saturated_frac),
        post_mean: mean(|l| l.post_mean),
        grad_norm_first: d.layers.first().map_or(0.0, |l| l.grad_norm),
        grad_norm_last: d.layers.last().map_or(0.0, |l| l.grad_norm),
        sigmoid_mass_mean: d.head.sigmoid_mass_mean,
        sigmoid_ppl_normalized: d.head.sigmoid_ppl_normalized,
        layers: d.layers,
    }
}
