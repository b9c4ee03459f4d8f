//! Reading `config.json`: which family it names (`model_type`, else `architectures`), that
//! family's parsed and validated config, and the errors, which name the file and the key.

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::model::activation::Activation;
use crate::model::plan::ActivationPlan;
use crate::model::registry;
use crate::model::{decoder::Decoder, ModelInfo};
use crate::weights::{LoadError, TensorStore};

/// Why a `config.json` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Read(#[from] crate::fsio::ReadError),
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

    /// The model's parameters under this family's Hugging Face names and layouts, as
    /// `save_pretrained` writes them (a tied head not repeated): the exact inverse of
    /// [`ArchConfig::build`], which reads them back into the same model.
    fn export(&self, model: &Decoder) -> candle_core::Result<Vec<(String, candle_core::Tensor)>>;

    /// The `config.json` key that names the feed-forward activation (`activation_function`
    /// or `hidden_act`).
    fn activation_key(&self) -> &'static str;

    /// Why a model of this config cannot be trained (and exported after training), if not.
    fn untrainable(&self) -> Option<String> {
        None
    }

    /// Architecture options worth showing in `inspect`, as (key, value).
    fn describe(&self) -> Vec<(String, serde_json::Value)>;
}

/// A parsed and validated `config.json`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arc<dyn ArchConfig>,
    pub info: ModelInfo,
    /// A per-layer activation plan (`gpt_ablate_activations`, written by `gpt-ablate train`
    /// for checkpoints whose layers differ), applied over the config's own activation.
    pub layer_activations: Option<Vec<Activation>>,
}

/// The `config.json` key of a per-layer activation plan: one name per layer.
pub const LAYER_ACTIVATIONS_KEY: &str = "gpt_ablate_activations";

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = crate::fsio::read_limited_to_string(path, crate::fsio::SMALL_FILE_LIMIT)?;
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
        let layer_activations = layer_activations(&value, info.n_layer)?;
        Ok(Self {
            arch,
            info,
            layer_activations,
        })
    }

    /// The activation plan the checkpoint was saved with: its own activation, with the
    /// per-layer plan applied when it has one.
    pub fn plan(&self) -> ActivationPlan {
        let mut plan = ActivationPlan::original(self.info.activation, self.info.n_layer);
        if let Some(per_layer) = &self.layer_activations {
            plan.per_layer = per_layer.clone();
        }
        plan
    }
}

/// `gpt_ablate_activations`: absent, or one activation name per layer.
fn layer_activations(
    config: &serde_json::Value,
    n_layer: usize,
) -> Result<Option<Vec<Activation>>, Invalid> {
    let Some(v) = config.get(LAYER_ACTIVATIONS_KEY).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let key = LAYER_ACTIVATIONS_KEY;
    let names = v
        .as_array()
        .filter(|a| a.len() == n_layer)
        .ok_or_else(|| format!("{key} must be a list of {n_layer} activation names"))?;
    let acts = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let name = n.as_str().ok_or(format!("{key}[{i}] must be a string"))?;
            name.parse::<Activation>()
                .map_err(|e| format!("{key}[{i}]: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Some(acts))
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
