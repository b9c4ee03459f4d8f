//! Sliding-window next-token perplexity with softmax outputs: the Hugging Face perplexity
//! guide's windowing, with exact per-token sums in f64.
//!
//! Window k covers tokens `[k·s, min(k·s + c, N))`; windows stop after the first that reaches
//! N. A window scores every target `t` with `max(prev_end, begin + 1) ≤ t < end` from the
//! logits at `t − 1`. Only the positions that are scored go through the LM head, in chunks, so
//! the 50k-vocabulary logits never exist for a whole window at once.

use std::time::Instant;

use candle_core::{DType, IndexOp, Tensor};
use serde::Serialize;

use crate::kernels;
use crate::model::CausalLm;

/// Rows of LM-head logits computed at once: 128 × 50,257 × 4 B ≈ 26 MB.
const HEAD_CHUNK: usize = 128;

/// One evaluation window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub begin: usize,
    pub end: usize,
    /// First target index scored; targets are `score_from .. end`.
    pub score_from: usize,
}

impl Window {
    pub fn len(&self) -> usize {
        self.end - self.begin
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.begin
    }
    pub fn scored(&self) -> usize {
        self.end.saturating_sub(self.score_from)
    }
}

/// The windows over `n` tokens, including any that score nothing (a final window of one
/// token when `stride = context`).
pub fn windows(n: usize, context: usize, stride: usize) -> Vec<Window> {
    let mut out = Vec::new();
    let (mut begin, mut prev_end) = (0, 0);
    loop {
        let end = (begin + context).min(n);
        out.push(Window {
            begin,
            end,
            score_from: prev_end.max(begin + 1),
        });
        prev_end = end;
        if end >= n {
            return out;
        }
        begin += stride;
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
    #[error("non-finite loss in window {window} (tokens {begin}..{end}): the model's outputs overflowed")]
    NonFinite {
        window: usize,
        begin: usize,
        end: usize,
    },
    #[error("forward pass failed in window {window}: {source}")]
    Candle {
        window: usize,
        source: candle_core::Error,
    },
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
    pub tokens: usize,
    pub tokens_scored: usize,
    pub windows: usize,
    pub nll_sum: f64,
    pub mean_nll: f64,
    pub perplexity: f64,
    /// Wall time of the forward passes and scoring.
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// The scored rows of one window, as seen by a [`score_windows`] visitor.
pub struct ScoredChunk<'a> {
    /// Index of the window in [`windows`]' order.
    pub window: usize,
    pub span: Window,
    /// Targets of these rows.
    pub targets: &'a [u32],
    /// One (rows, C) tensor of final hidden states per model, row i predicting `targets[i]`.
    pub hidden: Vec<Tensor>,
    models: &'a [&'a dyn CausalLm],
}

impl ScoredChunk<'_> {
    /// (rows, vocab) f32 logits of model `i`, computed on demand.
    pub fn logits(&self, i: usize) -> candle_core::Result<Tensor> {
        self.models[i]
            .logits_from_hidden(&self.hidden[i])?
            .to_dtype(DType::F32)
    }
}

/// Runs every model over every window and hands the visitor the scored positions, chunk by
/// chunk, in a fixed order. With several models (a baseline and a variant) the chunks line
/// up, so comparisons need no logits files. `progress(done, total)` is called per batch.
pub fn score_windows(
    models: &[&dyn CausalLm],
    tokens: &[u32],
    opts: &PplOptions,
    progress: &mut dyn FnMut(usize, usize),
    visit: &mut dyn FnMut(ScoredChunk<'_>) -> Result<(), PplError>,
) -> Result<(), PplError> {
    let Some(first) = models.first() else {
        return Ok(());
    };
    let cfg = first.info();
    opts.validate(cfg.n_positions, tokens.len())?;
    if let Some(&id) = tokens.iter().find(|&&id| id as usize >= cfg.vocab_size) {
        return Err(PplError::TokenOutOfVocab {
            id,
            vocab: cfg.vocab_size,
        });
    }
    let device = first.device().clone();
    let all: Vec<(usize, Window)> = windows(tokens.len(), opts.context, opts.stride)
        .into_iter()
        .enumerate()
        .filter(|(_, w)| w.scored() > 0)
        .collect();
    // Batches of consecutive windows of equal length.
    let mut batches: Vec<&[(usize, Window)]> = Vec::new();
    let mut rest = &all[..];
    while let Some((_, w0)) = rest.first() {
        let n = rest
            .iter()
            .take(opts.batch_size)
            .take_while(|(_, w)| w.len() == w0.len())
            .count();
        batches.push(&rest[..n]);
        rest = &rest[n..];
    }
    for (done, batch) in batches.iter().enumerate() {
        let window = batch[0].0;
        let candle = |source| PplError::Candle { window, source };
        let len = batch[0].1.len();
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|(_, w)| tokens[w.begin..w.end].iter().copied())
            .collect();
        let input = Tensor::from_vec(ids, (batch.len(), len), &device).map_err(candle)?;
        let hidden: Vec<Tensor> = models
            .iter()
            .map(|m| m.hidden_states(&input))
            .collect::<candle_core::Result<_>>()
            .map_err(candle)?; // per model (b, len, C)
        for (bi, &(window, w)) in batch.iter().enumerate() {
            let candle = |source| PplError::Candle { window, source };
            let first_row = w.score_from - 1 - w.begin;
            let last_row = w.end - 1 - w.begin;
            let mut row = first_row;
            while row < last_row {
                let n = HEAD_CHUNK.min(last_row - row);
                let rows = hidden
                    .iter()
                    .map(|h| h.i(bi)?.narrow(0, row, n)) // (n, C)
                    .collect::<candle_core::Result<Vec<_>>>()
                    .map_err(candle)?;
                let t0 = w.begin + row + 1;
                let targets = &tokens[t0..t0 + n];
                visit(ScoredChunk {
                    window,
                    span: w,
                    targets,
                    hidden: rows,
                    models,
                })?;
                row += n;
            }
        }
        progress(done + 1, batches.len());
    }
    Ok(())
}

