//! Scoring one cell: the variant and the unmodified model in the same pass (or the baseline's
//! logits from cached hidden states), accumulating NLL, KL(P_baseline ‖ P_variant), top-1
//! agreement and per-window paired NLL sums (for the bootstrap intervals) chunk by chunk,
//! into a result row; per-token records go to the cell's file when `save_nll` is on.
//!
//! The model is used only through `with_plan`, `logits_from_hidden` and [`score_windows`]
//! (and `diagnose` for diagnosed cells).

use anyhow::Context;
use candle_core::{DType, Tensor};

use crate::data::TextTokenizer;
use crate::eval::bootstrap::{bootstrap, WindowSums};
use crate::eval::diagnose::{Diagnosis, LayerStats};
use crate::eval::lm_eval::lm_eval_metrics;
use crate::eval::nll_output::{chunk_records, NllWriter};
use crate::eval::perplexity::{
    score_windows_with, token_nlls, token_nlls_with_lse, PplError, ScoredChunk,
};
use crate::eval::plan::ScoringPlan;
use crate::eval::protocol::Protocol;
use crate::grid::cells::Cell;
use crate::grid::config::Grid;
use crate::grid::results::{Row, RowDiagnostics, RowIdentity, ScoreSums};
use crate::kernels;
use crate::model::{CausalLm, Partial};

/// Everything scoring a cell needs besides the cell itself.
#[derive(Clone, Copy)]
pub(crate) struct CellContext<'a> {
    pub grid: &'a Grid,
    /// The unmodified model; variants share its weights.
    pub base: &'a dyn CausalLm,
    /// What the cell scores under the model's protocol.
    pub plan: &'a ScoringPlan,
    /// The dataset's documents (lm-eval's metrics count their words and bytes).
    pub documents: &'a [String],
    /// The model's tokenizer (token texts of per-token records).
    pub tokenizer: &'a TextTokenizer,
    /// UTF-8 bytes the tokens cover (bits/byte divides by it).
    pub bytes: usize,
    /// The baseline's hidden states for this model × dataset, when cached: the baseline's
    /// logits then come from them and the pass runs the variant alone.
    pub cache: Option<&'a [Tensor]>,
    /// The baseline's per-token NLLs, chunk by chunk, when the cache holds them (empty
    /// otherwise): a variant then reads them instead of recomputing them from the logits.
    pub cached_nlls: &'a [Vec<f64>],
    /// Return the baseline's hidden states, to fill the cache.
    pub fill: bool,
    /// When filling: the blocks whose entering residual stream to keep too, per batch.
    pub taps: &'a [usize],
    /// A block `l` before which the variant equals the baseline, and the baseline's residual
    /// stream entering it, per batch: the variant's pass starts there.
    pub prefix: Option<(usize, &'a [Tensor])>,
    /// The variant to score instead of `base.with_plan(cell.plan)` (a fine-tuned model).
    pub variant: Option<&'a dyn CausalLm>,
}

/// What a baseline pass leaves for the cache: the final hidden states at the scored
/// positions, chunk by chunk, and for each tapped block (in `taps` order) the residual
/// stream entering it, batch by batch.
#[derive(Default)]
pub(crate) struct Filled {
    pub chunks: Vec<Tensor>,
    pub residuals: Vec<Vec<Tensor>>,
    /// The baseline's per-token NLLs per chunk (from a scored pass; empty from
    /// [`baseline_hidden`], which runs no LM head).
    pub nlls: Vec<Vec<f64>>,
}

/// Hidden states for [`score_windows_with`]: the baseline pass keeps the residuals `taps`
/// asks for; a variant with a prefix starts from the kept residual.
fn hidden_source<'h>(
    ctx: &'h CellContext,
    base: &'h dyn CausalLm,
    residuals: &'h mut Vec<Vec<Tensor>>,
) -> impl FnMut(usize, &dyn CausalLm, &Tensor, usize) -> candle_core::Result<Tensor> + 'h {
    residuals.resize_with(ctx.taps.len(), Vec::new);
    let same =
        |m: &dyn CausalLm| std::ptr::addr_eq(m as *const dyn CausalLm, base as *const dyn CausalLm);
    move |batch, m, input, tail| {
        let partial = match (same(m), ctx.prefix) {
            (true, _) if ctx.fill => Partial {
                keep: ctx.taps,
                tail: Some(tail),
                ..Partial::default()
            },
            (false, Some((l, xs))) => Partial {
                start: Some((
                    l,
                    xs.get(batch).ok_or_else(|| {
                        candle_core::Error::Msg(format!("no kept residual for batch {batch}"))
                    })?,
                )),
                tail: Some(tail),
                ..Partial::default()
            },
            _ => Partial {
                tail: Some(tail),
                ..Partial::default()
            },
        };
        partial_pass(m, input, partial, residuals)
    }
}

