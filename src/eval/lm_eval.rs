//! lm-evaluation-harness's wikitext metrics over documents: `word_perplexity`,
//! `byte_perplexity` and `bits_per_byte`, each summed over documents and weighted as its
//! `weighted_perplexity` / `bits_per_byte` aggregations weight them.

use serde::{Deserialize, Serialize};

/// The three metrics and what they are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LmEvalMetrics {
    /// exp(Σ NLL / Σ words).
    pub word_perplexity: f64,
    /// exp(Σ NLL / Σ bytes).
    pub byte_perplexity: f64,
    /// Σ NLL / Σ bytes / ln 2.
    pub bits_per_byte: f64,
    pub documents: usize,
    pub words: usize,
    pub bytes: usize,
}

/// Whether Python's `re` `\s` matches `c` (`str.isspace`): Unicode White_Space plus the
/// information separators U+001C..U+001F.
pub fn python_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `len(re.split(r"\s+", text))`: one more than the runs of whitespace (an empty text, or
/// one with leading or trailing whitespace, counts the empty pieces too).
pub fn count_words(text: &str) -> usize {
    let mut runs = 0;
    let mut in_run = false;
    for c in text.chars() {
        let space = python_isspace(c);
        if space && !in_run {
            runs += 1;
        }
        in_run = space;
    }
    runs + 1
}

/// The metrics of documents given their summed NLLs (nats): lm-eval's log-likelihood is
/// −NLL, its words `count_words(doc)` and bytes the UTF-8 length, as its wikitext task counts
/// them.
pub fn lm_eval_metrics(docs: &[String], document_nll: &[f64]) -> LmEvalMetrics {
    let nll: f64 = document_nll.iter().sum();
    let words: usize = docs.iter().map(|d| count_words(d)).sum();
    let bytes: usize = docs.iter().map(String::len).sum();
    LmEvalMetrics {
        word_perplexity: (nll / words as f64).exp(),
        byte_perplexity: (nll / bytes as f64).exp(),
        bits_per_byte: nll / bytes as f64 / std::f64::consts::LN_2,
        documents: docs.len(),
        words,
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_counted_as_python_splits_them() {
        for (text, want) in [
            ("", 1),
            ("a", 1),
            ("a b", 2),
            (" a  b ", 4),
            ("a\u{1c}b", 2),
            ("x\u{200b}y", 1),
            ("\u{85}x\u{a0}", 3),
            ("a\r\n\tb", 2),
        ] {
            assert_eq!(count_words(text), want, "{text:?}");
        }
    }
}
