//! Next-token perplexity with softmax outputs, over the windows of a [`ScoringPlan`] (any
//! protocol, see [`super::protocol`]), with exact per-token sums in f64. [`perplexity`] is
//! the Hugging Face guide's windowing over one token list.
//!
//! A window feeds `seq[begin..end]` and scores each target `t` in `score_from..score_end`
//! from the logits at `t − 1`. Only the positions that are scored go through the LM head, in
//! chunks, so the 50k-vocabulary logits never exist for a whole window at once; and only
//! from the first of them on through the last block (the earlier positions there give keys
//! and values only — the same numbers to the bit, see [`crate::model::Partial::tail`]).

use std::time::Instant;

use candle_core::{DType, IndexOp, Tensor};
use serde::Serialize;

use super::plan::{ScoringPlan, Sequence};
use crate::kernels;
use crate::model::{CausalLm, Partial};

pub use super::plan::{windows, Window};

/// Rows of LM-head logits computed at once: 128 × 50,257 × 4 B ≈ 26 MB in f32; half as many
/// rows in bf16 and f16, whose weights are half the size, so that the logits stay as small a
/// part of the peak memory (each chunk streams the LM head once: fewer rows, more passes).
fn head_chunk(dtype: DType) -> usize {
    match dtype {
        DType::F32 | DType::F64 => 128,
        _ => 64,
    }
}

/// How to slide over the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PplOptions {
    pub context: usize,
    pub stride: usize,
    /// Full windows per forward pass; does not change results.
    pub batch_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PplError {
    #[error("context must be at least 2, got {0}")]
    ContextTooSmall(usize),
    #[error("context {context} exceeds the model's n_positions ({n_positions})")]
    ContextTooLarge { context: usize, n_positions: usize },
    #[error("stride must be between 1 and the context ({context}), got {stride}")]
    Stride { stride: usize, context: usize },
    #[error("batch_size must be at least 1")]
    BatchSize,
    #[error("the text has {0} token(s); perplexity needs at least 2")]
    TooFewTokens(usize),
    #[error("token id {id} is outside the model's vocabulary ({vocab} entries): does the tokenizer belong to this model?")]
    TokenOutOfVocab { id: u32, vocab: usize },
    #[error("non-finite loss in window {window} (tokens {begin}..{end}): the model's outputs overflowed or its weights are not finite")]
    NonFinite {
        window: usize,
        begin: usize,
        end: usize,
    },
    #[error("forward pass failed in window {window}: {cause}")]
    Candle {
        window: usize,
        cause: candle_core::Error,
    },
    #[error(
        "window {window} feeds {len} tokens, more than the model's n_positions ({n_positions})"
    )]
    WindowTooLong {
        window: usize,
        len: usize,
        n_positions: usize,
    },
    #[error("the text has {0} token(s); perplexity needs at least 2")]
    NothingScored(usize),
    #[error("{0}")]
    Output(String),
}

impl crate::eval::FieldError for PplError {
    fn field(&self) -> Option<&'static str> {
        match self {
            Self::ContextTooSmall(_) | Self::ContextTooLarge { .. } => Some("context"),
            Self::Stride { .. } => Some("stride"),
            Self::BatchSize => Some("batch_size"),
            _ => None,
        }
    }
}

impl PplOptions {
    /// Checks the options against a model and a token count.
    pub fn validate(&self, n_positions: usize, n_tokens: usize) -> Result<(), PplError> {
        if self.context < 2 {
            return Err(PplError::ContextTooSmall(self.context));
        }
        if self.context > n_positions {
            return Err(PplError::ContextTooLarge {
                context: self.context,
                n_positions,
            });
        }
        if self.stride == 0 || self.stride > self.context {
            return Err(PplError::Stride {
                stride: self.stride,
                context: self.context,
            });
        }
        if self.batch_size == 0 {
            return Err(PplError::BatchSize);
        }
        if n_tokens < 2 {
            return Err(PplError::TooFewTokens(n_tokens));
        }
        Ok(())
    }
}

