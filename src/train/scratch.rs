//! `--from-scratch CONFIG.toml`: the architecture of a model to train from new weights.
//!
//! ```toml
//! model_type = "gpt2"                 # gpt2, gpt_neox, opt, llama or qwen2
//! tokenizer = "../models/shakespeare-gpt2/tokenizer.json"   # a file, or a directory holding one
//! activation = "gelu_new"             # any activation, or per layer: "0-2:relu,3-5:gelu"
//! [config]                            # config.json fields, with transformers' names
//! n_layer = 6
//! n_embd = 160
//! n_head = 5
//! n_positions = 256
//! ```
//!
//! Paths are relative to the file. `vocab_size` defaults to the tokenizer's size; the
//! family's usual `architectures` entry is added; the config is checked as any
//! `config.json` is.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::data::TextTokenizer;
use crate::model::plan::ActivationMap;
use crate::model::registry::FAMILIES;
use crate::model::ModelConfig;
use crate::train::hf_dir::config_with_plan;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScratch {
    model_type: String,
    tokenizer: PathBuf,
    #[serde(default)]
    activation: Option<String>,
    config: toml::Table,
}

/// A from-scratch model: its `config.json` (activation written in), parsed config and
/// tokenizer.
pub struct Scratch {
    pub config_json: serde_json::Value,
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    pub tokenizer_path: PathBuf,
    /// `initializer_range` (`init_std` for OPT), default 0.02.
    pub init_std: f64,
}

/// A from-scratch config that cannot be used; the message names the file and key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {msg}")]
pub struct ScratchError {
    pub file: String,
    pub msg: String,
}

impl Scratch {
    pub fn from_file(path: &Path) -> Result<Self, ScratchError> {
        let file = path.display().to_string();
        let err = |msg: String| ScratchError {
            file: file.clone(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let raw: RawScratch =
            toml::from_str(&text).map_err(|e| err(e.to_string().replace('\n', " ")))?;
        let family = FAMILIES
            .iter()
            .find(|f| f.model_type == raw.model_type)
            .ok_or_else(|| {
                err(format!(
                    "model_type '{}' is not one of {}",
                    raw.model_type,
                    crate::model::registry::supported()
                ))
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let tokenizer_path = tokenizer_file(&base.join(&raw.tokenizer)).map_err(&err)?;
        let tokenizer = TextTokenizer::from_file(&tokenizer_path)
            .map_err(|e| err(format!("tokenizer: {e}")))?;
        let mut json = serde_json::to_value(&raw.config).map_err(|e| err(e.to_string()))?;
        if let Some(obj) = json.as_object_mut() {
            obj.insert("model_type".into(), family.model_type.into());
            obj.insert("architectures".into(), vec![family.architectures[0]].into());
            obj.entry("vocab_size")
                .or_insert_with(|| tokenizer.vocab_size().into());
        }
        let parse = |j: &serde_json::Value| {
            ModelConfig::from_json(&j.to_string()).map_err(|e| match e {
                crate::model::config::Invalid::Json(e) => err(format!("[config]: {e}")),
                crate::model::config::Invalid::Msg(m) => err(format!("[config]: {m}")),
            })
        };
        let mut config = parse(&json)?;
        if let Some(a) = &raw.activation {
            let map: ActivationMap = a.parse().map_err(|e| err(format!("activation: {e}")))?;
            let plan = map
                .apply(config.plan())
                .map_err(|e| err(format!("activation: {e}")))?;
            let mut own = plan.clone();
            own.original = plan.per_layer[0];
            json = config_with_plan(json, config.arch.activation_key(), &own);
            config = parse(&json)?;
        }
        let init_std = ["initializer_range", "init_std"]
            .iter()
            .find_map(|k| json.get(*k).and_then(|v| v.as_f64()))
            .unwrap_or(0.02);
        Ok(Self {
            config_json: json,
            config,
            tokenizer,
            tokenizer_path,
            init_std,
        })
    }
}

/// `tokenizer.json` itself, or the one in a directory.
fn tokenizer_file(p: &Path) -> Result<PathBuf, String> {
    let file = if p.is_dir() {
        p.join("tokenizer.json")
    } else {
        p.to_path_buf()
    };
    if file.is_file() {
        Ok(file)
    } else {
        Err(format!("tokenizer: {} does not exist", file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("scratch.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const TOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-gpt2");

    #[test]
    fn builds_a_config_json_with_the_activation() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            &format!(
                "model_type = \"gpt2\"\ntokenizer = \"{TOK}\"\nactivation = \"sigmoid_centered\"\n\
                 [config]\nn_layer = 2\nn_embd = 16\nn_head = 2\nn_positions = 32\n"
            ),
        );
        let s = Scratch::from_file(&p).unwrap();
        assert_eq!(s.config_json["activation_function"], "sigmoid_centered");
        assert_eq!(s.config_json["vocab_size"], 384);
        assert_eq!(s.config.info.n_layer, 2);
        assert_eq!(s.config.plan().describe(), "sigmoid_centered");
        let mixed = write(
            dir.path(),
            &format!(
                "model_type = \"llama\"\ntokenizer = \"{TOK}\"\nactivation = \"0:relu,1:silu\"\n\
                 [config]\nnum_hidden_layers = 2\nhidden_size = 16\nintermediate_size = 32\nnum_attention_heads = 2\n"
            ),
        );
        let s = Scratch::from_file(&mixed).unwrap();
        assert_eq!(s.config_json["hidden_act"], "relu");
        assert_eq!(s.config.plan().per_layer[1].name(), "silu");
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for (body, want) in [
            ("model_type = \"bert\"\ntokenizer = \"x\"\n[config]\n", "model_type 'bert'"),
            (
                &format!("model_type = \"gpt2\"\ntokenizer = \"{TOK}\"\n[config]\nn_layer = 2\nn_embd = 15\nn_head = 2\nn_positions = 8\n"),
                "[config]: n_embd (15) is not divisible by n_head (2)",
            ),
            (
                &format!("model_type = \"gpt2\"\ntokenizer = \"{TOK}\"\nactivaton = \"relu\"\n[config]\n"),
                "unknown field `activaton`",
            ),
            ("model_type = \"gpt2\"\ntokenizer = \"nope.json\"\n[config]\n", "tokenizer:"),
        ] {
            let p = write(dir.path(), body);
            let e = Scratch::from_file(&p).err().unwrap().to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(e.starts_with(&p.display().to_string()), "{e}");
        }
    }
}
