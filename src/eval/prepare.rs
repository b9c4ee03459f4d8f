//! From documents to a [`ScoringPlan`]: each protocol tokenizes as its reference tool does.
//!
//! - `hf`, `disjoint`: the documents joined into one text, encoded without special tokens.
//! - `llama-cpp`: the joined text encoded with the tokenizer's special tokens
//!   (`common_tokenize(…, add_special = true)`).
//! - `lm-eval`: each document encoded with the tokenizer's special tokens, unless it starts
//!   with the prefix token's text (lm-eval 0.4's `HFLM.tok_encode`): so a tokenizer that adds
//!   BOS (Llama) scores that BOS after the prefix token, as the harness does. With a
//!   detokenizer (the `wikitext` task's), each document is detokenized first.

use super::plan::ScoringPlan;
use super::protocol::{Protocol, ProtocolError};
use crate::data::{Documents, TextError, TextTokenizer};

/// A plan and what it was made from.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub plan: ScoringPlan,
    /// Tokens of the text (before llama.cpp drops a partial last chunk).
    pub tokens: usize,
    /// UTF-8 bytes the scored tokens cover: the joined text (cut where `max_tokens` cut it),
    /// every document under lm-eval, the scored half of each chunk under llama-cpp.
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

/// UTF-8 bytes of the text the plan's targets spell (llama-cpp scores half of each chunk:
/// bits/byte divides by these bytes, not the whole text's).
fn scored_bytes(plan: &ScoringPlan, tok: &TextTokenizer) -> Result<usize, TextError> {
    plan.windows
        .iter()
        .map(|w| Ok(tok.decode(plan.targets(w))?.len()))
        .sum()
}

/// Tokenizes `docs` for `protocol` and lays out its windows; `max_tokens` keeps only the
/// first tokens of the joined text.
pub fn prepare(
    protocol: &Protocol,
    docs: &Documents,
    tok: &TextTokenizer,
    max_tokens: Option<usize>,
) -> Result<Prepared, PrepareError> {
    if let Protocol::LmEval { .. } = protocol {
        if max_tokens.is_some() {
            return Err(PrepareError::MaxTokensLmEval);
        }
        return prepare_lm_eval(protocol, docs, tok);
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
        Protocol::LlamaCpp {
            context, bos_token, ..
        } => {
            let plan = ScoringPlan::llama_cpp(&tokens, context, bos_token)?;
            bytes = scored_bytes(&plan, tok)?;
            plan
        }
        Protocol::Disjoint { context } => ScoringPlan::disjoint(tokens, context),
        Protocol::LmEval { .. } => unreachable!("prepared per document above"),
    };
    Ok(Prepared {
        plan,
        tokens: n,
        bytes,
    })
}

/// lm-eval: each document (detokenized first when asked) encoded as `HFLM.tok_encode` does.
fn prepare_lm_eval(
    protocol: &Protocol,
    docs: &Documents,
    tok: &TextTokenizer,
) -> Result<Prepared, PrepareError> {
    let Protocol::LmEval {
        max_length,
        prefix_token,
        detokenize,
    } = *protocol
    else {
        unreachable!("called for lm-eval only")
    };
    let prefix_text = tok.decode(&[prefix_token])?;
    let encode = |doc: &String| {
        let d = detokenize.map_or_else(|| doc.clone(), |t| t.apply(doc));
        match d.starts_with(&prefix_text) {
            true => tok.encode(&d),
            false => tok.encode_special(&d),
        }
    };
    let encoded = docs
        .docs
        .iter()
        .map(encode)
        .collect::<Result<Vec<_>, _>>()?;
    let mut plan = ScoringPlan::lm_eval(encoded, prefix_token, max_length);
    plan.protocol = *protocol;
    Ok(Prepared {
        tokens: plan.sequences.iter().map(|s| s.tokens.len() - 1).sum(),
        bytes: docs.bytes(),
        plan,
    })
}
