//! The families the tool runs, keyed on `config.json`'s `model_type`. Adding a family is a
//! new folder and one line here.

use std::sync::Arc;

use crate::model::config::{ArchConfig, Invalid};
use crate::model::{gpt2, llama, neox, opt};

/// A supported architecture family.
pub struct Family {
    /// `config.json`'s `model_type`.
    pub model_type: &'static str,
    /// The `architectures` entries that name it (used when `model_type` is absent).
    pub architectures: &'static [&'static str],
    /// Parses and validates the text of `config.json`.
    pub parse: fn(&str) -> Result<Arc<dyn ArchConfig>, Invalid>,
}

pub const FAMILIES: [Family; 5] = [
    gpt2::FAMILY,
    neox::FAMILY,
    opt::FAMILY,
    llama::LLAMA,
    llama::QWEN2,
];

/// The supported `model_type`s, comma-separated.
pub fn supported() -> String {
    FAMILIES
        .iter()
        .map(|f| f.model_type)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The family a config names: its `model_type`, else its first `architectures` entry, else
/// GPT-2 (old GPT-2 configs carry neither).
pub fn family_of(config: &serde_json::Value) -> Result<&'static Family, String> {
    if let Some(t) = config.get("model_type").filter(|v| !v.is_null()) {
        let t = t.as_str().ok_or("model_type must be a string")?;
        return FAMILIES.iter().find(|f| f.model_type == t).ok_or_else(|| {
            format!(
                "model_type is '{t}'; supported: {} (Llama-architecture repos such as SmolLM and TinyLlama are llama)",
                supported()
            )
        });
    }
    let first = config
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|a| a.as_str());
    let by_arch = first.and_then(|a| FAMILIES.iter().find(|f| f.architectures.contains(&a)));
    Ok(by_arch.unwrap_or(&FAMILIES[0]))
}