/// The result of a perplexity evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct PplReport {
    /// Tokens of the text (every sequence, without lm-eval's prefix tokens).
    pub tokens: usize,
    pub tokens_scored: usize,
    /// Windows that scored at least one token.
    pub windows: usize,
    pub nll_sum: f64,
    /// Σ NLL², for the spread of per-token NLLs.
    pub nll_sq_sum: f64,
    pub mean_nll: f64,
    pub perplexity: f64,
    /// Σ NLL per document (one entry when the text is scored as one).
    pub document_nll: Vec<f64>,
    /// Wall time of the forward passes and scoring.
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// The scored rows of one window, as seen by a [`score_windows`] visitor.
pub struct ScoredChunk<'a> {
    /// Index of the window in the plan's order.
    pub window: usize,
    pub span: Window,
    /// The sequence the window slices.
    pub seq: &'a Sequence,
    /// Sequence index of `targets[0]`.
    pub first_target: usize,
    /// Targets of these rows.
    pub targets: &'a [u32],
    /// One (rows, C) tensor of final hidden states per model, row i predicting `targets[i]`.
    pub hidden: Vec<Tensor>,
    models: &'a [&'a dyn CausalLm],
}

impl ScoredChunk<'_> {
    /// (rows, vocab) f32 logits of model `i`, computed on demand.
    pub fn logits(&self, i: usize) -> candle_core::Result<Tensor> {
        self.logits_native(i)?.to_dtype(DType::F32)
    }

    /// (rows, vocab) logits of model `i` in its compute dtype (as transformers' are).
    pub fn logits_native(&self, i: usize) -> candle_core::Result<Tensor> {
        self.models[i].logits_from_hidden(&self.hidden[i])
    }

    /// The candle error of this chunk's window.
    pub fn fail(&self, source: candle_core::Error) -> PplError {
        PplError::Candle {
            window: self.window,
            cause: source,
        }
    }

    /// The error for a non-finite loss in this chunk's window.
    pub fn non_finite(&self) -> PplError {
        PplError::NonFinite {
            window: self.window,
            begin: self.span.begin,
            end: self.span.end,
        }
    }
}

/// Every window's input fits the model and every token its vocabulary.
fn check_plan(plan: &ScoringPlan, n_positions: usize, vocab: usize) -> Result<(), PplError> {
    if let Some((window, w)) = plan
        .windows
        .iter()
        .enumerate()
        .find(|(_, w)| w.len() > n_positions)
    {
        return Err(PplError::WindowTooLong {
            window,
            len: w.len(),
            n_positions,
        });
    }
    let ids = plan.sequences.iter().flat_map(|s| s.tokens.iter());
    if let Some(&id) = ids.clone().find(|&&id| id as usize >= vocab) {
        return Err(PplError::TokenOutOfVocab { id, vocab });
    }
    if plan.tokens_scored() == 0 {
        return Err(PplError::NothingScored(ids.count()));
    }
    Ok(())
}

