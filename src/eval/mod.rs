//! What is measured on a loaded model: perplexity, diagnostics, generation.

pub mod diagnose;
pub mod generate;
pub mod perplexity;
