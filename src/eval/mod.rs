//! What is measured on a loaded model: perplexity, diagnostics, generation.

pub mod diagnose;
pub mod generate;
pub mod perplexity;

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
