//! What a protocol scores, before any model runs: token sequences, and windows over them —
//! the tokens fed to the model in one pass and the targets scored from its logits.
//!
//! A window feeds `seq[begin..end]` and scores every target `t` in `score_from..score_end`
//! from the logits at `t − 1`; so `begin < score_from` and `score_end ≤ end + 1` (the token
//! after the last one fed can be a target, as in lm-eval's rolling windows). The builders:
//! - [`ScoringPlan::hf`]: the Hugging Face guide's sliding windows over the whole text;
//! - [`ScoringPlan::disjoint`]: non-overlapping windows, every token after a window's first;
//! - [`ScoringPlan::llama_cpp`]: `llama-perplexity`'s chunks, second half scored;
//! - [`ScoringPlan::lm_eval`]: lm-evaluation-harness's `loglikelihood_rolling`, per document.

use super::protocol::{Protocol, ProtocolError};

/// A token sequence that windows slice: the whole text, one document after lm-eval's prefix
/// token, or one llama.cpp chunk (its first token replaced by BOS when the vocabulary adds
/// one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    /// The document the tokens belong to (0 when the text is scored as one).
    pub document: usize,
    /// Position in the document's tokens of `tokens[0]` (−1: lm-eval's prefix token).
    pub first_position: i64,
}

impl Sequence {
    /// Position in the document of `tokens[i]`.
    pub fn position(&self, i: usize) -> i64 {
        self.first_position + i as i64
    }
}

/// One forward pass: `seq[begin..end]` fed, targets `score_from..score_end` scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Index of the sequence in [`ScoringPlan::sequences`].
    pub seq: usize,
    pub begin: usize,
    pub end: usize,
    pub score_from: usize,
    pub score_end: usize,
}

impl Window {
    /// Tokens fed.
    pub fn len(&self) -> usize {
        self.end - self.begin
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.begin
    }
    /// Targets scored.
    pub fn scored(&self) -> usize {
        self.score_end.saturating_sub(self.score_from)
    }
}

/// A protocol applied to a text: its sequences and windows, in scoring order.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoringPlan {
    pub protocol: Protocol,
    pub sequences: Vec<Sequence>,
    /// Every window, including any that score nothing (kept so window indices match the
    /// windowing rule); scoring skips those.
    pub windows: Vec<Window>,
}

/// The Hugging Face guide's windows over `n` tokens: `[k·s, min(k·s + c, n))`, stopping after
/// the first that reaches `n`; each scores the targets no earlier window scored (never its
/// own first token). Includes any that score nothing (a final one-token window when
/// `stride = context`).
pub fn windows(n: usize, context: usize, stride: usize) -> Vec<Window> {
    let mut out = Vec::new();
    let (mut begin, mut prev_end) = (0, 0);
    loop {
        let end = (begin + context).min(n);
        out.push(Window {
            seq: 0,
            begin,
            end,
            score_from: prev_end.max(begin + 1),
            score_end: end,
        });
        prev_end = end;
        if end >= n {
            return out;
        }
        begin += stride;
    }
}

/// lm-eval's windows over one document of `n` tokens behind its prefix token (sequence
/// index = token index + 1), as `get_rolling_token_windows(context_len = 1)` +
/// `make_disjoint_window` + the HF backend's left truncation to `max_length + 1` make them:
/// the first feeds the prefix and `min(L, n) − 1` tokens and scores the first `min(L, n)`;
/// each next one scores up to `L` more tokens, fed the `L` tokens before the last.
pub fn lm_eval_windows(seq: usize, n: usize, max_length: usize) -> Vec<Window> {
    let mut out = Vec::new();
    if n == 0 {
        return out;
    }
    let first = max_length.min(n);
    out.push(Window {
        seq,
        begin: 0,
        end: first,
        score_from: 1,
        score_end: first + 1,
    });
    let mut predicted = first;
    while predicted < n {
        let window_end = predicted + (n - predicted).min(max_length);
        out.push(Window {
            seq,
            begin: window_end - max_length,
            end: window_end,
            score_from: predicted + 1,
            score_end: window_end + 1,
        });
        predicted = window_end;
    }
    out
}

impl ScoringPlan {
    /// The whole text as one sequence, in the Hugging Face guide's sliding windows.
    pub fn hf(tokens: Vec<u32>, context: usize, stride: usize) -> Self {
        Self {
            windows: windows(tokens.len(), context, stride),
            protocol: Protocol::Hf { context, stride },
            sequences: vec![whole(tokens)],
        }
    }

    /// Non-overlapping windows of `context` tokens; every token after a window's first.
    pub fn disjoint(tokens: Vec<u32>, context: usize) -> Self {
        Self {
            windows: windows(tokens.len(), context, context),
            protocol: Protocol::Disjoint { context },
            sequences: vec![whole(tokens)],
        }
    }

    /// `llama-perplexity`'s default mode: chunks of `context` tokens from the start (the last
    /// partial one dropped), each fed alone with its first token replaced by `bos` when the
    /// vocabulary adds one, and only targets after the first half (`first = context / 2`)
    /// scored. Like llama.cpp, needs at least `2·context` tokens.
    pub fn llama_cpp(
        tokens: &[u32],
        context: usize,
        bos: Option<u32>,
    ) -> Result<Self, ProtocolError> {
        if tokens.len() < 2 * context {
            return Err(ProtocolError::TooFewForChunks {
                tokens: tokens.len(),
                context,
            });
        }
        let first = context / 2;
        let (mut sequences, mut wins) = (Vec::new(), Vec::new());
        for (i, chunk) in tokens.chunks_exact(context).enumerate() {
            let mut chunk = chunk.to_vec();
            if let Some(b) = bos {
                chunk[0] = b;
            }
            sequences.push(Sequence {
                tokens: chunk,
                document: 0,
                first_position: (i * context) as i64,
            });
            wins.push(Window {
                seq: i,
                begin: 0,
                end: context,
                score_from: first + 1,
                score_end: context,
            });
        }
        Ok(Self {
            protocol: Protocol::LlamaCpp {
                context,
                add_bos: bos.is_some(),
                bos_token: bos,
            },
            sequences,
            windows: wins,
        })
    }