/// `m`'s hidden states for `input` entered and tapped as `partial` says, the tapped residuals
/// appended to `residuals` (one list per tapped block).
fn partial_pass(
    m: &dyn CausalLm,
    input: &Tensor,
    partial: Partial,
    residuals: &mut [Vec<Tensor>],
) -> candle_core::Result<Tensor> {
    let mut kept = Vec::new();
    let h = m.hidden_states_partial(input, partial, &mut kept)?;
    for (dst, x) in residuals.iter_mut().zip(kept) {
        dst.push(x);
    }
    Ok(h)
}

/// Scores one cell: the baseline alone, or the variant against the baseline — from the
/// cache when there is one, else with the baseline run in lockstep. When `ctx.fill` is set,
/// returns the baseline's hidden states (and tapped residuals) too. Per-token records go to
/// `records` when given.
pub(crate) fn score_cell(
    ctx: &CellContext,
    cell: &Cell,
    key: &str,
    records: Option<&mut NllWriter>,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<(Row, Filled)> {
    let owned =
        (!cell.is_baseline && ctx.variant.is_none()).then(|| ctx.base.with_plan(cell.plan.clone()));
    let variant: Option<&dyn CausalLm> = match cell.is_baseline {
        true => None,
        false => ctx.variant.or(owned.as_deref()),
    };
    let models: Vec<&dyn CausalLm> = match (variant, ctx.cache) {
        (None, _) => vec![ctx.base],
        (Some(v), Some(_)) => vec![v],
        (Some(v), None) => vec![ctx.base, v],
    };
    let documents = ctx
        .plan
        .sequences
        .iter()
        .map(|s| s.document + 1)
        .max()
        .unwrap_or(0);
    let mut totals = Totals {
        document_nll: vec![0.0; documents],
        ..Totals::default()
    };
    let mut records = records;
    let mut filled = Filled::default();
    let mut index = 0usize;
    let batch = ctx.grid.batch_size;
    let mut hidden = hidden_source(ctx, ctx.base, &mut filled.residuals);
    let (mut chunks, mut nlls) = (Vec::new(), Vec::new());
    score_windows_with(
        &models,
        ctx.plan,
        batch,
        progress,
        &mut hidden,
        &mut |chunk| {
            let base_logits = baseline_logits(ctx, &chunk, index).map_err(|e| chunk.fail(e))?;
            let cached_nll = ctx.cached_nlls.get(index).map(Vec::as_slice);
            index += 1;
            if ctx.fill {
                // A compact copy: `copy` would keep the whole batch's storage alive.
                chunks.push(
                    chunk.hidden[0]
                        .force_contiguous()
                        .map_err(|e| chunk.fail(e))?,
                );
            }
            let variant_of = variant.is_some().then_some(models.len() - 1);
            let (var_nll, base_nll) = totals.add(&chunk, &base_logits, variant_of, cached_nll)?;
            if ctx.fill {
                nlls.push(base_nll.clone());
            }
            match records.as_deref_mut() {
                Some(w) => write_records(w, &chunk, &var_nll, &base_nll, ctx.tokenizer),
                None => Ok(()),
            }
        },
    )?;
    drop(hidden);
    filled.chunks = chunks;
    filled.nlls = nlls;
    Ok((totals.row(ctx, cell, key), filled))
}

/// The chunk's per-token records, with the baseline's NLL beside the variant's.
fn write_records(
    w: &mut NllWriter,
    chunk: &ScoredChunk,
    nll: &[f64],
    baseline: &[f64],
    tok: &TextTokenizer,
) -> Result<(), PplError> {
    let out = |e: &dyn std::fmt::Display| PplError::Output(e.to_string());
    for r in chunk_records(chunk, nll, Some(baseline), tok).map_err(|e| out(&e))? {
        w.write(&r).map_err(|e| out(&e))?;
    }
    Ok(())
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
    /// Per window: tokens, Σ NLL_variant and Σ (NLL_variant − NLL_baseline).
    windows: WindowSums,
    /// Σ NLL_variant per document.
    document_nll: Vec<f64>,
}

impl Totals {
    /// Adds one chunk: the baseline's logits (and its per-token NLLs when cached), and the
    /// variant's (model `variant` of the pass) when the cell has one — else the baseline is
    /// the variant, agreeing with itself. Returns the variant's and the baseline's per-token
    /// NLLs.
    fn add(
        &mut self,
        chunk: &ScoredChunk,
        base_logits: &Tensor,
        variant: Option<usize>,
        cached_nll: Option<&[f64]>,
    ) -> Result<(Vec<f64>, Vec<f64>), PplError> {
        let fail = |source| chunk.fail(source);
        let base_nll = match cached_nll {
            Some(nll) if nll.len() == chunk.targets.len() => nll.to_vec(),
            _ => token_nlls(base_logits, chunk.targets).map_err(fail)?,
        };
        let var_nll = if let Some(i) = variant {
            let var_logits = chunk.logits(i).map_err(fail)?;
            let rows = kernels::kl_and_agreement(base_logits, &var_logits).map_err(fail)?;
            self.kl += rows.kl.iter().sum::<f64>();
            self.agree += rows.agree.iter().filter(|&&x| x).count();
            token_nlls_with_lse(&var_logits, &rows.lse_q, chunk.targets).map_err(fail)?
        } else {
            self.agree += base_nll.len();
            base_nll.clone()
        };
        if var_nll.iter().chain(&base_nll).any(|v| !v.is_finite()) || !self.kl.is_finite() {
            return Err(chunk.non_finite());
        }
        self.nll_base += base_nll.iter().sum::<f64>();
        self.nll_var += var_nll.iter().sum::<f64>();
        self.n += var_nll.len();
        self.windows.add(chunk.window, &var_nll, &base_nll);
        self.document_nll[chunk.seq.document] += var_nll.iter().sum::<f64>();
        Ok((var_nll, base_nll))
    }

    /// The cell's row (`seconds`, `diagnostics` and `nll_file` are filled in by the caller).
    fn row(&self, ctx: &CellContext, cell: &Cell, key: &str) -> Row {
        let intervals = bootstrap(&self.windows, &ctx.grid.bootstrap);
        let protocol = ctx.plan.protocol;
        let id = RowIdentity {
            key: key.to_string(),
            index: cell.index,
            model: ctx.grid.models[cell.model].display().to_string(),
            dataset: ctx.grid.datasets[cell.dataset].display().to_string(),
            variant: cell.name.clone(),
            is_baseline: cell.is_baseline,
            sweep: cell.sweep.clone(),
            plan: &cell.plan,
            protocol,
        };
        let sums = ScoreSums {
            tokens: self.n,
            bytes: ctx.bytes,
            nll: self.nll_var,
            nll_base: self.nll_base,
            kl: self.kl,
            agree: self.agree,
        };
        Row {
            delta_nll_ci95: intervals.map(|i| i.delta_nll),
            perplexity_ci95: intervals.map(|i| i.perplexity),
            lm_eval: matches!(protocol, Protocol::LmEval { .. })
                .then(|| lm_eval_metrics(ctx.documents, &self.document_nll)),
            ..Row::scored(id, &sums)
        }
    }
}

/// The unmodified model's final hidden states at the scored positions, chunk by chunk in
/// [`score_windows`] order (one pass without the LM head), for the cache.
pub(crate) fn baseline_hidden(
    base: &dyn CausalLm,
    plan: &ScoringPlan,
    batch_size: usize,
    taps: &[usize],
) -> Result<Filled, PplError> {
    let mut residuals = vec![Vec::new(); taps.len()];
    let mut chunks = Vec::new();
    let mut hidden = |_: usize, m: &dyn CausalLm, input: &Tensor, tail: usize| {
        let keep = Partial {
            keep: taps,
            tail: Some(tail),
            ..Partial::default()
        };
        partial_pass(m, input, keep, &mut residuals)
    };
    score_windows_with(
        &[base],
        plan,
        batch_size,
        &mut |_, _| {},
        &mut hidden,
        &mut |chunk| {
            let copy = chunk.hidden[0].force_contiguous(); // compact, not the batch's storage
            chunks.push(copy.map_err(|cause| PplError::Candle {
                window: chunk.window,
                cause,
            })?);
            Ok(())
        },
    )?;
    Ok(Filled {
        chunks,
        residuals,
        nlls: Vec::new(),
    })
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
