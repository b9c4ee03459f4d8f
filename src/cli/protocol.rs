//! The protocol options `perplexity` and `diagnose` share, and their resolution against a
//! loaded model (errors name the flags).

use clap::Args;

use crate::data::special_tokens;
use crate::eval::detokenize::Detokenizer;
use crate::eval::protocol::{Protocol, ProtocolName, ProtocolRequest};
use crate::model::load::Loaded;

/// `--protocol`, `--max-length` and `--text-field`.
#[derive(Debug, Args)]
pub struct ProtocolArgs {
    /// Which windows are scored: hf (the Hugging Face guide's sliding windows; perplexity's
    /// default), lm-eval (lm-evaluation-harness's rolling windows, per document), llama-cpp
    /// (llama-perplexity's chunks, second half scored) or disjoint (non-overlapping windows;
    /// diagnose's default).
    #[arg(long, value_enum, value_name = "NAME")]
    pub protocol: Option<ProtocolName>,
    /// lm-eval: tokens per window (default: the model's maximum length, as lm-eval).
    #[arg(long, value_name = "N")]
    pub max_length: Option<usize>,
    /// The field of each .jsonl line (or column of a .parquet file) holding a document
    /// (default: text).
    #[arg(long, value_name = "NAME")]
    pub text_field: Option<String>,
    /// lm-eval: detokenize each document before scoring, as lm-eval's `wikitext` task does
    /// (words and bytes are counted on the document as stored).
    #[arg(long, value_enum, value_name = "NAME")]
    pub detokenize: Option<Detokenizer>,
}

/// A setting's flag: `max_length` → `--max-length`.
pub(super) fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

impl ProtocolArgs {
    /// Fixes the protocol's settings for `loaded` (defaults from the model and tokenizer);
    /// without `--protocol`, the command's `default`.
    pub(super) fn resolve(
        &self,
        loaded: &Loaded,
        context: Option<usize>,
        stride: Option<usize>,
        default: ProtocolName,
    ) -> anyhow::Result<Protocol> {
        let info = loaded.model.info();
        let special = special_tokens(
            &loaded.tokenizer,
            loaded.files.tokenizer_config.as_deref(),
            (info.bos_id, info.eos_id),
        )?;
        let request = ProtocolRequest {
            name: self.protocol.unwrap_or(default),
            context,
            stride,
            max_length: self.max_length,
            detokenize: self.detokenize,
        };
        request
            .resolve(info.n_positions, &special)
            .map_err(|e| anyhow::anyhow!(e.render(&flag)))
    }
}

/// A preparation error with settings named by their flags.
pub(super) fn render(e: &crate::eval::prepare::PrepareError) -> String {
    use crate::eval::prepare::PrepareError;
    match e {
        PrepareError::Protocol(p) => p.render(&flag),
        PrepareError::MaxTokensLmEval => format!(
            "{} does not apply to the lm-eval protocol, which scores whole documents",
            flag("max_tokens")
        ),
        PrepareError::Text(t) => t.to_string(),
    }
}
