//! What is measured on a loaded model: perplexity under a protocol, its uncertainty,
//! per-token output, diagnostics, generation.
//!
//! - [`protocol`]: the protocols (`hf`, `lm-eval`, `llama-cpp`, `disjoint`) and their
//!   settings; [`plan`]: their windows; [`prepare`]: from documents to a plan.
//! - [`perplexity`]: scoring a plan; [`uncertainty`]: standard errors and intervals;
//!   [`bootstrap`]: paired block-bootstrap intervals; [`lm_eval`]: the harness's metrics;
//!   [`nll_output`]: per-token records as JSONL or Parquet; [`detokenize`]: lm-eval's
//!   wikitext detokenizer.

pub mod bootstrap;
pub mod detokenize;
pub mod diagnose;
pub mod generate;
pub mod lm_eval;
pub mod nll_output;
pub mod perplexity;
pub mod plan;
pub mod prepare;
pub mod protocol;
pub mod uncertainty;

/// An error about one option, whose message begins with the option's neutral name
/// (`context`, `batch_size`, …): the command line and the TOML reader spell it their way.
pub trait FieldError {
    fn field(&self) -> Option<&'static str>;
}

/// The message of `e` with its leading field name spelled by `spell` (e.g. `--batch-size`).
pub fn respell<E: FieldError + std::fmt::Display>(e: &E, spell: impl Fn(&str) -> String) -> String {
    let msg = e.to_string();
    match e.field() {
        Some(f) if msg.starts_with(f) => format!("{}{}", spell(f), &msg[f.len()..]),
        _ => msg,
    }
}
