//! The special tokens protocols need, read as the reference tools read them:
//! lm-eval's prefix token (`tokenizer.bos_token_id`, else `eos_token_id`) and whether the
//! tokenizer puts a BOS before a text (llama.cpp's `add_bos`).

use std::path::Path;

use super::text::TextError;
use super::tokenizer::TextTokenizer;

/// What the tokenizer and config say about special tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// lm-eval's prefix token: the tokenizer's BOS, else its EOS.
    pub prefix: Option<u32>,
    /// The token the tokenizer puts before a text when it adds special tokens.
    pub added_bos: Option<u32>,
    /// Whether it also appends one (llama.cpp refuses such vocabularies).
    pub adds_eos: bool,
}

/// The special tokens of a checkpoint: `tokenizer_config.json` (when there is one) names BOS
/// and EOS as transformers reads them; `config_ids` (`config.json`'s `bos_token_id`,
/// `eos_token_id`) stand in when it names neither, then the vocabulary's `<|endoftext|>`
/// (GPT-2's tokenizer class default).
pub fn special_tokens(
    tok: &TextTokenizer,
    tokenizer_config: Option<&Path>,
    config_ids: (Option<u32>, Option<u32>),
) -> Result<SpecialTokens, TextError> {
    let named = match tokenizer_config {
        Some(p) => named_in_config(tok, p)?,
        None => None,
    };
    let prefix = named
        .or(config_ids.0)
        .or(config_ids.1)
        .or_else(|| tok.token_to_id("<|endoftext|>"));
    let (before, after) = tok.special_affixes()?;
    Ok(SpecialTokens {
        prefix,
        added_bos: before.first().copied(),
        adds_eos: !after.is_empty(),
    })
}

/// `bos_token`, else `eos_token`, of a `tokenizer_config.json` (a string or an AddedToken
/// object with `content`), as an id; `None` when it names neither.
fn named_in_config(tok: &TextTokenizer, path: &Path) -> Result<Option<u32>, TextError> {
    let bad = |msg: String| TextError::Tokenizer {
        path: path.to_path_buf(),
        msg,
    };
    let text = crate::fsio::read_limited_to_string(path, crate::fsio::SMALL_FILE_LIMIT)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    for key in ["bos_token", "eos_token"] {
        let content = match v.get(key) {
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(serde_json::Value::Object(o)) => match o.get("content") {
                Some(serde_json::Value::String(s)) => s.as_str(),
                _ => return Err(bad(format!("{key} has no string \"content\""))),
            },
            _ => continue,
        };
        return tok
            .token_to_id(content)
            .map(Some)
            .ok_or_else(|| bad(format!("{key} '{content}' is not in the vocabulary")));
    }
    Ok(None)
}