/// Negative log-likelihood of each target under softmax(logits): `logsumexp(z) − z_target`,
/// per row of a (rows, vocab) f32 tensor, returned in f64.
pub fn token_nlls(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Vec<f64>> {
    let lse: Vec<f32> = kernels::logsumexp_last_dim(logits)?.to_vec1()?;
    let idx = Tensor::from_slice(targets, (targets.len(), 1), logits.device())?;
    let z: Vec<f32> = logits.gather(&idx, 1)?.squeeze(1)?.to_vec1()?;
    Ok(lse
        .iter()
        .zip(&z)
        .map(|(&l, &z)| l as f64 - z as f64)
        .collect())
}

/// Perplexity of `model` on `tokens`.
pub fn perplexity(
    model: &dyn CausalLm,
    tokens: &[u32],
    opts: &PplOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<PplReport, PplError> {
    let start = Instant::now();
    let (mut nll_sum, mut scored, mut n_windows) = (0f64, 0usize, 0usize);
    let mut last_window = usize::MAX;
    score_windows(&[model], tokens, opts, progress, &mut |chunk| {
        let nlls = chunk
            .logits(0)
            .and_then(|logits| token_nlls(&logits, chunk.targets))
            .map_err(|source| PplError::Candle {
                window: chunk.window,
                source,
            })?;
        if nlls.iter().any(|v| !v.is_finite()) {
            return Err(PplError::NonFinite {
                window: chunk.window,
                begin: chunk.span.begin,
                end: chunk.span.end,
            });
        }
        nll_sum += nlls.iter().sum::<f64>();
        scored += nlls.len();
        if chunk.window != last_window {
            n_windows += 1;
            last_window = chunk.window;
        }
        Ok(())
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let mean_nll = nll_sum / scored as f64;
    Ok(PplReport {
        tokens: tokens.len(),
        tokens_scored: scored,
        windows: n_windows,
        nll_sum,
        mean_nll,
        perplexity: mean_nll.exp(),
        seconds,
        tokens_per_second: scored as f64 / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(ws: &[Window]) -> Vec<usize> {
        ws.iter().flat_map(|w| w.score_from..w.end).collect()
    }

    #[test]
    fn overlapping_windows_score_every_token_but_the_first_once() {
        for (n, c, s) in [
            (10, 4, 2),
            (1000, 64, 32),
            (7, 8, 4),
            (65, 16, 5),
            (2, 2, 1),
        ] {
            let ws = windows(n, c, s);
            assert_eq!(
                targets(&ws),
                (1..n).collect::<Vec<_>>(),
                "n={n} c={c} s={s}"
            );
            assert!(ws.iter().all(|w| w.len() <= c));
            assert_eq!(ws.last().unwrap().end, n);
        }
    }

    #[test]
    fn stride_equal_to_context_loses_one_target_per_window() {
        let ws = windows(10, 4, 4);
        assert_eq!(
            ws,
            vec![
                Window {
                    begin: 0,
                    end: 4,
                    score_from: 1
                },
                Window {
                    begin: 4,
                    end: 8,
                    score_from: 5
                },
                Window {
                    begin: 8,
                    end: 10,
                    score_from: 9
                },
            ]
        );
        assert_eq!(targets(&ws).len(), 10 - 3);
        // A final one-token window scores nothing.
        let ws = windows(9, 4, 4);
        assert_eq!(ws.last().unwrap().scored(), 0);
    }

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
}