    /// lm-eval's `loglikelihood_rolling`: each document behind `prefix`, in rolling windows
    /// of `max_length` (see [`lm_eval_windows`]). Documents without tokens score nothing.
    pub fn lm_eval(documents: Vec<Vec<u32>>, prefix: u32, max_length: usize) -> Self {
        let (mut sequences, mut wins) = (Vec::new(), Vec::new());
        for (d, doc) in documents.into_iter().enumerate() {
            wins.extend(lm_eval_windows(sequences.len(), doc.len(), max_length));
            let mut tokens = Vec::with_capacity(doc.len() + 1);
            tokens.push(prefix);
            tokens.extend(doc);
            sequences.push(Sequence {
                tokens,
                document: d,
                first_position: -1,
            });
        }
        Self {
            protocol: Protocol::LmEval {
                max_length,
                prefix_token: prefix,
                detokenize: None,
            },
            sequences,
            windows: wins,
        }
    }

    /// The tokens a window feeds.
    pub fn input(&self, w: &Window) -> &[u32] {
        &self.sequences[w.seq].tokens[w.begin..w.end]
    }

    /// The targets a window scores.
    pub fn targets(&self, w: &Window) -> &[u32] {
        &self.sequences[w.seq].tokens[w.score_from..w.score_end]
    }

    /// Targets over every window.
    pub fn tokens_scored(&self) -> usize {
        self.windows.iter().map(Window::scored).sum()
    }

    /// Windows that score at least one target.
    pub fn scoring_windows(&self) -> usize {
        self.windows.iter().filter(|w| w.scored() > 0).count()
    }

    /// The longest input a window feeds.
    pub fn max_input(&self) -> usize {
        self.windows.iter().map(Window::len).max().unwrap_or(0)
    }
}

fn whole(tokens: Vec<u32>) -> Sequence {
    Sequence {
        tokens,
        document: 0,
        first_position: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(ws: &[Window]) -> Vec<usize> {
        ws.iter().flat_map(|w| w.score_from..w.score_end).collect()
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
            assert!(ws.iter().all(|w| w.len() <= c && w.score_end == w.end));
            assert_eq!(ws.last().unwrap().end, n);
        }
    }

    #[test]
    fn stride_equal_to_context_loses_one_target_per_window() {
        let w = |begin, end| Window {
            seq: 0,
            begin,
            end,
            score_from: begin + 1,
            score_end: end,
        };
        assert_eq!(windows(10, 4, 4), vec![w(0, 4), w(4, 8), w(8, 10)]);
        assert_eq!(targets(&windows(10, 4, 4)).len(), 10 - 3);
        // A final one-token window scores nothing.
        assert_eq!(windows(9, 4, 4).last().unwrap().scored(), 0);
    }

    #[test]
    fn lm_eval_windows_score_each_token_once_with_at_most_max_length_fed() {
        for (n, l) in [(1, 4), (4, 4), (5, 4), (9, 4), (10, 3), (100, 7), (3, 10)] {
            let ws = lm_eval_windows(0, n, l);
            // Sequence = prefix + n tokens: targets 1..=n, each once.
            assert_eq!(targets(&ws), (1..=n).collect::<Vec<_>>(), "n={n} L={l}");
            for w in &ws {
                assert!(w.len() <= l && w.score_end == w.end + 1 && w.begin < w.score_from);
            }
            // After the first, every window feeds exactly L tokens (full left context).
            assert!(ws.iter().skip(1).all(|w| w.len() == l), "n={n} L={l}");
        }
        assert!(lm_eval_windows(0, 0, 4).is_empty());
        // n = 9, L = 4: [p t0 t1 t2] → t0..t3; [t3..t6] fed... as lm-eval builds them.
        let ws = lm_eval_windows(0, 9, 4);
        assert_eq!((ws[1].begin, ws[1].end, ws[1].score_from), (4, 8, 5));
        assert_eq!(
            (ws[2].begin, ws[2].end, ws[2].score_from, ws[2].score_end),
            (5, 9, 9, 10)
        );
    }

    #[test]
    fn llama_cpp_chunks_replace_the_first_token_and_score_the_second_half() {
        let tokens: Vec<u32> = (10..21).collect(); // 11 tokens
        let p = ScoringPlan::llama_cpp(&tokens, 5, Some(1)).unwrap();
        assert_eq!(p.sequences.len(), 2);
        assert_eq!(p.sequences[1].tokens, vec![1, 16, 17, 18, 19]);
        assert_eq!(p.targets(&p.windows[0]), &[13, 14]);
        assert_eq!(p.sequences[1].position(3), 8);
        let p = ScoringPlan::llama_cpp(&tokens, 5, None).unwrap();
        assert_eq!(p.input(&p.windows[1]), &[15, 16, 17, 18, 19]);
        let e = ScoringPlan::llama_cpp(&tokens[..9], 5, None).unwrap_err();
        assert!(e.to_string().contains("2 × context = 10 tokens"), "{e}");
    }
}
