//! From documents to a [`ScoringPlan`]: each protocol tokenizes as its reference tool does.
//!
//! - `hf`, `disjoint`: the documents joined into one text, encoded without special tokens.
//! - `llama-cpp`: the joined text encoded with the tokenizer's special tokens
//!   (`common_tokenize(…, add_special = true)`).
//! - `lm-eval`: each document encoded with the tokenizer's special tokens, unless it starts
//!   with the prefix token's text (lm-eval 0.4's `HFLM.tok_encode`): so a tokenizer that adds
//!   BOS (Llama) scores that BOS after the prefix token, as the harness does.

use super::plan::ScoringPlan;
use super::protocol::{Protocol, ProtocolError};
use crate::data::{Documents, TextError, TextTokenizer};

/// A plan and what it was made from.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub plan: ScoringPlan,
    /// Tokens of the text (before llama.cpp drops a partial last chunk).
    pub tokens: usize,
    /// UTF-8 bytes the tokens cover: the joined text (cut where `max_tokens` cut it), or
    /// every document under lm-eval.
    pub bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("max_tokens does not apply to the lm-eval protocol, which scores whole documents")]
    MaxTokensLmEval,
}

/// Tokenizes `docs` for `protocol` and lays out its windows; `max_tokens` keeps only the
/// first tokens of the joined text.
pub fn prepare(
    protocol: &Protocol,
    docs: &Documents,
    tok: &TextTokenizer,
    max_tokens: Option<usize>,
) -> Result<Prepared, PrepareError> {
    if let Protocol::LmEval {
        max_length,
        prefix_token,
    } = *protocol
    {
        if max_tokens.is_some() {
            return Err(PrepareError::MaxTokensLmEval);
        }
        let prefix_text = tok.decode(&[prefix_token])?;
        let encoded = docs
            .docs
            .iter()
            .map(|d| match d.starts_with(&prefix_text) {
                true => tok.encode(d),
                false => tok.encode_special(d),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Prepared {
            tokens: encoded.iter().map(Vec::len).sum(),
            bytes: docs.bytes(),
            plan: ScoringPlan::lm_eval(encoded, prefix_token, max_length),
        });
    }
    let text = docs.joined();
    let mut tokens = match protocol {
        Protocol::LlamaCpp { .. } => tok.encode_special(&text)?,
        _ => tok.encode(&text)?,
    };
    let mut bytes = text.len();
    if let Some(max) = max_tokens.filter(|&m| m < tokens.len()) {
        tokens.truncate(max);
        bytes = tok.decode(&tokens)?.len();
    }
    let n = tokens.len();
    let plan = match *protocol {
        Protocol::Hf { context, stride } => ScoringPlan::hf(tokens, context, stride),
        Protocol::Disjoint { context } => ScoringPlan::disjoint(tokens, context),
        Protocol::LlamaCpp {
            context, bos_token, ..
        } => ScoringPlan::llama_cpp(&tokens, context, bos_token)?,
        Protocol::LmEval { .. } => unreachable!("handled above"),
    };
    Ok(Prepared {
        plan,
        tokens: n,
        bytes,
    })
}