/// Consecutive scoring windows of equal input length, at most `batch_size` each.
fn batches(plan: &ScoringPlan, batch_size: usize) -> Vec<Vec<(usize, Window)>> {
    let all: Vec<(usize, Window)> = plan
        .windows
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, w)| w.scored() > 0)
        .collect();
    let mut out: Vec<Vec<(usize, Window)>> = Vec::new();
    let mut rest = &all[..];
    while let Some((_, w0)) = rest.first() {
        let n = rest
            .iter()
            .take(batch_size.max(1))
            .take_while(|(_, w)| w.len() == w0.len())
            .count();
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

/// Forward passes [`score_windows`] makes over `plan` (for progress).
pub fn batch_count(plan: &ScoringPlan, batch_size: usize) -> usize {
    batches(plan, batch_size).len()
}

/// Runs every model over every window of `plan` and hands the visitor the scored positions,
/// chunk by chunk, in a fixed order. With several models (a baseline and a variant) the
/// chunks line up, so comparisons need no logits files. `progress(done, total)` is called per
/// batch.
pub fn score_windows(
    models: &[&dyn CausalLm],
    plan: &ScoringPlan,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
    visit: &mut dyn FnMut(ScoredChunk<'_>) -> Result<(), PplError>,
) -> Result<(), PplError> {
    let mut hidden = |_: usize, m: &dyn CausalLm, input: &Tensor, tail: usize| {
        let partial = Partial {
            tail: Some(tail),
            ..Partial::default()
        };
        m.hidden_states_partial(input, partial, &mut Vec::new())
    };
    score_windows_with(models, plan, batch_size, progress, &mut hidden, visit)
}

/// The hidden states (b, tail, C) of the last `tail` positions of model `m` for batch
/// `index`'s input (b, t): `(index, m, input, tail)`.
pub type HiddenSource<'h> =
    dyn FnMut(usize, &dyn CausalLm, &Tensor, usize) -> candle_core::Result<Tensor> + 'h;

/// Trailing positions of window `w`'s input whose hidden states are read: from the one
/// predicting its first scored token on.
fn tail(w: &Window) -> usize {
    w.len() - (w.score_from - 1 - w.begin)
}

/// [`score_windows`], with each model's hidden states for each batch computed by `hidden`
/// (the grid resumes variants from residuals it kept).
pub fn score_windows_with(
    models: &[&dyn CausalLm],
    plan: &ScoringPlan,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
    hidden_of: &mut HiddenSource<'_>,
    visit: &mut dyn FnMut(ScoredChunk<'_>) -> Result<(), PplError>,
) -> Result<(), PplError> {
    let Some(first) = models.first() else {
        return Ok(());
    };
    let cfg = first.info();
    check_plan(plan, cfg.n_positions, cfg.vocab_size)?;
    let device = first.device().clone();
    let batches = batches(plan, batch_size);
    for (done, batch) in batches.iter().enumerate() {
        let window = batch[0].0;
        let candle = |source| PplError::Candle {
            window,
            cause: source,
        };
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|(_, w)| plan.input(w).iter().copied())
            .collect();
        let input =
            Tensor::from_vec(ids, (batch.len(), batch[0].1.len()), &device).map_err(candle)?;
        let n = batch.iter().map(|(_, w)| tail(w)).max().unwrap_or(0);
        let hidden: Vec<Tensor> = models
            .iter()
            .map(|&m| hidden_of(done, m, &input, n))
            .collect::<candle_core::Result<_>>()
            .map_err(candle)?; // per model (b, n, C)
        for (bi, &(window, w)) in batch.iter().enumerate() {
            let first = w.len() - n; // the position of hidden row 0
            visit_window(models, plan, (&hidden, first), bi, window, w, visit)?;
        }
        progress(done + 1, batches.len());
    }
    Ok(())
}

/// Hands the visitor window `w`'s scored rows (row `bi` of the batch), in head chunks.
fn visit_window(
    models: &[&dyn CausalLm],
    plan: &ScoringPlan,
    (hidden, first): (&[Tensor], usize),
    bi: usize,
    window: usize,
    w: Window,
    visit: &mut dyn FnMut(ScoredChunk<'_>) -> Result<(), PplError>,
) -> Result<(), PplError> {
    let candle = |source| PplError::Candle {
        window,
        cause: source,
    };
    let seq = &plan.sequences[w.seq];
    let mut t0 = w.score_from;
    while t0 < w.score_end {
        let n = head_chunk(models[0].dtype()).min(w.score_end - t0);
        let row = t0 - 1 - w.begin - first;
        let rows = hidden
            .iter()
            .map(|h| h.i(bi)?.narrow(0, row, n)) // (n, C)
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(candle)?;
        visit(ScoredChunk {
            window,
            span: w,
            seq,
            first_target: t0,
            targets: &seq.tokens[t0..t0 + n],
            hidden: rows,
            models,
        })?;
        t0 += n;
    }
    Ok(())
}

/// Negative log-likelihood of each target under softmax(logits): `logsumexp(z) − z_target`,
/// per row of a (rows, vocab) tensor (f32, or bf16/f16 read in place), returned in f64.
pub fn token_nlls(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Vec<f64>> {
    let lse: Vec<f32> = kernels::logsumexp_last_dim(logits)?.to_vec1()?;
    token_nlls_with_lse(logits, &lse, targets)
}

/// [`token_nlls`] with each row's log-sum-exp already known (as
/// [`kernels::logsumexp_last_dim`] gives it).
pub fn token_nlls_with_lse(
    logits: &Tensor,
    lse: &[f32],
    targets: &[u32],
) -> candle_core::Result<Vec<f64>> {
    if lse.len() != targets.len() {
        candle_core::bail!("{} log-sum-exps for {} targets", lse.len(), targets.len());
    }
    let idx = Tensor::from_slice(targets, (targets.len(), 1), logits.device())?;
    let z: Vec<f32> = logits
        .gather(&idx, 1)?
        .squeeze(1)?
        .to_dtype(DType::F32)?
        .to_vec1()?;
    Ok(lse
        .iter()
        .zip(&z)
        .map(|(&l, &z)| l as f64 - z as f64)
        .collect())
}

/// What [`score_plan`] hands each chunk's per-token NLLs to.
pub type TokenVisitor<'v> = dyn FnMut(&ScoredChunk<'_>, &[f64]) -> Result<(), PplError> + 'v;

/// Perplexity of `model` on `tokens` in the Hugging Face guide's windows.
pub fn perplexity(
    model: &dyn CausalLm,
    tokens: &[u32],
    opts: &PplOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PplReport, PplError> {
    opts.validate(model.info().n_positions, tokens.len())?;
    let plan = ScoringPlan::hf(tokens.to_vec(), opts.context, opts.stride);
    score_plan(model, &plan, opts.batch_size, progress, &mut |_, _| Ok(()))
}

/// Perplexity of `model` over `plan`'s windows; `per_token(chunk, nlls)` sees each chunk's
/// per-token NLLs (for per-token output).
pub fn score_plan(
    model: &dyn CausalLm,
    plan: &ScoringPlan,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
    per_token: &mut TokenVisitor<'_>,
) -> Result<PplReport, PplError> {
    let start = Instant::now();
    let documents = plan
        .sequences
        .iter()
        .map(|s| s.document + 1)
        .max()
        .unwrap_or(0);
    let mut acc = Accumulator {
        document_nll: vec![0.0; documents],
        ..Accumulator::default()
    };
    score_windows(&[model], plan, batch_size, progress, &mut |chunk| {
        let nlls = chunk
            .logits_native(0)
            .and_then(|logits| token_nlls(&logits, chunk.targets))
            .map_err(|source| chunk.fail(source))?;
        if nlls.iter().any(|v| !v.is_finite()) {
            return Err(chunk.non_finite());
        }
        acc.add(&chunk, &nlls);
        per_token(&chunk, &nlls)
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let tokens = plan
        .sequences
        .iter()
        .map(|s| s.tokens.len() - usize::from(s.first_position < 0))
        .sum();
    Ok(acc.report(tokens, seconds))
}

/// Running sums of [`score_plan`].
#[derive(Default)]
struct Accumulator {
    nll_sum: f64,
    nll_sq_sum: f64,
    scored: usize,
    windows: usize,
    last_window: Option<usize>,
    document_nll: Vec<f64>,
}

impl Accumulator {
    fn add(&mut self, chunk: &ScoredChunk, nlls: &[f64]) {
        for &v in nlls {
            self.nll_sum += v;
            self.nll_sq_sum += v * v;
        }
        self.document_nll[chunk.seq.document] += nlls.iter().sum::<f64>();
        self.scored += nlls.len();
        if self.last_window != Some(chunk.window) {
            self.windows += 1;
            self.last_window = Some(chunk.window);
        }
    }

    fn report(self, tokens: usize, seconds: f64) -> PplReport {
        let mean_nll = self.nll_sum / self.scored as f64;
        PplReport {
            tokens,
            tokens_scored: self.scored,
            windows: self.windows,
            nll_sum: self.nll_sum,
            nll_sq_sum: self.nll_sq_sum,
            mean_nll,
            perplexity: mean_nll.exp(),
            document_nll: self.document_nll,
            seconds,
            tokens_per_second: self.scored as f64 / seconds.max(1e-9),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated() {
        let ok = PplOptions {
            context: 8,
            stride: 4,
            batch_size: 1,
        };
        assert!(ok.validate(8, 10).is_ok());
        let msg = |o: PplOptions, n| o.validate(8, n).unwrap_err().to_string();
        assert!(msg(PplOptions { context: 16, ..ok }, 10)
            .contains("exceeds the model's n_positions (8)"));
        assert!(msg(PplOptions { stride: 0, ..ok }, 10).contains("stride must"));
        assert!(msg(PplOptions { stride: 9, ..ok }, 10).contains("stride must"));
        assert!(msg(
            PplOptions {
                batch_size: 0,
                ..ok
            },
            10
        )
        .contains("batch_size"));
        assert!(msg(ok, 1).contains("at least 2"));
    }

    #[test]
    fn batches_group_equal_lengths_and_skip_windows_that_score_nothing() {
        let plan = ScoringPlan::hf((0..9).collect(), 4, 4); // [0,4) [4,8) [8,9)
        let b = batches(&plan, 8);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1]);
        let plan = ScoringPlan::lm_eval(vec![vec![5; 9], vec![6; 2]], 0, 4);
        let lens: Vec<Vec<usize>> = batches(&plan, 8)
            .iter()
            .map(|b| b.iter().map(|(_, w)| w.len()).collect())
            .collect();
        assert_eq!(lens, vec![vec![4, 4, 4], vec![2]]);
    }
}
