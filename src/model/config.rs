//! Reading `config.json`: which family it names (`model_type`, else `architectures`), that
//! family's parsed and validated config, and the errors, which name the file and the key.

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::model::plan::ActivationPlan;
use crate::model::registry;
use crate::model::{decoder::Decoder, ModelInfo};
use crate::weights::{LoadError, TensorStore};

/// Why a `config.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {err}")]
    Parse {
        path: String,
        err: serde_json::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: String, msg: String },
}

/// One family's config: what it tells the tool, and how its weights become a [`Decoder`].
pub trait ArchConfig: Send + Sync + std::fmt::Debug {
    fn info(&self) -> ModelInfo;

    /// The base-model prefix transformers writes before the non-head keys
    /// (`transformer.`, `gpt_neox.`, `model.`); checkpoints without it load too.
    fn prefix(&self) -> &'static str;

    /// Stored tensors that are not parameters (mask buffers, rotary tables): ignored.
    fn is_buffer(&self, key: &str) -> bool;

    /// Builds the model, taking every tensor it needs from `store`.
    fn build(&self, plan: ActivationPlan, store: &mut TensorStore) -> Result<Decoder, LoadError>;

    /// Architecture options worth showing in `inspect`, as (key, value).
    fn describe(&self) -> Vec<(String, serde_json::Value)>;
}

/// A parsed and validated `config.json`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arc<dyn ArchConfig>,
    pub info: ModelInfo,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            Invalid::Json(err) => ConfigError::Parse { path: shown, err },
            Invalid::Msg(msg) => ConfigError::Invalid { path: shown, msg },
        })
    }

    /// Parses the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self, Invalid> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        if !value.is_object() {
            return Err(Invalid::Msg("expected a JSON object".into()));
        }
        let family = registry::family_of(&value).map_err(Invalid::Msg)?;
        let arch = (family.parse)(text)?;
        let info = arch.info();
        Ok(Self { arch, info })
    }
}

impl ModelConfig {
    /// How the checkpoint's keys are spelled: with the family's base-model prefix
    /// (`save_pretrained`) or without it.
    pub fn key_layout(&self, store: &TensorStore) -> String {
        let prefix = self.arch.prefix();
        if prefix.is_empty() {
            store.layout_name().to_string()
        } else if store.has_prefix(prefix) {
            format!("{prefix}-prefixed (save_pretrained)")
        } else {
            format!("bare (no {prefix} prefix)")
        }
    }
}

/// A config that failed to parse (serde's message names the key and line) or validate.
#[derive(Debug)]
pub enum Invalid {
    Json(serde_json::Error),
    Msg(String),
}

impl From<serde_json::Error> for Invalid {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(e)
    }
}

impl From<String> for Invalid {
    fn from(msg: String) -> Self {
        Self::Msg(msg)
    }
}

/// Deserialises a family's config struct from the text of `config.json` (so that errors
/// keep their line numbers) and validates it.
pub fn parse_as<T: DeserializeOwned>(
    text: &str,
    validate: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, Invalid> {
    let cfg: T = serde_json::from_str(text)?;
    validate(&cfg)?;
    Ok(cfg)
}

/// A token id field (`bos_token_id`, `eos_token_id`): a number, a list (the first), or null.
pub fn token_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v.as_ref()? {
        serde_json::Value::Number(n) => n.as_u64().map(|v| v as u32),
        serde_json::Value::Array(a) => a.first()?.as_u64().map(|v| v as u32),
        _ => None,
    }
}

/// Errors for zero sizes, in the order given.
pub fn positive(fields: &[(&str, usize)]) -> Result<(), String> {
    match fields.iter().find(|(_, v)| *v == 0) {
        Some((key, _)) => Err(format!("{key} must be positive")),
        None => Ok(()),
    }
}

/// An epsilon that must be a positive finite number.
pub fn positive_eps(key: &str, v: f64) -> Result<(), String> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(format!("{key} must be a positive number, got {v}"))
    }
}
